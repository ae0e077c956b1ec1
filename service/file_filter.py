"""Streaming near-duplicate filtering of a file (``selfinstruct dedup``).

Rows are read one at a time, kept rows are written unchanged (their original bytes) and
flushed as they are decided, so an error on line N leaves lines 1..N-1 decided and
written. JSONL rows compare one field; plain text rows compare the whole line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from dedup.pool import Pool
from service.errors import InputError


@dataclass
class DedupCounts:
    read: int = 0
    kept: int = 0
    dropped: int = 0
    against: int = 0


def _rows(path: Path, field: str) -> Iterator[tuple[int, bytes, str]]:
    """(line number, raw line, text to compare); blank lines are skipped."""
    json_mode: bool | None = None
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, iterated lazily
    except OSError as exc:
        raise InputError(str(path), None, None, f"cannot read: {exc.strerror}") from exc
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            stripped = raw.strip()
            if not stripped:
                continue
            if json_mode is None:
                json_mode = stripped.startswith(b"{")
            try:
                line = stripped.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(str(path), lineno, None, f"not UTF-8 ({exc.reason})") from exc
            if not json_mode:
                yield lineno, raw, line
                continue
            try:
                record = orjson.loads(stripped)
            except orjson.JSONDecodeError as exc:
                raise InputError(str(path), lineno, None, f"invalid JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise InputError(str(path), lineno, None, "expected a JSON object")
            value = record.get(field)
            if value is None:
                raise InputError(str(path), lineno, field, "missing")
            if not isinstance(value, str):
                raise InputError(str(path), lineno, field,
                                 f"expected a string, got {type(value).__name__}")
            yield lineno, raw, value


def dedup_file(
    source: Path,
    sink: IO[bytes],
    *,
    threshold: float = 0.7,
    inclusive: bool = False,
    field: str = "instruction",
    against: Path | None = None,
    tokenizer: str = "rouge",
    index: str = "exact",
    progress: Callable[[DedupCounts], None] | None = None,
) -> DedupCounts:
    pool = Pool(threshold, inclusive=inclusive, tokenizer=tokenizer, index=index, top_k=0)
    counts = DedupCounts()
    if against is not None:
        for _, _, text in _rows(against, field):
            pool.add(text)
            counts.against += 1
    for _, raw, text in _rows(source, field):
        counts.read += 1
        if pool.admit(text).admitted:
            counts.kept += 1
            sink.write(raw if raw.endswith(b"\n") else raw + b"\n")
        else:
            counts.dropped += 1
        if progress is not None and counts.read % 1000 == 0:
            sink.flush()
            progress(counts)
    sink.flush()
    return counts


class ProgressBar:
    """A one-line counter on a terminal, rate-limited; silent elsewhere."""

    def __init__(self, total_bytes: int, stream: IO[str] | None = None) -> None:
        stream = stream if stream is not None else sys.stderr  # looked up now, not at import
        self.stream = stream
        self.tty = stream.isatty()
        self.total_bytes = total_bytes
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, counts: DedupCounts) -> None:
        now = time.monotonic()
        if not self.tty or now - self._last < 0.2:
            return
        self._last = now
        rate = counts.read / max(1e-9, now - self.started)
        self.stream.write(f"\r{counts.read:,} read, {counts.kept:,} kept, "
                          f"{counts.dropped:,} dropped ({rate:,.0f}/s)")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
