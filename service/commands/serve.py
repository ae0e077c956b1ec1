"""`selfinstruct serve`: long-lived worker with an HTTP job API, /healthz and /metrics.

The bearer token is read from an environment variable (``--token-env``, default
``SELFINSTRUCT_SERVE_TOKEN``), never from a flag that would show in process lists; with
none set, one is generated at the first start and kept in ``STATE/token`` (0600).
``--no-auth`` turns auth off, for tests or one user on a loopback-only worker.
Jobs take their API key from the request body (kept in memory only) or, for the
endpoints the operator allowed (``--allow-endpoint``, default this process's base URL),
from this process's ``OPENAI_API_KEY``. Every limit has a flag, a range and a default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from service.commands._options import add_range_help
from service.config import Secret, load_config
from service.errors import ConfigError, SelfInstructError
from service.serve.limits import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_KEPT,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_SSE_STREAMS,
    DEFAULT_RETENTION_S,
)

if TYPE_CHECKING:  # the module itself is imported lazily: `--help` needs no aiohttp
    from service.serve.app import ServeSettings

DEFAULT_TOKEN_ENV = "SELFINSTRUCT_SERVE_TOKEN"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --allow-remote)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port, logged at start)")
    parser.add_argument("--state-dir", type=Path, default=Path("serve-state"), metavar="DIR", help="jobs and their run directories (default ./serve-state)")
    parser.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="NAME", help=f"environment variable holding the bearer token (default {DEFAULT_TOKEN_ENV}); unset or empty: a token generated once into STATE/token (mode 0600)")
    parser.add_argument("--max-jobs", dest="max_jobs", type=int, default=DEFAULT_MAX_JOBS, metavar="N", help=f"jobs run at once; others wait queued (default {DEFAULT_MAX_JOBS})")
    parser.add_argument("--max-queued", dest="max_queued_jobs", type=int, default=DEFAULT_MAX_QUEUED, metavar="N", help=f"jobs waiting to run; past it POST /v1/jobs gets 429 (default {DEFAULT_MAX_QUEUED})")
    parser.add_argument("--job-retention", dest="job_retention_s", type=float, default=DEFAULT_RETENTION_S, metavar="S", help=f"seconds an ended job (and its run directory) is kept before it is deleted (default {DEFAULT_RETENTION_S:.0f}: 7 days)")
    parser.add_argument("--max-kept-jobs", dest="max_kept_jobs", type=int, default=DEFAULT_MAX_KEPT, metavar="N", help=f"ended jobs kept; the oldest beyond it are deleted (default {DEFAULT_MAX_KEPT})")
    parser.add_argument("--max-sse-streams", dest="max_sse_streams", type=int, default=DEFAULT_MAX_SSE_STREAMS, metavar="N", help=f"event streams open at once; past it 503 (default {DEFAULT_MAX_SSE_STREAMS})")
    parser.add_argument("--drain-timeout", dest="drain_timeout_s", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="S", help=f"on SIGTERM, seconds to let running jobs finish in-flight work (default {DEFAULT_DRAIN_TIMEOUT_S:g})")
    parser.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines on stderr (default json)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (requires a token)")
    parser.add_argument("--no-auth", action="store_true", help="no bearer token (tests, or one user on this machine); loopback --host only")
    parser.add_argument("--allow-host", dest="allow_hosts", action="append", default=[], metavar="NAME", help="another name the Host header may carry (e.g. behind a proxy); repeatable")
    parser.add_argument("--allow-endpoint", dest="allow_endpoints", action="append", default=[], metavar="URL", help="an endpoint this worker's OPENAI_API_KEY may be sent to (default: its own OPENAI_BASE_URL only); other endpoints need the job's own api_key; repeatable")
    parser.add_argument("--restrict-endpoints", action="store_true", help="jobs may call only the --allow-endpoint endpoints (or the worker's own base URL), with any key")
    parser.add_argument("--max-body-bytes", dest="max_body_bytes", type=int, default=DEFAULT_MAX_BODY, metavar="N", help=f"largest request body; past it 413 (default {DEFAULT_MAX_BODY})")
    parser.add_argument("--redis", metavar="URL", help="jobs run as distributed runs through this Redis (jobs cannot choose another); each job is a run of its own (its job id) unless it names one of --allow-run-id")
    parser.add_argument("--allow-run-id", dest="allow_run_ids", action="append", default=[], metavar="ID", help="a distributed run jobs may join by naming it as run_id (submit it to several workers to share one run); repeatable")
    add_range_help(parser)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ServeSettings:
    from service.serve.app import ServeSettings

    token_env = str(args.token_env)
    if not _ENV_NAME.fullmatch(token_env):
        raise ConfigError(f"--token-env: expected an environment variable name, got {token_env!r}")
    raw = env.get(token_env, "")
    token = Secret(raw.strip()) if raw.strip() else None
    if args.redis:
        load_config({"redis": str(args.redis)}, env={})  # a bad URL fails now, not per job
    if args.allow_run_ids and not args.redis:
        raise ConfigError("--allow-run-id: only meaningful with --redis")
    settings = ServeSettings(
        host=str(args.host),
        port=int(args.port),
        state_dir=Path(args.state_dir).expanduser(),
        token=token,
        max_jobs=int(args.max_jobs),
        drain_timeout_s=float(args.drain_timeout_s),
        allow_remote=bool(args.allow_remote),
        no_auth=bool(args.no_auth),
        allow_hosts=tuple(args.allow_hosts),
        allow_endpoints=tuple(args.allow_endpoints),
        restrict_endpoints=bool(args.restrict_endpoints),
        max_body_bytes=int(args.max_body_bytes),
        allow_run_ids=tuple(args.allow_run_ids),
        max_queued_jobs=int(args.max_queued_jobs),
        max_kept_jobs=int(args.max_kept_jobs),
        job_retention_s=float(args.job_retention_s),
        max_sse_streams=int(args.max_sse_streams),
    )
    settings.validate()
    return settings


def run(args: argparse.Namespace) -> int:
    from service.llm.loop import install_uvloop
    from service.serve.app import serve_until_signalled
    from service.serve.logs import configure_logging, log_event

    settings = settings_from_args(args, os.environ)
    env = dict(os.environ)
    if args.redis:
        env["SELFINSTRUCT_REDIS"] = str(args.redis)  # the layer under each job's options
    configure_logging("json" if args.log_format == "json" else "text")
    install_uvloop()
    try:
        return asyncio.run(serve_until_signalled(settings, env=env))
    except SelfInstructError:
        raise  # the CLI prints it and exits with its code
    except Exception as exc:
        log_event("fatal", level="error", error=f"{type(exc).__name__}: {exc}")
        raise

