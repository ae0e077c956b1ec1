"""`selfinstruct eval-summary RATINGS... --mapping FILE`: ratings into a chart and a table."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from service.evaluate.ratings import chart, read_key, summarize_ratings, table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ratings", nargs="+", type=Path, metavar="RATINGS",
                        help="ratings files downloaded from the rating page (one per rater)")
    parser.add_argument("--mapping", type=Path, required=True, metavar="FILE",
                        help="the sheet's mapping of items to models (PAGE.mapping.json, written by eval-sheet)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write ratings.png, ratings.md and ratings.json here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    key = read_key(args.mapping)
    summary = summarize_ratings(args.ratings, key)
    text = table(summary)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ratings.png").write_bytes(chart(summary))
        (args.out / "ratings.md").write_text(text + "\n")
        (args.out / "ratings.json").write_bytes(
            orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(text)
        if args.out is not None:
            print(f"chart: {args.out / 'ratings.png'}")
    return 0
