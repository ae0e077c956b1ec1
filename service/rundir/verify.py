"""Check a run directory's invariants (README, "The run directory") and report every broken one.

``verify_run(path) -> VerifyReport`` reads the run directory without taking its lock and
without changing anything (a torn last line is reported, not repaired), so it can check a
run that is still being written. Each problem names the check that failed and, where
there is one, the file and line. The checks, by name:

``parse``                every line of tasks/instructions/rejected/seeds.jsonl (and run.json) parses
``schema``               records have the fields the pipeline writes, with the right types
``unique_ids``           task ids unique in tasks.jsonl; instruction ids unique in instructions.jsonl
``unique_instructions``  no instruction text twice in tasks.jsonl, nor in instructions.jsonl
``near_duplicates``      no two instructions above the run's ROUGE-L threshold: the run's
                         seeds (seeds.jsonl), admitted instructions and task instructions;
                         pairs of two seeds are not the run's doing and are not checked
``instance_count``       every task has 1..max_instances instances (5 unless run.json says otherwise)
``empty_output``         no instance with an empty output
``output_equals_input``  no instance whose output equals its input
``conflicting_outputs``  no task mapping one input to different outputs
``counters``             run.json counters equal the files' line counts (skipped while
                         run.json says ``running``: its counters lag the files by design)
``task_admitted``        every task's instruction is in instructions.jsonl

The threshold, inclusiveness and tokenizer come from run.json's ``config`` (defaults 0.7,
False, "rouge"). Pairs are found with ``dedup.scan.near_duplicate_pairs`` when it is
available, else (or with ``brute=True``) with a brute force over ``rouge-score``.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from service.errors import RunDirError
from service.rundir.store import (
    INSTRUCTIONS,
    REJECTED,
    RUN_JSON,
    SEEDS,
    TASKS,
    read_jsonl,
    read_run_json,
)

PARSE = "parse"
SCHEMA = "schema"
UNIQUE_IDS = "unique_ids"
UNIQUE_INSTRUCTIONS = "unique_instructions"
NEAR_DUPLICATES = "near_duplicates"
INSTANCE_COUNT = "instance_count"
EMPTY_OUTPUT = "empty_output"
OUTPUT_EQUALS_INPUT = "output_equals_input"
CONFLICTING_OUTPUTS = "conflicting_outputs"
COUNTERS = "counters"
TASK_ADMITTED = "task_admitted"
CHECKS = (
    PARSE, SCHEMA, UNIQUE_IDS, UNIQUE_INSTRUCTIONS, NEAR_DUPLICATES, INSTANCE_COUNT,
    EMPTY_OUTPUT, OUTPUT_EQUALS_INPUT, CONFLICTING_OUTPUTS, COUNTERS, TASK_ADMITTED,
)

DEFAULT_THRESHOLD = 0.7
DEFAULT_MAX_INSTANCES = 5
FINISHED_STATES = frozenset({"finished", "interrupted", "budget", "failed"})
# counter key in run.json -> the file whose line count it must equal
COUNTER_FILES = {"tasks_written": TASKS, "instructions_admitted": INSTRUCTIONS, "rejected": REJECTED}

PairsFn = Callable[..., list[tuple[int, int, float]]]


@dataclass(frozen=True)
class Problem:
    """One broken invariant: which check, where (file and 1-based line if any), what."""

    check: str
    message: str
    file: str | None = None
    line: int | None = None

    def location(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def describe(self) -> str:
        where = self.location()
        return f"{where}: [{self.check}] {self.message}" if where else f"[{self.check}] {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "file": self.file, "line": self.line, "message": self.message}


@dataclass
class VerifyReport:
    """The result of :func:`verify_run`. ``ok`` is True when ``problems`` is empty."""

    path: Path
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD
    inclusive: bool = False
    tokenizer: str = "rouge"
    similarity: str = ""  # how pairs were found: "dedup.scan" or "rouge-score brute force"

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, check: str, message: str, file: str | None = None, line: int | None = None) -> None:
        self.problems.append(Problem(check, message, file, line))

    def failed_checks(self) -> list[str]:
        """Names of the checks with at least one problem, in CHECKS order."""
        seen = {p.check for p in self.problems}
        return [c for c in CHECKS if c in seen]

    def by_check(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for p in self.problems:
            out.setdefault(p.check, []).append(p)
        return out

    def summary(self) -> str:
        c = self.counts
        body = (
            f"{c.get('tasks', 0)} tasks, {c.get('instances', 0)} instances, "
            f"{c.get('instructions', 0)} admitted instructions, {c.get('rejected', 0)} rejected, "
            f"{c.get('seeds', 0)} seeds; ROUGE-L threshold {self.threshold}"
            f"{' (inclusive)' if self.inclusive else ''}, tokenizer {self.tokenizer}, "
            f"pairs by {self.similarity or 'n/a'}"
        )
        if self.ok:
            return f"OK {self.path}: {body}"
        counts = Counter(p.check for p in self.problems)
        failed = ", ".join(f"{name} ({counts[name]})" for name in self.failed_checks())
        return f"FAILED {self.path}: {len(self.problems)} problems: {failed}; {body}"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "failed_checks": self.failed_checks(),
            "counts": dict(self.counts),
            "notes": list(self.notes),
            "threshold": self.threshold,
            "inclusive": self.inclusive,
            "tokenizer": self.tokenizer,
            "similarity": self.similarity,
        }


# ---------------------------------------------------------------------------------- reading

def _iter_records(
    path: Path, report: VerifyReport, lines: Counter[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line, object) for every good line; report each bad one and go on.

    ``lines[file]`` counts the non-blank lines, good or bad (what a counter should equal).
    """
    name = path.name

    def torn(lineno: int) -> None:
        lines[name] += 1
        report.add(
            PARSE,
            "incomplete last line (a crash mid-write; opening the run directory "
            "again, e.g. resuming generate, cuts it off)",
            name, lineno,
        )

    def problem(lineno: int, what: str) -> None:
        lines[name] += 1
        report.add(PARSE, what, name, lineno)

    for lineno, obj in read_jsonl(path, torn="skip", on_torn=torn, on_problem=problem):
        lines[name] += 1
        yield lineno, obj


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _config_value(config: dict[str, Any], key: str, default: Any, kind: type | tuple[type, ...]) -> Any:
    value = config.get(key, default)
    if isinstance(value, bool) and kind is not bool:
        return default
    return value if isinstance(value, kind) else default


