"""`selfinstruct eval`: run a model over an evaluation set; `eval compare SRC...`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from service.commands._options import Ranged, add_range_help
from service.config import load_config
from service.decontam.evalsets import DEFAULT_EVAL_SET
from service.errors import ConfigError
from service.evaluate.runner import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE

COMPARE = "compare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "compare", nargs="*", metavar="compare SRC",
        help="`eval compare SRC...`: show models' responses side by side (SRC: an eval "
             "--out directory or a predictions JSONL file in the paper's format)",
    )
    parser.add_argument("--tasks", type=Path, default=DEFAULT_EVAL_SET, metavar="FILE",
                        help="evaluation set: id, instruction, instances (default: the bundled "
                             "252 user-oriented tasks)")
    parser.add_argument("--base-url", metavar="URL", help="OpenAI-compatible endpoint (…/v1)")
    parser.add_argument("--model", metavar="NAME", help="model name sent to the endpoint")
    parser.add_argument("--api", choices=["chat", "completions"], default="chat",
                        help="which API to call (default chat)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (predictions.jsonl, eval.json); resumed if present")
    parser.add_argument("--max-tokens", type=Ranged("eval_max_tokens"), default=DEFAULT_MAX_TOKENS, metavar="N",
                        help=f"response length cap (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--temperature", type=Ranged("eval_temperature", float), default=DEFAULT_TEMPERATURE, metavar="T",
                        help=f"sampling temperature (default {DEFAULT_TEMPERATURE})")
    parser.add_argument("--rpm", type=Ranged("rpm", float), metavar="N", help="requests per minute to stay under")
    parser.add_argument("--tpm", type=Ranged("tpm", float), metavar="N", help="tokens per minute to stay under")
    parser.add_argument("--max-in-flight", metavar="N|auto",
                        help="concurrent requests cap, or auto (as generate's)")
    parser.add_argument("--request-timeout", type=Ranged("request_timeout", float), metavar="S", help="per-request timeout")
    parser.add_argument("--limit", type=Ranged("report_top"), default=5, metavar="N",
                        help="compare: items shown (default 5)")
    parser.add_argument("--id", action="append", default=[], metavar="ID",
                        help="compare: show this task id (repeatable)")
    parser.add_argument("--json", action="store_true", help="compare: the per-model table as JSON")
    add_range_help(parser)


def _compare(args: argparse.Namespace, sources: list[Path]) -> int:
    from service.evaluate.compare import model_table, side_by_side
    from service.evaluate.predictions import load_sources

    if not sources:
        raise ConfigError("eval compare needs at least one SRC (eval --out directory or predictions file)")
    models = load_sources(sources, args.tasks)
    rows = model_table(models)
    if args.json:
        print(orjson.dumps({"models": rows}, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(side_by_side(models, ids=args.id, limit=args.limit))
    print("| model | responses | empty | ROUGE-L vs reference (mean) | scored |")
    print("|---|---|---|---|---|")
    for r in rows:
        mean = "–" if r["rouge_l_mean"] is None else f"{r['rouge_l_mean']:.4f}"
        print(f"| {r['model']} | {r['responses']} | {r['empty']} | {mean} | {r['scored']} |")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.compare:
        if args.compare[0] != COMPARE:
            raise ConfigError(f"unknown eval action {args.compare[0]!r}: expected `eval compare SRC...` "
                              "or `eval --tasks FILE --base-url URL --model NAME --out DIR`")
        return _compare(args, [Path(p) for p in args.compare[1:]])
    if args.base_url is None or args.model is None or args.out is None:
        raise ConfigError("eval needs --base-url, --model and --out")
    from service.evaluate.runner import EvalSettings, run_eval
    from service.llm.loop import install_uvloop

    flags = {"base_url": args.base_url, "model": args.model, "api": args.api, "rpm": args.rpm,
             "tpm": args.tpm, "max_in_flight": args.max_in_flight,
             "request_timeout": args.request_timeout, "out": args.out, "quiet": True}
    config, _ = load_config(flags)
    settings = EvalSettings(args.tasks, args.out, args.max_tokens, args.temperature)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True)

    install_uvloop()
    result = asyncio.run(run_eval(config, settings, on_item=progress))
    mean = "–" if result.rouge_l is None else f"{result.rouge_l:.4f}"
    print(f"\n{result.done}/{result.items} responses in {result.out} ({result.new} new, "
          f"{result.failed} failed: re-run to retry); ROUGE-L vs reference {mean} "
          f"over {result.scored}")
    return 0 if result.done == result.items else 1
