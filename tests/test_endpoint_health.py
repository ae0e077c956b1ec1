"""Issue #12 item 5 and the client half of item 11: our own bad settings fail at once,
a failing endpoint is backed off from and given up on, and a base_url's credentials never
show in an error, a log line or a run file.

Real parts: closed loopback ports, raw asyncio servers, the real pipeline
(run_generate) and the real worker (`selfinstruct serve`) over HTTP.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.errors import (
    ClientSetupError,
    EndpointUnavailable,
    LLMError,
    RetriesExhausted,
    SelfInstructError,
    is_fatal,
)
from service.generate.orchestrator import run_generate
from service.llm import ClientSettings, LLMClient, RetrySettings
from service.llm.health import EndpointHealth
from service.rundir.store import RUN_JSON
from service.serve.app import ServeSettings, Worker
from tests.conftest import make_config
from tests.helpers import read_http_request

pytestmark = pytest.mark.timeout(120)

PASSWORD = "URL-PW-7f3e2d1c"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released without listen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def counting_server(status: int = 500) -> AsyncIterator[dict[str, Any]]:
    """A raw HTTP server answering every request with ``status``; counts requests."""
    seen: dict[str, Any] = {"requests": 0, "port": 0}
    body = b'{"error": {"message": "down"}}'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_http_request(reader)
                seen["requests"] += 1
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seen["port"] = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        server.close()


# ------------------------------------------------------------------ the tracker itself
def test_health_pause_grows_with_the_streak_is_capped_and_resets_on_an_answer() -> None:
    health = EndpointHealth(give_up_after_s=10.0, backoff_base_s=0.5, backoff_cap_s=4.0)
    rng = random.Random(1)
    assert health.pause(rng) == 0.0 and health.give_up_in(100.0) is None
    ceilings = []
    for k in range(1, 9):
        health.record_failure(100.0 + k)
        ceilings.append(max(health.pause(rng) for _ in range(200)))
    assert ceilings[0] <= 0.5 and ceilings[2] <= 2.0 and max(ceilings) <= 4.0
    assert ceilings[-1] > 2.0  # grew to near the cap
    assert health.failing_since == 101.0 and health.streak == 8
    assert health.give_up_in(105.0) == 6.0
    health.check(110.9, "x")  # not yet
    with pytest.raises(EndpointUnavailable, match=r"failed every call for 10s \(8 failed"):
        health.check(111.0, "at http://h/v1")
    health.record_answer()
    assert health.pause(rng) == 0.0 and health.give_up_in(200.0) is None
    health.check(10_000.0, "x")
    assert EndpointHealth(None, 0.5, 4.0, failing_since=0.0).give_up_in(1e9) is None


# ------------------------------------------------------------- our own settings: fatal
SETUP_CASES = {
    "key with CR/LF": ("http://127.0.0.1:{port}/v1", "sk-abc\r\nX-Injected: 1"),
    "key with a lone LF": ("http://127.0.0.1:{port}/v1", "sk-abc\n"),
    "key with a NUL": ("http://127.0.0.1:{port}/v1", "sk-\x00abc"),
    "key outside Latin-1": ("http://127.0.0.1:{port}/v1", "sk-ключ"),
    "key outside Latin-1 (euro sign)": ("http://127.0.0.1:{port}/v1", "sk-€"),
    "key plus URL credentials": (f"http://user:{PASSWORD}@127.0.0.1:{{port}}/v1", "sk-abc"),
    "bad port": ("http://127.0.0.1:99999/v1", "sk-abc"),
    "no host": ("http:///v1", "sk-abc"),
    "unclosed IPv6 bracket": ("http://[::1/v1", "sk-abc"),
    "space in the URL": ("http://127.0.0.1:{port}/v 1", "sk-abc"),
}


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
@pytest.mark.parametrize("case", sorted(SETUP_CASES))
async def test_client_side_errors_are_fatal_at_once(case: str, client: str) -> None:
    url_template, key = SETUP_CASES[case]
    async with counting_server(200) as seen:
        settings = ClientSettings(url_template.format(port=seen["port"]), api_key=key,
                                  model="m", lean_http=client == "lean",
                                  retry=RetrySettings(max_attempts=6))
        async with LLMClient(settings) as llm:
            for _ in range(3):
                with pytest.raises(ClientSetupError) as info:
                    await llm.complete("hello", max_tokens=4)
            snapshot = llm.snapshot()
        assert seen["requests"] == 0  # nothing was sent
    assert is_fatal(info.value)
    assert snapshot["attempts_by_outcome"] == {}  # not counted as bad responses
    assert snapshot["calls"]["failed"] == {"client_setup": 3}
    text = str(info.value)
    assert key.strip() not in text and "ключ" not in text and PASSWORD not in text


# ------------------------------------------------------ a failing endpoint: back off, end
@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_a_closed_port_is_backed_off_from_and_given_up_on(client: str) -> None:
    """The pipeline's pattern (call again as soon as a call fails) with max_attempts=1:
    the attempts stay few (they were ~7,000 a second) and the calls end with
    EndpointUnavailable once every call has failed for give_up_after seconds."""
    settings = ClientSettings(f"http://127.0.0.1:{closed_port()}/v1", model="m",
                              lean_http=client == "lean",
                              retry=RetrySettings(max_attempts=1, give_up_after_s=1.5))

    async def worker(llm: LLMClient) -> EndpointUnavailable:
        while True:
            try:
                await llm.complete("hello", max_tokens=4)
            except EndpointUnavailable as exc:
                return exc
            except LLMError:
                continue

    async with LLMClient(settings) as llm:
        ends = await asyncio.wait_for(asyncio.gather(*(worker(llm) for _ in range(16))), 60)
        attempts = sum(llm.accounting.outcomes.values())
        failed = dict(llm.accounting.calls_failed)
    assert all(is_fatal(e) for e in ends)
    assert "failed every call for" in str(ends[0]) and "give_up_after is 1.5s" in str(ends[0])
    assert set(llm.accounting.outcomes) == {"connection"}
    assert 16 <= attempts <= 16 * 8, attempts
    assert failed["endpoint_unavailable"] == 16


async def test_answers_keep_the_endpoint_alive_and_5xx_count_as_failures() -> None:
    async with counting_server(429) as seen:
        settings = ClientSettings(f"http://127.0.0.1:{seen['port']}/v1", model="m",
                                  retry=RetrySettings(max_attempts=2, backoff_base_s=0.01,
                                                      give_up_after_s=0.2))
        async with LLMClient(settings) as llm:
            for _ in range(3):
                with pytest.raises(RetriesExhausted):
                    await llm.complete("hello", max_tokens=4)
                await asyncio.sleep(0.1)
            assert llm.health.streak == 0  # a 429 is an answer: the endpoint is up
    async with counting_server(503) as seen:
        settings = ClientSettings(f"http://127.0.0.1:{seen['port']}/v1", model="m",
                                  retry=RetrySettings(max_attempts=100, backoff_base_s=0.01,
                                                      backoff_cap_s=0.05,
                                                      give_up_after_s=0.3))
        async with LLMClient(settings) as llm:
            with pytest.raises(EndpointUnavailable):
                await llm.complete("hello", max_tokens=4)
        assert 2 <= seen["requests"] < 100


async def test_a_run_against_a_closed_port_ends_with_a_clear_error(tmp_path: Path) -> None:
    """A run with default settings (but a short give_up_after) ends as failed, with the
    error in run.json, instead of spinning or staying "running" for ever."""
    out = tmp_path / "run"
    config = make_config(out, f"http://127.0.0.1:{closed_port()}/v1", target=5,
                         give_up_after=1.0)
    with pytest.raises(EndpointUnavailable, match="failed every call"):
        await asyncio.wait_for(run_generate(config, install_signal_handlers=False), 60)
    run = json.loads((out / RUN_JSON).read_text())
    assert run["status"] == "failed"
    attempts = sum(run["usage"]["attempts_by_outcome"].values())
    assert 0 < attempts <= 2_000, attempts  # bounded (was tens of thousands a run)


def _worker(state: Path) -> Worker:
    return Worker(ServeSettings(port=0, state_dir=state, drain_timeout_s=3.0, no_auth=True),
                  env={})


async def _wait_job(http: aiohttp.ClientSession, url: str, timeout: float = 60.0
                    ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url) as resp:
            assert resp.status == 200, await resp.text()
            job: dict[str, Any] = await resp.json()
        if job["status"] in {"failed", "finished"}:
            return job
        assert time.monotonic() < deadline, f"stuck in {job['status']}: {job}"
        await asyncio.sleep(0.05)


async def test_a_serve_job_against_a_closed_port_fails_in_the_jobs_terms(
        tmp_path: Path, log_stream: io.StringIO) -> None:
    port = closed_port()
    async with _worker(tmp_path / "s") as worker, aiohttp.ClientSession() as http:
        jobs = f"{worker.url}/v1/jobs"
        async with http.post(jobs, json={"target": 3, "model": "m", "give_up_after": 1.0,
                                         "base_url": f"http://127.0.0.1:{port}/v1",
                                         "api_key": "sk-job"}) as resp:
            assert resp.status == 201, await resp.text()
            answer = await resp.json()
        job = await _wait_job(http, f"{jobs}/{answer['id']}")
    assert job["status"] == "failed"
    assert "endpoint" in job["error"] and "log" in job["error"]
    assert str(port) not in job["error"] and "refused" not in job["error"].lower()
    assert "failed every call" in log_stream.getvalue()  # the operator has the detail


# ------------------------------------------------------------ item 11: the client half
@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_url_credentials_never_appear_in_errors(client: str) -> None:
    urls = [f"http://user:{PASSWORD}@127.0.0.1:{closed_port()}/v1"]
    async with counting_server(500) as seen:
        urls.append(f"http://user:{PASSWORD}@127.0.0.1:{seen['port']}/v1")
        for url in urls:
            settings = ClientSettings(url, model="m", lean_http=client == "lean",
                                      retry=RetrySettings(max_attempts=2,
                                                          backoff_base_s=0.01,
                                                          give_up_after_s=0.2))
            async with LLMClient(settings) as llm:
                assert PASSWORD not in repr(llm)
                errors: list[BaseException] = []
                for _ in range(3):
                    try:
                        await llm.complete("hello", max_tokens=4)
                    except LLMError as exc:
                        errors.append(exc)
                        errors.append(getattr(exc, "last", None) or exc)
                    await asyncio.sleep(0.15)
            assert errors
            for exc in errors:
                assert PASSWORD not in str(exc) and PASSWORD not in repr(exc)
                assert "***@127.0.0.1" in str(exc) or "endpoint" in str(exc)
        assert seen["requests"] > 0  # the credentialed server was reached (aiohttp)
    with pytest.raises(ValueError) as bad:
        ClientSettings(f"ftp://user:{PASSWORD}@host/v1")
    assert PASSWORD not in str(bad.value)


async def test_url_credentials_never_appear_in_a_runs_files_or_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    config = make_config(out, f"http://user:{PASSWORD}@127.0.0.1:{closed_port()}/v1",
                         target=3, give_up_after=0.5)
    with pytest.raises(SelfInstructError) as info:
        await asyncio.wait_for(run_generate(config, install_signal_handlers=False), 60)
    assert PASSWORD not in str(info.value)
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err
    for path in out.rglob("*"):
        if path.is_file():
            assert PASSWORD not in path.read_text("utf-8", "replace"), path
