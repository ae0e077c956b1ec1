"""Smooth, adaptive, FIFO rate limiter: requests per minute AND tokens per minute,
plus a cap on requests in flight.

Design
------
* Two token buckets (requests, tokens) refilled continuously at ``rate * factor`` with a
  small capacity (``burst_seconds`` of rate, default 1 s): no burst of the whole minute's
  quota at start, unlike ``Throttler(N, 60)`` / ``AsyncLimiter(N, 60)``. The request
  bucket starts with a single request, so requests are paced from the very start; a
  burst (up to the capacity) only builds up after idle time.
* A request is weighed by its estimated tokens (prompt + max_tokens * n, as hosted APIs
  count) and corrected from ``usage`` afterwards (:meth:`Permit.settle`).
* Waiters queue FIFO; exactly one timer is armed, for the head of the queue, at the moment
  the head can be served. Nobody polls; 1,000 waiters cost one timer.
* Adaptive: on 429 all senders pause until Retry-After and the rate factor is cut
  multiplicatively (once per cooldown, so a burst of 429s from requests already in flight
  counts once); the factor then creeps back additively to 1.
* ``x-ratelimit-remaining-*`` clamp the buckets (the server knows best); a dimension with
  no configured rate pauses until ``x-ratelimit-reset-*`` when its remaining hits 0.
  Every number from the server is untrusted: used only when finite, clamped (a reset or
  pause is at most ``MAX_RETRY_AFTER_S``).
* Limits nobody configured are learned (:mod:`service.llm.adaptive`): from
  ``x-ratelimit-limit-requests/-tokens`` when the server announces them, else a request
  rate found from 429 bursts (AIMD).
* In flight: a fixed cap; or (``in_flight="rate"``) sized by Little's law from the rate
  in force and the measured latency (``NO_RATE_IN_FLIGHT`` while no rate is known); or
  (``in_flight="auto"``) the adaptive limit of :mod:`service.llm.concurrency`, driven by
  latency. ``max_in_flight`` bounds the last two.
* Cancellation-safe: a cancelled waiter leaves the queue (or, if it was granted in the
  same loop iteration it was cancelled, gives its grant back).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from service.llm.adaptive import (
    AimdRate,
    LearnedLimits,
    clamp_seconds,
    header_number,
    little_in_flight,
)
from service.llm.concurrency import GradientLimit, Slots
from service.llm.constants import (
    DECREASE_COOLDOWN_S,
    DEFAULT_BURST_SECONDS,
    DEFAULT_MAX_IN_FLIGHT,
    LATENCY_EWMA_WEIGHT,
    MIN_BURST_REQUESTS,
    MIN_RATE_FACTOR,
    NO_RATE_IN_FLIGHT,
    RATE_DECREASE_FACTOR,
    RATE_RECOVERY_PER_S,
)
from service.llm.retry import parse_duration

_EPSILON_S = 1e-4
# A waiter whose turn comes within this long is served now. uvloop's timers have
# millisecond resolution and fire up to ~1 ms early; without a tolerance every grant
# took several loop turns of re-arming (the level then dips below zero by at most
# rate x 1 ms, a debt refill repays: the long-run rate is unchanged).
_TOLERANCE_S = 1e-3
_HEADER_DIMS = (("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
                ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"))
_DEFAULT_429_PAUSE_S = 1.0
InFlightMode = Literal["fixed", "rate", "auto"]
# What a finished attempt tells the limiter (Permit.finish): "overload" is a timeout, a
# 5xx or a refused connection; "failed" anything that says nothing about load.
Outcome = Literal["ok", "rate_limited", "overload", "failed"]


@dataclass(frozen=True)
class LimiterSettings:
    rpm: float | None = None
    tpm: float | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    burst_seconds: float = DEFAULT_BURST_SECONDS
    adaptive: bool = True
    decrease_factor: float = RATE_DECREASE_FACTOR
    min_factor: float = MIN_RATE_FACTOR
    recovery_per_s: float = RATE_RECOVERY_PER_S
    decrease_cooldown_s: float = DECREASE_COOLDOWN_S
    in_flight: InFlightMode = "fixed"  # "rate"/"auto": max_in_flight is the upper bound
    # False: announced limits are recorded (``learned``) but not paced here; a shared
    # limiter (one bucket for many processes) paces with them instead. A rate found from
    # 429s is this process's share of the limit and is always paced here (N processes
    # then share the limit as N AIMD flows do).
    pace_locally: bool = True

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (got {value!r})")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 (got {self.max_in_flight!r})")
        if self.burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be > 0 (got {self.burst_seconds!r})")


class _Bucket:
    """Continuous token bucket. ``level`` may go negative (debt from a large request or a
    usage correction); it is repaid by refill before anything else is granted."""

    __slots__ = ("capacity", "level", "rate")

    def __init__(self, per_minute: float, burst_seconds: float, floor: float,
                 initial: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(floor, self.rate * burst_seconds)
        self.level = self.capacity if initial is None else min(self.capacity, initial)

    def need(self, amount: float) -> float:
        # an amount above capacity is granted from a full bucket (then runs into debt)
        return min(amount, self.capacity)

    def wait_for(self, amount: float, factor: float) -> float:
        missing = self.need(amount) - self.level
        return 0.0 if missing <= 0 else missing / (self.rate * factor)


class RateLimiter:
    def __init__(
        self, settings: LimiterSettings, *, clock: Callable[[], float] = time.monotonic,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        # Told how long each acquire waited (slot and rate), e.g. by the worker's metrics.
        self.on_wait = on_wait
        # Called when a permit is released, in the task that held it (e.g. a load test's
        # count of requests on the wire).
        self.on_release: Callable[[], None] | None = None
        # The request bucket starts with one request, not a full burst: the first call goes
        # at once and the next ones are paced from the start (a full bucket would send
        # burst_seconds of requests in the first instant).
        self._requests = (
            _Bucket(settings.rpm, settings.burst_seconds, MIN_BURST_REQUESTS,
                    initial=MIN_BURST_REQUESTS)
            if settings.rpm else None
        )
        self._tokens = _Bucket(settings.tpm, settings.burst_seconds, 1.0) if settings.tpm else None
        self.learned = LearnedLimits(settings.rpm, settings.tpm)
        self.aimd = AimdRate()
        self.concurrency = (GradientLimit(max_limit=settings.max_in_flight)
                            if settings.in_flight == "auto" else None)
        self.latency_s: float | None = None  # running mean of successful attempts
        self._slots = Slots(self._in_flight_cap())
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0  # clock time the armed timer is due
        self._last = clock()
        self._factor = 1.0
        self._paused_until = 0.0
        self._last_decrease = -1e18
        self.in_flight = 0
        self.granted = 0
        self.waited = 0
        self.rate_limited = 0
        self.decreases = 0

    # ---------------------------------------------------------------- public API
    @property
    def factor(self) -> float:
        return self._factor

    @property
    def queued(self) -> int:
        return sum(1 for _, fut in self._queue if not fut.done())

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def acquire(self, tokens: int = 0) -> Permit:
        """Wait for a slot, then for rate; returns a :class:`Permit` to release. The
        time waited goes to ``on_wait``."""
        started = self._clock()
        permit = await self.wait_for_permit(tokens)
        if self.on_wait is not None:
            self.on_wait(max(0.0, self._clock() - started))
        return permit

    async def wait_for_permit(self, tokens: int = 0) -> Permit:
        """:meth:`acquire` without reporting the wait (subclasses extend this)."""
        # Slot first, then rate: rate taken while waiting for a slot would be wasted.
        await self._slots.acquire()
        try:
            await self._take(max(0, tokens))
        except BaseException:
            self._slots.release()
            raise
        self.in_flight += 1
        self.granted += 1
        return Permit(self, max(0, tokens), self._clock())

    @property
    def rpm(self) -> float | None:
        """The request rate in force: configured, announced, or found from 429s."""
        return self.learned.rpm or self.aimd.rpm

    @property
    def rpm_source(self) -> str | None:
        if self.learned.configured_rpm:
            return "configured"
        if self.learned.announced_rpm:
            return "headers"
        return "429s" if self.aimd.rpm else None

    @property
    def in_flight_limit(self) -> int:
        return self._slots.limit

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429: pause everyone until the server's Retry-After, cut the rate (adaptive)."""
        now = self._advance()
        self.rate_limited += 1
        pause = clamp_seconds(retry_after)
        self._paused_until = max(self._paused_until,
                                 now + (_DEFAULT_429_PAUSE_S if pause is None else pause))
        if self.settings.adaptive and self.learned.rpm is None:
            # Nothing configured or announced: the 429s are the only measure of the limit.
            if self.aimd.on_rate_limited(now, self.latency_s or 0.0):
                self.decreases += 1
                self._apply_rates()
        elif self.settings.adaptive and \
                now - self._last_decrease >= self.settings.decrease_cooldown_s:
            self._factor = max(self.settings.min_factor, self._factor * self.settings.decrease_factor)
            self._last_decrease = now
            self.decreases += 1
        self._reschedule()

    def on_headers(self, headers: Mapping[str, str]) -> None:
        """Learn ``x-ratelimit-limit-*``; honour ``x-ratelimit-remaining-requests/-tokens``
        and ``x-ratelimit-reset-*`` (finite and clamped: a peer's numbers are untrusted)."""
        if self.settings.adaptive and self.learned.observe(headers):
            self._apply_rates()
        # Levels only go down and pauses only grow here: an armed timer that now fires
        # early simply re-arms, so nothing is rescheduled.
        now: float | None = None
        for bucket, (remaining_key, reset_key) in zip((self._requests, self._tokens),
                                                      _HEADER_DIMS, strict=True):
            remaining = header_number(headers, remaining_key, 0.0, float("inf"))
            if remaining is None:
                continue
            if now is None:
                now = self._advance()
            if bucket is not None:
                if remaining < bucket.level:
                    bucket.level = remaining
            elif remaining <= 0:
                reset = clamp_seconds(parse_duration(headers.get(reset_key, "")[:64]))
                if reset:
                    self._paused_until = max(self._paused_until, now + reset)

    def _apply_rates(self) -> None:
        """Put the rates in force (configured, announced or found) into the buckets,
        keeping their levels: a change of limit does not grant a new burst."""
        self._advance()
        settings = self.settings
        if settings.pace_locally:
            rpm, tpm = self.rpm, self.learned.tpm
        else:
            rpm = settings.rpm or (self.aimd.rpm if self.learned.rpm is None else None)
            tpm = settings.tpm
        burst = settings.burst_seconds
        if rpm is None:
            self._requests = None
        elif self._requests is None:
            self._requests = _Bucket(rpm, burst, MIN_BURST_REQUESTS, initial=MIN_BURST_REQUESTS)
        elif self._requests.rate != rpm / 60.0:
            level = self._requests.level
            self._requests = _Bucket(rpm, burst, MIN_BURST_REQUESTS, initial=level)
        if tpm is None:
            self._tokens = None
        elif self._tokens is None:
            self._tokens = _Bucket(tpm, burst, 1.0, initial=0.0)
        elif self._tokens.rate != tpm / 60.0:
            self._tokens = _Bucket(tpm, burst, 1.0, initial=self._tokens.level)
        self._slots.set_limit(self._in_flight_cap())
        if self._timer is not None or self._queue:
            self._reschedule()

    def _in_flight_cap(self) -> int:
        settings = self.settings
        if settings.in_flight == "auto" and self.concurrency is not None:
            return self.concurrency.limit
        if settings.in_flight == "rate":
            rpm = self.rpm
            if rpm is None:
                return min(settings.max_in_flight, NO_RATE_IN_FLIGHT)
            # Before any latency is measured, assume a slow endpoint (one second).
            return little_in_flight(rpm, 1.0 if self.latency_s is None else self.latency_s,
                                    bound=settings.max_in_flight)
        return settings.max_in_flight

    def _finish(self, permit: Permit, outcome: Outcome) -> None:
        """What one attempt's end says about the server: its latency, served or not."""
        now = self._clock()
        latency = max(0.0, now - permit.granted_at)
        if outcome == "ok":
            self.aimd.on_success(now)
            self.latency_s = latency if self.latency_s is None else \
                self.latency_s + LATENCY_EWMA_WEIGHT * (latency - self.latency_s)
            if self.aimd.rpm is not None and self.learned.rpm is None:
                before = self.aimd.rpm
                self.aimd.tick(now)
                if self.aimd.rpm != before:
                    self._advance()
                    if self._requests is not None:
                        self._requests.rate = self.aimd.rpm / 60.0
        if self.concurrency is not None and outcome in ("ok", "overload"):
            self.concurrency.on_sample(now, latency, self.in_flight,
                                       overload=outcome == "overload")
        cap = self._in_flight_cap()
        if cap != self._slots.limit:
            self._slots.set_limit(cap)

    # ---------------------------------------------------------------- internals
    def _advance(self) -> float:
        now = self._clock()
        dt = now - self._last
        self._last = now
        if dt > 0:
            # time spent paused refills the buckets but does not restore the rate factor
            factor = self._factor
            requests, tokens = self._requests, self._tokens
            if requests is not None:
                level = requests.level + requests.rate * factor * dt
                requests.level = level if level < requests.capacity else requests.capacity
            if tokens is not None:
                level = tokens.level + tokens.rate * factor * dt
                tokens.level = level if level < tokens.capacity else tokens.capacity
            if factor < 1.0 and now >= self._paused_until:
                self._factor = min(1.0, factor + self.settings.recovery_per_s * dt)
        return now

    def _wait_time(self, tokens: int, now: float) -> float:
        wait = self._paused_until - now
        if wait < 0.0:
            wait = 0.0
        requests = self._requests
        if requests is not None:
            missing = (1.0 if requests.capacity > 1.0 else requests.capacity) - requests.level
            if missing > 0:
                w = missing / (requests.rate * self._factor)
                if w > wait:
                    wait = w
        if self._tokens is not None:
            w = self._tokens.wait_for(tokens, self._factor)
            if w > wait:
                wait = w
        return wait

    def _debit(self, tokens: int) -> None:
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens

    def _credit(self, tokens: int, requests: int = 1) -> None:
        if self._requests is not None:
            self._requests.level = min(self._requests.capacity, self._requests.level + requests)
        if self._tokens is not None:
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + tokens)

    async def _take(self, tokens: int) -> None:
        now = self._advance()
        if not self._head_pending() and self._wait_time(tokens, now) <= _TOLERANCE_S:
            self._debit(tokens)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((tokens, fut))
        self.waited += 1
        if self._timer is None:
            self._reschedule()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted and cancelled in the same iteration: give the grant back.
                self._credit(tokens)
            # A cancelled entry stays in the deque and is skipped lazily (O(1) cancel);
            # if it was the head, the timer must be re-armed for the next waiter.
            self._reschedule()
            raise

    def _head_pending(self) -> bool:
        queue = self._queue
        while queue and queue[0][1].done():
            queue.popleft()
        return bool(queue)

    def _reschedule(self) -> None:
        """Make sure the head of the queue is looked at when it can be served. A timer
        already due no later than that is kept (firing early, it re-arms itself)."""
        if not self._head_pending():
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        now = self._advance()
        wait = self._wait_time(self._queue[0][0], now)
        if self._timer is not None:
            if self._timer_at <= now + wait + _TOLERANCE_S:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        if wait <= _TOLERANCE_S:
            self._timer = loop.call_soon(self._dispatch)
            self._timer_at = now
        else:
            self._timer = loop.call_later(wait + _EPSILON_S, self._dispatch)
            self._timer_at = now + wait + _EPSILON_S

    def _dispatch(self) -> None:
        self._timer = None
        now = self._advance()
        # Serve strictly in arrival order; stop at the first waiter that must wait.
        queue = self._queue
        while self._head_pending():
            tokens, fut = queue[0]
            if self._wait_time(tokens, now) > _TOLERANCE_S:
                break
            queue.popleft()
            self._debit(tokens)
            fut.set_result(None)
        self._reschedule()

    def _settle(self, charged: int, actual: int) -> None:
        if self._tokens is None or actual == charged:
            return
        self._advance()
        # refund (actual < charged) or debit the difference; debt is repaid by refill
        self._tokens.level = min(self._tokens.capacity, self._tokens.level + (charged - actual))
        if actual < charged and self._timer is not None:
            self._reschedule()  # only re-arms when the head can now go earlier

    def _release(self) -> None:
        self.in_flight -= 1
        self._slots.release()
        if self.on_release is not None:
            self.on_release()

    def snapshot(self) -> dict[str, Any]:
        rpm = self.rpm
        concurrency = self.concurrency
        return {
            "rpm": None if rpm is None else round(rpm, 1),
            "tpm": self.learned.tpm,
            "rpm_source": self.rpm_source,
            "announced_rpm": self.learned.announced_rpm,
            "announced_tpm": self.learned.announced_tpm,
            "max_in_flight": self.settings.max_in_flight,
            "in_flight_mode": self.settings.in_flight,
            "in_flight_limit": self._slots.limit,
            "latency_s": None if self.latency_s is None else round(self.latency_s, 4),
            "no_load_latency_s": (None if concurrency is None or concurrency.no_load_s is None
                                  else round(concurrency.no_load_s, 4)),
            "rate_factor": round(self._factor, 4),
            "paused_for_s": round(self.paused_for(), 3),
            "in_flight": self.in_flight,
            "queued": self.queued,
            "granted": self.granted,
            "waited": self.waited,
            "rate_limited": self.rate_limited,
            "rate_decreases": self.decreases,
        }


class Permit:
    """One admitted request: :meth:`settle` with the actual tokens, then :meth:`release`.
    Usable as ``async with await limiter.acquire(n) as permit:``."""

    __slots__ = ("_finished", "_limiter", "_released", "granted_at", "tokens")

    def __init__(self, limiter: RateLimiter, tokens: int, granted_at: float) -> None:
        self._limiter = limiter
        self.tokens = tokens
        self.granted_at = granted_at  # limiter clock: the attempt's latency is measured from here
        self._released = False
        self._finished = False

    def settle(self, actual_tokens: int) -> None:
        """Correct the token charge from the response's ``usage`` (refund or debit)."""
        self._limiter._settle(self.tokens, actual_tokens)
        self.tokens = actual_tokens

    def finish(self, outcome: Outcome) -> None:
        """Tell the limiter how the attempt ended (once; call before :meth:`release`):
        its latency and outcome drive learned rates and the adaptive in-flight limit."""
        if not self._finished and not self._released:
            self._finished = True
            self._limiter._finish(self, outcome)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
