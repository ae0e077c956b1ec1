"""The simulated OpenAI-compatible endpoint, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from rouge_score import rouge_scorer

from service.config import FilterConfig
from service.generate.filters import clean_instruction, instruction_rejection
from service.generate.stages.classify import (
    build_classify_prompt,
    parse_classify_answer,
    pick_classify_examples,
)
from service.generate.stages.instances import (
    build_input_first_prompt,
    build_output_first_prompt,
    parse_input_first,
    parse_output_first,
    pick_instance_examples,
)
from service.generate.stages.instructions import (
    build_instruction_prompt,
    choose_examples,
    parse_instruction_items,
    stop_sequences,
)
from service.generate.templates import load_templates
from service.rundir.seeds import default_seed_path, load_seed_tasks
from service.simulator import SimSettings, SimulatedServer, apply_limits
from service.simulator.answers import FAMILY_SIZE, family_instruction
from tests.conftest import SimFactory

pytestmark = pytest.mark.timeout(60)

FAST = {"latency_ms": 5.0, "jitter": 0.2}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None,
               **kw: Any) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(url, data=data, headers=headers, **kw) as r:
        return r.status, dict(r.headers), await r.read()


async def completions(http: aiohttp.ClientSession, sim: SimulatedServer, **body: Any) -> dict[str, Any]:
    status, _, raw = await post(http, sim.base_url + "/completions", body)
    assert status == 200, raw
    data: dict[str, Any] = orjson.loads(raw)
    return data


# ---------------------------------------------------------------------------- endpoints
async def test_context_manager_binds_loopback_free_port() -> None:
    async with SimulatedServer(SimSettings(**FAST)) as sim:
        assert sim.base_url.startswith("http://127.0.0.1:") and sim.base_url.endswith("/v1")
        assert sim.port > 0
        async with aiohttp.ClientSession() as s, s.get(sim.url + "/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
    with pytest.raises(RuntimeError):
        _ = SimulatedServer().port  # never started


async def test_models_health_stats(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(model="my-model")
    async with http.get(sim.base_url + "/models") as r:
        assert r.status == 200
        data = await r.json()
    assert data["object"] == "list" and data["data"][0]["id"] == "my-model"
    await completions(http, sim, prompt="hello there", max_tokens=20)
    async with http.get(sim.url + "/stats") as r:
        stats = await r.json()
    assert stats["requests"] == 1 and stats["by_status"] == {"200": 1}
    assert stats["tokens"]["prompt"] == 3 and stats["tokens"]["completion"] > 0
    assert set(stats["faults"]) == {"error", "reset", "garbage", "hang", "truncate"}
    assert stats == {**sim.stats(), "uptime_s": stats["uptime_s"]}


async def test_completion_shape_and_usage(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    data = await completions(http, sim, model="m1", prompt="Write something nice.", max_tokens=200)
    assert data["object"] == "text_completion" and data["model"] == "m1"
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop" and choice["text"].strip()
    usage = data["usage"]
    assert usage["prompt_tokens"] == 6  # ceil(21 / 4)
    assert usage["completion_tokens"] == -(-len(choice["text"]) // 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_list_prompts_and_n_are_prompt_major(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    prompts = [f"Tasks:\n1. Do task number {i} for me\n2." for i in range(3)]
    data = await completions(http, sim, prompt=prompts, n=2, max_tokens=400)
    assert [c["index"] for c in data["choices"]] == list(range(6))
    assert data["usage"]["prompt_tokens"] == sum(-(-len(p) // 4) for p in prompts)
    texts = [c["text"] for c in data["choices"]]
    assert len(set(texts)) == 6
    # choice i*n+c answers prompt i: the same prompt alone gives the same two texts
    for i, p in enumerate(prompts):
        alone = await completions(http, sim, prompt=p, n=2, max_tokens=400)
        assert [c["text"] for c in alone["choices"]] == texts[2 * i: 2 * i + 2]


async def test_chat_with_n(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    body = {"model": "chat-m", "n": 3, "max_tokens": 100,
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Tell me about tea."}]}
    status, _, raw = await post(http, sim.base_url + "/chat/completions", body)
    assert status == 200
    data = orjson.loads(raw)
    assert data["object"] == "chat.completion" and data["model"] == "chat-m"
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    for c in data["choices"]:
        assert c["message"]["role"] == "assistant" and c["message"]["content"].strip()
    # 4 tokens a message plus the contents (the client's estimate)
    assert data["usage"]["prompt_tokens"] == (4 + 3) + (4 + 5)


async def test_stop_cuts_at_first_stop(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    prompt = "Tasks:\n1. Do the first task here\n2."
    full = (await completions(http, sim, prompt=prompt, max_tokens=1000))["choices"][0]
    assert "\n5." in full["text"] and full["finish_reason"] == "stop"
    cut = (await completions(http, sim, prompt=prompt, max_tokens=1000, stop=["\n6.", "\n5."]))
    choice = cut["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == full["text"][: full["text"].index("\n5.")]
    single = await completions(http, sim, prompt=prompt, max_tokens=1000, stop="\n3.")
    assert single["choices"][0]["text"] == full["text"][: full["text"].index("\n3.")]


async def test_max_tokens_truncates_with_length(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    data = await completions(http, sim, prompt="Tasks:\n1. Do a first thing now\n2.", max_tokens=10)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["text"]) == 40
    assert data["usage"]["completion_tokens"] == 10


def test_apply_limits_table() -> None:
    assert apply_limits("abcdefgh", 100, []) == ("abcdefgh", "stop")
    assert apply_limits("abcdefgh", 1, []) == ("abcd", "length")
    assert apply_limits("abc\n\ndef", 100, ["\n\n"]) == ("abc", "stop")
    assert apply_limits("abcdef XY", 1, ["XY"]) == ("abcd", "length")  # limit before stop
    assert apply_limits("aXbY", 100, ["Y", "X"]) == ("a", "stop")  # earliest stop wins


# ---------------------------------------------------------------------------- streaming
async def _read_stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]
                       ) -> tuple[list[dict[str, Any]], float, float]:
    t0 = time.perf_counter()
    first: float | None = None
    events: list[dict[str, Any]] = []
    async with http.post(url, json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        done = False
        async for line in r.content:
            line = line.strip()
            if not line:
                continue
            assert line.startswith(b"data: ")
            payload = line[6:]
            if payload == b"[DONE]":
                done = True
                continue
            event = orjson.loads(payload)
            if first is None and any(c.get("text") or (c.get("delta") or {}).get("content")
                                     for c in event["choices"]):
                first = time.perf_counter() - t0
            events.append(event)
        assert done
    assert first is not None
    return events, first, time.perf_counter() - t0


async def test_streaming_completions_equal_plain(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(latency_ms=200, jitter=0.0)
    body: dict[str, Any] = {"prompt": ["Tasks:\n1. Do one thing now\n2.", "Hello there friend"],
                            "n": 2, "max_tokens": 120, "stop": ["\n\n"]}
    plain = await completions(http, sim, **body)
    events, ttft, total = await _read_stream(http, sim.base_url + "/completions",
                                             {**body, "stream": True,
                                              "stream_options": {"include_usage": True}})
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for e in events:
        assert e["object"] == "text_completion"
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            if c["finish_reason"]:
                finish[c["index"]] = c["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in plain["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in plain["choices"]}
    assert events[-1]["usage"] == plain["usage"] and events[-1]["choices"] == []
    assert 0.05 < ttft < total  # first content before the end
    assert total >= 0.15


async def test_streaming_chat(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Say something."}],
                            "max_tokens": 50}
    _, _, raw = await post(http, sim.base_url + "/chat/completions", body)
    plain = orjson.loads(raw)["choices"][0]
    events, _, _ = await _read_stream(http, sim.base_url + "/chat/completions",
                                      {**body, "stream": True})
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join((c["delta"].get("content") or "") for e in events for c in e["choices"])
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert text == plain["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == plain["finish_reason"]
    assert "usage" not in events[-1]  # only with stream_options.include_usage


# ---------------------------------------------------------------------------- errors
async def test_bad_requests_get_400(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    url = sim.base_url + "/completions"
    for body in [b"{not json", {"max_tokens": 5}, {"prompt": [1, 2, 3]}, {"prompt": "x", "n": 0},
                 {"prompt": "x", "max_tokens": "many"}, {"prompt": "x", "stop": ["a"] * 5}]:
        status, _, raw = await post(http, url, body)
        assert status == 400, body
        assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = await post(http, sim.base_url + "/chat/completions", {"prompt": "x"})
    assert status == 400 and "messages" in orjson.loads(raw)["error"]["message"]
    assert sim.stats()["by_status"] == {"400": 7}


async def test_context_length_400(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(context_tokens=100)
    status, _, raw = await post(http, sim.base_url + "/completions",
                                {"prompt": "x" * 200, "max_tokens": 60})
    assert status == 400
    err = orjson.loads(raw)["error"]
    assert err["code"] == "context_length_exceeded"
    assert "maximum context length is 100 tokens" in err["message"]
    ok = await completions(http, sim, prompt="x" * 200, max_tokens=50)
    assert ok["choices"]
    assert sim.stats()["context_length_errors"] == 1


async def test_api_key_required(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(api_key="sk-right")
    url = sim.base_url + "/completions"
    status, _, _ = await post(http, url, {"prompt": "x"})
    assert status == 401
    status, _, raw = await post(http, url, {"prompt": "x"}, headers={"Authorization": "Bearer sk-wrong"})
    assert status == 401 and orjson.loads(raw)["error"]["code"] == "invalid_api_key"
    status, _, _ = await post(http, url, {"prompt": "x"}, headers={"Authorization": "Bearer sk-right"})
    assert status == 200
    assert "api_key" not in sim.stats()["settings"]


# ---------------------------------------------------------------------------- rate limits
async def test_rpm_429_with_headers(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    # 60 rpm, 2 s burst: two requests pass at once, the third is refused for ~1 s
    sim = await make_sim(rpm=60, burst_seconds=2.0)
    url = sim.base_url + "/completions"
    results = [await post(http, url, {"prompt": "x", "max_tokens": 5}) for _ in range(3)]
    assert [r[0] for r in results] == [200, 200, 429]
    ok_headers = results[0][1]
    assert ok_headers["x-ratelimit-limit-requests"] == "60"
    assert ok_headers["x-ratelimit-remaining-requests"] == "1"
    status, headers, raw = results[2]
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["Retry-After"] == "1" and 800 <= int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
    assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    assert "x-ratelimit-limit-tokens" not in headers
    await asyncio.sleep(int(headers["retry-after-ms"]) / 1000 + 0.05)
    status, _, _ = await post(http, url, {"prompt": "x", "max_tokens": 5})
    assert status == 200
    stats = sim.stats()
    assert stats["by_status"] == {"200": 3, "429": 1} and stats["rate_limited"] == {"requests": 1}


async def test_tpm_429_weighs_prompt_plus_max_tokens(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    # 6000 tpm = 100 tokens/s, 1 s burst: a request weighs prompt + max_tokens * n
    sim = await make_sim(tpm=6000, burst_seconds=1.0)
    url = sim.base_url + "/completions"
    status, headers, _ = await post(http, url, {"prompt": "abcd" * 10, "max_tokens": 20, "n": 2})
    assert status == 200 and headers["x-ratelimit-limit-tokens"] == "6000"
    # charged 10 + 40, completion shorter than 40: the unused part was refunded
    remaining = int(headers["x-ratelimit-remaining-tokens"])
    assert 50 <= remaining <= 100
    status, headers, _ = await post(http, url, {"prompt": "abcd" * 10, "max_tokens": 95})
    assert status == 429
    assert sim.stats()["rate_limited"] == {"tokens": 1}
    assert float(headers["retry-after-ms"]) > 0


# ---------------------------------------------------------------------------- faults
async def test_fault_error(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(error_rate=1.0)
    statuses = [(await post(http, sim.base_url + "/completions", {"prompt": "x"}))[0] for _ in range(6)]
    assert set(statuses) <= {500, 503} and len(statuses) == 6
    assert sim.stats()["faults"]["error"] == 6


async def test_fault_reset(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(reset_rate=1.0)
    for _ in range(2):
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(http, sim.base_url + "/completions", {"prompt": "x"})
    assert sim.stats()["faults"]["reset"] == 2 and sim.stats()["by_status"] == {}


async def test_fault_garbage(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(garbage_rate=1.0)
    for _ in range(4):
        status, _, raw = await post(http, sim.base_url + "/completions", {"prompt": "x"})
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
    assert sim.stats()["faults"]["garbage"] == 4


async def test_fault_hang_is_cancellable(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(hang_rate=1.0)
    t0 = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        await post(http, sim.base_url + "/completions", {"prompt": "x"},
                   timeout=aiohttp.ClientTimeout(total=0.3))
    assert time.perf_counter() - t0 < 1.0
    await asyncio.sleep(0.05)  # the client went away: the handler was cancelled
    assert sim.stats()["faults"]["hang"] == 1 and sim.stats()["in_flight"] == 0
    # a hang in flight does not hold up shutdown
    task = asyncio.create_task(post(http, sim.base_url + "/completions", {"prompt": "y"}))
    await asyncio.sleep(0.1)
    t0 = time.perf_counter()
    await sim.stop()
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, 2.0)


async def test_fault_truncate(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    plain_sim = await make_sim()
    sim = await make_sim(truncate_rate=1.0)
    body = {"prompt": "Tasks:\n1. Do one thing now\n2.", "max_tokens": 500, "stop": ["\n\n"]}
    full = (await completions(http, plain_sim, **body))["choices"][0]
    cut = (await completions(http, sim, **body))["choices"][0]
    assert cut["finish_reason"] == "length"
    assert full["text"].startswith(cut["text"]) and len(cut["text"]) < len(full["text"])
    assert sim.stats()["faults"]["truncate"] == 1


async def test_fault_rates_mix_and_update(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(error_rate=0.5, seed=3)
    statuses = [(await post(http, sim.base_url + "/completions", {"prompt": "x"}))[0] for _ in range(40)]
    errors = sum(s >= 500 for s in statuses)
    assert 8 <= errors <= 32 and statuses.count(200) == 40 - errors
    sim.update(error_rate=0.0)
    assert (await post(http, sim.base_url + "/completions", {"prompt": "x"}))[0] == 200


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        SimSettings(error_rate=1.5)
    with pytest.raises(ValueError):
        SimSettings(error_rate=0.6, reset_rate=0.6)
    with pytest.raises(ValueError):
        SimSettings(rpm=0)


# ---------------------------------------------------------------------------- determinism
async def _sample(http: aiohttp.ClientSession, sim: SimulatedServer) -> list[str]:
    prompts = ["Tasks:\n1. Plan a small party\n2.", "Random words here", "Task: Summarize the following text."]
    data = await completions(http, sim, prompt=prompts, n=2, max_tokens=300)
    return [c["text"] for c in data["choices"]]


async def test_deterministic_by_seed(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    a, b, c = await make_sim(seed=7), await make_sim(seed=7), await make_sim(seed=8)
    assert await _sample(http, a) == await _sample(http, b)
    assert await _sample(http, a) != await _sample(http, c)
    b.update(seed=8)
    assert await _sample(http, b) == await _sample(http, c)
    # faults and latency draws follow the seed too
    f1, f2 = await make_sim(seed=5, error_rate=0.5), await make_sim(seed=5, error_rate=0.5)
    s1 = [(await post(http, f1.base_url + "/completions", {"prompt": "x"}))[0] for _ in range(12)]
    s2 = [(await post(http, f2.base_url + "/completions", {"prompt": "x"}))[0] for _ in range(12)]
    assert s1 == s2


async def test_request_seed_matters_only_when_sampling(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(seed=1)
    p = "Tasks:\n1. Plan a small party\n2."

    async def text(**kw: Any) -> str:
        return str((await completions(http, sim, prompt=p, max_tokens=300, **kw))["choices"][0]["text"])

    assert await text(seed=1, temperature=0.7) == await text(seed=1, temperature=0.7)
    assert await text(seed=1, temperature=0.7) != await text(seed=2, temperature=0.7)
    assert await text(seed=1, temperature=0) == await text(seed=2, temperature=0) == await text()


# ---------------------------------------------------------------------------- pipeline formats
T = load_templates()
SEEDS = load_seed_tasks(default_seed_path())


async def test_instruction_lists_parse(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(seed=11)
    rng = random.Random(0)
    filters = FilterConfig()
    for classification in (False, True):
        pool = [t.instruction for t in SEEDS if t.is_classification == classification or not classification]
        examples, n_seed, _ = choose_examples(pool, [], rng)
        prompt = build_instruction_prompt(examples, T, classification=classification, seed_count=n_seed)
        data = await completions(http, sim, prompt=[prompt.text], n=3, max_tokens=1024,
                                 stop=stop_sequences(prompt.next_number))
        for choice in data["choices"]:
            assert choice["finish_reason"] == "stop"
            items = parse_instruction_items(choice["text"])
            # items 9..15 (the stop at "16." ends the list)
            assert 5 <= len(items) <= 16 - prompt.next_number
            for item in items:
                text = clean_instruction(item)
                assert instruction_rejection(text, filters) is None, text
                if classification:
                    assert any(w in text for w in ("Classify", "Decide", "Categorize", "Detect", "Identify"))
    # chat mode: the same text as the user's turn
    status, _, raw = await post(http, sim.base_url + "/chat/completions", {
        "messages": [{"role": "system", "content": T.instructions_chat_system},
                     {"role": "user", "content": prompt.text}],
        "max_tokens": 1024, "stop": stop_sequences(prompt.next_number)})
    assert status == 200
    assert len(parse_instruction_items(orjson.loads(raw)["choices"][0]["message"]["content"])) >= 5


async def test_duplicate_and_bad_item_shares(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    prompt = build_instruction_prompt([t.instruction for t in SEEDS[:8]], T)
    body = {"prompt": prompt.text, "n": 4, "max_tokens": 4000, "stop": stop_sequences(prompt.next_number)}
    dup = await make_sim(duplicate_rate=1.0)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    family = [family_instruction(i) for i in range(FAMILY_SIZE)]
    for c in (await completions(http, dup, **body))["choices"]:
        for item in parse_instruction_items(c["text"]):
            assert max(scorer.score(f, item)["rougeL"].fmeasure for f in family) > 0.7
    bad = await make_sim(bad_item_rate=1.0)
    filters = FilterConfig()
    items = [i for c in (await completions(http, bad, **body))["choices"]
             for i in parse_instruction_items(c["text"])]
    assert len(items) >= 20
    assert all(instruction_rejection(clean_instruction(i), filters) is not None for i in items)


async def test_classify_answers_parse(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    examples = pick_classify_examples(SEEDS)
    cases = {"Classify the sentiment of the following tweet as positive or negative.": True,
             "Decide whether the following sentence is a fact or an opinion.": True,
             "Write a short poem about the sea at night.": False,
             "Suggest five tips for learning a new language.": False}
    for instruction, expected in cases.items():
        prompt = build_classify_prompt(examples, instruction, T)
        data = await completions(http, sim, prompt=prompt, max_tokens=3, temperature=0, stop=["\n"])
        assert parse_classify_answer(data["choices"][0]["text"]) is expected, instruction


async def test_instance_answers_parse(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    cls_examples = pick_instance_examples(SEEDS, True, 4)
    gen_examples = pick_instance_examples(SEEDS, False, 4)
    task = "Classify the sentiment of the following product review as positive or negative."
    prompt = build_output_first_prompt(cls_examples, task, T)
    data = await completions(http, sim, prompt=prompt, max_tokens=350, temperature=0)
    instances = parse_output_first(data["choices"][0]["text"])
    assert len(instances) >= 2 and {i.output for i in instances} <= {"positive", "negative"}
    assert all(i.input for i in instances)

    for task, needs_input in [("Summarize the following paragraph in one sentence.", True),
                              ("Suggest three names for a friendly golden retriever puppy.", False)]:
        prompt = build_input_first_prompt(gen_examples, task, T)
        data = await completions(http, sim, prompt=prompt, max_tokens=350, temperature=0)
        instances = parse_input_first(data["choices"][0]["text"])
        assert instances and all(i.output for i in instances)
        assert all(bool(i.input) is needs_input for i in instances)


# ---------------------------------------------------------------------------- load and CLI
async def test_many_concurrent_connections(make_sim: SimFactory) -> None:
    sim = await make_sim(latency_ms=500, jitter=0.2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(i: int) -> int:
            async with session.post(sim.base_url + "/completions",
                                    json={"prompt": f"Tasks:\n1. Item {i} of the list\n2.",
                                          "max_tokens": 200}) as r:
                await r.read()
                return r.status

        t0 = time.perf_counter()
        statuses = await asyncio.gather(*(one(i) for i in range(1500)))
        elapsed = time.perf_counter() - t0
    assert statuses == [200] * 1500
    assert sim.stats()["max_in_flight"] >= 1000  # really concurrent, not queued
    assert elapsed < 10


def test_cli_serves_until_signal() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "simulate", "--port", "0", "--latency-ms", "1",
             "--seed", "3", "--error-rate", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")

            async def ping(url: str = url) -> dict[str, Any]:
                async with aiohttp.ClientSession() as s:
                    async with s.post(url + "/completions", json={"prompt": "hi"}) as r:
                        assert r.status == 200
                    async with s.get(url.removesuffix("/v1") + "/stats") as r:
                        data: dict[str, Any] = await r.json()
                        return data

            stats = asyncio.run(ping())
            assert stats["requests"] == 1 and stats["settings"]["seed"] == 3
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            assert "served:" in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_cli_rejects_bad_rates() -> None:
    out = subprocess.run([sys.executable, "-m", "service", "simulate", "--hang-rate", "2"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "argument --hang-rate: expected a number from 0 to 1, got '2'" in out.stderr
