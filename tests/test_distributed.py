"""Distributed runs against a real redis-server and the simulated endpoint: several
processes, one target, one admission order, one rate budget; kill -9 and reclaim."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot
from rouge_score import rouge_scorer

from service.config import load_config
from service.errors import ConfigError
from service.generate.distributed import (
    PARKED,
    Keys,
    RedisCoordinator,
    SharedRateLimiter,
    gather_run,
)
from service.llm.limiter import LimiterSettings
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import start_redis_server
from tests.helpers import jsonl, spawn_generate

pytestmark = pytest.mark.redis
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


async def _worker(base_url: str, url: str, run_id: str, out: Path, target: int,
                  *extra: str) -> asyncio.subprocess.Process:
    return await spawn_generate(base_url, out, target, "--redis", url, "--run-id", run_id,
                                *extra)


def _check_gathered(url: str, run_id: str, out: Path, target: int) -> list[dict[str, object]]:
    counts = gather_run(url, run_id, out)
    tasks = jsonl(out / "tasks.jsonl")
    assert counts["tasks"] == target == len(tasks)
    assert len({t["id"] for t in tasks}) == target
    assert len({t["instruction"] for t in tasks}) == target
    report = verify_run(out)
    assert report.ok, report.summary() + "\n" + "\n".join(p.describe() for p in report.problems)
    return tasks


async def test_three_workers_share_target_rate_and_admission_order(
    redis_url: str, tmp_path: Path
) -> None:
    target = 300
    async with SimulatedServer(SimSettings(rpm=6000, latency_ms=60, seed=5,
                                           duplicate_rate=0.2)) as sim:
        workers = [await _worker(sim.base_url, redis_url, "three", tmp_path / f"w{i}",
                                 target, "--rpm", "6000") for i in range(3)]
        results = await asyncio.wait_for(
            asyncio.gather(*(w.communicate() for w in workers)), 120)
        stats = sim.stats()
    for worker, (_, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr.decode()
    tasks = _check_gathered(redis_url, "three", tmp_path / "gathered", target)
    # Work really was shared: more than one process wrote tasks.
    writers = [len(jsonl(tmp_path / f"w{i}" / "tasks.jsonl")) for i in range(3)]
    assert sum(writers) == len(tasks)
    assert sum(1 for n in writers if n) >= 2
    # One rate budget: the endpoint's limit was (almost) never hit.
    limited = sum(stats["rate_limited"].values()) if stats["rate_limited"] else 0
    assert limited <= 0.005 * stats["requests"] + 1
    _assert_group_is_clean(redis_url, "three")


def _assert_group_is_clean(url: str, run_id: str, killed: int = 0) -> None:
    """After every process has exited: no consumer of any process is left in the group,
    and what is still pending (admitted, never finished: the target came first) is
    parked for a later process, none of it finished already. A killed process's consumer
    is taken over and deleted only while another process still runs (the target may be
    reached first): up to ``killed`` may remain, holding only unfinished entries that any
    later process claims once the lease has passed (and acknowledges if already done)."""
    client = redis.Redis.from_url(url)
    keys = Keys(run_id)
    consumers = {c["name"].decode(): c for c in client.xinfo_consumers(keys.admissions, "workers")}
    left = {name: c for name, c in consumers.items() if name != PARKED}
    assert len(left) <= killed, sorted(consumers)
    pending = client.xpending_range(keys.admissions, "workers", "-", "+", 10_000)
    assert {p["consumer"].decode() for p in pending} <= {PARKED, *left}
    admitted = {entry_id: f[b"task"] for entry_id, f in client.xrange(keys.admissions)}
    for entry in pending:
        if entry["consumer"].decode() == PARKED:  # a clean exit parks only unfinished work
            assert not client.hexists(keys.done, admitted[entry["message_id"]])
        # A killed process may have committed a task and died before acknowledging its
        # entry: a later claimer finds it done and only acknowledges it.
    client.close()


async def test_kill_9_one_worker_others_finish_nothing_lost(redis_url: str,
                                                            tmp_path: Path) -> None:
    target = 150
    async with SimulatedServer(SimSettings(latency_ms=150, seed=6)) as sim:
        lease = ("--lease-seconds", "2")
        victim = await _worker(sim.base_url, redis_url, "kill", tmp_path / "victim", target,
                               *lease)
        deadline = asyncio.get_running_loop().time() + 60
        keys = Keys("kill")
        client = redis.Redis.from_url(redis_url)
        while int(client.get(keys.written) or 0) < 10:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        victim.kill()
        await victim.wait()
        survivors = [await _worker(sim.base_url, redis_url, "kill", tmp_path / f"w{i}",
                                   target, *lease) for i in range(2)]
        results = await asyncio.wait_for(
            asyncio.gather(*(w.communicate() for w in survivors)), 120)
    for worker, (_, stderr) in zip(survivors, results, strict=True):
        assert worker.returncode == 0, stderr.decode()
    gathered = {str(t["id"]) for t in _check_gathered(redis_url, "kill", tmp_path / "gathered",
                                                      target)}
    # Exactly the target was committed once each; the victim's leased work was taken over.
    outcomes = [v.decode() for v in client.hvals(keys.done)]
    assert outcomes.count("written") == target
    survivors = [t["id"] for i in range(2) for t in jsonl(tmp_path / f"w{i}" / "tasks.jsonl")]
    victim_ids = [t["id"] for t in jsonl(tmp_path / "victim" / "tasks.jsonl")]
    local = survivors + victim_ids
    # No task on disk twice, none outside the run; the survivors wrote everything the
    # victim had not committed. The victim may have died between committing a task to
    # Redis and appending it locally (as many as it had finishing at once): the gathered
    # run above has those.
    assert len(set(local)) == len(local) and set(local) <= gathered
    assert len(survivors) >= target - len(victim_ids) - 256  # at most its in-flight cap
    client.close()
    # Nothing the victim held was finished twice or lost.
    _assert_group_is_clean(redis_url, "kill", killed=1)


def test_concurrent_admitters_keep_one_order(redis_url: str) -> None:
    """Four replicas admitting at once (threads, real Redis): appends conflict and are
    re-decided, and the resulting order has no pair above the threshold."""
    config, _ = load_config({"redis": redis_url, "run_id": "order"}, env={})
    async def join() -> None:
        joined = RedisCoordinator(redis_url, "order")
        await joined.join(config, [])
        await joined.aclose()

    asyncio.run(join())
    coordinator = RedisCoordinator(redis_url, "order")  # its admitters use sync clients
    rng = random.Random(1)
    words = ["write", "poem", "about", "the", "sea", "list", "three", "tips", "for", "sleep",
             "explain", "why", "sky", "is", "blue", "give", "a", "recipe", "with", "eggs"]
    corpus = [" ".join(rng.choices(words, k=rng.randint(4, 9))) for _ in range(400)]
    rejected: list[str] = []
    lock = threading.Lock()

    def run(part: list[str]) -> None:
        admit = coordinator.make_admit(config, [])
        for start in range(0, len(part), 5):
            batch = part[start:start + 5]
            for text, decision in zip(batch, admit(batch), strict=True):
                if not decision.admitted:
                    with lock:
                        rejected.append(text)

    threads = [threading.Thread(target=run, args=(corpus[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = redis.Redis.from_url(redis_url)
    stream = [f[b"text"].decode() for _, f in client.xrange(Keys("order").admissions)]
    client.close()
    assert len(stream) + len(rejected) == len(corpus)
    for j in range(len(stream)):
        for i in range(j):
            assert SCORER.score(stream[i], stream[j])["rougeL"].fmeasure <= 0.7
    for text in rejected:  # every rejection had a real near-duplicate admitted
        assert any(SCORER.score(text, s)["rougeL"].fmeasure > 0.7 for s in stream)
    assert coordinator.conflicts > 0  # the optimistic path was exercised


async def test_mismatched_settings_are_refused(redis_url: str) -> None:
    first, _ = load_config({"redis": redis_url, "run_id": "cfg"}, env={})
    other, _ = load_config({"redis": redis_url, "run_id": "cfg", "threshold": 0.6}, env={})
    a, b = RedisCoordinator(redis_url, "cfg"), RedisCoordinator(redis_url, "cfg")
    await a.join(first, [])
    with pytest.raises(ConfigError, match="threshold"):
        await b.join(other, [])
    index, _ = load_config({"redis": redis_url, "run_id": "cfg", "dedup_index": "lsh64"},
                           env={})
    with pytest.raises(ConfigError, match="'dedup_index': run 'cfg' in Redis uses exact"):
        await b.join(index, [])
    await a.aclose()
    await b.aclose()


def test_every_key_of_a_run_hashes_to_one_cluster_slot() -> None:
    """The scripts take several keys; Redis Cluster runs them only if all share a slot."""
    for run_id in ("run42", "a.b-c_d", "x" * 64):
        keys = [v for k, v in vars(Keys(run_id)).items() if not k.startswith("_")]
        assert len(keys) >= 9
        assert all(f"{{{run_id}}}" in key for key in keys)
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
    assert key_slot(Keys("a").admissions.encode()) != key_slot(Keys("b").admissions.encode())


async def test_a_run_works_on_a_redis_cluster(tmp_path: Path) -> None:
    """A real one-node Redis Cluster holding every slot: it refuses any multi-key command
    whose keys hash to different slots (CROSSSLOT), as a many-node cluster does."""
    with socket.socket() as probe:  # the cluster bus: port + 10000 may not exist
        probe.bind(("127.0.0.1", 0))
        bus_port = probe.getsockname()[1]
    server, url = start_redis_server(tmp_path, "--cluster-enabled", "yes", "--cluster-port",
                               str(bus_port), "--cluster-config-file",
                               str(tmp_path / "nodes.conf"))
    try:
        client = redis.Redis.from_url(url)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        for _ in range(200):
            if b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"):
                break
            await asyncio.sleep(0.05)
        async with SimulatedServer(SimSettings(latency_ms=5, seed=4)) as sim:
            worker = await _worker(sim.base_url, url, "cluster", tmp_path / "w", 15,
                                   "--rpm", "60000")
            _, stderr = await asyncio.wait_for(worker.communicate(), 120)
        assert worker.returncode == 0, stderr.decode()
        assert int(client.get(Keys("cluster").written) or 0) == 15
        client.close()
    finally:
        server.kill()
        server.wait()


async def test_a_429_pause_is_never_shortened_by_another_process(redis_url: str) -> None:
    """Several processes report a 429 at once, one with a long Retry-After: the shared
    pause ends at the latest of them (one atomic script, not read-then-write)."""
    settings = LimiterSettings(rpm=600, tpm=None, max_in_flight=4)
    for round_ in range(5):
        keys = Keys(f"pause{round_}")
        coordinators = [RedisCoordinator(redis_url, f"pause{round_}") for _ in range(6)]
        limiters = [SharedRateLimiter(settings, c.aio, c.keys) for c in coordinators]
        for i, limiter in enumerate(limiters):
            limiter.on_rate_limited(30.0 if i == 0 else 0.05)
        client = redis.Redis.from_url(redis_url)
        for _ in range(100):  # until every report has reached Redis
            await asyncio.sleep(0.02)
            if client.pttl(keys.pause) > 0:
                break
        await asyncio.sleep(0.3)
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        assert int(client.get(keys.pause) or 0) - now_ms > 25_000, f"round {round_}"
        client.close()
        for coordinator in coordinators:
            await coordinator.aclose()


async def test_export_gathers_a_distributed_run(redis_url: str, tmp_path: Path) -> None:
    from service.cli import main

    async with SimulatedServer(SimSettings(latency_ms=10, seed=8)) as sim:
        workers = [await _worker(sim.base_url, redis_url, "gather", tmp_path / f"w{i}", 30)
                   for i in range(2)]
        for worker in workers:
            _, stderr = await asyncio.wait_for(worker.communicate(), 120)
            assert worker.returncode == 0, stderr.decode()
    out = tmp_path / "gathered"
    code = await asyncio.to_thread(main, ["export", "--run", str(out), "--redis", redis_url,
                                          "--run-id", "gather", "--format", "alpaca"])
    assert code == 0
    assert len(jsonl(out / "tasks.jsonl")) == 30
    assert len(jsonl(out / "export" / "alpaca.jsonl")) >= 30
    assert verify_run(out).ok
    assert await asyncio.to_thread(main, ["export", "--run", str(out), "--redis", redis_url,
                                          "--run-id", "../etc"]) == 2


async def test_a_worker_fails_cleanly_when_redis_goes_away(tmp_path: Path) -> None:
    """Redis stops mid-run: the worker must end with an error, not hang for ever."""
    server, url = start_redis_server(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        async with SimulatedServer(SimSettings(latency_ms=100, seed=9)) as sim:
            worker = await _worker(sim.base_url, url, "gone", tmp_path / "w", 100_000)
            deadline = asyncio.get_running_loop().time() + 60
            while int(client.get(Keys("gone").written) or 0) < 5:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            server.kill()
            server.wait()
            _, stderr = await asyncio.wait_for(worker.communicate(), 120)
        assert worker.returncode != 0
        assert b"error:" in stderr and b"connect" in stderr.lower()  # named, not a traceback
    finally:
        if server.poll() is None:
            server.kill()
