"""The pipeline's seams: what it is handed (admission, a coordinator) and what it tells.

Everything outside the pipeline that needs to watch or steer a run goes through these
types: the dedup pool is a plain :data:`AdmitFn`, a distributed run a
:class:`Coordinator`, and metrics or logs subscribe a :class:`PipelineObserver`. Nobody
replaces the pipeline's functions or reads its queues.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class DedupDecision:
    """A normalised dedup decision, whatever the pool's own type is."""

    admitted: bool
    score: float
    match: str | None
    most_similar: dict[str, float]
    task_id: str | None = None  # set by a coordinator that numbers tasks globally
    avg_similarity: float | None = None  # mean ROUGE-L F against the whole pool (the reference's)


AdmitFn = Callable[[Sequence[str]], list[DedupDecision]]


def timed_admit(admit: AdmitFn, texts: Sequence[str]) -> tuple[list[DedupDecision], float]:
    """``admit(texts)`` and the seconds it took (measured where it runs: the dedup thread)."""
    start = time.perf_counter()
    decisions = admit(texts)
    return decisions, time.perf_counter() - start


@dataclass
class PendingTask:
    """An admitted instruction on its way to becoming a written task."""

    id: str
    instruction: str
    most_similar: dict[str, float]
    attempts: int = 0
    ref: str | None = None  # the coordinator's handle (e.g. a Redis stream entry id)
    avg_similarity: float | None = None


class Coordinator(Protocol):
    """Several processes on one run (see service.generate.distributed). Admission goes through
    the ``admit`` function the coordinator built; admitted work is handed out by
    :meth:`work` (to any process), and a task is committed once, globally."""

    async def written(self) -> int:
        """Tasks written by all processes together."""
        ...

    async def unfinished(self) -> int:
        """Admitted instructions not yet written or dropped, by any process: the
        supply every process's instruction workers count on."""
        ...

    def work(self) -> AsyncIterator[PendingTask]:
        """Admitted instructions to finish (including ones reclaimed from dead workers)."""
        ...

    async def commit_task(self, task: PendingTask, record: dict[str, Any], target: int) -> bool:
        """Record the finished task unless it was already committed or the target is
        reached; True when this process should write it."""
        ...

    async def settle(self, task: PendingTask, outcome: str) -> None:
        """The task is finished here ("written", "dropped", "duplicate"): stop leasing it."""
        ...


@dataclass(frozen=True)
class AdmissionBatch:
    """One batch of candidates through the dedup pool."""

    candidates: int
    admitted: int
    seconds: float  # time of the admit call itself, measured in the dedup thread


@dataclass(frozen=True)
class CallFinished:
    """One request of a stage to the backend (after the client's own retries)."""

    stage: str
    prompts: int
    ok: bool
    error: str | None = None  # the error's class name when not ok
    seconds: float = 0.0  # the call's wall time, the client's retries and waits included


class PipelineObserver:
    """Events of a run, called on the event loop. Subclass and override what you need;
    every method does nothing by default. An observer must not block or raise: the
    pipeline calls it inline between stages."""

    def admission(self, batch: AdmissionBatch) -> None:
        """A batch of candidates was admitted or rejected by the dedup pool."""

    def task_written(self, task_id: str) -> None:
        """A finished task was appended to tasks.jsonl."""

    def call_finished(self, call: CallFinished) -> None:
        """A backend call of a stage returned or failed."""

    def stop_requested(self, status: str) -> None:
        """The run will stop ("finished", "budget", "failed", "interrupted") or drain
        ("draining")."""


class Observers(PipelineObserver):
    """Several observers as one: each event goes to every subscriber, in order."""

    def __init__(self, observers: Sequence[PipelineObserver] = ()) -> None:
        self.subscribers = list(observers)

    def add(self, observer: PipelineObserver) -> None:
        self.subscribers.append(observer)

    def admission(self, batch: AdmissionBatch) -> None:
        for observer in self.subscribers:
            observer.admission(batch)

    def task_written(self, task_id: str) -> None:
        for observer in self.subscribers:
            observer.task_written(task_id)

    def call_finished(self, call: CallFinished) -> None:
        for observer in self.subscribers:
            observer.call_finished(call)

    def stop_requested(self, status: str) -> None:
        for observer in self.subscribers:
            observer.stop_requested(status)


@dataclass(frozen=True)
class TaskRejection:
    """Why a check refuses a finished task: written to rejected.jsonl as a task-level
    rejection (``detail`` adds fields, e.g. the matching evaluation item)."""

    stage: str
    reason: str
    detail: dict[str, Any]


TaskCheck = Callable[[dict[str, Any]], "TaskRejection | None"]


class TaskChecks:
    """Checks a finished task's record must pass before it is written (e.g.
    decontamination); the first refusal wins. Each runs on the event loop: keep it fast."""

    def __init__(self) -> None:
        self.checks: list[TaskCheck] = []

    def add(self, check: TaskCheck) -> None:
        self.checks.append(check)

    def first_rejection(self, record: dict[str, Any]) -> TaskRejection | None:
        for check in self.checks:
            rejection = check(record)
            if rejection is not None:
                return rejection
        return None
