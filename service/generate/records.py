"""What a run writes: the records of instructions.jsonl, tasks.jsonl and rejected.jsonl,
and run.json's counters. The files' shapes (README, "The run directory") are made here
and nowhere else in the pipeline."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from service import __version__
from service.rundir.seeds import Instance

TRUNCATED = "truncated_response"
NEAR_DUPLICATE = "near_duplicate"
LLM_FAILED = "llm_failed"


@dataclass
class RunState:
    """Counters kept in run.json. The files stay the source of truth on resume."""

    tasks_written: int = 0
    instructions_admitted: int = 0
    rejected: int = 0
    candidates_seen: int = 0
    instruction_requests: int = 0
    truncated_responses: int = 0
    classify_unparsed: int = 0
    classified_yes: int = 0
    llm_failures: int = 0
    resumed_pending: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "rejected_by_reason"}
        data["rejected_by_reason"] = dict(sorted(self.rejected_by_reason.items()))
        return data


@dataclass(frozen=True)
class RunSummary:
    status: str  # "finished" | "interrupted" | "budget" | "failed"
    state: dict[str, Any]
    elapsed_s: float


def rejection_record(stage: str, reason: str, text: str, *, task_level: bool,
                     **extra: Any) -> dict[str, Any]:
    """A line of rejected.jsonl. ``task_level`` marks an admitted instruction dropped as
    a whole (resume must not pick it up again); empty extras are left out."""
    record: dict[str, Any] = {"stage": stage, "reason": reason, "text": text}
    if task_level:
        record["task_level"] = True
    record.update({k: v for k, v in extra.items() if v is not None and v != ""})
    return record


def instruction_record(task_id: str, text: str, most_similar: dict[str, float],
                       score: float, source: dict[str, Any],
                       avg_similarity: float | None = None) -> dict[str, Any]:
    """A line of instructions.jsonl: one admitted instruction, in admission order, with
    the reference's ``avg_similarity_score`` and ``request_idx`` (the call it came from)."""
    record = {"id": task_id, "instruction": text, "most_similar": most_similar,
              "max_score": score, "source": source}
    if avg_similarity is not None:
        record["avg_similarity_score"] = avg_similarity
    if "request_idx" in source:
        record["request_idx"] = source["request_idx"]
    return record


def task_record(task_id: str, instruction: str, is_classification: bool,
                instances: list[Instance], most_similar: dict[str, float],
                models: dict[str, str], avg_similarity: float | None = None,
                raw_instances: str | None = None) -> dict[str, Any]:
    """A line of tasks.jsonl; ``models`` maps each stage to the model that served it.
    ``avg_similarity_score`` and (compat reference) ``raw_instances`` are the
    reference's fields."""
    extra: dict[str, Any] = {}
    if avg_similarity is not None:
        extra["avg_similarity_score"] = avg_similarity
    if raw_instances is not None:
        extra["raw_instances"] = raw_instances
    return {
        "id": task_id,
        "instruction": instruction,
        "is_classification": is_classification,
        "instances": [{"input": i.input, "output": i.output} for i in instances],
        "most_similar": most_similar,
        "meta": {
            "model": models["instructions"],
            "stage_models": {s: models[s] for s in ("classify", "instances")},
        },
        **extra,
    }


def run_json(status: str, config: dict[str, Any], state: RunState, usage: dict[str, Any],
             elapsed_s: float) -> dict[str, Any]:
    """run.json: status, redacted settings, counters, usage and timing."""
    return {
        "version": __version__,
        "status": status,
        "config": config,
        "counters": state.as_dict(),
        "usage": usage,
        "timings": {"elapsed_s": round(elapsed_s, 3)},
    }
