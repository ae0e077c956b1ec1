"""`selfinstruct seeds`: validate a seed-task file and print what it holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.rundir.seeds import default_seed_path, load_seed_tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed-tasks", type=Path, metavar="FILE",
        help="seed tasks: JSONL, a JSON array or plain text lines (default: the project's own)",
    )
    parser.add_argument(
        "--check", action="store_true",
        help="only validate: print one line and exit 0, or the error and exit 2",
    )


def run(args: argparse.Namespace) -> int:
    path: Path = args.seed_tasks if args.seed_tasks is not None else default_seed_path()
    tasks = load_seed_tasks(path)  # InputError (file:line: field ...) -> exit 2 via the CLI
    if args.check:
        print(f"{path}: ok, {len(tasks)} seed tasks")
        return 0
    classification = sum(1 for t in tasks if t.is_classification)
    instances = sum(len(t.instances) for t in tasks)
    with_input = sum(1 for t in tasks for i in t.instances if i.input.strip())
    without_instances = sum(1 for t in tasks if not t.instances)
    print(f"seed tasks:      {path}")
    print(f"tasks:           {len(tasks)}")
    print(f"classification:  {classification}")
    print(f"instances:       {instances} ({with_input} with an input)")
    if without_instances:
        print(f"no instances:    {without_instances} (instruction only)")
    return 0
