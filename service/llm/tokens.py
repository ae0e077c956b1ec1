"""Token estimates before a request is sent (the limiter weighs requests with them).

Hosted APIs admit a request against the tokens-per-minute limit by its prompt tokens plus
``max_tokens * n``; we estimate prompt tokens as ``ceil(chars / 4)`` and correct the
limiter from ``usage`` once the response arrives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from service.llm.constants import CHARS_PER_TOKEN, CHAT_TOKENS_PER_MESSAGE


def estimate_text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN) if text else 0


def estimate_prompt_tokens(prompts: Sequence[str]) -> int:
    return sum(estimate_text_tokens(p) for p in prompts)


def estimate_chat_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(
        CHAT_TOKENS_PER_MESSAGE + estimate_text_tokens(str(m.get("content", ""))) for m in messages
    )


def request_weight(prompt_tokens: int, max_tokens: int, n: int, n_prompts: int = 1) -> int:
    """What a hosted limiter charges at admission: prompts + max_tokens for every choice."""
    return prompt_tokens + max_tokens * n * n_prompts
