"""Golden cases of the reference method (../shared/reference/golden): every model text with
the result the reference code's own functions returned for it.

Reference mode must reproduce every case exactly, in-process and through
``selfinstruct parse`` (as a child process; its output file equals the golden file byte
for byte). Default mode may differ only through the improvements README "Fidelity to the
method" names; this test prints how many cases differ by reason and fails on any
reference result the default loses for no named reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.generate import compat
from service.generate.fidelity import (
    IMPROVEMENTS,
    UNEXPLAINED,
    count_reasons,
    instance_differences,
    instruction_differences,
)
from service.generate.processing import kept_instructions, rules_for

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "reference" / "golden"
INSTRUCTIONS = GOLDEN / "instructions.jsonl"
INSTANCES = GOLDEN / "instances.jsonl"

pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason="reference golden cases not present")


def _cases(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_golden_files_are_substantial() -> None:
    instructions, instances = _cases(INSTRUCTIONS), _cases(INSTANCES)
    assert len(instructions) == 1500 and len(instances) == 1500
    # both finish reasons and both task kinds are covered, and many cases keep something
    assert {c["finish_reason"] for c in instructions} == {"stop", "length"}
    assert {c["is_classification"] for c in instances} == {True, False}
    assert sum(bool(c["kept"]) for c in instructions) > 500
    assert sum(bool(c["instances"]) for c in instances) > 500


def test_reference_mode_instructions_in_process() -> None:
    rules = rules_for("reference")
    wrong = [c["id"] for c in _cases(INSTRUCTIONS)
             if kept_instructions(rules, c["text"], c["finish_reason"]) != c["kept"]]
    assert wrong == []


def test_reference_mode_instances_in_process() -> None:
    rules = rules_for("reference")
    wrong = []
    for case in _cases(INSTANCES):
        outcome = rules.instances(case["text"], case["is_classification"], case["finish_reason"])
        got = sorted([i.input, i.output] for i in outcome.kept)
        if got != case["instances"] or compat.reference_instances(
            case["text"], case["is_classification"], case["finish_reason"]
        ) != [tuple(p) for p in case["instances"]]:
            wrong.append(case["id"])
    assert wrong == []


def _run_parse(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "parse", *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )


@pytest.mark.parametrize(("stage", "golden", "result_field"),
                         [("instructions", INSTRUCTIONS, "kept"), ("instances", INSTANCES, "instances")])
def test_parse_command_reference_mode_reproduces_golden(
    tmp_path: Path, stage: str, golden: Path, result_field: str
) -> None:
    # The result field is absent from the input: the command computes it.
    stripped = tmp_path / "raw.jsonl"
    with stripped.open("w", encoding="utf-8") as fh:
        for case in _cases(golden):
            case.pop(result_field)
            fh.write(json.dumps(case, ensure_ascii=False) + "\n")
    out = tmp_path / "parsed.jsonl"
    done = _run_parse("--stage", stage, "--compat", "reference", "--in", str(stripped), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == golden.read_bytes()
    assert "1,500" in done.stderr


def test_parse_command_ignores_a_stale_result_field(tmp_path: Path) -> None:
    stale = tmp_path / "stale.jsonl"
    stale.write_text(json.dumps({"id": 1, "text": " Write a short poem about the sea.", "finish_reason": "stop",
                                 "kept": ["something else"]}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = _run_parse("--stage", "instructions", "--compat", "reference", "--in", str(stale), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["kept"] == ["Write a short poem about the sea."]


@pytest.mark.parametrize(
    ("stage", "lines", "expected"),
    [
        ("instructions", ['{"text": "ok"}', "{not json"], ":2: not a JSON object"),
        ("instructions", ['{"id": 1}'], ":1: field 'text': missing"),
        ("instructions", ['{"text": 5}'], ":1: field 'text': expected str, got int"),
        ("instances", ['{"text": "Output: x", "is_classification": "yes"}'],
         ":1: field 'is_classification': expected bool, got str"),
        ("instances", ['{"text": "Output: x"}'], ":1: field 'is_classification': missing"),
        ("instances", ["[1, 2]"], ":1: expected a JSON object"),
        ("instructions", ['{"text": "a", "finish_reason": 3}'], ":1: field 'finish_reason': expected str"),
    ],
)
def test_parse_command_bad_input_names_file_line_field(
    tmp_path: Path, stage: str, lines: list[str], expected: str
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("previous result\n", encoding="utf-8")
    done = _run_parse("--stage", stage, "--in", str(source), "--out", str(out))
    assert done.returncode == 2
    assert f"{source}{expected}" in done.stderr
    assert out.read_text() == "previous result\n"  # nothing already done is lost
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_parse_command_missing_file_and_unknown_abbreviation(tmp_path: Path) -> None:
    done = _run_parse("--stage", "instances", "--in", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "nope.jsonl: not found" in done.stderr
    done = _run_parse("--stage", "instances", "--comp", "reference", "--in", "x", "--out", "y")
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr


def test_default_mode_differs_only_by_named_improvements(capsys: pytest.CaptureFixture[str]) -> None:
    rules = rules_for("default")
    instruction_diffs = [instruction_differences(rules, c["text"], c["finish_reason"])
                         for c in _cases(INSTRUCTIONS)]
    instance_diffs = [instance_differences(rules, c["text"], c["is_classification"], c["finish_reason"])
                      for c in _cases(INSTANCES)]
    by_reason_instr = count_reasons(instruction_diffs)
    by_reason_inst = count_reasons(instance_diffs)
    with capsys.disabled():
        print("\ndefault vs reference, instruction cases that differ, by reason:", by_reason_instr)
        print("default vs reference, instance cases that differ, by reason:", by_reason_inst)
    unexplained = [d for case in (*instruction_diffs, *instance_diffs) for d in case
                   if d.lost and d.reason not in IMPROVEMENTS]
    assert unexplained == [], unexplained[:5]
    assert UNEXPLAINED not in by_reason_instr and UNEXPLAINED not in by_reason_inst
    # the comparison is not vacuous: the default does differ, through named improvements
    assert by_reason_instr.get("case_kept", 0) > 0 and by_reason_inst.get("input_label_stripped", 0) > 0
    # and a lost reference instance is rare: the default keeps at least what it loses
    lost = sum(d.lost for case in instance_diffs for d in case)
    gained = sum(not d.lost for case in instance_diffs for d in case)
    assert gained >= lost


def test_every_named_improvement_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Fidelity to the method", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in IMPROVEMENTS if f"`{name}`" not in section]
    assert missing == []


def test_parse_command_alpaca_stage_checks_its_number(tmp_path: Path) -> None:
    source = tmp_path / "raw.jsonl"
    source.write_text('{"text": " Write a haiku.", "finish_reason": "stop", "next_number": "4"}\n',
                      encoding="utf-8")
    done = _run_parse("--stage", "alpaca", "--in", str(source), "--out", str(tmp_path / "o.jsonl"))
    assert done.returncode == 2 and f"{source}:1: field 'next_number': expected int" in done.stderr
