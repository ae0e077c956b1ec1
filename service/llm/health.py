"""Endpoint health of one client: a pause before new calls while the endpoint fails, and
the moment to give up on it.

Why: the pipeline's workers call again as soon as a call fails. Against a closed port every
attempt fails in microseconds, so without a pause a run spins at full CPU, and without an
end it stays "running" for ever. One tracker per endpoint (per client) sees every call:
while calls keep failing, each new call first waits a jittered, capped backoff that grows
with the failure streak, and once every attempt has failed for ``give_up_after_s`` the
client raises :class:`EndpointUnavailable` (fatal: the run ends with that error).

Pure bookkeeping: time and randomness come in as arguments (as in service.llm.retry).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from service.errors import EndpointUnavailable
from service.llm.retry import backoff_delay


@dataclass
class EndpointHealth:
    """``failing_since`` is the time of the first failed attempt of the current streak
    (None while the endpoint answers). A 429 or a 4xx is an answer: the endpoint is up."""

    give_up_after_s: float | None
    backoff_base_s: float
    backoff_cap_s: float
    failing_since: float | None = None
    streak: int = 0  # failed attempts since the last answer

    def record_answer(self) -> None:
        self.failing_since = None
        self.streak = 0

    def record_failure(self, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now
        self.streak += 1

    def pause(self, rng: random.Random) -> float:
        """Seconds a new call waits first: 0 while healthy, then full-jitter backoff over
        the streak, capped by ``backoff_cap_s``."""
        if self.streak == 0:
            return 0.0
        return backoff_delay(self.streak - 1, rng, self.backoff_base_s, self.backoff_cap_s)

    def give_up_in(self, now: float) -> float | None:
        """Seconds until the give-up moment (<= 0: now), None when not failing."""
        if self.failing_since is None or self.give_up_after_s is None:
            return None
        return self.failing_since + self.give_up_after_s - now

    def check(self, now: float, where: str) -> None:
        """Raise EndpointUnavailable when every attempt failed for give_up_after_s."""
        left = self.give_up_in(now)
        if left is not None and left <= 0:
            failing = now - (self.failing_since or now)
            raise EndpointUnavailable(
                f"the endpoint {where} failed every call for {failing:.0f}s "
                f"({self.streak} failed attempts; give_up_after is {self.give_up_after_s:g}s)",
                failing, self.streak)
