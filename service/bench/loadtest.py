"""Load test of an OpenAI-compatible endpoint through the same client and limiter as
``generate`` (so ``rpm``/``tpm`` are limits the run must hold, exactly as in a real run).

    report = await run_bench(BenchSettings(base_url="http://127.0.0.1:8000/v1",
                                           duration_s=10, concurrency=64, rpm=600))
    report.requests_per_s, report.latency_s["p99"], report.outcome_groups["429"]

How it works: ``concurrency`` workers each send one call at a time (the limiter's
``max_in_flight`` is the same number) until ``requests`` calls were started or
``duration_s`` passed. Every attempt that got a permit is timestamped at the grant (that
is when it goes on the wire), which gives the achieved request rate, the burst in the
first second and the busiest second. At the end of ``duration_s`` nothing new is sent:
calls still waiting for a permit (or sleeping before a retry) are abandoned, requests on
the wire may finish for ``drain_s``.

Counts add up: ``attempts == sum(outcomes.values())``; ``calls == ok + sum(failed)``;
``started == calls + unfinished``. The API key never appears in a report: error samples
are redacted by the client and again here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import signal
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from service.errors import (
    BudgetExceeded,
    ClientRequestError,
    ConfigError,
    ConnectionFailed,
    ContextLengthError,
    LLMError,
    RetriesExhausted,
    error_kind,
)
from service.llm import ClientSettings, LimiterSettings, LLMClient, RetrySettings, Secret
from service.llm.accounting import latency_summary, percentile
from service.llm.constants import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_ADAPTIVE_IN_FLIGHT,
)
from service.llm.limiter import Permit, RateLimiter
from service.llm.loop import raise_fd_limit
from service.llm.types import Result
from service.progress import Progress, format_count
from service.secret import redact, safe_url

ApiKind = Literal["chat", "completions"]

DEFAULT_DURATION_S = 10.0
DEFAULT_CONCURRENCY = 64
DEFAULT_MAX_TOKENS = 64
DEFAULT_PROMPT_TOKENS = 32
ERROR_SAMPLES = 5
ABORT_AFTER_FAILURES = 20  # ... when every call so far failed in one of these ways:
HOPELESS = (ClientRequestError.kind, ContextLengthError.kind, ConnectionFailed.kind)
_TICK_S = 0.25
_FILLER = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
           "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo")


@dataclass(frozen=True)
class BenchSettings:
    """``base_url`` None: the embedded local model is started for the bench (needs
    :mod:`service.llm.local`). Give ``duration_s`` or ``requests`` (not both; neither: 10 s)."""

    base_url: str | None
    api_key: Secret | None = None
    model: str | None = None
    api: ApiKind = "completions"
    duration_s: float | None = None
    requests: int | None = None
    # "auto": the adaptive in-flight limit of generate --max-in-flight auto (workers up to
    # its bound; the limit decides how many send at once)
    concurrency: int | Literal["auto"] = DEFAULT_CONCURRENCY
    rpm: float | None = None
    tpm: float | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    prompts_per_request: int = 1  # completions only: a list of prompts in one request
    stream: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    drain_s: float | None = None  # after duration_s; default request_timeout_s
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):
            object.__setattr__(self, "api_key", Secret(self.api_key))
        if self.duration_s is not None and self.requests is not None:
            raise ConfigError("bench: give a duration or a number of requests, not both")
        if self.duration_s is None and self.requests is None:
            object.__setattr__(self, "duration_s", DEFAULT_DURATION_S)
        checks: list[tuple[str, float | int | None, float]] = [
            ("duration", self.duration_s, 0.0), ("requests", self.requests, 0),
            ("concurrency", None if self.concurrency == "auto" else self.concurrency, 0),
            ("rpm", self.rpm, 0.0),
            ("tpm", self.tpm, 0.0), ("max_tokens", self.max_tokens, 0),
            ("prompt_tokens", self.prompt_tokens, 0),
            ("prompts_per_request", self.prompts_per_request, 0),
            ("max_attempts", self.max_attempts, 0),
            ("request_timeout", self.request_timeout_s, 0.0),
        ]
        for name, value, above in checks:
            if value is not None and not value > above:
                raise ConfigError(f"bench: {name} must be > {above:g} (got {value!r})")
        if self.drain_s is not None and self.drain_s < 0:
            raise ConfigError(f"bench: drain must be >= 0 (got {self.drain_s!r})")
        if self.api not in ("chat", "completions"):
            raise ConfigError(f"bench: api must be chat or completions (got {self.api!r})")
        if self.api == "chat" and self.prompts_per_request != 1:
            raise ConfigError("bench: several prompts per request need the completions API")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"bench: base URL must start with http:// or https:// "
                              f"(got {safe_url(self.base_url)!r})")


@dataclass(frozen=True)
class BenchReport:
    """What :func:`run_bench` measured; :meth:`to_dict` is the ``--json`` object."""

    base_url: str
    model: str
    api: str
    stream: bool
    concurrency: int | str  # a number or "auto"
    prompts_per_request: int
    max_tokens: int
    rpm_limit: float | None
    tpm_limit: float | None
    elapsed_s: float  # start to the last call's end (drain included)
    send_window_s: float  # start to the end of sending (duration) / to the last call's end
    started: int  # calls that sent at least one attempt
    calls: int  # calls finished: ok + failed
    ok: int
    failed: dict[str, int]  # by error kind (retries exhausted: the last error's kind)
    unfinished: int  # sent, but cut by the end of the duration before an answer
    attempts: int  # HTTP attempts sent (retries included)
    outcomes: dict[str, int]  # per attempt: "200", "429", "503", "timeout", "connection", ...
    outcome_groups: dict[str, int]  # ok, 429, 5xx, 4xx, timeout, connection, bad_response, ...
    retries: int
    prompts: int  # prompts answered (ok calls x prompts_per_request)
    prompt_tokens: int
    completion_tokens: int
    requests_per_s: float  # ok calls / elapsed
    prompts_per_s: float
    prompt_tokens_per_s: float
    completion_tokens_per_s: float
    latency_s: dict[str, float | None]  # ok calls, last attempt: p50 p90 p99 mean max
    ttft_s: dict[str, float | None] | None  # streamed calls only
    achieved_rpm: float  # attempts sent per minute over the send window
    steady_rpm: float | None  # the same after the first second (the limiter's start bucket)
    rpm_ratio: float | None  # achieved_rpm / rpm_limit
    achieved_tpm: float  # tokens used (prompt + completion) per minute over the send window
    tpm_ratio: float | None
    first_second_sends: int  # attempts sent within 1 s of the start
    peak_1s_sends: int  # the busiest 1-second window
    max_in_flight: int
    limiter: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # a few distinct messages (redacted)
    aborted: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_text(self) -> str:
        return format_report(self)


# --------------------------------------------------------------------------- helpers
def make_prompt(index: int, prompt_tokens: int) -> str:
    """A unique prompt of about ``prompt_tokens`` tokens (4 characters a token)."""
    words = [f"Request {index}: write a short paragraph about these words:"]
    length = len(words[0])
    i = index
    while length + 1 < prompt_tokens * 4:
        word = _FILLER[i % len(_FILLER)]
        words.append(word)
        length += len(word) + 1
        i += 7
    return " ".join(words)[: max(1, prompt_tokens * 4)]


def workers_for(concurrency: int | Literal["auto"]) -> int:
    """One worker a request in flight: the fixed number, or the adaptive limit's bound."""
    return MAX_ADAPTIVE_IN_FLIGHT if concurrency == "auto" else concurrency


