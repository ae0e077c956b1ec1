"""The simulator's prompt cache: which part of a prompt a hosted endpoint would bill as
cached input.

OpenAI documents its cache as: prompts of 1,024 tokens or more, cached in steps of 128
tokens, for a prefix a recent request (minutes) already sent. The cache here keys a hash of
every 128-token prefix boundary from 1,024 tokens on (tokens are estimated as 4 chars, as
everywhere in the simulator) in a bounded LRU with an age limit, so a client's prompt
layout decides what it saves: the stable part first caches, a varying head never does.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class PromptCacheSettings:
    enabled: bool = True
    min_tokens: int = 1024  # shorter prefixes are never cached
    step_tokens: int = 128  # the cached part grows in these steps
    max_entries: int = 200_000  # prefix hashes kept (LRU); 32 bytes + overhead each
    ttl_s: float = 600.0  # "recent": an entry older than this no longer hits

    def __post_init__(self) -> None:
        if self.min_tokens < 1 or self.step_tokens < 1:
            raise ValueError("min_tokens and step_tokens must be >= 1")
        if self.max_entries < 1 or self.ttl_s <= 0:
            raise ValueError("max_entries must be >= 1 and ttl_s > 0")


class PromptCache:
    """``lookup(text)`` returns the cached tokens of ``text`` and remembers its prefixes."""

    def __init__(self, settings: PromptCacheSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or PromptCacheSettings()
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.hits = 0
        self.cached_tokens = 0

    def _boundaries(self, text: str) -> list[tuple[int, bytes]]:
        """(tokens, hash of the first ``tokens`` tokens) at every cacheable boundary."""
        s = self.settings
        h = hashlib.blake2b(digest_size=16)
        out: list[tuple[int, bytes]] = []
        pos = 0
        tokens = s.step_tokens
        while tokens * CHARS_PER_TOKEN <= len(text):
            end = tokens * CHARS_PER_TOKEN
            h.update(text[pos:end].encode("utf-8", "surrogatepass"))
            pos = end
            if tokens >= s.min_tokens:
                out.append((tokens, h.copy().digest()))
            tokens += s.step_tokens
        return out

    def lookup(self, text: str) -> int:
        """Cached tokens for this prompt (0 below ``min_tokens``); then store its prefixes."""
        s = self.settings
        if not s.enabled:
            return 0
        now = self._clock()
        cached = 0
        boundaries = self._boundaries(text)
        for tokens, key in boundaries:
            stamp = self._seen.get(key)
            if stamp is None or now - stamp > s.ttl_s:
                break  # a longer prefix cannot hit when a shorter one missed
            cached = tokens
        for _, key in boundaries:
            self._seen[key] = now
            self._seen.move_to_end(key)
        while len(self._seen) > s.max_entries:
            self._seen.popitem(last=False)
        if cached:
            self.hits += 1
            self.cached_tokens += cached
        return cached
