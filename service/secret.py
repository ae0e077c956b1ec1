"""A string that never shows itself: repr/str give '***'; only :meth:`reveal` gives the
value. One class for the whole program (config, client, serve)."""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    get = reveal  # the configuration's name for it

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:  # pickling would leak the value into files
        raise TypeError("Secret values cannot be pickled")


# scheme://userinfo@ : userinfo runs to the last '@' before the host (as urlsplit reads it)
# and never crosses a path, query, fragment, quote or space. Characters RFC 3986 forbids
# in userinfo end it, so a match never swallows the next JSON field of a log line.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s\"'<>\\]*@")


def safe_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``redis://:pw@h`` ->
    ``redis://***@h``. Takes one URL or any text that may hold URLs (an error message,
    a log line), so it is the one function for everything stored, logged, shown or
    raised; a URL without credentials is returned unchanged."""
    if "@" not in text:
        return text
    return _CREDENTIALS.sub(lambda m: m.group(1) + MASK + "@", text)


def has_credentials(url: str) -> bool:
    """True if a URL carries a user or password (which :func:`safe_url` would mask)."""
    return safe_url(url) != url


def redact(text: str, secret: Secret | None) -> str:
    """Replace every occurrence of the secret (and a Bearer header) in ``text``."""
    if secret is not None and secret.reveal():
        text = text.replace(secret.reveal(), MASK)
    return text
