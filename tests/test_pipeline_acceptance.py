"""Acceptance of the pipeline: a 2,000-task run at 60,000 RPM that passes verify and hits
every rejection reason, both APIs end to end, and repeatable output for a fixed seed
(kill -9 with resume: tests/test_kill9.py).

What is repeatable (service/generate/pipeline.py's docstring): with ``--max-in-flight 1`` the
stages take turns as the reference does (ask for instructions, admit them, finish every
admitted task, ask again), so for a fixed ``--seed``, the same settings and a
deterministic endpoint (the simulator with a fixed seed) tasks.jsonl, instructions.jsonl
and rejected.jsonl are identical byte for byte. With more requests in flight, admission
follows the order in which answers arrive (latency jitter, the dedup thread), so the
same run admits the same kind of instructions but not the same ones in the same order.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson

from service.config import FilterConfig
from service.generate import filters
from service.generate.orchestrator import run_generate
from service.generate.processing import TRUNCATED_INSTANCE
from service.generate.records import NEAR_DUPLICATE, TRUNCATED
from service.generate.stages.instances import parse_input_first, parse_output_first
from service.rundir.store import INSTRUCTIONS, REJECTED, RUN_JSON, TASKS
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer, apply_limits
from service.simulator.answers import BAD_INSTANCE_KINDS, bad_instances
from tests.conftest import make_config
from tests.helpers import check_admission_log, finish, jsonl, spawn_generate

# Every reason a run can write to rejected.jsonl: the filters' constants and the two the
# pipeline itself writes.
FILTER_REASONS = {
    filters.TOO_SHORT, filters.TOO_LONG, filters.BLACKLISTED_WORD, filters.WRITE_A_PROGRAM,
    filters.LEADING_PUNCTUATION, filters.NON_ASCII_START, filters.EMPTY,
    filters.OUTPUT_EQUALS_INPUT, filters.EMPTY_OUTPUT, filters.ENDS_WITH_COLON,
    filters.DUPLICATE_INSTANCE, filters.OVER_INSTANCE_LIMIT, filters.CONFLICTING_OUTPUTS,
    filters.NO_INSTANCES,
}
ALL_REASONS = FILTER_REASONS | {TRUNCATED, NEAR_DUPLICATE, TRUNCATED_INSTANCE}
# Reasons no run can produce, and why.
CANNOT_OCCUR = {
    # parse_instruction_items drops blank items and clean_instruction only collapses
    # whitespace, so every candidate that reaches instruction_rejection has text; the
    # check stays in the filter for callers that pass raw text.
    filters.EMPTY,
}

# ------------------------------------------------------------------ helpers


def _check_run(out: Path, target: int) -> list[dict[str, object]]:
    """Exactly ``target`` tasks, nothing duplicated, every task admitted, verify passes."""
    report = verify_run(out)
    assert report.ok, report.summary()
    _, tasks = check_admission_log(out)
    assert len(tasks) == target
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

    rejected = jsonl(out / REJECTED, complete_only=True)
    reasons = {str(r["reason"]) for r in rejected}
    assert reasons <= ALL_REASONS, reasons - ALL_REASONS
    missing = ALL_REASONS - CANNOT_OCCUR - reasons
    assert not missing, f"never rejected for: {sorted(missing)}"
    # what each kind of record says (contract.md): near-duplicates name their match
    for record in rejected:
        if record["reason"] == NEAR_DUPLICATE:
            assert record["matched"] and float(record["score"]) > 0.7  # type: ignore[arg-type]
    stages = {(str(r["stage"]), str(r["reason"])) for r in rejected}
    # a cut instance answer loses its last, unfinished instance only (as in the reference)
    assert ("instance_filter", TRUNCATED_INSTANCE) in stages
    assert ("instances", filters.CONFLICTING_OUTPUTS) in stages
    assert ("instances", filters.NO_INSTANCES) in stages
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["counters"]["rejected_by_reason"] == {
        reason: sum(1 for r in rejected if r["reason"] == reason) for reason in sorted(reasons)}


# ------------------------------------------------------------------ both APIs


async def test_completions_and_chat_end_to_end(tmp_path: Path) -> None:
    for api in ("completions", "chat"):
        out = tmp_path / api
        async with SimulatedServer(SimSettings(latency_ms=20, seed=3, duplicate_rate=0.2,
                                               bad_item_rate=0.1)) as sim:
            await finish(await spawn_generate(sim.base_url, out, 40, "--api", api))
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
