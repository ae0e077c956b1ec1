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
  Accept-Encoding: gzip, deflate, Content-Length); gzip/deflate answers are decoded;
* responses framed by Content-Length, chunked transfer coding or the end of the
  connection; 1xx interim responses skipped; ``Connection: close`` / HTTP/1.0 honoured;
* one timer a request: the whole exchange (connection, write, answer) must finish
  within ``timeout`` (TimeoutError), connecting within ``connect_timeout``;
* network and framing failures raise :class:`ConnectionError` subclasses (the client maps
  them to ConnectionFailed), a timeout raises TimeoutError; a connection that failed,
  timed out or was cancelled mid-exchange is closed, never reused.
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

MAX_HEAD_BYTES = 64 * 1024  # status line + headers (aiohttp: 8190 a line, 32 KB of fields)
DNS_TTL_S = 300.0  # as aiohttp's ttl_dns_cache used by the client
_CRLF2 = b"\r\n\r\n"
_UNTIL_CLOSE = -1
_CHUNKED = -2


class ProtocolError(ConnectionError):
    """The server's bytes are not a valid HTTP/1.1 response."""


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


def _parse_head(head: bytes) -> tuple[bool, int, Headers]:
    """Status line and header fields -> (HTTP/1.1?, status, headers)."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    if not status_line.startswith("HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:64]!r}")
    code = status_line[9:12]
    if len(status_line) < 12 or status_line[8] != " " or not code.isdigit() \
            or status_line[12:13] not in ("", " "):
        raise ProtocolError(f"bad status line: {status_line[:64]!r}")
    headers = Headers()
    setitem = dict.__setitem__
    for line in lines[:0:-1]:  # reversed: a repeated field keeps its first value
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t" or line[0] in " \t":
            raise ProtocolError(f"bad header line: {line[:64]!r}")
        setitem(headers, name.lower(), value.strip())
    return status_line[7] == "1", int(code), headers


def _decode(body: bytes, encoding: str) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    try:
        if enc in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if enc == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as sent by some
    except zlib.error as exc:
        raise ProtocolError(f"cannot decode {enc} body: {exc}") from None
    raise ProtocolError(f"unsupported Content-Encoding {encoding!r}")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

    def __init__(self, pool: HTTPPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[Response] | None = None
        self._buf: bytes | bytearray = b""
        self._status = 0
        self._headers: Headers | None = None
        self._keep_alive = True
        self._length = 0  # body bytes expected, or _UNTIL_CLOSE / _CHUNKED
        self._body = bytearray()  # chunked: decoded body so far
        self._pos = 0  # chunked: parse position in _buf

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._pool._conns.add(self)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        if self._buf:
            if not isinstance(self._buf, bytearray):
                self._buf = bytearray(self._buf)
            self._buf += data
        else:
            self._buf = data
        try:
            self._parse()
        except ConnectionError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost finishes or fails

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._headers is not None and self._length == _UNTIL_CLOSE:
            self._keep_alive = False
            self._finish(bytes(self._buf))
            return
        self.waiter = None
        if exc is not None:
            err: ConnectionError = ServerDisconnected(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        elif self._headers is None:
            err = ServerDisconnected("Server disconnected")
        else:
            err = ServerDisconnected("Response payload is not completed")
        waiter.set_exception(err)

    # ------------------------------------------------------------ exchange
    def send(self, data: bytes, waiter: asyncio.Future[Response]) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ServerDisconnected("Server disconnected")
        self.waiter = waiter
        self._buf = b""
        self._headers = None
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

    def _fail(self, exc: ConnectionError) -> None:
        self.abort(exc)

    def _parse(self) -> None:
        buf = self._buf
        while self._headers is None:
            end = buf.find(_CRLF2)
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                return
            http11, status, headers = _parse_head(bytes(buf[:end]))
            buf = self._buf = buf[end + 4:]
            if 100 <= status < 200:
                if status == 101:
                    raise ProtocolError("unexpected 101 Switching Protocols")
                continue  # interim response: the real one follows
            self._start(http11, status, headers)
        length = self._length
        if length >= 0:
            if len(buf) < length:
                return
            if len(buf) > length:
                self._keep_alive = False  # bytes past the response: do not reuse
                buf = buf[:length]
            self._finish(bytes(buf))  # no copy when buf is already exactly the body
        elif length == _CHUNKED:
            self._parse_chunks()

    def _start(self, http11: bool, status: int, headers: Headers) -> None:
        self._status = status
        self._headers = headers
        get = dict.get  # (Headers.get lower-cases; these names already are)
        connection = get(headers, "connection", "").lower()
        self._keep_alive = ("close" not in connection) if http11 else ("keep-alive" in connection)
        te = get(headers, "transfer-encoding")
        cl = get(headers, "content-length")
        if te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {te!r}")
            self._length = _CHUNKED
            self._body = bytearray()
            self._pos = 0
        elif cl is not None:
            if not cl.isdigit():
                raise ProtocolError(f"bad Content-Length {cl!r}")
            self._length = int(cl)
        elif status in (204, 304):
            self._length = 0
        else:
            self._length = _UNTIL_CLOSE
            self._keep_alive = False

    def _parse_chunks(self) -> None:
        buf, pos = self._buf, self._pos
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > 4096:
                    raise ProtocolError("chunk size line too long")
                break
            size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:32]!r}") from None
            if size < 0:
                raise ProtocolError("negative chunk size")
            if size == 0:
                # trailer fields until an empty line
                end = buf.find(b"\r\n", eol + 2)
                while end >= 0 and end != eol + 2:
                    eol, end = end, buf.find(b"\r\n", end + 2)
                if end < 0:
                    break
                if len(buf) > end + 2:
                    self._keep_alive = False
                self._finish(bytes(self._body))
                return
            start, stop = eol + 2, eol + 2 + size
            if len(buf) < stop + 2:
                break
            if buf[stop:stop + 2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            self._body += buf[start:stop]
            pos = stop + 2
        # keep only what is not parsed yet
        self._buf = bytearray(buf[pos:])
        self._pos = 0

    def _finish(self, body: bytes) -> None:
        waiter, headers = self.waiter, self._headers
        assert waiter is not None and headers is not None
        self.waiter = None
        self._buf = b""
        self._headers = None
        encoding = dict.get(headers, "content-encoding")
        if encoding is not None:
            try:
                body = _decode(body, encoding)
            except ProtocolError as exc:
                self.abort()
                if not waiter.done():
                    waiter.set_exception(exc)
                return
        if not waiter.done():
            waiter.set_result((self._status, headers, body))
        self._pool._release(self, self._keep_alive and not self.closed)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class HTTPPool:
    """Keep-alive connections to one origin; :meth:`post` sends one request."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, limit: int,
                 keepalive_s: float = 15.0) -> None:
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
