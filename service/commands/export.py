"""`selfinstruct export`: turn a run directory into fine-tuning files."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.errors import ConfigError, InputError
from service.generate.compat import COMPAT_MODES
from service.rundir.export import DEFAULT_FORMAT, EXPORT_DIR, FORMATS, export_run

HF = "hf"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, metavar="DIR", help="run directory")
    parser.add_argument(
        "--format", choices=[*FORMATS, HF], default=None,
        help=f"output format (default {DEFAULT_FORMAT}; prompt-completion with --compat "
             f"reference); {HF}: a Hugging Face dataset folder with a dataset card",
    )
    parser.add_argument(
        "--compat", choices=COMPAT_MODES, default="default",
        help="reference: prepare_for_finetuning.py's file exactly (50%% of inputs lose their "
             "field name, duplicate pairs dropped, shuffled; seeded by --seed)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE",
        help=f"output file (default DIR/export/<format>.jsonl); with --format {HF} a folder "
             f"(default DIR/export/{HF})",
    )
    parser.add_argument(
        "--include-seeds", "--include-seed-tasks", dest="include_seeds", action="store_true",
        help="also export the seed tasks recorded in the run directory (first; after the "
             "generated tasks with --compat reference, as the reference does)",
    )
    parser.add_argument("--seed", type=int, default=0,
                        help="prompt-completion: seeds the choice of templates (default 0)")
    parser.add_argument(
        "--redis", metavar="URL",
        help="a distributed run: first gather its seeds, admissions and tasks into DIR",
    )
    parser.add_argument("--run-id", metavar="ID", help="the distributed run's id (with --redis)")


def run(args: argparse.Namespace) -> int:
    out: Path | None = args.out
    if args.format == HF:
        if args.compat == "reference":
            raise ConfigError(f"--compat reference writes the prompt-completion format, not {HF}")
        return _export_hf(args, out)
    if out is not None and out.is_dir():
        raise InputError(str(out), None, None, "is a directory; --out takes a file name")
    if args.redis is not None:
        if not args.run_id:
            raise ConfigError("--redis needs --run-id (the distributed run to gather)")
        from service.config import load_config
        from service.generate.distributed import gather_run

        load_config({"redis": args.redis, "run_id": args.run_id}, env={})  # validates both
        counts = gather_run(args.redis, args.run_id, args.run)
        print(f"gathered {counts['tasks']} tasks, {counts['instructions']} admissions and "
              f"{counts['seeds']} seeds of run '{args.run_id}' into {args.run}")
    fmt = args.format or ("prompt-completion" if args.compat == "reference" else DEFAULT_FORMAT)
    if args.compat == "reference" and fmt != "prompt-completion":
        raise ConfigError(f"--compat reference writes the prompt-completion format, not {fmt}")
    result = export_run(args.run, fmt, out, include_seeds=args.include_seeds,
                        seed=args.seed, compat=args.compat)
    print(f"exported {result.describe()}")
    return 0


def _export_hf(args: argparse.Namespace, out: Path | None) -> int:
    """The Hugging Face folder (data, card, plots); needs the `report` extra (matplotlib)."""
    if args.redis is not None:
        raise ConfigError(f"--format {HF} reads a local run directory: gather it first "
                          "(export --redis URL --run-id ID --run DIR) and then export")
    if out is not None and out.exists() and not out.is_dir():
        raise InputError(str(out), None, None, f"is a file; --format {HF} writes a folder")
    try:
        from service.report.hf import export_hf
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        raise ConfigError(f"--format {HF} needs matplotlib: pip install 'selfinstruct[report]'") from None
    folder = out if out is not None else args.run / EXPORT_DIR / HF
    result = export_hf(args.run, folder, include_seeds=args.include_seeds)
    print(f"exported {result.records} records and a dataset card -> {result.out} "
          "(datasets.load_dataset(DIR) loads it; set the card's license)")
    return 0