def group_outcomes(outcomes: dict[str, int]) -> dict[str, int]:
    groups: Counter[str] = Counter({"ok": 0, "429": 0, "5xx": 0, "4xx": 0, "timeout": 0,
                                    "connection": 0})
    for name, count in outcomes.items():
        if name == "200":
            groups["ok"] += count
        elif name == "429":
            groups["429"] += count
        elif name.isdigit() and name.startswith("5"):
            groups["5xx"] += count
        elif name.isdigit():
            groups["4xx"] += count
        elif name in ("timeout", "deadline"):
            groups["timeout"] += count
        else:
            groups[name] += count
    return dict(groups)


def peak_window(times: Sequence[float], width: float = 1.0) -> int:
    """Most events within any window of ``width`` seconds (``times`` sorted)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class SendingStopped(Exception):
    """Raised by the limiter once the bench stopped sending (the call is abandoned)."""


class TracingLimiter(RateLimiter):
    """The generate limiter plus what a load test needs: the time each attempt went out,
    the tasks with a request on the wire, and a stop switch for the end of the duration."""

    def __init__(self, settings: LimiterSettings) -> None:
        super().__init__(settings)
        self.sends: list[float] = []
        self.stopped = False
        self.on_wire: set[asyncio.Task[Any]] = set()
        self.attempts_by_task: Counter[asyncio.Task[Any]] = Counter()
        self.max_seen = 0
        self.on_send: Callable[[], None] | None = None  # called in the sending task
        self.on_release = self._off_wire

    async def acquire(self, tokens: int = 0) -> Permit:
        if self.stopped:
            raise SendingStopped
        permit = await super().acquire(tokens)
        task = asyncio.current_task()
        if self.stopped:
            permit.settle(0)
            permit.release()
            raise SendingStopped
        self.sends.append(time.monotonic())
        self.max_seen = max(self.max_seen, self.in_flight)
        if task is not None:
            self.on_wire.add(task)
            self.attempts_by_task[task] += 1
        if self.on_send is not None:
            self.on_send()
        return permit

    def _off_wire(self) -> None:  # called by Permit.release, in the task that holds it
        task = asyncio.current_task()
        if task is not None:
            self.on_wire.discard(task)


@dataclass
class _State:
    started: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    unfinished: int = 0
    prompts: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    errors: list[str] = field(default_factory=list)
    next_index: int = 0
    aborted: str | None = None


# --------------------------------------------------------------------------- the bench
@contextlib.asynccontextmanager
async def bench_endpoint(settings: BenchSettings) -> AsyncIterator[BenchSettings]:
    """The settings pointed at a live endpoint: as given, or the embedded local model
    (started as ``generate`` starts it, stopped on exit)."""
    if settings.base_url is not None:
        yield settings if settings.model else dataclasses.replace(settings, model="default")
        return
    if importlib.util.find_spec("service.llm.local") is None:
        raise ConfigError(
            "bench: no --base-url (or OPENAI_BASE_URL) given, and the embedded local model "
            "is not available in this build (service/llm/local.py is missing); pass --base-url URL"
        )
    from service.config import Config
    from service.generate.orchestrator import endpoint_for

    config = Config(base_url=None, model=settings.model, api=settings.api,
                    max_in_flight=settings.concurrency)
    async with endpoint_for(config) as live:
        yield dataclasses.replace(
            settings, base_url=live.base_url, model=live.model or "default", api=live.api,
            concurrency=("auto" if settings.concurrency == "auto"
                         else min(settings.concurrency, live.in_flight_bound())),
        )


async def run_bench(
    settings: BenchSettings,
    *,
    progress: Progress | None = None,
    handle_signals: bool = False,
) -> BenchReport:
    """Run the load test; see the module docstring. With ``handle_signals`` a first
    SIGINT/SIGTERM ends the run early (with its report), a second one stops the drain."""
    raise_fd_limit()
    async with bench_endpoint(settings) as live:
        return await _run(live, progress, handle_signals)


async def _run(s: BenchSettings, progress: Progress | None, handle_signals: bool) -> BenchReport:
    assert s.base_url is not None
    workers_wanted = workers_for(s.concurrency)
    limiter = TracingLimiter(LimiterSettings(
        rpm=s.rpm, tpm=s.tpm, max_in_flight=workers_wanted,
        in_flight="auto" if s.concurrency == "auto" else "fixed"))
    client_settings = ClientSettings(
        base_url=s.base_url,
        api_key=s.api_key,
        model=s.model or "default",
        limiter=limiter.settings,
        retry=RetrySettings(max_attempts=s.max_attempts, request_timeout_s=s.request_timeout_s,
                            deadline_s=None),
        jitter_seed=s.seed,
    )
    state = _State()
    stop_sending = asyncio.Event()

    def claim() -> int | None:
        if stop_sending.is_set() or limiter.stopped:
            return None
        if s.requests is not None and state.next_index >= s.requests:
            return None
        index = state.next_index
        state.next_index += 1
        return index

    async with LLMClient(client_settings, limiter=limiter) as client:
        accounting = client.accounting

        async def call(index: int) -> Result:
            base = index * s.prompts_per_request
            prompts = [make_prompt(base + k, s.prompt_tokens) for k in range(s.prompts_per_request)]
            if s.api == "chat":
                return await client.chat([{"role": "user", "content": prompts[0]}],
                                         max_tokens=s.max_tokens, stream=s.stream,
                                         temperature=0.7, seed=s.seed)
            return await client.complete(prompts[0] if len(prompts) == 1 else prompts,
                                         max_tokens=s.max_tokens, stream=s.stream,
                                         temperature=0.7, seed=s.seed)

        def note_error(exc: BaseException) -> None:
            text = redact(str(exc), s.api_key)
            if len(state.errors) < ERROR_SAMPLES and text not in state.errors:
                state.errors.append(text)

        async def worker() -> None:
            task = asyncio.current_task()
            assert task is not None
            while (index := claim()) is not None:
                limiter.attempts_by_task[task] = 0
                try:
                    result = await call(index)
                except SendingStopped:
                    if limiter.attempts_by_task[task]:
                        state.started += 1
                        state.unfinished += 1
                    return
                except asyncio.CancelledError:
                    if limiter.attempts_by_task[task]:
                        state.started += 1
                        state.unfinished += 1
                    raise
                except (LLMError, BudgetExceeded) as exc:
                    cause = exc.last if isinstance(exc, RetriesExhausted) else exc
                    state.started += 1
                    state.failed[error_kind(cause)] += 1
                    note_error(exc)
                    failures = sum(state.failed.values())
                    if (state.ok == 0 and failures >= ABORT_AFTER_FAILURES
                            and sum(state.failed[k] for k in HOPELESS) == failures):
                        # nothing got through and retrying will not change that
                        state.aborted = (f"the first {failures} calls all failed "
                                         f"({', '.join(sorted(state.failed))}); stopped")
                        stop_sending.set()
                else:
                    state.started += 1
                    state.ok += 1
                    state.prompts += s.prompts_per_request
                    state.latencies.append(result.latency_s)
                    state.recent.append(result.latency_s)
                    if result.ttft_s is not None:
                        state.ttfts.append(result.ttft_s)

        def line(now: float) -> str:
            elapsed = now - start
            ok_rate = state.ok / elapsed if elapsed > 0 else 0.0
            sent_rpm = len(limiter.sends) / elapsed * 60 if elapsed > 0 else 0.0
            recent = sorted(state.recent)
            p50 = percentile(recent, 50)
            groups = group_outcomes(dict(accounting.outcomes))
            errors = sum(v for k, v in groups.items() if k not in ("ok", "429"))
            total = f"/{s.duration_s:g}s" if s.duration_s is not None else \
                f" {state.started}/{s.requests}"
            limit = f" (limit {s.rpm:g})" if s.rpm else ""
            return (f"bench {elapsed:.0f}s{total} | sent {format_count(len(limiter.sends))} | "
                    f"ok {format_count(state.ok)} | 429 {groups['429']} | errors {errors} | "
                    f"{ok_rate:.1f} req/s | {sent_rpm:,.0f} rpm{limit} | "
                    f"in-flight {limiter.in_flight}"
                    + (f"/{limiter.in_flight_limit} auto" if s.concurrency == "auto" else "")
                    + " | p50 "
                    + ("-" if p50 is None else f"{p50:.3f}s"))

        async def ticker() -> None:
            while True:
                await asyncio.sleep(_TICK_S)
                if progress is not None:
                    progress.update(line(time.monotonic()))

        def on_signal() -> None:
            if not stop_sending.is_set():
                state.aborted = "interrupted"
                stop_sending.set()
                if progress is not None:
                    progress.message("stopping: waiting for requests on the wire "
                                     "(again to stop now)")
            else:
                for t in workers:
                    t.cancel()

        start = time.monotonic()
        workers = [asyncio.create_task(worker()) for _ in range(workers_wanted)]
        tick = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, on_signal)
                    installed.append(sig)
        try:
            stop_at = await _drive(s, workers, limiter, stop_sending)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
        end = time.monotonic()
        if progress is not None:
            progress.update(line(end), force=True)
            progress.finish()
        return _report(s, state, limiter, client, start, stop_at, end)


async def _drive(s: BenchSettings, workers: list[asyncio.Task[None]], limiter: TracingLimiter,
                 stop_sending: asyncio.Event) -> float:
    """Wait until every worker ended, the duration passed or the bench aborted; then stop
    sending, abandon calls not on the wire and let the others finish for ``drain_s``.
    Returns when sending stopped (monotonic)."""
    waiter: asyncio.Future[Any] = asyncio.gather(*workers, return_exceptions=True)
    stopper: asyncio.Future[Any] = asyncio.create_task(stop_sending.wait())
    try:
        await asyncio.wait({waiter, stopper}, timeout=s.duration_s,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    stop_at = time.monotonic()
    limiter.stopped = True
    stop_sending.set()
    for t in workers:
        if not t.done() and t not in limiter.on_wire:
            t.cancel()  # waiting for a permit (never sent) or for a retry (abandoned)
    if not waiter.done():
        drain = s.request_timeout_s if s.drain_s is None else s.drain_s
        await asyncio.wait({waiter}, timeout=drain)
    for t in workers:
        t.cancel()
    await waiter
    return stop_at


def _report(s: BenchSettings, state: _State, limiter: TracingLimiter, client: LLMClient,
            start: float, stop_at: float, end: float) -> BenchReport:
    acc = client.accounting
    elapsed = max(end - start, 1e-9)
    window = max(stop_at - start, 1e-9)
    sends = sorted(t - start for t in limiter.sends)
    outcomes = dict(acc.outcomes)
    missing = len(sends) - sum(outcomes.values())
    if missing > 0:  # cancelled on the wire after the drain, or a 200 of the wrong shape
        outcomes["no_outcome"] = missing
    prompt_tokens = sum(acc.prompt_tokens.values())
    completion_tokens = sum(acc.completion_tokens.values())
    achieved_rpm = len(sends) / window * 60.0
    steady_rpm = (sum(1 for t in sends if 1.0 <= t < window) / (window - 1.0) * 60.0
                  if window > 2.0 else None)
    achieved_tpm = (prompt_tokens + completion_tokens) / window * 60.0
    base_url = s.base_url or ""
    return BenchReport(
        base_url=safe_url(base_url),
        model=s.model or "default",
        api=s.api,
        stream=s.stream,
        concurrency=s.concurrency,
        prompts_per_request=s.prompts_per_request,
        max_tokens=s.max_tokens,
        rpm_limit=s.rpm,
        tpm_limit=s.tpm,
        elapsed_s=round(elapsed, 4),
        send_window_s=round(window, 4),
        started=state.started,
        calls=state.ok + sum(state.failed.values()),
        ok=state.ok,
        failed=dict(state.failed),
        unfinished=state.unfinished,
        attempts=len(sends),
        outcomes=outcomes,
        outcome_groups=group_outcomes(outcomes),
        retries=sum(acc.retries.values()),
        prompts=state.prompts,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        requests_per_s=round(state.ok / elapsed, 3),
        prompts_per_s=round(state.prompts / elapsed, 3),
        prompt_tokens_per_s=round(prompt_tokens / elapsed, 2),
        completion_tokens_per_s=round(completion_tokens / elapsed, 2),
        latency_s=latency_summary(state.latencies),
        ttft_s=latency_summary(state.ttfts) if s.stream else None,
        achieved_rpm=round(achieved_rpm, 2),
        steady_rpm=None if steady_rpm is None else round(steady_rpm, 2),
        rpm_ratio=round(achieved_rpm / s.rpm, 4) if s.rpm else None,
        achieved_tpm=round(achieved_tpm, 1),
        tpm_ratio=round(achieved_tpm / s.tpm, 4) if s.tpm else None,
        first_second_sends=sum(1 for t in sends if t < 1.0),
        peak_1s_sends=peak_window(sends),
        max_in_flight=limiter.max_seen,
        limiter=limiter.snapshot(),
        errors=[redact(e, s.api_key) for e in state.errors],
        aborted=state.aborted,
    )


def _num(value: float | None, fmt: str = ".3f", unit: str = "s") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def format_report(r: BenchReport) -> str:
    """The human-readable report (stdout of ``selfinstruct bench``)."""
    limits = ", ".join(x for x in (f"rpm {r.rpm_limit:g}" if r.rpm_limit else "",
                                   f"tpm {r.tpm_limit:g}" if r.tpm_limit else "") if x)
    lines = [
        f"endpoint     {r.base_url} (model {r.model}, {r.api} API"
        + (", streaming" if r.stream else "") + ")",
        f"load         concurrency {r.concurrency}, limits: {limits or 'none'}, "
        f"max_tokens {r.max_tokens}"
        + (f", {r.prompts_per_request} prompts a request" if r.prompts_per_request > 1 else ""),
        f"time         {r.elapsed_s:.2f}s ({r.send_window_s:.2f}s sending)",
        f"calls        {r.calls} finished: {r.ok} ok, {sum(r.failed.values())} failed"
        + (f" {r.failed}" if r.failed else "")
        + (f"; {r.unfinished} cut by the end of the run" if r.unfinished else ""),
        f"attempts     {r.attempts} sent, {r.retries} retries; "
        + ", ".join(f"{k} {v}" for k, v in r.outcome_groups.items() if v or k in ("ok", "429")),
        f"throughput   {r.requests_per_s:.2f} req/s"
        + (f", {r.prompts_per_s:.2f} prompts/s" if r.prompts_per_request > 1 else "")
        + f", tokens/s: prompt {r.prompt_tokens_per_s:,.1f}, "
        f"completion {r.completion_tokens_per_s:,.1f}",
        f"latency      p50 {_num(r.latency_s['p50'])}  p90 {_num(r.latency_s['p90'])}  "
        f"p99 {_num(r.latency_s['p99'])}  max {_num(r.latency_s['max'])}",
    ]
    if r.ttft_s is not None:
        lines.append(f"first token  p50 {_num(r.ttft_s['p50'])}  p90 {_num(r.ttft_s['p90'])}  "
                     f"p99 {_num(r.ttft_s['p99'])}")
    rate = f"rate         {r.achieved_rpm:,.0f} rpm sent"
    if r.rpm_limit:
        rate += f" = {r.rpm_ratio:.3f} x the limit {r.rpm_limit:g}"
        if r.steady_rpm is not None:
            rate += f" (after the first second {r.steady_rpm:,.0f} rpm)"
    rate += (f"; first second {r.first_second_sends} sent, busiest second {r.peak_1s_sends}; "
             f"max in flight {r.max_in_flight}")
    lines.append(rate)
    if r.tpm_limit:
        lines.append(f"tokens       {r.achieved_tpm:,.0f} tpm used = {r.tpm_ratio:.3f} x the "
                     f"limit {r.tpm_limit:g}")
    for e in r.errors:
        lines.append(f"error        {e}")
    if r.aborted:
        lines.append(f"aborted      {r.aborted}")
    return "\n".join(lines)
