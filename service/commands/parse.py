"""`selfinstruct parse`: re-parse raw completions under a compat mode.

Input lines are shaped like the reference's golden cases (``/work/shared/reference/golden``):
``{"text", "finish_reason"}`` for the instruction stage, plus ``"instruction"`` and
``"is_classification"`` for the instance stage; other fields are carried through. Each
line is written back with its result filled in: ``kept`` (the instructions kept, in
order, before the ROUGE-L filter) or ``instances`` (sorted ``[input, output]`` pairs,
before the random cap). Raw files from ``generate --keep-raw`` have this shape, and two
more stages read theirs: ``classify`` (``{"text"}`` -> ``is_classification``) and
``alpaca`` (``{"text", "finish_reason", "next_number"}`` -> ``tasks``: the kept
``[instruction, input, output]`` triples, in order).

The output is written to a temporary file and renamed into place, so a bad line stops
the command without touching an existing output file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.config import Config, FilterConfig, load_config
from service.errors import InputError
from service.generate.compat import COMPAT_MODES
from service.generate.processing import TextRules, kept_instructions, rules_for
from service.generate.stages.alpaca import alpaca_filter_config, parse_alpaca

STAGES = ("instructions", "instances", "classify", "alpaca")
MAX_LINE_BYTES = 16 * 1024 * 1024  # one completion; far above any max_tokens
MAX_LIST_NUMBER = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=STAGES, required=True,
                        help="which stage's completions the file holds")
    parser.add_argument("--compat", choices=COMPAT_MODES, default=None,
                        help="reference: the reference code's decisions exactly; "
                             "default: the project's (README: Fidelity to the method)")
    parser.add_argument("--in", dest="source", type=Path, required=True, metavar="FILE",
                        help="JSONL: one raw completion a line")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="JSONL: the same lines with kept/instances filled in")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML configuration (its [filters] apply in default mode)")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise InputError(str(path), number, None, f"line longer than {MAX_LINE_BYTES} bytes")
                yield number, raw
    except FileNotFoundError:
        raise InputError(str(path), None, None, "not found") from None
    except IsADirectoryError:
        raise InputError(str(path), None, None, "is a directory, not a file") from None


def _field(record: dict[str, Any], name: str, kind: type, where: tuple[str, int], required: bool = True) -> Any:
    if name not in record:
        if required:
            raise InputError(where[0], where[1], name, "missing")
        return None
    value = record[name]
    if value is None and not required:
        return None
    if not isinstance(value, kind):
        raise InputError(where[0], where[1], name, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def parse_record(record: dict[str, Any], stage: str, rules: TextRules, where: tuple[str, int],
                 filters: FilterConfig | None = None) -> dict[str, Any]:
    """The record with its result field filled in (a new dict; key order kept)."""
    text = _field(record, "text", str, where)
    finish = _field(record, "finish_reason", str, where, required=False)
    out = dict(record)
    if stage == "instructions":
        out["kept"] = kept_instructions(rules, text, finish)
        return out
    if stage == "classify":
        out["is_classification"] = rules.is_classification(text, finish)
        return out
    if stage == "alpaca":
        number = _field(record, "next_number", int, where)
        if isinstance(number, bool) or not 1 <= number <= MAX_LIST_NUMBER:
            raise InputError(where[0], where[1], "next_number", f"expected 1 to {MAX_LIST_NUMBER}")
        items = parse_alpaca(text, number, finish, alpaca_filter_config(filters or FilterConfig()))
        out["tasks"] = [[i.instruction, i.input, i.output] for i in items if i.reason is None]
        return out
    is_cls = _field(record, "is_classification", bool, where)
    _field(record, "instruction", str, where, required=False)
    outcome = rules.instances(text, is_cls, finish)
    out["instances"] = sorted([i.input, i.output] for i in outcome.kept)
    return out


def parse_file(source: Path, target: Path, stage: str, rules: TextRules,
               filters: FilterConfig | None = None) -> int:
    """Parse every line of ``source`` into ``target``; returns the number of lines."""
    partial = target.with_name(target.name + ".partial")
    count = 0
    try:
        with partial.open("w", encoding="utf-8") as sink:
            for number, raw in _lines(source):
                if not raw.strip():
                    continue
                where = (str(source), number)
                try:
                    record = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InputError(where[0], number, None, f"not a JSON object ({exc})") from None
                if not isinstance(record, dict):
                    raise InputError(where[0], number, None, "expected a JSON object")
                result = parse_record(record, stage, rules, where, filters)
                sink.write(json.dumps(result, ensure_ascii=False) + "\n")
                count += 1
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    return count


def run(args: argparse.Namespace) -> int:
    config: Config
    flags = {"compat": args.compat}
    config, _ = load_config(flags, config_file=args.config)
    rules = rules_for(config.compat, config.filters)
    count = parse_file(args.source, args.out, args.stage, rules, config.filters)
    print(f"parsed {count:,} {args.stage} lines ({config.compat} mode) into {args.out}", file=sys.stderr)
    return 0
