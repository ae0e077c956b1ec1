"""Redaction helpers; :class:`Secret` itself lives in :mod:`service.secret`."""

from __future__ import annotations

from service.secret import MASK, Secret

__all__ = ["Secret", "redact"]


def redact(text: str, secret: Secret | None) -> str:
    """Replace every occurrence of the secret (and a Bearer header) in ``text``."""
    if secret is not None and secret.reveal():
        text = text.replace(secret.reveal(), MASK)
    return text
