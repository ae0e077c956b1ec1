"""`selfinstruct serve`: the long-lived worker's HTTP API.

    POST   /v1/jobs               submit a job: a JSON object of generate options -> 201
    GET    /v1/jobs               list jobs (``?status=running`` filters)
    GET    /v1/jobs/{id}          one job: status, counters, usage, config (redacted)
    DELETE /v1/jobs/{id}          cancel: drain the job, status "cancelled" -> 202
    GET    /v1/jobs/{id}/events   Server-Sent Events: a progress snapshot every ~0.5 s
                                  until the job ends (event "end")
    GET    /healthz               200 {"status": "ok"}; 503 while draining (no auth)
    GET    /metrics               Prometheus text format

Every error is ``{"error": "..."}`` with a 4xx/5xx status. With a token configured every
endpoint but /healthz needs ``Authorization: Bearer <token>``. Bodies are capped
(``max_body_bytes``, 413 above). SIGTERM/SIGINT: stop taking jobs, drain running ones
within ``drain_timeout_s``, leave unfinished ones "interrupted" (resumed on the next
start on the same state directory), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from service.config import Secret
from service.errors import ConfigError, SelfInstructError
from service.serve.jobs import (
    RUNNING,
    TERMINAL,
    BackendFactory,
    Draining,
    Job,
    JobService,
    valid_job_id,
)
from service.serve.logs import log_event
from service.serve.metrics import CONTENT_TYPE, ServeMetrics

DEFAULT_MAX_BODY = 64 * 1024
SSE_INTERVAL_S = 0.5
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = Path("serve-state")
    token: Secret | None = field(default=None, repr=False)
    max_jobs: int = 1
    drain_timeout_s: float = 30.0
    allow_remote: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port: expected 0-65535, got {self.port}")
        if self.max_jobs < 1:
            raise ConfigError(f"--max-jobs: expected a positive integer, got {self.max_jobs}")
        if not self.drain_timeout_s > 0:
            raise ConfigError(f"--drain-timeout: expected a number > 0, got {self.drain_timeout_s}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes: expected >= 1024, got {self.max_body_bytes}")
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


def _make_auth(token: Secret | None) -> Any:
    expected = token.get().encode() if token else b""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
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
    except ConfigError as exc:
        return error_response(400, str(exc))
    return json_response(service.view(job), status=201,
                         headers={"Location": f"/v1/jobs/{job.id}"})


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
            if job.status in TERMINAL:
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
              loop_lag: list[float] | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_make_observe(metrics, settings.max_body_bytes), _make_auth(settings.token)],
    )
    app[SERVICE_KEY] = service
    app[METRICS_KEY] = metrics
    app[SETTINGS_KEY] = settings
    app[LAG_KEY] = loop_lag if loop_lag is not None else [0.0]
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/v1/jobs", create_job)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_delete("/v1/jobs/{job_id}", cancel_job)
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
        self.service = JobService(
            settings.state_dir, max_jobs=settings.max_jobs,
            drain_timeout_s=settings.drain_timeout_s, env=env, metrics=self.metrics,
            backend_factory=backend_factory,
        )
        self._lag = [0.0]
        self.app = build_app(self.service, self.metrics, settings, self._lag)
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
                  auth=bool(self.settings.token), resuming=len(resumable))
        self.service.resume(resumable)

    async def _watch_loop(self) -> None:
        interval = 0.25
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval)
            self._lag[0] = max(0.0, time.monotonic() - start - interval)

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
