"""service.llm.http: the lean keep-alive pool the client uses for non-streaming calls,
against a raw asyncio server that writes exactly the bytes each test scripts (framings,
encodings, interim responses, broken servers), and through LLMClient (redirects)."""

from __future__ import annotations

import asyncio
import gzip
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest

from service.errors import ConnectionFailed, RetriesExhausted
from service.llm import ClientSettings, LimiterSettings, LLMClient, RetrySettings
from service.llm.http import HTTPPool, ProtocolError, ServerDisconnected, supports
from tests.helpers import read_http_request

pytestmark = pytest.mark.timeout(30)

Reply = bytes | Callable[[bytes], bytes] | None  # None: close without answering


@dataclass
class Raw:
    """Answers request i with replies[i] (the last one repeats); records requests and
    the connection each came on."""

    replies: list[Reply]
    requests: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (conn, head, body)
    connections: int = 0
    delay_s: float = 0.0
    split: bool = False  # write the reply a byte at a time
    port: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
        try:
            while True:
                head, body = await read_http_request(reader)
                i = len(self.requests)
                self.requests.append((conn, head, body))
                reply = self.replies[min(i, len(self.replies) - 1)]
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if reply is None:
                    writer.close()
                    return
                data = reply(body) if callable(reply) else reply
                if self.split:
                    for k in range(len(data)):
                        writer.write(data[k:k + 1])
                        await writer.drain()
                else:
                    writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Start = Callable[..., Awaitable[Raw]]


@pytest.fixture
async def raw() -> AsyncIterator[Start]:
    """``await raw(reply, ..., delay_s=.., split=..)``: a started scripted server."""
    servers: list[tuple[asyncio.Server, Raw]] = []

    async def start(*replies: Reply, delay_s: float = 0.0, split: bool = False) -> Raw:
        r = Raw(list(replies), delay_s=delay_s, split=split)
        server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
        servers.append((server, r))
        r.port = server.sockets[0].getsockname()[1]
        return r

    yield start
    for server, r in servers:
        server.close()
        for task in r.handlers:
            task.cancel()
        await asyncio.gather(*r.handlers, return_exceptions=True)


def response(body: bytes, status: str = "200 OK", headers: str = "",
             version: str = "HTTP/1.1") -> bytes:
    return (f"{version} {status}\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def pool_for(r: Raw, limit: int = 8, path: str = "/v1") -> HTTPPool:
    return HTTPPool(f"http://127.0.0.1:{r.port}{path}",
                    {"Content-Type": "application/json", "User-Agent": "ua/1",
                     "Authorization": "Bearer k"}, limit=limit)


BODY = b'{"ok": true}'


def test_supports() -> None:
    assert supports("http://127.0.0.1:8000/v1") and supports("https://api.example.com/v1")
    for url in ("http://user:pw@host/v1", "http://host/v1?x=1", "ftp://host/v1",
                "http://host/v1#f", "http://[::1", "http:///v1"):
        assert not supports(url), url


async def test_keep_alive_reuse_and_request_bytes(raw: Start) -> None:
    r = await raw(response(BODY, headers="X-Ratelimit-Remaining-Requests: 7\r\n"))
    pool = pool_for(r)
    try:
        for _ in range(3):
            status, headers, body = await pool.post("/completions", b'{"a": 1}', 5.0, 5.0)
            assert (status, body) == (200, BODY)
            assert headers.get("x-ratelimit-remaining-requests") == "7"
            assert headers["X-RateLimit-Remaining-Requests"] == "7" and "content-type" in headers
    finally:
        pool.close()
    assert r.connections == 1 and len(r.requests) == 3
    head = r.requests[0][1].decode()
    assert head.startswith("POST /v1/completions HTTP/1.1\r\n")
    for line in (f"Host: 127.0.0.1:{r.port}", "Content-Type: application/json",
                 "User-Agent: ua/1", "Authorization: Bearer k", "Accept: */*",
                 "Accept-Encoding: gzip, deflate", "Content-Length: 8"):
        assert f"\r\n{line}\r\n" in head, line
    assert r.requests[0][2] == b'{"a": 1}'


@pytest.mark.parametrize("split", [False, True])
async def test_chunked_with_extensions_and_trailers(raw: Start, split: bool) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\n{\"ok\"\r\n"
               b"7\r\n: true}\r\n"
               b"0\r\nX-Trailer: yes\r\n\r\n")
    r = await raw(chunked, split=split)
    pool = pool_for(r)
    try:
        for _ in range(2):
            assert (await pool.post("/c", b"{}", 5.0, 5.0))[2] == BODY
    finally:
        pool.close()
    assert r.connections == 1  # the connection stayed usable after a chunked body


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies_are_decoded(raw: Start, encoding: str) -> None:
    if encoding == "gzip":
        data = gzip.compress(BODY)
    elif encoding == "deflate":
        data = zlib.compress(BODY)
    else:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = c.compress(BODY) + c.flush()
    name = "deflate" if encoding == "raw-deflate" else encoding
    r = await raw(response(data, headers=f"Content-Encoding: {name}\r\n"))
    pool = pool_for(r)
    try:
        assert (await pool.post("/c", b"{}", 5.0, 5.0))[2] == BODY
    finally:
        pool.close()


async def test_connection_close_and_http10_are_not_reused(raw: Start) -> None:
    r = await raw(response(BODY, headers="Connection: close\r\n"),
                      response(BODY, version="HTTP/1.0"),
                      response(BODY, version="HTTP/1.0", headers="Connection: keep-alive\r\n"))
    pool = pool_for(r)
    try:
        for _ in range(4):
            assert (await pool.post("/c", b"{}", 5.0, 5.0))[2] == BODY
    finally:
        pool.close()
    assert [conn for conn, _, _ in r.requests] == [1, 2, 3, 3]


async def test_body_until_close_and_interim_responses(raw: Start) -> None:
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + response(BODY)

    def close_after(body: bytes) -> bytes:
        return until_close

    r = await raw(interim, close_after)
    pool = pool_for(r)
    try:
        assert (await pool.post("/c", b"{}", 5.0, 5.0))[2] == BODY
        # the server writes a body without length, then must close: handled below
        task = asyncio.create_task(pool.post("/c", b"{}", 5.0, 5.0))
        await asyncio.sleep(0.2)
        assert not task.done()  # no length: waits for the end of the connection
    finally:
        pool.close()
    with pytest.raises(ConnectionError):
        await task


async def test_until_close_body_completes_on_eof(raw: Start) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + BODY)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = HTTPPool(f"http://127.0.0.1:{port}/v1", {}, limit=2)
    try:
        assert await pool.post("/c", b"{}", 5.0, 5.0) == (200, {}, BODY)
    finally:
        pool.close()
        server.close()


