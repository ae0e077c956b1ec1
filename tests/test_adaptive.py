"""Limits nobody told us, rule by rule: untrusted header numbers, learned limits, the AIMD
rate, Little's law sizing, the adaptive concurrency limit and its resizable slots. Every
clock is injected; nothing sleeps and nothing asserts on timing."""

from __future__ import annotations

import asyncio
import math

import pytest

from service.config import load_config
from service.errors import ConfigError
from service.llm.adaptive import (
    AimdRate,
    LearnedLimits,
    clamp_seconds,
    header_number,
    little_in_flight,
)
from service.llm.concurrency import GradientLimit, Slots
from service.llm.constants import MAX_ADAPTIVE_IN_FLIGHT, MAX_RETRY_AFTER_S, NO_RATE_IN_FLIGHT
from service.llm.limiter import LimiterSettings, RateLimiter
from service.llm.retry import parse_duration
from service.progress import status_line
from service.serve.metrics import JobsView, ServeMetrics, Totals


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ untrusted numbers
@pytest.mark.parametrize(("raw", "expected"), [
    ("5", 5.0), (" 7.5 ", 7.5), ("0", 0.0), ("-3", 0.0), ("1e9", 1000.0),
    ("inf", None), ("-inf", None), ("nan", None), ("1e999", None), ("abc", None),
    ("", None), ("9" * 100, None),
])
def test_header_numbers_are_finite_and_clamped(raw: str, expected: float | None) -> None:
    assert header_number({"x": raw}, "x", 0.0, 1000.0) == expected


@pytest.mark.parametrize(("seconds", "expected"), [
    (None, None), (1.5, 1.5), (-1.0, 0.0), (math.inf, None), (math.nan, None),
    (1e9, MAX_RETRY_AFTER_S),
])
def test_peer_durations_are_capped(seconds: float | None, expected: float | None) -> None:
    assert clamp_seconds(seconds) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("inf", None), ("-inf", None), ("nan", None), ("1.5s", 1.5), ("6m0s", 360.0),
])
def test_parse_duration_refuses_non_finite(text: str, expected: float | None) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("headers", [
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "inf"},
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "99999999h"},
    {"x-ratelimit-remaining-requests": "-inf", "x-ratelimit-reset-requests": "1s"},
    {"x-ratelimit-remaining-tokens": "-inf", "x-ratelimit-reset-tokens": "nan"},
    {"x-ratelimit-remaining-requests": "nan"},
])
async def test_a_hostile_endpoint_cannot_pause_the_client_for_ever(
        headers: dict[str, str]) -> None:
    clock = Clock()
    limiter = RateLimiter(LimiterSettings(), clock=clock)
    limiter.on_headers(headers)
    limiter.on_rate_limited(math.inf)
    assert limiter.paused_for() <= MAX_RETRY_AFTER_S
    with_rate = RateLimiter(LimiterSettings(rpm=600), clock=clock)
    with_rate.on_headers(headers)
    clock.now += MAX_RETRY_AFTER_S + 1
    # a bucket clamped by "remaining" refills: the next request goes at once (the
    # timeout only stops a broken limiter from hanging the test)
    assert with_rate.paused_for() == 0
    permit = await asyncio.wait_for(with_rate.acquire(), 30)
    permit.release()


# ------------------------------------------------------------------ learned limits
@pytest.mark.parametrize(("configured", "announced", "expected_rpm", "changed"), [
    (None, "6000", 6000.0, True),
    (3000.0, "6000", 3000.0, False),  # a configured value wins
    (None, "0", 1.0, True),  # clamped into range, never zero
    (None, "inf", None, False),
    (None, "junk", None, False),
    (None, "1e20", 1e8, True),
])
def test_learned_limits_table(configured: float | None, announced: str,
                              expected_rpm: float | None, changed: bool) -> None:
    limits = LearnedLimits(configured_rpm=configured)
    assert limits.observe({"x-ratelimit-limit-requests": announced}) is changed
    assert limits.rpm == expected_rpm


def test_learned_limits_follow_changes_and_tokens() -> None:
    limits = LearnedLimits()
    assert limits.observe({"x-ratelimit-limit-requests": "6000",
                           "x-ratelimit-limit-tokens": "1000000"})
    assert not limits.observe({"x-ratelimit-limit-requests": "6000"})
    assert limits.observe({"x-ratelimit-limit-requests": "3000"})
    assert (limits.rpm, limits.tpm, limits.changes) == (3000.0, 1_000_000.0, 2)


