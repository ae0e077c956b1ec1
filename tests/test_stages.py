"""Prompt builders, response parsers and filters: table-driven, on what real models return."""

from __future__ import annotations

import random

import pytest

from service.config import FilterConfig
from service.generate.filters import (
    BLACKLISTED_WORD,
    CONFLICTING_OUTPUTS,
    DUPLICATE_INSTANCE,
    EMPTY_OUTPUT,
    ENDS_WITH_COLON,
    LEADING_PUNCTUATION,
    NO_INSTANCES,
    NON_ASCII_START,
    OUTPUT_EQUALS_INPUT,
    OVER_INSTANCE_LIMIT,
    TOO_LONG,
    TOO_SHORT,
    WRITE_A_PROGRAM,
    clean_instruction,
    filter_instances,
    instruction_rejection,
)
from service.generate.stages.classify import (
    build_classify_prompt,
    parse_classify_answer,
    pick_classify_examples,
)
from service.generate.stages.instances import (
    build_input_first_prompt,
    build_output_first_prompt,
    parse_input_first,
    parse_output_first,
)
from service.generate.stages.instructions import (
    build_instruction_prompt,
    choose_examples,
    parse_instruction_items,
    stop_sequences,
)
from service.generate.templates import load_templates
from service.rundir.seeds import Instance, SeedTask

T = load_templates()


def _seed(i: int, cls: bool, inst: tuple[Instance, ...] = ()) -> SeedTask:
    return SeedTask(f"s{i}", f"s{i}", f"Seed instruction number {i} here", inst, cls)


def test_instruction_prompt_ends_with_next_number_and_mixes_sources() -> None:
    rng = random.Random(1)
    seeds = [f"seed task {i} text" for i in range(20)]
    machine = [f"machine task {i} text" for i in range(5)]
    examples, n_seed, n_machine = choose_examples(seeds, machine, rng, total=8, machine_wanted=2)
    assert (n_seed, n_machine) == (6, 2) and len(set(examples)) == 8
    prompt = build_instruction_prompt(examples, T, seed_count=n_seed, machine_count=n_machine)
    lines = prompt.text.splitlines()
    assert lines[-1] == "9." and lines[2].startswith("1. ") and prompt.next_number == 9
    assert "\n\n" in stop_sequences(9)


def test_small_pool_is_filled_with_seeds() -> None:
    examples, n_seed, n_machine = choose_examples(
        [f"s{i}" for i in range(10)], ["m0"], random.Random(0), total=8, machine_wanted=2
    )
    assert (n_seed, n_machine) == (7, 1) and len(examples) == 8


def test_classification_header_variant() -> None:
    prompt = build_instruction_prompt(["a b c d"], T, classification=True)
    assert "classification" in prompt.text.splitlines()[0].lower()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Summarise the text.\n10. Translate the poem into French.\n11. Plan a trip.",
         ["Summarise the text.", "Translate the poem into French.", "Plan a trip."]),
        (" First task\n10) Second task\n 11 . Third task", ["First task", "Second task", "Third task"]),
        ("\n9. Repeated number item\n10. Next", ["Repeated number item", "Next"]),
        (" Item one\n\n10.\n11. Item after blank", ["Item one", "Item after blank"]),
        ("Here are more tasks:\n1. Chat style one\n2. Chat style two", ["Chat style one", "Chat style two"]),
        (" Instruction: Label-prefixed task\n10. Task: another", ["Label-prefixed task", "another"]),
        (" Spans\ntwo lines\n10. ok", ["Spans two lines", "ok"]),
        ("", []),
        ("   \n  ", []),
        (" Version 2.5 of the tool is out. Describe it.", ["Version 2.5 of the tool is out. Describe it."]),
    ],
)
def test_parse_instruction_items(text: str, expected: list[str]) -> None:
    assert parse_instruction_items(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Too short here", TOO_SHORT),
        ("word " * 151, TOO_LONG),
        ("Describe the image below in detail", BLACKLISTED_WORD),
        ("Plot the data points on a chart", BLACKLISTED_WORD),
        ("Tell me how to go   to the station", BLACKLISTED_WORD),
        ("Write a program that sorts numbers", WRITE_A_PROGRAM),
        ("write a program to add two numbers", WRITE_A_PROGRAM),
        ("- Bullet style task with enough words", LEADING_PUNCTUATION),
        ("Écris une phrase en français ici", NON_ASCII_START),
        ("Summarise the following paragraph in one sentence.", None),
        ("Compare mapping strategies for databases", None),  # 'mapping' is not 'map'
        ("Explain profiles of users in plain words", None),  # 'profiles' is not 'files'
    ],
)
def test_instruction_filters(text: str, reason: str | None) -> None:
    result = instruction_rejection(clean_instruction(text) if reason != LEADING_PUNCTUATION else text, FilterConfig())
    assert (result[0] if result else None) == reason


def test_clean_instruction_keeps_case_of_names() -> None:
    assert clean_instruction("  explain  how NASA\nworks ") == "Explain how NASA works"


def I(a: str, b: str) -> Instance:  # noqa: E743
    return Instance(a, b)


