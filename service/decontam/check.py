"""Decontaminating a run directory: find generated texts that share an n-gram with an
evaluation set, list them, or move their tasks to rejected.jsonl.

The run is read one batch of tasks at a time (memory stays flat with run size); only the
ids of contaminated tasks are kept. ``drop`` keeps the run's invariants: the rejections
are appended first (reason ``contamination``, task-level, with the task id, so a resume
never redoes the task), then tasks.jsonl is replaced atomically without those tasks, then
run.json's counters are adjusted. A crash between the steps is repaired by running
``--drop`` again: a task already rejected for contamination is not rejected twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from service.decontam.evalsets import DEFAULT_ID_FIELD, read_eval_texts
from service.decontam.ngrams import DEFAULT_MIN_TOKENS, DEFAULT_N, Match, NgramIndex
from service.errors import RunDirError
from service.generate.seams import TaskRejection
from service.rundir.store import (
    REJECTED,
    TASKS,
    RunDir,
    atomic_file,
    read_jsonl,
    write_json_atomic,
)

CONTAMINATION = "contamination"
STAGE = "decontaminate"
RESULT_FILE = "decontamination.json"
BATCH = 2_000


@dataclass(frozen=True)
class Source:
    """One evaluation file the index was built from (the card and report show these)."""

    path: str
    sha256: str
    items: int
    texts: int


@dataclass(frozen=True)
class Finding:
    task_id: str
    field: str
    instance: int | None
    match_id: str
    match_field: str
    ngram: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_index(
    files: Sequence[Path], *, fields: Sequence[str] = (), id_field: str = DEFAULT_ID_FIELD,
    n: int = DEFAULT_N, min_tokens: int = DEFAULT_MIN_TOKENS,
) -> tuple[NgramIndex, list[Source]]:
    index = NgramIndex(n, min(min_tokens, n))
    sources = []
    for path in files:
        items_before, texts_before = len(index.items), index.texts
        for text in read_eval_texts(path, fields=fields, id_field=id_field):
            index.add(text.item_id, text.field, text.text)
        sources.append(Source(str(path), file_sha256(path), len(index.items) - items_before,
                              index.texts - texts_before))
    return index, sources


def task_texts(task: dict[str, Any]) -> Iterator[tuple[str, int | None, str]]:
    """(field, instance index, text) of a task: its instruction, each input and output."""
    instruction = task.get("instruction")
    if isinstance(instruction, str):
        yield "instruction", None, instruction
    instances = task.get("instances")
    if isinstance(instances, list):
        for i, inst in enumerate(instances):
            if isinstance(inst, dict):
                for name in ("input", "output"):
                    value = inst.get(name)
                    if isinstance(value, str) and value:
                        yield name, i, value


def check_tasks(index: NgramIndex, tasks: Sequence[dict[str, Any]]) -> list[Finding]:
    """Every contaminated (task, field) of a batch of tasks, in task order."""
    keys: list[tuple[str, str, int | None]] = []
    texts: list[str] = []
    for task in tasks:
        task_id = str(task.get("id", ""))
        for field, instance, text in task_texts(task):
            keys.append((task_id, field, instance))
            texts.append(text)
    findings = []
    for (task_id, field, instance), match in zip(keys, index.find(texts), strict=True):
        if match is not None:
            findings.append(_finding(task_id, field, instance, match))
    return findings


def _finding(task_id: str, field: str, instance: int | None, match: Match) -> Finding:
    return Finding(task_id, field, instance, match.item_id, match.field, match.ngram)


@dataclass
class ScanResult:
    checked: int
    findings: list[Finding]

    @property
    def task_ids(self) -> list[str]:
        return list(dict.fromkeys(f.task_id for f in self.findings))


def scan_run(root: Path, index: NgramIndex, *, batch: int = BATCH) -> ScanResult:
    """Check every task of ``root``'s tasks.jsonl, ``batch`` tasks at a time."""
    checked = 0
    findings: list[Finding] = []
    pending: list[dict[str, Any]] = []
    for _, task in read_jsonl(root / TASKS):
        pending.append(task)
        checked += 1
        if len(pending) >= batch:
            findings.extend(check_tasks(index, pending))
            pending.clear()
    if pending:
        findings.extend(check_tasks(index, pending))
    return ScanResult(checked, findings)


