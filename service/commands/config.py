"""`selfinstruct config`: print the effective configuration, secrets redacted."""

from __future__ import annotations

import argparse

import orjson

from service.commands._options import add_generate_options, config_from_args
from service.config import render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generate_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of TOML")


def run(args: argparse.Namespace) -> int:
    config, sources = config_from_args(args)
    if args.json:
        print(orjson.dumps(config.redacted(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(config, sources), end="")
    return 0
