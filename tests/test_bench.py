"""`selfinstruct bench` / run_bench against the in-process simulator (loopback, seconds)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator

import pytest

from service import cli
from service.bench.loadtest import BenchSettings, make_prompt, peak_window, run_bench, safe_url
from service.errors import ConfigError
from service.simulator import SimSettings, SimulatedServer

CANARY = "sk-canary-7f3a9c1e5b2d4680"


async def test_counts_add_up_and_match_the_server() -> None:
    async with SimulatedServer(SimSettings(latency_ms=20, seed=3)) as sim:
        report = await run_bench(BenchSettings(sim.base_url, requests=40, concurrency=8,
                                               max_tokens=32, prompt_tokens=20))
        stats = sim.stats()
    assert report.ok == report.calls == report.started == 40
    assert report.unfinished == 0 and not report.failed
    assert report.attempts == sum(report.outcomes.values()) == stats["requests"] == 40
    assert report.outcomes == {"200": 40}
    assert report.outcome_groups["ok"] == 40 and report.outcome_groups["429"] == 0
    assert report.prompt_tokens == stats["tokens"]["prompt"]
    assert report.completion_tokens == stats["tokens"]["completion"]
    assert report.prompts == 40
    assert report.max_in_flight <= 8
    assert report.latency_s["count"] == 40
    lat = report.latency_s
    assert lat["p50"] is not None and lat["p99"] is not None and lat["max"] is not None
    assert 0.005 < lat["p50"] <= lat["p99"] <= lat["max"] < 2.0
    assert report.requests_per_s > 0 and report.completion_tokens_per_s > 0
    assert report.ttft_s is None


async def test_holds_the_rpm_without_a_burst_at_start() -> None:
    rpm = 600.0  # 10 a second
    async with SimulatedServer(SimSettings(latency_ms=30, seed=4)) as sim:
        report = await run_bench(BenchSettings(sim.base_url, duration_s=3.0, concurrency=50,
                                               rpm=rpm))
        served = sim.stats()["requests"]
    assert report.rpm_ratio is not None
    assert 0.8 <= report.rpm_ratio <= 1.2, report.achieved_rpm
    assert report.steady_rpm is not None and 0.8 * rpm <= report.steady_rpm <= 1.2 * rpm
    # nothing like the minute's quota (600) at once: about one second's worth
    assert report.first_second_sends <= rpm / 60 * 1.2 + 1
    assert report.peak_1s_sends <= rpm / 60 * 1.2 + 1
    assert report.attempts == served
    assert report.outcome_groups["429"] == 0
    # workers still waiting for a permit at the end are dropped, not waited for
    assert report.elapsed_s < 3.0 + 1.0


async def test_reports_429s_when_the_server_limit_is_lower() -> None:
    async with SimulatedServer(SimSettings(rpm=120, burst_seconds=1.0, latency_ms=20,
                                           seed=5)) as sim:
        report = await run_bench(BenchSettings(sim.base_url, duration_s=2.5, concurrency=20,
                                               rpm=1200, max_attempts=1))
        stats = sim.stats()
    assert report.outcome_groups["429"] > 0
    assert report.outcomes.get("429", 0) == stats["by_status"].get("429", 0)
    assert report.failed.get("rate_limited", 0) == report.outcome_groups["429"]
    assert report.ok == stats["by_status"]["200"]
    assert report.calls == report.ok + sum(report.failed.values())
    assert "429" in report.format_text()


async def test_stream_measures_time_to_first_token() -> None:
    async with SimulatedServer(SimSettings(latency_ms=60, jitter=0.1, seed=6)) as sim:
        report = await run_bench(BenchSettings(sim.base_url, requests=12, concurrency=4,
                                               stream=True, api="chat"))
    assert report.ok == 12
    assert report.ttft_s is not None and report.ttft_s["count"] == 12
    ttft, lat = report.ttft_s["p50"], report.latency_s["p50"]
    assert ttft is not None and lat is not None and 0 < ttft < lat
    assert "first token" in report.format_text()


async def test_list_prompts_count_prompts() -> None:
    async with SimulatedServer(SimSettings(latency_ms=10, seed=7)) as sim:
        report = await run_bench(BenchSettings(sim.base_url, requests=6, concurrency=3,
                                               prompts_per_request=5))
        stats = sim.stats()
    assert report.ok == 6 and report.prompts == 30
    assert stats["choices"] == 30


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        BenchSettings("http://x/v1", duration_s=1, requests=1)
    with pytest.raises(ConfigError):
        BenchSettings("http://x/v1", concurrency=0)
    with pytest.raises(ConfigError):
        BenchSettings("http://x/v1", api="chat", prompts_per_request=2)
    with pytest.raises(ConfigError):
        BenchSettings("ftp://x/v1")
    assert BenchSettings("http://x/v1").duration_s == 10.0


def test_helpers() -> None:
    assert peak_window([0.0, 0.1, 0.5, 1.2, 1.3, 1.4, 1.5]) == 4  # [0.5, 1.5)
    assert peak_window([]) == 0
    assert safe_url("http://user:pw@host:8000/v1") == "http://***@host:8000/v1"
    prompt = make_prompt(3, 50)
    assert 150 <= len(prompt) <= 200 and prompt != make_prompt(4, 50)


# --------------------------------------------------------------------------- CLI
@contextlib.contextmanager
def sim_thread(settings: SimSettings) -> Iterator[SimulatedServer]:
    """The simulator on its own loop in a thread, so the CLI can run asyncio.run itself."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = SimulatedServer(settings)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(autouse=True)
