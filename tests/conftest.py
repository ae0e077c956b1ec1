"""Shared fixtures: a real simulated OpenAI-compatible server on loopback, and configs."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Config, load_config
from service.simulator import SimSettings, SimulatedServer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PYTHON = sys.executable


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(SimSettings(latency_ms=20, seed=1, duplicate_rate=0.2,
                                           bad_item_rate=0.1)) as server:
        yield server


def make_config(out: Path, base_url: str, **flags: Any) -> Config:
    values: dict[str, Any] = {"out": out, "base_url": base_url, "model": "sim", "quiet": True}
    values.update(flags)
    config, _ = load_config(values, env={})
    return config
