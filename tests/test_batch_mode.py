"""`generate --mode batch` end to end against the simulator's Batch API (real loopback
HTTP, real files, real kill -9), and the files backend with a test playing vLLM's
offline batch runner."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.errors import ClientRequestError, ConfigError, InputError
from service.generate.batch_mode import BatchRun
from service.generate.batch_transport import METADATA_KEY, OpenAITransport, name_of
from service.generate.orchestrator import run_generate
from service.llm.batch import COMPLETIONS, BatchClient, request_line
from service.rundir.batch_journal import BATCHES, PREPARED, UPLOADED, BatchJournal
from service.rundir.store import INSTRUCTIONS, REJECTED, RUN_JSON, TASKS
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer
from service.simulator.batch import BatchSimSettings
from tests.conftest import make_config
from tests.helpers import jsonl, spawn_generate

ACCEPTANCE = BatchSimSettings(turnaround_s=0.3, line_failure_rate=0.05, expire_rate=0.2, seed=7)


def _sim(batch: BatchSimSettings = ACCEPTANCE, seed: int = 1) -> SimulatedServer:
    return SimulatedServer(SimSettings(latency_ms=0, seed=seed, duplicate_rate=0.2,
                                       bad_item_rate=0.1), batch=batch)


def _paid_once(sim: SimulatedServer, out: Path) -> None:
    """No custom_id answered twice; one provider batch per journal key."""
    assert sim.batch.stats()["answered_twice"] == 0
    made = Counter(b.metadata.get(METADATA_KEY) for b in sim.batch.batches.values())
    assert made and max(made.values()) == 1
    journal = BatchJournal(out)
    try:
        submitted = {b.batch_id for b in journal.view.batches.values() if b.batch_id}
    finally:
        journal.close()
    assert submitted == set(sim.batch.batches)


async def test_2000_tasks_in_batch_mode_pass_verify(tmp_path: Path) -> None:
    out = tmp_path / "run"
    async with _sim() as sim:
        config = dataclasses.replace(
            make_config(out, sim.base_url, target=2000, seed=1, mode="batch",
                        batch_poll_seconds=0.05),
            prices={"sim": (1.0, 4.0)})
        result = await run_generate(config, install_signal_handlers=False)
        _paid_once(sim, out)
        stats = sim.batch.stats()
    assert result.summary.status == "finished"
    assert len(jsonl(out / TASKS)) == 2000
    report = verify_run(out)
    assert report.ok, report.summary()
    run = orjson.loads((out / RUN_JSON).read_bytes())
    batch = run["batch"]
    # stages overlap: instructions, classify, instances (+ resubmissions) in a few rounds
    assert 3 <= batch["rounds"] <= 8
    assert stats["by_status"].get("completed", 0) >= 1
    usage = run["usage"]
    stages = usage["tokens"]["by_stage"]
    assert set(stages) == {"instructions", "classify", "instances"}
    tokens = usage["tokens"]
    full = (tokens["prompt"] * 1.0 + tokens["completion"] * 4.0) / 1e6
    assert usage["cost_usd"] == pytest.approx(full * 0.5, rel=1e-6)  # the batch discount


async def _run_once(out: Path, seed_sim: int) -> dict[str, bytes]:
    async with _sim(seed=seed_sim) as sim:
        config = make_config(out, sim.base_url, target=150, seed=5, mode="batch",
                             batch_poll_seconds=0.02)
        result = await run_generate(config, install_signal_handlers=False)
        assert result.summary.status == "finished"
    return {name: (out / name).read_bytes() for name in (TASKS, INSTRUCTIONS, REJECTED)}


async def test_same_seed_twice_gives_identical_files(tmp_path: Path) -> None:
    first = await _run_once(tmp_path / "a", 3)
    second = await _run_once(tmp_path / "b", 3)
    assert first == second
    assert first[TASKS].count(b"\n") == 150


async def _spawn(base_url: str, out: Path, target: int) -> asyncio.subprocess.Process:
    return await spawn_generate(base_url, out, target, "--seed", "2", "--mode", "batch",
                                "--batch-poll-seconds", "0.05", "--batch-max-requests", "20")


async def test_kill_9_at_random_moments_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rng = random.Random(17)
    async with _sim(BatchSimSettings(turnaround_s=1.0, line_failure_rate=0.05,
                                     expire_rate=0.2, seed=3)) as sim:
        for _ in range(5):
            process = await _spawn(sim.base_url, out, 1000)
            await asyncio.sleep(rng.uniform(0.3, 2.5))  # import, upload, poll, process...
            assert process.returncode is None, "the run ended before the kill"
            process.kill()
            await process.wait()
        process = await _spawn(sim.base_url, out, 1000)
        _, stderr = await asyncio.wait_for(process.communicate(), 300)
        assert process.returncode == 0, stderr.decode()[-2000:]
        _paid_once(sim, out)
    tasks = jsonl(out / TASKS)
    assert len(tasks) == 1000
    assert len({t["id"] for t in tasks}) == 1000
    report = verify_run(out)
    assert report.ok, report.summary()
    events = Counter(e["event"] for e in jsonl(out / BATCHES))
    assert events["submitted"] == len(sim.batch.batches)


def _answer_file(sim: SimulatedServer, request: Path) -> list[bytes]:
    """What vLLM's run_batch writes for a request file (OpenAI's output line shape)."""
    out = []
    for i, raw in enumerate(request.read_bytes().splitlines()):
        line = orjson.loads(raw)
        status, body = sim.answer_request(orjson.dumps(line["body"]),
                                          chat=line["url"].endswith("/chat/completions"))
        out.append(orjson.dumps({"id": f"vllm-{i}", "custom_id": line["custom_id"],
                                 "response": {"status_code": status, "body": body},
                                 "error": None}) + b"\n")
    return out


async def _offline_runner(sim: SimulatedServer, folder: Path, stop: asyncio.Event,
                          mangle: dict[str, bytes] | None = None) -> None:
    """Plays the offline runner: answers each request file, writing in two parts."""
    done: set[str] = set()
    while not stop.is_set():
        for request in sorted(folder.glob("*.input.jsonl")):
            if request.name in done:
                continue
            done.add(request.name)
            lines = _answer_file(sim, request)
            if mangle and "first" in mangle:
                lines[0] = mangle.pop("first")
            output = folder / request.name.replace(".input.jsonl", ".output.jsonl")
            half = b"".join(lines)[: max(1, len(b"".join(lines)) // 2)]
            output.write_bytes(half)  # a runner still writing: a partial last line
            await asyncio.sleep(0.03)
            output.write_bytes(b"".join(lines))
        await asyncio.sleep(0.02)


async def test_files_backend_end_to_end_with_an_offline_runner(tmp_path: Path) -> None:
    out, folder = tmp_path / "run", tmp_path / "exchange"
    sim = SimulatedServer(SimSettings(latency_ms=0, seed=4))  # never started: no HTTP
    stop = asyncio.Event()
    runner = asyncio.create_task(_offline_runner(sim, folder, stop))
    config = make_config(out, "http://127.0.0.1:9/v1", target=60, seed=4, mode="batch",
                         batch_backend="files", batch_dir=str(folder), batch_poll_seconds=0.02)
    try:
        result = await run_generate(config, install_signal_handlers=False)
    finally:
        stop.set()
        await runner
    assert result.summary.status == "finished"
    assert len(jsonl(out / TASKS)) == 60
    assert verify_run(out).ok
    assert sorted(folder.glob("*.input.jsonl")) and sorted(folder.glob("*.output.jsonl"))


@pytest.mark.parametrize(("bad", "field"), [
    (b"this is not json\n", None),
    (orjson.dumps({"custom_id": "bogus", "response": {"status_code": 200, "body": {}}})
     + b"\n", "custom_id"),
])
async def test_malformed_output_file_is_a_clear_error_then_resume(
        tmp_path: Path, bad: bytes, field: str | None) -> None:
    out, folder = tmp_path / "run", tmp_path / "exchange"
    sim = SimulatedServer(SimSettings(latency_ms=0, seed=4))
    stop = asyncio.Event()
    runner = asyncio.create_task(_offline_runner(sim, folder, stop, {"first": bad}))
    config = make_config(out, "http://127.0.0.1:9/v1", target=20, seed=4, mode="batch",
                         batch_backend="files", batch_dir=str(folder), batch_poll_seconds=0.02)
    try:
        with pytest.raises(InputError) as exc:
            await run_generate(config, install_signal_handlers=False)
    finally:
        stop.set()
        await runner
    assert exc.value.line == 1 and exc.value.field == field
    assert "output.jsonl" in str(exc.value)
    # The runner fixes its file; the resumed run picks it up and finishes: nothing lost.
    for request in folder.glob("*.input.jsonl"):
        output = folder / request.name.replace(".input.jsonl", ".output.jsonl")
        output.write_bytes(b"".join(_answer_file(sim, request)))
    stop = asyncio.Event()
    runner = asyncio.create_task(_offline_runner(sim, folder, stop))
    try:
        result = await run_generate(config, install_signal_handlers=False)
    finally:
        stop.set()
        await runner
    assert result.summary.status == "finished"
    assert verify_run(out).ok


async def test_upload_4xx_fails_clearly_and_a_rerun_pays_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    refusing = dataclasses.replace(ACCEPTANCE, upload_error_status=400)
    async with _sim(refusing) as sim:
        config = make_config(out, sim.base_url, target=30, seed=1, mode="batch",
                             batch_poll_seconds=0.02)
        with pytest.raises(ClientRequestError, match="HTTP 400"):
            await run_generate(config, install_signal_handlers=False)
        events = [e["event"] for e in jsonl(out / BATCHES)]
        assert PREPARED in events and "submitted" not in events
        assert not sim.batch.batches
        sim.batch.settings = ACCEPTANCE
        result = await run_generate(config, install_signal_handlers=False)
        _paid_once(sim, out)
    assert result.summary.status == "finished"
    assert verify_run(out).ok


async def test_batch_dir_shared_by_two_runs_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "exchange"
    first = make_config(tmp_path / "a", "http://127.0.0.1:9/v1", target=5, mode="batch",
                        batch_backend="files", batch_dir=str(folder), batch_poll_seconds=0.02)
    second = dataclasses.replace(first, out=tmp_path / "b")
    started = asyncio.Event()
    task = asyncio.create_task(run_generate(first, install_signal_handlers=False))
    while not list(folder.glob("*.input.jsonl")):  # the first run is waiting for output
        await asyncio.sleep(0.02)
    started.set()
    with pytest.raises(ConfigError, match=r"batch_dir.*in use by another"):
        await run_generate(second, install_signal_handlers=False)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (tmp_path / "b" / TASKS).exists()


async def test_resume_adopts_a_batch_created_but_not_journalled(tmp_path: Path) -> None:
    """A kill between the create call and its journal line: the resumed run finds the
    batch by its metadata instead of creating (and paying for) it again."""
    run_path = tmp_path / "run"
    run_path.mkdir()
    journal = BatchJournal(run_path)
    data = request_line("r000001-i000000", COMPLETIONS,
                        {"model": "sim", "prompt": "1.", "max_tokens": 5}) + b"\n"
    (run_path / "batches" / "b000001.input.jsonl").write_bytes(data)
    journal.record({"event": PREPARED, "key": "b000001", "round": 1, "endpoint": COMPLETIONS,
                    "input": "batches/b000001.input.jsonl",
                    "items": [{"custom_id": "r000001-i000000", "stage": "instructions"}]})
    entry = journal.view.batches["b000001"]
    async with _sim() as sim, BatchClient(sim.base_url) as client:
        transport = OpenAITransport(client, journal)
        file_id = await client.upload("x.jsonl", data)
        journal.record({"event": UPLOADED, "key": "b000001", "input_file_id": file_id})
        created = await client.create(file_id, COMPLETIONS,
                                      {METADATA_KEY: name_of(journal, entry)})
        # ... killed here; the resumed run:
        await transport.submit(entry, data, resumed=True)
        assert entry.batch_id == created.id
        assert len(sim.batch.batches) == 1
    journal.close()


def test_batch_options_have_ranges(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_max_requests"):
        make_config(tmp_path, "http://127.0.0.1:9/v1", batch_max_requests=50_001)
    with pytest.raises(ConfigError, match="'mode'"):
        make_config(tmp_path, "http://127.0.0.1:9/v1", mode="sometimes")
    with pytest.raises(ConfigError, match="batch_poll_seconds"):
        make_config(tmp_path, "http://127.0.0.1:9/v1", batch_poll_seconds=0)


def test_batch_run_is_importable_for_hooks() -> None:
    assert callable(BatchRun.request_drain)


async def test_chat_api_batches_and_the_progress_line(tmp_path: Path) -> None:
    import io

    from service.progress import Progress

    out = tmp_path / "run"
    stream = io.StringIO()
    async with _sim() as sim:
        config = make_config(out, sim.base_url, target=40, seed=6, mode="batch", api="chat",
                             batch_poll_seconds=0.05, quiet=False)
        result = await run_generate(config, install_signal_handlers=False,
                                    progress=Progress(stream=stream, interval_s=0.0))
        endpoints = {b.endpoint for b in sim.batch.batches.values()}
    assert result.summary.status == "finished"
    assert endpoints == {"/v1/chat/completions"}
    assert verify_run(out).ok
    text = stream.getvalue()
    assert "round 1 | batches" in text and "waiting" in text and "lines" in text
    assert "tasks 40/40" in text
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["batch"]["waiting_s"] > 0 and run["batch"]["rounds"] >= 3


@pytest.mark.parametrize(("key", "value"), [("mode", "batch"), ("batch_backend", "files"),
                                            ("batch_dir", "/etc")])
def test_serve_jobs_cannot_choose_batch_mode_or_a_batch_dir(tmp_path: Path, key: str,
                                                           value: str) -> None:
    from service.serve.jobs import build_job_config
    from service.serve.policy import JobPolicy

    with pytest.raises(ConfigError, match=f"'{key}' \\(from request body\\): not accepted"):
        build_job_config({key: value, "target": 5}, run_dir=tmp_path, env={}, job_id="j1",
                         policy=JobPolicy())


async def test_batch_timeout_cancels_and_resubmits_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "run"
    slow = BatchSimSettings(turnaround_s=2.0, seed=2)
    async with _sim(slow) as sim:
        config = make_config(out, sim.base_url, target=15, seed=1, mode="batch",
                             batch_poll_seconds=0.05, batch_timeout=1.0)
        result = await run_generate(config, install_signal_handlers=False)
        statuses = Counter(b.status for b in sim.batch.batches.values())
        _paid_once(sim, out)
    assert result.summary.status == "finished"
    assert statuses["cancelled"] >= 1  # cancelled at the timeout, with partial output
    assert verify_run(out).ok


async def test_budget_stops_new_rounds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    async with _sim() as sim:
        config = dataclasses.replace(
            make_config(out, sim.base_url, target=500, seed=1, mode="batch",
                        batch_poll_seconds=0.02, budget_usd=0.01),
            prices={"sim": (10.0, 10.0)})
        result = await run_generate(config, install_signal_handlers=False)
    assert result.summary.status == "budget"
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["batch"]["rounds"] == 1  # the first round's answers crossed the budget
    assert run["usage"]["cost_usd"] >= 0.01
    assert verify_run(out).ok


async def test_reprocessing_a_half_written_round_gives_the_same_files(tmp_path: Path) -> None:
    """A kill after a round's records were written but before its "processed" line: the
    resumed run cuts the files back to the round's start and processes it again."""
    out = tmp_path / "run"
    async with _sim() as sim:
        config = make_config(out, sim.base_url, target=40, seed=8, mode="batch",
                             batch_poll_seconds=0.02)
        await run_generate(config, install_signal_handlers=False)
        before = {name: (out / name).read_bytes() for name in (TASKS, INSTRUCTIONS, REJECTED)}
        raw = (out / BATCHES).read_bytes().splitlines(keepends=True)
        last = max(i for i, line in enumerate(raw) if b'"event":"processed"' in line)
        (out / BATCHES).write_bytes(b"".join(raw[:last]))  # the kill came just before it
        batches_before = len(sim.batch.batches)
        result = await run_generate(config, install_signal_handlers=False)
        assert len(sim.batch.batches) == batches_before  # nothing submitted again
        _paid_once(sim, out)
    assert result.summary.status == "finished"
    after = {name: (out / name).read_bytes() for name in (TASKS, INSTRUCTIONS, REJECTED)}
    assert after == before
    assert verify_run(out).ok


