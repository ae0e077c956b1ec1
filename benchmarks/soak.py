"""Soak: one long `generate` run against a faulty simulator; memory and descriptors stay flat.

    python -m benchmarks.soak                 # 30 minutes (a benchmark, not CI)
    python -m benchmarks.soak --minutes 5     # shorter

The simulator runs in this process; `python -m service generate` runs as a child process
and is the one measured, from /proc: resident memory (VmRSS), open file descriptors and
threads, every ``--sample-seconds``. The endpoint injects the fault mix of the reliability
suite (5% 5xx, 1% connection resets, 1% garbage bodies, 1% hangs, 2% truncated outputs)
and the run is held to ``--rpm`` so that the data it keeps (the dedup pool, the admitted
instructions) grows slowly and a leak per request would show. The target is never
reached; at the end the child gets SIGTERM (drain, exit), and the run directory is
verified.

Pass criteria (printed, and written with the figures to benchmarks/RESULTS.md, section
"soak"): resident memory at the end (median of the last 3 samples) within 10% of what it
was right after warm-up (median of the first 3 samples after it); open descriptors
bounded by the idle count plus the connection pool (``--max-in-flight``) plus 4 at every
sample, and not drifting up (median of the last quarter of the samples after warm-up at
most 4 above the median of the first quarter); the run verifies and drains on SIGTERM.
The connection pool opens and closes sockets as load and faults come and go, so the
count moves within that bound; a leak would climb through it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks._results import table, write_section
from service.rundir.store import RUN_JSON, TASKS
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer

ROOT = Path(__file__).resolve().parents[1]
FAULTS: dict[str, Any] = {"error_rate": 0.05, "reset_rate": 0.01, "garbage_rate": 0.01,
                          "hang_rate": 0.01, "truncate_rate": 0.02}
FD_SLACK = 4


@dataclass(frozen=True)
class Sample:
    t: float
    rss_kb: int
    fds: int
    threads: int
    tasks: int
    requests: int


def _proc_status(pid: int) -> tuple[int, int]:
    rss = threads = 0
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class _LineCounter:
    """Counts lines of an append-only file incrementally (no re-reading)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return 0
        self.offset += len(chunk)
        self.lines += chunk.count(b"\n")
        return self.lines


@dataclass(frozen=True)
class Outcome:
    samples: list[Sample]
    warmup_s: float
    exit_code: int | None
    drain_s: float
    run: dict[str, Any]
    verify_ok: bool
    verify_summary: str
    sim_stats: dict[str, Any]
    settings: dict[str, Any]