# ---------------------------------------------------------------------------- similarity

class UnicodeTokenizer:
    """The project's ``unicode`` tokenizer (``dedup.tokenize.unicode_tokens``) in the shape
    rouge-score wants (an object with ``tokenize``). Without the dedup package: lower-cased
    runs of Unicode letters and digits."""

    _word = re.compile(r"[^\W_]+")

    def __init__(self) -> None:
        try:
            module = importlib.import_module("dedup.tokenize")
            self._tokens: Callable[[str], list[str]] | None = module.unicode_tokens
        except (ImportError, AttributeError):
            self._tokens = None

    def tokenize(self, text: str) -> list[str]:
        if self._tokens is not None:
            return list(self._tokens(text))
        return self._word.findall(text.lower())


def brute_force_pairs(
    texts: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = False,
    tokenizer: str = "rouge",
    skip_below: int = 0,
) -> list[tuple[int, int, float]]:
    """Every pair i<j whose rouge-score ROUGE-L F is above ``threshold`` (>= if inclusive).

    Pairs with ``j < skip_below`` (both among the first ``skip_below`` texts) are skipped.
    ``tokenizer="rouge"`` is rouge-score's own tokenizer (independent of ``dedup``);
    ``"unicode"`` is the project's Unicode tokenizer. Each text is tokenized once; F comes from rouge-score's own LCS scoring, so the float
    values equal ``RougeScorer(["rougeL"], use_stemmer=False).score(a, b)``. A pair whose
    length ratio makes F > threshold impossible is skipped (a mathematically safe bound,
    applied with a margin so float rounding cannot matter).
    """
    from rouge_score import rouge_scorer, tokenizers

    tok: Any = UnicodeTokenizer() if tokenizer == "unicode" else tokenizers.DefaultTokenizer(
        use_stemmer=False
    )
    score_lcs = getattr(rouge_scorer, "_score_lcs", None)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=tok)
    tokens: list[list[str]] = [tok.tokenize(t) for t in texts]

    def fmeasure(i: int, j: int) -> float:
        if score_lcs is not None:
            return float(score_lcs(tokens[i], tokens[j]).fmeasure)
        return float(scorer.score(texts[i], texts[j])["rougeL"].fmeasure)

    margin = 1e-9
    out: list[tuple[int, int, float]] = []
    for j in range(max(1, skip_below), len(texts)):
        lj = len(tokens[j])
        if lj == 0:
            continue
        for i in range(j):
            li = len(tokens[i])
            if li == 0 or 2 * min(li, lj) / (li + lj) < threshold - margin:
                continue
            f = fmeasure(i, j)
            if f > threshold or (inclusive and f >= threshold):
                out.append((i, j, f))
    out.sort()
    return out


