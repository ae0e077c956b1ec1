"""The whole pipeline over HTTP against the real simulated server: target, invariants,
every filter's reason, resume, per-stage models, kill -9 and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from service.generate.orchestrator import run_generate
from service.generate.pipeline import Pipeline
from service.generate.seams import AdmissionBatch, CallFinished, PipelineObserver
from service.rundir.store import INSTRUCTIONS, REJECTED, RUN_JSON, TASKS
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import make_config
from tests.helpers import jsonl, spawn_generate, wait_for_lines


async def test_generate_reaches_target_and_passes_verify(sim: SimulatedServer,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = await run_generate(make_config(out, sim.base_url, target=150),
                                install_signal_handlers=False)
    assert result.summary.status == "finished"
    tasks = jsonl(out / TASKS)
    assert len(tasks) == 150
    report = verify_run(out)
    assert report.ok, report.summary()
    run = json.loads((out / RUN_JSON).read_text())
    assert run["counters"]["tasks_written"] == 150
    assert run["usage"]["tokens"]["total"] > 0
    reasons = {r["reason"] for r in jsonl(out / REJECTED)}
    assert "near_duplicate" in reasons
    assert reasons - {"near_duplicate"}, "the filters rejected nothing"
    for task in tasks:
        assert 1 <= len(task["instances"]) <= 5  # type: ignore[arg-type]
        assert task["meta"]["model"] == "sim"  # type: ignore[index]
    assert any(t["is_classification"] for t in tasks) or run["counters"]["classified_yes"] == 0


async def test_resume_continues_without_loss_or_duplicates(sim: SimulatedServer,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "run"
    await run_generate(make_config(out, sim.base_url, target=40), install_signal_handlers=False)
    first = jsonl(out / TASKS)
    admitted_before = {r["instruction"] for r in jsonl(out / INSTRUCTIONS)}
    await run_generate(make_config(out, sim.base_url, target=90), install_signal_handlers=False)
    tasks = jsonl(out / TASKS)
    assert len(tasks) == 90
    assert tasks[:40] == first  # append-only: nothing rewritten
    assert len({t["id"] for t in tasks}) == 90
    assert len({t["instruction"] for t in tasks}) == 90
    assert admitted_before <= {r["instruction"] for r in jsonl(out / INSTRUCTIONS)}
    assert verify_run(out).ok


async def test_per_stage_model_is_used_and_recorded(sim: SimulatedServer,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = make_config(out, sim.base_url, target=10)
    stages = dict(config.stages)
    from dataclasses import replace

    stages["instances"] = replace(stages["instances"], model="strong-model")
    config = replace(config, stages=stages)
    await run_generate(config, install_signal_handlers=False)
    task = jsonl(out / TASKS)[0]
    assert task["meta"]["stage_models"]["instances"] == "strong-model"  # type: ignore[index]
    assert task["meta"]["model"] == "sim"  # type: ignore[index]
    by_model = json.loads((out / RUN_JSON).read_text())["usage"]["tokens"]["by_model"]
    assert set(by_model) == {"sim", "strong-model"}


async def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    async with SimulatedServer(SimSettings(latency_ms=200, seed=4)) as slow:
        process = await spawn_generate(slow.base_url, out, 5000)
        await wait_for_lines(out / TASKS, 5)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode in (0, 130), stderr.decode()
    run = json.loads((out / RUN_JSON).read_text())
    assert run["status"] == "interrupted"
    assert run["counters"]["tasks_written"] == len(jsonl(out / TASKS))
    assert verify_run(out).ok


class _DrainAfter(PipelineObserver):
    """Asks the pipeline to drain once ``after`` tasks are written; notes how many tasks
    workers had started at that moment and how many were written afterwards."""

    def __init__(self, pipeline: Pipeline, after: int) -> None:
        self.pipeline, self.after = pipeline, after
        self.running_at_drain: int | None = None
        self.queued_at_drain = 0
        self.written_after = 0

    def task_written(self, task_id: str) -> None:
        if self.running_at_drain is not None:
            self.written_after += 1
        elif self.pipeline.state.tasks_written >= self.after:
            # This task's worker is still counted as running; the drain lets it finish.
            self.running_at_drain = self.pipeline.flow.tasks_running - 1
            self.queued_at_drain = self.pipeline.tasks_queued
            self.pipeline.request_drain()


async def test_drain_finishes_started_tasks_and_leaves_queued_ones_pending(
        tmp_path: Path) -> None:
    """A drain (SIGTERM, Ctrl-C) lets calls and started tasks finish and starts none of
    the queued ones: they stay pending in instructions.jsonl, so the drain lasts about
    one call, not the queue's length, and a resumed run finishes them."""
    out = tmp_path / "run"
    drains: list[_DrainAfter] = []

    def attach(pipeline: Pipeline) -> None:
        drains.append(_DrainAfter(pipeline, after=8))
        pipeline.add_observer(drains[0])

    # Slow answers under a low request rate: admitted tasks queue up behind the workers.
    async with SimulatedServer(SimSettings(latency_ms=100, seed=6)) as sim:
        config = make_config(out, sim.base_url, target=5000, rpm=600, max_in_flight=8)
        result = await asyncio.wait_for(
            run_generate(config, install_signal_handlers=False, on_pipeline=attach), 60)
        (drain,) = drains
        assert result.summary.status == "interrupted"
        assert drain.running_at_drain is not None and drain.queued_at_drain > 0
        assert drain.written_after <= drain.running_at_drain
        written = len(jsonl(out / TASKS))
        dropped = len({r["id"] for r in jsonl(out / REJECTED) if r.get("id")})
        pending = len(jsonl(out / INSTRUCTIONS)) - written - dropped
        assert pending >= drain.queued_at_drain - drain.running_at_drain
        assert verify_run(out).ok
        # The pending ones come first in the next run.
        resumed = await run_generate(make_config(out, sim.base_url, target=written + 3,
                                                 max_in_flight=8),
                                     install_signal_handlers=False)
        assert resumed.summary.status == "finished"
        assert verify_run(out).ok


