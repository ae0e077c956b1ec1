"""The reference's prompt-completion fine-tuning format: seeded template choice."""

from __future__ import annotations

from pathlib import Path

import orjson

from service.rundir.export import (
    END_OF_TEXT,
    PROMPT_COMPLETION_WITH_INPUT,
    PROMPT_COMPLETION_WITHOUT_INPUT,
    export_run,
    prompt_completion_formatter,
)


def _run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    root.mkdir()
    tasks = [
        {"id": f"task_{i:06d}", "instruction": f"Instruction {{number}} {i}",
         "is_classification": False,
         "instances": [{"input": f"input {i}" if i % 2 else "", "output": f"out {i}"}],
         "most_similar": {}, "meta": {}}
        for i in range(40)
    ]
    (root / "tasks.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tasks))
    return root


def test_each_record_uses_a_reference_template(tmp_path: Path) -> None:
    root = _run_dir(tmp_path)
    result = export_run(root, "prompt-completion", seed=3)
    records = [orjson.loads(x) for x in result.path.read_bytes().splitlines()]
    assert len(records) == 40
    used = set()
    for i, record in enumerate(records):
        instruction, has_input = f"Instruction {{number}} {i}", bool(i % 2)
        templates = PROMPT_COMPLETION_WITH_INPUT if has_input else PROMPT_COMPLETION_WITHOUT_INPUT
        matches = [
            (p, c) for p, c in templates
            if p.replace("{instruction}", instruction).replace("{input}", f"input {i}")
            == record["prompt"] and c.replace("{output}", f"out {i}") == record["completion"]
        ]
        assert matches, record  # braces in the text stayed literal, never format fields
        used.add(matches[0])
        assert record["completion"].endswith(END_OF_TEXT)
    assert len(used) > 4  # several templates really are used


def test_same_seed_same_file_other_seed_differs(tmp_path: Path) -> None:
    root = _run_dir(tmp_path)
    first = export_run(root, "prompt-completion", tmp_path / "a.jsonl", seed=1).path.read_bytes()
    again = export_run(root, "prompt-completion", tmp_path / "b.jsonl", seed=1).path.read_bytes()
    other = export_run(root, "prompt-completion", tmp_path / "c.jsonl", seed=2).path.read_bytes()
    assert first == again
    assert first != other


def test_formatter_is_independent_per_seed() -> None:
    a, b = prompt_completion_formatter(5), prompt_completion_formatter(5)
    rows = [("Do it", "", "done"), ("Do it", "x", "y")] * 5
    assert [a(*r) for r in rows] == [b(*r) for r in rows]
