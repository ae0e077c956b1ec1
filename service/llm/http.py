"""A lean HTTP/1.1 keep-alive connection pool for the client's non-streaming POSTs.

Why: aiohttp's ``ClientSession`` spends ~200-340 µs of CPU a request here (request and
response objects, cookie jar, tracing hooks, redirect machinery, several timers and
tasks a request); with thousands of requests in flight that alone is more than the
client's whole CPU budget. An OpenAI-compatible POST needs little of it: one write of
prebuilt header bytes plus the JSON body, one read of a response framed by
Content-Length (or chunked), a connection put back in the pool.

What it does (the subset of aiohttp's client behaviour the LLM client relies on):

* plain ``http://`` and ``https://`` base URLs without credentials, query or fragment
  (:func:`supports` says so; the client keeps aiohttp for anything else, for streaming
  and for redirects);
* keep-alive connections, LIFO reuse, at most ``limit`` open at once (waiting for one
  counts against the request's timeout, like aiohttp's total timeout); an idle
  connection is closed after ``keepalive_s`` (aiohttp's 15 s default);
* the headers aiohttp sends (Host, Content-Type, User-Agent, Authorization, Accept,
  Accept-Encoding: gzip, deflate, Content-Length); gzip/deflate answers are decoded
  incrementally, the inflated size capped like the body;
* responses parsed by llhttp (``httptools``, the parser uvicorn uses) in its strict mode:
  framed by Content-Length, chunked transfer coding or the end of the connection; 1xx
  interim responses skipped (at most MAX_INTERIM_RESPONSES); ``Connection: close`` /
  HTTP/1.0 honoured. Lenient framing is refused (duplicate or conflicting Content-Length,
  Content-Length with chunked, any Transfer-Encoding but ``chunked``, chunk sizes such as
  ``0x5``, ``+5``, ``5_5``, non-ASCII digits), as is a head past MAX_HEAD_BYTES however
  it arrives and a body (or its inflated size) past ``max_body``;
* one timer a request: the whole exchange (connection, write, answer) must finish
  within ``timeout`` (TimeoutError), connecting within ``connect_timeout``;
* network and framing failures raise :class:`ConnectionError` subclasses (the client maps
  them to ConnectionFailed, BodyTooLarge to ResponseTooLarge), a timeout raises
  TimeoutError. A connection is reused only after a complete, cleanly framed keep-alive
  response with no byte after it and the request fully written; one that failed, timed
  out, was cancelled mid-exchange or saw any framing anomaly is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
import time
import zlib
from collections import deque
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httptools

from service.llm.constants import DEFAULT_MAX_RESPONSE_BYTES

MAX_HEAD_BYTES = 64 * 1024  # status lines + headers (aiohttp: 8190 a line, 32 KB of fields)
MAX_INTERIM_RESPONSES = 16  # 1xx answers before the real one
DNS_TTL_S = 300.0  # as aiohttp's ttl_dns_cache used by the client


class ProtocolError(ConnectionError):
    """The server's bytes are not a valid HTTP/1.1 response (or break a limit)."""


class BodyTooLarge(ProtocolError):
    """The response body, or what it inflates to, is larger than ``max_body``."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class ServerDisconnected(ConnectionError):
    """The connection ended before a complete response."""


class ConnectError(ConnectionError):
    """Could not open a connection (refused, unreachable, DNS, TLS)."""


class Headers(dict[str, str]):
    """Response headers; names are stored lower-cased and looked up case-insensitively.
    A repeated header keeps its first value (as ``CIMultiDict.get``)."""

    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


Response = tuple[int, Headers, bytes]


def supports(url: str) -> bool:
    """True when :class:`HTTPPool` can serve ``url`` (else the client uses aiohttp)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and parts.username is None and parts.password is None
            and not parts.query and not parts.fragment and (port is None or port > 0))


