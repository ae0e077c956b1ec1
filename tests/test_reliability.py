"""Reliability: a run through a faulty endpoint, and kill -9 at random moments.

* Fault soak: a `serve` job against the simulator with 5% 5xx, 1% connection resets,
  1% garbage bodies, 1% hangs and 2% truncated outputs reaches its target; every fault
  the simulator injected is counted in run.json and in /metrics; retries stay bounded
  (one retry per failed attempt, no call gives up); no task or admitted instruction
  comes from a failed or truncated response (every model answer is recorded at the
  backend seam and each written record is traced back to the answer it came from).
* Crash consistency: 20 `kill -9` of `python -m service generate` at random moments,
  some of them exactly mid-record (a child whose record writes are split in two), with
  a resume each time. After every kill the directory is damaged at most by torn last
  lines; once repaired (as the next run does on opening) it verifies; nothing written
  before a kill is lost or rewritten; and the tasks equal, as a set of instructions,
  what the admission log says: every admitted instruction is written, dropped (a
  task-level rejection) or pending, and nothing else is written.

The longer version of the fault soak is ``python -m benchmarks.soak``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from service.config import Config
from service.generate.backend import Backend, Choice, Sampling, StagePrompt
from service.generate.filters import clean_instruction, filter_instances
from service.generate.llm_backend import open_backend
from service.generate.orchestrator import run_generate
from service.generate.stages import classify as classify_stage
from service.generate.stages import instances as instance_stage
from service.generate.stages import instructions as instruction_stage
from service.llm.limiter import RateLimiter
from service.rundir.seeds import default_seed_path, load_seed_tasks
from service.rundir.store import INSTRUCTIONS, JSONL_FILES, REJECTED, RUN_JSON, SEEDS, TASKS, RunDir
from service.rundir.verify import PARSE, verify_run
from service.serve.app import ServeSettings, Worker
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import PYTHON, ROOT, make_config

FAULTS: dict[str, Any] = {"error_rate": 0.05, "reset_rate": 0.01, "garbage_rate": 0.01,
                          "hang_rate": 0.01, "truncate_rate": 0.02}


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# ------------------------------------------------------------------------- fault soak
@dataclass
class Call:
    """One Backend.complete call as the pipeline saw it."""

    stage: str
    prompts: list[str]
    choices: list[Choice] | None = None
    error: str | None = None
    cancelled: bool = False


@dataclass
class RecordingBackend:
    """The production backend, with every answer (or failure) it hands the pipeline kept."""

    inner: Any  # LLMBackend
    calls: list[Call] = field(default_factory=list)

    def limiters(self) -> list[RateLimiter]:  # serve times the limiters' waits through this
        return list(self.inner.limiters())

    async def complete(self, stage: str, prompts: Sequence[StagePrompt],
                       sampling: Sampling) -> list[Choice]:
        call = Call(stage, [p.text for p in prompts])
        self.calls.append(call)
        try:
            choices: list[Choice] = await self.inner.complete(stage, prompts, sampling)
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        except BaseException as exc:
            call.error = type(exc).__name__
            raise
        call.choices = list(choices)
        return choices

    def stage_model(self, stage: str) -> str:
        return str(self.inner.stage_model(stage))

    def snapshot(self) -> dict[str, Any]:
        return dict(self.inner.snapshot())


def _last_task_line(prompt: str) -> str:
    """The instruction a classify or instances prompt asks about (its last "Task:" line)."""
    start = prompt.rfind("Task: ")
    assert start >= 0, prompt[-200:]
    return prompt[start + len("Task: "):].split("\n", 1)[0]


def _metric(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


async def test_fault_soak_reaches_target_counts_every_fault_and_writes_nothing_from_bad_answers(
        tmp_path: Path) -> None:
    target = 300
    recorders: list[RecordingBackend] = []

    @contextlib.asynccontextmanager
    async def recording_backend(config: Config) -> AsyncIterator[Backend]:
        async with open_backend(config) as inner:
            recorder = RecordingBackend(inner)
            recorders.append(recorder)
            yield recorder

    # Latency and concurrency make the run last a few seconds whatever the machine, so
    # that hangs (the first comes within the first 40 requests) time out before the end.
    sim_settings = SimSettings(latency_ms=20, seed=27, duplicate_rate=0.2, bad_item_rate=0.1,
                               hang_seconds=10.0, **FAULTS)
    async with SimulatedServer(sim_settings) as sim, \
            Worker(ServeSettings(port=0, state_dir=tmp_path / "state", drain_timeout_s=5.0,
                                 no_auth=True),
                   env={}, backend_factory=recording_backend) as worker, \
            aiohttp.ClientSession() as http:
        body = {"target": target, "base_url": sim.base_url, "model": "sim", "seed": 3,
                "request_timeout": 1.5, "max_in_flight": 8}
        async with http.post(f"{worker.url}/v1/jobs", json=body) as resp:
            assert resp.status == 201, await resp.text()
            job_id = (await resp.json())["id"]
        deadline = asyncio.get_running_loop().time() + 150
        while True:
            async with http.get(f"{worker.url}/v1/jobs/{job_id}") as resp:
                job = await resp.json()
            if job["status"] not in ("queued", "running"):
                break
            assert asyncio.get_running_loop().time() < deadline, job
            await asyncio.sleep(0.1)
        async with http.get(f"{worker.url}/metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        injected = dict(sim.stats()["faults"])

    # --- the target is reached and the run directory is sound
    assert job["status"] == "finished", job["error"]
    run_dir = tmp_path / "state" / "jobs" / job_id / "run"
    tasks = lines(run_dir / TASKS)
    assert len(tasks) == target
    report = verify_run(run_dir)
    assert report.ok, report.summary()
    run = orjson.loads((run_dir / RUN_JSON).read_bytes())
    usage, counters = run["usage"], run["counters"]
    outcomes: dict[str, int] = usage["attempts_by_outcome"]

    # --- every kind of fault was injected, and each one is counted in run.json
    assert all(injected[kind] > 0 for kind in ("error", "reset", "garbage", "hang", "truncate")), \
        injected
    (recorder,) = recorders
    calls = recorder.calls
    cancelled = sum(1 for c in calls if c.cancelled)  # in flight when the target was reached
    seen = {
        "error": outcomes.get("500", 0) + outcomes.get("503", 0),
        "reset": outcomes.get("connection", 0),
        "garbage": outcomes.get("bad_response", 0),
        "hang": outcomes.get("timeout", 0),
    }
    for kind, count in seen.items():
        # A fault can only go uncounted when its request was cancelled at the end.
        assert 0 < count <= injected[kind], (kind, count, injected)
    assert sum(injected[k] - seen[k] for k in seen) <= cancelled, (seen, injected, cancelled)
    assert set(outcomes) <= {"200", "500", "503", "connection", "bad_response", "timeout"}, outcomes
    cut_calls = [c for c in calls if c.choices and all(ch.finish_reason == "length"
                                                        for ch in c.choices)]
    assert injected["truncate"] - cancelled <= len(cut_calls)
    # Every cut answer the pipeline received is counted as a truncated response (cut
    # classify answers that still begin with Yes/No are read, not counted).
    cut_answers = 0
    for c in calls:
        for ch in c.choices or []:
            if ch.finish_reason != "length":
                continue
            if c.stage != "classify" or classify_stage.parse_classify_answer(ch.text) is None:
                cut_answers += 1
    assert counters["truncated_responses"] == cut_answers > 0

    # --- retries are bounded: exactly one retry per failed attempt, no call gave up
    failed_attempts = sum(v for k, v in outcomes.items() if k != "200")
    assert usage["calls"]["failed"] == {}, usage["calls"]
    assert usage["retries_total"] == failed_attempts
    assert counters["llm_failures"] == 0
    assert sum(seen.values()) == failed_attempts
    assert usage["calls"]["ok"] == sum(1 for c in calls if c.choices is not None)
    # the server saw each successful call once plus one request per retry (and at most
    # one request for each call cancelled at the end)
    served = sim.stats()["requests"]
    assert usage["calls"]["ok"] + usage["retries_total"] <= served
    assert served <= usage["calls"]["ok"] + usage["retries_total"] + cancelled

    # --- /metrics says the same as run.json
    for status, count in outcomes.items():
        assert _metric(families, "selfinstruct_llm_requests", "selfinstruct_llm_requests_total",
                       status=status) == count, status
    assert _metric(families, "selfinstruct_llm_retries",
                   "selfinstruct_llm_retries_total") == usage["retries_total"]
    assert _metric(families, "selfinstruct_tasks_written",
                   "selfinstruct_tasks_written_total") == target
    for reason, count in counters["rejected_by_reason"].items():
        assert _metric(families, "selfinstruct_rejections", "selfinstruct_rejections_total",
                       reason=reason) == count, reason
    assert counters["rejected_by_reason"].get("truncated_response", 0) == cut_answers

    # --- nothing written comes from a failed or truncated answer
    good_items: set[str] = set()
    for c in calls:
        if c.stage != "instructions" or c.choices is None:
            continue
        for ch in c.choices:
            if ch.finish_reason != "length":
                good_items.update(clean_instruction(item)
                                  for item in instruction_stage.parse_instruction_items(ch.text))
    admitted = lines(run_dir / INSTRUCTIONS)
    for rec in admitted:
        assert rec["instruction"] in good_items, rec  # never from a cut or failed answer

    classify_ok: dict[str, set[bool]] = {}
    instance_answers: dict[str, list[str]] = {}
    for c in calls:
        if c.choices is None or c.stage == "instructions":
            continue
        (choice,) = c.choices
        instruction = _last_task_line(c.prompts[0])
        if c.stage == "classify":
            answer = classify_stage.parse_classify_answer(choice.text)
            if choice.finish_reason != "length" or answer is not None:
                classify_ok.setdefault(instruction, set()).add(bool(answer))
        elif choice.finish_reason != "length":
            instance_answers.setdefault(instruction, []).append(choice.text)
    filters = Config().filters
    for task in tasks:
        instruction = task["instruction"]
        assert task["is_classification"] in classify_ok.get(instruction, set()), instruction
        parse = (instance_stage.parse_output_first if task["is_classification"]
                 else instance_stage.parse_input_first)
        written = [(i["input"], i["output"]) for i in task["instances"]]
        candidates = [[(i.input, i.output) for i in filter_instances(parse(text), filters).kept]
                      for text in instance_answers.get(instruction, [])]
        assert written in candidates, instruction
    dropped_cut = [r for r in lines(run_dir / REJECTED)
                   if r.get("task_level") and r["reason"] == "truncated_response"]
    assert {r["id"] for r in dropped_cut}.isdisjoint({t["id"] for t in tasks})


# -------------------------------------------------------------------- crash consistency
# A child whose record writes reach the file in two halves, a few milliseconds apart: a
# kill -9 can then land in the middle of a record, as it can on a real machine when a
# write is split (signals, a full disk, a network file system).
TORN_CHILD = """
import os, sys, time
import service.rundir.store as store

