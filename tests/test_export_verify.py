"""Export goldens per format, verify on a good hand-made run and on one broken copy per
invariant, and the CLI exit codes of `export`, `verify` and `seeds`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from service import cli
from service.errors import RunDirError
from service.rundir.export import FORMATS, export_run
from service.rundir.store import INSTRUCTIONS, REJECTED, RUN_JSON, SEEDS, TASKS
from service.rundir.verify import (
    CHECKS,
    CONFLICTING_OUTPUTS,
    COUNTERS,
    EMPTY_OUTPUT,
    INSTANCE_COUNT,
    NEAR_DUPLICATES,
    OUTPUT_EQUALS_INPUT,
    PARSE,
    SCHEMA,
    TASK_ADMITTED,
    UNIQUE_IDS,
    UNIQUE_INSTRUCTIONS,
    VerifyReport,
    brute_force_pairs,
    verify_run,
)

# ------------------------------------------------------------------ a hand-made run

SEED_0 = "Is there anything I can eat for breakfast that has no eggs but plenty of protein?"
SEED_1 = "Classify the sentiment of the sentence into positive, negative, or mixed."
INSTR_1 = "Translate the given English sentence into French."
INSTR_2 = "Suggest three names for a new coffee shop in a small town."
INSTR_3 = "Write a haiku about the autumn rain falling on a quiet pond."


def good_run() -> dict[str, Any]:
    return {
        "seeds": [
            {"id": "seed_task_0", "name": "breakfast", "instruction": SEED_0,
             "instances": [{"input": "", "output": "Yes: a protein shake and a bowl of oats."}],
             "is_classification": False},
            {"id": "seed_task_1", "name": "sentiment", "instruction": SEED_1,
             "instances": [{"input": "Tasty food, slow service.", "output": "mixed"}],
             "is_classification": True},
        ],
        "instructions": [
            {"id": "task_000001", "instruction": INSTR_1, "most_similar": {SEED_1: 0.333333},
             "max_score": 0.333333, "source": {"seed_examples": 6, "machine_examples": 2}},
            {"id": "task_000002", "instruction": INSTR_2, "most_similar": {}, "max_score": 0.0,
             "source": {"seed_examples": 6, "machine_examples": 2}},
            {"id": "task_000003", "instruction": INSTR_3, "most_similar": {}, "max_score": 0.0,
             "source": {"seed_examples": 6, "machine_examples": 2}},
        ],
        "tasks": [
            {"id": "task_000001", "instruction": INSTR_1, "is_classification": False,
             "instances": [
                 {"input": "Good morning, my friend.", "output": "Bonjour, mon ami."},
                 {"input": "Where is the train station?", "output": "Où est la gare ?"},
             ],
             "most_similar": {SEED_1: 0.333333}, "meta": {"model": "m", "stage_models": {}}},
            {"id": "task_000002", "instruction": INSTR_2, "is_classification": False,
             "instances": [{"input": "", "output": "1. The Daily Grind\n2. Bean There"}],
             "most_similar": {}, "meta": {"model": "m", "stage_models": {}}},
        ],
        "rejected": [
            {"stage": "filter", "reason": "too_short", "text": "Be happy."},
            {"stage": "instances", "reason": "no_instances", "text": INSTR_3,
             "task_level": True, "id": "task_000003"},
        ],
        "run": {
            "version": "0.1.0",
            "status": "finished",
            "config": {"threshold": 0.7, "inclusive_threshold": False, "tokenizer": "rouge",
                       "filters": {"max_instances": 5}},
        },
        # None: counters computed from the files as written (what a correct run writes)
        "counters": None,
    }


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for raw in path.read_bytes().splitlines() if raw.strip())


def write_run(
    root: Path, data: dict[str, Any], raw: Callable[[Path], None] | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for key, name in (("seeds", SEEDS), ("instructions", INSTRUCTIONS), ("tasks", TASKS),
                      ("rejected", REJECTED)):
        if data.get(key) is None:
            continue
        (root / name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data[key]))
    if raw is not None:
        raw(root)
    run = dict(data["run"])
    counters = data["counters"]
    if counters is None:
        reasons: dict[str, int] = {}
        for r in data.get("rejected") or []:
            reason = str(r.get("reason"))
            reasons[reason] = reasons.get(reason, 0) + 1
        counters = {
            "tasks_written": _lines(root / TASKS),
            "instructions_admitted": _lines(root / INSTRUCTIONS),
            "rejected": _lines(root / REJECTED),
            "rejected_by_reason": dict(sorted(reasons.items())),
        }
    run["counters"] = counters
    (root / RUN_JSON).write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2) + b"\n")
    return root


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", good_run())


@pytest.fixture
def cli_main() -> Callable[[list[str]], int]:
    """The real entry point (it imports only the command being run)."""
    return cli.main


# ------------------------------------------------------------------ export goldens

GOLDEN: dict[str, list[str]] = {
    "alpaca": [
        '{"instruction":"Translate the given English sentence into French.","input":"Good morning, my friend.","output":"Bonjour, mon ami."}',
        '{"instruction":"Translate the given English sentence into French.","input":"Where is the train station?","output":"Où est la gare ?"}',
        '{"instruction":"Suggest three names for a new coffee shop in a small town.","input":"","output":"1. The Daily Grind\\n2. Bean There"}',
    ],
    "sharegpt": [
        '{"conversations":[{"from":"human","value":"Translate the given English sentence into French.\\n\\nGood morning, my friend."},{"from":"gpt","value":"Bonjour, mon ami."}]}',
        '{"conversations":[{"from":"human","value":"Translate the given English sentence into French.\\n\\nWhere is the train station?"},{"from":"gpt","value":"Où est la gare ?"}]}',
        '{"conversations":[{"from":"human","value":"Suggest three names for a new coffee shop in a small town."},{"from":"gpt","value":"1. The Daily Grind\\n2. Bean There"}]}',
    ],
    "openai-chat": [
        '{"messages":[{"role":"user","content":"Translate the given English sentence into French.\\n\\nGood morning, my friend."},{"role":"assistant","content":"Bonjour, mon ami."}]}',
        '{"messages":[{"role":"user","content":"Translate the given English sentence into French.\\n\\nWhere is the train station?"},{"role":"assistant","content":"Où est la gare ?"}]}',
        '{"messages":[{"role":"user","content":"Suggest three names for a new coffee shop in a small town."},{"role":"assistant","content":"1. The Daily Grind\\n2. Bean There"}]}',
    ],
    "self-instruct": [
        '{"prompt":"Translate the given English sentence into French.\\nInput: Good morning, my friend.\\nOutput:","completion":" Bonjour, mon ami.<|endoftext|>"}',
        '{"prompt":"Translate the given English sentence into French.\\nInput: Where is the train station?\\nOutput:","completion":" Où est la gare ?<|endoftext|>"}',
        '{"prompt":"Suggest three names for a new coffee shop in a small town.\\nOutput:","completion":" 1. The Daily Grind\\n2. Bean There<|endoftext|>"}',
    ],
    "prompt-completion": [
        '{"prompt":"Task: Translate the given English sentence into French.\\n\\nGood morning, my friend.\\n\\n","completion":"Bonjour, mon ami.<|endoftext|>"}',
        '{"prompt":"Translate the given English sentence into French.\\n\\nWhere is the train station?\\n\\nOutput:","completion":" Où est la gare ?<|endoftext|>"}',
        '{"prompt":"Suggest three names for a new coffee shop in a small town.\\n","completion":"1. The Daily Grind\\n2. Bean There<|endoftext|>"}',
    ],
}


def test_golden_table_covers_every_format() -> None:
    assert set(GOLDEN) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(GOLDEN))
def test_export_golden(run_dir: Path, fmt: str) -> None:
    result = export_run(run_dir, fmt)
    assert result.path == run_dir / "export" / f"{fmt}.jsonl"
    assert result.path.read_text(encoding="utf-8").splitlines() == GOLDEN[fmt]
    assert (result.tasks, result.records, result.seed_tasks, result.skipped_tasks) == (2, 3, 0, 0)
    assert not result.torn_tail
    # nothing left behind but the export itself
    assert sorted(p.name for p in result.path.parent.iterdir()) == [f"{fmt}.jsonl"]


def test_export_include_seeds_puts_seeds_first(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "train.jsonl"
    result = export_run(run_dir, "alpaca", out, include_seeds=True)
    assert result.path == out and result.seed_tasks == 2 and result.records == 5
    lines = out.read_text(encoding="utf-8").splitlines()
    assert orjson.loads(lines[0]) == {
        "instruction": SEED_0, "input": "", "output": "Yes: a protein shake and a bowl of oats."
    }
    assert orjson.loads(lines[1])["output"] == "mixed"
    assert lines[2:] == GOLDEN["alpaca"]


def test_export_replaces_an_old_file_and_ignores_a_torn_tail(run_dir: Path) -> None:
    dest = run_dir / "export" / "alpaca.jsonl"
    dest.parent.mkdir()
    dest.write_text("old content\n" * 10)
    with (run_dir / TASKS).open("ab") as fh:
        fh.write(b'{"id": "task_000009", "instruction": "Half')
    result = export_run(run_dir, "alpaca")
    assert result.torn_tail and result.tasks == 2
    assert dest.read_text(encoding="utf-8").splitlines() == GOLDEN["alpaca"]
    assert "incomplete last line" in result.describe()


def test_export_corrupt_line_names_file_and_line_and_leaves_no_file(run_dir: Path) -> None:
    with (run_dir / TASKS).open("ab") as fh:
        fh.write(b"{oops\n")
    with pytest.raises(RunDirError, match=r"tasks\.jsonl:3: not valid JSON"):
        export_run(run_dir, "sharegpt")
    assert not any((run_dir / "export").iterdir())


def test_export_skips_tasks_without_instances(tmp_path: Path) -> None:
    data = good_run()
    data["tasks"][1]["instances"] = []
    root = write_run(tmp_path / "r", data)
    result = export_run(root, "openai-chat")
    assert (result.records, result.skipped_tasks) == (2, 1)


def test_export_errors(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(RunDirError, match="no such run directory"):
        export_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match=r"no tasks\.jsonl"):
        export_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown export format"):
        export_run(run_dir, "csv")


# ------------------------------------------------------------------ verify: good run

def test_verify_good_run_is_ok(run_dir: Path) -> None:
    report = verify_run(run_dir)
    assert isinstance(report, VerifyReport)
    assert report.ok, [p.describe() for p in report.problems]
    assert report.counts == {"tasks": 2, "instructions": 3, "rejected": 2, "seeds": 2, "instances": 3}
    assert (report.threshold, report.inclusive, report.tokenizer) == (0.7, False, "rouge")
    assert report.summary().startswith("OK ")
    assert report.to_json()["ok"] is True


def test_verify_brute_force_agrees_on_the_good_run(run_dir: Path) -> None:
    report = verify_run(run_dir, brute=True)
    assert report.ok and report.similarity == "rouge-score brute force"


def test_verify_ignores_near_duplicate_seeds(tmp_path: Path) -> None:
    data = good_run()
    data["seeds"].append({"id": "seed_task_2", "name": "s2", "instances": [],
                          "is_classification": True,
                          "instruction": "Classify the sentiment of the review into positive, negative, or mixed."})
    assert verify_run(write_run(tmp_path / "r", data)).ok


def test_verify_skips_counters_while_running(tmp_path: Path) -> None:
    data = good_run()
    data["run"]["status"] = "running"
    data["counters"] = {"tasks_written": 1, "instructions_admitted": 1, "rejected": 0}
    report = verify_run(write_run(tmp_path / "r", data))
    assert report.ok
    assert any("running" in note for note in report.notes)


def test_verify_without_seeds_or_run_json_notes_it(tmp_path: Path) -> None:
    data = good_run()
    data["seeds"] = None
    root = write_run(tmp_path / "r", data)
    (root / RUN_JSON).unlink()
    report = verify_run(root)
    assert report.ok
    assert any(SEEDS in n for n in report.notes) and any(RUN_JSON in n for n in report.notes)


def test_verify_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no such run directory"):
        verify_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a run directory"):
        verify_run(tmp_path / "empty")


# ------------------------------------------------------------------ verify: one broken copy per invariant

Mutation = Callable[[dict[str, Any]], None]


def _append(name: str, data: bytes) -> Callable[[Path], None]:
    def raw(root: Path) -> None:
        with (root / name).open("ab") as fh:
            fh.write(data)

    return raw


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _add(key: str, record: dict[str, Any]) -> Mutation:
    return lambda data: data[key].append(record)


def _new_task(task_id: str, instruction: str, instances: list[dict[str, str]]) -> dict[str, Any]:
    return {"id": task_id, "instruction": instruction, "is_classification": False,
            "instances": instances, "most_similar": {}, "meta": {}}


def _del_key(key: str, index: int, field: str) -> Mutation:
    return lambda data: data[key][index].pop(field)


# (name, mutation of the data, raw change to the files, check, file, line)
BROKEN: list[tuple[str, Mutation | None, Callable[[Path], None] | None, str, str | None, int | None]] = [
    ("bad json line", None, _append(TASKS, b'{"id": \n'), PARSE, TASKS, 3),
    ("torn last line", None, _append(INSTRUCTIONS, b'{"id": "task_0'), PARSE, INSTRUCTIONS, 4),
    ("line not an object", None, _append(REJECTED, b"[1, 2]\n"), PARSE, REJECTED, 3),
    ("bad seed line", None, _append(SEEDS, b"not json\n"), PARSE, SEEDS, 3),
    ("run.json not json", None, None, PARSE, RUN_JSON, None),
    ("task field missing", _del_key("tasks", 0, "is_classification"), None, SCHEMA, TASKS, 1),
    ("instances not a list", _set(("tasks", 1, "instances"), "none"), None, SCHEMA, TASKS, 2),
    ("instance output not a string", _set(("tasks", 0, "instances", 1, "output"), 3), None, SCHEMA, TASKS, 1),
    ("rejected without reason", _del_key("rejected", 0, "reason"), None, SCHEMA, REJECTED, 1),
    ("duplicate task id", _set(("tasks", 1, "id"), "task_000001"), None, UNIQUE_IDS, TASKS, 2),
    ("duplicate instruction id", _set(("instructions", 2, "id"), "task_000002"), None, UNIQUE_IDS, INSTRUCTIONS, 3),
    ("duplicate admitted instruction",
     _add("instructions", {"id": "task_000004", "instruction": INSTR_2}), None,
     UNIQUE_INSTRUCTIONS, INSTRUCTIONS, 4),
    ("duplicate task instruction",
     _add("tasks", _new_task("task_000003", INSTR_1, [{"input": "Yes.", "output": "Oui."}])), None,
     UNIQUE_INSTRUCTIONS, TASKS, 3),
    ("instruction near a seed",
     _add("instructions", {"id": "task_000004",
                           "instruction": "Classify the sentiment of the review into positive, negative, or mixed."}),
     None, NEAR_DUPLICATES, INSTRUCTIONS, 4),
    ("two near-duplicate instructions",
     _add("instructions", {"id": "task_000004",
                           "instruction": "Suggest three names for a new book shop in a small town."}),
     None, NEAR_DUPLICATES, INSTRUCTIONS, 4),
    ("instruction equal to a seed",
     _add("instructions", {"id": "task_000004", "instruction": SEED_0}), None,
     NEAR_DUPLICATES, INSTRUCTIONS, 4),
    ("run's own lower threshold", _set(("run", "config", "threshold"), 0.3), None,
     NEAR_DUPLICATES, INSTRUCTIONS, 1),
    ("no instances", _set(("tasks", 1, "instances"), []), None, INSTANCE_COUNT, TASKS, 2),
    ("six instances",
     _set(("tasks", 1, "instances"), [{"input": f"{i}", "output": f"{i}!"} for i in range(6)]), None,
     INSTANCE_COUNT, TASKS, 2),
    ("empty output", _set(("tasks", 0, "instances", 1, "output"), "  "), None, EMPTY_OUTPUT, TASKS, 1),
    ("output equals input", _set(("tasks", 0, "instances", 0, "output"), "Good morning, my friend."),
     None, OUTPUT_EQUALS_INPUT, TASKS, 1),
    ("one input, two outputs",
     _set(("tasks", 0, "instances", 1), {"input": "Good morning, my friend.", "output": "Salut."}),
     None, CONFLICTING_OUTPUTS, TASKS, 1),
    ("tasks_written off", _set(("counters",), {"tasks_written": 5, "instructions_admitted": 3, "rejected": 2}),
     None, COUNTERS, RUN_JSON, None),
    ("instructions_admitted off", _set(("counters",), {"instructions_admitted": 2}), None,
     COUNTERS, RUN_JSON, None),
    ("rejected off", _set(("counters",), {"rejected": 7}), None, COUNTERS, RUN_JSON, None),
    ("rejected_by_reason off",
     _set(("counters",), {"rejected": 2, "rejected_by_reason": {"too_short": 2}}), None,
     COUNTERS, RUN_JSON, None),
    ("task never admitted", _set(("tasks", 1, "instruction"), "List five fruits that are rich in vitamin C."),
     None, TASK_ADMITTED, TASKS, 2),
]


@pytest.mark.parametrize(
    ("mutate", "raw", "check", "file", "line"),
    [pytest.param(*case[1:], id=case[0]) for case in BROKEN],
)
def test_verify_reports_each_broken_invariant(
    tmp_path: Path,
    mutate: Mutation | None,
    raw: Callable[[Path], None] | None,
    check: str,
    file: str | None,
    line: int | None,
) -> None:
    data = copy.deepcopy(good_run())
    if mutate is not None:
        mutate(data)
    root = write_run(tmp_path / "run", data, raw)
    if file == RUN_JSON and check == PARSE:
        (root / RUN_JSON).write_text("{not json")
    report = verify_run(root)
    assert not report.ok
    assert report.failed_checks() == [check], [p.describe() for p in report.problems]
    assert any(p.file == file and p.line == line for p in report.problems), [
        p.describe() for p in report.problems
    ]
    assert report.summary().startswith("FAILED ") and check in report.summary()
    for problem in report.problems:
        text = problem.describe()
        assert f"[{check}]" in text
        if file is not None:
            assert text.startswith(file if line is None else f"{file}:{line}")


def test_every_check_has_a_broken_case() -> None:
    assert {case[3] for case in BROKEN} == set(CHECKS)


def test_verify_lists_every_problem_not_just_the_first(tmp_path: Path) -> None:
    data = good_run()
    data["tasks"][0]["instances"][0]["output"] = ""
    data["tasks"][0]["instances"][1]["output"] = ""
    data["tasks"][1]["id"] = "task_000001"
    root = write_run(tmp_path / "r", data, _append(TASKS, b"{x\n"))
    report = verify_run(root)
    assert [(p.check, p.line) for p in report.problems] == [
        (EMPTY_OUTPUT, 1), (EMPTY_OUTPUT, 1), (UNIQUE_IDS, 2), (PARSE, 3),
    ]


def test_inclusive_threshold_from_run_json(tmp_path: Path) -> None:
    # "a b c d" vs "a b e f": LCS 2 of 4 and 4 tokens, F = 0.5 exactly.
    data = good_run()
    data["run"]["config"]["threshold"] = 0.5
    data["seeds"] = [{"id": "s", "instruction": "alpha beta gamma delta", "instances": []}]
    data["instructions"].append({"id": "task_000004", "instruction": "alpha beta epsilon zeta"})
    assert NEAR_DUPLICATES not in verify_run(write_run(tmp_path / "a", data)).failed_checks()
    data["run"]["config"]["inclusive_threshold"] = True
    report = verify_run(write_run(tmp_path / "b", data))
    assert NEAR_DUPLICATES in report.failed_checks()
    assert any(">= 0.5" in p.message for p in report.problems)


def test_brute_force_pairs_match_rouge_score() -> None:
    from rouge_score import rouge_scorer

    texts = [SEED_0, SEED_1, INSTR_1, INSTR_2, INSTR_3,
             "Classify the sentiment of the review into positive, negative, or mixed.",
             "Translate the given English sentence into German.",
             "Suggest three names for a new book shop in a small town.", "", "!!!"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for threshold in (0.1, 0.3, 0.7, 0.9):
        expected = []
        for j in range(len(texts)):
            for i in range(j):
                f = scorer.score(texts[i], texts[j])["rougeL"].fmeasure
                if f > threshold:
                    expected.append((i, j, f))
        assert brute_force_pairs(texts, threshold) == sorted(expected)
    assert [(i, j) for i, j, _ in brute_force_pairs(texts, 0.7)] == [(1, 5), (2, 6), (3, 7)]
    assert [(i, j) for i, j, _ in brute_force_pairs(texts, 0.7, skip_below=6)] == [(2, 6), (3, 7)]


def test_unicode_tokenizer_sees_other_scripts() -> None:
    texts = ["Переведите это предложение на английский язык.",
             "Переведите это предложение на немецкий язык."]
    assert brute_force_pairs(texts, 0.7, tokenizer="rouge") == []
    assert [(i, j) for i, j, _ in brute_force_pairs(texts, 0.7, tokenizer="unicode")] == [(0, 1)]


@pytest.mark.parametrize(("tokenizer", "expected"), [("rouge", 3), ("unicode", 4)])
def test_scan_and_brute_force_agree(tmp_path: Path, tokenizer: str, expected: int) -> None:
    pytest.importorskip("dedup.scan")
    data = good_run()
    data["run"]["config"]["tokenizer"] = tokenizer
    for n, text in enumerate([
        "Classify the sentiment of the review into positive, negative, or mixed.",
        "Suggest three names for a new book shop in a small town.",
        "Translate the given English sentence into German.",
        "Переведите это предложение на английский язык.",
        "Переведите это предложение на немецкий язык.",
    ], start=4):
        data["instructions"].append({"id": f"task_{n:06d}", "instruction": text})
    root = write_run(tmp_path / "r", data)
    fast, slow = verify_run(root), verify_run(root, brute=True)
    assert (fast.similarity, slow.similarity) == ("dedup.scan", "rouge-score brute force")
    assert fast.tokenizer == tokenizer
    assert [p.describe() for p in fast.problems] == [p.describe() for p in slow.problems]
    assert len(fast.problems) == expected and fast.failed_checks() == [NEAR_DUPLICATES]


# ------------------------------------------------------------------ CLI

def test_cli_export(run_dir: Path, cli_main: Callable[[list[str]], int],
                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", "--run", str(run_dir), "--format", "openai-chat"]) == 0
    out = capsys.readouterr().out
    assert "3 openai-chat records from 2 tasks" in out
    assert (run_dir / "export" / "openai-chat.jsonl").read_text().splitlines() == GOLDEN["openai-chat"]
    assert cli_main(["export", "--run", str(run_dir), "--include-seeds"]) == 0
    assert "and 2 seed tasks" in capsys.readouterr().out
    assert cli_main(["export", "--run", str(run_dir / "nope")]) == 1
    assert "no such run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["export", "--run", str(run_dir), "--format", "csv"])
    assert exc.value.code == 2


def test_cli_verify_exit_codes(run_dir: Path, tmp_path: Path, cli_main: Callable[[list[str]], int],
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["verify", str(run_dir)]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    assert cli_main(["verify", str(run_dir), "--brute"]) == 0
    capsys.readouterr()

    data = good_run()
    data["tasks"][1]["id"] = "task_000001"
    data["tasks"][0]["instances"][0]["output"] = ""
    broken = write_run(tmp_path / "broken", data)
    assert cli_main(["verify", str(broken)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tasks.jsonl:1: [empty_output]")
    assert out[1].startswith("tasks.jsonl:2: [unique_ids]")
    assert out[-1].startswith("FAILED ")

    assert cli_main(["verify", str(broken), "--json"]) == 1
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["failed_checks"] == [UNIQUE_IDS, EMPTY_OUTPUT]
    assert {"check": UNIQUE_IDS, "file": TASKS, "line": 2}.items() <= doc["problems"][1].items()

    assert cli_main(["verify", str(tmp_path / "missing")]) == 1
    assert "no such run directory" in capsys.readouterr().err


def test_cli_seeds(tmp_path: Path, cli_main: Callable[[list[str]], int],
                   capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "seeds.jsonl"
    good.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in good_run()["seeds"]))
    assert cli_main(["seeds", "--seed-tasks", str(good)]) == 0
    out = capsys.readouterr().out
    assert "tasks:           2" in out and "classification:  1" in out and "instances:       2" in out
    assert cli_main(["seeds", "--seed-tasks", str(good), "--check"]) == 0
    assert "ok, 2 seed tasks" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Fine."}\n{"instruction": 5}\n')
    assert cli_main(["seeds", "--seed-tasks", str(bad)]) == 2
    assert f"{bad}:2: field 'instruction'" in capsys.readouterr().err
