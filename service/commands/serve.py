"""`selfinstruct serve`: long-lived worker with an HTTP job API, /healthz and /metrics.

The bearer token is read from an environment variable (``--token-env``, default
``SELFINSTRUCT_SERVE_TOKEN``), never from a flag that would show in process lists. Jobs
take their API key from the request body (kept in memory only) or from this process's
``OPENAI_API_KEY``; resumed jobs after a restart use the environment's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import Secret
from service.errors import ConfigError, SelfInstructError

if TYPE_CHECKING:  # the module itself is imported lazily: `--help` needs no aiohttp
    from service.serve.app import ServeSettings

DEFAULT_TOKEN_ENV = "SELFINSTRUCT_SERVE_TOKEN"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --allow-remote)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port, logged at start)")
    parser.add_argument("--state-dir", type=Path, default=Path("serve-state"), metavar="DIR", help="jobs and their run directories (default ./serve-state)")
    parser.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="NAME", help=f"environment variable holding the bearer token (default {DEFAULT_TOKEN_ENV}); unset or empty: no auth")
    parser.add_argument("--max-jobs", type=int, default=1, metavar="N", help="jobs run at once; others wait queued (default 1)")
    parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="S", help="on SIGTERM, seconds to let running jobs finish in-flight work (default 30)")
    parser.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines on stderr (default json)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (requires a token)")
    parser.add_argument("--redis", metavar="URL", help="jobs join distributed runs through this Redis (run_id from the job, else the job id); submit the same run_id to several workers to share one run")


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ServeSettings:
    from service.serve.app import ServeSettings

    token_env = str(args.token_env)
    if not _ENV_NAME.fullmatch(token_env):
        raise ConfigError(f"--token-env: expected an environment variable name, got {token_env!r}")
    raw = env.get(token_env, "")
    token = Secret(raw.strip()) if raw.strip() else None
    settings = ServeSettings(
        host=str(args.host),
        port=int(args.port),
        state_dir=Path(args.state_dir).expanduser(),
        token=token,
        max_jobs=int(args.max_jobs),
        drain_timeout_s=float(args.drain_timeout),
        allow_remote=bool(args.allow_remote),
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

