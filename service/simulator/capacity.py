"""A self-hosted server's capacity: at most N requests served together, each slower as the
batch fills (continuous batching), the rest waiting in a FIFO queue, optionally refused
with 503 past a queue limit. Such servers never answer 429: overload shows as latency.

The slowdown is fixed when a request enters the batch: with ``b`` requests being served
(itself included) out of ``capacity``, its latency is multiplied by
``1 + batch_slowdown * (b - 1) / (capacity - 1)`` (1 for a batch of one, 1 +
batch_slowdown for a full batch). Throughput therefore peaks with a full batch at
``capacity / (latency * (1 + batch_slowdown))``; more in flight only adds queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class QueueFull(Exception):
    """The queue already holds ``queue_limit`` requests: answer 503."""


class BatchCapacity:
    def __init__(self, capacity: int, batch_slowdown: float = 0.0,
                 queue_limit: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 (got {capacity!r})")
        if batch_slowdown < 0:
            raise ValueError(f"batch_slowdown must be >= 0 (got {batch_slowdown!r})")
        if queue_limit is not None and queue_limit < 0:
            raise ValueError(f"queue_limit must be >= 0 (got {queue_limit!r})")
        self.capacity = capacity
        self.batch_slowdown = batch_slowdown
        self.queue_limit = queue_limit
        self.serving = 0
        self.max_queued = 0
        self.refused = 0
        self._queue: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for fut in self._queue if not fut.done())

    def slowdown(self, batch: int) -> float:
        """Latency multiplier for a request entering a batch of ``batch`` (itself included)."""
        if self.capacity == 1:
            return 1.0
        return 1.0 + self.batch_slowdown * (min(batch, self.capacity) - 1) / (self.capacity - 1)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Wait (FIFO) for a place in the batch; yields the latency multiplier."""
        if self.serving >= self.capacity or self.queued:
            if self.queue_limit is not None and self.queued >= self.queue_limit:
                self.refused += 1
                raise QueueFull
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.append(fut)
            self.max_queued = max(self.max_queued, self.queued)
            try:
                await fut  # the releasing request counted us in ``serving`` already
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # granted and cancelled in the same iteration
                raise
        else:
            self.serving += 1
        try:
            yield self.slowdown(self.serving)
        finally:
            self._release()

    def _release(self) -> None:
        self.serving -= 1
        queue = self._queue
        while queue and self.serving < self.capacity:
            fut = queue.popleft()
            if not fut.done():
                self.serving += 1
                fut.set_result(None)
