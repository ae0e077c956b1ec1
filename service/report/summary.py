"""Every number the report shows, counted from the run directory's files in one pass each.

Why streaming: a run of 200,000 tasks must report without loading at once. Each JSONL
file is read one line at a time and folded into bounded counters (lengths are counted by
word count, capped, so a length distribution is a few hundred integers whatever the run
size). Two things grow with the run, both bounded: the ROUGE-L overlap analysis keeps the
admitted instructions' texts (not the tasks) in a :class:`dedup.pool.Pool`, and queries
at most ``overlap_sample`` of them spread evenly through the run; the rejection examples
keep one short text per reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dedup.pool import Pool
from service.errors import RunDirError
from service.generate.timeline import TIMELINE
from service.report.verbs import verb_object
from service.rundir.locate import require_run_dir
from service.rundir.store import (
    INSTRUCTIONS,
    REJECTED,
    SEEDS,
    TASKS,
    open_file,
    read_jsonl,
    read_run_json,
)

DECONTAMINATION = "decontamination.json"
SUMMARY_VERSION = 1
LENGTH_CAP = 2_000  # words; longer texts count in the last bucket
OVERLAP_BINS = 20
DEFAULT_OVERLAP_SAMPLE = 5_000
OVERLAP_CHUNK = 20_000  # earlier instructions held at once by the overlap analysis
DEFAULT_TOP = 20
# Pools for the overlap analysis only need the exact top-1 score: a threshold of 1.0 keeps
# the admission index's prefixes one token long (the top-1 comes from the full index).
_TOP_ONLY = 1.0
EXAMPLE_CHARS = 300
MAX_TIMELINE_POINTS = 100_000
MAX_LABELS = 200
LABEL_CHARS = 80


@dataclass(frozen=True)
class ReportOptions:
    overlap_sample: int = DEFAULT_OVERLAP_SAMPLE  # 0: skip the overlap analysis
    top: int = DEFAULT_TOP


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (run.json is untrusted too)."""
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _label(value: str, seen: Mapping[str, int]) -> str:
    """A stage or reason as counted: at most MAX_LABELS distinct ones (then "(other)"),
    each at most LABEL_CHARS long, so a strange file cannot blow up the summary."""
    value = value[:LABEL_CHARS]
    return value if value in seen or len(seen) < MAX_LABELS else "(other)"


def _words(text: str) -> int:
    return len(text.split())


def _distribution(counts: Mapping[int, int]) -> dict[str, Any]:
    """Count, mean, percentiles and the full (capped) histogram of word counts."""
    total = sum(counts.values())
    if total == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "max": None,
                "by_words": {}}
    keys = sorted(counts)
    mean = sum(k * v for k, v in counts.items()) / total

    def pct(q: float) -> int:
        rank = max(1, math.ceil(q * total))
        seen = 0
        for k in keys:
            seen += counts[k]
            if seen >= rank:
                return k
        return keys[-1]

    return {"count": total, "mean": round(mean, 3), "p50": pct(0.5), "p90": pct(0.9),
            "max": keys[-1], "by_words": {str(k): counts[k] for k in keys}}


