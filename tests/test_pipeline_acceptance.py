"""Acceptance of the pipeline: a 2,000-task run at 60,000 RPM that passes verify and hits
every rejection reason, five kill -9 with resume, both APIs end to end, and repeatable
output for a fixed seed.

What is repeatable (service/generate/pipeline.py's docstring): with ``--max-in-flight 1`` the
stages take turns as the reference does (ask for instructions, admit them, finish every
admitted task, ask again), so for a fixed ``--seed``, the same settings and a
deterministic endpoint (the simulator with a fixed seed) tasks.jsonl, instructions.jsonl
and rejected.jsonl are identical byte for byte. With more requests in flight, admission
follows the order in which answers arrive (latency jitter, the dedup thread), so the
same run admits the same kind of instructions but not the same ones in the same order.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import orjson

from service.config import FilterConfig
from service.generate import filters
from service.generate.orchestrator import run_generate
from service.generate.records import NEAR_DUPLICATE, TRUNCATED
from service.generate.stages.instances import parse_input_first, parse_output_first
from service.rundir.store import INSTRUCTIONS, REJECTED, RUN_JSON, TASKS
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer, apply_limits
from service.simulator.answers import BAD_INSTANCE_KINDS, bad_instances
from tests.conftest import PYTHON, ROOT, make_config

# Every reason a run can write to rejected.jsonl: the filters' constants and the two the
# pipeline itself writes.
FILTER_REASONS = {
    filters.TOO_SHORT, filters.TOO_LONG, filters.BLACKLISTED_WORD, filters.WRITE_A_PROGRAM,
    filters.LEADING_PUNCTUATION, filters.NON_ASCII_START, filters.EMPTY,
    filters.OUTPUT_EQUALS_INPUT, filters.EMPTY_OUTPUT, filters.ENDS_WITH_COLON,
    filters.DUPLICATE_INSTANCE, filters.OVER_INSTANCE_LIMIT, filters.CONFLICTING_OUTPUTS,
    filters.NO_INSTANCES,
}
ALL_REASONS = FILTER_REASONS | {TRUNCATED, NEAR_DUPLICATE}
# Reasons no run can produce, and why.
CANNOT_OCCUR = {
    # parse_instruction_items drops blank items and clean_instruction only collapses
    # whitespace, so every candidate that reaches instruction_rejection has text; the
    # check stays in the filter for callers that pass raw text.
    filters.EMPTY,
}

# ------------------------------------------------------------------ helpers


def complete_lines(path: Path) -> list[dict[str, object]]:
    """The file's complete records; a torn last line (a kill mid-write) is left out."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    return env


