"""`selfinstruct simulate`: run the simulated OpenAI-compatible endpoint until stopped.

Prints its base URL (ending in /v1) on the first line of stdout, serves until SIGINT or
SIGTERM, prints what it served to stderr and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

import orjson

from service.llm.loop import install_uvloop
from service.simulator.batch import BatchSimSettings
from service.simulator.server import SimulatedServer
from service.simulator.settings import SimSettings

API_KEY_ENV = "SIMULATOR_API_KEY"

# flag dest -> SimSettings field (the flags are named like the fields)
_FIELDS: dict[str, type] = {
    "host": str, "port": int, "rpm": float, "tpm": float, "burst_seconds": float,
    "latency_ms": float, "jitter": float, "error_rate": float, "reset_rate": float,
    "garbage_rate": float, "hang_rate": float, "hang_seconds": float, "truncate_rate": float,
    "duplicate_rate": float, "bad_item_rate": float, "context_tokens": int, "model": str,
    "seed": int, "capacity": int, "batch_slowdown": float, "queue_limit": int,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimSettings()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--rpm", type=float, metavar="N", help="requests per minute before 429 (default: unlimited)")
    parser.add_argument("--tpm", type=float, metavar="N", help="tokens per minute before 429; a request weighs its prompt + max_tokens x choices (default: unlimited)")
    parser.add_argument("--burst-seconds", type=float, metavar="S", default=d.burst_seconds, help=f"bucket size in seconds of rate (default {d.burst_seconds})")
    parser.add_argument("--latency-ms", type=float, metavar="N", default=d.latency_ms, help=f"mean latency (default {d.latency_ms:g})")
    parser.add_argument("--jitter", type=float, metavar="F", default=d.jitter, help=f"latency x uniform(1-F, 1+F) (default {d.jitter:g})")
    parser.add_argument("--error-rate", type=float, metavar="F", default=0.0, help="share of requests answered 500/503")
    parser.add_argument("--reset-rate", type=float, metavar="F", default=0.0, help="share of connections reset without an answer")
    parser.add_argument("--garbage-rate", type=float, metavar="F", default=0.0, help="share answered 200 with a body that is not JSON")
    parser.add_argument("--hang-rate", type=float, metavar="F", default=0.0, help="share never answered (for --hang-seconds)")
    parser.add_argument("--hang-seconds", type=float, metavar="S", default=d.hang_seconds, help=f"how long a hang lasts (default {d.hang_seconds:g})")
    parser.add_argument("--truncate-rate", type=float, metavar="F", default=0.0, help='share answered with cut text and finish_reason "length"')
    parser.add_argument("--duplicate-rate", type=float, metavar="F", default=0.0, help="share of generated instructions that are near-duplicates")
    parser.add_argument("--bad-item-rate", type=float, metavar="F", default=0.0, help="share of generated instructions the filters must drop")
    parser.add_argument("--context-tokens", type=int, metavar="N", default=d.context_tokens, help=f"prompt + max_tokens above this: 400 context_length_exceeded (default {d.context_tokens})")
    parser.add_argument("--model", default=d.model, help=f"model name listed by /v1/models (default {d.model})")
    parser.add_argument("--seed", type=int, metavar="INT", default=0, help="makes answers, faults and latency repeatable (default 0)")
    parser.add_argument("--capacity", type=int, metavar="N", help="serve at most N requests together (a self-hosted server: no 429s, a FIFO queue; default: unlimited)")
    parser.add_argument("--batch-slowdown", type=float, metavar="F", default=d.batch_slowdown, help=f"with --capacity: a full batch is 1+F times slower than one request (default {d.batch_slowdown:g})")
    parser.add_argument("--queue-limit", type=int, metavar="N", help="with --capacity: answer 503 when N requests already wait (default: no limit)")
    parser.add_argument("--no-ratelimit-headers", dest="ratelimit_headers", action="store_false", help="send no x-ratelimit-* headers: a 429 with Retry-After is the only sign of the limits")
    b = BatchSimSettings()
    parser.add_argument("--batch-api-turnaround", type=float, metavar="S", default=b.turnaround_s, help=f"Batch API (/v1/batches): seconds from creating a batch to its end (default {b.turnaround_s:g})")
    parser.add_argument("--batch-api-failure-rate", type=float, metavar="F", default=0.0, help="Batch API: share of lines answered with a 500 in the error file")
    parser.add_argument("--batch-api-expire-rate", type=float, metavar="F", default=0.0, help="Batch API: share of batches that expire with part of their lines answered")
    parser.add_argument("--require-api-key", action="store_true", help=f"demand 'Authorization: Bearer <key>' with the key from ${API_KEY_ENV} (or $OPENAI_API_KEY)")


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    values: dict[str, Any] = {name: getattr(args, name) for name in _FIELDS
                              if getattr(args, name, None) is not None}
    values["ratelimit_headers"] = getattr(args, "ratelimit_headers", True)
    if getattr(args, "require_api_key", False):
        key = os.environ.get(API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ValueError(f"--require-api-key needs ${API_KEY_ENV} or $OPENAI_API_KEY")
        values["api_key"] = key
    return SimSettings(**values)


def batch_settings_from_args(args: argparse.Namespace) -> BatchSimSettings:
    return BatchSimSettings(
        turnaround_s=getattr(args, "batch_api_turnaround", BatchSimSettings.turnaround_s),
        line_failure_rate=getattr(args, "batch_api_failure_rate", 0.0),
        expire_rate=getattr(args, "batch_api_expire_rate", 0.0),
        seed=getattr(args, "seed", 0) or 0)


async def serve(settings: SimSettings, batch: BatchSimSettings | None = None) -> dict[str, Any]:
    """Serve until SIGINT/SIGTERM; return the final stats."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    try:
        async with SimulatedServer(settings, batch=batch) as sim:
            print(sim.base_url, flush=True)
            print(f"simulated endpoint ready at {sim.base_url} (model {settings.model!r}); "
                  "Ctrl-C to stop", file=sys.stderr, flush=True)
            await stop.wait()
            return sim.stats()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        batch = batch_settings_from_args(args)
    except (ValueError, TypeError) as exc:
        print(f"selfinstruct simulate: error: {exc}", file=sys.stderr)
        return 2
    install_uvloop()
    try:
        stats = asyncio.run(serve(settings, batch))
    except OSError as exc:
        print(f"selfinstruct simulate: error: cannot listen on {settings.host}:{settings.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    summary = {k: stats[k] for k in ("requests", "by_status", "faults", "rate_limited", "tokens")}
    print(f"served: {orjson.dumps(summary).decode()}", file=sys.stderr)
    return 0
