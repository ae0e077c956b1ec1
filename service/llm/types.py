"""Typed results of the client."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Usage:
    """Token counts of one call. ``cached_tokens`` is the part of ``prompt_tokens`` the
    server served from its prompt cache (billed at the cached-input price)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Choice:
    """One generated text. ``finish_reason == "length"`` means it was cut by max_tokens.
    ``prompt_index`` is the prompt it answers (completions with a list of prompts: choice
    ``index`` i*n..i*n+n-1 belong to prompt i); always 0 for chat."""

    text: str
    finish_reason: str | None
    index: int = 0
    prompt_index: int = 0


@dataclass(frozen=True)
class Result:
    """A finished call (after retries). ``latency_s`` is the last attempt's wall time;
    ``ttft_s`` is time to the first streamed content (None unless streaming)."""

    model: str
    choices: tuple[Choice, ...]
    usage: Usage
    latency_s: float
    ttft_s: float | None = None
    attempts: int = 1
    max_tokens: int = 0  # the value finally sent (shrunk on context-length errors)
    n_prompts: int = 1
    id: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    def for_prompt(self, i: int) -> list[Choice]:
        """The choices answering prompt ``i``, ordered by index."""
        return [c for c in self.choices if c.prompt_index == i]

    def by_prompt(self) -> list[list[Choice]]:
        return [self.for_prompt(i) for i in range(self.n_prompts)]
