"""`selfinstruct serve` over real HTTP on loopback, against the in-process simulator:
jobs complete, /metrics parses, auth, limits, validation, cancel, secrets never leak,
SIGTERM mid-job then restart completes the job without loss."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.cli import main as cli_main
from service.config import Secret
from service.rundir.store import TASKS
from service.rundir.verify import verify_run
from service.serve.app import ServeSettings, Worker
from service.serve.jobs import StateDirLocked
from service.simulator import SimSettings, SimulatedServer
from tests.helpers import ServeProcess, jsonl

CANARY = "sk-CANARY-7f3a9c1e5b2d4f60"
TOKEN = "test-token-0123456789abcdef"


def _worker(tmp_path: Path, **overrides: Any) -> Worker:
    values: dict[str, Any] = {"port": 0, "state_dir": tmp_path / "state", "drain_timeout_s": 5.0,
                              "no_auth": "token" not in overrides}
    values.update(overrides)
    return Worker(ServeSettings(**values), env={})


async def _wait_status(session: aiohttp.ClientSession, url: str, statuses: set[str],
                       timeout: float = 30.0, headers: dict[str, str] | None = None
                       ) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            job: dict[str, Any] = await resp.json()
        if job["status"] in statuses:
            return job
        assert asyncio.get_running_loop().time() < deadline, f"stuck in {job['status']}"
        await asyncio.sleep(0.1)


async def _read_events(session: aiohttp.ClientSession, url: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    async with session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        name = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, orjson.loads(line[len("data: "):])))
    return events


async def test_job_completes_metrics_parse_and_the_key_never_leaks(
        tmp_path: Path, log_stream: io.StringIO) -> None:
    seen: list[str] = []
    async with SimulatedServer(SimSettings(latency_ms=20, seed=1, duplicate_rate=0.2,
                                           api_key=CANARY)) as sim, \
            _worker(tmp_path) as worker, aiohttp.ClientSession() as session:
        body = {"target": 20, "base_url": sim.base_url, "model": "sim", "seed": 3,
                "api_key": CANARY}
        async with session.post(f"{worker.url}/v1/jobs", json=body) as resp:
            text = await resp.text()
            seen.append(text)
            assert resp.status == 201, text
            job = orjson.loads(text)
            assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
        assert job["config"]["api_key"] == "***"
        assert "api_key" not in job["spec"]
        events_task = asyncio.create_task(
            _read_events(session, f"{worker.url}/v1/jobs/{job['id']}/events"))
        final = await _wait_status(session, f"{worker.url}/v1/jobs/{job['id']}",
                                   {"finished", "failed"})
        assert final["status"] == "finished", final["error"]
        assert final["tasks_written"] == 20
        assert final["usage"]["tokens"]["total"] > 0
        seen.append(orjson.dumps(final).decode())
        events = await asyncio.wait_for(events_task, 10)
        seen.append(orjson.dumps(events).decode())
        assert events[-1][0] == "end" and events[-1][1]["status"] == "finished"
        assert any(name == "progress" for name, _ in events)

        async with session.get(f"{worker.url}/v1/jobs") as resp:
            listing = await resp.json()
            seen.append(orjson.dumps(listing).decode())
        assert [j["id"] for j in listing["jobs"]] == [job["id"]]

        async with session.get(f"{worker.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            metrics_text = await resp.text()
            seen.append(metrics_text)
        families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
        for name in ("selfinstruct_llm_requests", "selfinstruct_tokens", "selfinstruct_cost_usd",
                     "selfinstruct_llm_in_flight", "selfinstruct_queue_depth",
                     "selfinstruct_instructions_admitted", "selfinstruct_rejections",
                     "selfinstruct_dedup_admit_seconds", "selfinstruct_rate_limiter_wait_seconds",
                     "selfinstruct_http_requests", "selfinstruct_jobs",
                     "selfinstruct_tasks_written"):
            assert name in families, name

        def value(family: str, sample: str, **labels: str) -> float:
            for s in families[family].samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
            raise AssertionError(f"{sample} {labels} missing")

        assert value("selfinstruct_tokens", "selfinstruct_tokens_total", kind="prompt") > 0
        # cached prompt tokens are a kind of their own (0 here: short prompts)
        assert value("selfinstruct_tokens", "selfinstruct_tokens_total", kind="cached") >= 0
        assert value("selfinstruct_llm_requests", "selfinstruct_llm_requests_total",
                     status="200") > 0
        assert value("selfinstruct_tasks_written", "selfinstruct_tasks_written_total") == 20
        assert value("selfinstruct_jobs", "selfinstruct_jobs", status="finished") == 1
        assert value("selfinstruct_dedup_admit_seconds",
                     "selfinstruct_dedup_admit_seconds_count") > 0
        assert value("selfinstruct_rate_limiter_wait_seconds",
                     "selfinstruct_rate_limiter_wait_seconds_count") > 0
        assert value("selfinstruct_http_requests", "selfinstruct_http_requests_total",
                     method="POST", route="/v1/jobs", status="201") == 1

        async with session.get(f"{worker.url}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"

    run_dir = tmp_path / "state" / "jobs" / job["id"] / "run"
    tasks = jsonl(run_dir / TASKS)
    assert len(tasks) == 20
    assert len({t["id"] for t in tasks}) == 20
    report = verify_run(run_dir)
    assert report.ok, report.summary()
    stored = orjson.loads((tmp_path / "state" / "jobs" / job["id"] / "job.json").read_bytes())
    assert stored["status"] == "finished"
    # The canary key: in no response, no log line, no file under the state directory.
    logs = log_stream.getvalue()
    assert '"event":"job_ended"' in logs
    for text in [*seen, logs]:
        assert CANARY not in text
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


async def test_auth_limits_and_validation(tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with _worker(tmp_path, token=Secret(TOKEN)) as worker, \
            aiohttp.ClientSession() as session:
        url = worker.url
        async with session.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        for path in ("/v1/jobs", "/metrics"):
            async with session.get(f"{url}{path}") as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with session.get(f"{url}{path}",
                                   headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with session.get(f"{url}{path}", headers=auth) as resp:
                assert resp.status == 200
        async with session.post(f"{url}/v1/jobs", json={"target": 5}) as resp:
            assert resp.status == 401

        async def post(data: bytes) -> tuple[int, str]:
            async with session.post(f"{url}/v1/jobs", data=data,
                                    headers={**auth, "Content-Type": "application/json"}) as r:
                return r.status, (await r.json())["error"]

        status, error = await post(b'{"target": 5, "model": "' + b"x" * 70_000 + b'"}')
        assert status == 413 and "too large" in error
        status, error = await post(b'{"target": 5,')
        assert status == 400 and "not valid JSON" in error
        status, error = await post(b"[1, 2]")
        assert status == 400 and "JSON object" in error
        status, error = await post(b'{"target": -3}')
        assert status == 400 and "'target'" in error
        status, error = await post(b'{"threshold": "high"}')
        assert status == 400 and "'threshold'" in error
        status, error = await post(b'{"target": 5, "bogus_option": 1}')
        assert status == 400 and "'bogus_option'" in error and "unknown key" in error
        status, error = await post(b'{"target": 5, "out": "/tmp/elsewhere"}')
        assert status == 400 and "'out'" in error
        status, error = await post(b'{"target": 5, "api_key": 42}')
        assert status == 400 and "'api_key'" in error

        unknown = "job-20260101T000000Z-0123456789"
        async with session.get(f"{url}/v1/jobs/{unknown}", headers=auth) as resp:
            assert resp.status == 404
        async with session.delete(f"{url}/v1/jobs/{unknown}", headers=auth) as resp:
            assert resp.status == 404
        for bad in ("not-a-job", "job-..", "..%2F..%2Fetc%2Fpasswd", "%2E%2E"):
            async with session.get(f"{url}/v1/jobs/{bad}", headers=auth) as resp:
                assert resp.status in (400, 404), bad
                assert "error" in await resp.json()
        async with session.get(f"{url}/v1/jobs/../../etc/passwd", headers=auth) as resp:
            assert resp.status in (400, 404)
        async with session.put(f"{url}/v1/jobs", headers=auth) as resp:
            assert resp.status == 405
        # Nothing was created by the rejected requests.
        assert list((tmp_path / "state" / "jobs").iterdir()) == []


async def test_cancel_running_and_queued_jobs(tmp_path: Path) -> None:
    async with SimulatedServer(SimSettings(latency_ms=150, seed=2)) as sim, \
            _worker(tmp_path, max_jobs=1) as worker, aiohttp.ClientSession() as session:
        # a target no run reaches before its cancel takes effect (5 s grace)
        body = {"target": 100_000, "base_url": sim.base_url, "model": "sim"}
        ids = []
        for _ in range(2):
            async with session.post(f"{worker.url}/v1/jobs", json=body) as resp:
                assert resp.status == 201
                ids.append((await resp.json())["id"])
        first, second = (f"{worker.url}/v1/jobs/{i}" for i in ids)
        await _wait_status(session, first, {"running"})
        async with session.get(second) as resp:
            assert (await resp.json())["status"] == "queued"  # --max-jobs 1
        async with session.delete(second) as resp:
            assert resp.status == 202
        await _wait_status(session, second, {"cancelled"}, timeout=5)

        run_tasks = tmp_path / "state" / "jobs" / ids[0] / "run" / TASKS
        while not jsonl(run_tasks):
            await asyncio.sleep(0.05)
        async with session.delete(first) as resp:
            assert resp.status == 202
            assert (await resp.json())["cancel_requested"] is True
        job = await _wait_status(session, first, {"cancelled"}, timeout=20)
        assert 0 < job["tasks_written"] < 100_000
        async with session.delete(first) as resp:
            assert resp.status == 409
    for job_id in ids:
        stored = orjson.loads((tmp_path / "state" / "jobs" / job_id / "job.json").read_bytes())
        assert stored["status"] == "cancelled"
    assert verify_run(tmp_path / "state" / "jobs" / ids[0] / "run").ok


async def test_draining_refuses_jobs_then_a_new_worker_resumes(tmp_path: Path) -> None:
    # in-flight calls take ~1 s: the drain lasts long enough to be seen from outside
    async with SimulatedServer(SimSettings(latency_ms=1000, seed=6)) as sim, \
            aiohttp.ClientSession() as session:
        body = {"target": 2000, "base_url": sim.base_url, "model": "sim", "max_in_flight": 4}
        worker = _worker(tmp_path, drain_timeout_s=1.5)
        await worker.start()
        async with session.post(f"{worker.url}/v1/jobs", json=body) as resp:
            job_id = (await resp.json())["id"]
        job_url = f"{worker.url}/v1/jobs/{job_id}"
        await _wait_status(session, job_url, {"running"})
        stopping = asyncio.create_task(worker.stop())
        await asyncio.sleep(0.2)
        async with session.get(f"{worker.url}/healthz") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "draining"
        async with session.post(f"{worker.url}/v1/jobs", json=body) as resp:
            assert resp.status == 503
        await asyncio.wait_for(stopping, 10)
        job_json = tmp_path / "state" / "jobs" / job_id / "job.json"
        assert orjson.loads(job_json.read_bytes())["status"] == "interrupted"

        async with _worker(tmp_path) as again:
            job = await _wait_status(session, f"{again.url}/v1/jobs/{job_id}", {"running"})
            assert job["starts"] == 2
            async with session.delete(f"{again.url}/v1/jobs/{job_id}") as resp:
                assert resp.status == 202
            await _wait_status(session, f"{again.url}/v1/jobs/{job_id}", {"cancelled"})
        assert orjson.loads(job_json.read_bytes())["status"] == "cancelled"


async def test_sigterm_mid_job_then_restart_completes_without_loss(tmp_path: Path) -> None:
    state = tmp_path / "state"
    target = 100
    async with SimulatedServer(SimSettings(latency_ms=50, seed=5)) as sim, \
            aiohttp.ClientSession() as session:
        server = ServeProcess(state)
        url = await server.start("--no-auth")
        body = {"target": target, "base_url": sim.base_url, "model": "sim", "max_in_flight": 2}
        async with session.post(f"{url}/v1/jobs", json=body) as resp:
            assert resp.status == 201, await resp.text()
            job_id = (await resp.json())["id"]
        run_dir = state / "jobs" / job_id / "run"
        deadline = asyncio.get_running_loop().time() + 30
        while len(jsonl(run_dir / TASKS)) < 5:
            assert asyncio.get_running_loop().time() < deadline, "".join(server.raw)
            await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        code = await server.stop(timeout=20)
        assert code == 0, "".join(server.raw)
        assert asyncio.get_running_loop().time() - started < 5  # --drain-timeout 2
        stored = orjson.loads((state / "jobs" / job_id / "job.json").read_bytes())
        assert stored["status"] == "interrupted", "".join(server.raw)
        written_before = jsonl(run_dir / TASKS)
        assert 5 <= len(written_before) < target, len(written_before)
        events = [r["event"] for r in server.logs]
        assert "draining" in events and "stopped" in events
        assert all(isinstance(r.get("ts"), str) and "level" in r for r in server.logs)

        server = ServeProcess(state)
        url = await server.start("--no-auth")
        job = await _wait_status(session, f"{url}/v1/jobs/{job_id}", {"finished", "failed"},
                                 timeout=40)
        assert job["status"] == "finished", job["error"]
        assert job["starts"] == 2
        assert await server.stop(timeout=20) == 0
        assert "job_resumed" in [r["event"] for r in server.logs]
    tasks = jsonl(run_dir / TASKS)
    assert len(tasks) == target
    assert tasks[: len(written_before)] == written_before
    assert len({t["id"] for t in tasks}) == target
    assert len({t["instruction"] for t in tasks}) == target
    report = verify_run(run_dir)
    assert report.ok, report.summary()


def test_cli_refuses_remote_bind_without_flag_and_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SELFINSTRUCT_SERVE_TOKEN", raising=False)
    state = str(tmp_path / "s")
    assert cli_main(["serve", "--host", "0.0.0.0", "--state-dir", state]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert cli_main(["serve", "--host", "0.0.0.0", "--allow-remote", "--state-dir", state]) == 2
    assert "token" in capsys.readouterr().err
    assert cli_main(["serve", "--token-env", "BAD NAME", "--state-dir", state]) == 2
    assert not (tmp_path / "s").exists()


async def test_second_worker_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    async with _worker(tmp_path):
        with pytest.raises(StateDirLocked, match="in use by another worker"):
            async with _worker(tmp_path):
                pass


@pytest.mark.redis
async def test_two_workers_on_redis_share_one_run(tmp_path: Path, redis_url: str) -> None:
    """`serve --redis URL --allow-run-id shared`: the same shared run_id submitted to two
    workers is one distributed run: the target is met once, globally, and the gathered
    run verifies."""
    from service.generate.distributed import gather_run

    env = {"SELFINSTRUCT_REDIS": redis_url}  # what `serve --redis URL` puts under each job
    async with SimulatedServer(SimSettings(latency_ms=20, seed=2)) as sim, \
            Worker(ServeSettings(port=0, state_dir=tmp_path / "a", no_auth=True,
                                 allow_run_ids=("shared",)), env=env) as first, \
            Worker(ServeSettings(port=0, state_dir=tmp_path / "b", no_auth=True,
                                 allow_run_ids=("shared",)), env=env) as second, \
            aiohttp.ClientSession() as session:
        body = {"target": 40, "base_url": sim.base_url, "model": "sim", "run_id": "shared"}
        urls = []
        for worker in (first, second):
            async with session.post(f"{worker.url}/v1/jobs", json=body) as resp:
                assert resp.status == 201, await resp.text()
                urls.append(f"{worker.url}/v1/jobs/{(await resp.json())['id']}")
        finals = [await _wait_status(session, url, {"finished", "failed"}, timeout=60)
                  for url in urls]
    assert [f["status"] for f in finals] == ["finished", "finished"]
    written = [len(jsonl(p)) for p in tmp_path.glob("*/jobs/*/run/tasks.jsonl")]
    assert sum(written) == 40
    out = tmp_path / "gathered"
    assert (await asyncio.to_thread(gather_run, redis_url, "shared", out))["tasks"] == 40
    assert verify_run(out).ok
