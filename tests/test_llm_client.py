"""LLMClient (service.llm) against the real simulated endpoint over loopback HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from service.errors import (
    BadResponse,
    BudgetExceeded,
    ClientRequestError,
    ConnectionFailed,
    RequestTimeout,
    RetriesExhausted,
    ServerError,
)
from service.llm import (
    BudgetSettings,
    ClientSettings,
    LimiterSettings,
    LLMClient,
    RetrySettings,
    Secret,
)
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import SimFactory

pytestmark = pytest.mark.timeout(60)

FAST_RETRY = RetrySettings(max_attempts=4, backoff_base_s=0.01, backoff_cap_s=0.05,
                           request_timeout_s=5.0, deadline_s=30.0)


def client_for(sim: SimulatedServer, *, retry: RetrySettings = FAST_RETRY,
               limiter: LimiterSettings | None = None, **kw: Any) -> LLMClient:
    settings = ClientSettings(sim.base_url, model="sim-model", retry=retry,
                              limiter=limiter or LimiterSettings(), jitter_seed=1, **kw)
    return LLMClient(settings)


LIST_PROMPTS = [f"Tasks:\n1. Plan step number {i} of a project\n2." for i in range(3)]


# ---------------------------------------------------------------------------- happy paths
async def test_complete_list_prompts_with_n_maps_back(make_sim: SimFactory) -> None:
    sim = await make_sim()
    async with client_for(sim) as client:
        result = await client.complete(LIST_PROMPTS, n=2, max_tokens=300, stop=["\n\n"])
        assert result.n_prompts == 3 and len(result.choices) == 6
        for i, prompt in enumerate(LIST_PROMPTS):
            mine = result.for_prompt(i)
            assert [c.index for c in mine] == [2 * i, 2 * i + 1]
            assert all(c.prompt_index == i for c in mine)
            alone = await client.complete(prompt, n=2, max_tokens=300, stop=["\n\n"])
            assert [c.text for c in alone.choices] == [c.text for c in mine]
        assert [len(x) for x in result.by_prompt()] == [2, 2, 2]
        assert result.usage.prompt_tokens == sum(-(-len(p) // 4) for p in LIST_PROMPTS)
        assert result.usage.completion_tokens == sum(-(-len(c.text) // 4) for c in result.choices)
        assert result.attempts == 1 and result.model == "sim-model"
        snap = client.snapshot()
    assert snap["calls"]["ok"] == 4 and snap["attempts_by_outcome"] == {"200": 4}
    assert snap["tokens"]["total"] == sim.stats()["tokens"]["total"]


async def test_chat(make_sim: SimFactory) -> None:
    sim = await make_sim()
    async with client_for(sim) as client:
        result = await client.chat([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Tell me about tea."}],
                                   max_tokens=100, n=2)
    assert len(result.choices) == 2 and all(c.text.strip() for c in result.choices)
    assert result.for_prompt(0) == list(result.choices)
    assert result.usage.prompt_tokens == (4 + 3) + (4 + 5)
    assert sim.stats()["by_route"] == {"chat": 1}


async def test_streaming_records_ttft(make_sim: SimFactory) -> None:
    sim = await make_sim(latency_ms=200, jitter=0.0)
    async with client_for(sim) as client:
        plain = await client.complete(LIST_PROMPTS[0], max_tokens=200)
        streamed = await client.complete(LIST_PROMPTS[0], max_tokens=200, stream=True)
        chat = await client.chat([{"role": "user", "content": "hello"}], max_tokens=50, stream=True)
        many = await client.complete(LIST_PROMPTS, n=3, max_tokens=300, stream=True)
        many_plain = await client.complete(LIST_PROMPTS, n=3, max_tokens=300)
        snap = client.snapshot()
    assert [c.text for c in many.for_prompt(2)] == [c.text for c in many_plain.for_prompt(2)]
    assert many.usage == many_plain.usage
    assert streamed.text == plain.text and streamed.finish_reason == plain.finish_reason
    assert streamed.usage == plain.usage  # from the include_usage chunk
    assert plain.ttft_s is None
    assert streamed.ttft_s is not None and 0.05 < streamed.ttft_s < streamed.latency_s
    assert chat.ttft_s is not None and chat.text
    assert snap["ttft_s"]["count"] == 3 and sim.stats()["streams"] == 3


# ---------------------------------------------------------------------------- retries
@pytest.mark.parametrize("fault", ["error_rate", "garbage_rate", "reset_rate"])
async def test_retries_succeed_under_partial_faults(make_sim: SimFactory, fault: str) -> None:
    sim = await make_sim(seed=2, **{fault: 0.4})
    retry = RetrySettings(max_attempts=8, backoff_base_s=0.01, backoff_cap_s=0.05,
                          request_timeout_s=5.0)
    async with client_for(sim, retry=retry) as client:
        results = await asyncio.gather(*(client.complete(f"prompt {i}", max_tokens=20)
                                         for i in range(12)))
        snap = client.snapshot()
    assert all(r.text for r in results)
    injected = sum(sim.stats()["faults"].values())
    assert injected > 0 and snap["retries_total"] == injected
    assert snap["calls"]["ok"] == 12 and not snap["calls"]["failed"]


@pytest.mark.parametrize(("fault", "error"), [("error_rate", ServerError),
                                               ("garbage_rate", BadResponse),
                                               ("reset_rate", ConnectionFailed)])
async def test_retries_exhausted_when_always_failing(make_sim: SimFactory, fault: str,
                                                     error: type[Exception]) -> None:
    sim = await make_sim(**{fault: 1.0})
    retry = RetrySettings(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.02)
    async with client_for(sim, retry=retry) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.complete("hello", max_tokens=10)
        snap = client.snapshot()
    assert info.value.attempts == 3 and isinstance(info.value.last, error)
    assert sim.stats()["requests"] == 3
    assert snap["calls"]["failed"] == {"retries_exhausted": 1}
    assert sum(snap["attempts_by_outcome"].values()) == 3


async def test_timeout_on_hang(make_sim: SimFactory) -> None:
    sim = await make_sim(hang_rate=1.0)
    retry = RetrySettings(max_attempts=2, backoff_base_s=0.01, backoff_cap_s=0.02,
                          request_timeout_s=0.3)
    async with client_for(sim, retry=retry) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.complete("hello", max_tokens=10)
        snap = client.snapshot()
    assert isinstance(info.value.last, RequestTimeout)
    assert snap["attempts_by_outcome"] == {"timeout": 2}  # each hang ended by the timeout
    assert sim.stats()["requests"] == 2
    # some hangs, generous attempts: the call gets through
    sim.update(hang_rate=0.5)
    retry = RetrySettings(max_attempts=10, backoff_base_s=0.01, backoff_cap_s=0.02,
                          request_timeout_s=0.2)
    async with client_for(sim, retry=retry) as client:
        result = await client.complete("hello again", max_tokens=10)
    assert result.text


async def test_429_retry_after_pauses_the_limiter(make_sim: SimFactory) -> None:
    # 60 rpm with a one-request burst: the second of two concurrent calls gets a 429
    # asking for ~1 s; the client pauses (all senders) and then succeeds.
    sim = await make_sim(rpm=60, burst_seconds=1.0)
    async with client_for(sim) as client:
        results = await asyncio.gather(*(client.complete(f"p{i}", max_tokens=5) for i in range(2)))
        snap = client.snapshot()
    assert all(r.text for r in results)
    assert sorted(r.attempts for r in results) == [1, 2]
    stats = sim.stats()
    # One 429 only: a retry after a short backoff instead of the server's Retry-After
    # (~1 s at 60 rpm) would have met a second one.
    assert stats["by_status"] == {"200": 2, "429": 1}
    assert snap["rate_limited"] == 1 and snap["limiter"]["rate_limited"] == 1
    assert snap["retries"] == {"rate_limited": 1}


async def test_other_4xx_fail_fast(make_sim: SimFactory) -> None:
    sim = await make_sim()
    async with client_for(sim) as client:
        with pytest.raises(ClientRequestError) as info:
            await client.chat([{"role": "user"}], max_tokens=5)  # no content: 400
        snap = client.snapshot()
    assert info.value.status == 400 and "content" in str(info.value)
    assert sim.stats()["requests"] == 1 and snap["retries_total"] == 0
    assert snap["calls"]["failed"] == {"client_error": 1}


async def test_context_length_shrinks_max_tokens(make_sim: SimFactory) -> None:
    sim = await make_sim(context_tokens=200)
    async with client_for(sim) as client:
        # 100 prompt tokens: 150 -> 120 -> 96 (fits: 196 <= 200)
        result = await client.complete("abcd" * 100, max_tokens=150)
    assert result.max_tokens == 96 and result.attempts == 3
    assert sim.stats()["context_length_errors"] == 2
    # nothing left to shrink: the error surfaces
    async with client_for(sim) as client:
        with pytest.raises(ClientRequestError) as info:
            await client.complete("abcd" * 300, max_tokens=2)
    assert "maximum context length" in str(info.value)


async def test_budget_cap_stops_new_calls(make_sim: SimFactory) -> None:
    sim = await make_sim()
    async with client_for(sim, budget=BudgetSettings(max_total_tokens=50)) as client:
        first = await client.complete(LIST_PROMPTS[0], max_tokens=200)
        assert first.usage.total_tokens > 50
        with pytest.raises(BudgetExceeded):
            await client.complete(LIST_PROMPTS[1], max_tokens=200)
        snap = client.snapshot()
    assert sim.stats()["requests"] == 1
    assert snap["budget"]["exceeded"] is True


# ---------------------------------------------------------------------------- the limiter
async def test_limiter_holds_rpm_without_start_burst(make_sim: SimFactory) -> None:
    sim = await make_sim(latency_ms=1.0, jitter=0.0)
    async with client_for(sim, limiter=LimiterSettings(rpm=600, max_in_flight=64)) as client:
        stop = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                await client.complete("x", max_tokens=5)

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(20)]
        await asyncio.sleep(0.5 - (time.perf_counter() - t0))
        early = sim.stats()["requests"]
        await asyncio.sleep(3.0 - (time.perf_counter() - t0))
        total = sim.stats()["requests"]
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert 25.5 <= total <= 34.5, total  # 10/s for 3 s, within 15%
    assert early <= 7, early  # ~5 in the first 0.5 s: no burst at start


async def test_staying_under_server_limits_gives_no_429(make_sim: SimFactory) -> None:
    sim = await make_sim(rpm=600, tpm=60_000, latency_ms=5.0)
    limiter = LimiterSettings(rpm=540, tpm=54_000, max_in_flight=32)
    async with client_for(sim, limiter=limiter) as client:
        results = await asyncio.gather(*(client.complete(f"prompt {i}", max_tokens=40)
                                         for i in range(20)))
    assert len(results) == 20 and all(r.text for r in results)
    assert sim.stats()["by_status"] == {"200": 20}


# ---------------------------------------------------------------------------- secrets
async def test_api_key_never_leaks(make_sim: SimFactory) -> None:
    canary = "sk-canary-7f3a9c1e5b"
    sim = await make_sim(api_key="sk-the-right-one")
    async with client_for(sim, api_key=Secret(canary)) as client:
        with pytest.raises(ClientRequestError) as info:
            await client.complete("hello", max_tokens=5)
        snap_text = orjson.dumps(client.snapshot()).decode()
        texts = [str(info.value), repr(info.value), *map(str, info.value.args), snap_text,
                 repr(client), repr(client.settings)]
    assert info.value.status == 401
    assert "Incorrect API key" in str(info.value)  # the server echoed it; the client hid it
    for text in texts:
        assert canary not in text, text
    # failures that go through retries too
    bad = await make_sim(error_rate=1.0)
    retry = RetrySettings(max_attempts=2, backoff_base_s=0.01, backoff_cap_s=0.02)
    async with client_for(bad, retry=retry, api_key=canary) as client:
        with pytest.raises(RetriesExhausted) as exhausted:
            await client.complete("hello", max_tokens=5)
        assert canary not in str(exhausted.value) and canary not in str(exhausted.value.last)
        assert canary not in orjson.dumps(client.snapshot()).decode()
    # the right key works
    ok = await make_sim(api_key=canary)
    async with client_for(ok, api_key=canary) as client:
        assert (await client.complete("hello", max_tokens=5)).text


@pytest.mark.parametrize("lean", [True, False])
async def test_lean_pool_and_aiohttp_paths_answer_alike(lean: bool) -> None:
    """The lean keep-alive pool is the default for plain POSTs; lean_http=False (the
    SELFINSTRUCT_HTTP_CLIENT=aiohttp escape hatch) sends everything through aiohttp."""
    async with SimulatedServer(SimSettings(latency_ms=5, seed=4)) as sim:
        settings = ClientSettings(sim.base_url, model="m", lean_http=lean)
        async with LLMClient(settings) as client:
            result = await client.complete(["1. a\n2.", "Task: x\nIs it classification?"],
                                           max_tokens=32)
            assert len(result.by_prompt()) == 2 and all(result.by_prompt())
            assert (client._pool is not None) is lean
            assert (client._session is not None) is (not lean)
