"""`selfinstruct report` on a real simulator run: every number in summary.json equals a
count made here, independently, from the run directory's files; the page is one
self-contained file; bad input is a clear error."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from rouge_score import rouge_scorer

from service.cli import main
from service.errors import RunDirError
from service.generate.orchestrator import run_generate
from service.report.page import build_report
from service.report.summary import ReportOptions, overlap, summarize
from service.rundir.store import INSTRUCTIONS, REJECTED, RUN_JSON, SEEDS, TASKS
from service.simulator import SimulatedServer
from tests.conftest import make_config


def rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture
async def run_dir(sim: SimulatedServer, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    result = await run_generate(make_config(out, sim.base_url, target=120,
                                            classification_share=0.3),
                                install_signal_handlers=False)
    assert result.summary.status == "finished"
    return out


def test_every_number_is_counted_from_the_files(run_dir: Path, tmp_path: Path) -> None:
    files = build_report(run_dir, tmp_path / "report")
    summary = orjson.loads(files.summary.read_bytes())
    tasks, admitted = rows(run_dir / TASKS), rows(run_dir / INSTRUCTIONS)
    rejected, seeds = rows(run_dir / REJECTED), rows(run_dir / SEEDS)
    run_json = orjson.loads((run_dir / RUN_JSON).read_bytes())

    counts = summary["counts"]
    assert counts["tasks"] == len(tasks) == 120
    assert counts["instructions_admitted"] == len(admitted)
    assert counts["rejected"] == len(rejected) > 0
    assert counts["seeds"] == len(seeds)
    instances = [inst for t in tasks for inst in t["instances"]]
    assert counts["instances"] == len(instances)
    task_level = [r for r in rejected if r.get("task_level")]
    assert counts["rejected_task_level"] == len(task_level)
    assert counts["pending_instructions"] == len(admitted) - len(tasks) - len(task_level)

    # the funnel, by stage and reason
    assert summary["rejections"]["by_reason"] == dict(Counter(r["reason"] for r in rejected))
    assert summary["rejections"]["by_stage"] == dict(Counter(r["stage"] for r in rejected))
    by_stage_reason: dict[str, Counter[str]] = {}
    for r in rejected:
        by_stage_reason.setdefault(r["stage"], Counter())[r["reason"]] += 1
    assert summary["rejections"]["by_stage_reason"] == {k: dict(v) for k, v in by_stage_reason.items()}
    before_admission = sum(1 for r in rejected if "id" not in r)
    assert counts["rejected_instances"] == sum(1 for r in rejected if "id" in r and not r.get("task_level"))
    assert counts["rejected_instances"] == sum(1 for r in rejected if r["stage"] == "instance_filter")
    funnel = {step["step"]: step["count"] for step in summary["funnel"]}
    assert funnel["candidate instructions"] == len(admitted) + before_admission
    # cross-check against the run's own counter: the files account for every candidate
    assert funnel["candidate instructions"] == run_json["counters"]["candidates_seen"]
    assert funnel["admitted instructions"] == len(admitted)
    assert funnel["finished tasks"] == len(tasks)

    # shares
    share = summary["tasks"]
    assert share["classification"] == sum(1 for t in tasks if t["is_classification"])
    assert share["empty_input_instances"] == sum(1 for i in instances if not i["input"].strip())
    assert share["tasks_all_inputs_empty"] == sum(
        1 for t in tasks if all(not i["input"].strip() for i in t["instances"]))
    assert share["instances_per_task"] == {
        str(k): v for k, v in sorted(Counter(len(t["instances"]) for t in tasks).items())}

    # lengths: the whole word-count histogram, and its summary statistics
    def words(texts: list[str]) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(len(t.split()) for t in texts).items())}

    lengths = summary["lengths"]
    assert lengths["instruction"]["by_words"] == words([t["instruction"] for t in tasks])
    assert lengths["input"]["by_words"] == words([i["input"] for i in instances if i["input"].strip()])
    assert lengths["output"]["by_words"] == words([i["output"] for i in instances])
    out_words = sorted(len(i["output"].split()) for i in instances)
    assert lengths["output"]["max"] == out_words[-1]
    assert lengths["output"]["p50"] == out_words[(len(out_words) + 1) // 2 - 1]
    assert lengths["output"]["mean"] == pytest.approx(sum(out_words) / len(out_words), abs=1e-3)

    # overlap: rouge-score itself, brute force, against every seed / earlier instruction
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = [a["instruction"] for a in admitted]
    seed_texts = [s["instruction"] for s in seeds]

    def best(text: str, pool: list[str]) -> float:
        return max((scorer.score(p, text)["rougeL"].fmeasure for p in pool), default=0.0)

    to_seed = [best(t, seed_texts) for t in texts]
    to_earlier = [best(t, texts[:i]) for i, t in enumerate(texts) if i > 0]

    def histogram(values: list[float]) -> list[int]:
        out = [0] * 20
        for v in values:
            out[min(19, int(v * 20))] += 1
        return out

    assert summary["overlap"]["sampled"] == len(texts)
    assert summary["overlap"]["seed"]["counts"] == histogram(to_seed)
    assert summary["overlap"]["earlier"]["counts"] == histogram(to_earlier)
    # in chunks (flat memory): the same numbers, however the earlier ones are split
    for chunk in (1, 7, 50):
        chunked = overlap(run_dir, {}, 10_000, chunk=chunk)
        assert chunked["earlier"] == summary["overlap"]["earlier"]
        assert chunked["seed"] == summary["overlap"]["seed"]
    assert summary["overlap"]["earlier"]["max"] == pytest.approx(max(to_earlier), abs=1e-4)
    assert max(to_earlier) <= 0.7  # the run's own threshold held

    # verbs: each listed count is the number of tasks whose instruction starts that way
    for verb, n in summary["verbs"]["top_verbs"][:5]:
        starting = sum(1 for t in tasks if re.match(rf"(?i)\W*(please\s+)?{verb}\b", t["instruction"])
                       or re.search(rf"(?i)^[^,]{{0,120}},\s*{verb}\b", t["instruction"]))
        assert n <= starting and n > 0

    # usage straight from run.json
    usage = summary["usage"]
    assert usage["total_tokens"] == run_json["usage"]["tokens"]["total"]
    assert usage["by_model"] == run_json["usage"]["tokens"]["by_model"]
    assert usage["by_stage"] == run_json["usage"]["tokens"]["by_stage"]
    assert set(usage["by_stage"]) == {"instructions", "classify", "instances"}
    assert summary["decontamination"]["rejected_contamination"] == 0


def test_page_is_self_contained_and_escaped(run_dir: Path, tmp_path: Path) -> None:
    # a model's text with markup must show as text, never as markup
    with (run_dir / REJECTED).open("ab") as fh:
        fh.write(orjson.dumps({"stage": "filter", "reason": "zz<script>alert(1)</script>",
                               "text": "<img src=http://example.com/x>"}) + b"\n")
    files = build_report(run_dir, tmp_path / "r")
    page = files.html.read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://example.com" not in page.replace("&lt;img src=http://example.com/x&gt;", "")
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<link|@import|https?://(?!example)", page)
    summary = orjson.loads(files.summary.read_bytes())
    assert f"<b>{summary['counts']['tasks']:,}</b>" in page


def test_labels_from_a_strange_file_are_bounded(run_dir: Path) -> None:
    with (run_dir / REJECTED).open("ab") as fh:
        for i in range(500):
            fh.write(orjson.dumps({"stage": "filter", "reason": f"r{i}" + "x" * 200}) + b"\n")
    by_reason = summarize(run_dir, ReportOptions(overlap_sample=0))["rejections"]["by_reason"]
    assert len(by_reason) <= 201 and by_reason["(other)"] > 0
    assert max(len(r) for r in by_reason) <= 80


def test_overlap_sample_is_bounded(run_dir: Path) -> None:
    summary = summarize(run_dir, ReportOptions(overlap_sample=10))
    total = summary["overlap"]["instructions"]
    assert 10 <= summary["overlap"]["sampled"] <= 11 and total > 20
    assert summarize(run_dir, ReportOptions(overlap_sample=0))["overlap"]["sampled"] == 0


def test_not_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RunDirError, match="not a run directory"):
        summarize(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    assert main(["report", str(tmp_path / "file.txt")]) == 1
    assert "not a run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "no such run directory" in capsys.readouterr().err


def test_a_corrupt_line_names_file_and_line(run_dir: Path) -> None:
    with (run_dir / TASKS).open("ab") as fh:
        fh.write(b'{"id": "x", "instances": []}\n')
    n = len(rows(run_dir / TASKS))
    with pytest.raises(RunDirError, match=rf"tasks.jsonl:{n}: field 'instruction'"):
        summarize(run_dir)


def test_command_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.html").is_file()
    assert "report of 120 tasks" in capsys.readouterr().out
    assert main(["report", str(run_dir), "--overlap-sample", "-1"]) == 2
    assert "--overlap-sample" in capsys.readouterr().err


def test_the_run_records_a_timeline_and_the_report_reads_it(run_dir: Path) -> None:
    points = rows(run_dir / "timeline.jsonl")
    assert len(points) >= 2  # one when the run starts, one when it stops
    assert points[-1]["tasks_written"] == 120 and points[0]["elapsed_s"] <= points[-1]["elapsed_s"]
    assert sum(points[-1]["calls_by_stage"].values()) > 0
    summary = summarize(run_dir)
    tp = summary["throughput"]
    assert tp["sessions"] == 1
    deltas = [(b["elapsed_s"], (b["tasks_written"] - a["tasks_written"]) * 60 / (b["elapsed_s"] - a["elapsed_s"]))
              for a, b in itertools.pairwise(points) if b["elapsed_s"] > a["elapsed_s"]]
    assert [(p["elapsed_s"], p["tasks_per_min"]) for p in tp["points"]] == [
        (round(t, 3), round(r, 3)) for t, r in deltas]
    assert tp["calls_by_stage"] == points[-1]["calls_by_stage"]
    for stage, n in points[-1]["calls_by_stage"].items():
        assert tp["seconds_per_call_by_stage"][stage] == round(points[-1]["seconds_by_stage"][stage] / n, 4)
        assert tp["seconds_per_call_by_stage"][stage] > 0


def test_timeline_recorder_throttles_and_joins_sessions(tmp_path: Path) -> None:
    from service.generate.seams import CallFinished
    from service.generate.timeline import TimelineRecorder

    now = [0.0]
    written: list[dict[str, Any]] = []
    counter = {"tasks_written": 0}
    recorder = TimelineRecorder(written.append, lambda: dict(counter), interval_s=5.0,
                                clock=lambda: now[0])
    for t, stage in ((0.0, "instructions"), (1.0, "classify"), (2.0, "instances"),
                     (6.0, "instances")):
        now[0] = t
        counter["tasks_written"] = int(t)
        recorder.call_finished(CallFinished(stage, 1, ok=stage != "classify", seconds=0.5))
    now[0] = 7.5
    recorder.stop_requested("finished")
    assert [p["elapsed_s"] for p in written] == [0.0, 6.0, 7.5]
    assert written[-1]["calls_by_stage"] == {"instructions": 1, "classify": 1, "instances": 2}
    assert written[-1]["failed_by_stage"] == {"classify": 1}
    assert written[-1]["seconds_by_stage"] == {"instructions": 0.5, "classify": 0.5, "instances": 1.0}

    # two sessions (a resumed run): the second one's clock starts again at zero
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    second = [{**p, "session": "b", "tasks_written": p["tasks_written"] + 7} for p in written]
    first = [{**p, "session": "a"} for p in written]
    (run / "timeline.jsonl").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in first + second))
    tp = summarize(run)["throughput"]
    assert tp["sessions"] == 2
    assert [p["elapsed_s"] for p in tp["points"]] == [6.0, 7.5, 13.5, 15.0]
    assert tp["calls_by_stage"] == {"instances": 4, "instructions": 2, "classify": 2}
    assert tp["seconds_per_call_by_stage"] == {"instances": 0.5, "instructions": 0.5, "classify": 0.5}


@pytest.mark.parametrize(("instruction", "expected"), [
    ("Write a heartfelt poem about cats.", ("write", "poem")),
    ("As a teacher, draft a two-paragraph fable about a fox.", ("draft", "fable")),
    ("Given a list of numbers, sort them.", ("sort", None)),
    ("Please create a persuasive essay on homework.", ("create", "essay")),
    ("Suggest five creative ideas for a party.", ("suggest", "ideas")),
    ("What is the capital of France?", (None, None)),
    ("Can you explain photosynthesis?", (None, None)),
    ("", (None, None)),
])
def test_leading_verb_heuristic(instruction: str, expected: tuple[str | None, str | None]) -> None:
    from service.report.verbs import verb_object

    assert verb_object(instruction) == expected


def test_a_run_still_writing_is_reported_without_its_torn_last_line(run_dir: Path) -> None:
    with (run_dir / TASKS).open("ab") as fh:
        fh.write(b'{"id": "task_999999", "instruction": "half a li')
    summary = summarize(run_dir)
    assert summary["counts"]["tasks"] == 120


@pytest.mark.parametrize("flags", [
    {"method": "alpaca"},
    {"compat": "reference", "task_kinds": "generation"},
])
async def test_the_funnel_accounts_for_every_candidate_in_other_modes(
    make_sim: Any, tmp_path: Path, flags: dict[str, Any]
) -> None:
    """Other methods and modes reject at other stages; candidates lost before admission
    (no task id) and the admitted ones still add up to the run's own candidate counter."""
    from tests.conftest import SHARED_DATA

    sim = await make_sim(seed=9, bad_item_rate=0.1, duplicate_rate=0.1)
    out = tmp_path / "run"
    await run_generate(make_config(out, sim.base_url, target=30,
                                   seed_tasks=SHARED_DATA / "seed_tasks.jsonl", **flags),
                       install_signal_handlers=False)
    summary = summarize(out)
    run_json = orjson.loads((out / RUN_JSON).read_bytes())
    funnel = {step["step"]: step for step in summary["funnel"]}
    assert funnel["candidate instructions"]["count"] == run_json["counters"]["candidates_seen"]
    assert funnel["finished tasks"]["count"] == 30
    rejected = rows(out / REJECTED)
    assert funnel["admitted instructions"]["lost"] == sum(1 for r in rejected if r.get("task_level"))
