"""The embedded default end to end: `generate` with no endpoint starts the bundled
llama.cpp model, runs every stage through it, and leaves no server behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import child_env, jsonl, process_alive

pytestmark = pytest.mark.local_model


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_generate_verify_export_on_the_local_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "service", "generate", "--out", str(out), "--target", "5",
         "--seed", "1", "--quiet", "--show", "1"],
        env=child_env(), capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tasks = jsonl(out / "tasks.jsonl")
    assert len(tasks) == 5
    assert len(jsonl(out / "instructions.jsonl")) >= 5  # instruction stage + admission
    for task in tasks:  # instance stage and filters produced kept instances
        instances = task["instances"]
        assert isinstance(instances, list) and instances
        assert all(str(i["output"]).strip() for i in instances)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["counters"]["instruction_requests"] >= 1
    # classify + instances: at least two successful calls per written task
    assert run["usage"]["calls"]["ok"] >= 1 + 2 * len(tasks)
    assert run["usage"]["tokens"]["completion"] > 0
    assert "[task_" in done.stdout  # the summary shows a finished task
    verified = subprocess.run([sys.executable, "-m", "service", "verify", str(out)],
                              env=child_env(), capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = subprocess.run(
        [sys.executable, "-m", "service", "export", "--run", str(out), "--format", "alpaca"],
        env=child_env(), capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    records = jsonl(out / "export" / "alpaca.jsonl")
    assert len(records) >= 5
    assert {"instruction", "input", "output"} <= set(records[0])


def test_ctrl_c_stops_the_run_and_its_server(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "generate", "--out", str(out), "--target", "500",
         "--quiet"], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        servers: list[int] = []
        while not (out / "instructions.jsonl").exists() or not servers:
            assert process.poll() is None, process.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the local run produced nothing"
            servers = servers or _children(process.pid)
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr.decode()[-2000:]
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(process_alive(pid) for pid in servers), "the llama.cpp server outlived the run"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted"


def _bench_json(*flags: str) -> dict[str, Any]:
    """`selfinstruct bench FLAGS --json --quiet` on the embedded model: its JSON object."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "bench", *flags, "--json", "--quiet"],
        env=child_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_bench_against_the_local_server() -> None:
    report = _bench_json("--requests", "6", "--concurrency", "3", "--max-tokens", "16")
    assert report["calls"] == 6
    assert report["ok"] == 6
    assert report["outcomes"].get("200") == report["ok"]


def test_sweep_and_auto_against_the_local_server(tmp_path: Path) -> None:
    """`bench --sweep` and `--concurrency auto` work against the embedded llama.cpp
    server (4 slots): every level is served, a full batch is slower than one request,
    and auto measures the model's no-load latency and sets a bounded limit."""
    plot = tmp_path / "sweep.png"
    result = _bench_json("--sweep", "--levels", "1,4", "--duration", "8", "--max-tokens", "16",
                         "--plot", str(plot))
    points = {p["concurrency"]: p for p in result["points"]}
    assert set(points) == {1, 4}
    assert all(p["requests_per_s"] > 0 and not p["failed"] for p in points.values())
    assert points[4]["p50_s"] > points[1]["p50_s"]  # four sequences share one thread
    assert result["knee"]["concurrency"] in (1, 4)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = _bench_json("--concurrency", "auto", "--duration", "20", "--max-tokens", "16")
    assert report["concurrency"] == "auto" and report["ok"] > 0
    limiter = report["limiter"]
    assert limiter["in_flight_mode"] == "auto"
    assert limiter["no_load_latency_s"] is not None and limiter["no_load_latency_s"] > 0
    assert 2 <= limiter["in_flight_limit"] <= 64, limiter