def test_limiter_takes_announced_limits_and_shows_them() -> None:
    clock = Clock()
    limiter = RateLimiter(LimiterSettings(max_in_flight=MAX_ADAPTIVE_IN_FLIGHT, in_flight="rate"), clock=clock)
    assert limiter.snapshot()["rpm"] is None
    assert limiter.in_flight_limit == NO_RATE_IN_FLIGHT
    limiter.on_headers({"x-ratelimit-limit-requests": "6000"})
    snap = limiter.snapshot()
    assert (snap["rpm"], snap["rpm_source"]) == (6000.0, "headers")
    # Little's law with the one-second guess: 100/s x 1 s x 2 + 8
    assert limiter.in_flight_limit == 208
    configured = RateLimiter(LimiterSettings(rpm=600), clock=clock)
    configured.on_headers({"x-ratelimit-limit-requests": "6000"})
    assert (configured.rpm, configured.rpm_source) == (600, "configured")


# ------------------------------------------------------------------ AIMD from 429s
def test_aimd_cuts_once_per_burst_then_increases_additively() -> None:
    aimd = AimdRate(decrease=0.9, increase_share_per_s=0.01, window_s=2.0)
    t = 0.0
    for _ in range(200):  # the server served 100/s for two seconds
        t += 0.01
        aimd.on_success(t)
    assert aimd.rpm is None
    assert aimd.on_rate_limited(t, latency_s=0.5)
    assert aimd.rpm == pytest.approx(0.9 * 6000, rel=0.02)
    first = aimd.rpm
    # the rest of the burst: requests sent before the cut, back within the latency
    assert not any(aimd.on_rate_limited(t + dt, latency_s=0.5) for dt in (0.1, 0.3, 0.9))
    assert aimd.rpm == first and aimd.bursts == 1
    aimd.tick(t + 1.0)
    aimd.tick(t + 11.0)  # + 1% of the cut rate per second, for ten seconds
    assert aimd.rpm == pytest.approx(first * 1.1, rel=0.01)
    assert aimd.on_rate_limited(t + 11.5, latency_s=0.5)  # a new burst cuts again
    assert aimd.bursts == 2 and aimd.rpm < first * 1.1


@pytest.mark.parametrize(("served_per_s", "rpm_before", "expected"), [
    (100.0, None, 5400.0),  # from what was served
    (100.0, 3000.0, 2700.0),  # never above the rate in force
    (1000.0, 6000.0, 5400.0),
    (10.0, 6000.0, 3000.0),  # a window starved by pauses: at most halved
    (0.0, None, None),  # nothing served yet: too early to set a rate
    (0.0, 600.0, 540.0),
])
def test_aimd_cut_table(served_per_s: float, rpm_before: float | None,
                        expected: float | None) -> None:
    aimd = AimdRate(decrease=0.9, window_s=2.0)
    t = 0.0
    if served_per_s:
        for _ in range(int(served_per_s * 2)):
            t += 1.0 / served_per_s
            aimd.on_success(t)
    aimd.rpm = rpm_before
    aimd.on_rate_limited(t, 0.1)
    assert aimd.rpm == (None if expected is None else pytest.approx(expected, rel=0.02))


def test_aimd_waits_for_a_measurable_span() -> None:
    """A 429 in the first moments (a few answers in 0.1 s) does not set a rate from
    them: that once pinned a run at a third of its limit."""
    aimd = AimdRate(decrease=0.9, window_s=2.0)
    for k in range(5):
        aimd.on_success(0.02 * k)
    assert not aimd.on_rate_limited(0.1, 0.3)
    assert aimd.rpm is None
    for k in range(100):
        aimd.on_success(0.1 + 0.01 * k)
    assert aimd.on_rate_limited(1.2, 0.3)
    assert aimd.rpm == pytest.approx(0.9 * 60 * 105 / 1.2, rel=0.02)


