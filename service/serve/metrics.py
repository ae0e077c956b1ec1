"""Prometheus metrics of the long-lived worker, on a private registry.

Two kinds of metric:

* observed as they happen: HTTP requests to the API (by method, route and status),
  the dedup admission latency (the pipeline's ``admission`` event, timed in the dedup
  thread) and the rate limiter's wait (each limiter's ``on_wait`` callback);
* read at scrape time from every job this process ran (:class:`JobCollector`): LLM
  requests by outcome, tokens, cost, retries, instructions admitted, tasks written,
  rejections by reason, in-flight requests and queue depths, jobs by status.

Totals are monotonic within one process: a live pipeline contributes its counters
minus what it had loaded from its run directory at start (its ``baseline``), and a
pipeline that ends hands its final contribution to a retired total.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.generate.pipeline import Pipeline
from service.generate.seams import AdmissionBatch, PipelineObserver

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Totals:
    """Everything the scrape-time collector reports, summed over jobs."""

    attempts_by_outcome: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    retries: int = 0
    calls_ok: int = 0
    calls_failed: int = 0
    instructions_admitted: int = 0
    tasks_written: int = 0
    candidates_seen: int = 0
    rejections_by_reason: Counter[str] = field(default_factory=Counter)
    # gauges (live pipelines only)
    in_flight: int = 0
    limiter_queued: int = 0
    candidates_queued: int = 0
    tasks_queued: int = 0
    # limits in force (configured or learned), the largest over live jobs: "rpm", "tpm",
    # "in_flight" (the current in-flight cap), "no_load_latency_s" (--max-in-flight auto)
    limits: dict[str, float] = field(default_factory=dict)

    def add(self, other: Totals) -> None:
        self.attempts_by_outcome.update(other.attempts_by_outcome)
        self.rejections_by_reason.update(other.rejections_by_reason)
        for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "retries", "calls_ok",
                     "calls_failed", "instructions_admitted", "tasks_written",
                     "candidates_seen", "in_flight", "limiter_queued", "candidates_queued",
                     "tasks_queued"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.limits.items():
            self.limits[key] = max(value, self.limits.get(key, value))

    def without_gauges(self) -> Totals:
        """The counters only: what a finished pipeline leaves behind."""
        copy = Totals()
        copy.add(self)
        copy.in_flight = copy.limiter_queued = copy.candidates_queued = copy.tasks_queued = 0
        copy.limits = {}
        return copy


@dataclass(frozen=True)
class Baseline:
    """A pipeline's counters right after it loaded its run directory (before any work)."""

    tasks_written: int
    instructions_admitted: int
    rejections_by_reason: Counter[str]

    @classmethod
    def of(cls, pipeline: Pipeline) -> Baseline:
        state = pipeline.state
        return cls(state.tasks_written, state.instructions_admitted,
                   Counter(state.rejected_by_reason))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _limiter_queued(limiter: Any) -> int:
    if not isinstance(limiter, Mapping):
        return 0
    if "queued" in limiter:
        return _int(limiter.get("queued"))
    return sum(_limiter_queued(v) for v in limiter.values())  # one limiter per endpoint


_LIMIT_KEYS = {"rpm": "rpm", "tpm": "tpm", "in_flight_limit": "in_flight",
               "no_load_latency_s": "no_load_latency_s"}


def _limits(limiter: Any) -> dict[str, float]:
    """The limits in a limiter snapshot (or one per endpoint): the largest of each."""
    if not isinstance(limiter, Mapping):
        return {}
    if "queued" not in limiter:
        merged: dict[str, float] = {}
        for value in limiter.values():
            for key, number in _limits(value).items():
                merged[key] = max(number, merged.get(key, number))
        return merged
    found: dict[str, float] = {}
    for key, name in _LIMIT_KEYS.items():
        value = limiter.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[name] = float(value)
    return found


def pipeline_totals(pipeline: Pipeline, baseline: Baseline) -> Totals:
    """What one live pipeline has done in this process, plus its current gauges."""
    state = pipeline.state
    usage = pipeline.backend.snapshot()
    tokens = _mapping(usage.get("tokens"))
    calls = _mapping(usage.get("calls"))
    failed = _mapping(calls.get("failed"))
    outcomes = _mapping(usage.get("attempts_by_outcome"))
    rejections = Counter(state.rejected_by_reason)
    rejections.subtract(baseline.rejections_by_reason)
    totals = Totals(
        attempts_by_outcome=Counter({str(k): _int(v) for k, v in outcomes.items()}),
        prompt_tokens=_int(tokens.get("prompt")),
        completion_tokens=_int(tokens.get("completion")),
        cached_tokens=_int(tokens.get("cached")),
        cost_usd=float(usage.get("cost_usd") or 0.0),
        retries=_int(usage.get("retries_total")),
        calls_ok=_int(calls.get("ok")),
        calls_failed=sum(_int(v) for v in failed.values()),
        instructions_admitted=max(0, state.instructions_admitted - baseline.instructions_admitted),
        tasks_written=max(0, state.tasks_written - baseline.tasks_written),
        candidates_seen=state.candidates_seen,
        rejections_by_reason=+rejections,  # drop zero/negative entries
        in_flight=_int(usage.get("in_flight")),
        limiter_queued=_limiter_queued(usage.get("limiter")),
        limits=_limits(usage.get("limiter")),
        candidates_queued=pipeline.candidates_queued,
        tasks_queued=pipeline.tasks_queued,
    )
    return totals


@dataclass(frozen=True)
class JobsView:
    """What the job service hands the collector at scrape time."""

    totals: Totals
    jobs_by_status: Mapping[str, int]
    jobs_queued: int
    draining: bool


JOB_STATUSES = ("queued", "running", "finished", "budget", "failed", "cancelled", "interrupted")


