"""Many processes, one run, through Redis: ``generate --redis URL --run-id ID``.

Every guarantee of a single-process run holds across processes (and machines):

* **One admission order.** Admitted instructions form one Redis stream. Each process
  keeps a local replica of the dedup pool by reading that stream, decides a batch of
  candidates against it, and appends the batch with a Lua script that succeeds only if
  the stream's last entry is still the one the replica has seen (optimistic
  concurrency). On conflict it reads the new entries and decides again. So every
  decision is made against exactly the entries before it: the same decisions as a
  sequential run over the same order.
* **Work handed out once, reclaimed from the dead.** The admission stream is also the
  work queue: a consumer group gives each admitted instruction to one process; one whose
  process dies stays pending and is taken over with XAUTOCLAIM after ``lease_seconds``;
  then the dead process's consumer, holding nothing, is deleted. A process that exits
  cleanly hands what it leaves unfinished (a target reached first) to the ``parked``
  consumer, which the next process (a larger target) takes over at once.
* **A task is written once, the target counted globally.** A Lua script checks the
  "done" hash and the global counter, then marks the task, counts it and appends it to
  the tasks stream, atomically; only then does the process append it to its own
  tasks.jsonl. A slow worker whose task was reclaimed finds it done and writes nothing.
* **One rate budget.** A token bucket (requests and tokens per minute) lives in Redis;
  every process takes from it before each request, and a 429 pauses all of them (one
  script: a pause is only ever extended).
* **Cluster-ready.** Every key is ``si:{<run_id>}:...``: one hash slot per run, so the
  multi-key scripts run on Redis Cluster. The settings that decide admissions
  (threshold, inclusive, tokenizer, dedup_index) must agree between processes.

``gather_run`` writes the run's shared record (seeds, admissions, tasks) into a run
directory, which ``verify`` and ``export`` then read like any other.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis
import redis.asyncio as aioredis

from dedup.pool import Pool
from service.config import Config
from service.errors import ConfigError
from service.generate.seams import AdmitFn, DedupDecision, PendingTask
from service.llm.limiter import LimiterSettings, Permit, RateLimiter
from service.rundir.seeds import SeedTask
from service.rundir.store import (
    INSTRUCTIONS,
    RUN_JSON,
    SEEDS,
    TASKS,
    JsonlWriter,
    write_json_atomic,
)
from service.secret import safe_url

GROUP = "workers"
PARKED = "parked"  # the consumer holding unfinished entries of processes that exited cleanly
_PARKED_IDLE_MS = 365 * 86_400_000  # "idle for a year": any process's XAUTOCLAIM takes them
_PARK_BATCH = 500
T = TypeVar("T")
_READ_BATCH = 5000
_MAX_CONNECTIONS = 64
_CONNECTION_WAIT_S = 30.0

# Append a batch of admissions iff the stream still ends where the caller's replica does.
_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
if last_id ~= ARGV[1] then return {0} end
local out = {1}
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local seq = redis.call('INCR', KEYS[2])
  local task = string.format('task_%06d', seq)
  local id = redis.call('XADD', KEYS[1], '*', 'text', ARGV[4 + i * 3], 'task', task,
    'worker', ARGV[2], 'most_similar', ARGV[5 + i * 3], 'score', ARGV[6 + i * 3])
  table.insert(out, id)
  table.insert(out, task)
end
return out
"""

