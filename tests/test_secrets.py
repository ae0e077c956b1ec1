"""Secrets and exposure.

* A canary API key, really used (the simulator demands it), appears in no file of the run
  directory, no exported file, no output of generate/export/verify/config, and nothing
  `serve` says (responses, /metrics, SSE, JSON log lines, its state directory).
* The same when the endpoint REJECTS the key with a 401 whose message echoes it back:
  the error is clear ("Incorrect API key provided: ***") and the key is nowhere.
* `serve` exposure beyond tests/test_serve.py (which covers the token on every route,
  oversized/malformed/invalid bodies, bad job ids and path traversal in job URLs, the
  remote-bind refusal of the CLI, and a canary key given in a job's body): the default
  bind is loopback, remote binds need a token, the token is only taken from the
  Authorization header, a 401 never echoes what was sent, and malformed HTTP (huge
  headers, bad encodings, nesting) is refused with a 4xx while the server keeps serving.
* Run ids are validated (no path traversal) before anything is created; the fuzzed
  version of this is in tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from service.cli import COMMANDS, build_parser
from service.cli import main as cli_main
from service.config import Secret
from service.errors import ConfigError
from service.rundir.store import RUN_JSON, TASKS
from service.serve.app import ServeSettings, Worker, is_loopback
from service.simulator import SimSettings, SimulatedServer
from tests.conftest import ROOT
from tests.helpers import ServeProcess, spawn_generate

CANARY = "sk-canaryKEY-5b8e2f7d1c9a4e3b"
FRAGMENTS = (CANARY, CANARY[3:], "canaryKEY", "5b8e2f7d1c9a4e3b")  # a cut or masked-in-part leak
TOKEN = "serve-token-4d2c8b1a9e7f6053"


def assert_no_secret(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for fragment in FRAGMENTS:
        assert fragment.encode() not in data, f"the API key leaked into {where}"


def assert_tree_clean(root: Path) -> int:
    """Every file under ``root`` (hidden and temporary ones too); returns how many."""
    count = 0
    for path in root.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes(), str(path))
            count += 1
    return count


def _env(key: str | None = CANARY, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "SELFINSTRUCT_SERVE_TOKEN")}
    env.update({"PYTHONPATH": str(ROOT), **extra})
    if key is not None:
        env["OPENAI_API_KEY"] = key
    return env


async def _generate(base_url: str, out: Path, target: int) -> tuple[int, str, str]:
    process = await spawn_generate(base_url, out, target, env=_env(), quiet=False, show=3)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


# ------------------------------------------------------------------- generate + export
async def test_canary_key_is_used_and_appears_in_no_file_output_or_export(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    async with SimulatedServer(SimSettings(latency_ms=10, seed=2, api_key=CANARY,
                                           duplicate_rate=0.2, bad_item_rate=0.1,
                                           error_rate=0.05, garbage_rate=0.02)) as sim:
        code, stdout, stderr = await _generate(sim.base_url, out, 25)
        stats = sim.stats()
    assert code == 0, stderr
    # The key was really sent: the simulator answers nothing without it.
    assert stats["by_status"].get("200", 0) > 0 and "401" not in stats["by_status"], stats
    assert_no_secret(orjson.dumps(stats), "the simulator's /stats")
    assert_no_secret(stdout, "generate's stdout")
    assert_no_secret(stderr, "generate's stderr (progress)")
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["config"]["api_key"] == "***"
    assert len((out / TASKS).read_bytes().splitlines()) == 25
    assert assert_tree_clean(out) >= 5

    # export (every format), verify, config: files and output
    exports = tmp_path / "exports"
    exports.mkdir()
    for fmt in ("alpaca", "sharegpt", "openai-chat", "self-instruct"):
        assert cli_main(["export", "--run", str(out), "--format", fmt, "--include-seeds",
                         "--out", str(exports / f"{fmt}.jsonl")]) == 0
    assert cli_main(["export", "--run", str(out)]) == 0  # the default place, in the run dir
    assert cli_main(["verify", str(out), "--json"]) == 0
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    assert cli_main(["config", "--base-url", sim.base_url]) == 0
    captured = capsys.readouterr()
    assert "api_key" in captured.out and "***" in captured.out
    assert_no_secret(captured.out + captured.err, "export/verify/config output")
    assert assert_tree_clean(exports) == 4
    assert_tree_clean(out)


async def test_a_rejected_key_fails_clearly_and_is_echoed_nowhere(tmp_path: Path) -> None:
    out = tmp_path / "run"
    async with SimulatedServer(SimSettings(latency_ms=5, seed=2,
                                           api_key="sk-the-right-key-0000")) as sim:
        code, stdout, stderr = await _generate(sim.base_url, out, 10)
        stats = sim.stats()
    assert stats["by_status"].get("401", 0) > 0  # the server said no, echoing the key back
    assert code == 1, stderr
    assert "HTTP 401" in stderr and "Incorrect API key provided: ***" in stderr, stderr
    assert_no_secret(stdout + stderr, "generate's output after a 401")
    run = orjson.loads((out / RUN_JSON).read_bytes())
    assert run["status"] == "failed"
    assert run["counters"]["tasks_written"] == 0
    assert_tree_clean(out)


# --------------------------------------------------------------------------------- serve
async def test_serve_with_the_key_in_its_environment_leaks_it_nowhere(tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    seen: list[str] = []
    server = ServeProcess(tmp_path / "state", env=_env(SELFINSTRUCT_SERVE_TOKEN=TOKEN))
    async with SimulatedServer(SimSettings(latency_ms=10, seed=4, api_key=CANARY)) as good, \
            SimulatedServer(SimSettings(latency_ms=5, seed=4,
                                        api_key="sk-the-right-key-0000")) as bad, \
            aiohttp.ClientSession() as http:
        # The worker's key may go to both endpoints (by default only to its own base URL).
        url = await server.start("--allow-endpoint", good.base_url,
                                 "--allow-endpoint", bad.base_url)
        try:
            ids = {}
            for name, sim in (("good", good), ("bad", bad)):
                body = {"target": 12, "base_url": sim.base_url, "model": "sim"}
                async with http.post(f"{url}/v1/jobs", json=body, headers=auth) as resp:
                    text = await resp.text()
                    assert resp.status == 201, text
                    seen.append(text)
                    ids[name] = orjson.loads(text)["id"]
            async with http.get(f"{url}/v1/jobs/{ids['good']}/events", headers=auth) as resp:
                seen.append(await resp.text())  # SSE until the job ends
            jobs: dict[str, Any] = {}
            for name, job_id in ids.items():
                deadline = asyncio.get_running_loop().time() + 60
                while True:
                    async with http.get(f"{url}/v1/jobs/{job_id}", headers=auth) as resp:
                        text = await resp.text()
                    jobs[name] = orjson.loads(text)
                    if jobs[name]["status"] not in ("queued", "running"):
                        break
                    assert asyncio.get_running_loop().time() < deadline, text
                    await asyncio.sleep(0.1)
                seen.append(text)
            for path in ("/v1/jobs", "/metrics", "/healthz"):
                async with http.get(f"{url}{path}", headers=auth) as resp:
                    assert resp.status == 200
                    seen.append(await resp.text())
            async with http.get(f"{url}/metrics") as resp:
                assert resp.status == 401  # the token is required
                seen.append(await resp.text())
        finally:
            code = await server.stop()
    assert code == 0, "".join(server.raw)
    assert jobs["good"]["status"] == "finished", jobs["good"]["error"]
    assert jobs["good"]["usage"]["tokens"]["total"] > 0
    assert jobs["good"]["config"]["api_key"] == "***"
    assert jobs["bad"]["status"] == "failed"
    # The API says what failed in the job's terms; the endpoint's words stay in the log.
    assert "refused the job's requests (HTTP 401)" in jobs["bad"]["error"], jobs["bad"]["error"]
    assert "Incorrect API key" not in jobs["bad"]["error"]
    logs = "".join(server.raw)
    assert '"job_error"' in logs and "Incorrect API key provided: ***" in logs
    for i, text in enumerate(seen):
        assert_no_secret(text, f"serve response {i}")
    assert_no_secret(logs, "serve's log lines")
    stored = orjson.loads((tmp_path / "state" / "jobs" / ids["good"] / "job.json").read_bytes())
    assert stored["api_key_source"] == "environment"
    assert assert_tree_clean(tmp_path / "state") >= 6


def test_serve_binds_loopback_unless_told_otherwise() -> None:
    assert is_loopback(ServeSettings().host)
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "192.168.1.20", "example.com", "", "127.0.0.1.evil"):
        assert not is_loopback(host), host
        with pytest.raises(ConfigError, match="--allow-remote"):
            ServeSettings(host=host).validate()
        with pytest.raises(ConfigError, match="token"):
            ServeSettings(host=host, allow_remote=True).validate()
    ServeSettings(host="0.0.0.0", allow_remote=True, token=Secret(TOKEN)).validate()


async def test_serve_default_listens_on_loopback_only(tmp_path: Path) -> None:
    async with Worker(ServeSettings(port=0, state_dir=tmp_path / "state"), env={}) as worker:
        runner = worker._runner
        assert runner is not None
        hosts = {address[0] for address in runner.addresses}
        assert hosts == {"127.0.0.1"}, hosts


def _is_4xx(answer: bytes) -> bool:
    return answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4"))


async def _raw_http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def test_serve_token_only_in_the_header_and_malformed_requests_refused(
        tmp_path: Path) -> None:
    settings = ServeSettings(port=0, state_dir=tmp_path / "state", token=Secret(TOKEN))
    async with Worker(settings, env={}) as worker, aiohttp.ClientSession() as http:
        url = worker.url
        refused = [
            {},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": "Bearer"},
            {"X-Api-Key": TOKEN},
            {"Cookie": f"token={TOKEN}"},
        ]
        for headers in refused:
            for path in (f"/v1/jobs?token={TOKEN}", f"/metrics?access_token={TOKEN}"):
                async with http.get(url + path, headers=headers) as resp:
                    text = await resp.text()
                    assert resp.status == 401, (headers, path)
                    assert TOKEN not in text and "Basic" not in text
        async with http.get(f"{url}/v1/jobs", headers={"Authorization": f"bearer {TOKEN}"}) as resp:
            assert resp.status == 200  # the scheme is case-insensitive
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

        async def post(data: bytes, **headers: str) -> tuple[int, str]:
            async with http.post(f"{url}/v1/jobs", data=data, headers={**auth, **headers}) as r:
                return r.status, await r.text()

        status, text = await post(b'{"target": "\xff\xfe"}')
        assert status == 400 and "not valid JSON" in text
        status, text = await post(b'{"a": ' * 5000 + b"1" + b"}" * 5000)
        assert status == 400, text
        status, text = await post(b'{"target": 5, "redis": "redis://127.0.0.1:1/0", '
                                  b'"run_id": "../../etc"}')
        assert status == 400 and "'redis'" in text and "not accepted" in text
        status, text = await post(b'{"target": 5, "run_id": "../../etc"}')
        assert status == 400 and "'run_id'" in text

        async def chunks() -> Any:
            for _ in range(200):
                yield b"x" * 1024  # 200 KiB, chunked: no Content-Length to refuse up front

        async with http.post(f"{url}/v1/jobs", data=chunks(), headers=auth) as resp:
            assert resp.status == 413

        port = worker.port
        assert port is not None
        huge_header = (b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                       + b"\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert _is_4xx(await _raw_http(port, huge_header))
        tls_hello = await _raw_http(port, b"\x16\x03\x01garbage not http\r\n\r\n")
        assert tls_hello == b"" or _is_4xx(tls_hello), tls_hello[:100]
        many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-H: 1\r\n" * 500 + b"\r\n"
        answer = await _raw_http(port, many)
        assert answer == b"" or _is_4xx(answer) or answer.startswith(b"HTTP/1.1 200")
        # still serving, no job was created by any of the above
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        assert list((tmp_path / "state" / "jobs").iterdir()) == []


def test_generate_refuses_a_traversing_run_id_before_creating_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    for run_id in ("../x", "..", "a/b", "/abs"):
        code = cli_main(["generate", "--out", str(out), "--redis", "redis://127.0.0.1:1/0",
                         "--run-id", run_id, "--base-url", "http://127.0.0.1:9/v1"])
        assert code == 2
        err = capsys.readouterr().err
        assert "config key 'run_id'" in err and "letters, digits" in err, err
    assert not out.exists()


def test_the_key_is_never_a_flag() -> None:
    """No command-line option takes an API key or a token (they would show in process
    lists); the config loader refuses one too (tests/test_config.py::
    test_api_key_is_never_a_flag_and_never_shown)."""
    secret_words = {"key", "apikey", "token", "secret", "password", "passwd"}
    for name in COMMANDS:
        parser = build_parser(name)  # only the named command's flags are added
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sub = commands[0].choices[name]
        assert len(sub._actions) > 1, name  # more than --help: its flags are there
        for option in sub._actions:
            for flag in option.option_strings:
                if not secret_words & set(flag.lstrip("-").lower().split("-")):
                    continue
                # a switch (--require-api-key) or the NAME of a variable (--token-env)
                # is fine; an option that takes the secret itself is not
                assert option.nargs == 0 or flag == "--token-env", (name, flag)
