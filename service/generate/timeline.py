"""timeline.jsonl: the run's cumulative counters every few seconds, for the report's
throughput-over-time charts (tasks/min, requests/s, 429s, retries).

A :class:`TimelineRecorder` is a pipeline observer: the pipeline's own events (calls
finishing, admissions, tasks written) drive it, so it needs no timer task of its own and
writes nothing while the run is idle. Each point is appended in one write like every
other record of the run directory. A resumed run starts a new ``session`` (its elapsed
time and its usage counters start again at zero); the report joins sessions end to end.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from service.generate.seams import AdmissionBatch, CallFinished, PipelineObserver

TIMELINE = "timeline.jsonl"
DEFAULT_INTERVAL_S = 5.0


def pipeline_point(state: Any, usage: dict[str, Any]) -> dict[str, Any]:
    """The counters of a point: the run's (cumulative over sessions, from its files) and
    this session's usage (requests, 429s, retries, tokens, cost)."""
    attempts = usage.get("attempts_by_outcome")
    tokens = usage.get("tokens")
    return {
        "tasks_written": state.tasks_written,
        "instructions_admitted": state.instructions_admitted,
        "rejected": state.rejected,
        "requests": sum(attempts.values()) if isinstance(attempts, dict) else 0,
        "rate_limited": usage.get("rate_limited", 0),
        "retries": usage.get("retries_total", 0),
        "tokens": tokens.get("total", 0) if isinstance(tokens, dict) else 0,
        "cost_usd": usage.get("cost_usd", 0),
        "in_flight": usage.get("in_flight", 0),
    }


class TimelineRecorder(PipelineObserver):
    """Appends a point (via ``append``) at most every ``interval_s``, and a last one when
    the run stops. ``sample`` returns the counters (see :func:`pipeline_point`)."""

    def __init__(self, append: Callable[[dict[str, Any]], None],
                 sample: Callable[[], dict[str, Any]], *, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._append = append
        self._sample = sample
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._last: float | None = None
        self.session = f"{os.getpid()}-{int(time.time() * 1000)}"
        self.calls_by_stage: Counter[str] = Counter()
        self.failed_by_stage: Counter[str] = Counter()
        self.seconds_by_stage: dict[str, float] = {}
        self.points = 0

    def tick(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and self._last is not None and now - self._last < self._interval_s:
            return
        self._last = now
        point = {"session": self.session, "t": round(time.time(), 3),
                 "elapsed_s": round(now - self._started, 3), **self._sample(),
                 "calls_by_stage": dict(self.calls_by_stage),
                 "failed_by_stage": dict(self.failed_by_stage),
                 "seconds_by_stage": {k: round(v, 3) for k, v in self.seconds_by_stage.items()}}
        try:
            self._append(point)
        except OSError:
            self._interval_s = float("inf")  # observers must not raise: stop recording
            return
        self.points += 1

    def admission(self, batch: AdmissionBatch) -> None:
        self.tick()

    def task_written(self, task_id: str) -> None:
        self.tick()

    def call_finished(self, call: CallFinished) -> None:
        self.calls_by_stage[call.stage] += 1
        self.seconds_by_stage[call.stage] = self.seconds_by_stage.get(call.stage, 0.0) + call.seconds
        if not call.ok:
            self.failed_by_stage[call.stage] += 1
        self.tick()

    def stop_requested(self, status: str) -> None:
        self.tick(force=True)


def record_timeline(pipeline: Any, interval_s: float = DEFAULT_INTERVAL_S) -> TimelineRecorder:
    """Subscribe a recorder to ``pipeline`` (a :class:`service.generate.pipeline.Pipeline`)
    appending to its run directory's timeline.jsonl; the first point is written now."""
    recorder = TimelineRecorder(
        lambda point: pipeline.run_dir.append(TIMELINE, point),
        lambda: pipeline_point(pipeline.state, pipeline.backend.snapshot()),
        interval_s=interval_s,
    )
    pipeline.add_observer(recorder)
    recorder.tick(force=True)
    return recorder
