"""The simulator's Batch API and the bounded batch client, over real loopback HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from service.errors import ClientRequestError, InputError
from service.llm import ClientSettings, LLMClient, Secret
from service.llm.batch import (
    CHAT,
    COMPLETIONS,
    BatchClient,
    BatchInfo,
    first_choice,
    parse_result_file,
    request_line,
    split_requests,
)
from service.llm.usage import usage_of
from service.simulator import SimSettings, SimulatedServer
from service.simulator.batch import BatchSimSettings


async def _wait(client: BatchClient, batch_id: str) -> BatchInfo:
    for _ in range(400):
        info = await client.retrieve(batch_id)
        if info.terminal:
            return info
        await asyncio.sleep(0.02)
    raise AssertionError("batch never finished")


def _body(prompt: str) -> dict[str, object]:
    return {"model": "sim", "prompt": prompt, "max_tokens": 40, "temperature": 0.7,
            "seed": 5}


async def test_completions_batch_round_trip_equals_online_answers(tmp_path: Path) -> None:
    prompts = [f"Come up with a series of tasks:\n1. Task number {i}\n2." for i in range(6)]
    async with SimulatedServer(SimSettings(latency_ms=0, seed=2),
                               batch=BatchSimSettings(turnaround_s=0.2)) as sim:
        async with BatchClient(sim.base_url) as client:
            data = b"\n".join(request_line(f"id-{i}", COMPLETIONS, _body(p))
                              for i, p in enumerate(prompts)) + b"\n"
            file_id = await client.upload("in.jsonl", data)
            created = await client.create(file_id, COMPLETIONS, {"run": "r1", "key": "b1"})
            assert created.status in ("validating", "in_progress")
            info = await _wait(client, created.id)
            assert info.status == "completed" and info.completed == 6 and info.failed == 0
            assert info.output_file_id is not None and info.error_file_id is None
            out = tmp_path / "out.jsonl"
            size = await client.download(info.output_file_id, out)
            assert size == out.stat().st_size > 0
            found = await client.find("key", "b1")
            assert found is not None and found.id == created.id
            assert await client.find("key", "nope") is None
        async with LLMClient(ClientSettings(sim.base_url, model="sim")) as online:
            expected = {}
            for i, p in enumerate(prompts):
                result = await online.complete(p, max_tokens=40, temperature=0.7, seed=5)
                expected[f"id-{i}"] = result.text
    results = parse_result_file(out, known=expected)
    assert sorted(r.custom_id for r in results) == sorted(expected)
    for r in results:
        assert r.ok and r.body is not None
        assert first_choice(r.body, chat=False)[0] == expected[r.custom_id]
        usage = usage_of(r.body.get("usage"))
        assert usage is not None and usage.prompt_tokens > 0
    assert sim.batch.stats()["answered_twice"] == 0


async def test_chat_batch_and_cancel(tmp_path: Path) -> None:
    sim = SimulatedServer(SimSettings(latency_ms=0, seed=2),
                          batch=BatchSimSettings(turnaround_s=30))
    async with sim, BatchClient(sim.base_url) as client:
            lines = [request_line(f"c-{i}", CHAT, {
                "model": "sim", "max_tokens": 10,
                "messages": [{"role": "user", "content": f"Is task {i} a classification?"}]})
                for i in range(4)]
            file_id = await client.upload("chat.jsonl", b"\n".join(lines))
            created = await client.create(file_id, CHAT, {})
            cancelled = await client.cancel(created.id)
            assert cancelled.status == "cancelled"
            assert cancelled.error_file_id is not None  # the lines it did not run
            err = tmp_path / "err.jsonl"
            await client.download(cancelled.error_file_id, err)
    results = parse_result_file(err)
    assert results and all(r.expired and not r.ok for r in results)


async def test_failed_and_expired_lines_are_resubmitted_alone(tmp_path: Path) -> None:
    settings = BatchSimSettings(turnaround_s=0.05, line_failure_rate=0.3, expire_rate=1.0)
    async with SimulatedServer(SimSettings(latency_ms=0, seed=3), batch=settings) as sim:
        pending = {f"t-{i:03d}": _body(f"Prompt {i}\n1.") for i in range(40)}
        answered: set[str] = set()
        rounds = 0
        async with BatchClient(sim.base_url) as client:
            while pending and rounds < 20:
                rounds += 1
                data = b"\n".join(request_line(c, COMPLETIONS, b) for c, b in pending.items())
                info = await _wait(client, (await client.create(
                    await client.upload("in.jsonl", data), COMPLETIONS, {})).id)
                assert info.status == "expired"  # every batch expires, with partial output
                for file_id in (info.output_file_id, info.error_file_id):
                    if file_id is None:
                        continue
                    path = tmp_path / f"{file_id}.jsonl"
                    await client.download(file_id, path)
                    for r in parse_result_file(path, known=pending):
                        if r.ok:
                            answered.add(r.custom_id)
                            del pending[r.custom_id]
        stats = sim.batch.stats()
    assert not pending and len(answered) == 40 and rounds > 1
    assert stats["answered_lines"] == 40 and stats["answered_twice"] == 0
    assert max(sim.batch.answered.values()) == 1


async def test_upload_4xx_is_a_clear_error_with_the_key_redacted() -> None:
    async with SimulatedServer(SimSettings(latency_ms=0, api_key="sk-right"),
                               batch=BatchSimSettings(upload_error_status=400)) as sim:
        async with BatchClient(sim.base_url, Secret("sk-right")) as client:
            with pytest.raises(ClientRequestError, match="HTTP 400 from POST") as exc:
                await client.upload("in.jsonl", b'{"custom_id": "a"}\n')
            assert exc.value.status == 400
        async with BatchClient(sim.base_url, Secret("sk-wrong-secret")) as client:
            with pytest.raises(ClientRequestError) as exc:
                await client.retrieve("batch-x")
            assert exc.value.status == 401
            assert "sk-wrong-secret" not in str(exc.value)


async def test_create_rejects_bad_input_files() -> None:
    sim = SimulatedServer(SimSettings(latency_ms=0))
    async with sim, BatchClient(sim.base_url) as client:
            dup = request_line("a", COMPLETIONS, _body("x")) + b"\n" + \
                request_line("a", COMPLETIONS, _body("y"))
            file_id = await client.upload("dup.jsonl", dup)
            with pytest.raises(ClientRequestError, match="duplicate custom_id"):
                await client.create(file_id, COMPLETIONS, {})
            with pytest.raises(ClientRequestError, match="'endpoint'"):
                await client.create(file_id, "/v1/embeddings", {})


@pytest.mark.parametrize(("line", "field"), [
    (b"not json", None),
    (b'["a list"]', None),
    (b'{"response": {"status_code": 200, "body": {}}}', "custom_id"),
    (b'{"custom_id": "a", "response": {"status_code": "200", "body": {}}}',
     "response.status_code"),
    (b'{"custom_id": "a", "response": {"status_code": 200, "body": "x"}}', "response.body"),
    (b'{"custom_id": "a", "response": null, "error": null}', "response"),
    (b'{"custom_id": "zzz", "response": {"status_code": 200, "body": {}}}', "custom_id"),
])
def test_malformed_output_lines_name_file_line_and_field(tmp_path: Path, line: bytes,
                                                         field: str | None) -> None:
    good = orjson.dumps({"custom_id": "a", "response": {"status_code": 200, "body": {}}})
    path = tmp_path / "out.jsonl"
    path.write_bytes(good + b"\n" + line + b"\n")
    known = {"a", "b"}
    with pytest.raises(InputError) as exc:
        parse_result_file(path, known=known)
    assert exc.value.line == 2 and exc.value.field == field
    assert str(path) in str(exc.value)


def test_output_line_twice_is_an_error(tmp_path: Path) -> None:
    good = orjson.dumps({"custom_id": "a", "response": {"status_code": 200, "body": {}}})
    path = tmp_path / "out.jsonl"
    path.write_bytes(good + b"\n" + good + b"\n")
    with pytest.raises(InputError, match="appears twice"):
        parse_result_file(path, known={"a"})


def test_split_requests_respects_count_and_byte_caps() -> None:
    lines = [b"x" * 99 for _ in range(10)]  # 100 bytes with the newline
    assert [len(f) for f in split_requests(lines, max_requests=4)] == [4, 4, 2]
    assert [len(f) for f in split_requests(lines, max_requests=50, max_bytes=350)] == [3, 3, 3, 1]
    with pytest.raises(InputError, match="above the file cap"):
        split_requests([b"x" * 500], max_bytes=100)


def test_simulate_command_batch_api_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import build_parser, main
    from service.commands.simulate import batch_settings_from_args

    args = build_parser("simulate").parse_args(["simulate", "--batch-api-turnaround", "5",
                                      "--batch-api-failure-rate", "0.05",
                                      "--batch-api-expire-rate", "0.2", "--seed", "3"])
    settings = batch_settings_from_args(args)
    assert (settings.turnaround_s, settings.line_failure_rate, settings.expire_rate,
            settings.seed) == (5.0, 0.05, 0.2, 3)
    assert main(["simulate", "--batch-api-failure-rate", "2"]) == 2
    assert "line_failure_rate must be within 0..1" in capsys.readouterr().err
