"""Usage, outcomes, latencies, cost and budget caps for one client (or several sharing it)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import BudgetExceeded

_RESERVOIR = 20_000  # latency samples kept for percentiles (uniform reservoir sample)


DEFAULT_BATCH_DISCOUNT = 0.5  # hosted Batch APIs bill half the list price


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens. ``cached_input_per_1m`` prices prompt tokens served from the
    provider's prompt cache (None: the input price); ``batch_discount`` is the share taken
    off every price for calls made through a Batch API."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    cached_input_per_1m: float | None = None
    batch_discount: float = DEFAULT_BATCH_DISCOUNT

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
             *, batch: bool = False) -> float:
        """USD for one call's tokens (cached tokens are a part of the prompt tokens)."""
        cached = min(max(0, cached_tokens), max(0, prompt_tokens))
        cached_rate = self.input_per_1m if self.cached_input_per_1m is None \
            else self.cached_input_per_1m
        usd = ((prompt_tokens - cached) * self.input_per_1m + cached * cached_rate
               + completion_tokens * self.output_per_1m) / 1_000_000
        return usd * (1.0 - self.batch_discount) if batch else usd


@dataclass(frozen=True)
class BudgetSettings:
    max_total_tokens: int | None = None
    budget_usd: float | None = None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(values: Sequence[float], *, count: int | None = None,
                    total: float | None = None) -> dict[str, float | int | None]:
    """count, mean, p50/p90/p99 and max (seconds, rounded to 0.1 ms) of ``values``; a
    sample of a larger series passes the series' own ``count`` and ``total``."""
    ordered = sorted(values)
    n = len(ordered) if count is None else count
    sum_all = sum(ordered) if total is None else total

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 4)

    return {
        "count": n,
        "mean": r(sum_all / n) if n else None,
        "p50": r(percentile(ordered, 50)),
        "p90": r(percentile(ordered, 90)),
        "p99": r(percentile(ordered, 99)),
        "max": r(ordered[-1]) if ordered else None,
    }


class _Reservoir:
    def __init__(self, size: int = _RESERVOIR, seed: int = 0) -> None:
        self.size = size
        self.count = 0
        self.total = 0.0
        self.values: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            j = self._rng.randrange(self.count)
            if j < self.size:
                self.values[j] = value

    def summary(self) -> dict[str, float | int | None]:
        return latency_summary(self.values, count=self.count, total=self.total)


