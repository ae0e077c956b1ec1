"""`selfinstruct eval-sheet SRC... --out page.html`: a blind A-D rating page."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.commands._options import Ranged, add_range_help
from service.decontam.evalsets import DEFAULT_EVAL_SET
from service.evaluate.predictions import load_sources
from service.evaluate.sheet import DEFAULT_SHEET_SEED, write_sheet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", type=Path, metavar="SRC",
                        help="eval --out directories or predictions JSONL files (paper format)")
    parser.add_argument("--out", type=Path, required=True, metavar="PAGE",
                        help="the page to write (its key goes beside it: PAGE.mapping.json)")
    parser.add_argument("--tasks", type=Path, default=DEFAULT_EVAL_SET, metavar="FILE",
                        help="the evaluation set predictions files are matched to "
                             "(default: the bundled 252 user-oriented tasks)")
    parser.add_argument("--limit", type=Ranged("target"), metavar="N", help="only the first N tasks")
    parser.add_argument("--seed", type=Ranged("seed"), default=DEFAULT_SHEET_SEED,
                        help=f"shuffle seed (default {DEFAULT_SHEET_SEED})")
    parser.add_argument("--title", default="Rate the responses", help="page title")
    add_range_help(parser)


def run(args: argparse.Namespace) -> int:
    sheet = write_sheet(load_sources(args.sources, args.tasks), args.out, seed=args.seed,
                        limit=args.limit, title=args.title)
    print(f"{sheet.items} responses of {len(sheet.models)} models (hidden, shuffled): {sheet.page}")
    print(f"mapping of items to models (keep it from the raters; eval-summary needs it): {sheet.key}")
    return 0