class JobCollector(Collector):
    """Reads the jobs' pipelines and backends at scrape time."""

    def __init__(self, source: Callable[[], JobsView]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed description: families are produced at collect time

    def collect(self) -> Iterator[Metric]:
        view = self._source()
        t = view.totals

        requests = CounterMetricFamily(
            "selfinstruct_llm_requests",
            "HTTP attempts to the LLM endpoint by outcome (status code or error kind)",
            labels=["status"],
        )
        for status, count in sorted(t.attempts_by_outcome.items()):
            requests.add_metric([status], count)
        yield requests

        calls = CounterMetricFamily(
            "selfinstruct_llm_calls", "LLM calls after retries, by result", labels=["result"]
        )
        calls.add_metric(["ok"], t.calls_ok)
        calls.add_metric(["failed"], t.calls_failed)
        yield calls

        yield CounterMetricFamily("selfinstruct_llm_retries", "LLM request retries",
                                  value=t.retries)

        tokens = CounterMetricFamily("selfinstruct_tokens", "LLM tokens used", labels=["kind"])
        tokens.add_metric(["prompt"], t.prompt_tokens)
        tokens.add_metric(["completion"], t.completion_tokens)
        tokens.add_metric(["cached"], t.cached_tokens)  # a part of "prompt"
        yield tokens

        yield CounterMetricFamily("selfinstruct_cost_usd", "LLM cost in USD (known prices)",
                                  value=t.cost_usd)
        yield CounterMetricFamily("selfinstruct_candidates",
                                  "candidate instructions parsed from responses",
                                  value=t.candidates_seen)
        yield CounterMetricFamily("selfinstruct_instructions_admitted",
                                  "instructions admitted into the pool",
                                  value=t.instructions_admitted)
        yield CounterMetricFamily("selfinstruct_tasks_written",
                                  "finished tasks written to tasks.jsonl",
                                  value=t.tasks_written)

        rejections = CounterMetricFamily(
            "selfinstruct_rejections", "dropped candidates and instances by reason",
            labels=["reason"],
        )
        for reason, count in sorted(t.rejections_by_reason.items()):
            rejections.add_metric([reason], count)
        yield rejections

        yield GaugeMetricFamily("selfinstruct_llm_in_flight", "LLM requests in flight",
                                value=t.in_flight)
        limits = GaugeMetricFamily(
            "selfinstruct_llm_limit",
            "limits in force, configured or learned from the endpoint: rpm, tpm, in_flight "
            "(the current cap on requests in flight)", labels=["kind"])
        for kind in ("rpm", "tpm", "in_flight"):
            if kind in t.limits:
                limits.add_metric([kind], t.limits[kind])
        yield limits
        if "no_load_latency_s" in t.limits:
            yield GaugeMetricFamily(
                "selfinstruct_llm_no_load_latency_seconds",
                "--max-in-flight auto: the endpoint's latency without load (estimate)",
                value=t.limits["no_load_latency_s"])
        queues = GaugeMetricFamily(
            "selfinstruct_queue_depth",
            "items waiting: limiter (requests waiting for rate), candidates (parsed "
            "instructions waiting for admission), tasks (admitted instructions waiting for a "
            "worker), jobs (submitted jobs waiting for a slot)",
            labels=["queue"],
        )
        queues.add_metric(["limiter"], t.limiter_queued)
        queues.add_metric(["candidates"], t.candidates_queued)
        queues.add_metric(["tasks"], t.tasks_queued)
        queues.add_metric(["jobs"], view.jobs_queued)
        yield queues

        jobs = GaugeMetricFamily("selfinstruct_jobs", "jobs known to this worker by status",
                                 labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], view.jobs_by_status.get(status, 0))
        yield jobs

        yield GaugeMetricFamily("selfinstruct_draining", "1 while the worker drains to stop",
                                value=1 if view.draining else 0)


def _empty_view() -> JobsView:
    return JobsView(Totals(), {}, 0, False)


class ServeMetrics:
    """The worker's registry. :meth:`bind` the job source, then :meth:`render` per scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._source: Callable[[], JobsView] = _empty_view
        self.http_requests = PromCounter(
            "selfinstruct_http_requests", "requests to this worker's API",
            ["method", "route", "status"], registry=self.registry,
        )
        self.http_latency = Histogram(
            "selfinstruct_http_request_seconds", "time to answer API requests (not streams)",
            ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.dedup_latency = Histogram(
            "selfinstruct_dedup_admit_seconds",
            "time of one dedup admission call (a batch of candidates, in the dedup thread)",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.dedup_candidates = PromCounter(
            "selfinstruct_dedup_candidates", "candidates checked by the dedup pool",
            registry=self.registry,
        )
        self.limiter_wait = Histogram(
            "selfinstruct_rate_limiter_wait_seconds",
            "time an LLM request waited in the client's limiter (slot and rate)",
            buckets=_WAIT_BUCKETS, registry=self.registry,
        )
        self.registry.register(JobCollector(lambda: self._source()))

    def bind(self, source: Callable[[], JobsView]) -> None:
        self._source = source

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ instrumentation
    def observe(self, pipeline: Pipeline) -> None:
        """Subscribe to a pipeline's admissions and its backend's limiter waits (called
        before the pipeline runs)."""
        pipeline.add_observer(_DedupTimer(self))
        for limiter in pipeline.backend.limiters():
            limiter.on_wait = self.limiter_wait.observe


class _DedupTimer(PipelineObserver):
    """The dedup histograms, fed by the pipeline's admission events."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics

    def admission(self, batch: AdmissionBatch) -> None:
        self.metrics.dedup_latency.observe(batch.seconds)
        self.metrics.dedup_candidates.inc(batch.candidates)
