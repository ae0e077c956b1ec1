"""Report speed and memory against run size: synthetic run directories of 1,000 to
50,000 tasks, each reported in a fresh process (peak RSS is that process's).

    python -m benchmarks.report                 # ~2 minutes here
    python -m benchmarks.report --sizes 1000 5000

Baseline, in the same child process: reading every file of the run into memory at once
(``json.loads`` of each line kept in lists), what a report that is not streaming holds.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import orjson

from benchmarks._results import table, write_section
from benchmarks.corpus import paper_instructions, synthetic_corpus

REASONS = ("too_short", "too_long", "blacklisted_word", "near_duplicate", "empty_output")


def make_run(root: Path, tasks: int, seed: int = 0) -> None:
    """A run directory shaped like generate's: seeds, admissions, tasks, rejections, run.json."""
    rng = random.Random(seed)
    words = " ".join(paper_instructions()).lower().split()
    seeds = paper_instructions()[:175]
    instructions = synthetic_corpus(int(tasks * 1.1), seed=seed)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "seeds.jsonl").open("wb") as fh:
        for i, text in enumerate(seeds):
            fh.write(orjson.dumps({"id": f"seed_task_{i}", "instruction": text,
                                   "instances": [{"input": "", "output": "x y"}]}) + b"\n")
    with (root / "instructions.jsonl").open("wb") as admitted, \
            (root / "tasks.jsonl").open("wb") as done:
        for i, text in enumerate(instructions):
            task_id = f"task_{i:07d}"
            admitted.write(orjson.dumps({"id": task_id, "instruction": text}) + b"\n")
            if i >= tasks:
                continue
            instances = [{"input": " ".join(rng.choices(words, k=rng.randint(0, 30))),
                          "output": " ".join(rng.choices(words, k=rng.randint(5, 120)))}
                         for _ in range(rng.randint(1, 4))]
            done.write(orjson.dumps({"id": task_id, "instruction": text,
                                     "is_classification": rng.random() < 0.2,
                                     "instances": instances, "meta": {"model": "m"}}) + b"\n")
    with (root / "rejected.jsonl").open("wb") as fh:
        for _ in range(tasks // 2):
            fh.write(orjson.dumps({"stage": "filter", "reason": rng.choice(REASONS),
                                   "text": rng.choice(instructions)}) + b"\n")
    (root / "run.json").write_bytes(orjson.dumps({
        "status": "finished", "config": {"threshold": 0.7, "model": "m"},
        "counters": {"tasks_written": tasks}, "timings": {"elapsed_s": 100.0},
        "usage": {"tokens": {"total": 1, "by_model": {"m": {"prompt": 1, "completion": 1}}}},
    }))


def child(run: Path, mode: str) -> None:
    start = time.perf_counter()
    if mode == "report":
        from service.report.page import build_report

        build_report(run, run / "report")
    else:
        kept = {name: [json.loads(line) for line in (run / name).open()]
                for name in ("tasks.jsonl", "instructions.jsonl", "rejected.jsonl", "seeds.jsonl")}
        assert kept
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def measure(run: Path, mode: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.report", "--child", str(run), mode],
                         check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 5_000, 20_000, 50_000])
    parser.add_argument("--child", nargs=2, metavar=("RUN", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    rows = []
    with TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty"
        make_run(empty, 10)
        floor = measure(empty, "report")
        load_floor = measure(empty, "load")
        for size in args.sizes:
            run = Path(tmp) / f"run{size}"
            make_run(run, size)
            mb = sum(p.stat().st_size for p in run.iterdir() if p.is_file()) / 1e6
            ours = measure(run, "report")
            naive = measure(run, "load")
            rows.append([f"{size:,}", f"{mb:.1f}", f"{ours['seconds']:.1f}",
                         f"{ours['peak_mb']:.0f}", f"{ours['peak_mb'] - floor['peak_mb']:.0f}",
                         f"{naive['peak_mb'] - load_floor['peak_mb']:.0f}"])
            print(rows[-1], flush=True)
    text = "\n\n".join([
        "## Report (`python -m benchmarks.report`)",
        "Synthetic run directories (tasks of 1-4 instances of up to 150 words, 1.1 "
        "admissions and 0.5 rejections per task), each reported (`build_report`: "
        "summary.json, 6 charts, the page) in a fresh process. \"Above floor\" is the peak RSS "
        f"minus that of reporting a 10-task run ({floor['peak_mb']:.0f} MB: Python, numpy, "
        "matplotlib). Every file is streamed; the overlap analysis keeps its 5,000 sampled "
        "instructions and at most 20,000 earlier ones at a time. \"Load all\" is what a "
        "reader that keeps every line of the run's files parsed in memory holds above its "
        "own floor.",
        table(["tasks", "run files (MB)", "report (s)", "peak RSS (MB)", "above floor (MB)",
               "load all: above floor (MB)"], rows),
    ])
    print(text)
    write_section("report", text)


if __name__ == "__main__":
    main()