@pytest.mark.parametrize("reply", [
    b"HTPP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
])
async def test_malformed_responses_raise_protocol_errors(raw: Start,
                                                         reply: bytes) -> None:
    r = await raw(reply)
    pool = pool_for(r)
    try:
        with pytest.raises(ProtocolError):
            await pool.post("/c", b"{}", 5.0, 5.0)
    finally:
        pool.close()


async def test_disconnects(raw: Start) -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ok\""
    r = await raw(None, lambda body: partial, response(BODY))
    pool = pool_for(r)
    try:
        with pytest.raises(ServerDisconnected, match="Server disconnected"):
            await pool.post("/c", b"{}", 5.0, 5.0)
        # the server answers part of a body, then the test closes the pool's side
        task = asyncio.create_task(pool.post("/c", b"{}", 5.0, 5.0))
        await asyncio.sleep(0.2)
        assert not task.done()
        assert pool.open_connections == 1
    finally:
        pool.close()
    with pytest.raises(ConnectionError):
        await task
    assert pool.open_connections == 0


async def test_timeout_and_cancel_close_the_connection(raw: Start) -> None:
    r = await raw(response(BODY), delay_s=0.5)
    pool = pool_for(r)
    try:
        with pytest.raises(TimeoutError):
            await pool.post("/c", b"{}", 0.1, 5.0)
        await asyncio.sleep(0)
        assert pool.open_connections == 0  # aborted, never reused
        task = asyncio.create_task(pool.post("/c", b"{}", 5.0, 5.0))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.open_connections == 0
        assert (await pool.post("/c", b"{}", 5.0, 5.0))[2] == BODY
    finally:
        pool.close()
    assert r.connections == 3


async def test_limit_queues_requests(raw: Start) -> None:
    r = await raw(response(BODY), delay_s=0.05)
    pool = pool_for(r, limit=2)
    try:
        results = await asyncio.gather(*(pool.post("/c", b"{}", 5.0, 5.0) for _ in range(7)))
        assert all(res[2] == BODY for res in results)
        assert pool.open_connections <= 2
        # waiting for a connection counts against the timeout
        r.delay_s = 0.5
        with pytest.raises(TimeoutError):
            await asyncio.gather(*(pool.post("/c", b"{}", 0.3, 5.0) for _ in range(3)))
    finally:
        pool.close()
    assert r.connections <= 2 + 2  # the timed-out pair was replaced at most once


