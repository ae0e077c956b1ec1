"""Rate limiters against the simulated endpoint: asyncio-throttle, aiolimiter and ours.

    python -m benchmarks.limiters             # ~2.5 minutes
    python -m benchmarks.limiters --quick     # 5 s windows, for a smoke run

Every case sends through the same :class:`LLMClient` (one try, no retries) to a fresh
simulator child process that enforces the limit (a token bucket holding 2 s of rate, as
hosted APIs allow bursts); only the gate in front differs. The third-party limiters get
the client with an inert internal limiter (no 429 or header feedback: they have no hook
for it); ours is the limiter exactly as ``generate`` uses it, feedback included.

Measured per case over a fixed window: requests sent and answered 200 as a ratio of what
the limit allows in the window, 429s received, requests sent in the first second against
limit/60, how fair the wait was (share of grants out of arrival order), and the CPU the
client process spent (1,000 waiting requests show what polling costs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter
from asyncio_throttle.throttler import Throttler

from benchmarks._results import table, write_section
from service.bench.loadtest import SendingStopped, TracingLimiter, make_prompt
from service.errors import LLMError, RateLimitError, RetriesExhausted
from service.llm import ClientSettings, LimiterSettings, LLMClient, RateLimiter, RetrySettings

RPM = 1200  # 20 requests a second
TPM = 120_000  # 2,000 tokens a second
WINDOW_S = 12.0
WAITERS = 1000  # concurrent requests in the RPM cases: most of them wait in the limiter
TPM_CONCURRENCY = 200
LATENCY_MS = 200
MAX_TOKENS = 64
TPM_PROMPT_TOKENS = (20, 600)  # uniform: requests weigh 84..664 tokens
DRAIN_S = 1.5


# --------------------------------------------------------------------------- simulator
@dataclass(frozen=True)
class ExternalSim:
    base_url: str
    pid: int

    @property
    def root(self) -> str:
        return self.base_url.rsplit("/v1", 1)[0]

    def cpu_seconds(self) -> float:
        """User + system CPU of the simulator process so far (Linux /proc)."""
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.root + "/stats") as r:
            data: dict[str, Any] = await r.json()
            return data


@contextlib.asynccontextmanager
async def external_simulator(**flags: object) -> AsyncIterator[ExternalSim]:
    """``selfinstruct simulate`` in a child process (its own core, its own CPU count)."""
    args = [sys.executable, "-m", "service", "simulate", "--port", "0"]
    for key, value in flags.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        url = line.decode().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield ExternalSim(url, proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --------------------------------------------------------------------------- one case
class _InertLimiter(RateLimiter):
    """Only a cap on connections: ignores 429s and rate-limit headers, so the gate in
    front of the client is the only thing limiting the rate."""

    def on_rate_limited(self, retry_after: float | None) -> None:
        return None

    def on_headers(self, headers: Mapping[str, str]) -> None:
        return None


Gate = Callable[[int], Awaitable[None]]


@dataclass
class CaseResult:
    name: str
    window_s: float
    allowed: float  # what the limit allows in the window (requests or tokens)
    sends: list[float] = field(default_factory=list)  # seconds from start
    arrival_of_grant: list[int] = field(default_factory=list)
    ok: int = 0
    rate_limited: int = 0
    other_errors: int = 0
    weight_sent: int = 0
    tokens_ok: int = 0
    cpu_s: float = 0.0

    def in_window(self) -> int:
        return len(self.sends)  # sending stops at the end of the window

    def mean_weight(self) -> float:
        return self.weight_sent / max(1, self.ok + self.rate_limited + self.other_errors)

    def first_second(self) -> int:
        return sum(1 for t in self.sends if t < 1.0)

    def inversions(self) -> float:
        """Share of consecutive grants served out of arrival order (0 = FIFO)."""
        g = self.arrival_of_grant
        if len(g) < 2:
            return 0.0
        return sum(1 for a, b in itertools.pairwise(g) if b < a) / (len(g) - 1)


async def run_case(name: str, sim_flags: dict[str, object], *, gate: Gate | None,
                   ours: LimiterSettings | None, concurrency: int, window_s: float,
                   weights: Callable[[int], int], allowed: float) -> CaseResult:
    """``gate`` (a third-party limiter) or ``ours`` (our limiter's settings)."""
    result = CaseResult(name, window_s, allowed)
    async with external_simulator(**sim_flags) as sim:
        if ours is not None:
            limiter: RateLimiter = TracingLimiter(ours)
        else:
            limiter = _InertLimiter(LimiterSettings(max_in_flight=concurrency))
        settings = ClientSettings(sim.base_url, model="bench", limiter=limiter.settings,
                                  retry=RetrySettings(max_attempts=1, deadline_s=None,
                                                      request_timeout_s=30))
        arrival = itertools.count()
        stop = asyncio.Event()
        current: dict[asyncio.Task[Any], int] = {}
        start = 0.0

        def granted() -> None:
            task = asyncio.current_task()
            result.sends.append(time.monotonic() - start)
            if task is not None:
                result.arrival_of_grant.append(current.get(task, -1))

        if isinstance(limiter, TracingLimiter):
            limiter.on_send = granted

        async with LLMClient(settings, limiter=limiter) as client:
            async def worker(wid: int) -> None:
                task = asyncio.current_task()
                assert task is not None
                rng = random.Random(wid)
                while not stop.is_set():
                    seq = next(arrival)
                    current[task] = seq
                    prompt_tokens = weights(rng.randrange(1 << 30)) - MAX_TOKENS
                    if gate is not None:
                        await gate(prompt_tokens + MAX_TOKENS)
                        if stop.is_set():
                            return
                        granted()
                    try:
                        res = await client.complete(make_prompt(seq, prompt_tokens),
                                                    max_tokens=MAX_TOKENS)
                    except SendingStopped:
                        return
                    except LLMError as exc:
                        cause = exc.last if isinstance(exc, RetriesExhausted) else exc
                        if isinstance(cause, RateLimitError):
                            result.rate_limited += 1
                        else:
                            result.other_errors += 1
                        result.weight_sent += prompt_tokens + MAX_TOKENS
                    else:
                        result.ok += 1
                        result.weight_sent += prompt_tokens + MAX_TOKENS
                        result.tokens_ok += res.usage.total_tokens

            cpu0 = time.process_time()
            start = time.monotonic()
            tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
            await asyncio.sleep(window_s)
            stop.set()
            if isinstance(limiter, TracingLimiter):
                limiter.stopped = True
            # requests still waiting for a permit are dropped; those on the wire finish
            waiting = [t for t in tasks if not t.done()
                       and (not isinstance(limiter, TracingLimiter) or t not in limiter.on_wire)]
            if gate is not None:
                waiting = []
            for t in waiting:
                t.cancel()
            await asyncio.wait(tasks, timeout=DRAIN_S)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            result.cpu_s = time.process_time() - cpu0
    return result


# --------------------------------------------------------------------------- the cases
def throttle_gate(rate_limit: int, period: float) -> Gate:
    throttler = Throttler(rate_limit=rate_limit, period=period)

    async def gate(weight: int) -> None:
        await throttler.acquire()  # type: ignore[no-untyped-call]

    return gate


def aiolimiter_gate(max_rate: float, period: float, weighted: bool) -> Gate:
    limiter = AsyncLimiter(max_rate, period)

    async def gate(weight: int) -> None:
        await limiter.acquire(weight if weighted else 1)

    return gate


async def rpm_cases(window_s: float) -> list[CaseResult]:
    flags: dict[str, object] = {"rpm": RPM, "latency_ms": LATENCY_MS, "seed": 1}
    allowed = RPM * window_s / 60

    def weight(_: int) -> int:
        return 32 + MAX_TOKENS

    cases: list[tuple[str, Gate | None, LimiterSettings | None]] = [
        (f"asyncio-throttle Throttler({RPM}, 60)", throttle_gate(RPM, 60), None),
        (f"asyncio-throttle Throttler(1, {60 / RPM:g})", throttle_gate(1, 60 / RPM), None),
        (f"aiolimiter AsyncLimiter({RPM}, 60)", aiolimiter_gate(RPM, 60, False), None),
        (f"aiolimiter AsyncLimiter(1, {60 / RPM:g})", aiolimiter_gate(1, 60 / RPM, False), None),
        (f"ours RateLimiter(rpm={RPM})", None,
         LimiterSettings(rpm=RPM, max_in_flight=WAITERS)),
    ]
    out = []
    for name, gate, ours in cases:
        r = await run_case(name, flags, gate=gate, ours=ours, concurrency=WAITERS,
                           window_s=window_s, weights=weight, allowed=allowed)
        print(f"  {name}: sent {r.in_window()}, ok {r.ok}, 429 {r.rate_limited}, "
              f"cpu {r.cpu_s:.2f}s", flush=True)
        out.append(r)
    return out


async def tpm_cases(window_s: float) -> list[CaseResult]:
    flags: dict[str, object] = {"tpm": TPM, "latency_ms": LATENCY_MS, "seed": 2}
    allowed = TPM * window_s / 60
    lo, hi = TPM_PROMPT_TOKENS

    def weight(draw: int) -> int:
        return lo + draw % (hi - lo + 1) + MAX_TOKENS

    cases: list[tuple[str, Gate | None, LimiterSettings | None]] = [
        (f"aiolimiter AsyncLimiter({TPM}, 60).acquire(tokens)",
         aiolimiter_gate(TPM, 60, True), None),
        (f"aiolimiter AsyncLimiter({TPM // 60}, 1).acquire(tokens)",
         aiolimiter_gate(TPM / 60, 1, True), None),
        (f"ours RateLimiter(tpm={TPM})", None,
         LimiterSettings(tpm=TPM, max_in_flight=TPM_CONCURRENCY)),
    ]
    out = []
    for name, gate, ours in cases:
        r = await run_case(name, flags, gate=gate, ours=ours, concurrency=TPM_CONCURRENCY,
                           window_s=window_s, weights=weight, allowed=allowed)
        print(f"  {name}: sent {r.in_window()} ({r.weight_sent} tokens), ok {r.ok}, "
              f"429 {r.rate_limited}", flush=True)
        out.append(r)
    return out


def rpm_rows(results: list[CaseResult]) -> list[list[object]]:
    rows: list[list[object]] = []
    for r in results:
        rows.append([
            r.name,
            f"{r.in_window() / r.allowed:.2f}",
            f"{r.ok / r.allowed:.2f}",
            r.rate_limited,
            f"{r.first_second()} ({r.first_second() / (RPM / 60):.1f}x)",
            f"{r.inversions():.0%}",
            f"{r.cpu_s:.2f} s",
        ])
    return rows


def tpm_rows(results: list[CaseResult]) -> list[list[object]]:
    rows: list[list[object]] = [["asyncio-throttle Throttler", "n/a", "n/a", "n/a", "n/a",
                                 "n/a", "cannot weigh a request by its tokens"]]
    for r in results:
        rows.append([
            r.name,
            f"{r.weight_sent / r.allowed:.2f}",
            f"{r.tokens_ok / r.allowed:.2f}",
            r.rate_limited,
            f"{r.ok}",
            f"{r.mean_weight():.0f}",
            f"{r.inversions():.0%} out of order",
        ])
    return rows


def conclusion(rpm: list[CaseResult], tpm: list[CaseResult]) -> str:
    """Which limiter the code uses and why, from the numbers just measured."""
    ours_rpm, ours_tpm = rpm[-1], tpm[-1]
    naive = [r for r in rpm[:-1] if r.name.endswith(", 60)")]
    spread = [r for r in rpm[:-1] if r not in naive]
    weighed = min(tpm[:-1], key=lambda r: (r.rate_limited, -r.tokens_ok))
    return (
        "**The code uses its own `service.llm.RateLimiter`** (requests and tokens per minute "
        "in one FIFO queue, one timer, 429 and header feedback). Requests per minute: it sent "
        f"{ours_rpm.in_window() / ours_rpm.allowed:.2f} of the limit with "
        f"{ours_rpm.rate_limited} 429s, paced from the first second, in arrival order, for "
        f"{ours_rpm.cpu_s:.2f} s of client CPU with {WAITERS} requests waiting. The forms "
        "that take the minute's quota as the bucket ("
        + "; ".join(f"{r.name}: {r.in_window() / r.allowed:.1f}x the limit sent, "
                    f"{r.rate_limited} 429s" for r in naive)
        + ") release it in the first second. Spread over the minute ("
        + "; ".join(f"{r.name}: {r.ok / r.allowed:.2f}, {r.rate_limited} 429s, "
                    f"{r.cpu_s:.2f} s CPU, {r.inversions():.0%} out of order" for r in spread)
        + ") they hold the rate, but asyncio-throttle wakes every waiter every 10 ms "
        "(the CPU column) and neither keeps arrival order strictly. Tokens per minute: "
        "asyncio-throttle cannot weigh a request; aiolimiter can, and its best form "
        f"({weighed.name}) held the limit ({weighed.tokens_ok / weighed.allowed:.2f}, "
        f"{weighed.rate_limited} 429s) but let small requests overtake large ones "
        f"(mean request sent {weighed.mean_weight():.0f} tokens, "
        f"{weighed.inversions():.0%} out of order): a large request waits while later, "
        f"smaller ones pass. Ours answered {ours_tpm.tokens_ok / ours_tpm.allowed:.2f} of "
        f"the TPM limit with {ours_tpm.rate_limited} 429s in arrival order (mean request "
        f"{ours_tpm.mean_weight():.0f} tokens), and holds both limits in one limiter."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 s windows (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    window = 5.0 if args.quick else WINDOW_S

    print(f"RPM cases: limit {RPM}/min, {WAITERS} concurrent requests, {window:g} s each",
          flush=True)
    rpm = asyncio.run(rpm_cases(window))
    rpm_table = table(["limiter", "sent / limit", "200s / limit", "429s",
                       f"sent in 1st second (limit/60 = {RPM // 60})", "out of order",
                       "client CPU"], rpm_rows(rpm))
    print(rpm_table, flush=True)

    print(f"TPM cases: limit {TPM}/min, requests of {TPM_PROMPT_TOKENS[0] + MAX_TOKENS}-"
          f"{TPM_PROMPT_TOKENS[1] + MAX_TOKENS} tokens, {TPM_CONCURRENCY} concurrent",
          flush=True)
    tpm = asyncio.run(tpm_cases(window))
    lo, hi = TPM_PROMPT_TOKENS
    tpm_table = table(["limiter", "tokens sent / limit", "tokens answered / limit", "429s",
                       "requests answered",
                       f"mean request sent (offered: {(lo + hi) / 2 + MAX_TOKENS:.0f})",
                       "note"], tpm_rows(tpm))
    print(tpm_table, flush=True)

    verdict = conclusion(rpm, tpm)
    print(verdict)
    load = (f"_Load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
            "after: other processes share the cores; CPU columns are this process's own._")
    print(load)
    if not args.no_write:
        write_section("limiters", "\n\n".join([
            "## Rate limiters (`python -m benchmarks.limiters`)",
            f"Simulator child process enforcing the limit (token bucket of 2 s), "
            f"{LATENCY_MS} ms ±50% latency, one try per request (429s not retried), "
            f"{window:g} s window per case. Ratios are against what the limit allows in the "
            "window; \"out of order\" is the share of consecutive grants that went to a "
            "request that arrived later (0% = FIFO).",
            f"### Requests per minute: limit {RPM}, {WAITERS} concurrent requests\n\n"
            + rpm_table,
            f"### Tokens per minute: limit {TPM:,}, requests of "
            f"{TPM_PROMPT_TOKENS[0] + MAX_TOKENS}-{TPM_PROMPT_TOKENS[1] + MAX_TOKENS} tokens "
            f"(prompt + max_tokens), {TPM_CONCURRENCY} concurrent\n\n" + tpm_table,
            verdict,
            load,
        ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
