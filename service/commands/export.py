"""`selfinstruct export`: turn a run directory into fine-tuning files."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.errors import InputError
from service.export import DEFAULT_FORMAT, FORMATS, export_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, metavar="DIR", help="run directory")
    parser.add_argument(
        "--format", choices=list(FORMATS), default=DEFAULT_FORMAT,
        help=f"output format (default {DEFAULT_FORMAT})",
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE",
        help="output file (default DIR/export/<format>.jsonl)",
    )
    parser.add_argument(
        "--include-seeds", action="store_true",
        help="also export the seed tasks recorded in the run directory (first)",
    )


def run(args: argparse.Namespace) -> int:
    out: Path | None = args.out
    if out is not None and out.is_dir():
        raise InputError(str(out), None, None, "is a directory; --out takes a file name")
    result = export_run(args.run, args.format, out, include_seeds=args.include_seeds)
    print(f"exported {result.describe()}")
    return 0
