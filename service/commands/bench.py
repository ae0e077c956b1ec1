"""`selfinstruct bench`: load-test an OpenAI-compatible endpoint through the client and
limiter `generate` uses; live progress on stderr, the report on stdout (``--json``: one
JSON object). The API key comes from OPENAI_API_KEY and is never printed."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import orjson

from service.bench.loadtest import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    BenchSettings,
    run_bench,
)
from service.bench.sweep import (
    DEFAULT_LEVEL_DURATION_S,
    DEFAULT_LEVELS,
    format_sweep,
    parse_levels,
    plot_sweep,
    run_sweep,
)
from service.commands._options import Ranged, add_range_help
from service.errors import ConfigError
from service.llm import Secret, install_uvloop
from service.llm.constants import DEFAULT_MAX_ATTEMPTS, DEFAULT_REQUEST_TIMEOUT_S
from service.progress import Progress

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", metavar="URL",
                        help=f"endpoint ending in /v1 (default ${BASE_URL_ENV}; none: the "
                             "embedded local model)")
    parser.add_argument("--model", metavar="NAME", help="model name sent to the endpoint")
    parser.add_argument("--api", choices=["chat", "completions"], default="completions",
                        help="which API to call (default completions)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=Ranged("bench_duration", float), metavar="SECONDS",
                        help="send for this long (default 10 s)")
    amount.add_argument("--requests", type=Ranged("bench_requests"), metavar="N", help="send N calls, then stop")
    parser.add_argument("--concurrency", type=Ranged("max_in_flight", words=("auto",)), default=DEFAULT_CONCURRENCY,
                        metavar="N|auto",
                        help=f"calls in flight at most (default {DEFAULT_CONCURRENCY}); auto: "
                             "the adaptive limit (found from latency, as generate "
                             "--max-in-flight auto)")
    parser.add_argument("--rpm", type=Ranged("rpm", float), metavar="N", help="requests per minute to stay under")
    parser.add_argument("--tpm", type=Ranged("tpm", float), metavar="N", help="tokens per minute to stay under")
    parser.add_argument("--max-tokens", type=Ranged("max_tokens"), default=DEFAULT_MAX_TOKENS, metavar="N",
                        help=f"max_tokens of each request (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--prompt-tokens", type=Ranged("bench_prompt_tokens"), default=DEFAULT_PROMPT_TOKENS,
                        metavar="N",
                        help=f"approximate prompt length (default {DEFAULT_PROMPT_TOKENS})")
    parser.add_argument("--prompts-per-request", type=Ranged("prompts_per_request"), default=1, metavar="N",
                        help="completions API: send N prompts in one request (default 1)")
    parser.add_argument("--stream", action="store_true",
                        help="stream responses (measures time to first token)")
    parser.add_argument("--max-attempts", type=Ranged("max_attempts"), default=DEFAULT_MAX_ATTEMPTS,
                        metavar="N",
                        help=f"tries per call, as generate (default {DEFAULT_MAX_ATTEMPTS}; "
                             "1: no retries)")
    parser.add_argument("--request-timeout", type=Ranged("request_timeout", float), default=DEFAULT_REQUEST_TIMEOUT_S,
                        metavar="SECONDS",
                        help=f"per-request timeout (default {DEFAULT_REQUEST_TIMEOUT_S:g})")
    parser.add_argument("--seed", type=Ranged("seed"), default=0, metavar="INT", help="request seed")
    parser.add_argument("--sweep", action="store_true",
                        help="step the concurrency through --levels (each for --duration, "
                             f"default {DEFAULT_LEVEL_DURATION_S:g} s) and report throughput "
                             "against latency, marking the knee")
    parser.add_argument("--levels", type=parse_levels, metavar="N,N,...",
                        help="sweep: concurrency levels (default "
                             + ",".join(map(str, DEFAULT_LEVELS)) + ")")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="sweep: write a plot (needs matplotlib: the report extra)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no live progress")
    add_range_help(parser)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    key = os.environ.get(API_KEY_ENV) or None
    base_url = args.base_url or os.environ.get(BASE_URL_ENV) or None
    return BenchSettings(
        base_url=base_url,
        api_key=Secret(key) if key else None,
        model=args.model,
        api=args.api,
        duration_s=args.duration,
        requests=args.requests,
        concurrency=args.concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        max_tokens=args.max_tokens,
        prompt_tokens=args.prompt_tokens,
        prompts_per_request=args.prompts_per_request,
        stream=args.stream,
        max_attempts=args.max_attempts,
        request_timeout_s=args.request_timeout,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "sweep", False):
        return run_sweep_command(args)
    if getattr(args, "levels", None) or getattr(args, "plot", None):
        raise ConfigError("--levels and --plot need --sweep")
    settings = settings_from_args(args)
    if settings.api == "chat" and settings.prompts_per_request != 1:
        raise ConfigError("--prompts-per-request needs --api completions")
    install_uvloop()
    progress = Progress(quiet=args.quiet)
    report = asyncio.run(run_bench(settings, progress=progress, handle_signals=True))
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
    else:
        sys.stdout.write(report.format_text() + "\n")
    sys.stdout.flush()
    if report.aborted == "interrupted":
        return 130
    return 0 if report.ok > 0 else 1


def run_sweep_command(args: argparse.Namespace) -> int:
    if args.requests is not None:
        raise ConfigError("--sweep runs each level for --duration, not --requests")
    if args.duration is None:
        args.duration = DEFAULT_LEVEL_DURATION_S
    settings = settings_from_args(args)
    install_uvloop()
    progress = Progress(quiet=args.quiet)
    result = asyncio.run(run_sweep(settings, args.levels or DEFAULT_LEVELS, progress=progress))
    if args.plot is not None:
        plot_sweep(result, args.plot)
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_dict()).decode() + "\n")
    else:
        sys.stdout.write(format_sweep(result) + "\n")
    sys.stdout.flush()
    return 0 if any(p.ok for p in result.points) else 1
