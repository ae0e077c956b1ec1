"""Server-side RPM/TPM enforcement: continuous token buckets that admit a request by its
prompt tokens + max_tokens * n (like hosted APIs) and refund unused completion tokens."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


def format_duration(seconds: float) -> str:
    """The ``x-ratelimit-reset-*`` style: "6m0s", "1.5s", "20ms"."""
    if seconds >= 60:
        minutes = int(seconds // 60)
        return f"{minutes}m{round(seconds - minutes * 60)}s"
    if seconds >= 1:
        return f"{round(seconds, 3):g}s"
    return f"{max(0, math.ceil(seconds * 1000))}ms"


class Bucket:
    def __init__(self, per_minute: float, burst_seconds: float, clock: Callable[[], float]) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self._clock = clock
        self._last = clock()

    def refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._last) * self.rate)
        self._last = now

    def wait_for(self, amount: float) -> float:
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def reset_in(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass(frozen=True)
class Admission:
    ok: bool
    retry_after: float  # seconds (0 when admitted)
    dimension: str  # "requests" / "tokens" when refused
    headers: dict[str, str]


class ServerLimiter:
    def __init__(self, rpm: float | None, tpm: float | None, burst_seconds: float,
                 clock: Callable[[], float] = time.monotonic, *, announce: bool = True) -> None:
        self.requests = Bucket(rpm, burst_seconds, clock) if rpm else None
        self.tokens = Bucket(tpm, burst_seconds, clock) if tpm else None
        self.announce = announce  # False: no x-ratelimit-* headers (429 + Retry-After only)

    def admit(self, tokens: int) -> Admission:
        waits: dict[str, float] = {}
        for name, bucket, amount in (("requests", self.requests, 1), ("tokens", self.tokens, tokens)):
            if bucket is not None:
                bucket.refill()
                waits[name] = bucket.wait_for(amount)
        refused = {k: v for k, v in waits.items() if v > 0}
        if refused:
            dim = max(refused, key=lambda k: refused[k])
            return Admission(False, refused[dim], dim, self.headers())
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= tokens
        return Admission(True, 0.0, "", self.headers())

    def refund_tokens(self, tokens: int) -> None:
        if self.tokens is not None and tokens > 0:
            self.tokens.refill()
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + tokens)

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if not self.announce:
            return out
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{name}"] = str(int(bucket.limit))
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
            out[f"x-ratelimit-reset-{name}"] = format_duration(bucket.reset_in())
        return out
