"""`selfinstruct verify`: check a run directory's invariants; exit 1 listing the broken ones."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from service.rundir.verify import verify_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="DIR", help="run directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--brute", action="store_true",
        help="find near-duplicate pairs with a rouge-score brute force (slow; an independent check)",
    )


def run(args: argparse.Namespace) -> int:
    report = verify_run(args.run_dir, brute=args.brute)
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        for problem in report.problems:
            print(problem.describe())
        for note in report.notes:
            print(f"note: {note}")
        print(report.summary())
    return 0 if report.ok else 1