async def test_files_backend_refuses_a_linked_output_file(tmp_path: Path) -> None:
    out, folder = tmp_path / "run", tmp_path / "exchange"
    secret = tmp_path / "elsewhere.jsonl"
    secret.write_bytes(b'{"custom_id": "x"}\n')
    config = make_config(out, "http://127.0.0.1:9/v1", target=5, seed=4, mode="batch",
                         batch_backend="files", batch_dir=str(folder), batch_poll_seconds=0.02)

    async def plant() -> None:
        while not list(folder.glob("*.input.jsonl")):
            await asyncio.sleep(0.02)
        request = next(folder.glob("*.input.jsonl"))
        (folder / request.name.replace(".input.jsonl", ".output.jsonl")).symlink_to(secret)

    planter = asyncio.create_task(plant())
    with pytest.raises(InputError, match="not a regular file"):
        await run_generate(config, install_signal_handlers=False)
    await planter


async def test_a_batch_the_provider_fails_is_a_clear_error_then_resubmitted(
        tmp_path: Path) -> None:
    from service.errors import SelfInstructError

    out = tmp_path / "run"
    async with _sim(dataclasses.replace(ACCEPTANCE, fail_validation=True)) as sim:
        config = make_config(out, sim.base_url, target=20, seed=1, mode="batch",
                             batch_poll_seconds=0.02)
        with pytest.raises(SelfInstructError, match=r"failed at the provider"):
            await run_generate(config, install_signal_handlers=False)
        sim.batch.settings = ACCEPTANCE
        result = await run_generate(config, install_signal_handlers=False)
        assert sim.batch.stats()["answered_twice"] == 0
    assert result.summary.status == "finished"
    assert verify_run(out).ok


