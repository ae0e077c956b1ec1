"""`selfinstruct decontaminate RUN_DIR`: n-gram overlap of a run with evaluation sets."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from service.commands._options import Ranged, add_range_help
from service.decontam.check import build_index, drop_findings, record_result, scan_run
from service.decontam.evalsets import DEFAULT_EVAL_SET, DEFAULT_ID_FIELD
from service.decontam.ngrams import DEFAULT_MIN_TOKENS, DEFAULT_N
from service.rundir.locate import require_run_dir
from service.rundir.store import RunDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory")
    add_against_options(parser, "--against")
    parser.add_argument("--json", action="store_true",
                        help='print {"contaminated": [...], "checked": N} as JSON')
    parser.add_argument("--drop", action="store_true",
                        help="move contaminated tasks to rejected.jsonl (reason contamination)")


def add_against_options(parser: argparse.ArgumentParser, flag: str) -> None:
    """The evaluation-set options (shared with `generate --decontaminate`)."""
    parser.add_argument(
        flag, nargs="+", type=Path, metavar="FILE", dest="against",
        help="evaluation sets to protect (JSONL; default: the bundled 252 user-oriented "
             "tasks of the Self-Instruct paper)",
    )
    parser.add_argument(
        "--field", action="append", default=[], dest="eval_fields", metavar="NAME",
        help="text field of the evaluation files to index (repeatable; default: the "
             "paper's format: instruction and every instance's input and output)",
    )
    parser.add_argument("--id-field", default=DEFAULT_ID_FIELD, metavar="NAME",
                        help=f"the evaluation items' id field (default {DEFAULT_ID_FIELD})")
    parser.add_argument("--ngram", type=Ranged("ngram"), default=DEFAULT_N, metavar="N",
                        help=f"n-gram length in normalised tokens (default {DEFAULT_N})")
    parser.add_argument(
        "--min-tokens", type=Ranged("ngram_min_tokens"), default=DEFAULT_MIN_TOKENS, metavar="N",
        help=f"evaluation texts shorter than --ngram but at least this long are matched "
             f"whole; shorter ones are not checked (default {DEFAULT_MIN_TOKENS})",
    )
    add_range_help(parser)


def run(args: argparse.Namespace) -> int:
    root = require_run_dir(args.run_dir)
    files = list(args.against or [DEFAULT_EVAL_SET])
    index, sources = build_index(files, fields=args.eval_fields, id_field=args.id_field,
                                 n=args.ngram, min_tokens=args.min_tokens)
    with RunDir.open(root, create=False) as run_dir:
        result = scan_run(root, index)
        dropped = drop_findings(run_dir, result) if args.drop else 0
        record_result(run_dir, index, sources, result, dropped)
    if args.json:
        payload = {
            "contaminated": [
                {"task_id": f.task_id, "field": f.field, "instance": f.instance,
                 "match_id": f.match_id, "match_field": f.match_field, "ngram": f.ngram}
                for f in result.findings
            ],
            "checked": result.checked,
            "dropped": dropped,
        }
        print(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        return 0
    for f in result.findings:
        where = f.field if f.instance is None else f"instances[{f.instance}].{f.field}"
        print(f"{f.task_id}\t{where}\t{f.match_id} ({f.match_field})\t{f.ngram}")
    against = ", ".join(f"{Path(s.path).name} ({s.items} items)" for s in sources)
    print(f"checked {result.checked} tasks against {against}: "
          f"{len(result.task_ids)} contaminated ({len(result.findings)} matching texts)"
          + (f"; {dropped} moved to rejected.jsonl" if args.drop else ""))
    return 0
