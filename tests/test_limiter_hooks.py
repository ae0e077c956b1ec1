"""The limiter's two hooks, on its injected clock (no sleeps, no wall-clock asserts):
``on_wait`` hears how long each acquire waited (the worker's metrics subscribe), and
``on_release`` hears each released permit (the load test's count of requests on the
wire)."""

from __future__ import annotations

import asyncio

import pytest

from service.llm.limiter import LimiterSettings, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_on_wait_reports_each_acquires_wait_on_the_limiter_clock() -> None:
    clock = Clock()
    waits: list[float] = []
    limiter = RateLimiter(LimiterSettings(max_in_flight=1), clock=clock, on_wait=waits.append)
    first = await limiter.acquire()
    assert waits == [0.0]  # a free slot: no wait
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)  # let it start waiting for the slot
    assert not second.done() and waits == [0.0]
    clock.now += 2.5
    first.release()
    permit = await second
    assert waits == [0.0, 2.5]
    permit.release()
    assert limiter.snapshot()["in_flight"] == 0


@pytest.mark.parametrize("hooked", [False, True])
async def test_on_wait_is_optional_and_settable_later(hooked: bool) -> None:
    waits: list[float] = []
    limiter = RateLimiter(LimiterSettings(), clock=Clock())
    if hooked:
        limiter.on_wait = waits.append  # as serve does once a job's backend exists
    async with await limiter.acquire(tokens=10):
        pass
    assert waits == ([0.0] if hooked else [])


async def test_on_release_hears_every_release_once() -> None:
    released: list[int] = []
    limiter = RateLimiter(LimiterSettings(max_in_flight=4), clock=Clock())
    limiter.on_release = lambda: released.append(limiter.in_flight)
    permits = [await limiter.acquire() for _ in range(3)]
    permits[0].release()
    permits[0].release()  # a second release of the same permit is a no-op
    for permit in permits[1:]:
        permit.release()
    assert released == [2, 1, 0]  # after each release, what is still in flight
