"""`selfinstruct bench --sweep`: where is the knee? Step the concurrency, load the endpoint
at each level through the same client as ``generate``, and report throughput (requests/s,
output tokens/s) against latency (p50, p99) and time to first token (``--stream``).

The knee is the lowest level that reaches :data:`KNEE_SHARE` of the best throughput seen:
beyond it more requests in flight buy (almost) no throughput, only latency.

    result = await run_sweep(BenchSettings(base_url=url, duration_s=5), [1, 2, 4, 8, 16])
    result.knee.concurrency, result.points[-1].p99_s
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.bench.loadtest import BenchReport, BenchSettings, bench_endpoint, run_bench
from service.errors import ConfigError
from service.progress import Progress

KNEE_SHARE = 0.9
DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_LEVEL_DURATION_S = 5.0
MAX_LEVELS = 32  # every level costs a whole load run


@dataclass(frozen=True)
class SweepPoint:
    concurrency: int
    requests_per_s: float
    output_tokens_per_s: float
    p50_s: float | None
    p99_s: float | None
    ttft_p50_s: float | None
    ok: int
    failed: int

    @classmethod
    def from_report(cls, level: int, report: BenchReport) -> SweepPoint:
        ttft = report.ttft_s or {}
        return cls(level, report.requests_per_s, report.completion_tokens_per_s,
                   report.latency_s.get("p50"), report.latency_s.get("p99"),
                   ttft.get("p50"), report.ok, sum(report.failed.values()))


@dataclass(frozen=True)
class SweepResult:
    base_url: str
    model: str
    api: str
    points: tuple[SweepPoint, ...]
    knee: SweepPoint | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_levels(text: str) -> tuple[int, ...]:
    """"1,2,4,8" -> (1, 2, 4, 8): positive, increasing, at most MAX_LEVELS."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"bench: --levels: expected numbers like 1,2,4,8 (got {text!r})") from None
    if not levels or len(levels) > MAX_LEVELS or any(v < 1 or v > 10_000 for v in levels):
        raise ConfigError(f"bench: --levels: 1 to {MAX_LEVELS} numbers within 1..10000 "
                          f"(got {text!r})")
    if list(levels) != sorted(set(levels)):
        raise ConfigError(f"bench: --levels must increase (got {text!r})")
    return levels


def find_knee(points: Sequence[SweepPoint], share: float = KNEE_SHARE) -> SweepPoint | None:
    """The lowest level reaching ``share`` of the best throughput (None without any)."""
    best = max((p.requests_per_s for p in points), default=0.0)
    if best <= 0:
        return None
    return next(p for p in points if p.requests_per_s >= share * best)


async def run_sweep(settings: BenchSettings, levels: Sequence[int], *,
                    progress: Progress | None = None) -> SweepResult:
    """One load run per level against one endpoint (the embedded model is started once)."""
    if not levels:
        raise ConfigError("bench: a sweep needs at least one level")
    points: list[SweepPoint] = []
    async with bench_endpoint(settings) as live:
        for level in levels:
            if progress is not None:
                progress.message(f"sweep: concurrency {level}")
            report = await run_bench(dataclasses.replace(live, concurrency=level),
                                     progress=progress)
            points.append(SweepPoint.from_report(level, report))
        return SweepResult(report.base_url, report.model, report.api, tuple(points),
                           find_knee(points))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def format_sweep(result: SweepResult) -> str:
    header = ("concurrency | req/s | output tok/s | p50 ms | p99 ms | TTFT p50 ms | failed")
    rows = [header, "-" * len(header)]
    for p in result.points:
        mark = "  <- knee" if result.knee is not None and p.concurrency == result.knee.concurrency else ""
        rows.append(f"{p.concurrency:>11} | {p.requests_per_s:>5.1f} | {p.output_tokens_per_s:>12,.0f} | "
                    f"{_ms(p.p50_s):>6} | {_ms(p.p99_s):>6} | {_ms(p.ttft_p50_s):>11} | "
                    f"{p.failed}{mark}")
    knee = result.knee
    rows.append("" if knee is None else
                f"knee: concurrency {knee.concurrency} reaches {KNEE_SHARE:.0%} of the best "
                f"throughput ({knee.requests_per_s:.1f} req/s at p50 {_ms(knee.p50_s)} ms)")
    return "\n".join(rows)


def plot_sweep(result: SweepResult, path: Path, title: str | None = None) -> None:
    """Latency against throughput (one point per level, the knee starred) and output
    tokens/s against concurrency. Needs matplotlib (the ``report`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("bench: --plot needs matplotlib (pip install 'selfinstruct[report]')") from None
    pts = [p for p in result.points if p.p50_s is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [p.requests_per_s for p in pts]
    left.plot(xs, [(p.p50_s or 0) * 1000 for p in pts], marker="o", label="latency p50")
    left.plot(xs, [(p.p99_s or 0) * 1000 for p in pts], marker="s", label="latency p99")
    if any(p.ttft_p50_s is not None for p in pts):
        left.plot(xs, [(p.ttft_p50_s or 0) * 1000 for p in pts], marker="^", label="TTFT p50")
    for p in pts:
        left.annotate(str(p.concurrency), (p.requests_per_s, (p.p50_s or 0) * 1000),
                      textcoords="offset points", xytext=(3, 4), fontsize=7)
    knee = result.knee
    if knee is not None and knee.p50_s is not None:
        left.plot([knee.requests_per_s], [knee.p50_s * 1000], marker="*", markersize=16,
                  color="red", linestyle="none", label=f"knee (concurrency {knee.concurrency})")
    left.set_xlabel("throughput (requests/s)")
    left.set_ylabel("latency (ms)")
    left.set_yscale("log")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    right.plot([p.concurrency for p in pts], [p.output_tokens_per_s for p in pts], marker="o")
    if knee is not None:
        right.axvline(knee.concurrency, color="red", linestyle="--", label="knee")
        right.legend(fontsize=8)
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrency (requests in flight)")
    right.set_ylabel("output tokens/s")
    right.grid(True, alpha=0.3)
    fig.suptitle(title or f"bench --sweep: {result.model} ({result.api})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
