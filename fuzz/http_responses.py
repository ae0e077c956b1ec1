"""Fuzz target: the lean HTTP client (service/llm/http.py) against a hostile server.

Each input becomes the bytes a raw loopback server (asyncio.start_server) writes in
answer to one POST from :class:`HTTPPool`. Layout of an input:

    byte 0, low 4 bits   which seed response the rest is spliced into (0: none, raw bytes)
    byte 0, high 4 bits  how the server writes: piece size (1, 2, 7, 64, 4096 bytes or all
                         at once) and whether it closes the connection after writing
    byte 1               where in the seed the rest goes (a fraction of its length)
    bytes 2..            the spliced bytes; with the "replace" flag they overwrite the
                         seed instead of being inserted

After the hostile answer the same pool sends a second request, which the server answers
with a known good response on whatever connection it comes; so a connection reused after
a framing anomaly shows up as a wrong second answer.

It fails (raises AssertionError, which atheris reports with the input) when:

* the first request ends in anything but a response or ProtocolError /
  ServerDisconnected (ConnectionError) / TimeoutError;
* a response breaks its bounds: a 1xx status, a body past ``MAX_BODY``;
* the second request does not get exactly the good body (one retry allowed when the
  server closed a kept-alive connection as it was reused, the keep-alive race);
* anything reaches the event loop's exception handler (an exception raised inside
  ``data_received``, a "Task exception was never retrieved");
* the loop stalls: no tick of a 1 ms heartbeat for ``MAX_STALL_S``;
* connections leak: any still open after the pool is closed.

Run it for longer (no extra package; random mutations of the seeds, seeded):

    .venv/bin/python fuzz/http_responses.py --seconds 600 [--seed 1] [--uvloop]

or coverage-guided with atheris (not a dependency):

    .venv/bin/pip install atheris
    mkdir -p fuzz/corpus-http
    .venv/bin/python fuzz/http_responses.py fuzz/corpus-http -max_total_time=600
    .venv/bin/python fuzz/http_responses.py crash-<hash>          # replay a crash

tests/test_http_hostile.py's fuzz test runs :func:`check` on a bounded number of
hypothesis examples; keep atheris imports inside :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import random
import resource
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.llm.http import HTTPPool, ProtocolError, ServerDisconnected  # noqa: E402

MAX_BODY = 64 * 1024  # the pool's max_body here: small, so the limits are reached often
MAX_STALL_S = 1.0  # a hang guard, not a speed claim (speed lives in benchmarks/)
TIMEOUT_S = 0.5  # per request: an answer that never completes ends here
GOOD = b'{"good": true}'
GOOD_REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
              b"\r\n\r\n%s" % (len(GOOD), GOOD))
PIECES = (1, 2, 7, 64, 4096, 0)  # 0: one write


def _chunked(body: bytes, size: int = 5) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


_JSON = b'{"id": "x", "choices": [{"index": 0, "text": "hi"}]}'
SEEDS: tuple[bytes, ...] = (
    b"",  # 0: the raw input alone
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_JSON), _JSON),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(_JSON),
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
    % (len(gzip.compress(_JSON)), gzip.compress(_JSON)),
    b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _chunked(zlib.compress(_JSON), 7),
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + _JSON,  # until close
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{}{}\r\n0\r\n"
    b"X-Trailer: t\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
    % (len(gzip.compress(b"\0" * 4 * MAX_BODY)), gzip.compress(b"\0" * 4 * MAX_BODY)),
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 50
    + b"0\r\n\r\n",
)


class _Hostile:
    """The loopback server: a connection's first request gets the hostile bytes (unless
    already served), every later request the good reply."""

    def __init__(self) -> None:
        self.reply = b""
        self.pieces = 0
        self.close_after = False
        self.served = False
        self.port = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if self.served:
                    writer.write(GOOD_REPLY)
                    await writer.drain()
                    continue
                self.served = True
                data, step = self.reply, self.pieces or len(self.reply) or 1
                for k in range(0, len(data), step):
                    writer.write(data[k:k + step])
                    await writer.drain()
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError):
            pass
        finally:
            writer.close()
            self.writers.discard(writer)
            if task is not None:
                self.tasks.discard(task)


class _Harness:
    """One event loop and one server for the whole fuzz session (atheris calls
    :func:`check` synchronously, many thousands of times)."""

    def __init__(self, use_uvloop: bool = False) -> None:
        if use_uvloop:
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(ctx))
        self.server = _Hostile()
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        self.server.server = await asyncio.start_server(
            self.server.handle, "127.0.0.1", 0, limit=1 << 20)
        self.server.port = self.server.server.sockets[0].getsockname()[1]

    def run(self, reply: bytes, pieces: int, close_after: bool) -> None:
        self.errors.clear()
        self.loop.run_until_complete(self._one(reply, pieces, close_after))
        if self.errors:
            raise AssertionError(f"the event loop saw an error: {self.errors[0]!r}")

    async def _one(self, reply: bytes, pieces: int, close_after: bool) -> None:
        srv = self.server
        srv.reply, srv.pieces, srv.close_after, srv.served = reply, pieces, close_after, False
        stall = [0.0]
        beat = asyncio.ensure_future(_heartbeat(stall))
        pool = HTTPPool(f"http://127.0.0.1:{srv.port}/v1", {"Content-Type": "application/json"},
                        limit=2, max_body=MAX_BODY)
        try:
            try:
                status, _headers, body = await pool.post("/c", b"{}", TIMEOUT_S, TIMEOUT_S)
            except (ProtocolError, ServerDisconnected, TimeoutError):
                pass
            except ConnectionError:
                pass  # reset by the peer and the like
            else:
                if not 200 <= status <= 999 or len(body) > MAX_BODY:
                    raise AssertionError(f"response out of bounds: {status}, {len(body)} bytes")
            srv.served = True  # whatever connection comes next gets the good reply
            try:
                second = await pool.post("/c", b"{}", 5.0, 5.0)
            except ServerDisconnected:
                # The server may close a kept-alive connection just as it is reused (a
                # race of HTTP keep-alive, which the client's retry covers): once more.
                second = await pool.post("/c", b"{}", 5.0, 5.0)
            if second[0] != 200 or second[2] != GOOD:
                raise AssertionError(f"second answer wrong (a poisoned connection reused?): "
                                     f"{second[0]} {second[2][:80]!r}")
        finally:
            pool.close()
            beat.cancel()
            for writer in list(srv.writers):  # end the server's side: handlers return
                writer.transport.abort()
            await asyncio.gather(beat, *srv.tasks, return_exceptions=True)
        if pool.open_connections:
            raise AssertionError("connections left open after close()")
        if stall[0] > MAX_STALL_S:
            raise AssertionError(f"the event loop stalled for {stall[0]:.2f}s")


async def _heartbeat(stall: list[float]) -> None:
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        stall[0] = max(stall[0], now - last)
        last = now


_harness: list[_Harness] = []  # made on first use


def build(data: bytes) -> tuple[bytes, int, bool]:
    """(reply bytes, write piece size, close after writing) for one input."""
    if len(data) < 2:
        return data, 0, True
    mode, where, rest = data[0], data[1], data[2:]
    seed = SEEDS[(mode & 0x0F) % len(SEEDS)]
    pieces = PIECES[(mode >> 4) % len(PIECES)]
    close_after = bool(mode & 0x80)
    pos = len(seed) * where // 256
    if where & 1:  # replace
        reply = seed[:pos] + rest + seed[pos + len(rest):]
    else:
        reply = seed[:pos] + rest + seed[pos:]
    return reply, pieces, close_after


def check(data: bytes) -> None:
    """One fuzz input (see the module docstring); SELFINSTRUCT_FUZZ_UVLOOP=1 runs the
    client on uvloop, as generate does."""
    if not _harness:
        _harness.append(_Harness(os.environ.get("SELFINSTRUCT_FUZZ_UVLOOP") == "1"))
    reply, pieces, close_after = build(data)
    _harness[0].run(reply, pieces, close_after)


def close() -> None:
    """Stop the server and close the loop made by :func:`check` (tests call this)."""
    while _harness:
        harness = _harness.pop()
        if harness.server.server is not None:
            harness.server.server.close()
            harness.loop.run_until_complete(harness.server.server.wait_closed())
        harness.loop.close()


def mutate(rng: random.Random) -> bytes:
    """A random input for the dependency-free long run: a seed, a splice point and a few
    bytes, some of them the characters framing is made of."""
    alphabet = b"0123456789abcdefABCDEFx+-_;: \t\r\n,\x00\xff\xd9\xa1HTTP/1.1 chunked gzip"
    size = rng.choice((0, 1, 2, 4, 8, 32, 300))
    if rng.random() < 0.5:
        rest = bytes(rng.choice(alphabet) for _ in range(size))
    else:
        rest = rng.randbytes(size)
    return bytes((rng.randrange(256), rng.randrange(256))) + rest


def long_run(seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < end:
        data = mutate(rng)
        try:
            check(data)
        except Exception:
            print(f"FAILED on input {data!r}", file=sys.stderr)
            raise
        runs += 1
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{runs} inputs in {seconds:.0f}s, no failure; peak RSS {rss_mb:.0f} MB")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("--"):
        parser = argparse.ArgumentParser(description="fuzz the lean HTTP client's parser")
        parser.add_argument("--seconds", type=float, default=600.0)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--uvloop", action="store_true", help="the client on uvloop")
        args = parser.parse_args()
        if args.uvloop:
            os.environ["SELFINSTRUCT_FUZZ_UVLOOP"] = "1"
        long_run(args.seconds, args.seed)
        return
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # only here

    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
