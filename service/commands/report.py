"""`selfinstruct report RUN_DIR`: an HTML page with plots and summary.json of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.commands._options import Ranged, add_range_help
from service.errors import ConfigError
from service.report.summary import DEFAULT_OVERLAP_SAMPLE, DEFAULT_TOP, ReportOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where report.html and summary.json go (default RUN_DIR/report)")
    parser.add_argument(
        "--overlap-sample", type=Ranged("report_overlap_sample"), default=DEFAULT_OVERLAP_SAMPLE, metavar="N",
        help="admitted instructions (evenly spaced) whose ROUGE-L to seeds and earlier "
             f"instructions is measured (default {DEFAULT_OVERLAP_SAMPLE:,}; 0 skips it)",
    )
    parser.add_argument("--top", type=Ranged("report_top"), default=DEFAULT_TOP, metavar="N",
                        help=f"verbs and verb-object pairs listed (default {DEFAULT_TOP})")
    add_range_help(parser)


def run(args: argparse.Namespace) -> int:
    try:  # matplotlib is an optional extra: load it only when a report is made
        from service.report.page import build_report
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        raise ConfigError("report needs matplotlib: pip install 'selfinstruct[report]'") from None
    files = build_report(args.run_dir, args.out,
                         ReportOptions(overlap_sample=args.overlap_sample, top=args.top))
    counts = files.data["counts"]
    print(f"report of {counts['tasks']:,} tasks: {files.html}")
    print(f"numbers: {files.summary}")
    return 0