class Inflater:
    """Incremental gzip/deflate decoding with an output cap: a small body that inflates
    past ``limit`` fails after at most ``limit`` bytes of work, and each piece is decoded
    as it arrives (no whole-body pass that would stall the loop)."""

    __slots__ = ("_raw_deflate_tried", "_z", "encoding", "limit", "out")

    def __init__(self, encoding: str, limit: int) -> None:
        enc = encoding.strip().lower()
        if enc in ("gzip", "x-gzip"):
            wbits = 16 + zlib.MAX_WBITS
        elif enc == "deflate":
            wbits = zlib.MAX_WBITS  # zlib-wrapped; raw deflate (sent by some) tried next
        else:
            raise ProtocolError(f"unsupported Content-Encoding {encoding[:64]!r}")
        self.encoding = enc
        self.limit = limit
        self.out = bytearray()
        self._z = zlib.decompressobj(wbits)
        self._raw_deflate_tried = enc != "deflate"

    def feed(self, data: bytes) -> None:
        if self._z.eof:
            return  # bytes after the end of the stream are ignored (as zlib.decompress)
        room = self.limit - len(self.out) + 1  # one byte over the limit proves "too large"
        try:
            piece = self._z.decompress(data, room)
        except zlib.error as exc:
            if not self._raw_deflate_tried and not self.out:
                self._raw_deflate_tried = True
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                self.feed(data)
                return
            raise ProtocolError(f"cannot decode {self.encoding} body: {exc}") from None
        self._raw_deflate_tried = True
        self.out += piece
        if len(self.out) > self.limit or self._z.unconsumed_tail:
            raise BodyTooLarge(f"response body inflates past the limit of {self.limit} bytes "
                               "(max_response_bytes)", self.limit)

    def finish(self) -> bytes:
        if not self._z.eof:  # a truncated stream, which zlib.decompress refuses too
            raise ProtocolError(f"cannot decode {self.encoding} body: truncated stream")
        return bytes(self.out)


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp (extra bytes, a broken limit)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; llhttp (httptools, strict mode) parses one response at a
    time. The connection goes back to the pool only after a response that llhttp framed
    completely, with no byte after it, a keep-alive answer and the request fully written;
    anything else (an error, extra bytes, a timeout, a cancel) closes it."""

    def __init__(self, pool: HTTPPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[Response] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers = Headers()
        self._head_done = False  # of the final (non-1xx) response
        self._head_bytes = 0  # fed while the final head was not complete
        self._wire_bytes = 0  # every byte of this exchange
        self._interim = 0
        self._keep_alive = False
        self._until_close = False
        self._complete = False
        self._extra = False
        self._error: ConnectionError | None = None
        self._body: bytes | bytearray = b""
        self._inflater: Inflater | None = None

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._pool._conns.add(self)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        try:
            self._feed(data)
        except ConnectionError as exc:
            self.abort(exc)
            return
        if self._complete:
            self._finish()

    def _feed(self, data: bytes) -> None:
        """Feed llhttp, holding the head to MAX_HEAD_BYTES and the exchange's bytes on
        the wire to a bound derived from max_body. Raises ProtocolError."""
        size = len(data)
        self._wire_bytes += size
        if self._wire_bytes > self._pool.max_wire_bytes:
            raise BodyTooLarge(f"response larger than the limit of {self._pool.max_body} "
                               "bytes (max_response_bytes)", self._pool.max_body)
        view: bytes | memoryview = data
        if not self._head_done:
            room = MAX_HEAD_BYTES - self._head_bytes
            if size > room:  # feed only what may still be head; the rest once it ends
                view = memoryview(data)
                self._parse(view[:room])
                if not self._head_done:
                    raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                view = view[room:]
            else:
                self._parse(view)
                if not self._head_done:
                    self._head_bytes += size
                return
        self._parse(view)

    def _parse(self, data: bytes | memoryview) -> None:
        if self._complete:
            self._extra = True  # bytes after a complete response: never reuse
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error = self._error or ProtocolError("unexpected protocol upgrade (101)")
        except httptools.HttpParserError as exc:
            if not self._complete or self._error is not None:
                self._error = self._error or ProtocolError(f"invalid HTTP response: {exc}")
            self._extra = True  # after a complete response: it stands, the connection not
        if self._error is not None:
            raise self._error

    # llhttp callbacks (called from feed_data; an exception stops the parser)
    def on_message_begin(self) -> None:
        if self._complete:
            self._extra = True
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked trailer: not part of the headers
        key = name.decode("latin-1").lower()
        if key == "transfer-encoding" and key in self._headers:
            self._fail(ProtocolError("repeated Transfer-Encoding header"))
        self._headers.setdefault(key, value.decode("latin-1").strip())

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if parser.get_http_version() not in ("1.1", "1.0"):
            self._fail(ProtocolError(f"not an HTTP/1.x response: "
                                     f"HTTP/{parser.get_http_version()[:8]}"))
        if 100 <= status < 200:
            if status == 101:
                self._fail(ProtocolError("unexpected 101 Switching Protocols"))
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                self._fail(ProtocolError(f"more than {MAX_INTERIM_RESPONSES} interim "
                                         "(1xx) responses"))
            self._headers = Headers()
            return
        headers = self._headers
        self._status = status
        self._head_done = True
        self._keep_alive = parser.should_keep_alive()
        te = dict.get(headers, "transfer-encoding")
        if te is not None and te.lower() != "chunked":
            self._fail(ProtocolError(f"unsupported Transfer-Encoding {te[:64]!r}"))
        cl = dict.get(headers, "content-length")
        if cl is not None and int(cl) > self._pool.max_body:  # llhttp checked the digits
            self._fail(BodyTooLarge(f"Content-Length {int(cl)} is past the limit of "
                                    f"{self._pool.max_body} bytes (max_response_bytes)",
                                    self._pool.max_body))
        if te is None and cl is None and status not in (204, 304):
            self._until_close = True
            self._keep_alive = False
        encoding = dict.get(headers, "content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            try:
                self._inflater = Inflater(encoding, self._pool.max_body)
            except ProtocolError as exc:
                self._fail(exc)

    def on_body(self, data: bytes) -> None:
        body = self._body
        if len(body) + len(data) > self._pool.max_body:
            self._fail(BodyTooLarge(f"response body past the limit of {self._pool.max_body} "
                                    "bytes (max_response_bytes)", self._pool.max_body))
        if self._inflater is not None:
            try:
                self._inflater.feed(data)
            except ProtocolError as exc:
                self._fail(exc)
        if not body:
            self._body = data
        else:
            if not isinstance(body, bytearray):
                body = self._body = bytearray(body)
            body += data

    def on_message_complete(self) -> None:
        if not self._head_done:
            return  # the end of an interim (1xx) response: the real one follows
        self._complete = True

    def _fail(self, exc: ConnectionError) -> None:
        self._error = exc
        raise _Stop

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost finishes or fails

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._head_done and self._until_close and self._error is None:
            self._complete = True
            self._finish()
            return
        self.waiter = None
        if exc is not None:
            err: ConnectionError = ServerDisconnected(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        elif not self._head_done:
            err = ServerDisconnected("Server disconnected")
        else:
            err = ServerDisconnected("Response payload is not completed")
        waiter.set_exception(err)

    # ------------------------------------------------------------ exchange
    def send(self, data: bytes, waiter: asyncio.Future[Response]) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ServerDisconnected("Server disconnected")
        self.waiter = waiter
        self._reset()
        self.transport.write(data)

    def abort(self, exc: ConnectionError | None = None) -> None:
        """Close now; a request still waiting on this connection fails with ``exc``."""
        waiter, self.waiter = self.waiter, None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self._pool._forget(self)
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ServerDisconnected("Connection closed"))

    def _finish(self) -> None:
        waiter = self.waiter
        assert waiter is not None
        body: bytes | bytearray = self._body
        if self._inflater is not None:
            try:
                body = self._inflater.finish()
            except ProtocolError as exc:
                self.abort(exc)
                return
        self.waiter = None
        transport = self.transport
        # Reuse only a clean exchange: keep-alive, nothing after the response, and the
        # request fully written (a server that answered early may not have read it all).
        reusable = (self._keep_alive and not self._extra and not self._until_close
                    and transport is not None and transport.get_write_buffer_size() == 0)
        if not waiter.done():
            waiter.set_result((self._status, self._headers,
                               body if isinstance(body, bytes) else bytes(body)))
        self._pool._release(self, reusable and not self.closed)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class HTTPPool:
    """Keep-alive connections to one origin; :meth:`post` sends one request."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, limit: int,
                 keepalive_s: float = 15.0,
                 max_body: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        if not supports(base_url):
            raise ValueError(f"HTTPPool does not serve {base_url!r}")
        parts = urlsplit(base_url)
        assert parts.hostname is not None
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~")
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None and parts.port != (443 if self.scheme == "https" else 80):
            host_header += f":{parts.port}"
        fields = {"Host": host_header, **headers, "Accept": "*/*",
                  "Accept-Encoding": "gzip, deflate"}
        self._fields = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        self._prefixes: dict[str, bytes] = {}
        self.limit = max(1, limit)
        self.max_body = max_body  # body bytes, and what gzip/deflate inflate to
        # every byte of one exchange on the wire (head, chunk framing, body, trailers)
        self.max_wire_bytes = 2 * max_body + 2 * MAX_HEAD_BYTES
        self.keepalive_s = keepalive_s
        self._idle: dict[_Connection, None] = {}  # insertion order: LIFO reuse via popitem
        self._connecting = 0
        self._conns: set[_Connection] = set()  # every open connection (idle or busy)
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._ssl: ssl_module.SSLContext | None = None
        self._addrs: list[tuple[Any, ...]] = []
        self._addrs_until = 0.0
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the first connection
        self.closed = False
        self.connections_made = 0

    # ------------------------------------------------------------ public
    async def post(self, path: str, body: bytes, timeout: float,
                   connect_timeout: float) -> Response:
        """POST ``body`` (JSON) to base path + ``path``; (status, headers, body)."""
        prefix = self._prefixes.get(path)
        if prefix is None:
            prefix = self._prefixes[path] = (
                f"POST {self._path}{path} HTTP/1.1\r\n{self._fields}"
                "Content-Length: ").encode("latin-1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._acquire(loop, deadline, connect_timeout)
        fut: asyncio.Future[Response] = loop.create_future()
        handle = loop.call_at(deadline, _expire, fut)
        try:
            conn.send(b"%s%d\r\n\r\n%s" % (prefix, len(body), body), fut)
            return await fut
        except BaseException:
            if conn.waiter is fut:  # still mid-exchange (timeout, cancel): never reuse
                conn.abort()
            raise
        finally:
            handle.cancel()

    async def aclose(self) -> None:
        if self.loop is not None and self.loop is not asyncio.get_running_loop():
            self.abandon()
        else:
            self.close()

    def abandon(self) -> None:
        """Drop a pool whose connections belong to another event loop: closed there if
        that loop still runs, else just forgotten (a closed loop cannot touch them)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.close)
                return
        self.closed = True
        self._idle.clear()
        self._conns.clear()
        self._waiters.clear()
        self._sweeper = None

    def close(self) -> None:
        """Close every connection (idle or busy); waiting requests fail."""
        if self.loop is not None and self.loop.is_closed():
            self.abandon()
            return
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._conns) + list(self._idle):
            conn.abort()
        self._idle.clear()
        self._conns.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ServerDisconnected("connection pool closed"))

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------ pool
    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float,
                       connect_timeout: float) -> _Connection:
        while True:
            if self.closed:
                raise ServerDisconnected("connection pool closed")
            idle = self._idle
            while idle:
                conn, _ = idle.popitem()
                if not conn.closed and conn.transport is not None \
                        and not conn.transport.is_closing():
                    return conn
                conn.abort()
            if len(self._conns) + self._connecting < self.limit:
                self._connecting += 1
                try:
                    conn = await self._connect(loop, min(connect_timeout, deadline - loop.time()))
                except BaseException:
                    self._connecting -= 1
                    self._wake()  # the slot is free again
                    raise
                self._connecting -= 1
                return conn
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            handle = loop.call_at(deadline, _expire, waiter)
            try:
                conn_or_none = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()  # handed over as we were cancelled: pass it on
                    if handed is not None:
                        self._release(handed, True)
                    else:
                        self._wake()
                raise
            finally:
                handle.cancel()
            if conn_or_none is not None:
                return conn_or_none

    async def _connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> _Connection:
        self.loop = loop
        ssl_context: ssl_module.SSLContext | None = None
        if self.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl_module.create_default_context()
            ssl_context = self._ssl
        last: BaseException | None = None
        async with asyncio.timeout(max(0.0, timeout)):
            for family, _type, proto, _name, sockaddr in await self._resolve(loop):
                try:
                    _transport, conn = await loop.create_connection(
                        lambda: _Connection(self), sockaddr[0], sockaddr[1], family=family,
                        proto=proto, ssl=ssl_context,
                        server_hostname=self.host if ssl_context is not None else None)
                except OSError as exc:
                    if isinstance(exc, TimeoutError):
                        raise
                    last = exc
                    continue
                self.connections_made += 1
                return conn  # (if already lost, send() raises ServerDisconnected)
        strerror = getattr(last, "strerror", None) or str(last)
        raise ConnectError(f"Cannot connect to host {self.host}:{self.port} "
                           f"ssl:{'default' if ssl_context else 'False'} [{strerror}]")

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[tuple[Any, ...]]:
        now = time.monotonic()
        if self._addrs and now < self._addrs_until:
            return self._addrs
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectError(f"Cannot connect to host {self.host}:{self.port} "
                               f"[{getattr(exc, 'strerror', None) or exc}]") from None
        self._addrs = [tuple(i) for i in infos]
        self._addrs_until = now + DNS_TTL_S
        return self._addrs

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if not reusable or conn.closed or self.closed:
            conn.abort()  # no-op when already closed
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        self._idle[conn] = None
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(
                self.keepalive_s / 2, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        """A connection closed: out of the idle set and the open count (once)."""
        self._idle.pop(conn, None)
        if conn in self._conns:
            self._conns.discard(conn)
            self._wake()

    def _wake(self) -> None:
        """A slot freed up: let the first waiter open a connection."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = time.monotonic() - self.keepalive_s
        stale = [c for c in self._idle if c.idle_since <= cutoff]
        for conn in stale:
            conn.abort()
        if self._idle and not self.closed:
            with contextlib.suppress(RuntimeError):
                self._sweeper = asyncio.get_running_loop().call_later(
                    self.keepalive_s / 2, self._sweep)
