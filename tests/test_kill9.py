"""kill -9 at every kind of moment, then resume: one suite, three scenarios.

Each scenario kills ``selfinstruct generate`` (a real child process against the real
simulated server) again and again, checking after every kill what a crash may leave
(torn last lines only, repaired on the next open; seeds whole or absent; no temporary
files; nothing complete lost or rewritten), then resumes to a target and checks that
it is reached exactly, with nothing lost or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.rundir.seeds import default_seed_path, load_seed_tasks
from service.rundir.store import INSTRUCTIONS, JSONL_FILES, RUN_JSON, SEEDS, TASKS, RunDir
from service.rundir.verify import PARSE, verify_run
from service.simulator import SimSettings, SimulatedServer
from tests.helpers import check_admission_log, finish, jsonl, spawn_generate

# A child whose record writes reach the file in two halves, a few milliseconds apart: a
# kill -9 can then land in the middle of a record, as it can on a real machine when a
# write is split (signals, a full disk, a network file system).
TORN_CHILD = """
import os, sys, time
import service.rundir.store as store

class SplitWrites:
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        view = memoryview(data)
        if len(view) < 2:
            return os.write(fd, view)
        written = os.write(fd, view[: len(view) // 2])
        time.sleep(0.004)
        return written

store.os = SplitWrites()
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass(frozen=True)
class Scenario:
    plan: tuple[str, ...]  # the kind of each kill, in order (see kill_at)
    sim: SimSettings
    flags: tuple[str, ...]
    target: int  # the killed runs' target (never reached)
    final_extra: int  # the last run's target: what exists plus this many
    min_torn: int = 0  # kills that must have left a torn record


TWENTY = ("mid-seeds", "early", "random", "mid-write", "random",
          *(["mid-write", "early", "random", "mid-write", "random"] * 3))
SCENARIOS = {
    # One kill once 20 tasks are written, on a slow endpoint; resume past it.
    "once": Scenario(("after-tasks",), SimSettings(latency_ms=150, seed=3), (), 400, 40),
    # Five kills: during start-up, then after a random number of new tasks (plus a
    # random fraction of a second, so some land mid-record), with bad answers mixed in.
    "five": Scenario(("early", *["after-tasks"] * 4),
                     SimSettings(latency_ms=200, jitter=0.5, seed=8, duplicate_rate=0.2,
                                 bad_item_rate=0.1),
                     ("--max-in-flight", "32"), 800, 60),
    # Twenty kills, eight of them timed to land inside a record split in two writes
    # (the first inside the recording of the seed tasks).
    "twenty": Scenario(TWENTY, SimSettings(latency_ms=30, seed=9, duplicate_rate=0.2,
                                           bad_item_rate=0.1),
                       ("--max-in-flight", "16", "--request-timeout", "3"), 5000, 25,
                       min_torn=4),
}


def sizes(out: Path) -> dict[str, int]:
    return {name: (out / name).stat().st_size if (out / name).exists() else 0
            for name in JSONL_FILES}


def torn_files(out: Path) -> list[str]:
    torn = []
    for name in JSONL_FILES:
        try:
            with (out / name).open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    torn.append(name)
        except OSError:
            continue
    return torn


async def kill_at(process: asyncio.subprocess.Process, out: Path, how: str,
                  rng: random.Random) -> None:
    """SIGKILL the child at a moment of kind ``how``:

    * "early": a random moment of its first 1.2 s (start-up);
    * "random": once it has written new records, then up to 0.6 s more;
    * "after-tasks": once 1-60 new tasks are written (20 for the first kill), then up to
      0.3 s more;
    * "mid-write": the moment a record is half written (a random moment after 20 s);
    * "mid-seeds": half-way through recording the seed tasks if they are written
      record by record, else as soon as the run has admitted something.
    """
    loop = asyncio.get_running_loop()
    if how == "early":
        await asyncio.sleep(rng.uniform(0.0, 1.2))
    elif how == "random":
        start = sizes(out)
        deadline = loop.time() + 30
        while sizes(out) == start and loop.time() < deadline and process.returncode is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(0.0, 0.6))
    elif how == "after-tasks":
        before = len(jsonl(out / TASKS, complete_only=True))
        wanted = before + (rng.randint(1, 60) if before else 20)
        deadline = time.monotonic() + 60
        while len(jsonl(out / TASKS, complete_only=True)) < wanted:
            assert time.monotonic() < deadline, "no progress"
            assert process.returncode is None, "the run ended before its kill"
            await asyncio.sleep(0.02)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
    elif how == "mid-seeds":
        deadline = loop.time() + 20
        while loop.time() < deadline and process.returncode is None:
            with contextlib.suppress(FileNotFoundError):
                if (out / SEEDS).read_bytes().count(b"\n") >= 20 and SEEDS in torn_files(out):
                    break
            if (out / INSTRUCTIONS).exists():
                break
            await asyncio.sleep(0.0005)
    else:
        assert how == "mid-write", how
        start = sizes(out)
        deadline = loop.time() + 20
        while loop.time() < deadline and process.returncode is None:
            if sizes(out) != start and torn_files(out):
                break
            await asyncio.sleep(0.0005)
    assert process.returncode is None, f"the run ended before its {how} kill"
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL)
    await process.wait()


