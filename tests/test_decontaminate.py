"""Decontamination against evaluation sets: planted copies and near-copies of the paper's
252 user-oriented tasks are caught in a real simulator run, a clean run has nothing,
``--drop`` keeps the run's invariants, and bad evaluation files are clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.cli import main
from service.decontam.check import build_index, check_tasks
from service.decontam.evalsets import DEFAULT_EVAL_SET, read_eval_tasks
from service.decontam.ngrams import NgramIndex, normalise_tokens
from service.errors import InputError
from service.generate.orchestrator import run_generate
from service.rundir.store import INSTRUCTIONS, REJECTED, RUN_JSON, TASKS
from service.rundir.verify import verify_run
from service.simulator import SimulatedServer
from tests.conftest import SHARED_DATA, make_config
from tests.helpers import jsonl

EVAL = {t.id: t for t in read_eval_tasks(DEFAULT_EVAL_SET)}


def write_rows(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def near_copy(text: str) -> str:
    """Casing, punctuation and spacing changed, words added before and after, and the
    last word replaced: still shares a 13-token run with the original."""
    words = text.split()
    changed = " ".join(words[:-1]).upper().replace(",", " ,  ") + " banana"
    return f"Here is my answer!  {changed} -- thanks."


@pytest.fixture
async def clean_run(sim: SimulatedServer, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    await run_generate(make_config(out, sim.base_url, target=60), install_signal_handlers=False)
    return out


def plant(run: Path) -> dict[str, str]:
    """Plant three contaminated tasks; returns task id -> the evaluation id planted."""
    tasks = jsonl(run / TASKS)
    long_output = next(t for t in EVAL.values()
                       if t.instances and len(normalise_tokens(t.instances[0].output)) >= 30)
    long_input = next(t for t in EVAL.values()
                      if t.instances and len(normalise_tokens(t.instances[0].input)) >= 20)
    copied = EVAL["user_oriented_task_5"]
    planted = {tasks[3]["id"]: copied.id, tasks[10]["id"]: long_output.id,
               tasks[20]["id"]: long_input.id}
    tasks[3]["instruction"] = copied.instruction  # an exact copy
    tasks[10]["instances"][0]["output"] = near_copy(long_output.instances[0].output)
    tasks[20]["instances"][0]["input"] = near_copy(long_input.instances[0].input)
    write_rows(run / TASKS, tasks)
    admitted = jsonl(run / INSTRUCTIONS)
    for rec in admitted:
        if rec["id"] == tasks[3]["id"]:
            rec["instruction"] = copied.instruction
    write_rows(run / INSTRUCTIONS, admitted)
    return planted


def decontaminate_json(run: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["decontaminate", str(run), "--json", *extra]) == 0
    return dict(orjson.loads(capsys.readouterr().out))


def test_clean_run_has_nothing(clean_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = decontaminate_json(clean_run, capsys=capsys)
    assert result["contaminated"] == [] and result["checked"] == 60
    recorded = orjson.loads((clean_run / "decontamination.json").read_bytes())
    assert recorded["checked"] == 60 and recorded["contaminated_tasks"] == 0
    assert recorded["against"][0]["items"] == 252


def test_planted_copies_and_near_copies_are_caught_and_dropped(
    clean_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = plant(clean_run)
    assert verify_run(clean_run).ok
    result = decontaminate_json(clean_run, capsys=capsys)
    found = {(c["task_id"], c["match_id"]) for c in result["contaminated"]}
    assert found == set(planted.items())
    fields = {c["task_id"]: c["field"] for c in result["contaminated"]}
    assert sorted(fields.values()) == ["input", "instruction", "output"]
    for c in result["contaminated"]:
        assert len(c["ngram"].split()) == 13
        item = EVAL[c["match_id"]]
        texts = [item.instruction] + [x for i in item.instances for x in (i.input, i.output)]
        assert any(c["ngram"] in " ".join(normalise_tokens(t)) for t in texts)
    assert jsonl(clean_run / TASKS) and len(jsonl(clean_run / TASKS)) == 60  # listing changes nothing

    before = orjson.loads((clean_run / RUN_JSON).read_bytes())["counters"]
    result = decontaminate_json(clean_run, "--drop", capsys=capsys)
    assert result["dropped"] == 3
    remaining = {t["id"] for t in jsonl(clean_run / TASKS)}
    assert len(remaining) == 57 and not remaining & set(planted)
    rejections = [r for r in jsonl(clean_run / REJECTED) if r["reason"] == "contamination"]
    assert {(r["id"], r["match_id"]) for r in rejections} == set(planted.items())
    assert all(r["task_level"] and r["stage"] == "decontaminate" for r in rejections)
    after = orjson.loads((clean_run / RUN_JSON).read_bytes())["counters"]
    assert after["tasks_written"] == before["tasks_written"] - 3
    assert after["rejected_by_reason"]["contamination"] == 3
    report = verify_run(clean_run)
    assert report.ok, report.summary()
    # again: nothing left, nothing rejected twice
    assert decontaminate_json(clean_run, "--drop", capsys=capsys)["contaminated"] == []
    assert sum(r["reason"] == "contamination" for r in jsonl(clean_run / REJECTED)) == 3


def test_named_fields_and_short_texts(tmp_path: Path) -> None:
    evalset = tmp_path / "qa.jsonl"
    write_rows(evalset, [
        {"qid": "q1", "question": "What is the capital city of the small country called Freedonia today",
         "answer": "Fredville"},
        {"qid": "q2", "question": "Name eight animals that live in the cold northern sea",
         "answer": "seal"},
    ])
    index, sources = build_index([evalset], fields=["question", "answer"], id_field="qid")
    assert sources[0].items == 2 and index.too_short == 2  # one-word answers are not indexed
    tasks = [
        {"id": "t1", "instruction": "Answer: what is the capital city of the small country "
                                    "called Freedonia today?", "instances": []},
        {"id": "t2", "instruction": "Name eight animals that live in the cold northern sea.",
         "instances": [{"input": "", "output": "seal"}]},
        {"id": "t3", "instruction": "Name eight plants that live in the cold northern sea.",
         "instances": []},
    ]
    found = {(f.task_id, f.match_id, f.field) for f in check_tasks(index, tasks)}
    # 11 tokens: shorter than 13, matched whole; a one-word change is not a match
    assert found == {("t1", "q1", "instruction"), ("t2", "q2", "instruction")}


def test_index_matches_at_the_earliest_position() -> None:
    index = NgramIndex(n=3, min_tokens=3)
    index.add("a", "instruction", "one two three four")
    index.add("b", "instruction", "seven eight nine")
    [first, none] = index.find(["x seven eight nine one two three", "one two four three"])
    assert first is not None and first.item_id == "b" and first.ngram == "seven eight nine"
    assert none is None
    # no gram spans two texts of a batch; empty texts keep their places
    assert index.find(["x one two", "", "three four y", "", "one two three"]) == [
        None, None, None, None,
        index.find(["one two three"])[0],
    ]
    assert index.find(["", "eight nine"]) == [None, None]


def test_bad_evaluation_file_names_file_line_and_field(
    clean_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "instruction": "x y z", "instances": []}\n'
                   '{"id": "b", "instances": []}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: field 'instruction': missing"):
        build_index([bad])
    assert main(["decontaminate", str(clean_run), "--against", str(bad)]) == 2
    assert "bad.jsonl:2: field 'instruction': missing" in capsys.readouterr().err
    bad.write_text('{"id": "a", "instruction": "x", "instances": [{"input": 3}]}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'instances\[0\].input'"):
        build_index([bad])
    bad.write_text('{"q": "a question"}\n{"q": 7}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: field 'q': expected a string"):
        build_index([bad], fields=["q"])
    assert main(["decontaminate", str(clean_run), "--against", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
    assert main(["decontaminate", str(tmp_path)]) == 1
    assert "not a run directory" in capsys.readouterr().err


def test_the_papers_file_is_the_bundled_default() -> None:
    assert DEFAULT_EVAL_SET.read_bytes() == (SHARED_DATA / "user_oriented_instructions.jsonl").read_bytes()
    assert len(EVAL) == 252
    shutil.disk_usage(DEFAULT_EVAL_SET)  # exists on disk, shipped as package data


async def test_generate_decontaminate_rejects_while_generating(
    make_sim: Any, tmp_path: Path
) -> None:
    """Two runs of a deterministic simulator: texts of the first become an evaluation set;
    the second, with the check in the pipeline (the TaskChecks seam), writes none of them
    and rejects them with reason contamination and the item's id."""
    from service.cli import build_parser
    from service.decontam.check import decontaminate_while_generating, scan_run
    from service.generate.pipeline import Pipeline
    from service.report.summary import summarize

    first = await make_sim(seed=11)
    out1 = tmp_path / "first"
    await run_generate(make_config(out1, first.base_url, target=30, max_in_flight=1, seed=3),
                       install_signal_handlers=False)
    tasks = jsonl(out1 / TASKS)
    evalset = tmp_path / "eval.jsonl"
    write_rows(evalset, [{"id": f"ev{i}", "instruction": t["instruction"],
                          "instances": t["instances"]} for i, t in enumerate(tasks[:20:4])])
    index, sources = build_index([evalset])
    # the first run holds them, of course
    assert len(scan_run(out1, index).task_ids) >= 5

    second = await make_sim(seed=11)
    out2 = tmp_path / "second"
    checks: list[Any] = []

    def install(pipeline: Pipeline) -> None:
        check = decontaminate_while_generating(pipeline.run_dir, index, sources)
        checks.append(check)
        pipeline.checks.add(check)

    await run_generate(make_config(out2, second.base_url, target=30, max_in_flight=1, seed=3),
                       install_signal_handlers=False, on_pipeline=install)
    assert len(jsonl(out2 / TASKS)) == 30
    assert scan_run(out2, index).findings == []  # nothing contaminated was written
    rejected = [r for r in jsonl(out2 / REJECTED) if r["reason"] == "contamination"]
    assert len(rejected) == checks[0].rejected >= 5
    assert all(r["stage"] == "decontaminate" and r["task_level"] and r["match_id"].startswith("ev")
               and r["id"].startswith("task_") and len(r["ngram"].split()) <= 13 for r in rejected)
    report = verify_run(out2)
    assert report.ok, report.summary()
    record = orjson.loads((out2 / "decontamination.json").read_bytes())
    assert record["mode"] == "generate" and record["against"][0]["items"] == 5
    summary = summarize(out2)
    assert summary["decontamination"]["rejected_contamination"] == len(rejected)
    assert summary["rejections"]["by_reason"]["contamination"] == len(rejected)
    # the flag parses: no FILE means the bundled default set
    args = build_parser("generate").parse_args(["generate", "--decontaminate"])
    assert args.decontaminate == []


def test_generate_decontaminate_in_batch_mode_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--out", str(tmp_path / "run"), "--mode", "batch",
                 "--base-url", "http://127.0.0.1:9/v1", "--decontaminate"]) == 2
    assert "selfinstruct decontaminate RUN_DIR --drop" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
