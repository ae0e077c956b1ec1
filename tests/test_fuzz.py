"""Bad input, fuzzed: property-based tests (hypothesis) for everything that reads input
from outside: the seed loader, the config loader, every parser of a model's answer, the
LLM client's reading of an endpoint's responses, and the simulator's request handling.

The guarantee under test: whatever the input, only documented errors escape (the
``service.errors`` hierarchy, each naming what was wrong), and what is returned has the
documented shape. Round-trip properties check that well-formed input is read exactly.

A coverage-guided fuzz target for the parsers, to run by hand for longer, is
``fuzz/parsers.py`` (atheris; not needed here).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import string
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.config import RANGES, STAGES, Config, load_config
from service.errors import ConfigError, InputError, LLMError
from service.generate.filters import clean_instruction, filter_instances, instruction_rejection
from service.generate.stages.classify import parse_classify_answer
from service.generate.stages.instances import NULL_INPUTS, parse_input_first, parse_output_first
from service.generate.stages.instructions import parse_instruction_items
from service.llm import ClientSettings, LimiterSettings, LLMClient, RetrySettings
from service.rundir.seeds import Instance, SeedTask, load_seed_tasks
from service.simulator import SimSettings, SimulatedServer
from service.simulator.answers import AnswerSettings, answer, rng_for
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)

# Modest example counts keep the file within seconds; fuzz/parsers.py runs for longer.
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HTTP = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# text that exercises line breaks of every kind, BOMs, NULs, surrogate-free unicode
_ODD = st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\ufeff",
                        "\x00", "\t", " ", ":", "1.", "10)", "Task:", "Input:", "Output:",
                        "Example 1", "Class label:", "[", "{", "]", "}", '"', "\\", "yes",
                        "No", "**"])
TEXT = st.lists(st.one_of(st.text(max_size=30), _ODD), max_size=30).map("".join)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False,
                         allow_infinity=False), st.text(max_size=20))
def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # any size of integer, unlike orjson


JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


# ------------------------------------------------------------------------------ seeds
def _load(path: Path, data: bytes) -> list[SeedTask] | InputError:
    path.write_bytes(data)
    try:
        return load_seed_tasks(path)
    except InputError as exc:
        assert str(exc).startswith(str(path)), str(exc)  # names the file
        assert exc.problem
        return exc


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), TEXT.map(lambda t: t.encode("utf-8", "replace"))))
@example(data=b"[" * 50_000)
@example(data=b"{" * 50_000)
@example(data=b'[{"instruction": "x"}, ' + b"[" * 50_000)
@example(data=b"\xef\xbb\xbf")
@example(data=b'{"instruction": "a\xe2\x80\xa8b"}\n')
def test_seed_loader_any_bytes_gives_tasks_or_input_error(tmp_path: Path, data: bytes) -> None:
    result = _load(tmp_path / "seeds.jsonl", data)
    if isinstance(result, list):
        assert result and all(isinstance(t, SeedTask) and t.instruction.strip() for t in result)
        assert len({t.id for t in result}) == len(result)


_SEED_FIELD = st.sampled_from(["id", "name", "instruction", "instances", "is_classification",
                               "extra"])
_INSTANCE_LIKE = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"input": JSON_VALUES, "output": JSON_VALUES}),
    st.fixed_dictionaries({"input": st.text(max_size=10), "output": st.text(max_size=10)}),
)
_TASK_LIKE = st.one_of(
    JSON_VALUES,
    st.dictionaries(_SEED_FIELD, st.one_of(JSON_VALUES, st.lists(_INSTANCE_LIKE, max_size=3)),
                    max_size=6),
)


@FUZZ
@given(entries=st.lists(_TASK_LIKE, min_size=1, max_size=6), as_array=st.booleans())
def test_seed_loader_structured_input_gives_tasks_or_an_error_naming_line_and_field(
        tmp_path: Path, entries: list[Any], as_array: bool) -> None:
    if as_array:
        data = json.dumps(entries, indent=1).encode()
    else:
        data = b"".join(json.dumps(e).encode() + b"\n" for e in entries)
    result = _load(tmp_path / "seeds.jsonl", data)
    if isinstance(result, InputError) and data.lstrip()[:1] in (b"[", b"{"):
        assert result.line is not None or "no seed tasks" in result.problem, str(result)


_WORDS = st.text(alphabet=string.ascii_letters + string.digits + " \u2028\u2029\x85é漢",
                 min_size=1, max_size=40)


@st.composite
def seed_tasks(draw: st.DrawFn) -> list[SeedTask]:
    count = draw(st.integers(1, 5))
    tasks = []
    for i in range(count):
        instruction = draw(_WORDS.filter(lambda s: s.strip()))
        instances = tuple(Instance(draw(_WORDS), draw(_WORDS))
                          for _ in range(draw(st.integers(0, 3))))
        tasks.append(SeedTask(f"t{i}", draw(_WORDS), instruction.strip(), instances,
                              draw(st.booleans())))
    return tasks


@FUZZ
@given(tasks=seed_tasks(), as_array=st.booleans())
@example(tasks=[SeedTask("a", "n", "split\u2028here", (Instance("x\x85", "y\u2029"),), True)],
         as_array=False)
def test_seed_loader_reads_back_exactly_what_was_written(tmp_path: Path, tasks: list[SeedTask],
                                                          as_array: bool) -> None:
    records = [t.to_json() for t in tasks]
    data = (orjson.dumps(records) if as_array
            else b"".join(orjson.dumps(r) + b"\n" for r in records))
    assert _load(tmp_path / "seeds.jsonl", data) == tasks


# ------------------------------------------------------------------------------ config
_KEYS = sorted({"target", "seed", "base_url", "model", "api", "rpm", "tpm", "max_in_flight",
                "request_timeout", "max_attempts", "deadline", "budget_usd", "threshold",
                "tokenizer", "dedup_index", "quiet", "fsync", "out", "seed_tasks",
                "local_model", "redis", "run_id", "lease_seconds", "classification_share",
                "inclusive_threshold", "prompts_per_request", "num_machine_instructions",
                "num_prompt_instructions"})
_VALUE_TEXT = st.one_of(
    TEXT,
    st.sampled_from(["", "0", "-1", "1", "1e999", "nan", "inf", "9" * 5000, "none", "true",
                     "~", "~nosuchuser-xyz/run", "\x00", "a\x00b", "http://x", "redis://h",
                     "../x", "..", ".", "a/b", "chat", "unicode", "lsh64", "0.5", "1_000"]),
)


def _config_or_error(**kwargs: Any) -> Config | ConfigError:
    try:
        config, _ = load_config(**kwargs)
    except ConfigError as exc:
        assert "config" in str(exc), str(exc)  # names the key or the file
        return exc
    return config


@FUZZ
@given(env=st.dictionaries(st.sampled_from(_KEYS).map(lambda k: "SELFINSTRUCT_" + k.upper()),
                           _VALUE_TEXT, max_size=4),
       openai=st.fixed_dictionaries({}, optional={
           "OPENAI_BASE_URL": _VALUE_TEXT,
           "OPENAI_API_KEY": st.text(max_size=10).map(lambda t: "sk-CANARY-" + t)}),
       flags=st.dictionaries(st.sampled_from(_KEYS), _VALUE_TEXT, max_size=4))
@example(env={"SELFINSTRUCT_OUT": "~nosuchuser-xyz/run"}, openai={}, flags={})
@example(env={}, openai={}, flags={"seed_tasks": "a\x00b"})
def test_config_from_any_environment_and_flags_is_a_config_or_a_config_error(
        env: dict[str, str], openai: dict[str, str], flags: dict[str, str]) -> None:
    env = {k: v.replace("\x00", "") for k, v in {**env, **openai}.items()}  # env has no NULs
    result = _config_or_error(flags=flags, env=env)
    if isinstance(result, Config):
        for key, (low, high) in RANGES.items():  # every number within its range
            value = getattr(result, key, None)
            assert value is None or low <= value <= high, (key, value)
        if result.run_id is not None:
            _assert_safe_run_id(result.run_id)
        for path in (result.out, result.seed_tasks, result.local_model):
            assert path is None or "\x00" not in str(path)
    else:
        assert "sk-CANARY-" not in str(result)  # a secret is never echoed


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


_TOML_SCALAR = st.one_of(st.booleans(), st.integers(-10**20, 10**20),
                         st.floats(allow_nan=False, allow_infinity=False), _VALUE_TEXT)
_TOML_VALUE = st.one_of(_TOML_SCALAR, st.lists(_TOML_SCALAR, max_size=3))


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines = [f"{key} = {_toml_value(draw(_TOML_VALUE))}"
             for key in draw(st.lists(st.sampled_from([*_KEYS, "bogus"]), unique=True,
                                      max_size=4))]
    if draw(st.booleans()):
        lines.append("[filters]")
        for key in draw(st.lists(st.sampled_from(["min_words", "max_words", "blacklist",
                                                  "max_instances", "drop_write_a_program",
                                                  "nope"]), unique=True, max_size=3)):
            lines.append(f"{key} = {_toml_value(draw(_TOML_VALUE))}")
    for stage in draw(st.lists(st.sampled_from([*STAGES, "other"]), unique=True, max_size=2)):
        lines.append(f"[stages.{stage}]")
        for key in draw(st.lists(st.sampled_from(["model", "temperature", "top_p",
                                                  "max_tokens", "api", "base_url", "x"]),
                                 unique=True, max_size=3)):
            lines.append(f"{key} = {_toml_value(draw(_TOML_VALUE))}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(document=st.one_of(toml_documents(), TEXT, st.binary(max_size=200).map(
    lambda b: b.decode("latin-1"))))
@example(document="a = " + "[" * 5000 + "]" * 5000)
@example(document="x = " + "{a = " * 3000 + "1" + "}" * 3000)
@example(document='out = "~nosuchuser-xyz/run"')
@example(document='seed_tasks = "a\\u0000b"')
def test_config_file_of_any_content_is_a_config_or_a_config_error(
        tmp_path: Path, document: str) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(document.encode("utf-8", "surrogatepass"))
    result = _config_or_error(env={}, config_file=path)
    if isinstance(result, ConfigError):
        assert str(path) in str(result) or "config key" in str(result), str(result)


def _assert_safe_run_id(run_id: str) -> None:
    assert run_id not in (".", "..") and "/" not in run_id and "\\" not in run_id
    base = Path("/srv/runs")
    assert (base / run_id).resolve().parent == base  # stays one level inside


@FUZZ
@given(run_id=st.one_of(TEXT, st.sampled_from(["../x", "..", ".", "a/../../b", "/etc",
                                               "x" * 65, "ok-run_1.2", "..\\x", "%2e%2e"])))
def test_run_ids_are_validated_no_path_traversal(run_id: str) -> None:
    result = _config_or_error(flags={"redis": "redis://127.0.0.1:1/0", "run_id": run_id},
                              env={})
    if isinstance(result, Config):
        if run_id.strip().lower() in ("", "none", "null"):
            assert result.run_id is None  # unset, as for any optional key
            return
        assert result.run_id == run_id
        _assert_safe_run_id(run_id)
    else:
        assert "'run_id'" in str(result)


def test_run_id_with_traversal_is_refused_with_a_clear_message() -> None:
    for bad in ("../x", "..", ".", "a/b", "/etc", "x" * 65):
        with pytest.raises(ConfigError, match="config key 'run_id'"):
            load_config({"redis": "redis://127.0.0.1:1/0", "run_id": bad}, env={})


# ------------------------------------------------------------------------------ parsers
@FUZZ
@given(text=TEXT)
@example(text="1.\n2.\n3. " + "9" * 5000 + ". x")
def test_instruction_parser_never_fails_and_yields_clean_items(text: str) -> None:
    items = parse_instruction_items(text)
    for item in items:
        assert isinstance(item, str) and item
        assert item == " ".join(item.split())  # one line, whitespace collapsed
        cleaned = clean_instruction(item)
        reason = instruction_rejection(cleaned, Config().filters)
        assert reason is None or isinstance(reason[0], str)


_ITEM = st.text(alphabet=string.ascii_letters + string.digits + " ,;'?!-()", min_size=1,
                max_size=60).map(lambda s: " ".join(s.split())).filter(
    lambda s: bool(s) and s[0].isalpha() and not s.lower().startswith(("task", "instruction")))


@FUZZ
@given(items=st.lists(_ITEM, min_size=1, max_size=8), start=st.integers(2, 12),
       sep=st.sampled_from(["\n", "\r\n"]), style=st.sampled_from([". ", ") ", ".  "]))
def test_instruction_parser_reads_a_numbered_continuation_exactly(
        items: list[str], start: int, sep: str, style: str) -> None:
    text = " " + items[0] + "".join(f"{sep}{start + i}{style}{item}"
                                    for i, item in enumerate(items[1:], start=1))
    assert parse_instruction_items(text) == items


@FUZZ
@given(text=TEXT)
def test_classify_parser_never_fails(text: str) -> None:
    answer_ = parse_classify_answer(text)
    assert answer_ in (True, False, None)
    if answer_ is not None:
        assert text.strip()


@FUZZ
@given(text=TEXT)
def test_instance_parsers_never_fail_and_give_string_pairs(text: str) -> None:
    for parse in (parse_input_first, parse_output_first):
        instances = parse(text)
        assert all(isinstance(i, Instance) and isinstance(i.input, str)
                   and isinstance(i.output, str) for i in instances)
        verdict = filter_instances(instances, Config().filters)
        assert len(verdict.kept) <= Config().filters.max_instances
        assert all(i.output and i.output != i.input for i in verdict.kept)


_FIELD = st.text(alphabet=string.ascii_letters + string.digits + " ,.;'?!-", min_size=1,
                 max_size=40).map(lambda s: " ".join(s.split())).filter(
    lambda s: bool(s) and s.lower() not in NULL_INPUTS and s[0].isalnum()
    and not s.lower().startswith(("example", "task")))


@FUZZ
@given(pairs=st.lists(st.tuples(_FIELD, _FIELD), min_size=1, max_size=5),
       headers=st.booleans())
def test_input_first_parser_reads_well_formed_examples_exactly(
        pairs: list[tuple[str, str]], headers: bool) -> None:
    if headers:
        text = "\n\n".join(f"Example {k}\nInput: {i}\nOutput: {o}"
                           for k, (i, o) in enumerate(pairs, start=1))
    else:
        text = "\n".join(f"Input: {i}\nOutput: {o}" for i, o in pairs)
    assert parse_input_first(text) == [Instance(i, o) for i, o in pairs]


@FUZZ
@given(pairs=st.lists(st.tuples(_FIELD, _FIELD), min_size=1, max_size=5))
def test_output_first_parser_reads_well_formed_examples_exactly(
        pairs: list[tuple[str, str]]) -> None:
    text = "\n\n".join(f"Class label: {label}\nInput: {inp}" for label, inp in pairs)
    assert parse_output_first(text) == [Instance(inp, label) for label, inp in pairs]


# --------------------------------------------------------------- LLM client responses
_CHOICE = st.fixed_dictionaries(
    {"index": st.one_of(st.integers(-2, 4), JSON_SCALARS)},
    optional={"text": st.one_of(st.text(max_size=20), JSON_VALUES),
              "message": st.one_of(st.fixed_dictionaries({"content": st.one_of(
                  st.text(max_size=20), JSON_SCALARS)}), JSON_VALUES),
              "finish_reason": st.one_of(st.sampled_from(["stop", "length"]), JSON_SCALARS)})
_USAGE = st.one_of(JSON_VALUES, st.fixed_dictionaries(
    {"prompt_tokens": st.one_of(st.integers(-10, 10**6), JSON_SCALARS),
     "completion_tokens": st.one_of(st.integers(-10, 10**6), JSON_SCALARS)}))
_BODY = st.one_of(
    st.binary(max_size=100),
    JSON_VALUES.map(_dumps),
    st.fixed_dictionaries({"choices": st.lists(_CHOICE, max_size=4)},
                          optional={"usage": _USAGE, "model": JSON_SCALARS,
                                    "error": JSON_VALUES}).map(_dumps),
)


@st.composite
def _sse(draw: st.DrawFn) -> bytes:
    events = [b"data: " + _dumps(draw(st.one_of(
        st.fixed_dictionaries({"choices": st.lists(st.one_of(_CHOICE, st.fixed_dictionaries(
            {"index": st.integers(0, 2), "delta": JSON_VALUES})), max_size=3)},
            optional={"usage": _USAGE, "error": JSON_VALUES}),
        JSON_VALUES))) + b"\n\n" for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        events.append(draw(st.sampled_from([b"data: {not json\n\n", b": comment\n\n",
                                            b"event: x\n\n", b"data:\n\n"])))
    if draw(st.booleans()):
        events.append(b"data: [DONE]\n\n")
    return b"".join(events)


class _Scripted:
    """One aiohttp server answering whatever the current example says."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.headers: dict[str, str] = {}
        self.content_type = "application/json"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=self.status, body=self.body, headers=self.headers,
                            content_type=self.content_type)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[_Scripted, str]]:
    script = _Scripted()
    app = web.Application()
    app.router.add_post("/v1/completions", script.handle)
    app.router.add_post("/v1/chat/completions", script.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield script, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


@HTTP
@given(status=st.sampled_from([200, 200, 200, 200, 400, 401, 404, 408, 413, 429, 500, 503]),
       body=_BODY, stream=st.booleans(), sse=_sse(), chat=st.booleans(),
       n_prompts=st.integers(1, 2),
       retry_after=st.one_of(st.none(), st.sampled_from(["0", "1.5", "-3", "nan", "inf",
                                                         "1e308", "Wed, 21 Oct 2015 07:28:00 GMT"]),
                             st.text(alphabet=string.ascii_letters + string.digits + " .,:-",
                                     max_size=20)))
@example(status=200, body=b'{"choices": [{"index": 0, "text": "a", "finish_reason": "stop"}], '
                      b'"usage": {"prompt_tokens": -5, "completion_tokens": -70000}}',
         stream=False, sse=b"", chat=False, n_prompts=1, retry_after=None)
@example(status=200, body=b'{"choices": [{"index": 0, "text": "a"}], "usage": '
                      b'{"prompt_tokens": 1e300, "completion_tokens": "12"}}',
         stream=False, sse=b"", chat=False, n_prompts=1, retry_after=None)
async def test_client_turns_any_response_into_a_result_or_an_llm_error(
        scripted: tuple[_Scripted, str], status: int, body: bytes, stream: bool, sse: bytes,
        chat: bool, n_prompts: int, retry_after: str | None) -> None:
    script, base_url = scripted
    script.status = status
    script.body = sse if stream and status == 200 else body
    script.content_type = "text/event-stream" if stream and status == 200 else "application/json"
    script.headers = {"retry-after": retry_after} if retry_after else {}
    settings_ = ClientSettings(base_url, model="m", limiter=LimiterSettings(tpm=10**6),
                               retry=RetrySettings(max_attempts=1, request_timeout_s=5.0,
                                                   deadline_s=10.0))
    async with LLMClient(settings_) as client:
        try:
            if chat:
                result = await client.chat([{"role": "user", "content": "hi"}], max_tokens=4,
                                           stream=stream)
                expected = 1
            else:
                result = await client.complete(["p"] * n_prompts, max_tokens=4, stream=stream)
                expected = n_prompts
        except LLMError as exc:
            assert str(exc)
            return
        assert status == 200
        assert len(result.choices) == expected
        assert all(isinstance(c.text, str) for c in result.choices)
        assert result.usage.prompt_tokens >= 0 and result.usage.completion_tokens >= 0
        assert client.accounting.total_tokens >= 0 and client.accounting.cost_usd >= 0
        # the permit was settled and released: nothing is left in flight or waiting
        snapshot = client.limiter.snapshot()
        assert snapshot["in_flight"] == 0 and snapshot["queued"] == 0, snapshot


# ------------------------------------------------------------ simulator requests
@FUZZ
@given(prompt=TEXT, seed=st.one_of(st.integers(), st.text(max_size=5)),
       dup=st.floats(0, 0.5), bad=st.floats(0, 0.5))
@example(prompt="Tasks:\n1. a\n" + "9" * 5000 + ".", seed=0, dup=0.0, bad=0.0)
@example(prompt="Task: x\nIs it classification?", seed=0, dup=0.0, bad=0.0)
def test_simulator_answers_any_prompt(prompt: str, seed: int | str, dup: float,
                                      bad: float) -> None:
    text = answer(prompt, rng_for(prompt, seed, 0), AnswerSettings(dup, bad))
    assert isinstance(text, str)


_REQUEST = st.one_of(
    st.binary(max_size=80),
    JSON_VALUES.map(_dumps),
    st.fixed_dictionaries({}, optional={
        "model": JSON_SCALARS,
        "prompt": st.one_of(TEXT, st.lists(TEXT, max_size=3), JSON_VALUES),
        "messages": st.one_of(JSON_VALUES, st.lists(st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant"]), "content": TEXT}),
            max_size=3)),
        "max_tokens": st.one_of(st.integers(-5, 10**9), JSON_SCALARS),
        "n": st.one_of(st.integers(-1, 200), JSON_SCALARS),
        "stop": st.one_of(TEXT, st.lists(TEXT, max_size=6), JSON_VALUES),
        "stream": st.one_of(st.booleans(), JSON_SCALARS),
        "stream_options": JSON_VALUES,
        "temperature": JSON_SCALARS,
        "seed": JSON_VALUES,
    }).map(_dumps),
)


@pytest.fixture
async def plain_sim() -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(SimSettings(latency_ms=0, seed=1)) as server:
        yield server


@HTTP
@given(body=_REQUEST, chat=st.booleans())
@example(body=orjson.dumps({"prompt": "Tasks:\n" + "7" * 5000 + "."}), chat=False)
@example(body=orjson.dumps({"prompt": ["a"], "n": 128, "max_tokens": 10**9}), chat=False)
async def test_simulator_answers_any_request_with_200_or_400(
        plain_sim: SimulatedServer, body: bytes, chat: bool) -> None:
    url = plain_sim.base_url + ("/chat/completions" if chat else "/completions")
    async with aiohttp.ClientSession() as http, \
            http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        assert resp.status in (200, 400), (resp.status, raw[:300])
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            assert raw.rstrip().endswith(b"data: [DONE]")
            return
        data = orjson.loads(raw)
        if resp.status == 400:
            assert data["error"]["message"]
        else:
            assert data["choices"]


# ------------------------------------------------------------ the atheris target
def test_fuzz_target_runs_without_atheris() -> None:
    """fuzz/parsers.py's one-input function works on a few inputs, and importing the
    module does not import atheris (the test suite never needs it)."""
    spec = importlib.util.spec_from_file_location("fuzz_parsers", ROOT / "fuzz" / "parsers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = "atheris" in sys.modules
    spec.loader.exec_module(module)
    assert ("atheris" in sys.modules) == before
    for target in range(7):
        for payload in (b"", b"\x00" * 10, b"Example 1\nInput: a\nOutput: b",
                        b"Class label: x\nInput: y", b" first\n10. second", b"\xff" * 64,
                        b"[" * 3000, b'{"instruction": "x"}\n', b"target = 5\n"):
            module.test_one_input(bytes([target]) + payload)
    for path in module._scratch:
        shutil.rmtree(path, ignore_errors=True)