async def _spawn(base_url: str, out: Path, target: int, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        PYTHON, "-m", "service", "generate", "--out", str(out), "--target", str(target),
        "--base-url", base_url, "--model", "sim", "--quiet", "--show", "0", *extra,
        env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _finish(process: asyncio.subprocess.Process, timeout: float = 120.0) -> None:
    _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, stderr.decode()[-3000:]


def _check_run(out: Path, target: int) -> list[dict[str, object]]:
    """Exactly ``target`` tasks, nothing duplicated, every task admitted, verify passes."""
    report = verify_run(out)
    assert report.ok, report.summary()
    tasks = complete_lines(out / TASKS)
    admitted = complete_lines(out / INSTRUCTIONS)
    assert len(tasks) == target
    assert len({t["id"] for t in tasks}) == target
    assert len({t["instruction"] for t in tasks}) == target
    assert len({r["id"] for r in admitted}) == len(admitted)
    assert len({r["instruction"] for r in admitted}) == len(admitted)
    admitted_by_id = {r["id"]: r["instruction"] for r in admitted}
    for task in tasks:
        assert admitted_by_id.get(task["id"]) == task["instruction"], task["id"]
    return tasks


# ------------------------------------------------------------------ bad answers


def test_every_bad_instance_answer_is_caught() -> None:
    """Each kind of faulty instance answer the simulator writes is dropped by an instance
    filter or, cut by max_tokens, by the truncation rule; none passes untouched."""
    seen: dict[bool, set[str]] = {False: set(), True: set()}
    tasks = {False: "Summarize the following email in two sentences.",
             True: "Classify the tone of the following email as formal or informal."}
    for classification, task in tasks.items():
        for i in range(300):
            text, finish = apply_limits(bad_instances(task, random.Random(i), classification),
                                        300, ["\nTask:", "\n\n\n"])
            if finish == "length":
                seen[classification].add(TRUNCATED)
                continue
            parse = parse_output_first if classification else parse_input_first
            verdict = filters.filter_instances(parse(text), FilterConfig())
            reasons = {r for _, r in verdict.dropped} | {verdict.task_rejection} - {None}
            assert reasons, text
            seen[classification] |= {r for r in reasons if r is not None}
    instance_reasons = {filters.OUTPUT_EQUALS_INPUT, filters.EMPTY_OUTPUT,
                        filters.ENDS_WITH_COLON, filters.DUPLICATE_INSTANCE,
                        filters.OVER_INSTANCE_LIMIT, filters.CONFLICTING_OUTPUTS,
                        filters.NO_INSTANCES, TRUNCATED}
    assert seen[False] == instance_reasons
    # the output-first parser skips an example without a label: no empty outputs there
    assert seen[True] == instance_reasons - {filters.EMPTY_OUTPUT}
    assert len(BAD_INSTANCE_KINDS) == 8


# ------------------------------------------------------------------ 2,000 tasks


async def test_2000_tasks_at_60k_rpm_pass_verify_with_every_rejection_reason(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = SimSettings(rpm=60_000, latency_ms=300, jitter=0.5, seed=21,
                           duplicate_rate=0.2, bad_item_rate=0.1)
    started = time.monotonic()
    async with SimulatedServer(settings) as sim:
        config = make_config(out, sim.base_url, target=2000, rpm=60_000, max_in_flight=512,
                             seed=5)
        result = await run_generate(config, install_signal_handlers=False)
        stats = sim.stats()
    elapsed = time.monotonic() - started
    assert result.summary.status == "finished"
    assert elapsed < 60, f"{elapsed:.1f} s"
    assert sum(stats["rate_limited"].values()) <= stats["requests"] * 0.01, stats
    _check_run(out, 2000)

    rejected = complete_lines(out / REJECTED)
    reasons = {str(r["reason"]) for r in rejected}
    assert reasons <= ALL_REASONS, reasons - ALL_REASONS
    missing = ALL_REASONS - CANNOT_OCCUR - reasons
    assert not missing, f"never rejected for: {sorted(missing)}"
    # what each kind of record says (contract.md): near-duplicates name their match
    for record in rejected:
        if record["reason"] == NEAR_DUPLICATE:
            assert record["matched"] and float(record["score"]) > 0.7  # type: ignore[arg-type]
    stages = {(str(r["stage"]), str(r["reason"])) for r in rejected}
    assert ("instances", TRUNCATED) in stages  # a cut instance answer drops its task
    assert ("instances", filters.CONFLICTING_OUTPUTS) in stages
    assert ("instances", filters.NO_INSTANCES) in stages
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["counters"]["rejected_by_reason"] == {
        reason: sum(1 for r in rejected if r["reason"] == reason) for reason in sorted(reasons)}


# ------------------------------------------------------------------ kill -9


async def test_five_kill_9_at_random_moments_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    target = 800
    rng = random.Random(20240611)
    snapshots: list[tuple[list[dict[str, object]], list[dict[str, object]]]] = []
    # ~70 tasks/s: each run is under way for a few seconds before its kill
    settings = SimSettings(latency_ms=200, jitter=0.5, seed=8, duplicate_rate=0.2,
                           bad_item_rate=0.1)
    flags = ("--max-in-flight", "32")
    async with SimulatedServer(settings) as sim:
        for kill in range(5):
            before = len(complete_lines(out / TASKS))
            process = await _spawn(sim.base_url, out, target, *flags)
            if kill == 0:
                # during start-up: opening the directory, writing seeds, first requests
                await asyncio.sleep(rng.uniform(0.1, 1.0))
            else:
                # once the run is under way: after a random number of new tasks, plus a
                # random fraction of a second (so some kills land mid-record)
                wanted = before + rng.randint(1, 60)
                deadline = time.monotonic() + 60
                while len(complete_lines(out / TASKS)) < wanted:
                    assert time.monotonic() < deadline, "no progress"
                    assert process.returncode is None, "the run ended before its kill"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(rng.uniform(0.0, 0.3))
            assert process.returncode is None, "the run ended before its kill"
            process.kill()
            await process.wait()
            snapshots.append((complete_lines(out / INSTRUCTIONS), complete_lines(out / TASKS)))
        assert len(snapshots[-1][1]) < target, "the kills came too late to test anything"
        await _finish(await _spawn(sim.base_url, out, target, *flags))

    tasks = _check_run(out, target)
    admitted = complete_lines(out / INSTRUCTIONS)
    for killed_admitted, killed_tasks in snapshots:
        # append-only: every instruction admitted and every task written before a kill
        # is still there, in place
        assert admitted[: len(killed_admitted)] == killed_admitted
        assert tasks[: len(killed_tasks)] == killed_tasks
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["status"] == "finished"
    assert run["counters"]["tasks_written"] == target


# ------------------------------------------------------------------ both APIs


async def test_completions_and_chat_end_to_end(tmp_path: Path) -> None:
    for api in ("completions", "chat"):
        out = tmp_path / api
        async with SimulatedServer(SimSettings(latency_ms=20, seed=3, duplicate_rate=0.2,
                                               bad_item_rate=0.1)) as sim:
            await _finish(await _spawn(sim.base_url, out, 40, "--api", api))
            routes = sim.stats()["by_route"]
        assert set(routes) == {api}, routes
        _check_run(out, 40)
        run = orjson.loads((out / RUN_JSON).read_bytes())
        assert run["config"]["api"] == api


# ------------------------------------------------------------------ repeatable


async def _run_once(out: Path, api: str, seed: int) -> dict[str, bytes]:
    # a fresh simulator each time: same seed, jittered latency
    async with SimulatedServer(SimSettings(latency_ms=5, jitter=0.5, seed=11,
                                           duplicate_rate=0.2, bad_item_rate=0.1)) as sim:
        config = make_config(out, sim.base_url, target=60, seed=seed, max_in_flight=1, api=api)
        result = await run_generate(config, install_signal_handlers=False)
    assert result.summary.status == "finished"
    assert verify_run(out).ok
    return {name: (out / name).read_bytes() for name in (TASKS, INSTRUCTIONS, REJECTED)}


async def test_fixed_seed_gives_identical_files_one_request_at_a_time(tmp_path: Path) -> None:
    for api in ("completions", "chat"):
        first = await _run_once(tmp_path / f"{api}-a", api, seed=7)
        second = await _run_once(tmp_path / f"{api}-b", api, seed=7)
        for name, data in first.items():
            assert data == second[name], f"{api}: {name} differs between two runs"
        other = await _run_once(tmp_path / f"{api}-c", api, seed=8)
        assert other[TASKS] != first[TASKS]  # the seed does change the run


async def test_fixed_seed_stop_and_resume_repeats_too(tmp_path: Path) -> None:
    """Stopped at 25 tasks and resumed to 60, twice: both directories end the same (a
    resumed run starts its sampling afresh from the seed, so it is not the uninterrupted
    run's continuation, but it is repeatable)."""
    files = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        async with SimulatedServer(SimSettings(latency_ms=5, jitter=0.5, seed=11,
                                               duplicate_rate=0.2, bad_item_rate=0.1)) as sim:
            for target in (25, 60):
                config = make_config(out, sim.base_url, target=target, seed=7, max_in_flight=1)
                await run_generate(config, install_signal_handlers=False)
        _check_run(out, 60)
        files.append({name: (out / name).read_bytes() for name in (TASKS, INSTRUCTIONS, REJECTED)})
    assert files[0] == files[1]
