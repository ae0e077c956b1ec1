"""What the pipeline needs from a language model, and nothing more.

The pipeline talks to a :class:`Backend`: "complete these prompts for stage X". The
production implementation (:mod:`service.generate.llm_backend`) routes each stage to its
endpoint and model, picks the completions or chat API, batches prompts into one request
where the API allows it, and shares one client and one rate limiter among all stages.
Keeping this seam narrow lets the pipeline be tested against the real simulated server
without knowing HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from service.llm.limiter import RateLimiter


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class StageAnswer:
    """One prompt's answer. ``finish_reason == "length"`` means the text was cut."""

    text: str
    finish_reason: str | None


@dataclass(frozen=True)
class StagePrompt:
    """A prompt in both shapes: ``text`` for completions, ``system`` + ``text`` for chat."""

    text: str
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    async def complete(
        self, stage: str, prompts: Sequence[StagePrompt], sampling: Sampling
    ) -> list[StageAnswer]:
        """Return one choice per prompt, in order. Raises service.errors.LLMError
        subclasses (after the client's own retries) or BudgetExceeded."""
        ...

    def stage_model(self, stage: str) -> str:
        """The model name that serves ``stage`` (recorded in each task's meta)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Usage, requests by outcome, cost, in-flight: for run.json and progress."""
        ...

    def limiters(self) -> list[RateLimiter]:
        """The rate limiters the backend's calls wait in (one per endpoint), for
        observers such as the worker's metrics; empty if it has none."""
        ...
