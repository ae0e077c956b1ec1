"""Prompt-cache accounting: usage parsing, cached-input prices, the simulator's cache over
real HTTP, per-stage counts in run.json, and prompts that put their stable part first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.config import load_config
from service.errors import ConfigError
from service.generate.orchestrator import run_generate
from service.generate.stages import classify as classify_stage
from service.generate.stages import instances as instance_stage
from service.generate.templates import load_templates
from service.llm import ClientSettings, LLMClient, Price
from service.llm.accounting import Accounting
from service.llm.usage import cached_tokens_of, usage_of
from service.progress import status_line
from service.rundir.seeds import default_seed_path, load_seed_tasks
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer
from service.simulator.prompt_cache import PromptCache, PromptCacheSettings
from tests.conftest import make_config


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 2000, "prompt_tokens_details": {"cached_tokens": 1024}}, 1024),
    ({"prompt_tokens": 2000, "input_tokens_details": {"cached_tokens": 1152}}, 1152),
    ({"prompt_tokens": 2000, "prompt_cache_hit_tokens": 640}, 640),
    ({"prompt_tokens": 2000, "cache_read_input_tokens": 128}, 128),
    ({"prompt_tokens": 2000, "cached_tokens": 7}, 7),
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 5000}}, 100),  # clamped
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": -5}}, 0),
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": "many"}}, 0),
    ({"prompt_tokens": 100, "prompt_tokens_details": None}, 0),
    ({"prompt_tokens": 100}, 0),
])
def test_cached_tokens_of_every_known_spelling(usage: dict[str, Any], expected: int) -> None:
    assert cached_tokens_of(usage, int(usage["prompt_tokens"])) == expected


def test_usage_of_clamps_and_rejects_shapes() -> None:
    parsed = usage_of({"prompt_tokens": 10, "completion_tokens": -3,
                       "prompt_tokens_details": {"cached_tokens": 4}})
    assert parsed is not None
    assert (parsed.prompt_tokens, parsed.completion_tokens, parsed.cached_tokens) == (10, 0, 4)
    assert usage_of({"completion_tokens": 3}) is None
    assert usage_of(["not", "a", "dict"]) is None


def test_price_cached_input_and_batch_discount() -> None:
    price = Price(input_per_1m=2.0, output_per_1m=8.0, cached_input_per_1m=0.5)
    # 1M prompt tokens of which 400k cached, 100k completion
    online = price.cost(1_000_000, 100_000, 400_000)
    assert online == pytest.approx(0.6 * 2.0 + 0.4 * 0.5 + 0.1 * 8.0)
    assert price.cost(1_000_000, 100_000, 400_000, batch=True) == pytest.approx(online * 0.5)
    no_cache_price = Price(2.0, 8.0)
    assert no_cache_price.cost(1_000_000, 0, 400_000) == pytest.approx(2.0)
    accounting = Accounting({"m": price})
    accounting.record_usage("m", 1_000_000, 100_000, 400_000)
    accounting.record_stage("classify", 1_000_000, 100_000, 400_000)
    snap = accounting.snapshot()
    assert snap["tokens"]["cached"] == 400_000
    assert snap["tokens"]["cached_share"] == pytest.approx(0.4)
    assert snap["tokens"]["by_stage"]["classify"]["cached"] == 400_000
    assert snap["cost_usd"] == pytest.approx(online)


def test_prices_table_reads_cached_input(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[prices.m]\ninput_per_1m = 2.0\noutput_per_1m = 8.0\n'
                    'cached_input_per_1m = 0.5\n')
    config, _ = load_config({}, env={}, config_file=path)
    assert config.prices == {"m": (2.0, 8.0)}
    assert config.cached_input_prices == {"m": 0.5}
    path.write_text('[prices.m]\ncached_input_per_1m = -1\n')
    with pytest.raises(ConfigError, match=r"prices\.m\.cached_input_per_1m"):
        load_config({}, env={}, config_file=path)


def test_simulator_cache_needs_1024_tokens_and_counts_in_128_steps() -> None:
    now = [0.0]
    cache = PromptCache(PromptCacheSettings(ttl_s=60), clock=lambda: now[0])
    stable = "s" * (1100 * 4)  # 1,100 tokens
    assert cache.lookup(stable + "first question") == 0  # nothing seen yet
    assert cache.lookup(stable + "second question") == 1024  # 1,100 rounds down to 1,024
    longer = "t" * (1300 * 4)
    cache.lookup(longer + "a")
    assert cache.lookup(longer + "b") == 1280
    short = "u" * (1000 * 4)
    cache.lookup(short + "a")
    assert cache.lookup(short + "b") == 0  # below 1,024 tokens: never cached
    # A varying head spoils every prefix
    assert cache.lookup("x" + stable) == 0
    now[0] = 1000.0  # older than the ttl: no longer "recent"
    assert cache.lookup(stable + "third") == 0


async def test_simulator_reports_cached_tokens_over_http() -> None:
    stable = "Answer the question. " * 260  # ~1,365 tokens
    async with SimulatedServer(SimSettings(latency_ms=0, seed=1)) as sim:
        prices = {"sim": Price(1.0, 2.0, cached_input_per_1m=0.25)}
        settings = ClientSettings(sim.base_url, model="sim", prices=prices)
        async with LLMClient(settings) as client:
            first = await client.complete(stable + "Q: one?", max_tokens=8)
            second = await client.complete(stable + "Q: two?", max_tokens=8)
            chat = await client.chat([{"role": "system", "content": stable},
                                      {"role": "user", "content": "Q: three?"}], max_tokens=8)
            chat2 = await client.chat([{"role": "system", "content": stable},
                                       {"role": "user", "content": "Q: four?"}], max_tokens=8)
        snap = client.accounting.snapshot()
        cached = sum(r.usage.cached_tokens for r in (first, second, chat, chat2))
        assert sim.stats()["cached_tokens"] == cached
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == 1280
    # the system message comes first, so chat shares the same stable prefix
    assert chat.usage.cached_tokens == chat2.usage.cached_tokens == 1280
    assert snap["tokens"]["cached"] == cached
    prompt, completion = snap["tokens"]["prompt"], snap["tokens"]["completion"]
    expected = ((prompt - cached) * 1.0 + cached * 0.25 + completion * 2.0) / 1_000_000
    assert snap["cost_usd"] == pytest.approx(expected)


def test_stable_part_first_in_every_task_prompt() -> None:
    """Two tasks' prompts of a stage differ only after the shared header and examples, so
    a provider's prefix cache can serve everything but the task itself."""
    seeds = load_seed_tasks(default_seed_path())
    templates = load_templates()
    builders = [
        lambda text: classify_stage.build_classify_prompt(
            classify_stage.pick_classify_examples(seeds), text, templates),
        lambda text: instance_stage.build_input_first_prompt(
            instance_stage.pick_instance_examples(seeds, False, 4), text, templates),
        lambda text: instance_stage.build_output_first_prompt(
            instance_stage.pick_instance_examples(seeds, True, 3), text, templates),
    ]
    a, b = "Name three rivers in Europe.", "Sort these numbers ascending."
    for build in builders:
        pa, pb = build(a), build(b)
        shared = len(_common_prefix(pa, pb))
        tail = len(pa) - shared  # what differs: the task and the fixed question after it
        assert a[1:] in pa[shared:] and b[1:] in pb[shared:]
        assert tail <= len(a) + 30 and shared > 0.9 * len(pa)


