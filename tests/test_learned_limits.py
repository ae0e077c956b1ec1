"""Limits nobody told us, end to end: `generate` with no --rpm against a simulated endpoint
that enforces 6,000 RPM, with and without x-ratelimit-* headers, both APIs. After the
first seconds (the time to learn), the run must serve most of the limit and see few 429s.
The full-size figures (1,000 tasks) are measured by benchmarks/adaptive.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis

from service.generate.distributed import RedisCoordinator, SharedRateLimiter
from service.generate.orchestrator import run_generate
from service.llm.limiter import LimiterSettings
from service.rundir.store import RUN_JSON
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import make_config
from tests.helpers import spawn_generate

RPM = 6000
LEARN_S = 5.0  # the first seconds are for learning; shares are measured after them
END_SHARE = 0.9  # ... until this share of the run's answers (then the run winds down)


@dataclass
class Shares:
    served: float  # 200s per second after LEARN_S, as a share of the limit
    rate_limited: float  # 429s among the answers after LEARN_S
    answers: int


async def watch(sim: SimulatedServer, done: asyncio.Event,
                samples: list[tuple[float, int, int]]) -> None:
    """(seconds since start, 200s, 429s) every 0.25 s from the simulator's own counters."""
    start = time.monotonic()
    while not done.is_set():
        by_status = sim.stats()["by_status"]
        samples.append((time.monotonic() - start, by_status.get("200", 0),
                        by_status.get("429", 0)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.25)


def shares(samples: list[tuple[float, int, int]]) -> Shares:
    """Over the steady window: from LEARN_S after the first answer until END_SHARE of
    the run's 200s (the supply control winds down at the end of a run, which says
    nothing about the limit)."""
    # the run starts with its first answer (child processes take a while to start)
    started = next(s[0] for s in samples if s[1] + s[2] > 0)
    first = next(s for s in samples if s[0] >= started + LEARN_S)
    total_ok = samples[-1][1]
    last = next(s for s in samples if s[1] >= END_SHARE * total_ok)
    assert last[0] - first[0] >= 2.0, "the run ended too soon to measure"
    ok = last[1] - first[1]
    limited = last[2] - first[2]
    served = ok / (last[0] - first[0]) / (RPM / 60)
    return Shares(served, limited / max(1, ok + limited), ok + limited)


async def run_against_limit(out: Path, api: str, headers: bool, target: int) -> Shares:
    settings = SimSettings(rpm=RPM, latency_ms=200, jitter=0.5, seed=3, duplicate_rate=0.2,
                           ratelimit_headers=headers)
    async with SimulatedServer(settings) as sim:
        config = make_config(out, sim.base_url, target=target, api=api, seed=1)
        assert config.rpm is None and config.max_in_flight is None
        done = asyncio.Event()
        samples: list[tuple[float, int, int]] = []
        watcher = asyncio.create_task(watch(sim, done, samples))
        try:
            result = await run_generate(config, install_signal_handlers=False)
        finally:
            done.set()
            await watcher
    assert result.summary.status == "finished"
    assert verify_run(out).ok
    limiter = orjson.loads((out / RUN_JSON).read_bytes())["usage"]["limiter"]
    # what was learned is on record
    assert limiter["rpm_source"] == ("headers" if headers else "429s")
    if headers:
        assert limiter["rpm"] == RPM
    else:
        assert 0.5 * RPM <= limiter["rpm"] <= 1.2 * RPM
    return shares(samples)


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_limits_from_headers(tmp_path: Path, api: str) -> None:
    got = await run_against_limit(tmp_path / "run", api, headers=True, target=500)
    assert got.served >= 0.9, got
    assert got.rate_limited <= 0.01, got


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_limits_from_429s_only(tmp_path: Path, api: str) -> None:
    got = await run_against_limit(tmp_path / "run", api, headers=False, target=500)
    assert got.served >= 0.8, got
    assert got.rate_limited <= 0.05, got


async def test_a_distributed_run_shares_what_one_process_learned(redis_url: str) -> None:
    """One process sees the endpoint's x-ratelimit-limit-requests; the others (real Redis)
    pace the run's one shared bucket with it before they have seen any header."""
    settings = LimiterSettings(max_in_flight=8)
    coordinators = [RedisCoordinator(redis_url, "learn") for _ in range(2)]
    try:
        first, second = (SharedRateLimiter(settings, c.aio, c.keys) for c in coordinators)
        assert second.shared_rates() == (0.0, 0.0)
        first.on_headers({"x-ratelimit-limit-requests": "600",
                          "x-ratelimit-limit-tokens": "90000"})
        (await first.acquire()).release()  # publishes
        (await second.acquire()).release()  # reads
        assert first.shared_rates() == second.shared_rates() == (600.0, 90000.0)
        snap = second.snapshot()
        assert (snap["rpm"], snap["rpm_source"]) == (600.0, "another process")
        assert first.snapshot()["rpm_source"] == "headers"
    finally:
        for coordinator in coordinators:
            await coordinator.aclose()


async def test_a_rate_found_from_429s_stays_with_its_process(redis_url: str) -> None:
    """Without headers each process finds its own share of the limit from its own 429s
    and paces it itself (as AIMD flows share a link); the shared bucket is not set from
    it and nothing is published: one process's share is not the run's limit."""
    coordinator = RedisCoordinator(redis_url, "aimd")
    try:
        limiter = SharedRateLimiter(LimiterSettings(max_in_flight=8), coordinator.aio,
                                    coordinator.keys)
        now = time.monotonic()
        for k in range(150):  # this process was served 100/s for 1.5 s
            limiter.aimd.on_success(now - 1.5 + k * 0.01)
        limiter.on_rate_limited(0.01)
        snap = limiter.snapshot()
        assert snap["rpm_source"] == "429s"
        assert snap["rpm"] == pytest.approx(0.9 * 6000, rel=0.05)
        assert limiter.shared_rates() == (0.0, 0.0)
        (await limiter.acquire()).release()
        client = redis.Redis.from_url(redis_url)
        assert client.hgetall(coordinator.keys.limits) == {}
        client.close()
    finally:
        await coordinator.aclose()


@pytest.mark.parametrize("headers", [True, False])
async def test_two_processes_share_an_unknown_limit(redis_url: str, tmp_path: Path,
                                                    headers: bool) -> None:
    """Two `generate` processes of one distributed run, no --rpm, 6,000 RPM enforced:
    together they serve most of the limit with few 429s, with or without headers."""
    settings = SimSettings(rpm=RPM, latency_ms=200, jitter=0.5, seed=6, duplicate_rate=0.2,
                           ratelimit_headers=headers)
    async with SimulatedServer(settings) as sim:
        done = asyncio.Event()
        samples: list[tuple[float, int, int]] = []
        watcher = asyncio.create_task(watch(sim, done, samples))
        try:
            workers = [await spawn_generate(sim.base_url, tmp_path / f"w{i}", 600, "--redis",
                                            redis_url, "--run-id", f"share{headers}")
                       for i in range(2)]
            for worker in workers:
                _, stderr = await asyncio.wait_for(worker.communicate(), 300)
                assert worker.returncode == 0, stderr.decode()
        finally:
            done.set()
            await watcher
    got = shares(samples)
    assert got.served >= 0.8, got
    assert got.rate_limited <= 0.05, got
