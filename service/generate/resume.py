"""Reading a run directory back: where an interrupted run left off.

The files are the source of truth: instructions.jsonl lists every admitted instruction in
admission order, tasks.jsonl the finished ones, rejected.jsonl (``task_level``) the ones
dropped as a whole. Whatever was admitted and neither finished nor dropped is pending
work the next run finishes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.generate.records import RunState
from service.generate.seams import PendingTask
from service.rundir.seeds import SeedTask
from service.rundir.store import INSTRUCTIONS, REJECTED, SEEDS, TASKS, RunDir


@dataclass
class Resumed:
    """What a run directory says about the run so far."""

    state: RunState = field(default_factory=RunState)
    admitted_texts: list[str] = field(default_factory=list)  # admission order
    pending: list[PendingTask] = field(default_factory=list)
    next_task_number: int = 1
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # pending text -> source


def read_back(run_dir: RunDir, *, distributed: bool = False) -> Resumed:
    """The counters, admitted instructions and pending tasks of ``run_dir``. A distributed
    run's pending work lives with its coordinator, not in this directory."""
    admitted: list[dict[str, Any]] = run_dir.records(INSTRUCTIONS)
    done_ids = {rec["id"] for rec in run_dir.records(TASKS) if "id" in rec}
    rejected = run_dir.records(REJECTED)
    dropped_ids = {rec["id"] for rec in rejected if rec.get("task_level") and "id" in rec}
    out = Resumed()
    out.state.tasks_written = len(done_ids)
    out.state.instructions_admitted = len(admitted)
    out.state.rejected = len(rejected)
    for rec in rejected:
        out.state.rejected_by_reason[str(rec.get("reason"))] += 1
    for rec in admitted:
        text = str(rec["instruction"])
        out.admitted_texts.append(text)
        out.next_task_number = max(out.next_task_number, task_number(str(rec["id"])) + 1)
        if not distributed and rec["id"] not in done_ids and rec["id"] not in dropped_ids:
            avg = rec.get("avg_similarity_score")
            out.pending.append(PendingTask(
                str(rec["id"]), text, dict(rec.get("most_similar") or {}),
                avg_similarity=float(avg) if isinstance(avg, int | float) else None,
            ))
            if isinstance(rec.get("source"), dict):
                out.sources[text] = rec["source"]
    out.state.resumed_pending = len(out.pending)
    return out


def task_number(task_id: str) -> int:
    """``task_000042`` -> 42; 0 for an id of another shape."""
    try:
        return int(task_id.rsplit("_", 1)[-1])
    except ValueError:
        return 0


def seeds_for_run(run_dir: RunDir, seeds: Sequence[SeedTask]) -> list[SeedTask]:
    """Record the seeds in the run directory on first use; on resume, use the recorded ones
    so a changed --seed-tasks file cannot silently change a run half-way."""
    recorded = run_dir.records(SEEDS)
    if recorded:
        return [SeedTask.from_json(r) for r in recorded]
    # All at once: a crash part-way through must not leave a part of the seeds for the
    # next run to take as the whole.
    run_dir.write_all(SEEDS, [task.to_json() for task in seeds])
    return list(seeds)