def _common_prefix(x: str, y: str) -> str:
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return x[:n]


async def test_run_json_and_progress_show_cached_share_per_stage(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # A lower threshold than OpenAI's so the 944-token classify prompt caches here.
    async with SimulatedServer(SimSettings(latency_ms=2, seed=3),
                               prompt_cache=PromptCacheSettings(min_tokens=256)) as sim:
        config = make_config(out, sim.base_url, target=8, seed=3)
        result = await run_generate(config, install_signal_handlers=False)
        served_cached = sim.stats()["cached_tokens"]
    assert result.summary.status == "finished"
    run = json.loads((out / "run.json").read_text())
    tokens = run["usage"]["tokens"]
    stages = tokens["by_stage"]
    assert set(stages) == {"instructions", "classify", "instances"}
    assert stages["classify"]["cached"] > 0
    assert stages["classify"]["requests"] >= 8
    # calls cancelled when the target is reached were served but never read
    assert 0 < tokens["cached"] <= served_cached
    assert tokens["cached"] == sum(s["cached"] for s in stages.values())
    assert 0 < tokens["cached_share"] < 1
    assert sum(s["prompt"] for s in stages.values()) == tokens["prompt"]
    line = status_line(written=8, target=8, admitted=9, elapsed_s=1.0, written_this_run=8,
                       usage={**run["usage"], "total_tokens": tokens["total"]})
    assert "(cached " in line
    assert verify_run(out).ok


def test_end_of_run_report_shows_the_cached_share(tmp_path: Path) -> None:
    from service.commands.generate import usage_line
    from service.rundir.store import write_json_atomic

    write_json_atomic(tmp_path / "run.json", {"usage": {
        "tokens": {"total": 3000, "prompt": 2000, "completion": 1000, "cached_share": 0.25},
        "cost_usd": 0.5}})
    line = usage_line(tmp_path)
    assert "25% of it cached" in line and "3,000" in line and "$0.5000" in line
