"""`export --compat reference`: prepare_for_finetuning.py's file, step for step (the
reference's own code, run with the same seeded generator, is the oracle)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from service.cli import main
from service.rundir.export import export_run, reference_input_rewrite
from tests import reference_oracle

pytestmark = pytest.mark.skipif(not reference_oracle.REFERENCE.is_dir(), reason="reference not present")


def _run_dir(tmp_path: Path) -> tuple[Path, list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    run = tmp_path / "run"
    run.mkdir()
    tasks, seeds = [], []
    with (run / "tasks.jsonl").open("w", encoding="utf-8") as fh:
        for n in range(60):
            instances = [
                {"input": f"Sentence: review number {n} was good.", "output": "Positive"},
                {"input": f"Name: Ann {n}\n\nAge: {n}", "output": f"Ann is {n}."},
                {"input": "", "output": "A haiku about the sea."},
            ]
            fh.write(json.dumps({"id": f"task_{n:06d}", "instruction": f"Task number {n % 20}",
                                 "instances": instances}) + "\n")
            tasks += [(f"Task number {n % 20}", i["input"], i["output"]) for i in instances]
    with (run / "seeds.jsonl").open("w", encoding="utf-8") as fh:
        for n in range(3):
            inst = {"input": f"Text: seed {n}", "output": f"seed output {n}"}
            fh.write(json.dumps({"id": f"seed_{n}", "name": f"s{n}", "instruction": f"Seed task {n}",
                                 "instances": [inst], "is_classification": False}) + "\n")
            seeds.append((f"Seed task {n}", inst["input"], inst["output"]))
    return run, tasks, seeds


def _lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("include_seeds", [False, True])
def test_reference_export_equals_prepare_for_finetuning(tmp_path: Path, include_seeds: bool) -> None:
    run, tasks, seeds = _run_dir(tmp_path)
    out = tmp_path / "ft.jsonl"
    result = export_run(run, "prompt-completion", out, include_seeds=include_seeds, seed=123, compat="reference")
    expected = reference_oracle.finetuning_records(tasks + (seeds if include_seeds else []), random.Random(123))
    assert _lines(out) == expected
    assert result.records == len(expected) < len(tasks) + len(seeds)  # duplicates dropped


def test_reference_export_through_the_cli(tmp_path: Path) -> None:
    run, tasks, seeds = _run_dir(tmp_path)
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    base = ["export", "--run", str(run), "--compat", "reference", "--include-seed-tasks"]
    assert main([*base, "--seed", "7", "--out", str(a)]) == 0
    assert main([*base, "--seed", "7", "--out", str(b)]) == 0
    assert main([*base, "--seed", "8", "--out", str(c)]) == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    records = _lines(a)
    assert records == reference_oracle.finetuning_records(tasks + seeds, random.Random(7))
    prompts = " ".join(r["prompt"] for r in records)
    assert "Seed task 2" in prompts and "Sentence: review" in prompts
    assert any("review number" in r["prompt"] and "Sentence:" not in r["prompt"] for r in records)
    assert main([*base, "--format", "alpaca", "--out", str(c)]) == 2
    assert main([*base, "--format", "hf", "--out", str(tmp_path / "hf")]) == 2


def test_input_rewrite_rules() -> None:
    rewritten = {reference_input_rewrite("Sentence: I loved it.", random.Random(s)) for s in range(40)}
    assert rewritten == {"Sentence: I loved it.", "I loved it."}
    two_fields = {reference_input_rewrite("Name: Ann\n\nAge: 3", random.Random(s)) for s in range(40)}
    assert two_fields == {"Name: Ann\n\nAge: 3", "Name: Ann\nAge: 3"}
