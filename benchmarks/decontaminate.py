"""Decontamination speed: 100,000 generated tasks checked against the paper's 252
user-oriented tasks (13-grams of normalised tokens), with planted copies.

    python -m benchmarks.decontaminate            # 100,000 tasks, ~1 minute here in all
    python -m benchmarks.decontaminate --tasks 20000

Baseline, in the same process: the textbook check (a Python set of 13-token tuples, one
lookup per window, as lm-evaluation-harness's janitor does) over the first 10,000 tasks.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson

from benchmarks._results import table, write_section
from benchmarks.corpus import paper_instructions, synthetic_corpus
from service.decontam.check import build_index, scan_run, task_texts
from service.decontam.evalsets import DEFAULT_EVAL_SET, read_eval_tasks
from service.decontam.ngrams import normalise_tokens

BASELINE_TASKS = 10_000
PLANTED = 100


def make_tasks(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic tasks in the paper's vocabulary (the worst case for the index: almost every
    token is known to it), with PLANTED evaluation outputs copied in at random places."""
    rng = random.Random(seed)
    words = " ".join(paper_instructions()).lower().split()
    instructions = synthetic_corpus(count, seed=seed)
    evals = list(read_eval_tasks(DEFAULT_EVAL_SET))
    long_outputs = [t for t in evals if len(normalise_tokens(t.instances[0].output)) >= 20]
    tasks = []
    for i, instruction in enumerate(instructions):
        instances = []
        for _ in range(rng.randint(1, 3)):
            text_in = " ".join(rng.choices(words, k=rng.randint(0, 30)))
            text_out = " ".join(rng.choices(words, k=rng.randint(20, 80)))
            instances.append({"input": text_in, "output": text_out})
        tasks.append({"id": f"task_{i:06d}", "instruction": instruction, "instances": instances})
    for n, position in enumerate(rng.sample(range(count), PLANTED)):
        source = long_outputs[n % len(long_outputs)]
        tasks[position]["instances"][0]["output"] = "Sure. " + source.instances[0].output
        tasks[position]["planted"] = source.id
    return tasks


def baseline(tasks: list[dict[str, Any]], lengths: list[int]) -> tuple[int, float]:
    """The textbook check with the same semantics: a Python set of token tuples of every
    indexed length (13, and the whole of each evaluation text of 8-12 tokens)."""
    grams: set[tuple[str, ...]] = set()
    for t in read_eval_tasks(DEFAULT_EVAL_SET):
        for text in [t.instruction] + [x for i in t.instances for x in (i.input, i.output)]:
            tokens = normalise_tokens(text)
            if len(tokens) < min(lengths):
                continue
            n = min(max(lengths), len(tokens))
            grams.update(tuple(tokens[k:k + n]) for k in range(len(tokens) - n + 1))
    start = time.perf_counter()
    hits = 0
    for task in tasks:
        for _, _, text in task_texts(task):
            tokens = normalise_tokens(text)
            if any(tuple(tokens[k:k + n]) in grams
                   for n in lengths for k in range(len(tokens) - n + 1)):
                hits += 1
                break
    return hits, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    tasks = make_tasks(args.tasks)
    planted = {t["id"]: t["planted"] for t in tasks if "planted" in t}
    with TemporaryDirectory() as tmp:
        run = Path(tmp)
        (run / "tasks.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tasks))
        texts = sum(1 for t in tasks for _ in task_texts(t))
        start = time.perf_counter()
        index, _ = build_index([DEFAULT_EVAL_SET])
        built = time.perf_counter() - start
        start = time.perf_counter()
        result = scan_run(run, index)
        scanned = time.perf_counter() - start
    found = {f.task_id: f.match_id for f in result.findings}
    caught = sum(1 for tid, eid in planted.items() if found.get(tid) == eid)
    false_positives = len(set(found) - set(planted))
    base_hits, base_s = baseline(tasks[:BASELINE_TASKS], index.lengths)
    ours_per_task = scanned / len(tasks)
    base_per_task = base_s / BASELINE_TASKS
    rows = [
        ["index (numpy, batched)", f"{len(tasks):,}", f"{texts:,}", f"{scanned:.1f}",
         f"{len(tasks) / scanned:,.0f}", f"{base_per_task / ours_per_task:.1f}x"],
        ["baseline (set of tuples)", f"{BASELINE_TASKS:,}", "", f"{base_s:.1f}",
         f"{BASELINE_TASKS / base_s:,.0f}", "1.0x"],
    ]
    text = "\n\n".join([
        "## Decontamination (`python -m benchmarks.decontaminate`)",
        f"{len(tasks):,} synthetic tasks in the paper's vocabulary (every instruction, input "
        f"and output checked: {texts:,} texts) against the 252 user-oriented tasks' "
        f"13-grams ({len(index):,} distinct; index built in {built:.2f} s), read from a run "
        f"directory's tasks.jsonl in batches of 2,000. {PLANTED} evaluation outputs were "
        f"planted (with a prefix): {caught} caught with the right evaluation id, "
        f"{false_positives} other tasks flagged. The baseline (the textbook Python set of "
        f"token tuples, one lookup per window, for the same gram lengths "
        f"{', '.join(map(str, index.lengths))}) found {base_hits} in its {BASELINE_TASKS:,}.",
        table(["method", "tasks", "texts", "seconds", "tasks/s", "speed vs baseline"], rows),
    ])
    print(text)
    write_section("decontaminate", text)


if __name__ == "__main__":
    main()