async def test_limiter_paces_at_the_rate_found_from_429s() -> None:
    clock = Clock()
    limiter = RateLimiter(LimiterSettings(max_in_flight=MAX_ADAPTIVE_IN_FLIGHT, in_flight="rate"), clock=clock)
    for _ in range(150):
        clock.now += 0.01
        permit = await limiter.acquire()
        permit.finish("ok")
        permit.release()
    limiter.on_rate_limited(0.05)
    snap = limiter.snapshot()
    assert snap["rpm_source"] == "429s"
    assert snap["rpm"] == pytest.approx(0.9 * 6000, rel=0.05)
    assert limiter.paused_for() == pytest.approx(0.05)
    limiter.on_rate_limited(0.05)  # same burst: no second cut
    assert limiter.decreases == 1


# ------------------------------------------------------------------ Little's law
@pytest.mark.parametrize(("rpm", "latency", "expected"), [
    (6000, 1.0, 208), (30000, 1.0, 1008), (6000, 0.2, 48), (60, 0.1, 9),
    (10**8, 60.0, MAX_ADAPTIVE_IN_FLIGHT), (6000, math.inf, MAX_ADAPTIVE_IN_FLIGHT),
    (6000, 0.0, 8),
])
def test_little_in_flight(rpm: float, latency: float, expected: int) -> None:
    assert little_in_flight(rpm, latency) == expected


async def test_in_flight_follows_latency() -> None:
    clock = Clock()
    limiter = RateLimiter(LimiterSettings(rpm=6000, max_in_flight=MAX_ADAPTIVE_IN_FLIGHT, in_flight="rate"), clock=clock)
    for latency in [0.2] * 200:
        permit = await limiter.acquire()
        clock.now += latency
        permit.finish("ok")
        permit.release()
    low = limiter.in_flight_limit
    for latency in [2.0] * 200:
        permit = await limiter.acquire()
        clock.now += latency
        permit.finish("ok")
        permit.release()
    assert low == pytest.approx(48, abs=2)
    assert limiter.in_flight_limit == pytest.approx(408, abs=10)


# ------------------------------------------------------------------ adaptive concurrency
def drive(controller: GradientLimit, latency_of: object, seconds: float,
          demand: int | None = None) -> list[int]:
    """A closed loop against a server model: ``latency_of(n)`` for n in flight; the client
    keeps min(limit, demand) in flight, so by Little's law one completion arrives every
    latency / n seconds. Returns the limit after each completion."""
    assert callable(latency_of)
    t, limits = 0.0, []
    while t < seconds:
        n = controller.limit if demand is None else min(controller.limit, demand)
        latency = float(latency_of(n))
        t += latency / n
        limits.append(controller.on_sample(t, latency, n))
    return limits


def batching_server(capacity: int, base: float, slowdown: float) -> object:
    """The simulator's --capacity model: a full batch is 1+slowdown slower; beyond the
    capacity requests queue (latency grows in proportion)."""
    def latency(n: int) -> float:
        served = min(n, capacity)
        per = base * (1 + slowdown * (served - 1) / max(1, capacity - 1))
        return per * max(1.0, n / capacity)
    return latency


