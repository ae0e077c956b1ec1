"""--method alpaca: the prompt, the parser and its filters (pure parts), and the simulator's
answers to it."""

from __future__ import annotations

import random

import pytest

from service.config import FilterConfig
from service.generate.stages.alpaca import (
    MALFORMED,
    TRUNCATED_ITEM,
    alpaca_filter_config,
    build_alpaca_prompt,
    choose_alpaca_examples,
    parse_alpaca,
    stop_sequences,
)
from service.generate.templates import load_templates
from service.rundir.seeds import Instance, SeedTask
from service.simulator.answers import AnswerSettings, answer, detect, rng_for

FILTERS = alpaca_filter_config(FilterConfig())


def _seed(n: int, inp: str = "") -> SeedTask:
    return SeedTask(f"s{n}", f"s{n}", f"Seed instruction number {n}:", (Instance(inp, f"out {n}"),), False)


def test_prompt_layout_and_stop() -> None:
    seeds = [_seed(1, "some input"), _seed(2), _seed(3)]
    prompt = build_alpaca_prompt(seeds, load_templates())
    assert prompt.text.endswith("###\n4. Instruction:") and prompt.next_number == 4
    assert "###\n1. Instruction: Seed instruction number 1\n1. Input:\nsome input\n1. Output:\nout 1\n" in prompt.text
    assert "2. Input:\n<noinput>\n" in prompt.text
    assert stop_sequences() == ["\n20", "20."]
    assert len(choose_alpaca_examples([_seed(i) for i in range(10)], random.Random(0))) == 3
    assert detect(prompt.text) == "alpaca"


@pytest.mark.parametrize(
    ("text", "finish", "expected"),
    [
        (" Write a haiku about autumn leaves.\n4. Input:\n<noinput>\n4. Output:\nLeaves fall.\n###\n"
         "5. Instruction: Summarize the text in one line.\n5. Input:\nA long text.\n5. Output:\nShort.",
         "stop", [("Write a haiku about autumn leaves.", "", "Leaves fall.", None),
                  ("Summarize the text in one line.", "A long text.", "Short.", None)]),
        (" Describe the video in three sentences.\n4. Input:\n<noinput>\n4. Output:\nIt is.", "stop",
         [("Describe the video in three sentences.", "", "It is.", "blacklisted_word")]),
        (" Missing its fields entirely", "stop", [("", "", "", MALFORMED)]),
        (" Write a haiku about autumn leaves.\n4. Input:\n<noinput>\n4. Output:\nLeaves fall.\n###\n"
         "5. Instruction: Summarize the", "length",
         [("Write a haiku about autumn leaves.", "", "Leaves fall.", None), ("", "", "", TRUNCATED_ITEM)]),
        (" Name it.\n4. Input:\n<noinput>\n4. Output:\nx", "stop", [("Name it.", "", "x", "too_short")]),
    ],
)
def test_parse_alpaca(text: str, finish: str, expected: list[tuple[str, str, str, str | None]]) -> None:
    items = parse_alpaca(text, 4, finish, FILTERS)
    got = [(i.instruction, i.input, i.output, i.reason) if i.reason not in (MALFORMED, TRUNCATED_ITEM)
           else ("", "", "", i.reason) for i in items]
    assert got == expected


def test_simulator_answers_parse_into_mostly_good_tasks() -> None:
    seeds = [_seed(i) for i in range(5)]
    good = bad = 0
    for n in range(20):
        prompt = build_alpaca_prompt(choose_alpaca_examples(seeds, random.Random(n)), load_templates())
        text = answer(prompt.text, rng_for(prompt.text, 0, n), AnswerSettings(bad_item_rate=0.1))
        items = parse_alpaca(text, prompt.next_number, "stop", FILTERS)
        good += sum(i.reason is None for i in items)
        bad += sum(i.reason is not None for i in items)
        assert all(i.reason != MALFORMED for i in items)
    assert good > 200 and bad > 0
