"""Shared fixtures: a real simulated OpenAI-compatible server on loopback, and configs."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from service.config import Config, load_config
from service.simulator import SimSettings, SimulatedServer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PYTHON = sys.executable


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The worker's JSON log lines, captured for the test."""
    from service.serve.logs import configure_logging, reset_logging

    stream = io.StringIO()
    configure_logging("json", stream=stream)
    yield stream
    reset_logging()


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(SimSettings(latency_ms=20, seed=1, duplicate_rate=0.2,
                                           bad_item_rate=0.1)) as server:
        yield server


SimFactory = Callable[..., Awaitable[SimulatedServer]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Start simulators on demand (fast: 5 ms ±20% latency unless overridden); all are
    stopped after the test."""
    started: list[SimulatedServer] = []

    async def factory(**kwargs: Any) -> SimulatedServer:
        sim = SimulatedServer(SimSettings(**{"latency_ms": 5.0, "jitter": 0.2, **kwargs}))
        await sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        await sim.stop()


def make_config(out: Path, base_url: str, **flags: Any) -> Config:
    values: dict[str, Any] = {"out": out, "base_url": base_url, "model": "sim", "quiet": True}
    values.update(flags)
    config, _ = load_config(values, env={})
    return config


def start_redis_server(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free loopback port, answering PING (extra: its flags,
    e.g. ``--requirepass``; the URL then needs the password to be usable)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (`make test` and .ci/run install it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.AuthenticationError:
                break  # up, and wants a password
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
    finally:
        client.close()
    return process, url


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, private to the test."""
    process, url = start_redis_server(tmp_path)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
