"""The seed loader: the paper's file, plain text, JSON arrays, and errors that name
the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InputError
from service.rundir.seeds import Instance, default_seed_path, load_seed_tasks

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAPER_SEEDS = SHARED_DATA / "seed_tasks.jsonl"


@pytest.mark.skipif(not PAPER_SEEDS.exists(), reason="../shared/data/seed_tasks.jsonl not present")
def test_loads_the_papers_seed_tasks() -> None:
    tasks = load_seed_tasks(PAPER_SEEDS)
    assert len(tasks) == 175
    assert sum(t.is_classification for t in tasks) == 26
    assert len({t.id for t in tasks}) == 175
    assert all(t.instruction and t.instruction == t.instruction.strip() for t in tasks)
    assert all(t.instances for t in tasks)
    assert all(isinstance(i, Instance) for t in tasks for i in t.instances)
    first = tasks[0]
    assert first.id == "seed_task_0" and first.name and not first.is_classification
    # to_json gives back the standard format
    assert set(first.to_json()) == {"id", "name", "instruction", "instances", "is_classification"}


def test_default_seed_path_points_into_prompts() -> None:
    path = default_seed_path()
    assert path.name == "seed_tasks.jsonl" and path.parent.name == "prompts"


def test_plain_text_one_instruction_a_line(tmp_path: Path) -> None:
    path = tmp_path / "seeds.txt"
    path.write_text("Write a poem about the sea.\n\n   Summarize the given paragraph.  \n")
    tasks = load_seed_tasks(path)
    assert [t.instruction for t in tasks] == ["Write a poem about the sea.", "Summarize the given paragraph."]
    assert [t.id for t in tasks] == ["seed_task_0", "seed_task_1"]
    assert all(t.instances == () and not t.is_classification for t in tasks)


def test_json_array(tmp_path: Path) -> None:
    path = tmp_path / "seeds.json"
    path.write_text(
        "[\n"
        '  {"id": "a", "instruction": "Sort the numbers.", "instances": [{"input": "3 1 2", "output": "1 2 3"}]},\n'
        '  {"instruction": " Is this spam? ", "is_classification": true}\n'
        "]\n"
    )
    tasks = load_seed_tasks(path)
    assert [t.id for t in tasks] == ["a", "seed_task_1"]
    assert tasks[0].instances == (Instance("3 1 2", "1 2 3"),)
    assert tasks[0].name == "a"
    assert tasks[1].instruction == "Is this spam?" and tasks[1].is_classification


def test_jsonl_with_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"instruction": "Name a color."}\n\n{"instruction": "Name a fruit."}\n')
    assert [t.instruction for t in load_seed_tasks(path)] == ["Name a color.", "Name a fruit."]


GOOD = b'{"id": "t0", "instruction": "Name a color.", "instances": [{"input": "", "output": "red"}]}\n'

# (case, file bytes, line, field, words the message must contain)
BAD: list[tuple[str, bytes, int | None, str | None, str]] = [
    ("invalid json", GOOD + b'{"instruction": "Oops"\n', 2, None, "invalid JSON"),
    ("not an object", GOOD + b'"just a string"\n', 2, None, "expected a JSON object"),
    ("missing instruction", GOOD + b'{"id": "t1"}\n', 2, "instruction", "missing"),
    ("instruction not a string", GOOD + b'{"instruction": 42}\n', 2, "instruction", "expected a string, got int"),
    ("id not a string", GOOD + b'{"id": 7, "instruction": "Name a fruit."}\n', 2, "id", "expected a string"),
    ("is_classification not a bool", GOOD + b'{"instruction": "Is it spam?", "is_classification": "yes"}\n',
     2, "is_classification", "expected true or false"),
    ("instances not a list", GOOD + b'{"instruction": "Name a fruit.", "instances": {}}\n', 2, "instances", "expected a list"),
    ("instance not an object", GOOD + b'{"instruction": "Name a fruit.", "instances": ["apple"]}\n',
     2, "instances[0]", "expected an object"),
    ("instance output missing", GOOD + b'{"instruction": "Name a fruit.", "instances": [{"input": ""}]}\n',
     2, "instances[0].output", "missing"),
    ("instance input mistyped",
     GOOD + b'{"instruction": "Add them.", "instances": [{"input": "1", "output": "1"}, {"input": 1, "output": "2"}]}\n',
     2, "instances[1].input", "expected a string, got int"),
    ("empty instruction", GOOD + b'{"instruction": "   "}\n', 2, "instruction", "is empty"),
    ("duplicate id", GOOD + b'{"id": "t1", "instruction": "B c d."}\n{"id": "t0", "instruction": "C d e."}\n',
     3, "id", "duplicate id 't0' (first used on line 1)"),
    ("duplicate default id", b'{"instruction": "A b c."}\n{"id": "seed_task_0", "instruction": "B c d."}\n',
     2, "id", "duplicate id"),
    ("empty file", b"", None, None, "file is empty"),
    ("blank file", b"\n  \n\t\n", None, None, "file is empty"),
    ("non-UTF-8 bytes", GOOD + b'{"instruction": "Caf\xe9 menu."}\n', 2, None, "not UTF-8"),
    ("array element mistyped", b'[\n  {"instruction": "A b c."},\n  {"instruction": 3}\n]\n', 3, "instruction", "expected a string"),
    ("array not closed", b'[\n  {"instruction": "A b c."}\n', 3, None, "not closed"),
    ("array bad json", b'[\n  {"instruction": "A b c."},\n  {"instruction": }\n]\n', 3, None, "invalid JSON"),
    ("array empty", b"[]\n", None, None, "no seed tasks"),
]


@pytest.mark.parametrize(("content", "line", "field", "words"), [pytest.param(*c[1:], id=c[0]) for c in BAD])
def test_bad_input_names_file_line_and_field(
    tmp_path: Path, content: bytes, line: int | None, field: str | None, words: str
) -> None:
    path = tmp_path / "my_seeds.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_seed_tasks(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    message = str(err)
    assert message.startswith(f"{path}:{line}" if line is not None else str(path))
    if field is not None:
        assert f"field '{field}'" in message
    assert words in message
    assert err.exit_code == 2


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_seed_tasks(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a directory"):
        load_seed_tasks(tmp_path)
