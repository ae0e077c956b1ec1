"""Shared helper: each benchmark owns one marked section of benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by the benchmark named in it (`python -m benchmarks.NAME`).\n"
    "Speeds are ratios against a baseline measured in the same process, since these\n"
    "2-core machines are noisy.\n"
)


def machine_line() -> str:
    import os

    return (
        f"_Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}._"
    )


def write_section(name: str, markdown: str, results: Path = RESULTS) -> None:
    """Replace (or append) the section between this benchmark's markers."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n\n{machine_line()}\n{end}"
    text = results.read_text(encoding="utf-8") if results.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    results.write_text(text, encoding="utf-8")


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table; also readable printed to a terminal."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])
