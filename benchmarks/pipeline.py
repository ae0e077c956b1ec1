"""The whole pipeline against a rate-limited endpoint: how much of the limit it keeps in use.

    python -m benchmarks.pipeline            # ~3 minutes here
    python -m benchmarks.pipeline --case 30k # the large-account case, ~5 minutes

One `generate` process against the simulator limited to 6,000 RPM (300 ms latency ±50%,
20% near-duplicate and 10% bad list items and instance answers), told ``--rpm 6000``.
The driver samples, every 0.25 s, the requests the simulator answered with 200 and the
lines of tasks.jsonl. The steady window runs from 10% to 90% of the target (after the
slow start, before the wind-down near the target, where supply control stops asking for
instructions); the requests/s the simulator served over it, as a share of the limit, is
the figure to hold >= 95%.

The baseline is the same run with the reference method's settings: one request at a
time (``--max-in-flight 1``) and brute-force dedup (``--dedup-index brute``: every
candidate scored against the whole pool).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._results import table, write_section
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_S = 0.25
WINDOW = (0.10, 0.90)  # share of the target: the steady window


@dataclass(frozen=True)
class Case:
    """One endpoint the pipeline is measured against."""

    rpm: int
    latency_ms: float
    duplicate_rate: float
    target: int


CASES = {
    # The reference point: a mid-tier account, fast answers.
    "6k": Case(rpm=6000, latency_ms=300, duplicate_rate=0.2, target=5000),
    # A large account (issue #15): 30,000 RPM, 1 s answers; a long run's pool makes most
    # candidates near-duplicates by the end.
    "30k": Case(rpm=30000, latency_ms=1000, duplicate_rate=0.75, target=20000),
}


@dataclass
class Outcome:
    name: str
    rpm: int
    target: int
    elapsed: float  # process start to exit
    window_s: float
    window_rps: float  # 200s per second at the simulator over the steady window
    window_tasks_h: float
    whole_tasks_h: float  # target over first request .. last task
    requests: int
    limited: int  # 429s
    max_in_flight: int
    cpu_s: float  # the generate process's user + system CPU
    verify_ok: bool
    candidates: int  # instructions the admission stage decided on
    near_duplicates: int  # of which rejected as near-duplicates


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _admission_counts(out: Path) -> tuple[int, int]:
    """(candidates decided, near-duplicates) from run.json's counters."""
    import orjson

    counters = orjson.loads((out / "run.json").read_bytes()).get("counters", {})
    near = int(counters.get("rejected_by_reason", {}).get("near_duplicate", 0))
    return int(counters.get("instructions_admitted", 0)) + near, near


async def run_once(name: str, workdir: Path, case: Case, target: int, *extra: str) -> Outcome:
    out = workdir / name
    settings = SimSettings(rpm=case.rpm, latency_ms=case.latency_ms, jitter=0.5, seed=17,
                           duplicate_rate=case.duplicate_rate, bad_item_rate=0.1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    samples: list[tuple[float, int, int]] = []  # (time, 200s, tasks)
    async with SimulatedServer(settings) as sim:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "generate", "--out", str(out), "--target",
            str(target), "--base-url", sim.base_url, "--model", "sim", "--quiet", "--show",
            "0", "--rpm", str(case.rpm), "--seed", "1", *extra,
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)

        async def sample() -> None:
            while True:
                ok = int(sim.stats()["by_status"].get("200", 0))
                samples.append((time.monotonic(), ok, _count_lines(out / "tasks.jsonl")))
                await asyncio.sleep(SAMPLE_S)

        sampler = asyncio.create_task(sample())
        _, err = await process.communicate()
        elapsed = time.monotonic() - start
        sampler.cancel()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stats = sim.stats()
    if process.returncode != 0:
        raise SystemExit(f"{name}: generate failed: {err.decode()[-2000:]}")
    samples.append((time.monotonic(), int(stats["by_status"].get("200", 0)), target))
    lo, hi = (target * WINDOW[0], target * WINDOW[1])
    first = next(s for s in samples if s[2] >= lo)
    last = [s for s in samples if s[2] <= hi][-1]
    if last[0] <= first[0]:  # a run too short to have a window: take the whole of it
        first, last = samples[0], samples[-1]
    window = max(1e-9, last[0] - first[0])
    began = next((s[0] for s in samples if s[1] > 0), samples[0][0])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    candidates, near = _admission_counts(out)
    return Outcome(
        name=name, rpm=case.rpm, target=target, elapsed=elapsed, window_s=window,
        window_rps=(last[1] - first[1]) / window,
        window_tasks_h=(last[2] - first[2]) / window * 3600,
        whole_tasks_h=target / max(1e-9, samples[-1][0] - began) * 3600,
        requests=int(stats["requests"]), limited=sum(int(v) for v in stats["rate_limited"].values()),
        max_in_flight=int(stats["max_in_flight"]), cpu_s=cpu, verify_ok=verify_run(out).ok,
        candidates=candidates, near_duplicates=near,
    )


