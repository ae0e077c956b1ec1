"""`selfinstruct serve`: the long-lived worker's HTTP API.

    POST   /v1/jobs               submit a job: a JSON object of generate options -> 201
    GET    /v1/jobs               list jobs (``?status=running`` filters)
    GET    /v1/jobs/{id}          one job: status, counters, usage, config (redacted)
    DELETE /v1/jobs/{id}          cancel: drain the job, status "cancelled" -> 202
    POST   /v1/jobs/{id}/resume   {"api_key": ...}: resume a job waiting in "needs_key"
    GET    /v1/jobs/{id}/events   Server-Sent Events: a progress snapshot every ~0.5 s
                                  until the job ends (event "end")
    GET    /healthz               200 {"status": "ok"}; 503 while draining (no auth)
    GET    /metrics               Prometheus text format

Every error is ``{"error": "..."}`` with a 4xx/5xx status. Every endpoint but /healthz
needs ``Authorization: Bearer <token>``: the operator's token, or one generated at the
first start and kept in ``STATE/token`` (mode 0600); ``no_auth`` turns this off, on
loopback only. Against cross-site requests and DNS rebinding from a browser: the
``Host`` header must name this worker (its bound address, a loopback name when bound to
loopback, an IP literal, or ``allow_hosts``), a cross-origin ``Origin`` is refused, and
a body must be ``Content-Type: application/json``. Bodies are capped (``max_body_bytes``,
413 above), open event streams too (``max_sse_streams``, 503 above). SIGTERM/SIGINT:
stop taking jobs, drain running ones within ``drain_timeout_s``, leave unfinished ones
"interrupted" (resumed on the next start on the same state directory), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import secrets
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from service.config import Secret, check_range, load_config
from service.errors import ConfigError, SelfInstructError
from service.rundir.store import open_fd
from service.serve.jobs import (
    NEEDS_KEY,
    RUNNING,
    TERMINAL,
    BackendFactory,
    Draining,
    Job,
    JobService,
    TooManyJobs,
    WrongState,
    valid_job_id,
)
from service.serve.limits import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_KEPT,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_SSE_STREAMS,
    DEFAULT_RETENTION_S,
)
from service.serve.logs import log_event
from service.serve.metrics import CONTENT_TYPE, ServeMetrics
from service.serve.policy import JobPolicy

SSE_INTERVAL_S = 0.5
PRUNE_INTERVAL_S = 60.0
TOKEN_FILE = "token"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = Path("serve-state")
    token: Secret | None = field(default=None, repr=False)
    max_jobs: int = DEFAULT_MAX_JOBS
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    allow_remote: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY
    no_auth: bool = False  # explicit: tests, or one user on a loopback-only worker
    allow_hosts: tuple[str, ...] = ()  # more names the Host header may carry
    allow_endpoints: tuple[str, ...] = ()  # where the worker's key may go; () = its base URL
    restrict_endpoints: bool = False  # jobs may call only the allowed endpoints
    allow_run_ids: tuple[str, ...] = ()  # distributed runs jobs may join by name
    max_queued_jobs: int = DEFAULT_MAX_QUEUED
    max_kept_jobs: int = DEFAULT_MAX_KEPT
    job_retention_s: float = DEFAULT_RETENTION_S
    max_sse_streams: int = DEFAULT_MAX_SSE_STREAMS

    def validate(self) -> None:
        for flag, name in (("--port", "port"), ("--max-jobs", "max_jobs"),
                           ("--drain-timeout", "drain_timeout_s"),
                           ("--max-body-bytes", "max_body_bytes"),
                           ("--max-queued", "max_queued_jobs"),
                           ("--max-kept-jobs", "max_kept_jobs"),
                           ("--job-retention", "job_retention_s"),
                           ("--max-sse-streams", "max_sse_streams")):
            check_range(name, getattr(self, name), flag)
        if self.no_auth and not is_loopback(self.host):
            raise ConfigError(f"--no-auth: only for a loopback --host, not {self.host}")
        if not is_loopback(self.host):
            if not self.allow_remote:
                raise ConfigError(
                    f"--host {self.host}: not a loopback address; pass --allow-remote (with a "
                    "token) to listen beyond this machine"
                )
            if not self.token:
                raise ConfigError(
                    "--allow-remote needs a bearer token: set the environment variable named "
                    "by --token-env"
                )


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class HostCheck:
    """Which ``Host`` header names reach this worker. A page that rebinds its own DNS
    name to 127.0.0.1 still sends that name; IP literals cannot be rebound, so they pass
    when they are the bound address (any address when bound to all of them)."""

    def __init__(self, bound: str, extra: tuple[str, ...]) -> None:
        self.bound_ip = _ip(bound)
        self.everywhere = self.bound_ip is not None and self.bound_ip.is_unspecified
        self.loopback = is_loopback(bound) or self.everywhere
        self.names = {bound.lower().strip("[]"), *(h.lower() for h in extra)}
        if self.loopback:
            self.names |= LOOPBACK_NAMES

    def allows(self, host_header: str) -> bool:
        name = _host_name(host_header)
        if name in self.names:
            return True
        ip = _ip(name)
        if ip is None:
            return False
        return self.everywhere or ip == self.bound_ip or (self.loopback and ip.is_loopback)


def _host_name(host_header: str) -> str:
    """``name:port`` / ``[v6]:port`` -> name, lower case."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


