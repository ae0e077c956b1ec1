"""Structured logs for the long-lived worker: one JSON object a line on stderr.

    {"ts": "2026-05-09T07:35:25.123Z", "level": "info", "event": "job_started", "job_id": "..."}

Call :func:`log_event` with an event name and plain JSON-able fields. Field names that
look like secrets (``key``, ``token``, ``authorization``, ``*_key``, ``*_token``, ...)
are replaced by ``"***"`` whatever their value, and the credentials of every URL in a
line are masked (:func:`service.secret.safe_url`), so a careless call cannot leak one; the
callers still never pass a secret on purpose. Records from other libraries (aiohttp's
server errors, asyncio) go through the same handler and come out as JSON too.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import orjson

from service.secret import safe_url

LOGGER_NAME = "selfinstruct.serve"
LogFormat = Literal["json", "text"]

_SECRET_NAMES = frozenset({"key", "token", "authorization", "secret", "password", "cookie"})
_SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password")
_RESERVED = frozenset({"ts", "level", "event", "logger"})

_logger = logging.getLogger(LOGGER_NAME)


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


def redact_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``fields`` with every secret-looking name's value replaced (recursively)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if _is_secret_name(name) and value is not None:
            out[name] = "***"
        elif isinstance(value, Mapping):
            out[name] = redact_fields(value)
        else:
            out[name] = value
    return out


def _timestamp(created: float) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{base}.{int((created % 1) * 1000):03d}Z"


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


def _record_event(record: logging.LogRecord) -> str:
    event = getattr(record, "event", None)
    return str(event) if event is not None else record.getMessage()


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "event", ...fields}``; exceptions as an ``exc`` string."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "event": _record_event(record),
        }
        if record.name != LOGGER_NAME:
            data["logger"] = record.name
        for name, value in redact_fields(_record_fields(record)).items():
            data[name if name not in _RESERVED else f"field_{name}"] = value
        if record.exc_info and record.exc_info[1] is not None:
            data["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return safe_url(orjson.dumps(data, default=str).decode())


class TextFormatter(logging.Formatter):
    """``ts level event k=v ...`` for a human watching a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record.created), record.levelname.lower(), _record_event(record)]
        for name, value in redact_fields(_record_fields(record)).items():
            shown = value if isinstance(value, str) and " " not in value else orjson.dumps(
                value, default=str
            ).decode()
            parts.append(f"{name}={shown}")
        text = " ".join(str(p) for p in parts)
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return safe_url(text)


_handler: logging.Handler | None = None


def configure_logging(fmt: LogFormat = "json", stream: TextIO | None = None,
                      level: int = logging.INFO) -> logging.Handler:
    """Send this module's events and every other library's warnings to ``stream``
    (stderr by default) in ``fmt``. Calling it again replaces the previous handler."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _logger.removeHandler(_handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _handler = handler
    # Our events go to our handler only; other libraries' records of WARNING and above
    # reach the same handler through the root logger.
    _logger.addHandler(handler)
    _logger.setLevel(level)
    _logger.propagate = False
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    return handler


def reset_logging() -> None:
    """Remove the handler :func:`configure_logging` installed (for tests)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _logger.removeHandler(_handler)
        _handler = None


def log_event(event: str, level: str = "info", *, exc_info: bool = False, **fields: Any) -> None:
    """Log one structured event. ``fields`` must be JSON-able (anything else is str()-ed)."""
    levelno = logging.getLevelName(level.upper())
    if not isinstance(levelno, int):
        levelno = logging.INFO
    if not _logger.isEnabledFor(levelno):
        return
    _logger.log(levelno, event, extra={"event": event, "fields": fields}, exc_info=exc_info)
