"""`selfinstruct generate`: run the Self-Instruct pipeline into a run directory."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from service.commands._options import add_generate_options, config_from_args
from service.errors import ConfigError
from service.generate.orchestrator import print_summary, run_generate, show_tasks

if TYPE_CHECKING:
    from service.generate.pipeline import Pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generate_options(parser)
    parser.add_argument("--show", type=int, default=2, metavar="N", help="finished tasks to print at the end (default 2)")
    parser.add_argument(
        "--decontaminate", nargs="*", type=Path, metavar="FILE",
        help="reject tasks sharing a 13-gram (normalised tokens) with these evaluation sets "
             "(reason contamination, with the matching id); no FILE: the bundled 252 "
             "user-oriented tasks of the Self-Instruct paper",
    )
    parser.add_argument("--decontaminate-field", action="append", default=[], metavar="NAME",
                        help="text field of the --decontaminate files (repeatable; default: "
                             "the paper's format)")


def usage_line(out: Path) -> str:
    """Tokens, the cached share and cost of this run (from run.json), for the report."""
    from service.rundir.store import read_run_json

    usage = read_run_json(out).get("usage") or {}
    tokens = usage.get("tokens") or {}
    share = float(tokens.get("cached_share") or 0.0)
    return (f"tokens: {int(tokens.get('total') or 0):,} ({int(tokens.get('prompt') or 0):,} "
            f"prompt, {share:.0%} of it cached; {int(tokens.get('completion') or 0):,} "
            f"completion), cost ${float(usage.get('cost_usd') or 0.0):.4f}")


def run(args: argparse.Namespace) -> int:
    config, _ = config_from_args(args)
    from service.generate.llm_backend import install_uvloop

    install_uvloop()
    on_pipeline = None
    if args.decontaminate is not None and config.mode == "batch":
        raise ConfigError("--decontaminate checks each task as the online pipeline writes it; "
                          "with --mode batch run `selfinstruct decontaminate RUN_DIR --drop` "
                          "after the run (then resume it to refill the target)")
    if args.decontaminate is not None:
        from service.decontam.check import build_index, decontaminate_while_generating
        from service.decontam.evalsets import DEFAULT_EVAL_SET

        index, sources = build_index(args.decontaminate or [DEFAULT_EVAL_SET],
                                     fields=args.decontaminate_field)

        def on_pipeline(pipeline: Pipeline) -> None:
            pipeline.checks.add(decontaminate_while_generating(pipeline.run_dir, index, sources))

    result = asyncio.run(run_generate(config, on_pipeline=on_pipeline))
    print_summary(result, examples=show_tasks(result.out, args.show) if args.show > 0 else ())
    print(usage_line(result.out), flush=True)
    if result.summary.status == "interrupted":
        return 130
    if result.summary.status == "budget":
        print("stopped: budget reached; re-run with a larger budget to continue", flush=True)
    return 0
