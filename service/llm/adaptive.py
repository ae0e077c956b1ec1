"""Limits nobody told us: what the endpoint's own answers say about its rate limits.

Pure rules (no I/O, no sleeping; every clock reading is a parameter), used by
:class:`service.llm.limiter.RateLimiter`:

* :func:`header_number` / :func:`header_seconds`: every number a peer sends is untrusted;
  it is used only when finite and is clamped into a sane range (as Retry-After is capped
  at :data:`~service.llm.constants.MAX_RETRY_AFTER_S`), so ``reset: inf`` or
  ``remaining: -inf`` cannot pause the client for ever.
* :class:`LearnedLimits`: the limits an endpoint announces in
  ``x-ratelimit-limit-requests`` / ``-tokens``. Configured limits win; announced ones are
  followed when they change.
* :class:`AimdRate`: a request rate found from 429s alone, for endpoints that announce
  nothing. A 429 burst (every 429 until the requests sent before the cut have come back)
  counts once: the rate drops to a share of the rate the server was actually serving,
  then climbs additively until the next burst. Retry-After is honoured by the limiter.
* :func:`little_in_flight`: with a rate known, in-flight requests sized by Little's law.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from service.llm.constants import (
    AIMD_DECREASE,
    AIMD_INCREASE_SHARE_PER_S,
    AIMD_MAX_CUT,
    AIMD_MIN_RPM,
    AIMD_MIN_SPAN_S,
    AIMD_WINDOW_S,
    DECREASE_COOLDOWN_S,
    LITTLE_EXTRA,
    LITTLE_HEADROOM,
    MAX_ADAPTIVE_IN_FLIGHT,
    MAX_ANNOUNCED_RPM,
    MAX_ANNOUNCED_TPM,
    MAX_RETRY_AFTER_S,
)

# (attribute, header, bounds): an announced limit outside the bounds is clamped into them
LIMIT_HEADERS = (("rpm", "x-ratelimit-limit-requests", 1.0, MAX_ANNOUNCED_RPM),
                 ("tpm", "x-ratelimit-limit-tokens", 1.0, MAX_ANNOUNCED_TPM))


def finite_clamped(value: float, low: float, high: float) -> float | None:
    """``value`` clamped into [low, high]; None when it is not a finite number."""
    if not math.isfinite(value):
        return None
    return low if value < low else high if value > high else value


def header_number(headers: Mapping[str, str], key: str, low: float, high: float) -> float | None:
    """A number from a peer's header, finite and clamped; None when absent or unusable."""
    raw = headers.get(key)
    if raw is None or len(raw) > 64:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return finite_clamped(value, low, high)


def clamp_seconds(seconds: float | None, cap: float = MAX_RETRY_AFTER_S) -> float | None:
    """A duration a peer asked for: finite, >= 0 and at most ``cap`` (None stays None)."""
    if seconds is None:
        return None
    return finite_clamped(seconds, 0.0, cap)


@dataclass
class LearnedLimits:
    """Limits announced by the endpoint; ``rpm``/``tpm`` are the ones in force (a
    configured value always wins over an announced one)."""

    configured_rpm: float | None = None
    configured_tpm: float | None = None
    announced_rpm: float | None = None
    announced_tpm: float | None = None
    changes: int = 0

    @property
    def rpm(self) -> float | None:
        return self.configured_rpm or self.announced_rpm

    @property
    def tpm(self) -> float | None:
        return self.configured_tpm or self.announced_tpm

    def observe(self, headers: Mapping[str, str]) -> bool:
        """Read ``x-ratelimit-limit-*``; True when a limit in force changed."""
        changed = False
        for name, key, low, high in LIMIT_HEADERS:
            value = header_number(headers, key, low, high)
            if value is None or value == getattr(self, f"announced_{name}"):
                continue
            before = getattr(self, name)
            setattr(self, f"announced_{name}", value)
            if getattr(self, name) != before:
                changed = True
        if changed:
            self.changes += 1
        return changed


class AimdRate:
    """Requests per minute from 429s only. ``rpm`` is None until the first 429 (nothing is
    known, so nothing is paced); from then on it is the pace the limiter keeps."""

    def __init__(self, *, decrease: float = AIMD_DECREASE,
                 increase_share_per_s: float = AIMD_INCREASE_SHARE_PER_S,
                 min_rpm: float = AIMD_MIN_RPM, max_rpm: float = MAX_ANNOUNCED_RPM,
                 window_s: float = AIMD_WINDOW_S) -> None:
        self.decrease = decrease
        self.increase_share_per_s = increase_share_per_s
        self.min_rpm = min_rpm
        self.max_rpm = max_rpm
        self.window_s = window_s
        self.rpm: float | None = None
        self.bursts = 0
        self._step_per_s = 0.0  # rpm added per second until the next burst
        self._burst_until = -math.inf  # 429s before this belong to the current burst
        self._last_tick: float | None = None
        self._served: deque[float] = deque()  # completion times within the window
        self._first_served: float | None = None

    def on_success(self, now: float) -> None:
        served = self._served
        served.append(now)
        if self._first_served is None:
            self._first_served = now
        while served and served[0] < now - self.window_s:
            served.popleft()

    def served_rpm(self, now: float) -> float | None:
        """What the server actually served over the last window; None until successes
        span AIMD_MIN_SPAN_S (a few early answers say nothing about a rate)."""
        served = self._served
        while served and served[0] < now - self.window_s:
            served.popleft()
        if self._first_served is None:
            return None
        span = min(self.window_s, now - self._first_served)
        if span < AIMD_MIN_SPAN_S:
            return None
        return 60.0 * len(served) / span

    def on_rate_limited(self, now: float, latency_s: float) -> bool:
        """A 429. Returns True when it opened a new burst (the rate was cut).

        Requests sent before the cut come back within about one latency: their 429s
        belong to the same burst and do not cut again."""
        self.tick(now)
        if now < self._burst_until:
            return False
        served = self.served_rpm(now)
        if served is None and self.rpm is None:
            return False  # too early to measure: Retry-After alone paces for now
        base = [r for r in (self.rpm, served) if r is not None]
        cut = min(base) * self.decrease
        if self.rpm is not None:
            cut = max(cut, self.rpm * AIMD_MAX_CUT)  # a pause-starved window cannot sink it
        self.rpm = max(self.min_rpm, min(self.max_rpm, cut))
        self._step_per_s = self.rpm * self.increase_share_per_s
        self._burst_until = now + max(DECREASE_COOLDOWN_S, min(latency_s, MAX_RETRY_AFTER_S))
        self.bursts += 1
        return True

    def tick(self, now: float) -> None:
        """Additive increase between bursts."""
        last, self._last_tick = self._last_tick, now
        if self.rpm is None or last is None or now <= last or now < self._burst_until:
            return
        self.rpm = min(self.max_rpm, self.rpm + self._step_per_s * (now - last))


def little_in_flight(rpm: float, latency_s: float, headroom: float = LITTLE_HEADROOM,
                     extra: int = LITTLE_EXTRA, bound: int = MAX_ADAPTIVE_IN_FLIGHT) -> int:
    """Little's law: requests in flight = arrival rate x time in the system. With headroom
    for latency spread, plus a few for stragglers; within [1, bound]."""
    if not (math.isfinite(rpm) and math.isfinite(latency_s)) or rpm <= 0 or latency_s < 0:
        return bound
    wanted = rpm / 60.0 * latency_s * headroom + extra
    return max(1, min(bound, math.ceil(wanted)))
