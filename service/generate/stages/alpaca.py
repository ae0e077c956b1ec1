"""The Alpaca variant (``--method alpaca``): one call writes whole tasks.

Stanford Alpaca replaced Self-Instruct's four stages with one: the prompt shows a few seed
tasks as numbered ``Instruction / Input / Output`` triples separated by ``###`` and the
model continues the list with new triples. Its parser splits the answer at ``###``,
expects exactly the three labelled fields under the item's number, drops an item cut off
by max_tokens, and applies the Self-Instruct instruction filters with five more banned
words; candidates then go through the same ROUGE-L pool (threshold 0.7).

The requirements text that opens the prompt is the project's own
(prompts/templates.toml ``[alpaca] prompt``); ``selfinstruct templates import`` brings
Alpaca's ``prompt.txt`` instead.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from service.config import FilterConfig
from service.generate.compat import reference_example_text
from service.generate.filters import instruction_rejection
from service.generate.templates import Templates
from service.rundir.seeds import SeedTask

EXAMPLES_PER_PROMPT = 3  # Alpaca shows 3 seed tasks
LIST_LENGTH = 20  # "a list of 20 tasks": generation stops where item 20 would begin
NO_INPUT = "<noinput>"
# Alpaca's sampling for its one call (it asks for many whole tasks, so a long answer)
MAX_TOKENS = 3072
TEMPERATURE = 1.0
TOP_P = 1.0
MALFORMED = "malformed_item"
TRUNCATED_ITEM = "truncated_item"


@dataclass(frozen=True)
class AlpacaPrompt:
    text: str
    next_number: int
    shown: tuple[str, ...]


@dataclass(frozen=True)
class AlpacaItem:
    """One parsed triple; ``reason`` None means kept (before the ROUGE-L filter)."""

    instruction: str
    input: str
    output: str
    reason: str | None
    detail: str = ""


def choose_alpaca_examples(seeds: Sequence[SeedTask], rng: random.Random,
                           count: int = EXAMPLES_PER_PROMPT) -> list[SeedTask]:
    """``count`` seed tasks with an instance, at random (Alpaca samples seeds only)."""
    usable = [t for t in seeds if t.instances]
    return rng.sample(usable, min(count, len(usable)))


def build_alpaca_prompt(examples: Sequence[SeedTask], templates: Templates) -> AlpacaPrompt:
    """Requirements text, then each example as a numbered triple between ``###`` lines,
    ending with the next item's ``Instruction:`` label for the model to continue."""
    parts = [templates.alpaca_prompt.rstrip("\n") + "\n"]
    for n, task in enumerate(examples, start=1):
        instance = task.instances[0]
        parts.append("###\n")
        parts.append(f"{n}. Instruction: {reference_example_text(task.instruction)}\n")
        parts.append(f"{n}. Input:\n{instance.input.strip() or NO_INPUT}\n")
        parts.append(f"{n}. Output:\n{instance.output.strip()}\n")
    next_number = len(examples) + 1
    parts.append(f"###\n{next_number}. Instruction:")
    return AlpacaPrompt("".join(parts), next_number, tuple(t.instruction for t in examples))


def stop_sequences() -> list[str]:
    """Stop where item 20 would begin."""
    return [f"\n{LIST_LENGTH}", f"{LIST_LENGTH}."]


def alpaca_filter_config(base: FilterConfig) -> FilterConfig:
    """Alpaca's filters: Self-Instruct's, with its five extra banned words."""
    return FilterConfig(**{**base.__dict__, "alpaca_blacklist": True})


def parse_alpaca(text: str, next_number: int, finish_reason: str | None,
                 filters: FilterConfig) -> list[AlpacaItem]:
    """Every triple of one answer with its verdict, in order."""
    blocks = (f"{next_number}. Instruction:" + text).split("###")
    items: list[AlpacaItem] = []
    for idx, block in enumerate(blocks):
        number = next_number + idx
        if idx == len(blocks) - 1 and finish_reason == "length":
            items.append(AlpacaItem(" ".join(block.split())[:200], "", "", TRUNCATED_ITEM))
            continue
        fields = re.split(rf"{number}\.\s+(Instruction|Input|Output):", block)
        if len(fields) != 7 or [fields[1], fields[3], fields[5]] != ["Instruction", "Input", "Output"]:
            if block.strip():
                items.append(AlpacaItem(" ".join(block.split())[:200], "", "", MALFORMED))
            continue
        instruction = " ".join(fields[2].split())
        input_text = fields[4].strip()
        if input_text.lower() == NO_INPUT:
            input_text = ""
        output = fields[6].strip()
        rejection = instruction_rejection(instruction, filters)
        if rejection is None and not output:
            rejection = ("empty_output", "")
        reason, detail = rejection if rejection else (None, "")
        items.append(AlpacaItem(instruction, input_text, output, reason, detail))
    return items