def test_decontaminate_while_generating_is_online_only(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    code = main(["generate", "--mode", "batch", "--decontaminate", "--out", str(tmp_path / "r"),
                 "--base-url", "http://127.0.0.1:9/v1", "--quiet"])
    assert code == 2
    assert "selfinstruct decontaminate" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("flags", "key"), [({"method": "alpaca"}, "method"),
                                            ({"keep_raw": True}, "keep_raw")])
async def test_online_only_options_are_refused_in_batch_mode(
        tmp_path: Path, flags: dict[str, Any], key: str) -> None:
    config = make_config(tmp_path / "r", "http://127.0.0.1:9/v1", mode="batch", **flags)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        await run_generate(config, install_signal_handlers=False)


async def test_reference_compat_rules_apply_in_batch_mode(tmp_path: Path) -> None:
    """compat="reference": the same rules decide on model text as online (here: the
    reference's capitalize() of every kept instruction)."""
    out = tmp_path / "run"
    async with _sim() as sim:
        config = make_config(out, sim.base_url, target=30, seed=3, mode="batch",
                             compat="reference", batch_poll_seconds=0.02)
        result = await run_generate(config, install_signal_handlers=False)
    assert result.summary.status == "finished"
    admitted = [r["instruction"] for r in jsonl(out / INSTRUCTIONS)]
    assert admitted and all(t == t.capitalize() for t in admitted)
    assert all("raw_instances" in t for t in jsonl(out / TASKS))
    assert verify_run(out).ok
