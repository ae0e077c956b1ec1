"""Scale-out on Redis: several `generate` processes on one run.

    python -m benchmarks.scaleout            # ~5 minutes here

1. CPU-bound scaling: 1, 2 and 4 processes against the simulator with no rate limit
   and short latency; tasks/s and scaling efficiency (tasks/s over N x single).
2. One shared rate budget: 3 processes against a simulator limited to 6,000 RPM, each
   told --rpm 6000; the requests the endpoint served per second while they ran, as a
   share of the limit, and the share of 429s.

Starts its own redis-server on a free loopback port (it must be installed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks._results import table, write_section
from service.simulator import SimSettings, SimulatedServer

ROOT = Path(__file__).resolve().parents[1]


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save",
                                "", "--appendonly", "no", "--dir", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return process, url


async def run_workers(sim: SimulatedServer, url: str, run_id: str, count: int, target: int,
                      workdir: Path, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "generate", "--out", str(workdir / f"{run_id}-{i}"),
            "--target", str(target), "--base-url", sim.base_url, "--model", "sim", "--quiet",
            "--show", "0", "--redis", url, "--run-id", run_id, *extra,
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        for i in range(count)
    ]

    async def sample() -> None:
        while True:
            samples.append((time.monotonic(), int(sim.stats()["requests"])))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(w.communicate() for w in workers))
    elapsed = time.monotonic() - start
    sampler.cancel()
    for worker, (_, err) in zip(workers, results, strict=True):
        if worker.returncode != 0:
            raise SystemExit(f"worker failed: {err.decode()[-2000:]}")
    active = [t for t, n in samples if n > samples[0][1]]
    first = min(active) if active else start
    last = max(t for t, n in samples if n < samples[-1][1]) if len(active) > 1 else elapsed
    stats = sim.stats()
    return {"elapsed": elapsed, "window": max(1e-9, last - first), "stats": stats}


async def scaling(url: str, workdir: Path, target: int) -> list[list[object]]:
    rows: list[list[object]] = []
    single = 0.0
    single_cpu = 0.0
    for count in (1, 2, 4):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        async with SimulatedServer(SimSettings(latency_ms=5, jitter=0.5, seed=count,
                                               duplicate_rate=0.1)) as sim:
            result = await run_workers(sim, url, f"scale{count}", count, target, workdir)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rate = target / result["elapsed"]
        single = single or rate
        per_task = cpu / target * 1000
        single_cpu = single_cpu or per_task
        rows.append([count, target, f"{result['elapsed']:.1f} s", f"{rate:.1f}",
                     f"{rate / (count * single):.0%}", f"{per_task:.0f} ms",
                     f"{single_cpu / per_task:.0%}"])
        print(rows[-1], flush=True)
    return rows


async def shared_budget(url: str, workdir: Path, target: int, rpm: int) -> list[list[object]]:
    async with SimulatedServer(SimSettings(rpm=rpm, latency_ms=300, jitter=0.5, seed=9,
                                           duplicate_rate=0.1)) as sim:
        result = await run_workers(sim, url, "budget", 3, target, workdir, "--rpm", str(rpm))
    stats = result["stats"]
    served = int(stats["by_status"].get("200", stats["by_status"].get(200, 0)))
    limited = sum(int(v) for v in stats["rate_limited"].values())
    achieved = served / result["window"] * 60
    return [[3, f"{rpm:,}", f"{achieved:,.0f}", f"{achieved / rpm:.1%}", int(stats["requests"]),
             limited, f"{limited / max(1, int(stats['requests'])):.2%}",
             f"{result['window']:.1f} s"]]


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        process, url = start_redis(workdir)
        try:
            budget = await shared_budget(url, workdir, args.budget_target, 6000)
            print(budget, flush=True)
            scale = await scaling(url, workdir, args.scale_target)
        finally:
            process.terminate()
            process.wait(timeout=10)
    sections = [
        "### One rate budget shared by 3 processes (simulator limited to 6,000 RPM, "
        "300 ms ±50%)\n\n" + table(
            ["processes", "limit (RPM)", "served (RPM)", "of limit", "requests", "429s",
             "429 share", "window"], budget),
        "### CPU-bound scaling (no rate limit, 5 ms latency; simulator in the driver "
        "process, all on 2 cores)\n\n" + table(
            ["processes", "tasks", "time", "tasks/s", "scaling efficiency",
             "worker CPU per task", "CPU efficiency"], scale)
        + "\n\nThese machines have 2 cores and the simulator itself needs about one, so one"
        " worker already keeps both busy: wall-clock scaling cannot show here. The CPU"
        " columns say what scale-out costs: worker CPU per finished task as the number of"
        " processes grows (process start-up, replica catch-up and admission conflicts"
        " included); on a machine with spare cores, tasks/s scales by that efficiency.",
    ]
    text = "\n\n".join(sections)
    print(text)
    if not args.no_write:
        write_section("scaleout", "## Scale-out on Redis (`python -m benchmarks.scaleout`)\n\n"
                      + text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--budget-target", type=int, default=1500)
    parser.add_argument("--scale-target", type=int, default=3000)
    parser.add_argument("--no-write", action="store_true")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
