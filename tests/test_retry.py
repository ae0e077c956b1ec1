"""The retry policy's pure functions from tables: durations, Retry-After, backoff bounds,
context-length detection, shrinking, message truncation, the retry decision, and which
errors end a run. No clock, no sleeps: time and randomness are parameters."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from service.errors import (
    BadResponse,
    ClientRequestError,
    ClientSetupError,
    ConnectionFailed,
    ContextLengthError,
    EndpointUnavailable,
    LLMError,
    RateLimitError,
    RetriesExhausted,
    ServerError,
    is_fatal,
)
from service.llm.constants import DEFAULT_BACKOFF_CAP_S, MAX_ERROR_MESSAGE_CHARS, MAX_RETRY_AFTER_S
from service.llm.retry import (
    backoff_delay,
    is_context_length_error,
    parse_duration,
    parse_retry_after,
    retry_after_from_headers,
    retry_delay,
    should_retry,
    shrink_max_tokens,
    truncate_message,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0), ("1.5s", 1.5), ("20ms", 0.02), ("1h2m3s", 3723.0), ("0.5", 0.5),
        ("  2s ", 2.0), (".5s", 0.5), ("0", 0.0),
        ("", None), ("-1", None), ("abc", None), ("5x", None), ("1s junk", None),
        ("s", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def _http_date(offset_s: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset_s, tz=UTC), usegmt=True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2", 2.0), ("1.5", 1.5), ("-3", 0.0), ("nan", None), ("", None), ("soon", None),
        (_http_date(30), 30.0),
        (_http_date(-30), 0.0),  # a date in the past: go now
        ("Mon, 13 Nov 2023 22:13:20", None),  # no zone: not trusted
    ],
)
def test_parse_retry_after(text: str, seconds: float | None) -> None:
    result = parse_retry_after(text, NOW)
    assert result == (pytest.approx(seconds, abs=1.0) if seconds is not None else None)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms wins
        ({"retry-after-ms": "bad", "retry-after": "9"}, 9.0),  # falls back
        ({"retry-after": "99999"}, MAX_RETRY_AFTER_S),  # capped
        ({"retry-after-ms": "-5"}, 0.0),
    ],
)
def test_retry_after_from_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_from_headers(headers, NOW) == seconds


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.5), (1, 1.0), (3, 4.0), (6, DEFAULT_BACKOFF_CAP_S), (500, DEFAULT_BACKOFF_CAP_S)],
)
def test_backoff_stays_under_its_ceiling(attempt: int, ceiling: float) -> None:
    rng = random.Random(7)
    delays = [backoff_delay(attempt, rng) for _ in range(200)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.8  # full jitter spreads over the whole range


@pytest.mark.parametrize(("retry_after", "low", "high"),
                         [(None, 0.0, 1.0), (5.0, 5.0, 5.1), (0.0, 0.0, 0.1)])
def test_retry_after_is_a_floor(retry_after: float | None, low: float, high: float) -> None:
    rng = random.Random(3)
    for _ in range(100):
        assert low <= retry_delay(1, rng, retry_after) <= high


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "This model's maximum context length is 4097 tokens", True),
        (400, "error code: context_length_exceeded", True),
        (400, "Prompt is TOO LONG", True),
        (400, "invalid temperature", False),
        (413, "maximum context length", False),  # only a 400 is the prompt's length
        (500, "context length", False),
    ],
)
def test_context_length_detection(status: int, message: str, expected: bool) -> None:
    assert is_context_length_error(status, message) is expected


@pytest.mark.parametrize(("max_tokens", "shrunk"), [(1000, 800), (10, 8), (1, 1), (2, 1)])
def test_shrink_max_tokens(max_tokens: int, shrunk: int) -> None:
    assert shrink_max_tokens(max_tokens) == shrunk


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("short", "short"),
        ("many   spaces\nand\tlines", "many spaces and lines"),
        ("x" * (MAX_ERROR_MESSAGE_CHARS + 50), "x" * (MAX_ERROR_MESSAGE_CHARS - 3) + "..."),
    ],
)
def test_truncate_message(message: str, expected: str) -> None:
    assert truncate_message(message) == expected


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "remaining_s", "delay", "expected"),
    [
        (1, 6, None, 1.0, True),
        (6, 6, None, 0.0, False),  # attempts used up
        (1, 6, 10.0, 2.0, True),
        (1, 6, 2.0, 2.0, False),  # the pause would reach the deadline
        (1, 6, 0.5, 2.0, False),
    ],
)
def test_should_retry(attempt: int, max_attempts: int, remaining_s: float | None,
                      delay: float, expected: bool) -> None:
    assert should_retry(attempt, max_attempts, remaining_s, delay) is expected


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (ClientRequestError("401 bad key", 401), True),
        (ClientRequestError("404 no such model", 404), True),
        (ContextLengthError("too long", 400), False),
        (RateLimitError("slow down"), False),
        (ServerError("boom", 503), False),
        (ConnectionFailed("reset"), False),
        (BadResponse("not json"), False),
        (RetriesExhausted("gave up", ServerError("boom", 500), 6), False),
        (LLMError("other"), False),
        (ClientSetupError("a key with a newline"), True),
        (EndpointUnavailable("down for 300 s", 300.0, 40), True),
    ],
)
def test_which_errors_end_a_run(error: LLMError, fatal: bool) -> None:
    assert is_fatal(error) is fatal