@pytest.mark.parametrize(
    ("instances", "kept", "dropped_reasons", "task_reason"),
    [
        ([I("a", "b")], [I("a", "b")], [], None),
        ([I("a", "a")], [], [OUTPUT_EQUALS_INPUT], NO_INSTANCES),
        ([I("a", "  ")], [], [EMPTY_OUTPUT], NO_INSTANCES),
        ([I("a", "Here is the list:")], [], [ENDS_WITH_COLON], NO_INSTANCES),
        ([I("a", "b"), I("a", "b")], [I("a", "b")], [DUPLICATE_INSTANCE], None),
        ([I("a", "b"), I("a", "c")], [], [CONFLICTING_OUTPUTS, CONFLICTING_OUTPUTS], CONFLICTING_OUTPUTS),
        ([], [], [], NO_INSTANCES),
        # no-input tasks have many right outputs: never "conflicting" (as in the reference)
        ([I("", "A haiku"), I("", "Another haiku")], [I("", "A haiku"), I("", "Another haiku")], [], None),
        # an input ending with ':' is unfinished, like an output
        ([I("Sentence:", "Positive"), I("x", "y")], [I("x", "y")], [ENDS_WITH_COLON], None),
    ],
)
def test_instance_filters(instances: list[Instance], kept: list[Instance], dropped_reasons: list[str], task_reason: str | None) -> None:
    verdict = filter_instances(instances, FilterConfig())
    assert list(verdict.kept) == kept
    assert [r for _, r in verdict.dropped] == dropped_reasons
    assert verdict.task_rejection == task_reason


def test_instance_cap_is_a_seeded_random_sample_in_order() -> None:
    many = [I(str(i), f"o{i}") for i in range(12)]
    samples = set()
    for seed in range(8):
        verdict = filter_instances(many, FilterConfig(), random.Random(seed))
        again = filter_instances(many, FilterConfig(), random.Random(seed))
        assert verdict == again and len(verdict.kept) == 5
        assert list(verdict.kept) == [i for i in many if i in verdict.kept]  # order kept
        assert [r for _, r in verdict.dropped] == [OVER_INSTANCE_LIMIT] * 7
        samples.add(verdict.kept)
    assert len(samples) > 1  # not always the first five


def test_classify_prompt_and_answers() -> None:
    seeds = [_seed(i, i % 3 == 0) for i in range(60)]
    examples = pick_classify_examples(seeds)
    assert sum(t.is_classification for t in examples) == 12 and len(examples) == 31
    prompt = build_classify_prompt(examples, "Is this email spam or not?", T)
    assert prompt.splitlines()[-1] == "Is it classification?"
    assert prompt.count("Is it classification? Yes") == 12


@pytest.mark.parametrize(
    ("text", "answer"),
    [(" Yes", True), ("No", False), ("yes.", True), (" NO\n", False), ("**Yes**", True),
     ("Maybe", None), ("", None), ("Yesterday", None), ("Not sure", None)],
)
def test_parse_classify_answer(text: str, answer: bool | None) -> None:
    assert parse_classify_answer(text) is answer


def test_instance_prompts_end_with_task() -> None:
    with_input = _seed(1, False, (I("x", "y"),))
    no_input = _seed(2, False, (I("", "z"),))
    cls = _seed(3, True, (I("great film", "Positive"), I("dull", "Negative")))
    p1 = build_input_first_prompt([with_input, no_input], "Do the new thing now", T)
    assert p1.splitlines()[-1] == "Task: Do the new thing now" and "Class label:" not in p1
    assert "Example 1\nInput: x\nOutput: y" in p1 and "Output: z" in p1
    p2 = build_output_first_prompt([cls], "Classify the new thing", T)
    assert "Class label: Positive\nInput: great film" in p2 and p2.endswith("Task: Classify the new thing")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example 1\nInput: 2+2\nOutput: 4\n\nExample 2\nInput: 3+3\nOutput: 6",
         [I("2+2", "4"), I("3+3", "6")]),
        ("Output: A short poem about rain.", [I("", "A short poem about rain.")]),
        ("Example 1\nInput: [NULL]\nOutput: done", [I("", "done")]),
        ("example 1:\ninput : hello\noutput : HELLO\nTask: Another task\nOutput: x", [I("hello", "HELLO")]),
        ("Example 1\nInput: multi\nline input\nOutput: multi\nline output", [I("multi\nline input", "multi\nline output")]),
        ("Example 1\nInput: only input, no output", []),
        ("Input: a\nOutput: b\nInput: c\nOutput: d", [I("a", "b"), I("c", "d")]),
        ("", []),
    ],
)
def test_parse_input_first(text: str, expected: list[Instance]) -> None:
    assert parse_input_first(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Class label: Positive\nInput: I loved it.\n\nClass label: Negative\nInput: Awful.",
         [I("I loved it.", "Positive"), I("Awful.", "Negative")]),
        ("Class label: Spam\nEmail: Win money now", [I("Email: Win money now", "Spam")]),
        ("class label: Yes\ninput: The sky is blue.\nTask: next", [I("The sky is blue.", "Yes")]),
        ("Class label:\nInput: orphan", []),
        ("no labels at all", []),
    ],
)
def test_parse_output_first(text: str, expected: list[Instance]) -> None:
    assert parse_output_first(text) == expected
