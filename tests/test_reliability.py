"""Reliability: a run through a faulty endpoint, and an endpoint outage.

* Fault soak: a `serve` job against the simulator with 5% 5xx, 1% connection resets,
  1% garbage bodies, 1% hangs and 2% truncated outputs reaches its target; every fault
  the simulator injected is counted in run.json and in /metrics; retries stay bounded
  (one retry per failed attempt, no call gives up); no task or admitted instruction
  comes from a failed or truncated response (every model answer is recorded at the
  backend seam and each written record is traced back to the answer it came from).
  Each rule is its own test over one shared run, so a failure names the rule.
* Endpoint outage: nothing is lost, the next run finishes what was left.

(kill -9 with resume, including mid-record kills: tests/test_kill9.py.)

The longer version of the fault soak is ``python -m benchmarks.soak``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import Config
from service.generate.backend import Backend, Sampling, StageAnswer, StagePrompt
from service.generate.filters import clean_instruction
from service.generate.llm_backend import open_backend
from service.generate.orchestrator import run_generate
from service.generate.processing import rules_for
from service.generate.stages import classify as classify_stage
from service.generate.stages import instructions as instruction_stage
from service.llm.limiter import RateLimiter
from service.rundir.store import INSTRUCTIONS, REJECTED, RUN_JSON, TASKS
from service.rundir.verify import verify_run
from service.serve.app import ServeSettings, Worker
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import make_config
from tests.helpers import check_admission_log, jsonl

FAULTS: dict[str, Any] = {"error_rate": 0.05, "reset_rate": 0.01, "garbage_rate": 0.01,
                          "hang_rate": 0.01, "truncate_rate": 0.02}


# ------------------------------------------------------------------------- fault soak
@dataclass
class Call:
    """One Backend.complete call as the pipeline saw it."""

    stage: str
    prompts: list[str]
    choices: list[StageAnswer] | None = None
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
                       sampling: Sampling) -> list[StageAnswer]:
        call = Call(stage, [p.text for p in prompts])
        self.calls.append(call)
        try:
            choices: list[StageAnswer] = await self.inner.complete(stage, prompts, sampling)
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


@dataclass
class Soak:
    """What one fault-soak run left: the job, its run directory, the answers recorded at
    the backend seam, /metrics, and what the simulator injected and served."""

    job: dict[str, Any]
    run_dir: Path
    calls: list[Call]
    families: dict[str, Any]
    injected: dict[str, int]
    served: int
    target: int

    @property
    def run(self) -> dict[str, Any]:
        return dict(orjson.loads((self.run_dir / RUN_JSON).read_bytes()))

    @property
    def outcomes(self) -> dict[str, int]:
        return dict(self.run["usage"]["attempts_by_outcome"])

    @property
    def cancelled(self) -> int:
        """Calls in flight when the target was reached (cancelled, so never answered)."""
        return sum(1 for c in self.calls if c.cancelled)

    def seen(self) -> dict[str, int]:
        """Each injected fault kind as run.json counts it."""
        outcomes = self.outcomes
        return {
            "error": outcomes.get("500", 0) + outcomes.get("503", 0),
            "reset": outcomes.get("connection", 0),
            "garbage": outcomes.get("bad_response", 0),
            "hang": outcomes.get("timeout", 0),
        }

    def cut_lists(self) -> int:
        """Cut instruction lists: each is dropped whole (a truncated_response rejection); a
        cut instance answer loses only its last instance and a cut Yes/No reads as No."""
        return sum(1 for c in self.calls if c.stage == "instructions"
                   for ch in c.choices or [] if ch.finish_reason == "length")

    def cut_answers(self) -> int:
        """Cut answers the pipeline could not use (cut classify answers that still begin
        with Yes/No are read, not counted)."""
        count = 0
        for c in self.calls:
            for ch in c.choices or []:
                if ch.finish_reason == "length" and (
                        c.stage != "classify"
                        or classify_stage.parse_classify_answer(ch.text) is None):
                    count += 1
        return count


async def _soak(state: Path, target: int) -> Soak:
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
            Worker(ServeSettings(port=0, state_dir=state, drain_timeout_s=5.0, no_auth=True),
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
        served = int(sim.stats()["requests"])
    (recorder,) = recorders
    return Soak(job, state / "jobs" / job_id / "run", recorder.calls, families, injected,
                served, target)


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Soak:
    """One fault-soak run shared by the tests below (each checks one rule of it)."""
    return asyncio.run(_soak(tmp_path_factory.mktemp("soak") / "state", 300))


def test_soak_reaches_its_target_and_verifies(soak: Soak) -> None:
    assert soak.job["status"] == "finished", soak.job["error"]
    assert len(jsonl(soak.run_dir / TASKS)) == soak.target
    report = verify_run(soak.run_dir)
    assert report.ok, report.summary()


def test_soak_injected_every_fault_and_counts_each_in_run_json(soak: Soak) -> None:
    injected = soak.injected
    assert all(injected[kind] > 0 for kind in ("error", "reset", "garbage", "hang", "truncate")), \
        injected
    seen = soak.seen()
    for kind, count in seen.items():
        # A fault can only go uncounted when its request was cancelled at the end.
        assert 0 < count <= injected[kind], (kind, count, injected)
    assert sum(injected[k] - seen[k] for k in seen) <= soak.cancelled, (seen, injected)
    assert set(soak.outcomes) <= {"200", "500", "503", "connection", "bad_response",
                                  "timeout"}, soak.outcomes


def test_soak_counts_every_cut_answer_as_truncated(soak: Soak) -> None:
    cut_calls = [c for c in soak.calls
                 if c.choices and all(ch.finish_reason == "length" for ch in c.choices)]
    assert soak.injected["truncate"] - soak.cancelled <= len(cut_calls)
    counters = soak.run["counters"]
    assert counters["truncated_responses"] == soak.cut_answers() > 0
    assert counters["rejected_by_reason"].get("truncated_response", 0) == soak.cut_lists()


def test_soak_retries_once_per_failed_attempt_and_no_call_gives_up(soak: Soak) -> None:
    usage, counters, outcomes = soak.run["usage"], soak.run["counters"], soak.outcomes
    failed_attempts = sum(v for k, v in outcomes.items() if k != "200")
    assert failed_attempts > 0
    assert usage["calls"]["failed"] == {}, usage["calls"]
    assert usage["retries_total"] == failed_attempts
    assert counters["llm_failures"] == 0
    assert sum(soak.seen().values()) == failed_attempts
    assert usage["calls"]["ok"] == sum(1 for c in soak.calls if c.choices is not None)
    # the server saw each successful call once plus one request per retry (and at most
    # one request for each call cancelled at the end)
    sent = usage["calls"]["ok"] + usage["retries_total"]
    assert sent <= soak.served <= sent + soak.cancelled


def test_soak_metrics_say_what_run_json_says(soak: Soak) -> None:
    usage, counters = soak.run["usage"], soak.run["counters"]
    for status, count in soak.outcomes.items():
        assert _metric(soak.families, "selfinstruct_llm_requests",
                       "selfinstruct_llm_requests_total", status=status) == count, status
    assert _metric(soak.families, "selfinstruct_llm_retries",
                   "selfinstruct_llm_retries_total") == usage["retries_total"]
    assert _metric(soak.families, "selfinstruct_tasks_written",
                   "selfinstruct_tasks_written_total") == soak.target
    assert counters["rejected_by_reason"]
    for reason, count in counters["rejected_by_reason"].items():
        assert _metric(soak.families, "selfinstruct_rejections",
                       "selfinstruct_rejections_total", reason=reason) == count, reason


def test_soak_admits_no_instruction_from_a_failed_or_cut_answer(soak: Soak) -> None:
    good_items: set[str] = set()
    for c in soak.calls:
        if c.stage != "instructions" or c.choices is None:
            continue
        for ch in c.choices:
            if ch.finish_reason != "length":
                good_items.update(clean_instruction(item)
                                  for item in instruction_stage.parse_instruction_items(ch.text))
    admitted = jsonl(soak.run_dir / INSTRUCTIONS)
    assert admitted
    for rec in admitted:
        assert rec["instruction"] in good_items, rec


def test_soak_writes_no_task_from_a_failed_or_cut_answer(soak: Soak) -> None:
    classify_ok: dict[str, set[bool]] = {}
    instance_answers: dict[str, list[tuple[str, str | None]]] = {}
    for c in soak.calls:
        if c.choices is None or c.stage == "instructions":
            continue
        (choice,) = c.choices
        instruction = _last_task_line(c.prompts[0])
        if c.stage == "classify":
            answer = classify_stage.parse_classify_answer(choice.text)
            classify_ok.setdefault(instruction, set()).add(answer is True)  # else No
        else:
            instance_answers.setdefault(instruction, []).append((choice.text, choice.finish_reason))
    rules = rules_for("default", Config().filters)
    tasks = jsonl(soak.run_dir / TASKS)
    assert tasks
    for task in tasks:
        instruction = task["instruction"]
        assert task["is_classification"] in classify_ok.get(instruction, set()), instruction
        written = [(i["input"], i["output"]) for i in task["instances"]]
        candidates = []
        for text, finish in instance_answers.get(instruction, []):
            outcome = rules.instances(text, task["is_classification"], finish)
            kept, _ = rules.cap(outcome.kept, random.Random(f"3:{task['id']}"))  # the job's seed
            candidates.append([(i.input, i.output) for i in kept])
        assert written in candidates, instruction
    dropped_cut = [r for r in jsonl(soak.run_dir / REJECTED)
                   if r.get("task_level") and r["reason"] == "truncated_response"]
    assert {r["id"] for r in dropped_cut}.isdisjoint({t["id"] for t in tasks})


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
        while len(jsonl(out / TASKS)) < 10:
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
        admitted, tasks = check_admission_log(out)
        assert len(tasks) == 60
        dropped = {r["id"] for r in jsonl(out / REJECTED) if r.get("task_level")}
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
    admitted_after, tasks_after = check_admission_log(out)
    assert admitted_after[: len(admitted)] == admitted and tasks_after[:60] == tasks
    finished = {t["id"] for t in tasks_after} | {
        r["id"] for r in jsonl(out / REJECTED) if r.get("task_level")}
    assert pending <= finished