def _scan_pairs() -> PairsFn | None:
    try:
        module = importlib.import_module("dedup.scan")
    except ImportError:
        return None
    fn = getattr(module, "near_duplicate_pairs", None)
    return cast(PairsFn, fn) if callable(fn) else None


# ------------------------------------------------------------------------------- checks

@dataclass
class _Entry:
    text: str
    file: str
    line: int
    classification: bool = False  # seeds only: is_classification


def verify_run(
    path: Path | str,
    *,
    brute: bool = False,
    threshold: float | None = None,
    inclusive: bool | None = None,
    tokenizer: str | None = None,
) -> VerifyReport:
    """Check every invariant of the run directory at ``path``; never raises for a broken one.

    Raises RunDirError only when ``path`` is not a run directory at all. ``threshold``,
    ``inclusive`` and ``tokenizer`` override what run.json's config says; ``brute`` uses the
    rouge-score brute force even when ``dedup.scan`` is available.
    """
    root = Path(path)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such run directory")
    if not any((root / name).exists() for name in (TASKS, INSTRUCTIONS, RUN_JSON)):
        raise RunDirError(f"{root}: not a run directory (no {TASKS}, {INSTRUCTIONS} or {RUN_JSON})")
    report = VerifyReport(path=root)

    run_json: dict[str, Any] = {}
    try:
        run_json = read_run_json(root)
    except RunDirError as exc:
        report.add(PARSE, str(exc).split(": ", 1)[-1], RUN_JSON)
    config = run_json.get("config")
    config = config if isinstance(config, dict) else {}
    filters = config.get("filters")
    filters = filters if isinstance(filters, dict) else {}
    report.threshold = float(
        threshold if threshold is not None
        else _config_value(config, "threshold", DEFAULT_THRESHOLD, (int, float))
    )
    report.inclusive = bool(
        inclusive if inclusive is not None
        else _config_value(config, "inclusive_threshold", False, bool)
    )
    report.tokenizer = str(
        tokenizer if tokenizer is not None else _config_value(config, "tokenizer", "rouge", str)
    )
    max_instances = int(_config_value(filters, "max_instances", DEFAULT_MAX_INSTANCES, int))

    lines: Counter[str] = Counter()
    seeds = _read_seeds(root, report, lines)
    if _config_value(config, "classification_seeds_only", False, bool):
        # the run compared its instructions with the classification seeds only
        seeds = [e for e in seeds if e.classification]
    instructions = _read_instructions(root, report, lines)
    admitted_texts = {e.text for e in instructions}
    task_entries = _read_tasks(root, report, lines, admitted_texts, max_instances)
    reasons = _read_rejected(root, report, lines)

    report.counts.update(
        tasks=lines[TASKS], instructions=lines[INSTRUCTIONS], rejected=lines[REJECTED],
        seeds=lines[SEEDS],
    )
    report.counts.setdefault("instances", 0)
    if not (root / SEEDS).exists():
        report.notes.append(f"no {SEEDS}: instructions were not compared with the seeds")

    # Near duplicates: seeds, then each distinct admitted instruction, then task
    # instructions that were never admitted (already reported by task_admitted).
    entries: list[_Entry] = list(seeds)
    seen: set[str] = set()
    for e in [*instructions, *task_entries]:
        if e.text not in seen:
            seen.add(e.text)
            entries.append(e)
    _check_pairs(report, entries, n_seeds=len(seeds), brute=brute)
    _check_counters(report, run_json, lines, reasons)
    return report


