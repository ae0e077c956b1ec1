"""Generation jobs of the long-lived worker: validation, persistence, scheduling, drain.

Layout of the state directory::

    STATE/.lock                    flock held by the one worker using this directory
    STATE/jobs/<job_id>/job.json   the job's spec (request body minus api_key), its
                                   redacted config, status, timestamps, last counters
    STATE/jobs/<job_id>/run/       the job's run directory (run_generate resumes it)

A job's status moves ``queued -> running -> finished | budget | failed | cancelled |
interrupted``. ``interrupted`` (the worker stopped) and ``queued``/``running`` (the worker
died) are resumed when a worker starts on the same state directory.

Secrets: an ``api_key`` in the request body is kept in memory only; job.json holds the
body without it and the config redacted. A job that brought its own key never uses the
worker's: after a restart it waits in ``needs_key`` until the key is sent again
(``POST /v1/jobs/{id}/resume``) or it is cancelled. Which endpoints the worker's own key
may go to, and which distributed runs a job may join: :mod:`service.serve.policy`.

Limits: at most ``max_queued`` jobs wait; finished jobs (and their run directories) are
deleted ``retention_s`` after they end, and beyond the newest ``max_kept``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service import __version__
from service.config import Config, load_config
from service.errors import ConfigError, RunDirError, SelfInstructError
from service.generate.backend import Backend
from service.generate.orchestrator import run_generate
from service.generate.pipeline import Pipeline
from service.progress import Progress
from service.rundir.store import lock_exclusive, open_file, unlock, write_json_atomic
from service.secret import has_credentials, safe_url
from service.serve.limits import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_KEPT,
    DEFAULT_MAX_QUEUED,
    DEFAULT_RETENTION_S,
)
from service.serve.logs import log_event
from service.serve.metrics import Baseline, JobsView, ServeMetrics, Totals, pipeline_totals
from service.serve.policy import JobPolicy, NeedsKey, job_error

JOB_JSON = "job.json"
RUN_SUBDIR = "run"
JOB_ID_PATTERN = re.compile(r"^job-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{10}$")

QUEUED, RUNNING = "queued", "running"
FINISHED, BUDGET, FAILED, CANCELLED, INTERRUPTED = (
    "finished", "budget", "failed", "cancelled", "interrupted",
)
NEEDS_KEY = "needs_key"  # stopped until its own api_key is sent again (never stored)
TERMINAL = frozenset({FINISHED, BUDGET, FAILED, CANCELLED})
RESUMABLE = frozenset({QUEUED, RUNNING, INTERRUPTED})
CANCEL_GRACE_S = 5.0

# Config keys a client may not set: the server owns paths on its own disk and the
# display mode; nested tables (filters, stages) come from the server's defaults.
_SERVER_OWNED = {
    "out": "the server chooses each job's run directory",
    "seed_tasks": "a path on the server's disk; the project's seed tasks are used",
    "local_model": "a path on the server's disk",
    "templates": "a path on the server's disk; the project's prompt templates are used",
    "quiet": "jobs never draw progress",
    "redis": "the worker's operator chooses Redis (serve --redis)",
    "filters": "nested tables are not accepted over HTTP",
    "stages": "nested tables are not accepted over HTTP",
    "mode": "batch mode runs from the command line (generate --mode batch)",
    "batch_backend": "batch mode runs from the command line (generate --mode batch)",
    "batch_dir": "a path on the server's disk",
}
ALLOWED_KEYS = frozenset(f.name for f in dataclasses.fields(Config)) - set(_SERVER_OWNED)

BackendFactory = Callable[[Config], contextlib.AbstractAsyncContextManager[Backend]]


class Draining(SelfInstructError):
    """The worker is stopping and accepts no new jobs."""


class StateDirLocked(SelfInstructError):
    """Another worker holds the state directory."""

    exit_code = 2


class TooManyJobs(SelfInstructError):
    """``max_queued`` jobs are already waiting: submit later."""


class WrongState(SelfInstructError):
    """The request does not apply to the job in its present status."""


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_PATTERN.fullmatch(job_id))


def new_job_id() -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"job-{stamp}-{secrets.token_hex(5)}"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def build_job_config(spec: Mapping[str, Any], *, run_dir: Path, env: Mapping[str, str],
                     job_id: str, policy: JobPolicy, api_key: str | None = None,
                     brought_key: bool = False) -> Config:
    """Validate a job's options through :func:`load_config` (errors name the key), then
    apply the operator's policy (which key, which distributed run).

    ``spec`` must not hold ``api_key`` (pass it separately); ``env`` supplies the layer
    below (the worker's own environment: OPENAI_API_KEY, OPENAI_BASE_URL, SELFINSTRUCT_*).
    """
    for key, value in spec.items():
        if key in _SERVER_OWNED:
            raise ConfigError(f"config key '{key}' (from request body): not accepted "
                              f"({_SERVER_OWNED[key]})")
        if key not in ALLOWED_KEYS or key == "api_key":
            raise ConfigError(f"config key '{key}' (from request body): unknown key")
        if isinstance(value, str) and has_credentials(value):
            raise ConfigError(f"config key '{key}' (from request body): credentials in a URL "
                              "are not accepted (they would be stored with the job); send "
                              "the key as \"api_key\"")
    flags: dict[str, Any] = dict(spec)
    flags["out"] = run_dir
    flags["quiet"] = True
    try:
        config, _ = load_config(flags, env=env)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("(from flags)", "(from request body)")) from None
    run_id = spec.get("run_id")
    return policy.apply(config, own_key=api_key, brought_key=brought_key,
                        run_id=run_id if isinstance(run_id, str) else None, job_id=job_id)


def split_body(body: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The request body without ``api_key``, and the key (validated, never echoed)."""
    spec = {k: v for k, v in body.items() if k != "api_key"}
    key = body.get("api_key")
    if key is None:
        return spec, None
    if not isinstance(key, str) or not key.strip():
        raise ConfigError("config key 'api_key' (from request body): expected a non-empty "
                          "string, got ***")
    return spec, key


@dataclass
class Job:
    id: str
    spec: dict[str, Any]
    created_at: float
    config: Config | None
    status: str = QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    api_key_source: str | None = None  # "request" | "environment" | None
    cancel_requested: bool = False
    starts: int = 0
    counters: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    stored_config: dict[str, Any] | None = None  # job.json's, if the spec no longer loads
    pipeline: Pipeline | None = None
    baseline: Baseline | None = None
    task: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def task_done(self) -> bool:
        return self.task is None or self.task.done()

    def redacted_config(self) -> dict[str, Any] | None:
        return self.config.redacted() if self.config is not None else self.stored_config

    def to_json(self) -> dict[str, Any]:
        """What job.json holds: nothing secret."""
        return {
            "version": __version__,
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "starts": self.starts,
            "api_key_source": self.api_key_source,
            "spec": self.spec,
            "config": self.redacted_config(),
            "counters": self.counters,
            "usage": self.usage,
        }


class JobService:
    """Owns every job of one state directory; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        *,
        max_jobs: int = DEFAULT_MAX_JOBS,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        metrics: ServeMetrics | None = None,
        backend_factory: BackendFactory | None = None,
        policy: JobPolicy | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_kept: int = DEFAULT_MAX_KEPT,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        if max_jobs < 1:
            raise ConfigError(f"max_jobs must be >= 1 (got {max_jobs})")
        self.policy = policy or JobPolicy()
        self.max_queued = max_queued
        self.max_kept = max_kept
        self.retention_s = retention_s
        self.state_dir = Path(state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.max_jobs = max_jobs
        self.drain_timeout_s = drain_timeout_s
        self.env: Mapping[str, str] = dict(os.environ if env is None else env)
        self.metrics = metrics
        self._backend_factory = backend_factory
        self._jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(max_jobs)
        self._retired = Totals()
        self._lock_fd: int | None = None
        self.draining = False
        self.started_at = time.time()
        if metrics is not None:
            metrics.bind(self.metrics_view)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> list[Job]:
        """Lock the state directory and load every job; return the ones to resume
        (not yet started: call :meth:`resume`)."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        resumable: list[Job] = []
        for job_dir in sorted(p for p in self.jobs_dir.iterdir() if p.is_dir()):
            if not valid_job_id(job_dir.name):
                continue
            job = self._load(job_dir)
            if job is None:
                continue
            self._jobs[job.id] = job
            if job.status in RESUMABLE:
                resumable.append(job)
        resumable.sort(key=lambda j: j.created_at)
        self.prune()
        return resumable

    def resume(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.config is None:
                continue
            previous = job.status
            job.status = QUEUED
            self._persist(job)
            log_event("job_resumed", job_id=job.id, previous_status=previous,
                      tasks_written=job.counters.get("tasks_written", 0))
            self._start_task(job)

    def _lock(self) -> None:
        fd = lock_exclusive(self.state_dir / ".lock", 0o600)
        if fd is None:
            raise StateDirLocked(f"state directory {self.state_dir} is in use by another worker")
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            self._lock_fd = None

    def _load(self, job_dir: Path) -> Job | None:
        path = job_dir / JOB_JSON
        try:
            with open_file(path) as fh:
                data = orjson.loads(fh.read())
        except (OSError, RunDirError, orjson.JSONDecodeError) as exc:
            log_event("job_unreadable", level="warning", job_id=job_dir.name,
                      error=f"{type(exc).__name__}: {exc}")
            return None
        if not isinstance(data, dict) or data.get("id") != job_dir.name:
            log_event("job_unreadable", level="warning", job_id=job_dir.name,
                      error="job.json does not describe this job")
            return None
        spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
        assert isinstance(spec, dict)
        job = Job(
            id=job_dir.name,
            spec=spec,
            created_at=float(data.get("created_at") or 0.0),
            config=None,
            status=str(data.get("status") or QUEUED),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            error=data.get("error"),
            api_key_source=data.get("api_key_source"),
            cancel_requested=bool(data.get("cancel_requested")),
            starts=int(data.get("starts") or 0),
            counters=dict(data.get("counters") or {}),
            usage=dict(data.get("usage") or {}),
            stored_config=data.get("config") if isinstance(data.get("config"), dict) else None,
        )
        try:
            job.config = build_job_config(spec, run_dir=job_dir / RUN_SUBDIR, env=self.env,
                                          job_id=job_dir.name, policy=self.policy,
                                          brought_key=job.api_key_source == "request")
        except NeedsKey as exc:
            if job.status in RESUMABLE:  # waits for its own key; never borrows the worker's
                job.status = NEEDS_KEY
                job.error = str(exc)
                self._persist(job)
                log_event("job_needs_key", level="warning", job_id=job.id, error=job.error)
        except ConfigError as exc:
            if job.status in RESUMABLE:
                job.status = FAILED
                job.error = f"cannot resume: {exc}"
                job.finished_at = time.time()
                self._persist(job)
                log_event("job_failed", level="error", job_id=job.id, error=job.error)
        if job.status in TERMINAL or job.status in (INTERRUPTED, NEEDS_KEY):
            job.ended.set()
        return job

    # ------------------------------------------------------------------ API
    def submit(self, body: Mapping[str, Any]) -> Job:
        if self.draining:
            raise Draining("the worker is stopping; submit the job to another worker")
        waiting = sum(1 for j in self._jobs.values() if j.status == QUEUED)
        if waiting >= self.max_queued:
            raise TooManyJobs(f"{waiting} jobs are already waiting (the limit, serve "
                              "--max-queued); submit again when one has started")
        spec, api_key = split_body(body)
        job_id = new_job_id()
        while job_id in self._jobs:  # pragma: no cover - 40 random bits per second
            job_id = new_job_id()
        job_dir = self.jobs_dir / job_id
        config = build_job_config(spec, run_dir=job_dir / RUN_SUBDIR, env=self.env,
                                  job_id=job_id, policy=self.policy, api_key=api_key,
                                  brought_key=api_key is not None)
        job = Job(id=job_id, spec=spec, created_at=time.time(), config=config)
        job.api_key_source = (
            "request" if api_key is not None
            else "environment" if config.api_key is not None else None
        )
        job_dir.mkdir(parents=True, exist_ok=False)
        self._jobs[job_id] = job
        self._persist(job)
        log_event("job_submitted", job_id=job_id, target=config.target, model=config.model,
                  api=config.api, max_in_flight=config.max_in_flight)
        self._start_task(job)
        self.prune()
        return job

    def supply_key(self, job: Job, body: Mapping[str, Any]) -> None:
        """Resume a ``needs_key`` job with its own api_key, sent again."""
        if job.status != NEEDS_KEY:
            raise WrongState(f"job {job.id} is {job.status}; only a job in {NEEDS_KEY} "
                             "takes its key again")
        unknown = sorted(set(body) - {"api_key"})
        if unknown:
            raise ConfigError(f"config key '{unknown[0]}' (from request body): only "
                              "\"api_key\" is accepted here")
        _, api_key = split_body(body)
        if api_key is None:
            raise ConfigError("config key 'api_key' (from request body): required to resume")
        job.config = build_job_config(job.spec, run_dir=self.jobs_dir / job.id / RUN_SUBDIR,
                                      env=self.env, job_id=job.id, policy=self.policy,
                                      api_key=api_key, brought_key=True)
        job.status = QUEUED
        job.error = None
        self._persist(job)
        log_event("job_key_supplied", job_id=job.id)
        self._start_task(job)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: (j.created_at, j.id))

    def cancel(self, job: Job) -> bool:
        """Ask a job to stop. Returns False if it had already ended."""
        if job.terminal:
            return False
        job.cancel_requested = True
        log_event("job_cancel_requested", job_id=job.id, status=job.status)
        if job.status in (QUEUED, INTERRUPTED, NEEDS_KEY) and job.pipeline is None:
            # Not running: nothing to drain.
            self._end(job, CANCELLED)
            if job.task is not None:
                job.task.cancel()
            return True
        if job.pipeline is not None:
            # A cancelled job will not be resumed: give in-flight calls a short grace
            # instead of working through the whole admitted backlog.
            job.pipeline.drain_timeout_s = min(self.drain_timeout_s, CANCEL_GRACE_S)
            job.pipeline.request_drain()
        self._persist(job)
        return True

    def view(self, job: Job, *, full: bool = True) -> dict[str, Any]:
        counters = job.pipeline.state.as_dict() if job.pipeline is not None else job.counters
        usage = job.pipeline.backend.snapshot() if job.pipeline is not None else job.usage
        target = job.config.target if job.config is not None else job.spec.get("target")
        written = int(counters.get("tasks_written", 0) or 0)
        data: dict[str, Any] = {
            "id": job.id,
            "status": job.status,
            "cancel_requested": job.cancel_requested,
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "target": target,
            "tasks_written": written,
            "instructions_admitted": int(counters.get("instructions_admitted", 0) or 0),
            "error": job.error,
            "starts": job.starts,
            "run_dir": str(self.jobs_dir / job.id / RUN_SUBDIR),
            "usage_summary": {
                "total_tokens": (usage.get("tokens") or {}).get("total", 0)
                if isinstance(usage.get("tokens"), dict) else 0,
                "cost_usd": usage.get("cost_usd", 0.0),
                "in_flight": usage.get("in_flight", 0),
                "rate_limited": usage.get("rate_limited", 0),
            },
        }
        if full:
            data["counters"] = counters
            data["usage"] = usage
            data["config"] = job.redacted_config()
            data["spec"] = job.spec
        return data

    # ------------------------------------------------------------------ running
    def _start_task(self, job: Job) -> None:
        job.ended.clear()
        job.task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        job.task.add_done_callback(lambda _: self.prune())  # an ended job may now go

    async def _run(self, job: Job) -> None:
        try:
            async with self._slots:
                if job.terminal or job.cancel_requested:
                    if not job.terminal:
                        self._end(job, CANCELLED)
                    return
                if self.draining:
                    return  # stays queued; the next worker resumes it
                await self._execute(job)
        except asyncio.CancelledError:
            if job.status == RUNNING:
                self._end(job, CANCELLED if job.cancel_requested else INTERRUPTED)
            elif job.status == QUEUED and job.cancel_requested:
                self._end(job, CANCELLED)
            raise
        finally:
            job.ended.set()

    async def _execute(self, job: Job) -> None:
        assert job.config is not None
        job.status = RUNNING
        job.started_at = time.time()
        job.finished_at = None
        job.error = None
        job.starts += 1
        self._persist(job)
        log_event("job_started", job_id=job.id, target=job.config.target, start=job.starts)
        status = FAILED
        try:
            result = await run_generate(
                job.config,
                backend_factory=self._backend_factory,  # None: run_generate's own
                progress=Progress(quiet=True),
                install_signal_handlers=False,
                on_pipeline=lambda pipeline: self._attach(job, pipeline),
            )
            status = result.summary.status
            if status == "interrupted":
                status = CANCELLED if job.cancel_requested else INTERRUPTED
            elif status not in (FINISHED, BUDGET, FAILED):
                status = INTERRUPTED
        except asyncio.CancelledError:
            self._detach(job)
            raise
        except SelfInstructError as exc:
            # The API shows what failed in the job's terms; the operator's log, the detail.
            job.error = job_error(exc)
            log_event("job_error", level="error", job_id=job.id, kind=type(exc).__name__,
                      detail=safe_url(str(exc)))
        except Exception as exc:
            job.error = job_error(exc)
            log_event("job_error", level="error", job_id=job.id, kind=type(exc).__name__,
                      detail=safe_url(str(exc)), exc_info=True)
        self._detach(job)
        self._end(job, status)

    def _attach(self, job: Job, pipeline: Pipeline) -> None:
        """on_pipeline: called by run_generate before the pipeline runs."""
        job.pipeline = pipeline
        job.baseline = Baseline.of(pipeline)
        pipeline.drain_timeout_s = self.drain_timeout_s
        if self.metrics is not None:
            self.metrics.observe(pipeline)
        if job.cancel_requested or self.draining:
            pipeline.drain_timeout_s = min(self.drain_timeout_s, CANCEL_GRACE_S)
            pipeline.request_drain()

    def _detach(self, job: Job) -> None:
        pipeline, baseline = job.pipeline, job.baseline
        if pipeline is None or baseline is None:
            return
        job.counters = pipeline.state.as_dict()
        job.usage = pipeline.backend.snapshot()
        self._retired.add(pipeline_totals(pipeline, baseline).without_gauges())
        job.pipeline = None
        job.baseline = None

    def _end(self, job: Job, status: str) -> None:
        job.status = status
        job.finished_at = time.time()
        self._persist(job)
        job.ended.set()
        elapsed = job.finished_at - job.started_at if job.started_at else None
        log_event("job_ended", level="error" if status == FAILED else "info", job_id=job.id,
                  status=status, tasks_written=job.counters.get("tasks_written", 0),
                  elapsed_s=round(elapsed, 3) if elapsed is not None else None,
                  error=job.error)

    def _persist(self, job: Job) -> None:
        job_dir = self.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job_dir / JOB_JSON, job.to_json())

    def prune(self, now: float | None = None) -> tuple[str, ...]:
        """Delete ended jobs (job.json and run directory) older than the retention, and
        the oldest beyond ``max_kept`` ended ones; return their ids. Jobs that have not
        ended (or wait for a key) are never deleted."""
        now = time.time() if now is None else now
        ended = sorted((j for j in self._jobs.values()
                        if j.terminal and j.finished_at is not None and j.task_done()),
                       key=lambda j: (j.finished_at or 0.0, j.id))
        excess = max(0, len(ended) - self.max_kept)
        doomed = [j for i, j in enumerate(ended)
                  if i < excess or now - (j.finished_at or now) > self.retention_s]
        for job in doomed:
            shutil.rmtree(self.jobs_dir / job.id, ignore_errors=True)  # never follows links
            del self._jobs[job.id]
            log_event("job_pruned", job_id=job.id, status=job.status,
                      finished_at=iso(job.finished_at))
        return tuple(j.id for j in doomed)

    # ------------------------------------------------------------------ drain
    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop accepting jobs; drain running ones (bounded); persist what is left."""
        timeout = self.drain_timeout_s if timeout_s is None else timeout_s
        self.draining = True
        deadline = time.monotonic() + timeout
        running = [j for j in self._jobs.values() if j.task is not None and not j.task.done()]
        log_event("draining", running=sum(1 for j in running if j.status == RUNNING),
                  queued=sum(1 for j in running if j.status == QUEUED), timeout_s=timeout)
        for job in running:
            if job.status == QUEUED and job.pipeline is None:
                assert job.task is not None
                job.task.cancel()  # stays queued in job.json; resumed on the next start
            elif job.pipeline is not None:
                # Let the pipeline stop by itself a little before our hard deadline.
                job.pipeline.drain_timeout_s = max(0.1, timeout - 1.0)
                job.pipeline.request_drain()
        tasks = [j.task for j in running if j.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            if pending:
                log_event("drain_deadline", level="warning", pending=len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5.0)
        for job in self._jobs.values():
            if job.status == RUNNING:
                self._detach(job)
                self._end(job, INTERRUPTED)

    # ------------------------------------------------------------------ metrics
    def metrics_view(self) -> JobsView:
        totals = Totals()
        totals.add(self._retired)
        by_status: Counter[str] = Counter()
        for job in self._jobs.values():
            by_status[job.status] += 1
            if job.pipeline is not None and job.baseline is not None:
                totals.add(pipeline_totals(job.pipeline, job.baseline))
        return JobsView(totals, dict(by_status), by_status[QUEUED], self.draining)
