"""`selfinstruct plan`: estimate requests, tokens, cost and wall time before a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.commands._options import add_generate_options, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generate_options(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.add_argument("--from", dest="calibrate_from", type=Path, metavar="RUN_DIR",
                        help="calibrate yields and tokens per call from a finished run")


def run(args: argparse.Namespace) -> int:
    from service.generate.orchestrator import load_seeds
    from service.generate.plan import calibrate, estimate, render, to_json

    config, _ = config_from_args(args)
    calibration = calibrate(args.calibrate_from) if args.calibrate_from else None
    plan = estimate(config, load_seeds(config), calibration)
    print(to_json(plan) if args.json else render(plan))
    return 0
