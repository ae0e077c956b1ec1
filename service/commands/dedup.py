"""`selfinstruct dedup`: keep each row whose ROUGE-L F against every earlier kept row
(and every row of --against) is not above the threshold; rows written unchanged."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import BinaryIO

from dedup import INDEXES, TOKENIZERS
from service.commands._options import Ranged, add_range_help
from service.errors import ConfigError
from service.file_filter import DedupCounts, ProgressBar, dedup_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="source", type=Path, required=True, metavar="FILE",
                        help="JSONL objects or plain text lines")
    parser.add_argument("--out", type=Path, metavar="FILE", help="kept rows (default stdout)")
    parser.add_argument("--threshold", type=Ranged("threshold", float), default=0.7,
                        help="reject when ROUGE-L F is above this (default 0.7)")
    parser.add_argument("--inclusive", action="store_true", help="reject at the threshold too")
    parser.add_argument("--field", default="instruction", help="JSONL field to compare")
    parser.add_argument("--against", type=Path, metavar="FILE",
                        help="rows every kept row must also differ from (e.g. seed tasks)")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="rouge",
                        help="rouge: rouge-score's exactly; unicode: words of any script")
    parser.add_argument("--index", choices=INDEXES, default="exact",
                        help="candidate index (exact never misses a pair)")
    add_range_help(parser)


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in (0, 1], got {args.threshold}")
    bar = ProgressBar(0)

    def filter_into(sink: BinaryIO) -> DedupCounts:
        return dedup_file(args.source, sink, threshold=args.threshold,
                          inclusive=args.inclusive, field=args.field, against=args.against,
                          tokenizer=args.tokenizer, index=args.index, progress=bar)

    try:
        if args.out is None:
            counts = filter_into(sys.stdout.buffer)
        else:
            with open(args.out, "wb") as sink:
                counts = filter_into(sink)
    finally:
        bar.close()
    against = f" (against {counts.against:,} rows)" if args.against else ""
    print(f"read {counts.read:,}, kept {counts.kept:,}, dropped {counts.dropped:,}{against}",
          file=sys.stderr)
    return 0