def _histogram(values: list[float]) -> dict[str, Any]:
    counts = [0] * OVERLAP_BINS
    for v in values:
        counts[min(OVERLAP_BINS - 1, max(0, int(v * OVERLAP_BINS)))] += 1
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 4) if values else None,
        "max": round(max(values), 4) if values else None,
        "bin_edges": [round(i / OVERLAP_BINS, 3) for i in range(OVERLAP_BINS + 1)],
        "counts": counts,
    }


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) of a run file, one line at a time. A last line without its newline
    is a record still being written by a running ``generate`` (the report takes no lock):
    it is left out, never parsed. Any other bad line names the file and the line."""
    return read_jsonl(path, torn="skip")


def _count_lines(path: Path) -> int:
    try:
        fh = open_file(path)
    except FileNotFoundError:
        return 0
    with fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))


def _short(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _tokenizer(config: Mapping[str, Any]) -> str:
    value = config.get("tokenizer")
    return value if value in {"rouge", "unicode"} else "rouge"


def _threshold(config: Mapping[str, Any]) -> float:
    value = config.get("threshold")
    return float(value) if isinstance(value, int | float) and 0 < value <= 1 else 0.7


def overlap(root: Path, config: Mapping[str, Any], sample: int,
            chunk: int = OVERLAP_CHUNK) -> dict[str, Any]:
    """ROUGE-L of admitted instructions to their most similar seed and most similar
    earlier admitted instruction (the paper's Figure 3), for an even sample of them.

    Memory stays flat with run size: the sampled texts are kept (at most ``sample``), and
    the earlier instructions go through a pool of at most ``chunk`` entries. When a chunk
    is full, every later sampled instruction is scored against it, then it is dropped; a
    sampled instruction meets the entries before it in its own chunk as it is reached.
    Each score is exact; the maximum over the chunks is the maximum over all of them.
    """
    total = _count_lines(root / INSTRUCTIONS)
    result: dict[str, Any] = {"instructions": total, "sampled": 0}
    if sample == 0 or total == 0:
        result["seed"] = _histogram([])
        result["earlier"] = _histogram([])
        return result
    stride = max(1, math.ceil(total / sample))
    tokenizer = _tokenizer(config)
    seeds = Pool(_TOP_ONLY, tokenizer=tokenizer, top_k=1)
    for _, seed in records(root / SEEDS):
        if isinstance(seed.get("instruction"), str):
            seeds.add(seed["instruction"])

    def texts() -> Iterator[tuple[int, str]]:
        for position, (_, rec) in enumerate(records(root / INSTRUCTIONS)):
            text = rec.get("instruction")
            if isinstance(text, str):
                yield position, text

    sampled = [(position, text) for position, text in texts() if position % stride == 0]
    to_seed = [seeds.check(text).score if len(seeds) else 0.0 for _, text in sampled]
    best = [0.0] * len(sampled)
    has_earlier = [False] * len(sampled)
    pool = Pool(_TOP_ONLY, tokenizer=tokenizer, top_k=1)
    next_sample = 0
    for seen, (position, text) in enumerate(texts()):
        if next_sample < len(sampled) and sampled[next_sample][0] == position:
            has_earlier[next_sample] = seen > 0
            if len(pool):
                best[next_sample] = max(best[next_sample], pool.check(text).score)
            next_sample += 1
        pool.add(text)
        if len(pool) >= chunk:
            for later in range(next_sample, len(sampled)):
                best[later] = max(best[later], pool.check(sampled[later][1]).score)
            pool = Pool(_TOP_ONLY, tokenizer=tokenizer, top_k=1)
    to_earlier = [score for score, earlier in zip(best, has_earlier, strict=True) if earlier]
    result["sampled"] = len(to_seed)
    result["stride"] = stride
    result["seed"] = _histogram(to_seed)
    result["earlier"] = _histogram(to_earlier)
    return result


def _timeline(root: Path) -> Iterator[dict[str, Any]]:
    for count, (_, point) in enumerate(records(root / TIMELINE), start=1):
        if count > MAX_TIMELINE_POINTS:
            return
        yield point


def _delta(point: Mapping[str, Any], previous: Mapping[str, Any], key: str) -> float:
    a, b = point.get(key, 0), previous.get(key, 0)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a - b)
    return 0.0


def throughput(root: Path, run_json: Mapping[str, Any]) -> dict[str, Any]:
    """Rates per interval of timeline.jsonl (cumulative counters the run appends every
    few seconds; a resumed run starts a new session, joined end to end); without one,
    only the run's overall rate from run.json."""
    points: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    offset = 0.0  # elapsed time of the sessions before this one
    sessions = 0
    totals: tuple[dict[str, float], ...] = ({}, {}, {})
    last_stage_counts: tuple[dict[str, Any], ...] = ({}, {}, {})
    for point in _timeline(root):
        t = point.get("elapsed_s")
        if not isinstance(t, int | float):
            continue
        if previous is None or point.get("session") != previous.get("session"):
            if previous is not None:
                offset += float(previous["elapsed_s"])
                _add_stage_counts(totals, last_stage_counts)
            sessions += 1
            previous = point
            last_stage_counts = _stage_counts(point)
            continue
        dt = t - previous["elapsed_s"]
        if dt <= 0:
            continue
        points.append({
            "elapsed_s": round(offset + float(t), 3),
            "tasks_per_min": round(_delta(point, previous, "tasks_written") * 60 / dt, 3),
            "requests_per_s": round(_delta(point, previous, "requests") / dt, 3),
            "rate_limited": int(_delta(point, previous, "rate_limited")),
            "retries": int(_delta(point, previous, "retries")),
        })
        previous = point
        last_stage_counts = _stage_counts(point)
    if previous is not None:
        _add_stage_counts(totals, last_stage_counts)
    calls, failed, seconds = totals
    timings = _obj(run_json.get("timings"))
    elapsed = timings.get("elapsed_s")
    written = _obj(run_json.get("counters")).get("tasks_written")
    overall = None
    if isinstance(elapsed, int | float) and elapsed > 0 and isinstance(written, int):
        overall = round(written * 60 / elapsed, 3)
    return {"source": TIMELINE if points else None, "sessions": sessions, "points": points,
            "calls_by_stage": _by_count(calls),
            "failed_calls_by_stage": _by_count(failed),
            "seconds_per_call_by_stage": {
                stage: round(seconds.get(stage, 0) / n, 4) for stage, n in _by_count(calls).items() if n},
            "elapsed_s": elapsed, "tasks_per_min_overall": overall}


def _stage_counts(point: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    return (_obj(point.get("calls_by_stage")), _obj(point.get("failed_by_stage")),
            _obj(point.get("seconds_by_stage")))


def _add_stage_counts(totals: tuple[dict[str, float], ...],
                      last: tuple[dict[str, Any], ...]) -> None:
    """A session's last point holds its counts per stage: add them to the run's."""
    for target, counts in zip(totals, last, strict=True):
        for stage, n in counts.items():
            if isinstance(n, int | float) and not isinstance(n, bool):
                target[stage] = target.get(stage, 0) + n


def _by_count(counts: Mapping[str, float]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def usage(run_json: Mapping[str, Any]) -> dict[str, Any]:
    """Tokens, cost, calls, retries and latency as the run recorded them in run.json."""
    raw = _obj(run_json.get("usage"))
    tokens = _obj(raw.get("tokens"))
    config = _obj(run_json.get("config"))
    stages = _obj(config.get("stages"))
    default_model = config.get("model")
    stage_models = {
        stage: (spec.get("model") if isinstance(spec, dict) and spec.get("model") else default_model)
        for stage, spec in stages.items()
    }
    return {
        "by_model": tokens.get("by_model", {}),
        "by_stage": tokens.get("by_stage", {}),
        "prompt_tokens": tokens.get("prompt"),
        "completion_tokens": tokens.get("completion"),
        "total_tokens": tokens.get("total"),
        "cost_usd": raw.get("cost_usd"),
        "calls": raw.get("calls", {}),
        "retries_total": raw.get("retries_total"),
        "retries": raw.get("retries", {}),
        "rate_limited": raw.get("rate_limited"),
        "latency_s": raw.get("latency_s", {}),
        "stage_models": stage_models,
    }


def summarize(path: Path, options: ReportOptions | None = None) -> dict[str, Any]:
    """The report's numbers for the run directory at ``path`` (not modified)."""
    options = options or ReportOptions()
    root = require_run_dir(path)
    run_json = read_run_json(root)
    config = _obj(run_json.get("config"))

    seeds = sum(1 for _ in records(root / SEEDS))

    # instructions.jsonl: admissions
    admitted = 0
    for _ in records(root / INSTRUCTIONS):
        admitted += 1

    # rejected.jsonl: the funnel's losses
    by_reason: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    by_stage_reason: dict[str, Counter[str]] = {}
    task_level_by_reason: Counter[str] = Counter()
    instance_level = candidate_losses = candidate_dedup = 0
    examples: dict[str, str] = {}
    rejected = 0
    contamination_matches: Counter[str] = Counter()
    for lineno, rec in records(root / REJECTED):
        stage, reason = rec.get("stage"), rec.get("reason")
        if not isinstance(stage, str) or not isinstance(reason, str):
            raise RunDirError(f"{root / REJECTED}:{lineno}: field 'stage'/'reason' missing")
        rejected += 1
        stage, reason = _label(stage, by_stage), _label(reason, by_reason)
        by_reason[reason] += 1
        by_stage[stage] += 1
        by_stage_reason.setdefault(stage, Counter())[reason] += 1
        if rec.get("task_level"):
            task_level_by_reason[reason] += 1
        if "id" not in rec:
            candidate_losses += 1
            candidate_dedup += stage == "dedup"
        elif not rec.get("task_level"):
            instance_level += 1
        if reason not in examples and isinstance(rec.get("text"), str):
            examples[reason] = _short(rec["text"])
        if reason == "contamination" and isinstance(rec.get("match_id"), str):
            contamination_matches[rec["match_id"]] += 1

    # tasks.jsonl: what was made
    tasks = instances = classification = empty_input = all_empty = 0
    instruction_words: Counter[int] = Counter()
    input_words: Counter[int] = Counter()
    output_words: Counter[int] = Counter()
    instances_per_task: Counter[int] = Counter()
    verbs: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    with_verb = 0
    models: Counter[str] = Counter()
    for lineno, task in records(root / TASKS):
        instruction = task.get("instruction")
        task_instances = task.get("instances")
        if not isinstance(instruction, str):
            raise RunDirError(f"{root / TASKS}:{lineno}: field 'instruction' missing")
        if not isinstance(task_instances, list):
            raise RunDirError(f"{root / TASKS}:{lineno}: field 'instances' missing")
        tasks += 1
        if task.get("is_classification") is True:
            classification += 1
        instruction_words[min(LENGTH_CAP, _words(instruction))] += 1
        instances_per_task[len(task_instances)] += 1
        empties = 0
        for inst in task_instances:
            if not isinstance(inst, dict):
                continue
            instances += 1
            text_in, text_out = _str(inst.get("input")), _str(inst.get("output"))
            if not text_in.strip():
                empty_input += 1
                empties += 1
            else:
                input_words[min(LENGTH_CAP, _words(text_in))] += 1
            output_words[min(LENGTH_CAP, _words(text_out))] += 1
        if task_instances and empties == len(task_instances):
            all_empty += 1
        verb, obj = verb_object(instruction)
        if verb is not None:
            with_verb += 1
            verbs[verb] += 1
            if obj is not None:
                pairs[(verb, obj)] += 1
        meta = task.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("model"), str):
            models[meta["model"]] += 1

    counters = _obj(run_json.get("counters"))
    candidates = counters.get("candidates_seen")
    # A candidate lost before admission has no task id yet: the dedup pool's rejections
    # (stage dedup), everything else the filters'. Rejections with an id lose an admitted
    # task (task_level) or one of its instances.
    filtered = candidate_losses - candidate_dedup
    deduplicated = candidate_dedup
    task_level = sum(task_level_by_reason.values())
    pending = admitted - tasks - task_level
    candidates_counted = admitted + filtered + deduplicated
    funnel = [
        {"step": "candidate instructions", "count": candidates_counted,
         "lost": filtered, "lost_to": "filters and cut answers (rejected.jsonl, no task id)"},
        {"step": "passed the filters", "count": candidates_counted - filtered,
         "lost": deduplicated,
         "lost_to": "ROUGE-L near-duplicates (rejected.jsonl stage dedup, no task id)"},
        {"step": "admitted instructions", "count": admitted, "lost": task_level,
         "lost_to": "task-level rejections (no usable instances, cut answers, contamination)"},
        {"step": "finished tasks", "count": tasks, "lost": pending,
         "lost_to": "still pending (admitted, not finished when the run stopped)"},
    ]
    decon = None
    decon_path = root / DECONTAMINATION
    if decon_path.is_file():
        try:
            loaded = orjson.loads(decon_path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise RunDirError(f"{decon_path}: not valid JSON ({exc})") from None
        decon = loaded if isinstance(loaded, dict) else None
    top = options.top
    return {
        "summary_version": SUMMARY_VERSION,
        "run": {
            "path": str(root),
            "status": run_json.get("status"),
            "version": run_json.get("version"),
            "target": config.get("target"),
            "threshold": _threshold(config),
            "tokenizer": _tokenizer(config),
            "compat": config.get("compat"),
            "seed": config.get("seed"),
            "models": dict(models.most_common()),
        },
        "counts": {
            "seeds": seeds,
            "instructions_admitted": admitted,
            "tasks": tasks,
            "instances": instances,
            "rejected": rejected,
            "rejected_task_level": task_level,
            "rejected_instances": instance_level,
            "pending_instructions": pending,
            "candidates_seen_run_json": candidates,
        },
        "funnel": funnel,
        "rejections": {
            "by_reason": dict(by_reason.most_common()),
            "by_stage": dict(by_stage.most_common()),
            "by_stage_reason": {s: dict(c.most_common()) for s, c in sorted(by_stage_reason.items())},
            "task_level_by_reason": dict(task_level_by_reason.most_common()),
            "examples": examples,
        },
        "tasks": {
            "classification": classification,
            "classification_share": round(classification / tasks, 4) if tasks else None,
            "instances": instances,
            "instances_per_task": {str(k): v for k, v in sorted(instances_per_task.items())},
            "empty_input_instances": empty_input,
            "empty_input_share": round(empty_input / instances, 4) if instances else None,
            "tasks_all_inputs_empty": all_empty,
        },
        "lengths": {
            "unit": "words (whitespace-separated)",
            "instruction": _distribution(instruction_words),
            "input": _distribution(input_words),
            "output": _distribution(output_words),
        },
        "overlap": overlap(root, config, options.overlap_sample),
        "verbs": {
            "tasks_with_verb": with_verb,
            "distinct_verbs": len(verbs),
            "top_verbs": [[v, n] for v, n in verbs.most_common(top)],
            "top_pairs": [[v, o, n] for (v, o), n in pairs.most_common(top)],
        },
        "throughput": throughput(root, run_json),
        "usage": usage(run_json),
        "decontamination": {
            "rejected_contamination": by_reason.get("contamination", 0),
            "matched_eval_items": len(contamination_matches),
            "last_check": decon,
        },
    }
