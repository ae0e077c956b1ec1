"""Reading a response's ``usage`` object, whatever OpenAI-compatible server sent it.

Servers disagree on where the cached part of the prompt is reported; every known spelling
is read here, in one place, and the count is clamped to ``0..prompt_tokens`` (a server
cannot make a cached token cheaper than a prompt token it never sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.llm.types import Usage

# (container key or None for the top level, field): the first present one wins.
CACHED_TOKEN_FIELDS: tuple[tuple[str | None, str], ...] = (
    ("prompt_tokens_details", "cached_tokens"),  # OpenAI chat/completions, vLLM, llama.cpp
    ("input_tokens_details", "cached_tokens"),  # OpenAI Responses API
    (None, "prompt_cache_hit_tokens"),  # DeepSeek
    (None, "cache_read_input_tokens"),  # Anthropic-style gateways
    (None, "cached_tokens"),  # some proxies flatten it
)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0, int(value))


def cached_tokens_of(raw_usage: Mapping[str, Any], prompt_tokens: int) -> int:
    """The cached prompt tokens a usage object reports (0 when it reports none)."""
    for container, name in CACHED_TOKEN_FIELDS:
        holder: Any = raw_usage if container is None else raw_usage.get(container)
        if isinstance(holder, Mapping) and name in holder:
            count = _count(holder.get(name))
            if count is not None:
                return min(count, max(0, prompt_tokens))
    return 0


def usage_of(raw_usage: Any) -> Usage | None:
    """A :class:`Usage` from a response's ``usage`` object; None when it has no counts."""
    if not isinstance(raw_usage, Mapping) or "prompt_tokens" not in raw_usage:
        return None
    prompt = _count(raw_usage.get("prompt_tokens")) or 0
    completion = _count(raw_usage.get("completion_tokens")) or 0
    return Usage(prompt, completion, cached_tokens_of(raw_usage, prompt))
