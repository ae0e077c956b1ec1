"""`selfinstruct eval` against the real simulated endpoint (resume, ROUGE-L against the
references), `eval compare`, and the rating sheet's key and summary with the eight
models' real responses to the paper's 252 tasks (the browser part is test_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from rouge_score import rouge_scorer

from service.cli import main
from service.config import load_config
from service.errors import InputError, RunDirError
from service.evaluate.predictions import load_sources
from service.evaluate.ratings import read_key, summarize_ratings, table
from service.evaluate.runner import EvalSettings, run_eval
from service.evaluate.sheet import write_sheet
from service.simulator import SimulatedServer
from tests.conftest import SHARED_DATA
from tests.helpers import jsonl

TASKS = SHARED_DATA / "user_oriented_instructions.jsonl"
PREDICTIONS = SHARED_DATA / "predictions"
MODELS = sorted(p for p in PREDICTIONS.glob("*_predictions.jsonl"))


def small_tasks(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"".join(TASKS.read_bytes().splitlines(keepends=True)[:n]))
    return path


async def test_eval_runs_scores_and_resumes(sim: SimulatedServer, tmp_path: Path) -> None:
    tasks, out = small_tasks(tmp_path, 12), tmp_path / "eval"
    config, _ = load_config({"base_url": sim.base_url, "model": "sim", "api": "chat",
                             "max_in_flight": 4}, env={})
    result = await run_eval(config, EvalSettings(tasks, out, max_tokens=64))
    assert (result.items, result.done, result.new, result.failed) == (12, 12, 12, 0)
    preds = jsonl(out / "predictions.jsonl")
    assert len(preds) == 12 and len({p["id"] for p in preds}) == 12
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for p in preds:
        assert p["response"] and p["model"] == "sim"
        assert p["rouge_l"] == pytest.approx(scorer.score(p["target"], p["response"])["rougeL"].fmeasure, abs=1e-6)
    meta = orjson.loads((out / "eval.json").read_bytes())
    assert meta["done"] == 12 and meta["model"] == "sim"
    assert meta["rouge_l_mean"] == pytest.approx(sum(p["rouge_l"] for p in preds) / 12, abs=1e-5)

    # resume: the last 5 responses are lost (and a torn half line); only they are asked again
    lines = (out / "predictions.jsonl").read_bytes().splitlines(keepends=True)
    (out / "predictions.jsonl").write_bytes(b"".join(lines[:7]) + lines[7][:20])
    before = sim.stats()["by_route"]
    result = await run_eval(config, EvalSettings(tasks, out, max_tokens=64))
    assert (result.done, result.new) == (12, 5)
    after = sim.stats()["by_route"]
    assert sum(after.values()) - sum(before.values()) == 5
    assert sorted(p["id"] for p in jsonl(out / "predictions.jsonl")) == sorted(p["id"] for p in preds)

    # the output directory is a source for compare and the rating sheet, beside a paper file
    from service.evaluate.compare import side_by_side

    models = load_sources([out, PREDICTIONS / "davinci_predictions.jsonl"], TASKS)
    assert [m.model for m in models] == ["sim", "davinci"] and len(models[0].responses) == 12
    shown = side_by_side(models, ids=["user_oriented_task_3"])
    assert "--- sim" in shown and "--- davinci" in shown
    sheet = write_sheet(models, tmp_path / "sheet.html", limit=12)
    assert sheet.items == 24 and set(read_key(sheet.key).items.values()) == {"sim", "davinci"}

    # the same directory cannot silently mix two models
    other, _ = load_config({"base_url": sim.base_url, "model": "other", "api": "chat"}, env={})
    with pytest.raises(RunDirError, match="model='sim'"):
        await run_eval(other, EvalSettings(tasks, out))


async def test_eval_completions_api(sim: SimulatedServer, tmp_path: Path) -> None:
    config, _ = load_config({"base_url": sim.base_url, "model": "sim", "api": "completions"},
                            env={})
    result = await run_eval(config, EvalSettings(small_tasks(tmp_path, 3), tmp_path / "e"))
    assert result.done == 3 and sim.stats()["by_route"].get("completions", 0) == 3


def test_compare_real_predictions(capsys: pytest.CaptureFixture[str]) -> None:
    davinci, best = PREDICTIONS / "davinci_predictions.jsonl", PREDICTIONS / "text-davinci-003_predictions.jsonl"
    assert main(["eval", "compare", str(davinci), str(best), "--id", "user_oriented_task_7"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== user_oriented_task_") == 1 and "--- davinci" in out and "--- text-davinci-003" in out
    assert main(["eval", "compare", str(davinci), str(best), "--json"]) == 0
    table_rows = {r["model"]: r for r in orjson.loads(capsys.readouterr().out)["models"]}
    assert table_rows["davinci"]["responses"] == table_rows["text-davinci-003"]["responses"] == 252
    # the tuned model is far closer to the references than the base model (as in the paper)
    assert table_rows["text-davinci-003"]["rouge_l_mean"] > 3 * table_rows["davinci"]["rouge_l_mean"]
    assert main(["eval", "frobnicate"]) == 2
    assert "unknown eval action" in capsys.readouterr().err


def test_compare_an_eval_directory_with_a_predictions_file(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "eval.json").write_text('{"model": "mine"}')
    (out / "predictions.jsonl").write_bytes(orjson.dumps(
        {"id": "user_oriented_task_0", "instance": 0, "instruction": "x", "input": "",
         "target": "a b", "response": "a b"}) + b"\n")
    models = load_sources([out, PREDICTIONS / "davinci_predictions.jsonl"], TASKS)
    assert [m.model for m in models] == ["mine", "davinci"]
    assert ("user_oriented_task_0", 0) in models[1].responses


def test_bad_evaluation_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"id": "t1", "instruction": "Say hi.", "instances": []}\n'
                   '{"id": "t2", "instances": [{"input": "", "output": "x"}]}\n')
    assert main(["eval", "--tasks", str(bad), "--base-url", "http://127.0.0.1:9/v1",
                 "--model", "m", "--out", str(tmp_path / "o")]) == 2
    assert "tasks.jsonl:2: field 'instruction': missing" in capsys.readouterr().err
    preds = tmp_path / "x_predictions.jsonl"
    preds.write_text('{"instruction": "Not one of the tasks", "input": "", "response": "r"}\n')
    with pytest.raises(InputError, match=r"x_predictions.jsonl:1: field 'instruction': matches no task"):
        load_sources([preds], TASKS)
    line = orjson.loads((PREDICTIONS / "davinci_predictions.jsonl").read_bytes().splitlines()[4])
    del line["response"]
    preds.write_bytes(orjson.dumps(line) + b"\n")
    with pytest.raises(InputError, match=r"x_predictions.jsonl:1: field 'response': missing"):
        load_sources([PREDICTIONS / "davinci_predictions.jsonl", preds], TASKS)
    assert main(["eval", "--model", "m"]) == 2
    assert "eval needs --base-url, --model and --out" in capsys.readouterr().err


def ratings_file(path: Path, sheet_id: str, ratings: dict[str, str]) -> Path:
    """The rating page's download format (what test_browser.py gets from the real page)."""
    lines = [orjson.dumps({"item": k, "rating": v}).decode() for k, v in ratings.items()]
    path.write_text(f'{{"sheet_id": "{sheet_id}",\n"page": "p.html",\n"rater": "t",\n'
                    f'"scale": ["A","B","C","D"],\n"items": 1,\n"ratings": [\n'
                    + ",\n".join(lines) + "\n]}\n")
    return path