# Commit a finished task once: 1 written, 0 already done, -1 target reached.
_COMMIT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local written = tonumber(redis.call('GET', KEYS[2]) or '0')
if written >= tonumber(ARGV[2]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], 'written')
redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'task', ARGV[3])
return 1
"""

# Shared token bucket (requests and tokens per minute): 0 = granted, else ms to wait.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return paused - now end
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local need_t = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local cap_r = math.max(1, rpm / 60 * burst)
local cap_t = math.max(1, tpm / 60 * burst)
if need_t > cap_t then need_t = cap_t end
local r = tonumber(state[1]) or cap_r
local tk = tonumber(state[2]) or cap_t
local ts = tonumber(state[3]) or now
local dt = math.max(0, now - ts)
if rpm > 0 then r = math.min(cap_r, r + dt * rpm / 60000) end
if tpm > 0 then tk = math.min(cap_t, tk + dt * tpm / 60000) end
local wait = 0
if rpm > 0 and r < 1 then wait = math.max(wait, (1 - r) * 60000 / rpm) end
if tpm > 0 and tk < need_t then wait = math.max(wait, (need_t - tk) * 60000 / tpm) end
if wait <= 0 then
  if rpm > 0 then r = r - 1 end
  if tpm > 0 then tk = tk - need_t end
end
redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 3600000)
if wait <= 0 then return 0 end
return math.ceil(wait)
"""

# A 429 pauses every process: extend the shared pause to now + ARGV[1] ms, never shorten
# it (one script, so two processes reporting at once cannot undo each other's pause).
_PAUSE = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= until_ms then return current end
redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
return until_ms
"""

# Delete the consumers of dead processes: silent for a lease and holding nothing (what
# they held was taken over with XAUTOCLAIM first). Checked and deleted in one script, so
# an entry delivered meanwhile can never be deleted with its consumer.
_REAP = """
local removed = 0
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

# On a clean exit: hand this process's unfinished entries (e.g. left when the target was
# reached) to the "parked" consumer, idle enough that any later process takes them over
# at once, then delete this consumer. ARGV: group, self, parked, idle ms, batch.
_PARK = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[5]), ARGV[2])
if #pending > 0 then
  local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0}
  for _, entry in ipairs(pending) do table.insert(claim, entry[1]) end
  table.insert(claim, 'IDLE')
  table.insert(claim, ARGV[4])
  table.insert(claim, 'JUSTID')
  redis.call(unpack(claim))
