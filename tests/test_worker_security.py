"""The job API cannot be turned against its host (issue 12): over real HTTP on loopback,
against a real `selfinstruct serve` worker, the simulator, recorder servers and a real
redis-server.

Each test names the item it proves: the worker's key goes only where the operator allowed
(1), cross-site requests and DNS rebinding are refused and a token is required by default
(2), every limit holds (3), job errors do not map the network (4), no job joins another's
distributed run (6), URL passwords are masked everywhere (11), links in the state
directory are refused (12)."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from service.cli import main as cli_main
from service.config import Config, Secret, load_config
from service.errors import (
    ClientRequestError,
    ConfigError,
    ConnectionFailed,
    RequestTimeout,
    RunDirError,
    ServerError,
)
from service.serve.app import ServeSettings, Worker
from service.serve.logs import log_event
from service.serve.policy import job_error
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import start_redis_server

CANARY = "sk-WORKER-CANARY-5d1e0c7a"  # the worker's own OPENAI_API_KEY
JOB_KEY = "sk-JOB-OWN-KEY-9b2f44e1"
PASSWORD = "REDIS-PW-3c9a7f"


# ------------------------------------------------------------------------------ helpers
class Recorder:
    """An HTTP server that records every request and answers with a fixed status/body."""

    def __init__(self, status: int = 401, body: str = '{"error": {"message": "no"}}') -> None:
        self.status = status
        self.body = body
        self.seen: list[dict[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append({"path": request.path,
                          "authorization": request.headers.get("Authorization", "")})
        return web.Response(status=self.status, text=self.body,
                            content_type="application/json")


@asynccontextmanager
async def recorder(status: int = 401, body: str = '{"error": {"message": "no"}}'
                   ) -> AsyncIterator[Recorder]:
    rec = Recorder(status, body)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield rec
    finally:
        await runner.cleanup()


def _worker(state: Path, env: dict[str, str] | None = None, **overrides: Any) -> Worker:
    values: dict[str, Any] = {"port": 0, "state_dir": state, "drain_timeout_s": 3.0,
                              "no_auth": "token" not in overrides}
    values.update(overrides)
    return Worker(ServeSettings(**values), env=env or {})


async def _post(http: aiohttp.ClientSession, url: str, body: Any,
                **headers: str) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body, headers=headers or None) as resp:
        return resp.status, await resp.json()


async def _wait(http: aiohttp.ClientSession, url: str, statuses: set[str],
                timeout: float = 60.0, **headers: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url, headers=headers or None) as resp:
            assert resp.status == 200, await resp.text()
            job: dict[str, Any] = await resp.json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"stuck in {job['status']}: {job}"
        await asyncio.sleep(0.05)


def _files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace")
                     for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# ------------------------------------------------------------------------ 1. the key
async def test_the_workers_key_goes_only_to_allowed_endpoints(tmp_path: Path) -> None:
    async with SimulatedServer(SimSettings(latency_ms=5, seed=1, api_key=CANARY)) as sim, \
            recorder() as rec, aiohttp.ClientSession() as http:
        env = {"OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": sim.base_url}
        async with _worker(tmp_path / "a", env) as worker:
            jobs = f"{worker.url}/v1/jobs"
            # Another endpoint, no key of its own: refused before anything is sent.
            status, answer = await _post(http, jobs, {"target": 3, "base_url": rec.url,
                                                      "model": "m"})
            assert status == 400, answer
            assert "'base_url'" in answer["error"] and "--allow-endpoint" in answer["error"]
            assert "api_key" in answer["error"]
            # The job's own key goes there, never the worker's.
            status, answer = await _post(http, jobs, {"target": 3, "base_url": rec.url,
                                                      "model": "m", "api_key": JOB_KEY})
            assert status == 201, answer
            failed = await _wait(http, f"{jobs}/{answer['id']}", {"failed"})
            assert "HTTP 401" in failed["error"]
            assert rec.seen and {r["authorization"] for r in rec.seen} == {f"Bearer {JOB_KEY}"}
            # No base_url: the worker's own endpoint, with the worker's key.
            status, answer = await _post(http, jobs, {"target": 3, "model": "sim", "seed": 2})
            assert status == 201, answer
            done = await _wait(http, f"{jobs}/{answer['id']}", {"finished", "failed"})
            assert done["status"] == "finished", done["error"]
            # The same endpoint, spelled with a trailing '/', is still the allowed one.
            same = sim.base_url + "/"
            status, answer = await _post(http, jobs, {"target": 2, "base_url": same,
                                                      "model": "sim", "seed": 3})
            assert status == 201, answer
            await _wait(http, f"{jobs}/{answer['id']}", {"finished"})
            # Jobs never choose Redis.
            status, answer = await _post(http, jobs, {"target": 2,
                                                      "redis": "redis://127.0.0.1:1/0"})
            assert status == 400 and "'redis'" in answer["error"]
        assert all(CANARY not in r["authorization"] for r in rec.seen)
        before = len(rec.seen)
        # The operator allows the recorder: now (and only now) the worker's key goes there.
        async with _worker(tmp_path / "b", env, allow_endpoints=(rec.url,)) as worker:
            jobs = f"{worker.url}/v1/jobs"
            status, answer = await _post(http, jobs, {"target": 3, "base_url": rec.url,
                                                      "model": "m"})
            assert status == 201, answer
            await _wait(http, f"{jobs}/{answer['id']}", {"failed"})
            status, answer = await _post(http, jobs, {"target": 3, "base_url": sim.base_url,
                                                      "model": "sim"})
            assert status == 400, "the worker's own URL is allowed only by default"
        assert {r["authorization"] for r in rec.seen[before:]} == {f"Bearer {CANARY}"}
        # --restrict-endpoints: no other endpoint at all, even with the job's own key.
        before = len(rec.seen)
        async with _worker(tmp_path / "c", env, restrict_endpoints=True) as worker:
            status, answer = await _post(http, f"{worker.url}/v1/jobs", {
                "target": 3, "base_url": rec.url, "model": "m", "api_key": JOB_KEY})
            assert status == 400 and "calls only the endpoints" in answer["error"]
        assert len(rec.seen) == before


async def test_a_resumed_job_whose_key_is_gone_waits_in_needs_key(tmp_path: Path) -> None:
    """Submitted with its own key; the worker restarts (the key was in memory only). The
    worker's own key is allowed for that endpoint, yet the job must not borrow it."""
    state = tmp_path / "state"
    async with SimulatedServer(SimSettings(latency_ms=200, seed=3, api_key=JOB_KEY)) as sim, \
            aiohttp.ClientSession() as http:
        env = {"OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": sim.base_url}
        worker = _worker(state, env, drain_timeout_s=1.0)
        await worker.start()
        body = {"target": 500, "model": "sim", "api_key": JOB_KEY, "max_in_flight": 2}
        status, answer = await _post(http, f"{worker.url}/v1/jobs", body)
        assert status == 201, answer
        job_id = answer["id"]
        await _wait(http, f"{worker.url}/v1/jobs/{job_id}", {"running"})
        await worker.stop()
        requests_before = sim.stats()["requests"]

        async with _worker(state, env) as again:
            url = f"{again.url}/v1/jobs/{job_id}"
            job = await _wait(http, url, {"needs_key"}, timeout=5)
            assert "api_key" in job["error"] and "resume" in job["error"]
            async with http.get(f"{url}/events") as resp:  # the stream ends, not hangs
                assert "event: end" in await asyncio.wait_for(resp.text(), 10)
            await asyncio.sleep(0.5)
            assert sim.stats()["requests"] == requests_before  # nothing sent, no key borrowed
            async with http.post(f"{url}/resume", json={"api_key": 5}) as resp:
                assert resp.status == 400
            async with http.post(f"{url}/resume", json={"api_key": JOB_KEY}) as resp:
                assert resp.status == 202, await resp.text()
            job = await _wait(http, url, {"running"})
            assert job["starts"] == 2
            async with http.post(f"{url}/resume", json={"api_key": JOB_KEY}) as resp:
                assert resp.status == 409
            async with http.delete(url) as resp:
                assert resp.status == 202
            await _wait(http, url, {"cancelled"})
        assert sim.stats()["requests"] > requests_before
    assert CANARY not in _files_text(state) and JOB_KEY not in _files_text(state)