async def test_connect_refused_is_a_connection_error() -> None:
    pool = HTTPPool("http://127.0.0.1:1/v1", {}, limit=2)
    with pytest.raises(ConnectionError, match=re.escape("Cannot connect to host 127.0.0.1:1 ")):
        await pool.post("/c", b"{}", 5.0, 5.0)
    assert pool.open_connections == 0


# ---------------------------------------------------------------- through LLMClient
COMPLETION = orjson.dumps({"id": "x", "model": "m", "usage": {"prompt_tokens": 1,
                                                              "completion_tokens": 1},
                           "choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]})


async def test_client_follows_redirects_through_aiohttp(raw: Start) -> None:
    target = await raw(response(COMPLETION))
    moved = await raw(response(
        b"", status="307 Temporary Redirect",
        headers=f"Location: http://127.0.0.1:{target.port}/v1/completions\r\n"))
    settings = ClientSettings(f"http://127.0.0.1:{moved.port}/v1", model="m",
                              limiter=LimiterSettings(), retry=RetrySettings(max_attempts=1))
    async with LLMClient(settings) as client:
        for _ in range(2):
            result = await client.complete("hello", max_tokens=4)
            assert result.text == "hi"
        assert client._pool is None and not client._pool_ok
    # first call: lean try + aiohttp's (redirected); second: aiohttp only
    assert len(moved.requests) == 3 and len(target.requests) == 2


async def test_client_maps_protocol_errors_to_connection_failed(raw: Start) -> None:
    r = await raw(b"garbage\r\n\r\n")
    settings = ClientSettings(f"http://127.0.0.1:{r.port}/v1", model="m",
                              retry=RetrySettings(max_attempts=2, backoff_base_s=0.01))
    async with LLMClient(settings) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.complete("hello", max_tokens=4)
        assert client.accounting.outcomes == {"connection": 2}
    assert isinstance(info.value.last, ConnectionFailed)
    assert "ProtocolError" in str(info.value.last)


def test_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        r = Raw([response(BODY), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"c\r\n" + BODY + b"\r\n0\r\n\r\n"])
        server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
        r.port = server.sockets[0].getsockname()[1]
        pool = pool_for(r)
        try:
            for _ in range(3):
                assert (await pool.post("/c", b"{}", 5.0, 5.0))[2] == BODY
            r.delay_s = 0.3
            with pytest.raises(TimeoutError):
                await pool.post("/c", b"{}", 0.05, 5.0)
            assert pool.open_connections == 0  # the timed-out connection is not reused
        finally:
            pool.close()
            server.close()
        assert r.connections == 1

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def test_headers_first_value_wins_and_lookup_ignores_case(raw: Start) -> None:
    r = await raw(response(BODY, status="429 Too Many: Requests",
                           headers="Retry-After: 2\r\nX-Dup: first\r\nx-dup: second\r\n"),
                  b"HTTP/1.0 200\r\nContent-Length: 2\r\n\r\n{}")
    pool = pool_for(r)
    try:
        status, headers, body = await pool.post("/c", b"{}", 5.0, 5.0)
        assert (status, body) == (429, BODY)
        assert headers.get("Retry-After") == "2" and headers["X-DUP"] == "first"
        assert headers.get("nope", "d") == "d" and "retry-after" in headers
        assert (await pool.post("/c", b"{}", 5.0, 5.0))[:1] == (200,)
    finally:
        pool.close()


def test_client_used_from_a_second_event_loop() -> None:
    import threading

    r = Raw([response(COMPLETION)])
    ready = threading.Event()
    server_loop = asyncio.new_event_loop()

    servers: list[asyncio.Server] = []

    def serve() -> None:
        async def start() -> None:
            server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
            servers.append(server)
            r.port = server.sockets[0].getsockname()[1]
            ready.set()

        server_loop.run_until_complete(start())
        server_loop.run_forever()

    async def shutdown() -> None:
        servers[0].close()
        for task in r.handlers:
            task.cancel()
        await asyncio.gather(*r.handlers, return_exceptions=True)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(5)
    client = LLMClient(ClientSettings(f"http://127.0.0.1:{r.port}/v1", model="m",
                                      retry=RetrySettings(max_attempts=1,
                                                          request_timeout_s=2.0)))
    pools = []

    async def call() -> None:
        assert (await client.complete("hello", max_tokens=4)).text == "hi"
        pools.append(client._pool)

    try:
        asyncio.run(call())
        asyncio.run(call())  # the first loop's connection is dropped, not reused
        assert pools[0] is not pools[1] and pools[0] is not None and pools[0].closed
        asyncio.run(client.aclose())
    finally:
        asyncio.run_coroutine_threadsafe(shutdown(), server_loop).result(5)
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join(5)
        server_loop.close()
    assert r.connections == 2