end
if #pending < tonumber(ARGV[5]) then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return #pending
"""


class Keys:
    """Every key of one run lives under ``si:{<run_id>}:``: the braces are a Redis Cluster
    hash tag, so all of a run's keys hash to one slot and the multi-key scripts work on
    a cluster too (Redis hashes only the part between the first ``{`` and ``}``)."""

    def __init__(self, run_id: str) -> None:
        base = f"si:{{{run_id}}}:"
        self.meta = base + "meta"
        self.seeds = base + "seeds"
        self.admissions = base + "admissions"
        self.sequence = base + "sequence"
        self.done = base + "done"
        self.written = base + "written"
        self.tasks = base + "tasks"
        self.bucket = base + "bucket"
        self.pause = base + "pause"
        self.limits = base + "limits"  # limits one process learned, for all (a hash)


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Run a Redis command so that cancelling the caller does not cancel the command.

    redis-py's asyncio client turns a cancellation in the middle of a command into a
    lost connection and the caller's CancelledError disappears (its task then runs on;
    seen with redis-py 8.1). Shielded, the command completes on its own (all ours are
    short: the longest blocks 250 ms) while the caller is cancelled normally."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # Nobody awaits the command any more: retrieve its outcome so a command cut
        # off by closing the client at exit is not reported as never retrieved.
        task.add_done_callback(_discard_outcome)
        raise


def _discard_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


# --------------------------------------------------------------------------- rate limit
LIMITS_REFRESH_S = 2.0


class SharedRateLimiter(RateLimiter):
    """The local limiter's concurrency cap and 429 pause, plus one Redis token bucket
    that every process of the run takes from. One waiter per process polls Redis at a
    time (a local lock), so the waiting is FIFO locally and cheap for Redis."""

    def __init__(self, settings: LimiterSettings, client: aioredis.Redis, keys: Keys) -> None:
        super().__init__(replace(settings, rpm=None, tpm=None, pace_locally=False))
        self.shared = settings
        # Limits learned here (headers, 429s) are published; until this process learns
        # any, it uses what another one published (read every LIMITS_REFRESH_S).
        self._published: tuple[float, float] = (0.0, 0.0)
        self._others: tuple[float, float] = (0.0, 0.0)
        self._others_read_at = -LIMITS_REFRESH_S
        self._redis = client
        self._keys = keys
        self._take_script = client.register_script(_TAKE)
        self._pause_script = client.register_script(_PAUSE)
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.shared_waits = 0

    def shared_rates(self) -> tuple[float, float]:
        """(rpm, tpm) of the shared bucket, 0 for none: configured, else announced to
        this process, else announced to another one. (A rate found from 429s is this
        process's own share: the local limiter paces it.)"""
        rpm = self.shared.rpm or self.learned.rpm or self._others[0]
        tpm = self.shared.tpm or self.learned.tpm or self._others[1]
        return float(rpm or 0.0), float(tpm or 0.0)

    async def _exchange_limits(self) -> None:
        learned = (float(self.learned.rpm or 0.0), float(self.learned.tpm or 0.0))
        if learned != (0.0, 0.0) and learned != self._published:
            self._published = learned
            await _shielded(self._redis.hset(self._keys.limits, mapping={
                "rpm": learned[0], "tpm": learned[1], "source": "headers"}))
        now = asyncio.get_running_loop().time()
        if learned[0] == 0.0 and now - self._others_read_at >= LIMITS_REFRESH_S:
            self._others_read_at = now
            raw = await _shielded(self._redis.hmget(self._keys.limits, ["rpm", "tpm"]))
            self._others = (_float(raw[0]), _float(raw[1]))

    async def wait_for_permit(self, tokens: int = 0) -> Permit:
        permit = await super().wait_for_permit(tokens)
        try:
            await self._exchange_limits()
        except BaseException:
            permit.release()
            raise
        rpm, tpm = self.shared_rates()
        if not (rpm or tpm):
            return permit
        try:
            async with self._lock:
                while True:
                    wait_ms = int(await _shielded(self._take_script(
                        keys=[self._keys.bucket, self._keys.pause],
                        args=[rpm, tpm,
                              self.shared.burst_seconds, max(0, tokens)],
                    )))
                    if wait_ms <= 0:
                        break
                    self.shared_waits += 1
                    await asyncio.sleep(wait_ms / 1000)
        except BaseException:
            permit.release()
            raise
        return permit

    def on_rate_limited(self, retry_after: float | None) -> None:
        super().on_rate_limited(retry_after)
        pause_ms = int(1000 * (retry_after if retry_after is not None else 1.0))
        task = asyncio.get_running_loop().create_task(self._pause_everyone(pause_ms))
        self._background.add(task)  # keep a reference until done
        task.add_done_callback(self._background.discard)

    async def _pause_everyone(self, pause_ms: int) -> None:
        await _shielded(self._pause_script(keys=[self._keys.pause], args=[pause_ms]))

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        rpm, tpm = self.shared_rates()
        snap.update(rpm=rpm or snap["rpm"], tpm=tpm or None, shared=True,
                    shared_waits=self.shared_waits)
        if self.shared.rpm:
            snap["rpm_source"] = "configured"
        elif not self.learned.rpm and rpm:
            snap["rpm_source"] = "another process"
        return snap


def _float(raw: Any) -> float:
    """A number another process stored in Redis: finite and >= 0, else 0 (none)."""
    try:
        value = float(_text(raw)) if raw is not None else 0.0
    except ValueError:
        return 0.0
    return value if 0.0 <= value < float("inf") else 0.0


# --------------------------------------------------------------------------- coordinator
class RedisCoordinator:
    """One process's handle on a distributed run (see the module docstring)."""

    def __init__(self, url: str, run_id: str, *, lease_seconds: float = 60.0,
                 worker: str | None = None) -> None:
        self.url = url
        self.run_id = run_id
        self.keys = Keys(run_id)
        self.worker = worker or worker_name()
        self.lease_ms = max(1, int(lease_seconds * 1000))
        # Hundreds of task workers commit at once; a blocking pool makes them queue for
        # a connection (redis-py's default pool fails at 100 with "Too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=_MAX_CONNECTIONS, timeout=_CONNECTION_WAIT_S)
        self.aio: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._commit = self.aio.register_script(_COMMIT)
        self._reap = self.aio.register_script(_REAP)
        self._park = self.aio.register_script(_PARK)
        self.reclaimed = 0
        self.reaped = 0
        self.conflicts = 0
        self._joined = False

    async def aclose(self) -> None:
        """Park this process's unfinished entries and delete its consumer (best effort:
        if Redis is gone, a later process reclaims them after the lease), then close."""
        try:
            if self._joined:
                while int(await _shielded(self._park(
                        keys=[self.keys.admissions],
                        args=[GROUP, self.worker, PARKED, _PARKED_IDLE_MS, _PARK_BATCH]))) \
                        >= _PARK_BATCH:
                    pass
        except (redis.RedisError, OSError):
            pass
        finally:
            await _shielded(self.aio.aclose())

    # ---------------------------------------------------------------- set-up
    async def join(self, config: Config, seeds: Sequence[SeedTask]) -> list[SeedTask]:
        """Register this run's dedup settings and seeds, or check them against the run's.
        Returns the run's seeds (the first process's), so every replica starts equal."""
        try:
            await _shielded(self.aio.ping())
        except redis.RedisError as exc:
            raise ConfigError(f"cannot reach Redis at {safe_url(self.url)}: {exc}") from exc
        settings = {"threshold": repr(config.threshold),
                    "inclusive": str(config.inclusive_threshold),
                    "tokenizer": config.tokenizer,
                    "dedup_index": config.dedup_index}
        for key, value in settings.items():
            await _shielded(self.aio.hsetnx(self.keys.meta, key, value))
        stored = _fields(await _shielded(self.aio.hgetall(self.keys.meta)))
        for key, value in settings.items():
            if stored.get(key) != value:
                raise ConfigError(
                    f"config key '{key}': run '{self.run_id}' in Redis uses {stored.get(key)}, "
                    f"this process has {value}; every process of a run must agree"
                )
        payload = orjson.dumps([task.to_json() for task in seeds])
        await _shielded(self.aio.set(self.keys.seeds, payload, nx=True))
        raw = await _shielded(self.aio.get(self.keys.seeds))
        run_seeds = [SeedTask.from_json(item) for item in orjson.loads(raw)] if raw else list(seeds)
        try:
            await _shielded(self.aio.xgroup_create(self.keys.admissions, GROUP, id="0", mkstream=True))
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._joined = True
        return run_seeds

    # ---------------------------------------------------------------- admission
    def make_admit(self, config: Config, seed_texts: Sequence[str]) -> AdmitFn:
        """The admission function for the pipeline's dedup thread (blocking Redis calls
        are fine there; the event loop never waits on them)."""
        return _Admitter(self, config, seed_texts)

    # ---------------------------------------------------------------- Coordinator
    async def written(self) -> int:
        value = await _shielded(self.aio.get(self.keys.written))
        return int(value) if value is not None else 0

    async def unfinished(self) -> int:
        admitted = await _shielded(self.aio.xlen(self.keys.admissions))
        finished = await _shielded(self.aio.hlen(self.keys.done))
        return max(0, int(admitted) - int(finished))

    async def work(self) -> AsyncIterator[PendingTask]:
        last_claim = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() - last_claim >= self.lease_ms / 4000:
                last_claim = loop.time()
                async for task in self._reclaim():
                    yield task
            reply: Any = await _shielded(self.aio.xreadgroup(
                GROUP, self.worker, {self.keys.admissions: ">"}, count=1, block=250
            ))
            for _, entries in reply or []:
                for entry_id, raw in entries:
                    fresh = await self._task_from(_text(entry_id), _fields(raw))
                    if fresh is not None:
                        yield fresh

    async def _reclaim(self) -> AsyncIterator[PendingTask]:
        start = "0-0"
        while True:
            reply: Any = await _shielded(self.aio.xautoclaim(self.keys.admissions, GROUP, self.worker,
                                              min_idle_time=self.lease_ms, start_id=start,
                                              count=50))
            start = _text(reply[0])
            for entry_id, raw in reply[1]:
                if raw is None:
                    continue
                task = await self._task_from(_text(entry_id), _fields(raw))
                if task is not None:
                    self.reclaimed += 1
                    yield task
            if start == "0-0":
                break
        # What dead processes held is ours now: delete their consumers.
        self.reaped += int(await _shielded(self._reap(
            keys=[self.keys.admissions], args=[GROUP, self.lease_ms, self.worker])))

    async def _task_from(self, entry_id: str, fields: dict[str, str]) -> PendingTask | None:
        task_id = fields.get("task", "")
        if await _shielded(self.aio.hexists(self.keys.done, task_id)):
            await _shielded(self.aio.xack(self.keys.admissions, GROUP, entry_id))  # finished elsewhere
            return None
        most_similar = orjson.loads(fields.get("most_similar") or "{}")
        return PendingTask(task_id, fields.get("text", ""), dict(most_similar), ref=entry_id)

    async def commit_task(self, task: PendingTask, record: dict[str, Any], target: int) -> bool:
        result = await _shielded(self._commit(keys=[self.keys.done, self.keys.written, self.keys.tasks],
                                    args=[task.id, target, orjson.dumps(record)]))
        return int(result) == 1

    async def settle(self, task: PendingTask, outcome: str) -> None:
        if outcome == "dropped":
            await _shielded(self.aio.hsetnx(self.keys.done, task.id, "dropped"))
        elif outcome == "duplicate" and not await _shielded(self.aio.hexists(self.keys.done, task.id)):
            return  # target reached before it was written: leave it for a larger target
        if task.ref is not None:
            await _shielded(self.aio.xack(self.keys.admissions, GROUP, task.ref))


class _Admitter:
    """The dedup pool replica and the optimistic append (runs in the dedup thread)."""

    def __init__(self, coordinator: RedisCoordinator, config: Config,
                 seed_texts: Sequence[str]) -> None:
        self.coordinator = coordinator
        self.keys = coordinator.keys
        self.client = redis.Redis.from_url(coordinator.url)
        self.append = self.client.register_script(_APPEND)
        self.config = config
        self.pool = self._new_pool()
        self.pool.preload(seed_texts)
        self.last_id = "0-0"
        self.catch_up()

    def _new_pool(self, top_k: int = 10) -> Pool:
        return Pool(self.config.threshold, inclusive=self.config.inclusive_threshold,
                    tokenizer=self.config.tokenizer, index=self.config.dedup_index, top_k=top_k,
                    mean_similarity=bool(top_k) and self.config.records_avg_similarity())

    def catch_up(self) -> int:
        """Apply every admission after the replica's last one, in stream order."""
        added = 0
        for entry_id, fields in _entries_after(self.client, self.keys.admissions, self.last_id):
            self.pool.add(fields["text"])
            self.last_id = entry_id
            added += 1
        return added

    def __call__(self, texts: Sequence[str]) -> list[DedupDecision]:
        while True:
            self.catch_up()
            decisions, admitted = self._decide(texts)
            if not admitted:
                return decisions
            args: list[Any] = [self.last_id, self.coordinator.worker, len(admitted)]
            for index in admitted:
                d = decisions[index]
                args += [texts[index], orjson.dumps(d.most_similar), repr(d.score)]
            reply = self.append(keys=[self.keys.admissions, self.keys.sequence], args=args)
            if int(reply[0]) == 1:
                for k, index in enumerate(admitted):
                    self.pool.add(texts[index])
                    self.last_id = _text(reply[1 + 2 * k])
                    decisions[index].task_id = _text(reply[2 + 2 * k])
                return decisions
            self.coordinator.conflicts += 1  # another process appended first: decide again

    def _decide(self, texts: Sequence[str]) -> tuple[list[DedupDecision], list[int]]:
        """Candidates against the replica and, in order, against earlier admitted
        candidates of the same batch (kept apart until the append succeeds)."""
        batch = self._new_pool(top_k=0)
        decisions: list[DedupDecision] = []
        admitted: list[int] = []
        for index, text in enumerate(texts):
            main = self.pool.check(text)
            if not main.admitted:
                decisions.append(DedupDecision(False, main.score, main.match, {}))
                continue
            local = batch.admit(text)
            if not local.admitted:
                decisions.append(DedupDecision(False, local.score, local.match, {}))
                continue
            similar = {t: round(s, 6) for t, s in main.most_similar}
            decisions.append(DedupDecision(True, main.score, None, similar,
                                           avg_similarity=None if main.mean_similarity is None
                                           else round(main.mean_similarity, 6)))
            admitted.append(index)
        return decisions, admitted


# --------------------------------------------------------------------------- gather
def gather_run(url: str, run_id: str, out: Path) -> dict[str, int]:
    """Write the run's shared record into ``out`` (a fresh or existing directory):
    seeds, every admission in order, every committed task. Rewrites those files."""
    client = redis.Redis.from_url(url)
    keys = Keys(run_id)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"seeds": 0, "instructions": 0, "tasks": 0}
    raw_seeds = client.get(keys.seeds)
    if raw_seeds is None:
        raise ConfigError(f"no run '{run_id}' in Redis at {safe_url(url)}")
    meta = _fields(client.hgetall(keys.meta))
    for name in (SEEDS, INSTRUCTIONS, TASKS, "rejected.jsonl"):
        (out / name).unlink(missing_ok=True)
    (out / "rejected.jsonl").touch()
    writer = JsonlWriter(out / SEEDS)
    for seed in orjson.loads(raw_seeds):
        writer.append(seed)
        counts["seeds"] += 1
    writer.close()
    writer = JsonlWriter(out / INSTRUCTIONS)
    for _, fields in _entries_after(client, keys.admissions):
        writer.append({"id": fields["task"], "instruction": fields["text"],
                       "most_similar": orjson.loads(fields.get("most_similar") or "{}"),
                       "max_score": float(fields.get("score") or 0.0),
                       "source": {"worker": fields.get("worker")}})
        counts["instructions"] += 1
    writer.close()
    writer = JsonlWriter(out / TASKS)
    for _, fields in _entries_after(client, keys.tasks):
        writer.append(orjson.loads(fields["task"]))
        counts["tasks"] += 1
    writer.close()
    write_json_atomic(out / RUN_JSON, {
        "status": "gathered",
        "config": {"threshold": float(meta.get("threshold", "0.7")),
                   "inclusive_threshold": meta.get("inclusive") == "True",
                   "tokenizer": meta.get("tokenizer", "rouge"), "run_id": run_id},
        "counters": {"tasks_written": counts["tasks"],
                     "instructions_admitted": counts["instructions"], "rejected": 0},
    })
    client.close()
    return counts


def _entries_after(client: redis.Redis, key: str,
                   last_id: str = "0-0") -> Iterator[tuple[str, dict[str, str]]]:
    """Every entry of a stream after ``last_id``, in order, read a page at a time."""
    while True:
        entries: Any = client.xrange(key, min=f"({last_id}", count=_READ_BATCH)
        for entry_id, raw in entries:
            last_id = _text(entry_id)
            yield last_id, _fields(raw)
        if len(entries) < _READ_BATCH:
            return
