"""The embedded llama.cpp server (service.llm.local) against the real SmolLM2-135M model.

Each test starts a real server (about a second) and checks that it answers, and that
every way out of the ``async with`` block (normal exit, an exception, cancellation while a
request is in flight) stops it: the port refuses connections, the server process is
gone, and no new non-daemon thread is left behind.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from service.errors import ConfigError
from service.llm.local import (
    LocalModelError,
    LocalModelServer,
    LocalModelSettings,
    default_model_path,
)
from tests.helpers import process_alive

pytestmark = [pytest.mark.local_model, pytest.mark.timeout(90)]

PROMPT = "Come up with a series of tasks:\n1. Write a haiku about autumn.\n2."


class Boom(Exception):
    pass


def non_daemon_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.daemon}


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def assert_stopped(server: LocalModelServer, port: int, pid: int, threads_before: set[threading.Thread]) -> None:
    assert not server.running
    assert port_refuses(port), f"port {port} still accepts connections"
    assert not process_alive(pid), f"server process {pid} still exists"
    assert non_daemon_threads() - threads_before == set()


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> dict[str, object]:
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        data: dict[str, object] = await response.json()
        return data


def test_default_model_path_is_the_packaged_gguf() -> None:
    path = default_model_path()
    assert path.suffix == ".gguf"
    assert path.is_file()
    assert path.stat().st_size > 1_000_000


async def test_serves_completions_and_chat_then_stops_cleanly() -> None:
    threads_before = non_daemon_threads()
    server = LocalModelServer(threads=1)
    async with server as live, aiohttp.ClientSession() as session:
        assert live is server
        port, pid = server.port, server.pid
        assert pid is not None
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
        assert server.model_name == default_model_path().stem == server.model

        completion = await post_json(
            session,
            server.base_url + "/completions",
            {"model": server.model_name, "prompt": PROMPT, "max_tokens": 12,
             "temperature": 0, "seed": 1},
        )
        choices = completion["choices"]
        assert isinstance(choices, list) and len(choices) == 1
        assert choices[0]["text"].strip()

        chat = await post_json(
            session,
            server.base_url + "/chat/completions",
            {"model": server.model_name, "max_tokens": 12, "temperature": 0, "seed": 1,
             "messages": [{"role": "user", "content": "Name a fruit."}]},
        )
        chat_choices = chat["choices"]
        assert isinstance(chat_choices, list)
        assert chat_choices[0]["message"]["content"].strip()
    assert_stopped(server, port, pid, threads_before)
    with pytest.raises(RuntimeError):
        _ = server.base_url


async def test_exception_inside_the_block_stops_the_server() -> None:
    threads_before = non_daemon_threads()
    # The settings-object form, as service.generate.orchestrator.endpoint_for uses it.
    server = LocalModelServer(LocalModelSettings(n_parallel=2, threads=1))
    with pytest.raises(Boom):
        async with server:
            port, pid = server.port, server.pid
            assert pid is not None and not port_refuses(port)
            raise Boom
    assert_stopped(server, port, pid, threads_before)


async def test_cancellation_with_a_request_in_flight_stops_the_server() -> None:
    threads_before = non_daemon_threads()
    server = LocalModelServer()
    request_sent = asyncio.Event()
    seen: dict[str, int] = {}

    async def run_block() -> None:
        async with server, aiohttp.ClientSession() as session:
            assert server.pid is not None
            seen["port"], seen["pid"] = server.port, server.pid
            request_sent.set()
            # A long generation: still running when the task is cancelled.
            await session.post(
                server.base_url + "/completions",
                json={"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True},
            )

    task = asyncio.create_task(run_block())
    await asyncio.wait_for(request_sent.wait(), 60)
    await asyncio.sleep(0.5)  # the request reaches the server and generation starts
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 10
    assert_stopped(server, seen["port"], seen["pid"], threads_before)


async def test_a_file_that_is_not_a_model_fails_with_the_servers_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    threads_before = non_daemon_threads()
    server = LocalModelServer(bad)
    with pytest.raises(LocalModelError, match="exited while starting") as caught:
        async with server:
            pytest.fail("a broken model file must not start")
    assert "failed to load model" in str(caught.value)
    assert not server.running
    assert non_daemon_threads() - threads_before == set()


async def test_a_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="local_model"):
        async with LocalModelServer(tmp_path / "absent.gguf"):
            pass


def test_settings_and_keywords_are_exclusive() -> None:
    with pytest.raises(TypeError):
        LocalModelServer(LocalModelSettings(), threads=2)
    with pytest.raises(ConfigError, match="threads"):
        LocalModelServer(threads=0)
