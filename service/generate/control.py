"""Stop and drain of one run: who asked, with what status, and waking what waits.

A stop ends the run at once (target reached, budget hit, fatal error, a second Ctrl-C); a
drain starts nothing new and lets work in flight finish, bounded by a timeout. Both wake
the instruction workers, which wait on ``changed`` while supply is sufficient.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from service.errors import SelfInstructError
from service.generate.seams import Coordinator, PipelineObserver
from service.generate.supply import Flow

COORDINATOR_RETRIES = 30  # about 30 s of failed polls before a distributed run gives up


class RunControl:
    """The run's status and its stop/drain signals; see the module docstring."""

    def __init__(self, observer: PipelineObserver) -> None:
        self.status = "running"
        self.fatal: BaseException | None = None
        self.stopped = asyncio.Event()  # target reached, budget hit or fatal error
        self.draining = asyncio.Event()  # a signal: finish in-flight work, start nothing new
        self.changed = asyncio.Event()  # supply changed: instruction workers look again
        self._observer = observer

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set() or self.draining.is_set()

    def request_drain(self) -> None:
        if not self.draining.is_set():
            self.draining.set()
            self.status = "interrupted"
            self.changed.set()
            self._observer.stop_requested("draining")

    def request_stop(self, status: str) -> None:
        if not self.stopped.is_set():
            self.status = status
            self.stopped.set()
            self.changed.set()
            self._observer.stop_requested(status)

    def fail(self, exc: BaseException) -> None:
        """The first fatal error is kept (the orchestrator raises it) and the run stops."""
        if self.fatal is None:
            self.fatal = exc
        self.request_stop("failed")

    def on_worker_done(self, task: asyncio.Task[None]) -> None:
        """A stage that dies of an unexpected error must end the run, not leave the
        others waiting for it for ever."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)

    async def wait(self, busy: Callable[[], bool], drain_timeout_s: float) -> None:
        """Until a stop, or a drain whose in-flight work is done (or timed out)."""
        stop = asyncio.create_task(self.stopped.wait())
        drain = asyncio.create_task(self.draining.wait())
        try:
            await asyncio.wait({stop, drain}, return_when=asyncio.FIRST_COMPLETED)
            if self.draining.is_set() and not self.stopped.is_set():
                deadline = time.monotonic() + drain_timeout_s
                while busy() and time.monotonic() < deadline and not self.stopped.is_set():
                    await asyncio.sleep(0.05)
        finally:
            stop.cancel()
            drain.cancel()


async def poll_coordinator(coordinator: Coordinator, flow: Flow, remaining: Callable[[], int],
                           control: RunControl) -> None:
    """Keep ``flow``'s view of the whole distributed run current; stop the run once the
    run as a whole reached its target."""
    failures = 0
    while True:
        try:
            flow.global_written = await coordinator.written()
            if remaining() == 0:
                control.request_stop("finished")
                return
            flow.global_unfinished = await coordinator.unfinished()
            failures = 0
        except Exception as exc:  # e.g. redis.ConnectionError, socket errors, timeouts
            # The coordinator is unreachable: keep trying for a while, then fail the
            # run (unfinished work stays leased in Redis for another process).
            failures += 1
            if failures >= COORDINATOR_RETRIES:
                raise SelfInstructError(f"the coordinator is unreachable: {exc}") from exc
        control.changed.set()
        await asyncio.sleep(0.2 if failures == 0 else 1.0)