def _no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    # the command installs uvloop for the process; keep the test process's loop policy
    monkeypatch.setattr("service.commands.bench.install_uvloop", lambda: False)


def test_cli_json_parses_and_never_shows_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with sim_thread(SimSettings(latency_ms=10, seed=8, api_key=CANARY)) as sim:
        code = cli.main(["bench", "--base-url", sim.base_url, "--requests", "15",
                         "--concurrency", "5", "--rpm", "6000", "--stream", "--json"])
        served = sim.stats()
    out, err = capsys.readouterr()
    assert code == 0
    data = json.loads(out)  # one JSON object, nothing else on stdout
    assert data["ok"] == 15 and data["attempts"] == served["requests"] == 15
    assert data["rpm_limit"] == 6000 and data["ttft_s"]["count"] == 15
    assert set(data["latency_s"]) >= {"p50", "p90", "p99"}
    assert CANARY not in out and CANARY not in err


def test_cli_wrong_key_is_redacted_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the simulator echoes the key it got in its 401 message, as some servers do
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with sim_thread(SimSettings(latency_ms=5, seed=9, api_key="the-right-key")) as sim:
        code = cli.main(["bench", "--base-url", sim.base_url, "--duration", "3",
                         "--concurrency", "4"])
        text_out, text_err = capsys.readouterr()
        code_json = cli.main(["bench", "--base-url", sim.base_url, "--requests", "5",
                              "--concurrency", "2", "--json"])
        json_out, json_err = capsys.readouterr()
    assert code == 1 and code_json == 1
    assert "401" in text_out and "***" in text_out
    data = json.loads(json_out)
    assert data["ok"] == 0 and data["outcome_groups"]["4xx"] == 5
    assert data["failed"] == {"client_error": 5}
    for text in (text_out, text_err, json_out, json_err):
        assert CANARY not in text
    assert "aborted" in text_out  # 20 calls in a row refused: stops early


def test_cli_plain_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with sim_thread(SimSettings(latency_ms=5, seed=10)) as sim:
        code = cli.main(["bench", "--base-url", sim.base_url, "--requests", "10"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "throughput" in out and "latency" in out
    assert err.startswith("bench ") and "\r" not in err  # not a terminal: plain lines
