"""Client throughput against the simulated endpoint at 60,000 RPM, and the real local model.

    python -m benchmarks.endpoint            # ~2 minutes
    python -m benchmarks.endpoint --quick    # 5 s windows, no local model

Each case is one :func:`service.bench.loadtest.run_bench` (the client and limiter ``generate`` uses,
``--rpm`` set to the server's limit) against a fresh ``selfinstruct simulate`` child
process (so client and server CPU are measured apart, each on its own core): the achieved
request rate against the limit, the share of 429s, CPU seconds per 1,000 requests on
both sides, with the stock asyncio loop and with uvloop, single prompts against lists of
5 prompts a request (the completions API answers each by index: "prompts/s" is
tasks-equivalent throughput), and thousands of requests in flight at a long latency.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import time
from dataclasses import dataclass

from benchmarks._results import table, write_section
from benchmarks.limiters import external_simulator
from service.bench.loadtest import BenchReport, BenchSettings, run_bench
from service.llm import install_uvloop

RPM = 60_000
LATENCY_MS = 300
WINDOW_S = 15.0
LOCAL_WINDOW_S = 20.0


@dataclass(frozen=True)
class Case:
    name: str
    loop: str  # "asyncio" or "uvloop"
    concurrency: int
    prompts_per_request: int = 1
    latency_ms: int = LATENCY_MS


@dataclass(frozen=True)
class Measured:
    case: Case
    report: BenchReport
    client_cpu_s: float
    server_cpu_s: float
    served: int


async def _measure(case: Case, window_s: float) -> Measured:
    async with external_simulator(rpm=RPM, latency_ms=case.latency_ms, jitter=0.5,
                                  seed=1) as sim:
        server0 = sim.cpu_seconds()
        cpu0 = time.process_time()
        report = await run_bench(BenchSettings(
            sim.base_url, duration_s=window_s, concurrency=case.concurrency, rpm=RPM,
            max_tokens=32, prompt_tokens=32, prompts_per_request=case.prompts_per_request,
            drain_s=5.0))
        client_cpu = time.process_time() - cpu0
        server_cpu = sim.cpu_seconds() - server0
        served = int((await sim.stats())["requests"])
    return Measured(case, report, client_cpu, server_cpu, served)


def measure(case: Case, window_s: float) -> Measured:
    if case.loop == "uvloop" and not install_uvloop():
        raise RuntimeError("uvloop is not installed")
    try:
        return asyncio.run(_measure(case, window_s))
    finally:
        asyncio.set_event_loop_policy(None)


def rows(results: list[Measured]) -> list[list[object]]:
    out: list[list[object]] = []
    for m in results:
        r = m.report
        per_k = 1000 / max(1, r.attempts)
        share_429 = r.outcome_groups.get("429", 0) / max(1, r.attempts)
        out.append([
            m.case.name,
            m.case.loop,
            f"{m.case.latency_ms} ms",
            m.case.concurrency,
            r.max_in_flight,
            f"{r.rpm_ratio:.3f}" if r.rpm_ratio is not None else "-",
            f"{share_429:.2%}",
            f"{r.ok / r.send_window_s:,.0f}",
            f"{r.prompts / r.send_window_s:,.0f}",
            f"{m.client_cpu_s * per_k:.3f} s",
            f"{m.server_cpu_s * per_k:.3f} s",
            f"{r.latency_s['p50']:.3f} / {r.latency_s['p99']:.3f} s"
            if r.latency_s["p50"] is not None and r.latency_s["p99"] is not None else "-",
        ])
    return out


def local_model(window_s: float) -> list[list[object]] | None:
    if importlib.util.find_spec("service.llm.local") is None:
        return None
    install_uvloop()
    out: list[list[object]] = []
    try:
        for stream in (False, True):
            r = asyncio.run(run_bench(BenchSettings(
                None, duration_s=window_s, concurrency=4, max_tokens=64, prompt_tokens=32,
                stream=stream, drain_s=30.0)))
            ttft = r.ttft_s["p50"] if r.ttft_s is not None else None
            out.append([
                r.model, "yes" if stream else "no", r.concurrency, r.attempts,
                f"{r.requests_per_s:.2f}", f"{r.completion_tokens_per_s:.1f}",
                f"{r.prompt_tokens_per_s:.1f}",
                f"{r.latency_s['p50']:.2f} s" if r.latency_s["p50"] is not None else "-",
                "-" if ttft is None else f"{ttft:.2f} s",
                ", ".join(f"{v} {k}" for k, v in r.outcome_groups.items() if k != "ok" and v)
                + (" (retried)" if r.retries else "") or "none",
                f"{r.ok}/{r.calls + r.unfinished}",
            ])
            print(out[-1], flush=True)
    finally:
        asyncio.set_event_loop_policy(None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description="client throughput against the simulator")
    parser.add_argument("--quick", action="store_true", help="5 s windows, no local model")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    window = 5.0 if args.quick else WINDOW_S

    cases = [
        Case("single prompts", "asyncio", 2000),
        Case("single prompts", "uvloop", 2000),
        Case("5 prompts a request", "uvloop", 2000, prompts_per_request=5),
        Case("single prompts, long latency", "uvloop", 4000, latency_ms=3000),
    ]
    results: list[Measured] = []
    for case in cases:
        m = measure(case, window)
        results.append(m)
        r = m.report
        print(f"  {case.name} ({case.loop}, {case.latency_ms} ms): {r.requests_per_s:,.0f} req/s,"
              f" rpm ratio {r.rpm_ratio}, 429 {r.outcome_groups.get('429', 0)}, "
              f"max in flight {r.max_in_flight}, client CPU {m.client_cpu_s:.1f}s, "
              f"server CPU {m.server_cpu_s:.1f}s", flush=True)
    headers = ["case", "loop", "latency", "concurrency", "max in flight", "sent / limit",
               "429 share", "answered/s", "prompts/s", "client CPU / 1k req",
               "server CPU / 1k req", "latency p50 / p99"]
    sim_table = table(headers, rows(results))
    print(sim_table, flush=True)

    asyncio_m, uv_m, batch_m = results[0], results[1], results[2]

    def cpu_per_k(m: Measured) -> float:
        return m.client_cpu_s * 1000 / max(1, m.report.attempts)

    def pps(m: Measured) -> float:
        return m.report.prompts / m.report.send_window_s

    saving = 1 - cpu_per_k(uv_m) / cpu_per_k(asyncio_m)
    summary = (
        f"At {RPM:,} RPM the client sent {uv_m.report.rpm_ratio:.3f} of the limit with "
        f"{uv_m.report.outcome_groups.get('429', 0)} 429s, spending "
        f"{cpu_per_k(uv_m):.2f} s of CPU per 1,000 requests with uvloop and "
        f"{cpu_per_k(asyncio_m):.2f} s with asyncio ("
        + (f"uvloop saved {saving:.0%}" if saving >= 0.05 else
           f"{saving:+.0%} with uvloop: within the noise of this machine; the client "
           "already parses with orjson")
        + "). Five prompts a "
        f"request answered {pps(batch_m):,.0f} prompts/s against {pps(uv_m):,.0f} for single "
        f"prompts under the same RPM limit ({pps(batch_m) / max(1e-9, pps(uv_m)):.1f}x), for "
        f"{cpu_per_k(batch_m) / cpu_per_k(uv_m):.2f}x the client CPU per request."
    )
    print(summary, flush=True)

    local_rows = None if args.quick else local_model(LOCAL_WINDOW_S)
    sections = [
        "## Endpoint throughput (`python -m benchmarks.endpoint`)",
        f"`run_bench` (the `generate` client and limiter, `rpm={RPM}`) against "
        f"`selfinstruct simulate --rpm {RPM}` in a child process, {LATENCY_MS} ms ±50% "
        f"latency unless noted, {window:g} s per case, max_tokens 32. CPU is per 1,000 "
        "requests sent, client (this process) and server (the child) apart. \"sent / "
        "limit\" counts every request sent in the window against the limit; \"answered/s\" "
        "and \"prompts/s\" are requests answered 200 (and the prompts in them, the "
        "tasks-equivalent rate) per second of sending.",
        sim_table,
        summary,
    ]
    if local_rows is not None:
        local_table = table(["model", "stream", "concurrency", "attempts", "req/s",
                             "completion tokens/s", "prompt tokens/s", "latency p50",
                             "TTFT p50", "failed attempts", "calls ok"], local_rows)
        print(local_table, flush=True)
        sections += [
            f"### Embedded local model (llama.cpp, 1 thread, 4 slots), {LOCAL_WINDOW_S:g} s, "
            "max_tokens 64",
            local_table,
            "Streaming: llama.cpp's server does not keep a connection usable after an SSE "
            "response, and the client's next request on that pooled connection fails with "
            "\"Can not write request body\" (a connection error, retried after a backoff); "
            "non-streaming calls reuse connections without errors.",
        ]
    elif not args.quick:
        sections.append("_The embedded local model was not available (no service/llm/local.py)._")
    load = (f"_Load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
            "after: other processes share the cores._")
    print(load)
    sections.append(load)
    if not args.no_write:
        write_section("endpoint", "\n\n".join(sections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