# ----------------------------------------------------------------------------- helpers
def _dumps(data: Any) -> str:
    return orjson.dumps(data, default=str).decode()


def json_response(data: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def error_response(status: int, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


SERVICE_KEY = web.AppKey("service", JobService)
METRICS_KEY = web.AppKey("metrics", ServeMetrics)
SETTINGS_KEY = web.AppKey("settings", ServeSettings)
LAG_KEY = web.AppKey("loop_lag", list[float])
STREAMS_KEY = web.AppKey("open_streams", list[int])


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _http_error_message(exc: web.HTTPException, request: web.Request, limit: int) -> str:
    if exc.status == 413:
        return f"request body too large: the limit is {limit} bytes"
    if exc.status == 404:
        return f"not found: {request.path}"
    if exc.status == 405:
        return f"method {request.method} not allowed on {request.path}"
    return exc.reason


def _make_observe(metrics: ServeMetrics, limit: int) -> Any:
    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: JSON errors for everything, request metrics and one log line."""
        start = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = error_response(exc.status, _http_error_message(exc, request, limit),
                                      headers)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log_event("http_error", level="error", method=request.method, path=request.path,
                      exc_info=True)
            response = error_response(500, "internal error (see the worker's log)")
        elapsed = time.perf_counter() - start
        route = _route_name(request)
        metrics.http_requests.labels(request.method, route, str(response.status)).inc()
        if isinstance(response, web.Response):
            metrics.http_latency.labels(route).observe(elapsed)
        log_event("http_request", level="debug" if route in ("/healthz", "/metrics") else "info",
                  method=request.method, path=request.path, status=response.status,
                  duration_ms=round(elapsed * 1000, 2), remote=request.remote)
        return response

    return observe


def _make_guard(hosts: HostCheck) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Before auth: refuse requests a browser was tricked into sending."""
        host = request.headers.get("Host", "")
        if not host or not hosts.allows(host):
            return error_response(400, f"Host {host[:100]!r} is not an address of this worker "
                                       "(serve --allow-host NAME accepts another name)")
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in (f"http://{host.lower()}",
                                                         f"https://{host.lower()}"):
            return error_response(403, f"cross-origin request refused (Origin "
                                       f"{origin[:100]!r} is not this worker)")
        return await handler(request)

    return guard


class _Auth:
    """The bearer token the middleware checks; set at start (it may be generated)."""

    def __init__(self, token: Secret | None) -> None:
        self.expected = token.get().encode() if token else b""


def _make_auth(holder: _Auth) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = holder.expected
        if not expected or request.path == "/healthz":
            return await handler(request)
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip().encode()
        # compare_digest on equal-length inputs only leaks nothing; on unequal lengths it
        # returns at once, which reveals the length at most.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            return error_response(401, "missing or wrong bearer token",
                                  {"WWW-Authenticate": 'Bearer realm="selfinstruct"'})
        return await handler(request)

    return auth


# ----------------------------------------------------------------------------- handlers
async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    lag = request.app[LAG_KEY]
    jobs = service.list()
    body = {
        "status": "draining" if service.draining else "ok",
        "jobs": {
            "running": sum(1 for j in jobs if j.status == RUNNING),
            "queued": sum(1 for j in jobs if j.status == "queued"),
        },
        "loop_lag_s": round(lag[0], 4),
        "uptime_s": round(time.time() - service.started_at, 1),
    }
    return json_response(body, status=503 if service.draining else 200)


async def metrics_endpoint(request: web.Request) -> web.Response:
    payload = request.app[METRICS_KEY].render()
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE})