async def test_cost_from_price_table_and_budget_stops_new_calls(sim: SimulatedServer,
                                                               tmp_path: Path) -> None:
    from dataclasses import replace

    out = tmp_path / "run"
    config = replace(make_config(out, sim.base_url, target=100000, budget_usd=0.05),
                     prices={"sim": (1.0, 2.0)})
    result = await run_generate(config, install_signal_handlers=False)
    assert result.summary.status == "budget"
    run = json.loads((out / RUN_JSON).read_text())
    usage = run["usage"]
    tokens = usage["tokens"]
    expected = (tokens["prompt"] * 1.0 + tokens["completion"] * 2.0) / 1_000_000
    assert usage["cost_usd"] == pytest.approx(expected, rel=1e-6)
    # New calls stop at the cap; calls already in flight may finish a little past it.
    assert 0.05 <= usage["cost_usd"] < 0.5
    assert verify_run(out).ok


class _Recorder(PipelineObserver):
    """Every event a run reports, in order."""

    def __init__(self) -> None:
        self.batches: list[AdmissionBatch] = []
        self.written: list[str] = []
        self.calls: list[CallFinished] = []
        self.stops: list[str] = []

    def admission(self, batch: AdmissionBatch) -> None:
        self.batches.append(batch)

    def task_written(self, task_id: str) -> None:
        self.written.append(task_id)

    def call_finished(self, call: CallFinished) -> None:
        self.calls.append(call)

    def stop_requested(self, status: str) -> None:
        self.stops.append(status)


async def test_observer_sees_every_event_of_a_run(sim: SimulatedServer, tmp_path: Path) -> None:
    """The pipeline's seam: an observer added before the run hears admissions (matching
    instructions.jsonl), every written task (matching tasks.jsonl), every call and the
    stop, and the limiter's wait callback hears every acquire."""
    out = tmp_path / "run"
    recorder = _Recorder()
    waits: list[float] = []

    def attach(pipeline: Pipeline) -> None:
        pipeline.add_observer(recorder)
        for limiter in pipeline.backend.limiters():
            limiter.on_wait = waits.append

    result = await run_generate(make_config(out, sim.base_url, target=12),
                                install_signal_handlers=False, on_pipeline=attach)
    assert result.summary.status == "finished"
    assert recorder.written == [t["id"] for t in jsonl(out / TASKS)]
    assert sum(b.admitted for b in recorder.batches) == len(jsonl(out / INSTRUCTIONS))
    assert sum(b.candidates for b in recorder.batches) >= sum(b.admitted for b in recorder.batches)
    assert all(b.seconds >= 0 for b in recorder.batches)
    stages = {c.stage for c in recorder.calls if c.ok}
    assert stages == {"instructions", "classify", "instances"}
    assert recorder.stops[0] == "finished"
    assert len(waits) >= len(recorder.calls) and all(w >= 0 for w in waits)