def _already_rejected(root: Path) -> set[str]:
    return {
        str(rec["id"]) for _, rec in read_jsonl(root / REJECTED)
        if rec.get("reason") == CONTAMINATION and rec.get("task_level") and "id" in rec
    }


def _rewrite_tasks_without(root: Path, drop: set[str]) -> int:
    """Stream tasks.jsonl into a fresh file without ``drop`` and rename it over the
    original (the one atomic writer: a reader sees the old file or the new one).
    Returns how many tasks were removed."""
    removed = 0
    with atomic_file(root / TASKS) as out:
        for _, task in read_jsonl(root / TASKS):
            if str(task.get("id")) in drop:
                removed += 1
                continue
            out.write(orjson.dumps(task) + b"\n")
    return removed


def drop_findings(run: RunDir, result: ScanResult) -> int:
    """Move the contaminated tasks to rejected.jsonl; returns how many tasks moved."""
    root = run.path
    first: dict[str, Finding] = {}
    for finding in result.findings:
        first.setdefault(finding.task_id, finding)
    if not first:
        return 0
    done = _already_rejected(root)
    instructions = {}
    for _, task in read_jsonl(root / TASKS):
        task_id = str(task.get("id"))
        if task_id in first:
            instructions[task_id] = str(task.get("instruction", ""))
    added = 0
    for task_id, finding in first.items():
        if task_id in done:
            continue
        run.append(REJECTED, {
            "stage": STAGE, "reason": CONTAMINATION, "text": instructions.get(task_id, ""),
            "task_level": True, "id": task_id, "field": finding.field,
            "match_id": finding.match_id, "ngram": finding.ngram,
        })
        added += 1
    removed = _rewrite_tasks_without(root, set(first))
    data = run.read_run_json()
    counters = data.get("counters")
    if isinstance(counters, dict):
        if isinstance(counters.get("tasks_written"), int):
            counters["tasks_written"] -= removed
        if isinstance(counters.get("rejected"), int):
            counters["rejected"] += added
        by_reason = counters.setdefault("rejected_by_reason", {})
        if isinstance(by_reason, dict):
            by_reason[CONTAMINATION] = int(by_reason.get(CONTAMINATION, 0)) + added
        run.write_run_json(data)
    return removed


def record_result(
    run: RunDir, index: NgramIndex, sources: Sequence[Source], result: ScanResult,
    dropped: int,
) -> dict[str, Any]:
    """Write decontamination.json (what was checked against, and what was found): the
    report and the dataset card read it."""
    summary: dict[str, Any] = {
        "n": index.n, "min_tokens": index.min_tokens,
        "against": [asdict(s) for s in sources],
        "eval_texts_unchecked": index.too_short,
        "checked": result.checked,
        "contaminated_tasks": len(result.task_ids),
        "findings": len(result.findings),
        "dropped": dropped,
        "mode": "check",
    }
    write_record(run, summary)
    return summary


def read_result(root: Path) -> dict[str, Any] | None:
    path = root / RESULT_FILE
    if not path.is_file():
        return None
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


class Decontaminator:
    """A pipeline task check (:class:`service.generate.seams.TaskChecks`): a finished task
    sharing an n-gram with the evaluation sets is rejected with reason ``contamination``
    and the matching item's id instead of being written."""

    def __init__(self, index: NgramIndex) -> None:
        self.index = index
        self.rejected = 0

    def __call__(self, record: dict[str, Any]) -> TaskRejection | None:
        findings = check_tasks(self.index, [record])
        if not findings:
            return None
        self.rejected += 1
        first = findings[0]
        return TaskRejection(STAGE, CONTAMINATION, {
            "field": first.field, "match_id": first.match_id, "match_field": first.match_field,
            "ngram": first.ngram})


def write_record(run: RunDir, summary: dict[str, Any]) -> None:
    """decontamination.json, replaced atomically (the lock holder writes it)."""
    write_json_atomic(run.path / RESULT_FILE, summary)


def decontaminate_while_generating(run: RunDir, index: NgramIndex,
                                   sources: Sequence[Source]) -> Decontaminator:
    """The check ``generate --decontaminate`` adds to the pipeline, and its record (the
    report and the card read the counts from rejected.jsonl)."""
    write_record(run, {"mode": "generate", "n": index.n, "min_tokens": index.min_tokens,
                       "against": [asdict(s) for s in sources],
                       "eval_texts_unchecked": index.too_short})
    return Decontaminator(index)
