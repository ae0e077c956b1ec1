"""How many requests to keep in flight when nobody says: an adaptive concurrency limit.

A self-hosted server (vLLM, TGI, SGLang, llama.cpp) never answers 429: past its knee it
queues, latency climbs and requests time out. :class:`GradientLimit` finds the knee from
measured latency, in the way production concurrency limiters do (Netflix's gradient
limiter, TCP Vegas), with one addition for continuous-batching servers, whose latency
rises as their batch fills even when nothing queues:

* It keeps a **no-load latency** estimate: the lowest window mean of the recent past.
* Per window of completions it compares the window's mean latency with that estimate.
  Near it (ratio <= ``tolerance``) nothing queues: grow (doubling until the first sign
  of queueing, then by about the square root of the limit). Doubling also ends, back at
  the previous limit, when it did not raise throughput by 30% in proportion: a server
  whose slots are full only queues the extra requests, and its latency shows that late.
  Answers to requests sent before the limit last changed are left out of the window:
  they measure the old limit.
* Above it, the latency alone cannot tell batching from queueing, so throughput decides:
  if the last change of the limit moved throughput with it (by at least 30% in
  proportion), the extra requests were served, not queued, so keep growing; if not,
  the extra requests only queued, so shrink by 10%.
* Above ``max_ratio`` (2.5) it shrinks in proportion, whatever throughput says (a latency
  ceiling: a server whose full batch is 3x slower than one request gives up ~10% of
  its throughput for it); on a timeout or 5xx it halves at once (once per window).
* Windows where the caller kept fewer requests in flight than the limit (app-limited)
  change nothing: a limit that was not used says nothing about the server.

Pure: every method takes ``now`` (seconds), nothing sleeps, so every rule is tested from
tables. :class:`Slots` is the resizable semaphore the limiter enforces it with.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from service.llm.constants import (
    CONCURRENCY_BACKOFF,
    CONCURRENCY_INITIAL,
    CONCURRENCY_MAX_RATIO,
    CONCURRENCY_MIN,
    CONCURRENCY_MIN_SAMPLES,
    CONCURRENCY_TOLERANCE,
    CONCURRENCY_WINDOW_LATENCIES,
    MAX_ADAPTIVE_IN_FLIGHT,
    NO_LOAD_HORIZON_S,
)

_BUSY_SHARE = 0.75  # a window counts when requests in flight averaged this share of the limit
_GAIN_NEEDED = 0.3  # throughput must follow the limit by at least this elasticity
_SHRINK = 0.9


def _elasticity(prev: tuple[float, float] | None, limit: float,
                throughput: float) -> float | None:
    """How throughput followed the last change of the limit (its relative change over
    the limit's); None without a previous window, or when the limit barely moved."""
    if prev is None or prev[1] <= 0 or abs(limit / prev[0] - 1) < 0.01:
        return None
    return (throughput / prev[1] - 1) / (limit / prev[0] - 1)


class GradientLimit:
    """The adaptive limit; feed it every finished request with :meth:`on_sample`."""

    def __init__(self, *, initial: int = CONCURRENCY_INITIAL, min_limit: int = CONCURRENCY_MIN,
                 max_limit: int = MAX_ADAPTIVE_IN_FLIGHT, tolerance: float = CONCURRENCY_TOLERANCE,
                 max_ratio: float = CONCURRENCY_MAX_RATIO, backoff: float = CONCURRENCY_BACKOFF,
                 min_samples: int = CONCURRENCY_MIN_SAMPLES,
                 window_latencies: float = CONCURRENCY_WINDOW_LATENCIES,
                 no_load_horizon_s: float = NO_LOAD_HORIZON_S) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit (got {min_limit}, {max_limit})")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.tolerance = tolerance
        self.max_ratio = max_ratio
        self.backoff = backoff
        self.min_samples = min_samples
        self.window_latencies = window_latencies
        self.no_load_horizon_s = no_load_horizon_s
        self._limit = float(min(max_limit, max(min_limit, initial)))
        self.slow_start = True
        self.no_load_s: float | None = None
        self._window_means: deque[tuple[float, float]] = deque()  # (time, mean latency)
        self._prev: tuple[float, float] | None = None  # (limit, throughput) of last window
        self._start: float | None = None
        self._count = 0
        self._latency_sum = 0.0
        self._in_flight_sum = 0
        self._backoff_until = -math.inf
        self._changed_at = -math.inf  # when the limit last changed
        self.windows = 0
        self.backoffs = 0
        self.last_latency_s: float | None = None
        self.last_throughput: float | None = None

    @property
    def limit(self) -> int:
        return int(self._limit)

    def on_sample(self, now: float, latency_s: float, in_flight: int, *,
                  overload: bool = False) -> int:
        """One finished request: its latency, how many were in flight when it finished
        (itself included), and whether it timed out or got a 5xx. Returns the limit."""
        if overload:
            if now >= self._backoff_until:
                self._set(self._limit * self.backoff, now)
                self.slow_start = False
                self.backoffs += 1
                # requests sent under the old limit come back within about a latency
                self._backoff_until = now + (self.no_load_s or 1.0)
                self._reset(now)
                self._prev = None
            return self.limit
        if not math.isfinite(latency_s) or latency_s < 0:
            return self.limit
        if now - latency_s < self._changed_at:
            # Sent under the previous limit: it would blur what the current one does,
            # so the window opens after the last of them.
            self._start = now
            return self.limit
        if self._start is None:
            self._start = now
        self._count += 1
        self._latency_sum += latency_s
        self._in_flight_sum += max(0, in_flight)
        mean = self._latency_sum / self._count
        elapsed = now - self._start
        if self._count >= self.min_samples and elapsed >= self.window_latencies * mean \
                and elapsed > 0:
            self._close(now, mean, self._count / elapsed, self._in_flight_sum / self._count)
        return self.limit

    # ---------------------------------------------------------------- internals
    def _close(self, now: float, mean: float, throughput: float, in_flight: float) -> None:
        self.windows += 1
        self.last_latency_s = mean
        self.last_throughput = throughput
        limit = self._limit
        self._reset(now)
        means = self._window_means
        means.append((now, mean))
        while means and means[0][0] < now - self.no_load_horizon_s:
            means.popleft()
        self.no_load_s = min(m for _, m in means)
        if in_flight < _BUSY_SHARE * limit:
            return  # app-limited: the limit was not what held requests back
        ratio = mean / self.no_load_s if self.no_load_s > 0 else 1.0
        prev, self._prev = self._prev, (limit, throughput)
        step = max(1.0, math.sqrt(limit))
        elasticity = _elasticity(prev, limit, throughput)
        if ratio > self.max_ratio:
            self.slow_start = False
            self._set(limit * max(0.5, self.tolerance / ratio), now)
        elif ratio <= self.tolerance:
            if self.slow_start and prev is not None and elasticity is not None \
                    and elasticity < _GAIN_NEEDED:
                # Slow start ends where doubling stops paying: the server's slots were
                # already full, and the extra requests only queue (its latency lags).
                self.slow_start = False
                self._set(prev[0], now)
                return
            self._set(limit * 2 if self.slow_start else limit + step, now)
        else:
            self.slow_start = False
            if elasticity is None:
                self._set(limit * _SHRINK, now)  # queueing by latency, no evidence of gain
                return
            # Growing with throughput following, or shrinking with throughput falling
            # as much: the requests were being served, so the knee is higher.
            self._set(limit + step if elasticity >= _GAIN_NEEDED else limit * _SHRINK, now)

    def _set(self, value: float, now: float) -> None:
        before = self.limit
        self._limit = min(float(self.max_limit), max(float(self.min_limit), value))
        if self.limit != before:
            self._changed_at = now

    def _reset(self, now: float) -> None:
        self._start = now
        self._count = 0
        self._latency_sum = 0.0
        self._in_flight_sum = 0


class Slots:
    """A FIFO counting semaphore whose size can change while it is in use (an
    :class:`asyncio.Semaphore` cannot shrink). Shrinking never cancels anything: holders
    finish, and new holders wait until fewer than ``limit`` are held."""

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._wake()

    @property
    def waiting(self) -> int:
        return sum(1 for fut in self._waiters if not fut.done())

    async def acquire(self) -> None:
        if self.held < self._limit and not self._has_waiters():
            self.held += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted and cancelled in the same iteration: give it back
            raise

    def release(self) -> None:
        self.held -= 1
        self._wake()

    def _has_waiters(self) -> bool:
        waiters = self._waiters
        while waiters and waiters[0].done():
            waiters.popleft()
        return bool(waiters)

    def _wake(self) -> None:
        # The slot is counted as held when granted, so a waiter woken here cannot lose
        # it to a newcomer before it runs.
        while self.held < self._limit and self._has_waiters():
            self.held += 1
            self._waiters.popleft().set_result(None)