class _SplitWrites:
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        view = memoryview(data)
        if len(view) < 2:
            return os.write(fd, view)
        written = os.write(fd, view[: len(view) // 2])
        time.sleep(0.004)
        return written

store.os = _SplitWrites()
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def _spawn(base_url: str, out: Path, target: int, *, torn: bool) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    entry = ["-c", TORN_CHILD] if torn else ["-m", "service"]
    return await asyncio.create_subprocess_exec(
        PYTHON, *entry, "generate", "--out", str(out), "--target", str(target),
        "--base-url", base_url, "--model", "sim", "--quiet", "--show", "0",
        "--max-in-flight", "16", "--request-timeout", "3",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )


def _sizes(out: Path) -> dict[str, int]:
    return {name: (out / name).stat().st_size if (out / name).exists() else 0
            for name in JSONL_FILES}


def _torn_files(out: Path) -> list[str]:
    torn = []
    for name in JSONL_FILES:
        path = out / name
        try:
            with path.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    torn.append(name)
        except (FileNotFoundError, OSError):
            continue
    return torn


async def _kill_at(process: asyncio.subprocess.Process, out: Path, how: str,
                   delay: float) -> None:
    """SIGKILL the child: after ``delay`` seconds ("early"), once it has written new
    records and then ``delay`` more seconds ("random"), or the moment a record is half
    written ("mid-write"; falls back to a random moment after 20 s)."""
    loop = asyncio.get_running_loop()
    if how == "early":
        await asyncio.sleep(delay)
    elif how == "random":
        start = _sizes(out)
        deadline = loop.time() + 30
        while _sizes(out) == start and loop.time() < deadline and process.returncode is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(delay)
    elif how == "mid-seeds":
        # A fresh directory: half-way through recording the seed tasks if they are
        # written record by record, else as soon as the run has admitted something.
        deadline = loop.time() + 20
        while loop.time() < deadline and process.returncode is None:
            with contextlib.suppress(FileNotFoundError):
                if (out / SEEDS).read_bytes().count(b"\n") >= 20 and SEEDS in _torn_files(out):
                    break
            if (out / INSTRUCTIONS).exists():
                break
            await asyncio.sleep(0.0005)
    else:
        start = _sizes(out)
        deadline = loop.time() + 20
        while loop.time() < deadline and process.returncode is None:
            if _sizes(out) != start and _torn_files(out):
                break
            await asyncio.sleep(0.0005)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL)
    await process.wait()


def _check_admission_log(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """tasks ⊆ admitted; each admitted instruction is written, dropped or pending, never
    two of these; ids and instructions unique. Returns (admitted, tasks)."""
    admitted = lines(out / INSTRUCTIONS)
    tasks = lines(out / TASKS)
    rejected = lines(out / REJECTED)
    by_id = {rec["id"]: rec["instruction"] for rec in admitted}
    assert len(by_id) == len(admitted), "an admitted id appears twice"
    assert len(set(by_id.values())) == len(admitted), "an instruction was admitted twice"
    task_ids = [t["id"] for t in tasks]
    assert len(set(task_ids)) == len(task_ids), "a task was written twice"
    for task in tasks:
        assert by_id.get(task["id"]) == task["instruction"], f"{task['id']} is not as admitted"
    dropped = {r["id"] for r in rejected if r.get("task_level")}
    assert dropped <= set(by_id), "a dropped task was never admitted"
    assert dropped.isdisjoint(task_ids), "a task was both dropped and written"
    # What is left, admitted but neither written nor dropped, is pending: the next run
    # finishes it (test_an_outage_loses_nothing_and_the_next_run_finishes_what_was_left).
    return admitted, tasks


async def test_kill_9_twenty_times_then_resume_keeps_every_guarantee(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rng = random.Random(20)
    # 20 kills; the first lands in the middle of recording the seed tasks
    plan = ["mid-seeds", "early", "random", "mid-write", "random",
            *(["mid-write", "early", "random", "mid-write", "random"] * 3)]
    kinds: Counter[str] = Counter()
    torn_seen = 0
    n_seeds = len(load_seed_tasks(default_seed_path()))
    before_admitted: list[dict[str, Any]] = []
    before_tasks: list[dict[str, Any]] = []
    async with SimulatedServer(SimSettings(latency_ms=30, seed=9, duplicate_rate=0.2,
                                           bad_item_rate=0.1)) as sim:
        for how in plan:
            delay = rng.uniform(0.0, 1.2) if how == "early" else rng.uniform(0.0, 0.6)
            process = await _spawn(sim.base_url, out, 5000, torn=how.startswith("mid-"))
            await _kill_at(process, out, how, delay)
            if process.returncode != -signal.SIGKILL:
                assert process.stderr is not None
                raise AssertionError(f"exit {process.returncode}: "
                                     f"{(await process.stderr.read()).decode()}")
            kinds[how] += 1
            if not out.exists():
                continue  # killed before it created the run directory
            torn = _torn_files(out)
            torn_seen += bool(torn)
            # Repaired the way the next run repairs it on opening (on a copy, so the next
            # run still finds the torn tail and repairs it itself).
            copy = tmp_path / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(out, copy)
            with RunDir.open(copy) as repaired:
                assert sorted(r.file for r in repaired.repairs) == sorted(torn)
            assert not list(copy.glob("*.tmp")) and not list(copy.glob(".*.tmp")), \
                "a crashed atomic write's temporary file was left behind"
            # The seed tasks are recorded whole or not at all: a resume must never go on
            # from a part of them.
            assert len(lines(copy / SEEDS)) in (0, n_seeds), \
                f"after a {how} kill: {len(lines(copy / SEEDS))} of {n_seeds} seed tasks recorded"
            if not any((out / name).exists() for name in (TASKS, INSTRUCTIONS, RUN_JSON)):
                continue  # killed while starting, before any work
            # The only damage a kill may leave: torn last lines; once repaired, it verifies.
            raw = verify_run(out)
            for problem in raw.problems:
                assert problem.check == PARSE and "incomplete last line" in problem.message, \
                    problem.describe()
                assert problem.file in torn
            report = verify_run(copy)
            assert report.ok, f"after a {how} kill: {report.summary()}"
            admitted, tasks = _check_admission_log(copy)
            # Nothing complete before an earlier kill was lost or rewritten.
            assert admitted[: len(before_admitted)] == before_admitted
            assert tasks[: len(before_tasks)] == before_tasks
            before_admitted, before_tasks = admitted, tasks
            # The seed tasks are recorded whole or not at all: a resume must never go on
            # from a part of them.
            assert len(lines(copy / SEEDS)) in (0, n_seeds), "seed tasks recorded in part"
        assert kinds["mid-write"] + kinds["mid-seeds"] == 8 and sum(kinds.values()) == 20
        assert torn_seen >= 4, f"only {torn_seen} kills left a torn record"
        # What a kill inside an atomic write leaves (rare to hit by chance): cleaned up.
        (out / f".{RUN_JSON}.4242.tmp").write_bytes(b'{"status": "runn')
        # The last resume runs to a target a little beyond what exists, and finishes.
        final_target = len(before_tasks) + 25
        process = await _spawn(sim.base_url, out, final_target, torn=False)
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stderr.decode()
    report = verify_run(out)
    assert report.ok, report.summary()
    assert not list(out.glob(".*.tmp"))
    admitted, tasks = _check_admission_log(out)
    assert len(tasks) == final_target
    assert admitted[: len(before_admitted)] == before_admitted
    assert tasks[: len(before_tasks)] == before_tasks
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["status"] == "finished"
    assert run["counters"]["tasks_written"] == final_target
    assert len(lines(out / SEEDS)) == n_seeds


# -------------------------------------------------------------------- endpoint outage
async def test_an_outage_loses_nothing_and_the_next_run_finishes_what_was_left(
        tmp_path: Path) -> None:
    """The endpoint fails every request for a while: calls give up after their retries
    (counted, nothing written from them), tasks caught in it stay pending, the run still
    reaches its target, and the next run finishes every instruction left pending."""
    out = tmp_path / "run"
    async with SimulatedServer(SimSettings(latency_ms=10, seed=5, duplicate_rate=0.2,
                                           bad_item_rate=0.1)) as sim:
        config = make_config(out, sim.base_url, target=60, max_attempts=2, max_in_flight=16)
        running = asyncio.create_task(run_generate(config, install_signal_handlers=False))
        deadline = asyncio.get_running_loop().time() + 60
        while len(lines(out / TASKS)) < 10:
            assert asyncio.get_running_loop().time() < deadline and not running.done()
            await asyncio.sleep(0.02)
        sim.update(error_rate=1.0)  # every request answered 500/503
        await asyncio.sleep(2.5)
        sim.update(error_rate=0.0)
        result = await asyncio.wait_for(running, 120)
        assert result.summary.status == "finished"
        run = orjson.loads((out / RUN_JSON).read_bytes())
        failures = run["counters"]["llm_failures"]
        assert failures > 0
        assert sum(run["usage"]["calls"]["failed"].values()) == failures
        assert set(run["usage"]["calls"]["failed"]) == {"retries_exhausted"}
        report = verify_run(out)
        assert report.ok, report.summary()
        admitted, tasks = _check_admission_log(out)
        assert len(tasks) == 60
        dropped = {r["id"] for r in lines(out / REJECTED) if r.get("task_level")}
        pending = {r["id"] for r in admitted} - {t["id"] for t in tasks} - dropped
        assert pending, "the outage left no task pending: it tested nothing"

        # the next run takes the pending ones first and finishes every one of them
        config = make_config(out, sim.base_url, target=60 + len(pending) + 40,
                             max_in_flight=16)
        result = await asyncio.wait_for(run_generate(config, install_signal_handlers=False),
                                        120)
    assert result.summary.status == "finished"
    assert result.summary.state["resumed_pending"] == len(pending)
    report = verify_run(out)
    assert report.ok, report.summary()
    admitted_after, tasks_after = _check_admission_log(out)
    assert admitted_after[: len(admitted)] == admitted and tasks_after[:60] == tasks
    finished = {t["id"] for t in tasks_after} | {
        r["id"] for r in lines(out / REJECTED) if r.get("task_level")}
    assert pending <= finished