def _row(o: Outcome) -> list[object]:
    limit_rps = o.rpm / 60
    return [o.name, o.target, f"{o.window_s:.1f} s", f"{o.window_rps:.1f}",
            f"{o.window_rps / limit_rps:.1%}", f"{o.window_tasks_h:,.0f}",
            f"{o.whole_tasks_h:,.0f}", f"{o.requests / o.target:.2f}", o.limited,
            o.max_in_flight, f"{o.candidates / max(1e-9, o.elapsed):,.0f}",
            f"{o.near_duplicates / max(1, o.candidates):.0%}",
            f"{o.cpu_s / o.target * 1000:.1f} ms", "ok" if o.verify_ok else "FAILED"]


HEADERS = ["run", "tasks", "steady window", "req/s served", "of limit", "tasks/h (window)",
           "tasks/h (whole run)", "requests/task", "429s", "max in flight",
           "candidates/s", "near-dup share", "CPU/task", "verify"]


async def main_async(args: argparse.Namespace) -> int:
    case = CASES[args.case]
    target = args.target or case.target
    limit_rps = case.rpm / 60
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pipeline = await run_once("pipeline (defaults)", workdir, case, target, *args.extra)
        print(_row(pipeline), flush=True)
        rows = [_row(pipeline)]
        baseline = None
        if args.case == "6k":
            baseline = await run_once("reference settings", workdir, case,
                                      args.baseline_target, "--max-in-flight", "1",
                                      "--dedup-index", "brute")
            rows.append(_row(baseline))
            print(rows[-1], flush=True)
    share = pipeline.window_rps / limit_rps
    text = (
        f"Simulator limited to {case.rpm:,} RPM ({limit_rps:.0f} req/s), "
        f"{case.latency_ms:g} ms latency ±50%, {case.duplicate_rate:.0%} near-duplicate and "
        f"10% bad items; `generate --rpm {case.rpm}`. Steady window: from {WINDOW[0]:.0%} "
        f"to {WINDOW[1]:.0%} of the target. Near-dup share: candidates rejected as "
        "near-duplicates over all candidates decided.\n\n"
        + table(HEADERS, rows)
        + f"\n\nOnce warm the pipeline kept **{share:.1%}** of the limit in use "
        f"({'meets' if share >= 0.95 else 'misses'} the >= 95% goal) and wrote "
        f"**{pipeline.window_tasks_h:,.0f} tasks/hour**."
    )
    if baseline is not None:
        ratio = pipeline.window_tasks_h / max(1e-9, baseline.window_tasks_h)
        text += (
            f" That is **{ratio:,.0f}x** the reference settings (one request at a time, "
            f"brute-force dedup: {baseline.window_tasks_h:,.0f} tasks/hour). The baseline's "
            "loss is almost all waiting: one request at a time at 300 ms uses about 3 of "
            "the 100 requests/s allowed. Its brute-force dedup costs little while the pool "
            "holds a few hundred entries; it grows with the pool (see the dedup section), "
            "so on long runs the gap widens. Requests per task: each task takes a classify "
            "and an instances call; the rest are instruction calls (5 prompts each)."
        )
    print(text)
    if not args.no_write:
        key = "pipeline" if args.case == "6k" else f"pipeline-{args.case}"
        write_section(key, f"## Pipeline throughput under a {case.rpm:,} RPM limit "
                      f"(`python -m benchmarks.pipeline --case {args.case}`)\n\n" + text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="6k")
    parser.add_argument("--target", type=int, default=0, help="tasks (default: the case's)")
    parser.add_argument("--baseline-target", type=int, default=100)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("extra", nargs="*", help="more generate flags (after --)")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