def check_after_kill(out: Path, scratch: Path, how: str, n_seeds: int
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """What a kill may leave, checked on a repaired copy (so the next run still finds
    the torn tails and repairs them itself). None when the kill came before any work."""
    torn = torn_files(out)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(out, scratch)
    with RunDir.open(scratch) as repaired:
        assert sorted(r.file for r in repaired.repairs) == sorted(torn)
    assert not list(scratch.glob("*.tmp")) and not list(scratch.glob(".*.tmp")), \
        "a crashed atomic write's temporary file was left behind"
    # The seed tasks are recorded whole or not at all: a resume must never go on from a
    # part of them.
    assert len(jsonl(scratch / SEEDS)) in (0, n_seeds), \
        f"after a {how} kill: {len(jsonl(scratch / SEEDS))} of {n_seeds} seed tasks recorded"
    if not any((out / name).exists() for name in (TASKS, INSTRUCTIONS, RUN_JSON)):
        return None
    # The only damage a kill may leave: torn last lines; once repaired, it verifies.
    for problem in verify_run(out).problems:
        assert problem.check == PARSE and "incomplete last line" in problem.message, \
            problem.describe()
        assert problem.file in torn
    report = verify_run(scratch)
    assert report.ok, f"after a {how} kill: {report.summary()}"
    return check_admission_log(scratch)


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_kill_9_then_resume_loses_and_duplicates_nothing(name: str,
                                                               tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    out = tmp_path / "run"
    rng = random.Random(f"kill-9-{name}")
    n_seeds = len(load_seed_tasks(default_seed_path()))
    kinds: Counter[str] = Counter()
    torn_seen = 0
    before_admitted: list[dict[str, Any]] = []
    before_tasks: list[dict[str, Any]] = []
    async with SimulatedServer(scenario.sim) as sim:
        for how in scenario.plan:
            entry = ("-c", TORN_CHILD) if how.startswith("mid-") else ("-m", "service")
            process = await spawn_generate(sim.base_url, out, scenario.target, *scenario.flags,
                                           entry=entry, stdout=asyncio.subprocess.DEVNULL)
            await kill_at(process, out, how, rng)
            assert process.returncode == -signal.SIGKILL, process.returncode
            kinds[how] += 1
            if not out.exists():
                continue  # killed before it created the run directory
            torn_seen += bool(torn_files(out))
            logs = check_after_kill(out, tmp_path / "copy", how, n_seeds)
            if logs is None:
                continue  # killed while starting, before any work
            admitted, tasks = logs
            # Nothing complete before an earlier kill was lost or rewritten.
            assert admitted[: len(before_admitted)] == before_admitted
            assert tasks[: len(before_tasks)] == before_tasks
            before_admitted, before_tasks = admitted, tasks
        assert sum(kinds.values()) == len(scenario.plan)
        assert torn_seen >= scenario.min_torn, f"only {torn_seen} kills left a torn record"
        assert len(before_tasks) < scenario.target, "the kills came too late to test anything"
        # What a kill inside an atomic write leaves (rare to hit by chance): cleaned up.
        (out / f".{RUN_JSON}.4242.tmp").write_bytes(b'{"status": "runn')
        final_target = len(before_tasks) + scenario.final_extra
        await finish(await spawn_generate(sim.base_url, out, final_target, *scenario.flags))
    report = verify_run(out)
    assert report.ok, report.summary()
    assert not list(out.glob(".*.tmp"))
    admitted, tasks = check_admission_log(out)
    assert len(tasks) == final_target
    assert admitted[: len(before_admitted)] == before_admitted
    assert tasks[: len(before_tasks)] == before_tasks
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["status"] == "finished"
    assert run["counters"]["tasks_written"] == final_target
    assert len(jsonl(out / SEEDS)) == n_seeds
