"""The simulator as a self-hosted server (`simulate --capacity N`): a batch of at most N,
each request slower as the batch fills, a FIFO queue, 503 past a queue limit; and as a
hosted endpoint that announces nothing (`--no-ratelimit-headers`)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from service.bench.loadtest import BenchSettings, run_bench
from service.bench.sweep import find_knee, format_sweep, parse_levels, plot_sweep, run_sweep
from service.commands import simulate
from service.errors import ConfigError
from service.generate.orchestrator import run_generate
from service.rundir.store import RUN_JSON
from service.simulator import SimSettings, SimulatedServer
from service.simulator.capacity import BatchCapacity, QueueFull
from tests.conftest import make_config

BODY = {"model": "sim", "prompt": "Come up with a task.", "max_tokens": 16}


@pytest.mark.parametrize(("capacity", "slowdown", "batch", "expected"), [
    (48, 0.5, 1, 1.0), (48, 0.5, 48, 1.5), (48, 0.5, 100, 1.5), (3, 1.0, 2, 1.5),
    (1, 5.0, 1, 1.0), (4, 0.0, 4, 1.0),
])
def test_slowdown_table(capacity: int, slowdown: float, batch: int, expected: float) -> None:
    assert BatchCapacity(capacity, slowdown).slowdown(batch) == pytest.approx(expected)


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"capacity": 2, "batch_slowdown": -1},
                                    {"capacity": 2, "queue_limit": -1}])
def test_bad_capacity_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchCapacity(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SimSettings(**kwargs)  # type: ignore[arg-type]


async def test_queue_is_fifo_and_bounded() -> None:
    capacity = BatchCapacity(2, 1.0, queue_limit=2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(k: int) -> None:
        async with capacity.slot():
            order.append(k)
            await release.wait()

    tasks = [asyncio.create_task(request(k)) for k in range(4)]
    await asyncio.sleep(0)
    assert (capacity.serving, capacity.queued, order) == (2, 2, [0, 1])
    with pytest.raises(QueueFull):  # two already wait
        async with capacity.slot():
            pass
    assert capacity.refused == 1
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3] and capacity.serving == 0


async def post(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    async with session.post(url + "/completions", json=BODY) as resp:
        await resp.read()
        return resp.status, dict(resp.headers)


async def test_capacity_queues_then_refuses_over_http() -> None:
    settings = SimSettings(latency_ms=50, jitter=0.0, capacity=2, batch_slowdown=1.0,
                           queue_limit=3, seed=1)
    async with SimulatedServer(settings) as sim, aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(post(session, sim.base_url) for _ in range(8)))
        stats = sim.stats()
    codes = sorted(status for status, _ in statuses)
    assert codes.count(200) == 5 and codes.count(503) == 3  # 2 served + 3 queued
    assert stats["capacity"]["max_queued"] == 3 and stats["capacity"]["refused"] == 3
    assert stats["capacity"]["serving"] == 0
    assert not any(h.startswith("x-ratelimit") for _, headers in statuses for h in headers)


async def test_no_ratelimit_headers_leaves_retry_after_only() -> None:
    for announce in (True, False):
        settings = SimSettings(rpm=60, burst_seconds=1.0, latency_ms=1,
                               ratelimit_headers=announce)
        async with SimulatedServer(settings) as sim, aiohttp.ClientSession() as session:
            answers = [await post(session, sim.base_url) for _ in range(3)]
        statuses = [status for status, _ in answers]
        assert statuses[0] == 200 and 429 in statuses
        for status, headers in answers:
            lowered = {k.lower() for k in headers}
            assert ("x-ratelimit-limit-requests" in lowered) is announce
            if status == 429:
                assert "retry-after" in lowered


def test_simulate_flags_reach_the_settings() -> None:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(["--capacity", "48", "--batch-slowdown", "0.8", "--queue-limit",
                              "100", "--no-ratelimit-headers", "--seed", "5"])
    settings = simulate.settings_from_args(args)
    assert (settings.capacity, settings.batch_slowdown, settings.queue_limit,
            settings.ratelimit_headers, settings.seed) == (48, 0.8, 100, False, 5)
    defaults = simulate.settings_from_args(parser.parse_args([]))
    assert defaults.capacity is None and defaults.ratelimit_headers


async def test_same_seed_same_answers_under_capacity() -> None:
    """Deterministic with a seed: the same requests in the same order give the same
    answers and the same latency draws."""
    bodies = []
    for _ in range(2):
        settings = SimSettings(latency_ms=1, capacity=1, seed=9)
        async with SimulatedServer(settings) as sim, aiohttp.ClientSession() as session:
            texts = []
            for k in range(3):
                async with session.post(sim.base_url + "/completions",
                                        json={**BODY, "prompt": f"task {k}"}) as resp:
                    texts.append((await resp.json())["choices"][0]["text"])
            bodies.append(texts)
    assert bodies[0] == bodies[1]


# ------------------------------------------------------------------ clients against it
async def test_bench_auto_finds_the_capacity() -> None:
    """`bench --concurrency auto` against capacity 8: it fills the batch without
    flooding the queue (a fixed 200 would keep ~190 waiting)."""
    settings = SimSettings(latency_ms=100, jitter=0.2, capacity=8, batch_slowdown=0.5, seed=2)
    async with SimulatedServer(settings) as sim:
        report = await run_bench(BenchSettings(base_url=sim.base_url, duration_s=6,
                                               concurrency="auto", max_tokens=8))
        queued = sim.stats()["capacity"]["max_queued"]
    assert report.ok > 0 and report.concurrency == "auto"
    limit = report.limiter["in_flight_limit"]
    assert 4 <= limit <= 24, report.limiter  # around the capacity (8), not 64 (the default)
    assert report.limiter["no_load_latency_s"] is not None
    assert queued < 60, queued


async def test_sweep_marks_the_knee_and_plots(tmp_path: Path) -> None:
    settings = SimSettings(latency_ms=50, jitter=0.1, capacity=4, batch_slowdown=0.2, seed=2)
    async with SimulatedServer(settings) as sim:
        result = await run_sweep(BenchSettings(base_url=sim.base_url, duration_s=1.5,
                                               max_tokens=8), [1, 2, 4, 8, 16])
    by_level = {p.concurrency: p for p in result.points}
    assert list(by_level) == [1, 2, 4, 8, 16]
    # beyond the capacity throughput stays, latency grows
    assert by_level[16].requests_per_s < 1.3 * by_level[4].requests_per_s
    assert (by_level[16].p50_s or 0) > 2 * (by_level[4].p50_s or 1)
    assert result.knee is not None and result.knee.concurrency in (4, 8)
    assert find_knee([]) is None
    text = format_sweep(result)
    assert "<- knee" in text
    plot = tmp_path / "sweep.png"
    plot_sweep(result, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert orjson.loads(orjson.dumps(result.to_dict()))["knee"]["concurrency"] \
        == result.knee.concurrency


@pytest.mark.parametrize(("text", "ok"), [("1,2,4", True), ("4,2", False), ("0,1", False),
                                          ("a,b", False), ("", False)])
def test_sweep_levels(text: str, ok: bool) -> None:
    if ok:
        assert parse_levels(text) == (1, 2, 4)
    else:
        with pytest.raises(ConfigError):
            parse_levels(text)


async def test_generate_max_in_flight_auto(tmp_path: Path) -> None:
    """`generate --max-in-flight auto` against a server of capacity 8: the run finishes
    and run.json shows the limit found and the no-load latency."""
    settings = SimSettings(latency_ms=40, jitter=0.2, capacity=8, seed=4, duplicate_rate=0.2)
    async with SimulatedServer(settings) as sim:
        config = make_config(tmp_path / "run", sim.base_url, target=120, max_in_flight="auto")
        result = await run_generate(config, install_signal_handlers=False)
        queued = sim.stats()["capacity"]["max_queued"]
    assert result.summary.status == "finished"
    limiter = orjson.loads((tmp_path / "run" / RUN_JSON).read_bytes())["usage"]["limiter"]
    assert limiter["in_flight_mode"] == "auto"
    assert 2 <= limiter["in_flight_limit"] <= 32
    assert limiter["no_load_latency_s"] is not None
    assert queued < 100
