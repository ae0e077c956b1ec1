"""Retry policy as small pure functions (the client's loop only glues them together).

Nothing here sleeps or reads a clock: time and randomness are parameters, so every rule
is testable from a table.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import orjson

from service.llm.constants import (
    CONTEXT_SHRINK_FACTOR,
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_RETRY_AFTER_S,
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_CONTEXT_MARKERS = ("maximum context length", "context_length_exceeded", "too long", "context length")


def _plain_number(text: str) -> float | None:
    """``text`` as a bare number (NaN and inf included: each caller has its own rule for
    them), or None when it is written some other way."""
    try:
        return float(text)
    except ValueError:
        return None


def parse_duration(value: str) -> float | None:
    """``x-ratelimit-reset-*`` durations: "6m0s", "1.5s", "20ms", "1h2m3s", or a bare number
    of seconds ("0.5"). Returns seconds, or None when unparseable."""
    text = value.strip().lower()
    if not text:
        return None
    seconds = _plain_number(text)
    if seconds is not None:
        return seconds if 0 <= seconds < float("inf") else None  # NaN, inf: unusable
    pos, total = 0, 0.0
    unit_seconds = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * unit_seconds[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def parse_retry_after(value: str, now_epoch: float) -> float | None:
    """``Retry-After``: delay-seconds ("2", "1.5") or an HTTP-date. Seconds from now, >= 0."""
    text = value.strip()
    if not text:
        return None
    seconds = _plain_number(text)
    if seconds is not None:
        return max(0.0, seconds) if seconds == seconds else None  # NaN check
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_epoch)


def retry_after_from_headers(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """The server's requested pause: ``retry-after-ms`` wins over ``retry-after``; capped."""
    delay: float | None = None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            delay = max(0.0, float(ms) / 1000.0)
        except ValueError:
            delay = None
    if delay is None:
        ra = headers.get("retry-after")
        if ra is not None:
            delay = parse_retry_after(ra, now_epoch)
    return None if delay is None else min(delay, MAX_RETRY_AFTER_S)


def backoff_delay(
    attempt: int,
    rng: random.Random,
    base: float = DEFAULT_BACKOFF_BASE_S,
    cap: float = DEFAULT_BACKOFF_CAP_S,
) -> float:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt)).
    ``attempt`` counts from 0 (the delay after the first failure)."""
    ceiling = min(cap, base * (2.0 ** min(attempt, 62)))
    return rng.uniform(0.0, ceiling)


def retry_delay(
    attempt: int,
    rng: random.Random,
    retry_after: float | None,
    base: float = DEFAULT_BACKOFF_BASE_S,
    cap: float = DEFAULT_BACKOFF_CAP_S,
) -> float:
    """A server's Retry-After is a floor; jittered backoff spreads the herd above it."""
    jittered = backoff_delay(attempt, rng, base, cap)
    return jittered if retry_after is None else retry_after + jittered * 0.1


def is_context_length_error(status: int, message: str) -> bool:
    low = message.lower()
    return status == 400 and any(marker in low for marker in _CONTEXT_MARKERS)


def shrink_max_tokens(max_tokens: int, factor: float = CONTEXT_SHRINK_FACTOR) -> int:
    """The reference shrank max_tokens by x0.8 on a prompt-too-long error; never below 1."""
    return max(1, int(max_tokens * factor))


def truncate_message(message: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def error_body_message(raw: bytes, *, top_level: bool) -> str | None:
    """The message an error body carries: OpenAI's ``{"error": {"message": ...}}`` or
    ``{"error": "..."}`` (with ``top_level`` also ``{"message": ...}``); None when the body
    is not JSON or carries none, so the caller picks its own fallback."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if isinstance(err, str):
            return err
        if top_level and "message" in data:
            return str(data["message"])
    return None


def should_retry(attempt: int, max_attempts: int, remaining_s: float | None, delay: float) -> bool:
    """Another try when attempts remain and the pause ends before the deadline.
    ``attempt`` is the number of attempts made so far."""
    if attempt >= max_attempts:
        return False
    return remaining_s is None or delay < remaining_s
