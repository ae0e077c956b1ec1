"""Progress: one updating line on a terminal, plain periodic lines otherwise.

Written to stderr so stdout stays clean for whatever a script pipes it into.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_count(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}"


def status_line(
    *,
    written: int,
    target: int,
    admitted: int,
    elapsed_s: float,
    written_this_run: int,
    usage: Mapping[str, Any],
) -> str:
    rate = written_this_run / elapsed_s if elapsed_s > 0 else 0.0
    eta = (target - written) / rate if rate > 0 else None
    tokens = float(usage.get("total_tokens", 0) or 0)
    cost = float(usage.get("cost_usd", 0.0) or 0.0)
    return (
        f"tasks {written}/{target} | admitted {admitted} | {rate:.2f} tasks/s | "
        f"in-flight {usage.get('in_flight', 0)}{_limits(usage.get('limiter'))} | "
        f"429s {usage.get('rate_limited', 0)} | "
        f"tokens {format_count(tokens)}{cache_note(usage)} | ${cost:.2f} | "
        f"ETA {format_eta(eta)}"
    )


def cache_note(usage: Mapping[str, Any]) -> str:
    """" (cached 42%)" when the endpoint served part of the prompts from its cache."""
    tokens = usage.get("tokens")
    share = tokens.get("cached_share") if isinstance(tokens, Mapping) else None
    if not isinstance(share, int | float) or share <= 0:
        return ""
    return f" (cached {share * 100:.0f}%)"


def _limits(limiter: Any) -> str:
    """The in-flight cap and the rate in force with where it came from, e.g.
    "/208 | 6000 rpm (headers)"; "/42 auto, no-load 0.31s" for --max-in-flight auto."""
    if not isinstance(limiter, Mapping) or "in_flight_limit" not in limiter:
        return ""  # several endpoints, or a limiter that does not say
    text = f"/{limiter['in_flight_limit']}"
    if limiter.get("in_flight_mode") == "auto":
        text += " auto"
        if limiter.get("no_load_latency_s") is not None:
            text += f", no-load {float(limiter['no_load_latency_s']):.2f}s"
    if limiter.get("rpm"):
        text += f" | {float(limiter['rpm']):,.0f} rpm"
        if limiter.get("rpm_source") not in (None, "configured"):
            text += f" ({limiter['rpm_source']})"
    return text


class Progress:
    """Call :meth:`update` often; it decides when to draw."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, interval_s: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 10.0)
        self._last = 0.0
        self._drawn = False

    def update(self, line: str, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._drawn and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def message(self, text: str) -> None:
        if self.quiet:
            return
        self.finish()
        self.stream.write(text + "\n")
        self.stream.flush()