async def soak(minutes: float, rpm: int, max_in_flight: int, latency_ms: float,
               sample_s: float, out: Path) -> Outcome:
    duration = minutes * 60.0
    warmup = max(min(60.0, duration / 2), 0.2 * duration)
    sim_settings = SimSettings(latency_ms=latency_ms, seed=11, duplicate_rate=0.2,
                               bad_item_rate=0.1, hang_seconds=10.0,
                               rpm=rpm * 1.5, **FAULTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    samples: list[Sample] = []
    async with SimulatedServer(sim_settings) as sim:
        cmd = [sys.executable, "-m", "service", "generate", "--out", str(out),
               "--target", "10000000", "--base-url", sim.base_url, "--model", "sim",
               "--rpm", str(rpm), "--max-in-flight", str(max_in_flight),
               "--request-timeout", "2", "--seed", "5", "--quiet", "--show", "0"]
        process = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        tasks = _LineCounter(out / TASKS)
        started = time.monotonic()
        next_print = 0.0
        try:
            while (elapsed := time.monotonic() - started) < duration:
                if process.returncode is not None:
                    raise RuntimeError(f"generate exited early with {process.returncode}")
                rss, threads = _proc_status(process.pid)
                sample = Sample(elapsed, rss, _fd_count(process.pid), threads, tasks.count(),
                                int(sim.stats()["requests"]))
                samples.append(sample)
                if elapsed >= next_print:
                    print(f"  {elapsed / 60:5.1f} min  rss {rss / 1024:7.1f} MiB  fds "
                          f"{sample.fds:3d}  threads {threads:2d}  tasks {sample.tasks:6d}  "
                          f"requests {sample.requests:7d}", flush=True)
                    next_print += 60.0
                await asyncio.sleep(sample_s)
        finally:
            drain_started = time.monotonic()
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            try:
                _, stderr = await asyncio.wait_for(process.communicate(), 90)
            except TimeoutError:
                process.kill()
                _, stderr = await process.communicate()
            drain_s = time.monotonic() - drain_started
        if process.returncode not in (0, 130):
            print(stderr.decode(errors="replace")[-2000:], file=sys.stderr)
        stats = sim.stats()
    run = orjson.loads((out / RUN_JSON).read_bytes())
    report = verify_run(out)
    return Outcome(samples, warmup, process.returncode, drain_s, run, report.ok,
                   report.summary(), stats,
                   {"minutes": minutes, "rpm": rpm, "max_in_flight": max_in_flight,
                    "latency_ms": latency_ms, "sample_s": sample_s})


def _median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def analyse(outcome: Outcome) -> tuple[dict[str, Any], bool]:
    after = [s for s in outcome.samples if s.t >= outcome.warmup_s]
    if len(after) < 4:
        raise RuntimeError("too few samples: run longer or sample more often")
    rss_start = _median([s.rss_kb for s in after[:3]])
    rss_end = _median([s.rss_kb for s in after[-3:]])
    growth = rss_end / rss_start - 1.0
    running = [s for s in outcome.samples if s.t >= 10.0]  # imports done, run directory open
    fd_idle = min(s.fds for s in running)
    fd_bound = fd_idle + int(outcome.settings["max_in_flight"]) + FD_SLACK
    fd_max = max(s.fds for s in running)
    quarter = max(1, len(after) // 4)
    fd_first = _median([s.fds for s in after[:quarter]])
    fd_last = _median([s.fds for s in after[-quarter:]])
    checks = {
        "rss_flat": growth < 0.10,
        "fds_bounded": fd_max <= fd_bound,
        "fds_not_drifting": fd_last <= fd_first + FD_SLACK,
        "verify_ok": outcome.verify_ok,
        "drained": outcome.exit_code in (0, 130),
    }
    figures = {
        "rss_start_mib": rss_start / 1024, "rss_end_mib": rss_end / 1024,
        "rss_growth": growth, "rss_max_mib": max(s.rss_kb for s in after) / 1024,
        "fd_idle": fd_idle, "fd_bound": fd_bound, "fd_max": fd_max,
        "fd_first": fd_first, "fd_last": fd_last, "fd_end": after[-1].fds,
        "threads_max": max(s.threads for s in outcome.samples),
        "checks": checks,
    }
    return figures, all(checks.values())


def render(outcome: Outcome, figures: dict[str, Any], passed: bool) -> str:
    s = outcome.settings
    run = outcome.run
    counters = run.get("counters", {})
    usage = run.get("usage", {})
    faults = outcome.sim_stats.get("faults", {})
    # one row a minute (the sample nearest each whole minute), plus the last sample
    rows: list[list[object]] = []
    minute = 0.0
    for sample in outcome.samples:
        if sample.t >= minute:
            rows.append([f"{sample.t / 60:.1f}", f"{sample.rss_kb / 1024:.1f}", sample.fds,
                         sample.threads, sample.tasks, sample.requests])
            minute += 60.0
    last = outcome.samples[-1]
    if rows and rows[-1][0] != f"{last.t / 60:.1f}":
        rows.append([f"{last.t / 60:.1f}", f"{last.rss_kb / 1024:.1f}", last.fds,
                     last.threads, last.tasks, last.requests])
    checks = figures["checks"]
    verdict = "PASS" if passed else "FAIL (" + ", ".join(k for k, v in checks.items() if not v) + ")"
    lines = [
        f"## Soak (`python -m benchmarks.soak --minutes {s['minutes']:g}`)",
        "",
        f"One `generate` child process for **{s['minutes']:g} minutes** against the simulator "
        f"(in the benchmark process) with 5% 5xx, 1% connection resets, 1% garbage bodies, "
        f"1% hangs (10 s; client timeout 2 s) and 2% truncated outputs; {s['latency_ms']:g} ms "
        f"±50% latency; client held to {s['rpm']} RPM, {s['max_in_flight']} in flight. "
        f"Warm-up: the first {outcome.warmup_s / 60:.1f} min. Samples every "
        f"{s['sample_s']:g} s from /proc of the child.",
        "",
        table(["minute", "RSS MiB", "fds", "threads", "tasks written", "requests served"], rows),
        "",
        table(["measure", "value"], [
            ["RSS after warm-up -> end (medians of 3 samples)",
             f"{figures['rss_start_mib']:.1f} -> {figures['rss_end_mib']:.1f} MiB "
             f"({figures['rss_growth'] * 100:+.1f}%; limit +10%)"],
            ["RSS max after warm-up", f"{figures['rss_max_mib']:.1f} MiB"],
            ["fds: lowest / highest (bound: lowest + pool + 4) / end",
             f"{figures['fd_idle']} / {figures['fd_max']} (bound {figures['fd_bound']}) / "
             f"{figures['fd_end']}"],
            ["fds after warm-up: median of first / last quarter",
             f"{figures['fd_first']:g} / {figures['fd_last']:g}"],
            ["threads (max)", figures["threads_max"]],
            ["tasks written / instructions admitted",
             f"{counters.get('tasks_written', '?')} / {counters.get('instructions_admitted', '?')}"],
            ["faults injected (error/reset/garbage/hang/truncate)",
             "/".join(str(faults.get(k, 0)) for k in
                      ("error", "reset", "garbage", "hang", "truncate"))],
            ["client attempts by outcome", ", ".join(
                f"{k}: {v}" for k, v in sorted((usage.get("attempts_by_outcome") or {}).items()))],
            ["retries / calls failed after retries",
             f"{usage.get('retries_total', '?')} / "
             f"{sum((usage.get('calls') or {}).get('failed', {}).values())}"],
            ["SIGTERM -> exit", f"{outcome.drain_s:.1f} s, exit code {outcome.exit_code}"],
            ["verify", "OK" if outcome.verify_ok else outcome.verify_summary],
            ["verdict", verdict],
        ]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="run length (default 30)")
    parser.add_argument("--rpm", type=int, default=1200, help="client RPM limit (default 1200)")
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, help="run directory (default: a temporary one)")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--samples-json", type=Path, metavar="FILE",
                        help="also save every sample (and the run's figures) as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        out = args.out or Path(tmp) / "run"
        print(f"soak: {args.minutes:g} min, run directory {out}", flush=True)
        outcome = asyncio.run(soak(args.minutes, args.rpm, args.max_in_flight,
                                   args.latency_ms, args.sample_seconds, out))
    figures, passed = analyse(outcome)
    if args.samples_json is not None:
        args.samples_json.write_bytes(orjson.dumps(
            {"samples": [s.__dict__ for s in outcome.samples], "figures": figures,
             "settings": outcome.settings, "warmup_s": outcome.warmup_s},
            option=orjson.OPT_INDENT_2))
    markdown = render(outcome, figures, passed)
    print(markdown)
    if not args.no_write:
        write_section("soak", markdown)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