def _read_seeds(root: Path, report: VerifyReport, lines: Counter[str]) -> list[_Entry]:
    out: list[_Entry] = []
    for lineno, obj in _iter_records(root / SEEDS, report, lines):
        text = obj.get("instruction")
        if not isinstance(text, str) or not text.strip():
            report.add(SCHEMA, "'instruction' missing or not a non-empty string", SEEDS, lineno)
            continue
        out.append(_Entry(text, SEEDS, lineno, obj.get("is_classification") is True))
    return out


def _check_id(report: VerifyReport, ids: dict[str, int], rec_id: Any, label: str,
              file: str, lineno: int) -> None:
    """A record's id is a non-empty string not used before in ``file`` (``ids``: each id's
    first line; ``label``: how the message names the id)."""
    if not isinstance(rec_id, str) or not rec_id:
        report.add(SCHEMA, "'id' missing or not a non-empty string", file, lineno)
    elif rec_id in ids:
        report.add(UNIQUE_IDS, f"{label} {rec_id!r} already used on line {ids[rec_id]}", file, lineno)
    else:
        ids[rec_id] = lineno


def _check_unique_text(report: VerifyReport, texts: dict[str, int], text: str, file: str,
                       lineno: int) -> None:
    """An instruction appears once in ``file`` (``texts``: each one's first line)."""
    if text in texts:
        report.add(UNIQUE_INSTRUCTIONS, f"instruction {_short(text)} already on line {texts[text]}",
                   file, lineno)
    else:
        texts[text] = lineno


def _read_instructions(root: Path, report: VerifyReport, lines: Counter[str]) -> list[_Entry]:
    out: list[_Entry] = []
    ids: dict[str, int] = {}
    texts: dict[str, int] = {}
    for lineno, obj in _iter_records(root / INSTRUCTIONS, report, lines):
        text = obj.get("instruction")
        _check_id(report, ids, obj.get("id"), "id", INSTRUCTIONS, lineno)
        if not isinstance(text, str) or not text.strip():
            report.add(SCHEMA, "'instruction' missing or not a non-empty string", INSTRUCTIONS, lineno)
            continue
        _check_unique_text(report, texts, text, INSTRUCTIONS, lineno)
        out.append(_Entry(text, INSTRUCTIONS, lineno))
    return out


def _read_tasks(
    root: Path,
    report: VerifyReport,
    lines: Counter[str],
    admitted: set[str],
    max_instances: int,
) -> list[_Entry]:
    """Check every task line; return the instructions to compare that were never admitted."""
    ids: dict[str, int] = {}
    texts: dict[str, int] = {}
    unadmitted: list[_Entry] = []
    n_instances = 0
    for lineno, obj in _iter_records(root / TASKS, report, lines):
        text = obj.get("instruction")
        _check_id(report, ids, obj.get("id"), "task id", TASKS, lineno)
        if not isinstance(obj.get("is_classification"), bool):
            report.add(SCHEMA, "'is_classification' missing or not true/false", TASKS, lineno)
        if not isinstance(text, str) or not text.strip():
            report.add(SCHEMA, "'instruction' missing or not a non-empty string", TASKS, lineno)
        else:
            _check_unique_text(report, texts, text, TASKS, lineno)
            if text not in admitted:
                report.add(
                    TASK_ADMITTED, f"instruction {_short(text)} is not in {INSTRUCTIONS}", TASKS, lineno
                )
                unadmitted.append(_Entry(text, TASKS, lineno))
        n_instances += _check_instances(report, obj.get("instances"), lineno, max_instances)
    report.counts["instances"] = n_instances
    return unadmitted


