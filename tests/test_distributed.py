"""Distributed runs against a real redis-server and the simulated endpoint: several
processes, one target, one admission order, one rate budget; kill -9 and reclaim."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path

import orjson
import pytest
import redis
from rouge_score import rouge_scorer

from service.config import load_config
from service.generate.distributed import Keys, RedisCoordinator, gather_run
from service.rundir.verify import verify_run
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import PYTHON, ROOT

pytestmark = pytest.mark.redis
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _jsonl(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


async def _worker(base_url: str, url: str, run_id: str, out: Path, target: int,
                  *extra: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    return await asyncio.create_subprocess_exec(
        PYTHON, "-m", "service", "generate", "--out", str(out), "--target", str(target),
        "--base-url", base_url, "--model", "sim", "--quiet", "--show", "0",
        "--redis", url, "--run-id", run_id, *extra,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


def _check_gathered(url: str, run_id: str, out: Path, target: int) -> list[dict[str, object]]:
    counts = gather_run(url, run_id, out)
    tasks = _jsonl(out / "tasks.jsonl")
    assert counts["tasks"] == target == len(tasks)
    assert len({t["id"] for t in tasks}) == target
    assert len({t["instruction"] for t in tasks}) == target
    report = verify_run(out)
    assert report.ok, report.summary() + "\n" + "\n".join(p.describe() for p in report.problems)
    return tasks


async def test_three_workers_share_target_rate_and_admission_order(
    redis_url: str, tmp_path: Path
) -> None:
    target = 300
    async with SimulatedServer(SimSettings(rpm=6000, latency_ms=60, seed=5,
                                           duplicate_rate=0.2)) as sim:
        workers = [await _worker(sim.base_url, redis_url, "three", tmp_path / f"w{i}",
                                 target, "--rpm", "6000") for i in range(3)]
        results = await asyncio.wait_for(
            asyncio.gather(*(w.communicate() for w in workers)), 120)
        stats = sim.stats()
    for worker, (_, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr.decode()
    tasks = _check_gathered(redis_url, "three", tmp_path / "gathered", target)
    # Work really was shared: more than one process wrote tasks.
    writers = [len(_jsonl(tmp_path / f"w{i}" / "tasks.jsonl")) for i in range(3)]
    assert sum(writers) == len(tasks)
    assert sum(1 for n in writers if n) >= 2
    # One rate budget: the endpoint's limit was (almost) never hit.
    limited = sum(stats["rate_limited"].values()) if stats["rate_limited"] else 0
    assert limited <= 0.005 * stats["requests"] + 1


async def test_kill_9_one_worker_others_finish_nothing_lost(redis_url: str,
                                                            tmp_path: Path) -> None:
    target = 150
    async with SimulatedServer(SimSettings(latency_ms=150, seed=6)) as sim:
        lease = ("--lease-seconds", "2")
        victim = await _worker(sim.base_url, redis_url, "kill", tmp_path / "victim", target,
                               *lease)
        deadline = asyncio.get_running_loop().time() + 60
        keys = Keys("kill")
        client = redis.Redis.from_url(redis_url)
        while int(client.get(keys.written) or 0) < 10:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        victim.kill()
        await victim.wait()
        survivors = [await _worker(sim.base_url, redis_url, "kill", tmp_path / f"w{i}",
                                   target, *lease) for i in range(2)]
        results = await asyncio.wait_for(
            asyncio.gather(*(w.communicate() for w in survivors)), 120)
    for worker, (_, stderr) in zip(survivors, results, strict=True):
        assert worker.returncode == 0, stderr.decode()
    _check_gathered(redis_url, "kill", tmp_path / "gathered", target)
    # Exactly the target was committed once each; the victim's leased work was taken over.
    outcomes = [v.decode() for v in client.hvals(keys.done)]
    assert outcomes.count("written") == target
    survivors_wrote = sum(len(_jsonl(tmp_path / f"w{i}" / "tasks.jsonl")) for i in range(2))
    victim_wrote = len(_jsonl(tmp_path / "victim" / "tasks.jsonl"))
    # Never more than the target on disk; the victim may have died between committing a
    # task to Redis and appending it locally (the gathered run above has it).
    assert target - 5 <= victim_wrote + survivors_wrote <= target
    client.close()


def test_concurrent_admitters_keep_one_order(redis_url: str) -> None:
    """Four replicas admitting at once (threads, real Redis): appends conflict and are
    re-decided, and the resulting order has no pair above the threshold."""
    config, _ = load_config({"redis": redis_url, "run_id": "order"}, env={})
    async def join() -> None:
        joined = RedisCoordinator(redis_url, "order")
        await joined.join(config, [])
        await joined.aclose()

    asyncio.run(join())
    coordinator = RedisCoordinator(redis_url, "order")  # its admitters use sync clients
    rng = random.Random(1)
    words = ["write", "poem", "about", "the", "sea", "list", "three", "tips", "for", "sleep",
             "explain", "why", "sky", "is", "blue", "give", "a", "recipe", "with", "eggs"]
    corpus = [" ".join(rng.choices(words, k=rng.randint(4, 9))) for _ in range(400)]
    rejected: list[str] = []
    lock = threading.Lock()

    def run(part: list[str]) -> None:
        admit = coordinator.make_admit(config, [])
        for start in range(0, len(part), 5):
            batch = part[start:start + 5]
            for text, decision in zip(batch, admit(batch), strict=True):
                if not decision.admitted:
                    with lock:
                        rejected.append(text)

    threads = [threading.Thread(target=run, args=(corpus[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = redis.Redis.from_url(redis_url)
    stream = [f[b"text"].decode() for _, f in client.xrange(Keys("order").admissions)]
    client.close()
    assert len(stream) + len(rejected) == len(corpus)
    for j in range(len(stream)):
        for i in range(j):
            assert SCORER.score(stream[i], stream[j])["rougeL"].fmeasure <= 0.7
    for text in rejected:  # every rejection had a real near-duplicate admitted
        assert any(SCORER.score(text, s)["rougeL"].fmeasure > 0.7 for s in stream)
    assert coordinator.conflicts > 0  # the optimistic path was exercised


async def test_mismatched_settings_are_refused(redis_url: str) -> None:
    first, _ = load_config({"redis": redis_url, "run_id": "cfg"}, env={})
    other, _ = load_config({"redis": redis_url, "run_id": "cfg", "threshold": 0.6}, env={})
    a, b = RedisCoordinator(redis_url, "cfg"), RedisCoordinator(redis_url, "cfg")
    await a.join(first, [])
    with pytest.raises(Exception, match="threshold"):
        await b.join(other, [])
    await a.aclose()
    await b.aclose()


async def test_export_gathers_a_distributed_run(redis_url: str, tmp_path: Path) -> None:
    from service.cli import main

    async with SimulatedServer(SimSettings(latency_ms=10, seed=8)) as sim:
        workers = [await _worker(sim.base_url, redis_url, "gather", tmp_path / f"w{i}", 30)
                   for i in range(2)]
        for worker in workers:
            _, stderr = await asyncio.wait_for(worker.communicate(), 120)
            assert worker.returncode == 0, stderr.decode()
    out = tmp_path / "gathered"
    code = await asyncio.to_thread(main, ["export", "--run", str(out), "--redis", redis_url,
                                          "--run-id", "gather", "--format", "alpaca"])
    assert code == 0
    assert len(_jsonl(out / "tasks.jsonl")) == 30
    assert len(_jsonl(out / "export" / "alpaca.jsonl")) >= 30
    assert verify_run(out).ok
    assert await asyncio.to_thread(main, ["export", "--run", str(out), "--redis", redis_url,
                                          "--run-id", "../etc"]) == 2


async def test_a_worker_fails_cleanly_when_redis_goes_away(tmp_path: Path) -> None:
    """Redis stops mid-run: the worker must end with an error, not hang for ever."""
    import shutil
    import socket
    import subprocess

    binary = shutil.which("redis-server")
    assert binary is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                await asyncio.sleep(0.05)
        async with SimulatedServer(SimSettings(latency_ms=100, seed=9)) as sim:
            worker = await _worker(sim.base_url, url, "gone", tmp_path / "w", 100_000)
            deadline = asyncio.get_running_loop().time() + 60
            while int(client.get(Keys("gone").written) or 0) < 5:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            server.kill()
            server.wait()
            _, stderr = await asyncio.wait_for(worker.communicate(), 120)
        assert worker.returncode != 0
        assert b"error:" in stderr and b"connect" in stderr.lower()  # named, not a traceback
    finally:
        if server.poll() is None:
            server.kill()
