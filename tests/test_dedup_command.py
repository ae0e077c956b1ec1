"""`selfinstruct dedup` end to end: decisions equal rouge-score's, rows unchanged, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from service.cli import main
from tests.conftest import SHARED_DATA

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def reference_keep(texts: list[str], against: list[str]) -> list[bool]:
    kept = list(against)
    out = []
    for text in texts:
        ok = all(SCORER.score(text, other)["rougeL"].fmeasure <= 0.7 for other in kept)
        out.append(ok)
        if ok:
            kept.append(text)
    return out


def test_jsonl_against_seeds_equals_reference(tmp_path: Path) -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data missing")
    source = SHARED_DATA / "user_oriented_instructions.jsonl"
    seeds = SHARED_DATA / "seed_tasks.jsonl"
    out = tmp_path / "kept.jsonl"
    assert main(["dedup", "--in", str(source), "--against", str(seeds), "--out", str(out)]) == 0
    rows = [line for line in source.read_text().splitlines() if line.strip()]
    texts = [json.loads(r)["instruction"] for r in rows]
    seed_texts = [json.loads(r)["instruction"] for r in seeds.read_text().splitlines() if r]
    keep = reference_keep(texts, seed_texts)
    expected = [row for row, k in zip(rows, keep, strict=True) if k]
    assert out.read_text().splitlines() == expected  # unchanged rows, in order
    assert 0 < len(expected) < len(rows)


def test_plain_text_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.txt"
    source.write_text("Write a poem about the sea.\n\nWrite a poem about the ocean.\n"
                      "Give three tips for sleeping well.\n")
    assert main(["dedup", "--in", str(source)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["Write a poem about the sea.",
                                         "Give three tips for sleeping well."]
    assert "kept 2, dropped 1" in captured.err


def test_unicode_tokenizer_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.txt"
    source.write_text("把这句话翻译成英文。\n请把这句话翻译成英文。\n")
    assert main(["dedup", "--in", str(source)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # rouge-score sees no tokens
    assert main(["dedup", "--in", str(source), "--tokenizer", "unicode"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"instruction": "a b c"}\n{"instruction": 3}\n', "in.jsonl:2: field 'instruction'"),
        (b'{"instruction": "a b c"}\n{"text": "x"}\n', "in.jsonl:2: field 'instruction': missing"),
        (b'{"instruction": "a b c"}\n{not json\n', "in.jsonl:2: invalid JSON"),
        (b'{"instruction": "a b c"}\n\xff\xfe\n', "in.jsonl:2: not UTF-8"),
    ],
)
def test_bad_input_names_file_line_field_and_keeps_earlier_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    out = tmp_path / "out.jsonl"
    assert main(["dedup", "--in", str(source), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert out.read_text() == '{"instruction": "a b c"}\n'  # line 1 was decided and kept


def test_bad_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a\n")
    assert main(["dedup", "--in", str(source), "--threshold", "0"]) == 2
    assert "--threshold" in capsys.readouterr().err