# ------------------------------------------------------------------ 2. cross-site, token
async def test_cross_site_requests_and_rebound_names_are_refused(tmp_path: Path) -> None:
    async with _worker(tmp_path / "s", allow_hosts=("worker.internal",)) as worker, \
            aiohttp.ClientSession() as http:
        jobs = f"{worker.url}/v1/jobs"
        port = worker.port
        good = b'{"target": 1, "base_url": "http://127.0.0.1:9/v1"}'
        for content_type in ("text/plain", "application/x-www-form-urlencoded",
                             "multipart/form-data; boundary=x"):
            async with http.post(jobs, data=good, headers={"Content-Type": content_type}) as r:
                assert r.status == 415, content_type
                assert "application/json" in (await r.json())["error"]
        async with http.post(jobs, data=good) as resp:  # no Content-Type at all
            assert resp.status == 415
        # DNS rebinding: a page's own name pointed at 127.0.0.1 arrives in Host.
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example",
                     "10.1.2.3", ""):
            async with http.get(jobs, headers={"Host": host}) as resp:
                assert resp.status == 400, host
                assert "Host" in (await resp.json())["error"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost",
                     f"worker.internal:{port}", f"[::1]:{port}"):
            async with http.get(jobs, headers={"Host": host}) as resp:
                assert resp.status == 200, host
        for origin in ("http://evil.example", "null", f"http://localhost:{port + 1}",
                       f"http://evil.example:{port}"):
            async with http.post(jobs, data=good, headers={
                    "Origin": origin, "Content-Type": "application/json"}) as resp:
                assert resp.status == 403, origin
        async with http.get(jobs, headers={"Origin": f"http://127.0.0.1:{port}"}) as resp:
            assert resp.status == 200  # same origin
    assert list((tmp_path / "s" / "jobs").iterdir()) == []


