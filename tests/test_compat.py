"""The reference's rules one by one (service.generate.compat), and the seam of both modes
(service.generate.processing): table-driven, each row a rule of the reference code."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.config import Config, FilterConfig, effective_blacklist, load_config
from service.errors import ConfigError
from service.generate import compat
from service.generate.filters import BLACKLISTED_WORD, instruction_rejection
from service.generate.processing import TRUNCATED_INSTANCE, kept_instructions, rules_for
from service.rundir.seeds import Instance


def test_stop_sequences_and_max_tokens_are_the_references() -> None:
    assert compat.instruction_stop_sequences() == ["\n\n", "\n16", "16.", "16 ."]
    assert compat.instance_stop_sequences(5) == ["Example 6", "Task:"]
    assert compat.instance_stop_sequences(3) == ["Example 4", "Task:"]
    assert compat.instance_max_tokens(True) == 300 and compat.instance_max_tokens(False) == 350
    ref = rules_for("reference", max_instances=7)
    assert ref.instance_stop() == ["Example 8", "Task:"] and ref.max_instances == 7
    stage = Config().stage("instances")
    assert ref.instance_max_tokens(stage, False) == 350 and ref.instance_max_tokens(stage, True) == 300
    assert ref.classify_stop() == ["\n", "Task"]
    # the default mode asks for the same by default (the stage's settings, which a user may change)
    assert rules_for("default").instance_max_tokens(stage, False) == 350
    assert rules_for("default").instance_max_tokens(stage, True) == 300
    default = rules_for("default")
    assert "Example 6" in default.instance_stop()
    # at most 4 stop sequences: the OpenAI API's limit
    assert len(default.instance_stop()) <= 4 and len(default.instruction_stop(9)) <= 4
    assert {"\n16", "16 ."} <= set(default.instruction_stop(9))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("Yes", True), (" yes\n", True), ("YES", True), ("Yes.", False), ("yEs", False),
     ("No", False), ("", False), ("Y", False), ("Maybe", False)],
)
def test_reference_yes_no_rule(answer: str, expected: bool) -> None:
    assert compat.reference_is_classification(answer) is expected
    assert rules_for("reference").is_classification(answer, "stop") is expected


@pytest.mark.parametrize(
    ("answer", "finish", "expected"),
    [("Yes.", "stop", True), ("**Yes**", "stop", True), ("Ye", "length", False),
     ("", "length", False), ("Maybe", "stop", False), ("No", "stop", False)],
)
def test_default_yes_no_reads_cut_or_unclear_answers_as_no(answer: str, finish: str, expected: bool) -> None:
    assert rules_for("default").is_classification(answer, finish) is expected


@pytest.mark.parametrize(
    ("text", "finish", "kept"),
    [
        # capitalize() lower-cases the rest; the split needs "\n<digits>[ ]. "
        (" explain how NASA works in detail\n2. Name three famous painters please",
         "stop", ["Explain how nasa works in detail", "Name three famous painters please"]),
        (" First task of the list\n2) Second task of the list", "stop",
         ["First task of the list 2) second task of the list"]),
        (" One task that is long\n10 . Another task that is long", "stop",
         ["One task that is long", "Another task that is long"]),
        (" Anything at all here\n2. More", "length", []),  # a cut list is dropped whole
        (" Three words only", "stop", []),  # <= 3 words
        (" Describe the maps of Europe now", "stop", []),
        (" Describe the mapping of Europe now", "stop", ["Describe the mapping of europe now"]),
        (" Please go to the shop for me", "stop", []),
        (" Write a program that adds numbers", "stop", []),
        (" WRITE A PROGRAM that adds numbers", "stop", []),  # capitalize() first
        (' "Quoted task with enough words"', "stop", []),
        (" Écris une phrase en français", "stop", []),
        (" Describe a video about the sea", "stop", ["Describe a video about the sea"]),  # 13 words only
    ],
)
def test_reference_instruction_rules(text: str, finish: str, kept: list[str]) -> None:
    assert compat.reference_instructions(text, finish) == kept
    assert kept_instructions(rules_for("reference"), text, finish) == kept


def test_example_text_strips_trailing_colon() -> None:
    assert compat.reference_example_text("  List  the steps:\n") == "List the steps"
    assert rules_for("default").example_text("Classify these:") == "Classify these"


def test_blacklist_is_the_references_13_and_alpacas_is_an_option() -> None:
    assert FilterConfig().blacklist == compat.REFERENCE_BLACKLIST and len(compat.REFERENCE_BLACKLIST) == 13
    assert instruction_rejection("Describe a video about the sea", FilterConfig()) is None
    alpaca = FilterConfig(alpaca_blacklist=True)
    assert set(effective_blacklist(alpaca)) == set(compat.REFERENCE_BLACKLIST) | set(compat.ALPACA_EXTRA_BLACKLIST)
    result = instruction_rejection("Describe a video about the sea", alpaca)
    assert result is not None and result[0] == BLACKLISTED_WORD
    config, _ = load_config({}, env={"SELFINSTRUCT_COMPAT": "reference"})
    assert config.compat == "reference" and Config().compat == "default"
    with pytest.raises(ConfigError, match="compat"):
        load_config({"compat": "paper"}, env={})


@pytest.mark.parametrize(
    ("text", "is_cls", "finish", "pairs"),
    [
        # everything before "Output:" is the input, a leading "Input:" label removed
        ("Paragraph: The cat sat.\nOutput: cat", False, "stop", [("Paragraph: The cat sat.", "cat")]),
        ("Input: 2+2\nOutput: 4", False, "stop", [("2+2", "4")]),
        ("Example 1\nInput: a\nOutput: b\nExample 2\nInput: c\nOutput: d", False, "length", [("a", "b")]),
        ("Example 1\nInput: a\nOutput: b\nExample 2\nInput: a\nOutput: c", False, "stop", []),  # conflict
        ("Example 1\nOutput: haiku one\nExample 2\nOutput: haiku two", False, "stop",
         [("", "haiku one"), ("", "haiku two")]),  # no input: never a conflict
        ("Example 1\nInput: Sentence:\nOutput: x\nExample 2\nInput: y\nOutput: z", False, "stop", [("y", "z")]),
        ("no labels at all", False, "stop", []),
        ("Class label: Positive\nSentence: I loved it.\nClass label: Negative\nSentence: Awful.",
         True, "stop", [("Sentence: Awful.", "Negative"), ("Sentence: I loved it.", "Positive")]),
        ("Class label: Positive\nInput: great", True, "stop", [("Input: great", "Positive")]),
        ("Class label: A\nx\nClass label: B\ny", True, "length", [("x", "A")]),
        ("Class label: \nQuestion: what", True, "stop", [("", "Question: what")]),  # quirk
    ],
)
def test_reference_instance_rules(text: str, is_cls: bool, finish: str, pairs: list[tuple[str, str]]) -> None:
    assert compat.reference_instances(text, is_cls, finish) == sorted(pairs)


@pytest.mark.parametrize(
    ("text", "is_cls", "pairs"),
    [
        ("Paragraph: The cat sat.\nOutput: cat", False, [("Paragraph: The cat sat.", "cat")]),
        ("Example 1\nInput: a\nOutput: b\n\nExample 2\nInput: c\nOutput: d\n\nExample 3\nInput: e\nOut",
         False, [("a", "b"), ("c", "d")]),
        ("Class label: A\nInput: x\nClass label: B\nInput: y\nClass label: C\nIn", True, [("x", "A"), ("y", "B")]),
        ("Example 1\nOutput: haiku one\n\nExample 2\nOutput: haiku two", False,
         [("", "haiku one"), ("", "haiku two")]),
        ("Example 1\nInput: Sentence:\nOutput: x\n\nExample 2\nInput: y\nOutput: z", False, [("y", "z")]),
        ("Example 1\nInput: a\nOutput 1: b", False, [("a", "b")]),
    ],
)
def test_default_mode_fixes(text: str, is_cls: bool, pairs: list[tuple[str, str]]) -> None:
    """The losses issue 13 found: inputs before Output:, no-input conflicts, incomplete
    inputs, cut-offs that cost the whole task, numbered labels."""
    finish = "length" if text.endswith(("Out", "In")) else "stop"
    outcome = rules_for("default").instances(text, is_cls, finish)
    assert [(i.input, i.output) for i in outcome.kept] == pairs
    if finish == "length":
        assert [r for _, r in outcome.dropped] == [TRUNCATED_INSTANCE] or outcome.dropped == ()


def test_random_cap_is_seeded_and_reference_samples_from_sorted_pairs() -> None:
    pairs = [(f"in{i}", f"out{i}") for i in range(9)]
    a = compat.cap_instances(pairs, random.Random(3))
    assert a == compat.cap_instances(list(reversed(pairs)), random.Random(3))  # order-free
    assert len(a) == 5 and set(a) <= set(pairs)
    assert {tuple(compat.cap_instances(pairs, random.Random(s))) for s in range(10)} != {tuple(a)}
    assert compat.cap_instances(pairs[:3], random.Random(0)) == sorted(pairs[:3])
    rules = rules_for("reference")
    kept, over = rules.cap([Instance(i, o) for i, o in pairs], random.Random(3))
    assert [(k.input, k.output) for k in kept] == a and len(over) == 4
    kept, over = rules_for("default").cap([Instance(i, o) for i, o in pairs], random.Random(3))
    assert len(kept) == 5 and len(over) == 4


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="compat"):
        rules_for("paper")


def test_fidelity_options_load_from_flags_and_check_ranges() -> None:
    from service.cli import build_parser
    from service.commands._options import config_from_args

    args = build_parser("generate").parse_args([
        "generate", "--compat", "reference", "--max-instances", "7", "--generation-tasks-only",
        "--classification-seeds-only", "--keep-raw", "--templates", "/tmp/t.toml", "--alpaca-blacklist",
        "--method", "alpaca", "--no-avg-similarity",
    ])
    config, sources = config_from_args(args)
    assert (config.compat, config.filters.max_instances, config.task_kinds) == ("reference", 7, "generation")
    assert config.classification_seeds_only and config.keep_raw and config.filters.alpaca_blacklist
    assert str(config.templates) == "/tmp/t.toml" and config.method == "alpaca"
    assert config.avg_similarity is False and not config.records_avg_similarity()
    # by default only a reference run pays for the whole-pool score
    assert not Config().records_avg_similarity()
    assert dataclasses.replace(Config(), compat="reference").records_avg_similarity()
    assert sources["filters.max_instances"] == "from flags"
    with pytest.raises(ConfigError, match=r"filters\.max_instances.*1 to 1000"):
        config_from_args(build_parser("generate").parse_args(["generate", "--max-instances", "0"]))
    with pytest.raises(SystemExit):  # one kind of task only
        build_parser("generate").parse_args(["generate", "--generation-tasks-only", "--classification-tasks-only"])
    with pytest.raises(ConfigError, match="task_kinds"):
        load_config({}, env={"SELFINSTRUCT_TASK_KINDS": "some"})


def test_verify_accepts_no_input_tasks_with_several_outputs_and_clf_seed_runs(tmp_path: Path) -> None:
    from service.rundir.verify import verify_run

    run = tmp_path / "run"
    run.mkdir()
    task = {"id": "task_000001", "instruction": "Write a haiku about the sea at dawn.", "is_classification": False,
            "instances": [{"input": "", "output": "Waves fold into light."},
                          {"input": "", "output": "Grey sea, first gull."}]}
    (run / "tasks.jsonl").write_text(json.dumps(task) + "\n", encoding="utf-8")
    admitted = {"id": "task_000001", "instruction": task["instruction"]}
    (run / "instructions.jsonl").write_text(json.dumps(admitted) + "\n", encoding="utf-8")
    seed = {"id": "s1", "name": "s1", "instruction": "Write a haiku about the sea at dawn!",
            "instances": [{"input": "", "output": "x"}], "is_classification": False}
    (run / "seeds.jsonl").write_text(json.dumps(seed) + "\n", encoding="utf-8")
    report = verify_run(run)
    assert "conflicting_outputs" not in report.failed_checks()
    assert "near_duplicates" in report.failed_checks()  # equal to a seed the run compared with
    (run / "run.json").write_text(json.dumps({"config": {"classification_seeds_only": True}}), encoding="utf-8")
    report = verify_run(run)
    assert "near_duplicates" not in report.failed_checks()  # that seed was not in the run's pool


_PIECES = ["Output:", "Input:", "Example 1", "Example 2\n", "Class label:", "\n", " ", "Output 2:",
           "none", ":", "Task: x", "the cat sat on the mat", "Sentence: a b c", "\n\n", "Example",
           "\n2. ", "\n10) ", "Write a program to", "image", "Yes", "Écris", "- bullet"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.text(max_size=12), max_size=16),
       st.sampled_from(["stop", "length", None]))
def test_both_modes_hold_their_invariants_on_any_text(parts: list[str], finish: str | None) -> None:
    text = "".join(parts)
    for rules in (rules_for("reference"), rules_for("default")):
        for item in kept_instructions(rules, text, finish):
            assert 4 <= len(item.split()) <= 150 and item == " ".join(item.split())
            assert not item[0].isspace() and item[0].isascii()
        for is_cls in (False, True):
            outcome = rules.instances(text, is_cls, finish)
            pairs = [(i.input, i.output) for i in outcome.kept]
            assert len(set(pairs)) == len(pairs)
            for inp, out in pairs:
                assert out and out != inp and not out.endswith(":") and not inp.endswith(":")
            kept, over = rules.cap(outcome.kept, random.Random(0))
            assert len(kept) == min(len(pairs), rules.max_instances) and len(kept) + len(over) == len(pairs)
    reference = compat.reference_instances(text, False, finish)
    assert reference == sorted(set(reference))