def test_sheet_is_blind_and_summary_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = load_sources(MODELS, TASKS)
    assert len(models) == 8
    sheet = write_sheet(models, tmp_path / "page.html", limit=10, seed=3)
    assert sheet.items == 80
    page = sheet.page.read_text()
    for m in models:  # model names never reach the page
        assert m.model not in page
    key = read_key(sheet.key)
    assert len(key.items) == 80 and set(key.items.values()) == {m.model for m in models}
    order = re.findall(r'"rid":"(r\d{5})"', page)
    assert order == sorted(order)
    first_models = [key.items[r] for r in order[:8]]
    assert len(set(first_models)) > 1  # shuffled: not one model's block after another
    # the same inputs and seed give the same sheet
    assert write_sheet(models, tmp_path / "again.html", limit=10, seed=3).sheet_id == sheet.sheet_id

    chosen = {order[0]: "A", order[1]: "B", order[2]: "C", order[3]: "A"}
    f1 = ratings_file(tmp_path / "r1.json", sheet.sheet_id, chosen)
    f2 = ratings_file(tmp_path / "r2.json", sheet.sheet_id, {order[0]: "D"})
    summary = summarize_ratings([f1, f2], key)
    for model, counts in summary["models"].items():
        for level in "ABCD":
            expected = sum(1 for r, lv in chosen.items() if lv == level and key.items[r] == model)
            expected += int(level == "D" and key.items[order[0]] == model)
            assert counts[level] == expected
    assert sum(m["rated"] for m in summary["models"].values()) == 5
    assert "| model | A | B | C | D |" in table(summary)
    assert main(["eval-summary", str(f1), str(f2), "--mapping", str(sheet.key),
                 "--out", str(tmp_path / "sum")]) == 0
    assert (tmp_path / "sum" / "ratings.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()


def test_ratings_from_another_sheet_name_file_line_field(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    models = load_sources(MODELS[:2], TASKS)
    sheet = write_sheet(models, tmp_path / "page.html", limit=3)
    other = write_sheet(models, tmp_path / "other.html", limit=3, seed=9)
    key = read_key(sheet.key)
    foreign = ratings_file(tmp_path / "foreign.json", other.sheet_id, {"r00001": "A"})
    with pytest.raises(InputError, match=r"foreign.json:1: field 'sheet_id': ratings from another sheet"):
        summarize_ratings([foreign], key)
    assert main(["eval-summary", str(foreign), "--mapping", str(sheet.key)]) == 2
    assert "foreign.json:1: field 'sheet_id'" in capsys.readouterr().err
    unknown = ratings_file(tmp_path / "u.json", sheet.sheet_id, {"r00001": "A", "r99999": "B"})
    with pytest.raises(InputError, match=r"u.json:8: field 'ratings\[1\].item': 'r99999' is not an item"):
        summarize_ratings([unknown], key)
    level = ratings_file(tmp_path / "l.json", sheet.sheet_id, {"r00002": "E"})
    with pytest.raises(InputError, match=r"l.json:7: field 'ratings\[0\].rating': 'E' is not one of"):
        summarize_ratings([level], key)


def test_command_line_with_a_key_from_the_environment(tmp_path: Path) -> None:
    """The real CLI against a child-process simulator that demands a key: the key comes
    from OPENAI_API_KEY, never shows in any output, and a re-run asks nothing again."""
    import os
    import subprocess
    import sys

    secret = "sk-eval-test-5f3a9c"
    sim = subprocess.Popen(
        [sys.executable, "-m", "service", "simulate", "--port", "0", "--latency-ms", "1",
         "--seed", "2", "--require-api-key"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SIMULATOR_API_KEY": secret})
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip()
        env = {**os.environ, "OPENAI_API_KEY": secret}
        command = [sys.executable, "-m", "service", "eval", "--tasks", str(small_tasks(tmp_path, 4)),
                   "--base-url", url, "--model", "sim", "--out", str(tmp_path / "e")]
        first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert first.returncode == 0, first.stderr
        assert "4/4 responses" in first.stdout and "4 new" in first.stdout
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert again.returncode == 0 and "0 new" in again.stdout
        no_key = subprocess.run([*command[:-2], "--out", str(tmp_path / "nokey")],
                                capture_output=True, text=True, timeout=120,
                                env={k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"})
        assert no_key.returncode != 0
        for text in (first.stdout, first.stderr, again.stdout, no_key.stdout, no_key.stderr,
                     *(p.read_text() for p in (tmp_path / "e").iterdir() if p.is_file())):
            assert secret not in text
    finally:
        sim.terminate()
        sim.wait(timeout=10)


def test_sheet_embeds_hostile_text_as_data(tmp_path: Path) -> None:
    hostile = "</script><script>alert(1)</script><!-- & <b>bold</b>"
    out = tmp_path / "m"
    out.mkdir()
    (out / "eval.json").write_text('{"model": "m"}')
    (out / "predictions.jsonl").write_bytes(orjson.dumps(
        {"id": "t1", "instance": 0, "instruction": hostile, "input": hostile,
         "target": "", "response": hostile}) + b"\n")
    sheet = write_sheet(load_sources([out], TASKS), tmp_path / "p.html")
    page = sheet.page.read_text()
    assert "<script>alert(1)" not in page and "<b>bold" not in page
    block = page.split('<script type="application/json" id="sheet-data">', 1)[1].split("</script>", 1)[0]
    data = orjson.loads(block)
    assert data["items"][0]["response"] == hostile and data["items"][0]["instruction"] == hostile
