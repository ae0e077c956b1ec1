"""Thin command line: parses arguments and hands them to the library.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; only the module of the command being run is imported, so
``selfinstruct --help`` stays fast and a command's heavy dependencies load only when it
runs (tests/test_cli.py checks ``sys.modules``).
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
    "templates": ("service.commands.templates", "import the paper's prompts from a checkout (templates file)"),
    "parse": ("service.commands.parse", "re-parse raw completions under a compat mode"),
    "report": ("service.commands.report", "HTML report with plots and summary.json of a run"),
    "decontaminate": ("service.commands.decontaminate",
                      "n-gram overlap of a run with evaluation sets; list or drop"),
    "eval": ("service.commands.eval", "run a model over an evaluation set; compare models"),
    "eval-sheet": ("service.commands.eval_sheet", "a blind A-D rating page for eval outputs"),
    "eval-summary": ("service.commands.eval_summary", "ratings into a chart and a table"),
}


def requested_command(argv: Sequence[str]) -> str | None:
    """The command named on the line, found before parsing: the top-level parser has only
    value-less options, so it is the first word that is not an option."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command is listed; only ``command``'s module is imported to add its flags,
    so ``--help`` and every other command's start-up stay free of its imports. Prefix
    matching is off everywhere: an abbreviation must never silently mean another flag."""
    parser = argparse.ArgumentParser(
        prog="selfinstruct",
        description="Async, high-throughput Self-Instruct data generation.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"selfinstruct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text,
                                        allow_abbrev=False)
        if name == command:
            load_command(name).add_arguments(command_parser)
    return parser


def load_command(name: str) -> CommandModule:
    return cast(CommandModule, importlib.import_module(COMMANDS[name][0]))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = requested_command(words)
    parser = build_parser(command)
    args = parser.parse_args(words)
    if command is None or args.command != command:
        parser.print_help()
        return 2
    try:
        return int(load_command(command).run(args))
    except SelfInstructError as exc:
        print(f"selfinstruct {command}: error: {safe_url(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"selfinstruct {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
