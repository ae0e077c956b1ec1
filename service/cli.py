"""Thin command line: parses arguments and hands them to the library.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported lazily so ``selfinstruct --help`` stays fast
and a command's heavy dependencies load only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from service import __version__
from service.errors import SelfInstructError
from service.secret import safe_url


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("service.commands.generate", "run the Self-Instruct pipeline into a run directory"),
    "plan": ("service.commands.plan", "estimate requests, tokens, cost and wall time of a run"),
    "dedup": ("service.commands.dedup", "filter instructions against a growing ROUGE-L pool"),
    "export": ("service.commands.export", "turn a run directory into fine-tuning files"),
    "verify": ("service.commands.verify", "check a run directory's invariants"),
    "simulate": ("service.commands.simulate", "run the simulated OpenAI-compatible server"),
    "bench": ("service.commands.bench", "load-test an OpenAI-compatible endpoint"),
    "serve": ("service.commands.serve", "long-lived worker: HTTP job API, /healthz, /metrics"),
    "config": ("service.commands.config", "print the effective configuration (secrets redacted)"),
    "seeds": ("service.commands.seeds", "validate and summarise a seed-task file"),
}


def _load(module_name: str) -> CommandModule | None:
    try:
        return cast(CommandModule, importlib.import_module(module_name))
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # command not built yet
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfinstruct",
        description="Async, high-throughput Self-Instruct data generation.",
    )
    parser.add_argument("--version", action="version", version=f"selfinstruct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = getattr(args, "_module", None)
    if module is None:
        parser.print_help()
        return 2
    try:
        return int(module.run(args))
    except SelfInstructError as exc:
        print(f"selfinstruct {args.command}: error: {safe_url(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"selfinstruct {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