@pytest.mark.parametrize(("capacity", "slowdown", "low", "high", "share"), [
    (48, 0.5, 44, 72, 0.95),  # knee at 48; p50 within 2x of no-load
    (4, 0.2, 4, 8, 0.95),
    # a full batch 3x slower than one request: no collapse, though the latency ceiling
    # (2.5x the no-load latency) gives up some throughput
    (48, 2.0, 24, 56, 0.85),
    (256, 0.5, 230, 400, 0.95),
    # llama.cpp on a CPU: 4 slots, a full batch 3x slower than one request
    (4, 2.0, 4, 12, 0.95),
])
def test_gradient_finds_the_knee(capacity: int, slowdown: float, low: int, high: int,
                                 share: float) -> None:
    latency_of = batching_server(capacity, 0.3, slowdown)
    controller = GradientLimit()
    limits = drive(controller, latency_of, seconds=120)
    tail = limits[len(limits) // 2:]
    assert low <= min(tail) and max(tail) <= high, (min(tail), max(tail))
    assert controller.no_load_s is not None and controller.no_load_s <= 0.3 * (1 + slowdown) + 1e-9
    # throughput at the settled limit is (nearly) the server's best; when a full batch is
    # less than twice as slow as one request, latency stays within twice the no-load one
    settled = sorted(tail)[len(tail) // 2]
    best = capacity / latency_of(capacity)
    assert settled / latency_of(settled) >= share * best
    if slowdown < 1:
        assert latency_of(settled) <= 2 * 0.3


def test_gradient_is_bounded() -> None:
    controller = GradientLimit(initial=8, max_limit=100)
    limits = drive(controller, lambda n: 0.1, seconds=60)  # never slows: grows to the bound
    assert max(limits) == 100
    floor = GradientLimit(initial=8, min_limit=2)
    for k in range(50):
        floor.on_sample(float(k * 10), 1.0, 8, overload=True)
    assert floor.limit == 2


def test_gradient_backs_off_fast_once_per_window() -> None:
    controller = GradientLimit(initial=64)
    drive(controller, lambda n: 0.1, seconds=0.5)
    before = controller.limit
    controller.on_sample(10.0, 5.0, before, overload=True)
    after_one = controller.limit
    for dt in (0.01, 0.02, 0.03):  # the same storm: counted once
        controller.on_sample(10.0 + dt, 5.0, before, overload=True)
    assert after_one == before // 2 or after_one == int(before * 0.5)
    assert controller.limit == after_one and controller.backoffs == 1


def test_gradient_ignores_app_limited_windows() -> None:
    controller = GradientLimit(initial=64)
    drive(controller, lambda n: 0.1, seconds=30, demand=10)  # the caller never used it
    assert controller.limit == 64
    assert controller.windows > 10


@pytest.mark.parametrize(("throughput_follows", "grows"), [(True, True), (False, False)])
def test_latency_above_tolerance_then_throughput_decides(throughput_follows: bool,
                                                         grows: bool) -> None:
    controller = GradientLimit(initial=16, tolerance=1.5, max_ratio=10.0, min_samples=8)
    controller.slow_start = False
    # window 1: 16 in flight at the no-load latency 1 s (16/s)
    t = 0.0
    for _ in range(20):
        t += 1 / 16
        controller.on_sample(t, 1.0, 16)
    after_first = controller.limit  # grew: latency at no-load
    assert after_first > 16
    # window 2: twice the latency; throughput either followed the limit or stayed at 16/s
    # (the first 2 s of answers were sent under the old limit and are left out)
    rate = float(after_first) if throughput_follows else 16.0
    for _ in range(int(rate * 4) + 2):
        t += 1 / rate
        controller.on_sample(t, 2.0, after_first)
    assert (controller.limit > after_first) is grows
    assert (controller.limit < after_first) is not grows


def _window(controller: GradientLimit, t: float, count: int, latency: float,
            rate: float, in_flight: int) -> float:
    """``count`` completions at ``rate`` per second, each ``latency`` long; returns the time."""
    for _ in range(count):
        t += 1 / rate
        controller.on_sample(t, latency, in_flight)
    return t


@pytest.mark.parametrize(("rate_after_doubling", "limit_after", "still_slow_start"), [
    (2.1, 4, False),   # 8 in flight served no more than 4: slots were full, back to 4
    (3.8, 16, True),   # throughput followed the limit: keep doubling
])
def test_slow_start_ends_where_doubling_stops_paying(rate_after_doubling: float,
                                                    limit_after: int,
                                                    still_slow_start: bool) -> None:
    controller = GradientLimit(initial=4, min_samples=8)
    t = _window(controller, 0.0, 9, 2.0, 2.0, 4)  # 4 in flight, 2/s: the no-load window
    assert controller.limit == 8 and controller.slow_start
    # latency within the tolerance (2.5 s against 2 s) whatever the throughput did
    t = _window(controller, t, 3 * 8, 2.5, rate_after_doubling, 8)
    assert controller.limit == limit_after
    assert controller.slow_start is still_slow_start


def test_answers_sent_under_the_previous_limit_are_left_out() -> None:
    controller = GradientLimit(initial=4, min_samples=8)
    t = _window(controller, 0.0, 9, 1.0, 4.0, 4)
    assert controller.limit == 8
    windows = controller.windows
    # Slow answers to requests sent before the change (latency > time since): ignored,
    # however many, so they cannot shrink the new limit.
    for _ in range(40):
        t += 0.01
        controller.on_sample(t, 5.0, 8)
    assert controller.windows == windows and controller.limit == 8
    # Answers sent after it count again.
    _window(controller, t + 1.0, 12, 1.0, 8.0, 8)
    assert controller.windows == windows + 1


# ------------------------------------------------------------------ resizable slots
async def test_slots_grow_and_shrink_in_order() -> None:
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    order: list[int] = []

    async def take(k: int) -> None:
        await slots.acquire()
        order.append(k)

    waiters = [asyncio.create_task(take(k)) for k in range(3)]
    await asyncio.sleep(0)
    assert order == [] and slots.waiting == 3
    slots.set_limit(3)
    await asyncio.sleep(0)
    assert order == [0]
    slots.set_limit(1)  # shrink: nothing more until held < 1
    slots.release()
    slots.release()
    await asyncio.sleep(0)
    assert order == [0] and slots.held == 1
    slots.release()
    await asyncio.sleep(0)
    assert order == [0, 1]
    slots.release()
    await asyncio.sleep(0)
    assert order == [0, 1, 2]
    await asyncio.gather(*waiters)


async def test_a_cancelled_slot_waiter_leaves_no_trace() -> None:
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release()
    assert slots.held == 0 and slots.waiting == 0
    await slots.acquire()
    assert slots.held == 1


# ------------------------------------------------------------------ where they show
@pytest.mark.parametrize(("limiter", "shown"), [
    ({"in_flight_limit": 208, "rpm": 6000.0, "rpm_source": "headers"},
     "in-flight 3/208 | 6,000 rpm (headers) |"),
    ({"in_flight_limit": 50, "rpm": 5400.0, "rpm_source": "429s"}, "3/50 | 5,400 rpm (429s)"),
    ({"in_flight_limit": 64, "rpm": 600, "rpm_source": "configured"}, "3/64 | 600 rpm |"),
    ({"in_flight_limit": 42, "in_flight_mode": "auto", "no_load_latency_s": 0.31, "rpm": None},
     "3/42 auto, no-load 0.31s |"),
    ({"a": {"in_flight_limit": 1}, "b": {"in_flight_limit": 2}}, "in-flight 3 |"),
])
def test_progress_shows_limits(limiter: dict[str, object], shown: str) -> None:
    line = status_line(written=1, target=10, admitted=2, elapsed_s=1.0, written_this_run=1,
                       usage={"in_flight": 3, "limiter": limiter})
    assert shown in line


def test_metrics_show_limits() -> None:
    one = Totals(limits={"rpm": 6000.0, "in_flight": 208.0, "no_load_latency_s": 0.3})
    two = Totals(limits={"rpm": 3000.0, "tpm": 1e6, "in_flight": 300.0})
    total = Totals()
    total.add(one)
    total.add(two)
    assert total.limits == {"rpm": 6000.0, "tpm": 1e6, "in_flight": 300.0,
                            "no_load_latency_s": 0.3}
    assert total.without_gauges().limits == {}
    metrics = ServeMetrics()
    metrics.bind(lambda: JobsView(total, {}, 0, False))
    text = metrics.render().decode()
    assert 'selfinstruct_llm_limit{kind="rpm"} 6000.0' in text
    assert 'selfinstruct_llm_limit{kind="in_flight"} 300.0' in text
    assert "selfinstruct_llm_no_load_latency_seconds 0.3" in text


@pytest.mark.parametrize(("given", "value", "mode", "bound"), [
    (None, None, "rate", MAX_ADAPTIVE_IN_FLIGHT), ("auto", "auto", "auto", MAX_ADAPTIVE_IN_FLIGHT),
    (" AUTO ", "auto", "auto", MAX_ADAPTIVE_IN_FLIGHT), ("12", 12, "fixed", 12), (1, 1, "fixed", 1),
])
def test_max_in_flight_config(given: object, value: object, mode: str, bound: int) -> None:
    config, _ = load_config({"max_in_flight": given}, env={})
    assert (config.max_in_flight, config.in_flight_mode(), config.in_flight_bound()) == \
        (value, mode, bound)


@pytest.mark.parametrize("given", ["autox", "0", "10001", "-1"])
def test_max_in_flight_config_errors(given: str) -> None:
    with pytest.raises(ConfigError, match="max_in_flight"):
        load_config({"max_in_flight": given}, env={})