async def test_a_token_is_required_by_default(tmp_path: Path, log_stream: io.StringIO) -> None:
    state = tmp_path / "state"
    async with Worker(ServeSettings(port=0, state_dir=state), env={}) as worker, \
            aiohttp.ClientSession() as http:
        token_file = state / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        async with http.get(f"{worker.url}/v1/jobs") as resp:
            assert resp.status == 401
        async with http.get(f"{worker.url}/v1/jobs",
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
        async with http.get(f"{worker.url}/healthz") as resp:
            assert resp.status == 200
    async with Worker(ServeSettings(port=0, state_dir=state), env={}) as again, \
            aiohttp.ClientSession() as http, \
            http.get(f"{again.url}/metrics",
                     headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200  # a restart keeps the token
    logs = log_stream.getvalue()
    assert str(token_file) in logs and token not in logs  # where it is, never what
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        async with Worker(ServeSettings(port=0, state_dir=state), env={}):
            pass
    token_file.unlink()
    token_file.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunDirError, match="symbolic link"):
        async with Worker(ServeSettings(port=0, state_dir=state), env={}):
            pass
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(ConfigError, match="--no-auth"):
        ServeSettings(host="0.0.0.0", allow_remote=True, token=Secret("x" * 20),
                      no_auth=True).validate()


# ---------------------------------------------------------------------------- 3. limits
async def test_job_bodies_are_range_checked(tmp_path: Path) -> None:
    async with _worker(tmp_path / "s") as worker, aiohttp.ClientSession() as http:
        jobs = f"{worker.url}/v1/jobs"
        for body, key in (({"max_in_flight": 300_000}, "max_in_flight"),
                          ({"prompts_per_request": 10**8}, "prompts_per_request"),
                          ({"target": 10**9}, "target"),
                          ({"request_timeout": 1e9}, "request_timeout"),
                          ({"lease_seconds": 1e12}, "lease_seconds"),
                          ({"max_total_tokens": 10**15}, "max_total_tokens")):
            status, answer = await _post(http, jobs, {"base_url": "http://127.0.0.1:9/v1",
                                                      **body})
            assert status == 400, body
            assert f"'{key}' (from request body): expected" in answer["error"], answer
    assert list((tmp_path / "s" / "jobs").iterdir()) == []


async def test_queued_jobs_event_streams_and_kept_jobs_are_bounded(tmp_path: Path) -> None:
    state = tmp_path / "s"
    async with SimulatedServer(SimSettings(latency_ms=300, seed=4)) as sim, \
            _worker(state, max_jobs=1, max_queued_jobs=2, max_sse_streams=2,
                    max_kept_jobs=1) as worker, aiohttp.ClientSession() as http:
        jobs = f"{worker.url}/v1/jobs"
        slow = {"target": 100_000, "base_url": sim.base_url, "model": "sim", "max_in_flight": 1}
        ids = []
        for _ in range(3):  # one runs, two wait
            status, answer = await _post(http, jobs, slow)
            assert status == 201, answer
            ids.append(answer["id"])
        status, answer = await _post(http, jobs, slow)
        assert status == 429 and "--max-queued" in answer["error"]

        streams = [await http.get(f"{jobs}/{ids[0]}/events") for _ in range(2)]
        assert [s.status for s in streams] == [200, 200]
        async with http.get(f"{jobs}/{ids[0]}/events") as resp:
            assert resp.status == 503 and "--max-sse-streams" in (await resp.json())["error"]
        streams[0].close()
        for _ in range(100):  # the server notices the closed stream
            async with http.get(f"{jobs}/{ids[0]}/events") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert resp.status == 200
        streams[1].close()

        for job_id in reversed(ids):
            async with http.delete(f"{jobs}/{job_id}") as resp:
                assert resp.status == 202
        for job_id in ids[:1]:
            await _wait(http, f"{jobs}/{job_id}", {"cancelled"})
        # max_kept_jobs=1: only the newest ended job is kept, the others are deleted.
        await asyncio.sleep(0.2)
        async with http.get(jobs) as resp:
            listing = (await resp.json())["jobs"]
        assert len(listing) == 1
        assert sorted(p.name for p in (state / "jobs").iterdir()) == [listing[0]["id"]]
        # and after the retention, that one too (the worker checks every minute)
        assert worker.service.prune(now=time.time() + 8 * 86_400) == (listing[0]["id"],)
        assert list((state / "jobs").iterdir()) == []


def test_every_worker_limit_has_a_range(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    for flag, bad in (("--max-queued", "0"), ("--max-queued", "1000001"),
                      ("--max-kept-jobs", "0"), ("--job-retention", "1"),
                      ("--max-sse-streams", "100000"), ("--max-jobs", "5000"),
                      ("--drain-timeout", "0"), ("--port", "70000"),
                      ("--max-body-bytes", "100")):
        assert cli_main(["serve", "--state-dir", state, "--no-auth", flag, bad]) == 2
        assert f"{flag}: expected" in capsys.readouterr().err, flag
    assert cli_main(["serve", "--state-dir", state, "--allow-run-id", "x"]) == 2
    assert "--redis" in capsys.readouterr().err
    assert not Path(state).exists()


# ---------------------------------------------------------------------------- 4. errors
async def test_job_errors_do_not_echo_the_endpoints_reply(tmp_path: Path,
                                                          log_stream: io.StringIO) -> None:
    body = '{"error": {"message": "INTERNAL-BODY redis on 10.0.0.7:6379 said NOAUTH"}}'
    async with recorder(status=400, body=body) as rec, _worker(tmp_path / "s") as worker, \
            aiohttp.ClientSession() as http:
        jobs = f"{worker.url}/v1/jobs"
        status, answer = await _post(http, jobs, {"target": 2, "base_url": rec.url,
                                                  "model": "m"})
        assert status == 201
        job = await _wait(http, f"{jobs}/{answer['id']}", {"failed"})
    assert "HTTP 400" in job["error"]
    assert "INTERNAL-BODY" not in orjson.dumps(job).decode()
    assert "INTERNAL-BODY" in log_stream.getvalue()  # the operator keeps the detail


def test_connection_failures_and_timeouts_read_the_same() -> None:
    """Refused, reset, timed out, 5xx: one message, so a job cannot map ports with it."""
    causes = [ConnectionFailed("connection to http://10.0.0.5:22/v1 failed: "
                               "ClientConnectorError: Connection refused"),
              ConnectionFailed("request to http://10.0.0.5:80/v1 failed: reset by peer"),
              RequestTimeout("no complete response from http://10.0.0.5:81/v1 within 5.0s"),
              ServerError("HTTP 502 from http://10.0.0.5/v1: upstream body", 502)]
    messages = {job_error(c) for c in causes}
    assert len(messages) == 1
    (message,) = messages
    assert "10.0.0.5" not in message and "refused" not in message.lower()
    assert "HTTP 404" in job_error(ClientRequestError("HTTP 404: secret body", 404))
    assert "secret body" not in job_error(ClientRequestError("HTTP 404: secret body", 404))
    assert job_error(KeyError("x")).startswith("the job stopped on an internal error")


# ------------------------------------------------------------------- 6. distributed runs
@pytest.mark.redis
async def test_a_job_cannot_join_another_jobs_distributed_run(tmp_path: Path,
                                                              redis_url: str) -> None:
    env = {"SELFINSTRUCT_REDIS": redis_url}
    async with SimulatedServer(SimSettings(latency_ms=5, seed=5)) as sim, \
            _worker(tmp_path / "s", env, allow_run_ids=("shared",)) as worker, \
            aiohttp.ClientSession() as http:
        jobs = f"{worker.url}/v1/jobs"
        base = {"target": 3, "base_url": sim.base_url, "model": "sim"}
        status, first = await _post(http, jobs, base)
        assert status == 201
        assert first["config"]["run_id"] == first["id"]  # a run of its own
        for run_id in (first["id"], "someone-elses-run"):
            status, answer = await _post(http, jobs, {**base, "run_id": run_id})
            assert status == 400, answer
            assert "'run_id'" in answer["error"] and "--allow-run-id" in answer["error"]
        status, answer = await _post(http, jobs, {**base, "run_id": "shared"})
        assert status == 201 and answer["config"]["run_id"] == "shared"
        for job_id in (first["id"], answer["id"]):
            await _wait(http, f"{jobs}/{job_id}", {"finished"})
    with pytest.raises(ConfigError, match="job-"):
        ServeSettings(allow_run_ids=("job-20260101T000000Z-0123456789",))
        _worker(tmp_path / "t", allow_run_ids=("job-20260101T000000Z-0123456789",))


# ------------------------------------------------------------------------- 11. masking
@pytest.mark.redis
async def test_a_redis_password_is_masked_everywhere(tmp_path: Path,
                                                     log_stream: io.StringIO) -> None:
    server, url = start_redis_server(tmp_path, "--requirepass", PASSWORD)
    secret_url = url.replace("redis://", f"redis://:{PASSWORD}@")
    state = tmp_path / "state"
    seen: list[str] = []
    try:
        async with SimulatedServer(SimSettings(latency_ms=5, seed=6)) as sim, \
                _worker(state, {"SELFINSTRUCT_REDIS": secret_url}) as worker, \
                aiohttp.ClientSession() as http:
            jobs = f"{worker.url}/v1/jobs"
            status, answer = await _post(http, jobs, {"target": 3, "base_url": sim.base_url,
                                                      "model": "sim"})
            assert status == 201, answer
            seen.append(orjson.dumps(answer).decode())
            job = await _wait(http, f"{jobs}/{answer['id']}", {"finished", "failed"})
            assert job["status"] == "finished", job["error"]
            assert job["config"]["redis"].startswith("redis://***@127.0.0.1:")
            seen.append(orjson.dumps(job).decode())
            async with http.get(jobs) as resp:
                seen.append(await resp.text())
            # a job URL with credentials is refused, and not echoed
            status, answer = await _post(http, jobs, {
                "target": 1, "base_url": f"http://user:{PASSWORD}@127.0.0.1:9/v1"})
            assert status == 400 and "credentials" in answer["error"]
            seen.append(orjson.dumps(answer).decode())
        log_event("probe", detail=f"connecting to {secret_url} failed")
    finally:
        server.kill()
        server.wait()
    run_json = orjson.loads(next(state.rglob("run.json")).read_bytes())
    assert run_json["config"]["redis"].startswith("redis://***@")
    logs = log_stream.getvalue()
    assert "redis://***@127.0.0.1" in logs
    for text in (*seen, logs, _files_text(state)):
        assert PASSWORD not in text


def test_generate_masks_url_credentials_in_run_json_and_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = load_config({"base_url": f"http://u:{PASSWORD}@127.0.0.1:9/v1",
                             "redis": f"redis://:{PASSWORD}@127.0.0.1:9/0", "run_id": "r"},
                            env={})
    assert PASSWORD not in orjson.dumps(Config.redacted(config)).decode()
    out = tmp_path / "run"
    code = cli_main(["generate", "--out", str(out), "--target", "1", "--quiet",
                     "--base-url", f"http://u:{PASSWORD}@127.0.0.1:9/v1", "--model", "m",
                     "--redis", f"redis://:{PASSWORD}@127.0.0.1:9/0", "--run-id", "r"])
    err = capsys.readouterr().err
    assert code != 0 and "redis://***@127.0.0.1:9" in err, err
    assert PASSWORD not in err
    with pytest.raises(ConfigError) as info:
        load_config({"redis": f"http://:{PASSWORD}@h"}, env={})  # the bad value, masked
    assert PASSWORD not in str(info.value) and "***@h" in str(info.value)


# -------------------------------------------------------------------------- 12. links
async def test_a_lock_link_in_the_state_directory_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (state / ".lock").symlink_to(victim)
    with pytest.raises(RunDirError, match=r"\.lock: is a symbolic link"):
        async with _worker(state):
            pass
    assert victim.read_bytes() == b"keep me"
    os.unlink(state / ".lock")


def test_a_job_on_the_embedded_model_does_not_carry_the_workers_key() -> None:
    from service.serve.policy import JobPolicy

    config, _ = load_config({}, env={"OPENAI_API_KEY": CANARY})
    assert config.base_url is None and config.api_key is not None
    applied = JobPolicy().apply(config, own_key=None, brought_key=False, run_id=None,
                                job_id="job-20260101T000000Z-0123456789")
    assert applied.api_key is None


@pytest.mark.parametrize(("bound", "allowed", "refused"), [
    ("127.0.0.1", ["127.0.0.1:80", "localhost:1", "[::1]:2", "127.0.0.2"],
     ["evil.example", "10.0.0.1", "0.0.0.0", "localhost.evil.example", ""]),
    ("localhost", ["127.0.0.1:8080", "LOCALHOST:8080"], ["evil.example:8080", "192.168.0.1"]),
    ("0.0.0.0", ["10.1.2.3:80", "localhost", "[fe80::1]:80"], ["evil.example", "a.b"]),
    ("10.0.0.5", ["10.0.0.5:8080"], ["10.0.0.6", "localhost", "127.0.0.1", "x.example"]),
])
def test_host_check_accepts_this_workers_addresses_only(
        bound: str, allowed: list[str], refused: list[str]) -> None:
    from service.serve.app import HostCheck

    check = HostCheck(bound, ())
    assert [h for h in allowed if not check.allows(h)] == []
    assert [h for h in refused if check.allows(h)] == []
    assert HostCheck(bound, ("proxy.example",)).allows("proxy.example:443")
