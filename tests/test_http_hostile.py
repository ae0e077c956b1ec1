"""The lean HTTP client against hostile servers: raw-bytes servers on loopback
(asyncio.start_server) that write exactly the bytes of each case of issue #12 items 7-9.

Each lenient-framing case must fail the request with a ProtocolError, never raise inside
``data_received`` (the loop's exception handler must stay silent) and never leave the
connection for reuse; a response that stands (bytes after it, a request still being
written) must not be reused either. Size limits hold for the body, the inflated body and
the head however the bytes arrive.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import ResponseTooLarge, RetriesExhausted
from service.llm import ClientSettings, LLMClient, RetrySettings
from service.llm.http import MAX_HEAD_BYTES, BodyTooLarge, HTTPPool, ProtocolError
from tests.conftest import ROOT
from tests.helpers import read_http_request

pytestmark = pytest.mark.timeout(60)

BODY = b'{"ok": true}'
LIMIT = 64 * 1024  # the pools' max_body in this file


def ok(body: bytes = BODY, headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + headers
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def chunked(size_line: bytes, data: bytes = b"x" * 0x57, te: bytes = b"chunked") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te + b"\r\n\r\n"
            + size_line + b"\r\n" + data + b"\r\n0\r\n\r\n")


@dataclass
class Hostile:
    """Answers request i with replies[i] (the last repeats), written in ``pieces``-byte
    writes when set; counts connections and requests."""

    replies: list[bytes]
    pieces: int = 0
    connections: int = 0
    requests: int = 0
    port: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # loop exception handler

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await read_http_request(reader)
                reply = self.replies[min(self.requests, len(self.replies) - 1)]
                self.requests += 1
                step = self.pieces or len(reply) or 1
                for k in range(0, len(reply), step):
                    writer.write(reply[k:k + step])
                    await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


Serve = Callable[..., Awaitable[Hostile]]


@pytest.fixture
async def hostile() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []
    made: list[Hostile] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def record(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        for h in made:
            h.errors.append(context)

    loop.set_exception_handler(record)

    async def start(*replies: bytes, pieces: int = 0) -> Hostile:
        h = Hostile(list(replies), pieces=pieces)
        server = await asyncio.start_server(h.handle, "127.0.0.1", 0, limit=1 << 20)
        h.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        made.append(h)
        return h

    yield start
    for server in servers:
        server.close()
    loop.set_exception_handler(previous)


def pool_for(h: Hostile, max_body: int = LIMIT) -> HTTPPool:
    return HTTPPool(f"http://127.0.0.1:{h.port}/v1", {"Content-Type": "application/json"},
                    limit=4, max_body=max_body)


# Item 9: every lenient framing the old parser accepted, refused.
FRAMING = {
    "duplicate Content-Length": ok(headers=b"Content-Length: %d\r\n" % len(BODY)),
    "conflicting Content-Length": ok(headers=b"Content-Length: 3\r\n"),
    "Content-Length with chunked": (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\nc\r\n" + BODY
                                    + b"\r\n0\r\n\r\n"),
    "chunk size 0x57": chunked(b"0x57"),
    "chunk size 5_5": chunked(b"5_5", b"x" * 0x55),
    "chunk size +57": chunked(b"+57"),
    "Transfer-Encoding: gzip, chunked": chunked(b"57", te=b"gzip, chunked"),
    "Transfer-Encoding: chunked, chunked": chunked(b"57", te=b"chunked, chunked"),
    "Transfer-Encoding: identity": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n{}",
    "non-ASCII digit in Content-Length": "HTTP/1.1 200 OK\r\nContent-Length: ١٢\r\n\r\n"
                                         .encode() + BODY,
    "non-ASCII digit in the status line": "HTTP/1.1 ٢00 OK\r\nContent-Length: 2\r\n\r\n{}"
                                          .encode(),
    "headers past 64 KB in one read": (b"HTTP/1.1 200 OK\r\nX-Big: "
                                       + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 2"
                                       b"\r\n\r\n{}"),
    "many headers past 64 KB in one read": (b"HTTP/1.1 200 OK\r\n"
                                            + b"X-H: 0123456789abcdef\r\n" * 4000
                                            + b"Content-Length: 2\r\n\r\n{}"),
    "HTTP/2 status line": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "obsolete line folding": b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\n{}",
    "bare LF line ends": b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    "space before the colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n{}",
    "chunk data without CRLF": chunked(b"2", b"{}XX"),
    "Content-Length overflow": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999"
                               b"\r\n\r\n{}",
    "101 Switching Protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                               b"Connection: upgrade\r\n\r\n",
    "endless 100 Continue": b"HTTP/1.1 100 Continue\r\n\r\n" * 40 + ok(),
}


@pytest.mark.parametrize("pieces", [0, 7], ids=["one read", "7-byte reads"])
@pytest.mark.parametrize("case", sorted(FRAMING))
async def test_lenient_framing_is_refused_and_never_reused(hostile: Serve, case: str,
                                                           pieces: int) -> None:
    h = await hostile(FRAMING[case], ok(), pieces=pieces)
    pool = pool_for(h)
    try:
        with pytest.raises(ProtocolError):
            await pool.post("/c", b"{}", 10.0, 5.0)
        assert pool.open_connections == 0  # closed at once, never back in the pool
        assert (await pool.post("/c", b"{}", 10.0, 5.0))[2] == BODY  # a fresh connection
    finally:
        pool.close()
    assert h.connections == 2
    assert h.errors == []  # nothing raised inside data_received ("Fatal error ...")


async def test_head_past_the_limit_however_it_arrives(hostile: Serve) -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"X-H: 0123456789abcdef\r\n" * 4000 + b"\r\n"
    for pieces in (1 << 20, 4096, 100):
        h = await hostile(big, pieces=pieces)
        pool = pool_for(h)
        try:
            with pytest.raises(ProtocolError, match="head larger than"):
                await pool.post("/c", b"{}", 10.0, 5.0)
        finally:
            pool.close()
    # a head just under the limit, with its body in the same read, is fine
    fits = ok(headers=b"X-H: " + b"a" * (MAX_HEAD_BYTES - 200) + b"\r\n")
    h = await hostile(fits)
    pool = pool_for(h)
    try:
        assert (await pool.post("/c", b"{}", 10.0, 5.0))[2] == BODY
    finally:
        pool.close()


# Responses that stand but whose connection must not be reused.
STANDS = {
    "bytes after the response": ok() + b"HTTP/1.1 200 OK\r\n",
    "garbage after the response": ok() + b"garbage",
    "a second response in the same read": ok() + ok(),
    "data after Connection: close": ok(headers=b"Connection: close\r\n") + b"xx",
}


@pytest.mark.parametrize("case", sorted(STANDS))
async def test_extra_bytes_after_a_response_close_the_connection(hostile: Serve,
                                                                 case: str) -> None:
    h = await hostile(STANDS[case], ok())
    pool = pool_for(h)
    try:
        for _ in range(2):
            assert (await pool.post("/c", b"{}", 10.0, 5.0))[2] == BODY
    finally:
        pool.close()
    assert h.connections == 2
    assert h.errors == []


async def test_no_reuse_while_the_request_is_still_being_written() -> None:
    """A server that answers after reading only the head: the client's request body is
    still in its write buffer, so the connection is out of step and must not be reused."""
    connections = 0
    release = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok())  # answers before reading the body
        await writer.drain()
        await release.wait()  # reads nothing more: the client's buffer stays full
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = HTTPPool(f"http://127.0.0.1:{port}/v1", {}, limit=4)
    try:
        big = b"{" + b" " * (32 * 1024 * 1024) + b"}"
        assert (await pool.post("/c", big, 10.0, 5.0))[2] == BODY
        assert (await pool.post("/c", b"{}", 10.0, 5.0))[2] == BODY
        assert connections == 2
    finally:
        release.set()
        pool.close()
        server.close()


# Item 7: the body and its inflated size are capped.
def _gzip_bomb(size: int) -> bytes:
    return gzip.compress(b"\0" * size, 9)


SIZES = {
    "Content-Length past the cap (refused before the body)":
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1) + b"{",
    "chunked body past the cap": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  + (b"1000\r\n" + b"x" * 0x1000 + b"\r\n") * 20
                                  + b"0\r\n\r\n"),
    "body until close past the cap": b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (LIMIT + 10),
    "gzip that inflates past the cap": ok(_gzip_bomb(LIMIT * 64),
                                          b"Content-Encoding: gzip\r\n"),
    "deflate that inflates past the cap": ok(zlib.compress(b"\0" * LIMIT * 64, 9),
                                             b"Content-Encoding: deflate\r\n"),
    "1-byte chunks past the wire bound": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
                                          b"\r\n\r\n" + b"1;" + b"e" * 200 + b"\r\nx\r\n"
                                          + b"1\r\nx\r\n" * 60_000 + b"0\r\n\r\n"),
    "trailers past the wire bound": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"2\r\n{}\r\n0\r\nX-T: " + b"t" * (4 * LIMIT)
                                     + b"\r\n\r\n"),
}


@pytest.mark.parametrize("case", sorted(SIZES))
async def test_size_limits(hostile: Serve, case: str) -> None:
    h = await hostile(SIZES[case], ok(), pieces=16 * 1024)
    pool = pool_for(h)
    try:
        with pytest.raises(BodyTooLarge):
            await pool.post("/c", b"{}", 10.0, 5.0)
        assert pool.open_connections == 0
        assert (await pool.post("/c", b"{}", 10.0, 5.0))[2] == BODY
    finally:
        pool.close()
    assert h.errors == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate"])
async def test_compressed_body_up_to_the_cap_is_decoded(hostile: Serve, encoding: str) -> None:
    plain = b"[" + b"1," * (LIMIT // 2 - 2) + b"1]"
    assert len(plain) <= LIMIT
    if encoding == "gzip":
        packed = gzip.compress(plain)
    elif encoding == "deflate":
        packed = zlib.compress(plain)
    else:
        squash = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = squash.compress(plain) + squash.flush()
    name = encoding.split()[-1].encode()
    h = await hostile(ok(packed, b"Content-Encoding: " + name + b"\r\n"), pieces=5)
    pool = pool_for(h)
    try:
        assert (await pool.post("/c", b"{}", 10.0, 5.0))[2] == plain
    finally:
        pool.close()


COMPLETION = orjson.dumps({"id": "x", "model": "m", "choices": [
    {"index": 0, "text": "hi", "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
@pytest.mark.parametrize("reply", [
    ok(b'{"pad": "' + b"x" * (2 * 8192) + b'"}'),
    ok(_gzip_bomb(1 << 20), b"Content-Encoding: gzip\r\n"),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + (b"800\r\n" + b" " * 0x800 + b"\r\n") * 12 + b"0\r\n\r\n",
], ids=["length", "gzip bomb", "chunked"])
async def test_client_raises_response_too_large_with_either_http_client(
        hostile: Serve, client: str, reply: bytes) -> None:
    h = await hostile(reply)
    settings = ClientSettings(f"http://127.0.0.1:{h.port}/v1", model="m",
                              retry=RetrySettings(max_attempts=2, backoff_base_s=0.01),
                              lean_http=client == "lean", max_response_bytes=8192)
    async with LLMClient(settings) as llm:
        with pytest.raises(RetriesExhausted) as info:
            await llm.complete("hello", max_tokens=4)
        assert llm.accounting.outcomes == {"response_too_large": 2}
    assert isinstance(info.value.last, ResponseTooLarge)
    assert "max_response_bytes" in str(info.value)
    assert h.requests == 2


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_client_reads_a_response_just_under_the_cap(hostile: Serve, client: str) -> None:
    pad = 8192 - len(COMPLETION) - 20
    body = COMPLETION[:-1] + b', "pad": "' + b"x" * pad + b'"}'
    assert len(body) <= 8192
    h = await hostile(ok(gzip.compress(body), b"Content-Encoding: gzip\r\n"))
    settings = ClientSettings(f"http://127.0.0.1:{h.port}/v1", model="m",
                              lean_http=client == "lean", max_response_bytes=8192)
    async with LLMClient(settings) as llm:
        assert (await llm.complete("hello", max_tokens=4)).text == "hi"


# Acceptance: the raw-bytes fuzz target (fuzz/http_responses.py) on a bounded number of
# examples here; its module docstring has the longer runs.
def _fuzz_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fuzz_http_responses", ROOT / "fuzz" / "http_responses.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _fuzz_module()


@pytest.fixture(scope="module", autouse=True)
def _close_fuzz_harness() -> Iterator[None]:
    yield
    FUZZ.close()


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_target_hostile_bytes(data: bytes) -> None:
    FUZZ.check(data)


@pytest.mark.parametrize("seed", range(len(FUZZ.SEEDS)))
@pytest.mark.parametrize("pieces", [0x00, 0x10, 0x40])  # 1-byte, 2-byte and 4 KB writes
def test_fuzz_target_every_seed(seed: int, pieces: int) -> None:
    """Every seed response, unmutated (an empty splice), through the fuzz harness."""
    FUZZ.check(bytes((0x80 | pieces | seed, 0)))


def test_fuzz_target_checks_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness is not vacuous: bytes after a complete response pass (the pool closes
    that connection), but a second answer other than the expected one fails the input."""
    extra = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n"
             b"Content-Length: 4\r\n\r\nevil")
    FUZZ.check(bytes((0, 0)) + extra)
    monkeypatch.setattr(FUZZ, "GOOD", b'{"other": 1}')
    with pytest.raises(AssertionError, match="second answer wrong"):
        FUZZ.check(bytes((0, 0)) + extra)
    assert FUZZ.build(bytes((0x81, 0)) + b"X") == (b"X" + FUZZ.SEEDS[1], 7, True)


def test_framing_reuse_and_limits_under_uvloop() -> None:
    """generate runs the client on uvloop: its transports must give the same verdicts
    (every framing case refused, an early answer never reused, the cap held)."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        h = Hostile([])
        server = await asyncio.start_server(h.handle, "127.0.0.1", 0, limit=1 << 20)
        h.port = server.sockets[0].getsockname()[1]
        try:
            for case in sorted(FRAMING) + sorted(SIZES):
                h.replies, h.requests, h.connections = [FRAMING.get(case) or SIZES[case],
                                                        ok()], 0, 0
                pool = pool_for(h)
                try:
                    with pytest.raises(ProtocolError):
                        await pool.post("/c", b"{}", 10.0, 5.0)
                    assert (await pool.post("/c", b"{}", 10.0, 5.0))[2] == BODY, case
                finally:
                    pool.close()
                assert h.connections == 2, case
        finally:
            server.close()
        await test_no_reuse_while_the_request_is_still_being_written()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