class Accounting:
    """Counters for run.json and metrics. A reached budget stops *new* calls
    (:meth:`check_budget` raises BudgetExceeded); calls already in flight still finish
    and are still counted."""

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        budget: BudgetSettings = BudgetSettings(),
    ) -> None:
        self.prices = dict(prices or {})
        self.budget = budget
        self.prompt_tokens: Counter[str] = Counter()
        self.completion_tokens: Counter[str] = Counter()
        self.cached_tokens: Counter[str] = Counter()  # by model: part of prompt_tokens
        # by pipeline stage: {"prompt", "completion", "cached", "requests"}
        self.by_stage: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.requests_by_model: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()  # "200", "429", "500", "timeout", ...
        self.retries: Counter[str] = Counter()  # by error kind
        self.calls_ok = 0
        self.calls_failed: Counter[str] = Counter()
        self.latency = _Reservoir()
        self.ttft = _Reservoir(seed=1)
        self.cost_by_model: defaultdict[str, float] = defaultdict(float)

    # -------------------------------------------------------------- recording
    def record_attempt(self, outcome: str) -> None:
        """One HTTP attempt's outcome: the status code as text, or an error kind."""
        self.outcomes[outcome] += 1

    def record_retry(self, kind: str) -> None:
        self.retries[kind] += 1

    def record_usage(self, model: str, prompt_tokens: int, completion_tokens: int,
                     cached_tokens: int = 0, *, batch: bool = False) -> None:
        """One answered call; ``batch``: made through a Batch API (discounted)."""
        cached = min(max(0, cached_tokens), max(0, prompt_tokens))
        self.prompt_tokens[model] += prompt_tokens
        self.completion_tokens[model] += completion_tokens
        self.cached_tokens[model] += cached
        self.requests_by_model[model] += 1
        price = self.prices.get(model)
        if price is not None:
            self.cost_by_model[model] += price.cost(prompt_tokens, completion_tokens, cached,
                                                    batch=batch)

    def record_stage(self, stage: str, prompt_tokens: int, completion_tokens: int,
                     cached_tokens: int = 0, requests: int = 1) -> None:
        """The same tokens counted by pipeline stage (the caller knows the stage)."""
        counts = self.by_stage[stage]
        counts["prompt"] += prompt_tokens
        counts["completion"] += completion_tokens
        counts["cached"] += min(max(0, cached_tokens), max(0, prompt_tokens))
        counts["requests"] += requests

    def record_call(self, ok: bool, kind: str = "ok", latency_s: float | None = None,
                    ttft_s: float | None = None) -> None:
        if ok:
            self.calls_ok += 1
        else:
            self.calls_failed[kind] += 1
        if latency_s is not None:
            self.latency.add(latency_s)
        if ttft_s is not None:
            self.ttft.add(ttft_s)

    # -------------------------------------------------------------- budget
    @property
    def total_tokens(self) -> int:
        return sum(self.prompt_tokens.values()) + sum(self.completion_tokens.values())

    @property
    def total_cached_tokens(self) -> int:
        return sum(self.cached_tokens.values())

    @property
    def cached_share(self) -> float:
        """Cached prompt tokens / prompt tokens (0 before any call)."""
        prompt = sum(self.prompt_tokens.values())
        return self.total_cached_tokens / prompt if prompt else 0.0

    @property
    def cost_usd(self) -> float:
        return sum(self.cost_by_model.values())

    @property
    def rate_limited(self) -> int:
        return self.outcomes["429"]

    def budget_reason(self) -> str | None:
        b = self.budget
        if b.max_total_tokens is not None and self.total_tokens >= b.max_total_tokens:
            return f"token budget reached: {self.total_tokens} >= max_total_tokens {b.max_total_tokens}"
        if b.budget_usd is not None and self.cost_usd >= b.budget_usd:
            return f"cost budget reached: ${self.cost_usd:.4f} >= budget_usd ${b.budget_usd:.4f}"
        return None

    def check_budget(self) -> None:
        reason = self.budget_reason()
        if reason is not None:
            raise BudgetExceeded(reason)

    # -------------------------------------------------------------- export
    def snapshot(self) -> dict[str, Any]:
        models = sorted(set(self.prompt_tokens) | set(self.completion_tokens))
        return {
            "tokens": {
                "prompt": sum(self.prompt_tokens.values()),
                "completion": sum(self.completion_tokens.values()),
                "cached": self.total_cached_tokens,
                "cached_share": round(self.cached_share, 4),
                "total": self.total_tokens,
                "by_stage": {stage: dict(sorted(counts.items()))
                             for stage, counts in sorted(self.by_stage.items())},
                "by_model": {
                    m: {
                        "prompt": self.prompt_tokens[m],
                        "completion": self.completion_tokens[m],
                        "cached": self.cached_tokens[m],
                        "requests": self.requests_by_model[m],
                        "cost_usd": round(self.cost_by_model.get(m, 0.0), 6),
                    }
                    for m in models
                },
            },
            "calls": {"ok": self.calls_ok, "failed": dict(self.calls_failed)},
            "attempts_by_outcome": dict(self.outcomes),
            "rate_limited": self.rate_limited,
            "retries": dict(self.retries),
            "retries_total": sum(self.retries.values()),
            "latency_s": self.latency.summary(),
            "ttft_s": self.ttft.summary(),
            "cost_usd": round(self.cost_usd, 6),
            "budget": {
                "max_total_tokens": self.budget.max_total_tokens,
                "budget_usd": self.budget.budget_usd,
                "exceeded": self.budget_reason() is not None,
            },
        }