def _check_instances(report: VerifyReport, instances: Any, lineno: int, max_instances: int) -> int:
    if not isinstance(instances, list):
        report.add(SCHEMA, "'instances' missing or not a list", TASKS, lineno)
        return 0
    if not 1 <= len(instances) <= max_instances:
        report.add(
            INSTANCE_COUNT, f"{len(instances)} instances (expected 1 to {max_instances})", TASKS, lineno
        )
    outputs_by_input: dict[str, set[str]] = {}
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if not isinstance(inst, dict):
            report.add(SCHEMA, f"'{where}' is not an object", TASKS, lineno)
            continue
        inp, out = inst.get("input"), inst.get("output")
        if not isinstance(inp, str) or not isinstance(out, str):
            report.add(SCHEMA, f"'{where}' needs string 'input' and 'output'", TASKS, lineno)
            continue
        if not out.strip():
            report.add(EMPTY_OUTPUT, f"{where} has an empty output", TASKS, lineno)
        elif out.strip() == inp.strip():
            report.add(OUTPUT_EQUALS_INPUT, f"{where} output equals its input {_short(inp)}", TASKS, lineno)
        if inp.strip():  # a task with no input has many right outputs ("Write a haiku")
            outputs_by_input.setdefault(inp.strip(), set()).add(out.strip())
    for inp, outs in outputs_by_input.items():
        if len(outs) > 1:
            report.add(
                CONFLICTING_OUTPUTS,
                f"input {_short(inp)} maps to {len(outs)} different outputs", TASKS, lineno,
            )
    return len(instances)


def _read_rejected(root: Path, report: VerifyReport, lines: Counter[str]) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for lineno, obj in _iter_records(root / REJECTED, report, lines):
        stage, reason = obj.get("stage"), obj.get("reason")
        if not isinstance(stage, str) or not isinstance(reason, str):
            report.add(SCHEMA, "'stage' and 'reason' must be strings", REJECTED, lineno)
        reasons[str(reason)] += 1
    return reasons


def _check_pairs(report: VerifyReport, entries: list[_Entry], *, n_seeds: int, brute: bool) -> None:
    texts = [e.text for e in entries]
    scan = None if brute else _scan_pairs()
    if scan is not None:
        report.similarity = "dedup.scan"
        pairs = scan(
            texts, threshold=report.threshold, inclusive=report.inclusive, tokenizer=report.tokenizer
        )
    else:
        report.similarity = "rouge-score brute force"
        pairs = brute_force_pairs(
            texts, report.threshold, report.inclusive, report.tokenizer, skip_below=n_seeds
        )
    op = ">=" if report.inclusive else ">"
    for i, j, score in sorted(pairs):
        if j < n_seeds:
            continue  # two seeds: given, not produced by the run
        a, b = entries[i], entries[j]
        report.add(
            NEAR_DUPLICATES,
            f"ROUGE-L {score:.4f} {op} {report.threshold} with {a.file}:{a.line}: "
            f"{_short(b.text, 60)} ~ {_short(a.text, 60)}",
            b.file, b.line,
        )


def _check_counters(
    report: VerifyReport, run_json: dict[str, Any], lines: Counter[str], reasons: Counter[str]
) -> None:
    if not run_json:
        report.notes.append(f"no {RUN_JSON} counters: file counts not compared")
        return
    status = run_json.get("status")
    counters = run_json.get("counters")
    if not isinstance(counters, dict):
        counters = {}
    if status is not None and status not in FINISHED_STATES:
        report.notes.append(
            f"{RUN_JSON} status is {status!r}: counters not compared (they lag the files "
            "while a run is writing, and stay behind after a kill)"
        )
        return
    compared = 0
    for key, name in COUNTER_FILES.items():
        if key not in counters:
            continue
        compared += 1
        value = counters[key]
        if value != lines[name]:
            report.add(COUNTERS, f"counters.{key} is {value!r} but {name} has {lines[name]} lines", RUN_JSON)
    by_reason = counters.get("rejected_by_reason")
    if isinstance(by_reason, dict):
        compared += 1
        for reason in sorted(set(by_reason) | set(reasons)):
            want, have = by_reason.get(reason, 0), reasons.get(reason, 0)
            if want != have:
                report.add(
                    COUNTERS,
                    f"counters.rejected_by_reason[{reason!r}] is {want!r} but {REJECTED} has {have}",
                    RUN_JSON,
                )
    if compared == 0:
        report.notes.append(f"{RUN_JSON} has no counters: file counts not compared")