async def _read_json_object(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_type != "application/json":  # a form post from a page cannot be
        return error_response(415, "Content-Type must be application/json")
    raw = await request.read()  # HTTPRequestEntityTooLarge above client_max_size
    if not raw.strip():
        return error_response(400, "request body is empty: expected a JSON object of "
                                   "generate options, e.g. {\"target\": 100}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"request body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return error_response(400, "request body must be a JSON object of generate options")
    return data


async def create_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if service.draining:
        return error_response(503, "the worker is stopping; not accepting jobs",
                              {"Retry-After": "5"})
    body = await _read_json_object(request)
    if isinstance(body, web.Response):
        return body
    try:
        job = service.submit(body)
    except Draining as exc:
        return error_response(503, str(exc), {"Retry-After": "5"})
    except TooManyJobs as exc:
        return error_response(429, str(exc), {"Retry-After": "30"})
    except ConfigError as exc:
        return error_response(400, str(exc))
    return json_response(service.view(job), status=201,
                         headers={"Location": f"/v1/jobs/{job.id}"})


async def resume_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if service.draining:
        return error_response(503, "the worker is stopping", {"Retry-After": "5"})
    job = _find_job(request)
    if isinstance(job, web.Response):
        return job
    body = await _read_json_object(request)
    if isinstance(body, web.Response):
        return body
    try:
        service.supply_key(job, body)
    except WrongState as exc:
        return error_response(409, str(exc))
    except ConfigError as exc:
        return error_response(400, str(exc))
    return json_response(service.view(job, full=False), status=202)


async def list_jobs(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    wanted = request.query.get("status")
    jobs = [j for j in service.list() if wanted is None or j.status == wanted]
    return json_response({"jobs": [service.view(j, full=False) for j in jobs]})


def _find_job(request: web.Request) -> Job | web.Response:
    job_id = request.match_info.get("job_id", "")
    if not valid_job_id(job_id):
        return error_response(400, "invalid job id: expected job-YYYYMMDDTHHMMSSZ-<10 hex>")
    job = request.app[SERVICE_KEY].get(job_id)
    if job is None:
        return error_response(404, f"no job {job_id}")
    return job


async def get_job(request: web.Request) -> web.Response:
    job = _find_job(request)
    if isinstance(job, web.Response):
        return job
    return json_response(request.app[SERVICE_KEY].view(job))


async def cancel_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    job = _find_job(request)
    if isinstance(job, web.Response):
        return job
    if not service.cancel(job):
        return json_response({"error": f"job {job.id} has already ended ({job.status})",
                              "job": service.view(job, full=False)}, status=409)
    return json_response(service.view(job, full=False), status=202)


async def job_events(request: web.Request) -> web.StreamResponse:
    streams = request.app[STREAMS_KEY]
    limit = request.app[SETTINGS_KEY].max_sse_streams
    if streams[0] >= limit:  # each open stream holds a descriptor for as long as it lasts
        return error_response(503, f"{limit} event streams are open (the limit, serve "
                                   "--max-sse-streams); poll GET /v1/jobs/{id} or retry",
                              {"Retry-After": "5"})
    streams[0] += 1
    try:
        return await _stream_events(request)
    finally:
        streams[0] -= 1


async def _stream_events(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    job = _find_job(request)
    if isinstance(job, web.Response):
        return job
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    try:
        while True:
            view = service.view(job, full=False)
            await response.write(f"event: progress\ndata: {_dumps(view)}\n\n".encode())
            if job.status in TERMINAL or job.status == NEEDS_KEY:
                await response.write(f"event: end\ndata: {_dumps(view)}\n\n".encode())
                break
            if service.draining and job.status != RUNNING:
                await response.write(f"event: shutdown\ndata: {_dumps(view)}\n\n".encode())
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.ended.wait(), SSE_INTERVAL_S)
                if job.status not in TERMINAL and not service.draining:
                    await asyncio.sleep(SSE_INTERVAL_S)  # ended but resumable: keep pacing
    except (ConnectionResetError, ConnectionError):
        return response  # the client went away
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def build_app(service: JobService, metrics: ServeMetrics, settings: ServeSettings,
              loop_lag: list[float] | None = None, auth: _Auth | None = None
              ) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_make_observe(metrics, settings.max_body_bytes),
                     _make_guard(HostCheck(settings.host, settings.allow_hosts)),
                     _make_auth(auth or _Auth(settings.token))],
    )
    app[SERVICE_KEY] = service
    app[METRICS_KEY] = metrics
    app[SETTINGS_KEY] = settings
    app[LAG_KEY] = loop_lag if loop_lag is not None else [0.0]
    app[STREAMS_KEY] = [0]
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/v1/jobs", create_job)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_delete("/v1/jobs/{job_id}", cancel_job)
    app.router.add_post("/v1/jobs/{job_id}/resume", resume_job)
    app.router.add_get("/v1/jobs/{job_id}/events", job_events)
    return app


# ----------------------------------------------------------------------------- worker
class Worker:
    """The HTTP server and its jobs. ``async with Worker(settings) as w: w.url``."""

    def __init__(self, settings: ServeSettings, *, env: Mapping[str, str] | None = None,
                 backend_factory: BackendFactory | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.metrics = ServeMetrics()
        env = dict(os.environ if env is None else env)
        self.service = JobService(
            settings.state_dir, max_jobs=settings.max_jobs,
            drain_timeout_s=settings.drain_timeout_s, env=env, metrics=self.metrics,
            backend_factory=backend_factory, policy=_policy(settings, env),
            max_queued=settings.max_queued_jobs, max_kept=settings.max_kept_jobs,
            retention_s=settings.job_retention_s,
        )
        self._lag = [0.0]
        self._auth = _Auth(settings.token)
        self.app = build_app(self.service, self.metrics, settings, self._lag, self._auth)
        self.token: Secret | None = settings.token
        self.token_file: Path | None = None
        self._runner: web.AppRunner | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopped = False
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def start(self) -> None:
        resumable = self.service.open()  # locks the state directory
        try:
            if self.token is None and not self.settings.no_auth:
                self.token_file = self.settings.state_dir / TOKEN_FILE
                self.token = load_or_create_token(self.token_file)
                self._auth.expected = self.token.get().encode()
            runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                   shutdown_timeout=2.0)
            await runner.setup()
            self._runner = runner
            site = web.TCPSite(runner, self.settings.host, self.settings.port)
            try:
                await site.start()
            except OSError as exc:
                raise SelfInstructError(
                    f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
                ) from None
            self.port = int(runner.addresses[0][1])
        except BaseException:
            if self._runner is not None:
                await self._runner.cleanup()
            self.service.close()
            raise
        self._monitor = asyncio.create_task(self._watch_loop(), name="loop-lag")
        log_event("listening", url=self.url, host=self.settings.host, port=self.port,
                  state_dir=str(self.settings.state_dir), max_jobs=self.settings.max_jobs,
                  auth="none" if self.token is None else
                  f"generated: {self.token_file}" if self.token_file else "configured",
                  resuming=len(resumable))
        if self.token_file is not None and self.token is not None and sys.stderr.isatty():
            # On a terminal only: a log collector must not receive a credential.
            print(f"selfinstruct serve: bearer token (kept in {self.token_file}): "
                  f"{self.token.get()}", file=sys.stderr)
        self.service.resume(resumable)

    async def _watch_loop(self) -> None:
        interval = 0.25
        last_prune = time.monotonic()
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval)
            self._lag[0] = max(0.0, time.monotonic() - start - interval)
            if start - last_prune >= PRUNE_INTERVAL_S:  # retention passes while idle too
                last_prune = start
                self.service.prune()

    def force_stop(self) -> None:
        """A second signal: stop jobs now instead of waiting for the drain deadline."""
        log_event("force_stop", level="warning")
        for job in self.service.list():
            if job.task is not None and not job.task.done():
                job.task.cancel()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        started = time.monotonic()
        try:
            await self.service.drain()
        finally:
            if self._monitor is not None:
                self._monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._monitor
            if self._runner is not None:
                await self._runner.cleanup()
            self.service.close()
            jobs = self.service.list()
            log_event("stopped", drain_s=round(time.monotonic() - started, 3),
                      interrupted=sum(1 for j in jobs if j.status == "interrupted"),
                      queued=sum(1 for j in jobs if j.status == "queued"))

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _policy(settings: ServeSettings, env: Mapping[str, str]) -> JobPolicy:
    """The operator's rules; the worker's key goes to its own base URL unless told more."""
    endpoints = settings.allow_endpoints
    if not endpoints:
        own = load_config({}, env=env)[0].base_url
        endpoints = (own,) if own else ()
    return JobPolicy(allowed_endpoints=endpoints, shared_run_ids=settings.allow_run_ids,
                     restrict_endpoints=settings.restrict_endpoints)


def load_or_create_token(path: Path) -> Secret:
    """The state directory's generated token: read it, or make one (mode 0600). The file
    must be a regular file (no link) that only its owner can read."""
    try:
        fd = open_fd(path, os.O_RDONLY)
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return Secret(token)
    with os.fdopen(fd, "r") as fh:
        if stat.S_IMODE(os.fstat(fh.fileno()).st_mode) & 0o077:
            raise ConfigError(f"{path}: the token file is readable by others; "
                              f"chmod 600 {path} (or delete it for a new token)")
        token = fh.read(1024).strip()
    if len(token) < 16:
        raise ConfigError(f"{path}: expected a token of at least 16 characters; delete the "
                          "file for a new one")
    return Secret(token)


async def serve_until_signalled(settings: ServeSettings, *,
                                env: Mapping[str, str] | None = None) -> int:
    """Run the worker until SIGTERM/SIGINT, then drain and return 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    worker = Worker(settings, env=env)
    await worker.start()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            worker.force_stop()
            return
        log_event("signal", signal=sig.name, drain_timeout_s=settings.drain_timeout_s)
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        await stop.wait()
    finally:
        await worker.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
    return 0
