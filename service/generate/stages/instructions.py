"""Stage 1: the instruction-generation prompt and the parser of its answers.

The prompt is a numbered list of 8 instructions (6 seeds + 2 generated, fewer generated
while the pool is small; seeds fill the gap), shuffled, ending with the next number so a
base model continues the list (reference.md, stage 1).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from service.generate.compat import reference_example_text
from service.generate.templates import Templates

# A new item starts on a line that begins with a number and "." or ")"; the reference
# split on "\n<number>. " only, which merges items numbered "10)" or " 10." into the
# previous one.
_ITEM_START = re.compile(r"(?:^|\n)[ \t]*(\d{1,3})[ \t]*[.)](?:[ \t]+|(?=\n)|$)")
_STOP_AT = 16  # the reference stopped generation at item 16


@dataclass(frozen=True)
class InstructionPrompt:
    text: str
    next_number: int
    shown: tuple[str, ...]
    seed_count: int
    machine_count: int
    classification: bool


def choose_examples(
    seeds: Sequence[str],
    machine: Sequence[str],
    rng: random.Random,
    total: int = 8,
    machine_wanted: int = 2,
) -> tuple[list[str], int, int]:
    """Pick up to ``machine_wanted`` generated instructions, fill the rest from seeds, shuffle."""
    n_machine = min(machine_wanted, len(machine))
    chosen = rng.sample(list(machine), n_machine) if n_machine else []
    n_seed = min(total - n_machine, len(seeds))
    chosen += rng.sample(list(seeds), n_seed)
    rng.shuffle(chosen)
    return chosen, n_seed, n_machine


def build_instruction_prompt(
    examples: Sequence[str],
    templates: Templates,
    *,
    classification: bool = False,
    seed_count: int = 0,
    machine_count: int = 0,
) -> InstructionPrompt:
    """The numbered list the model continues. Each example is shown on one line without a
    trailing ':' (which would read as a header). The reference layout puts the items
    right after the header (which brings its own line break), as the reference does."""
    header = (
        templates.instructions_classification_header
        if classification
        else templates.instructions_header
    )
    items = [f"{i}. {example_text(x)}" for i, x in enumerate(examples, start=1)]
    next_number = len(examples) + 1
    if templates.layout == "reference":
        text = header + "".join(item + "\n" for item in items) + f"{next_number}."
    else:
        text = "\n".join([header, "", *items, f"{next_number}."])
    return InstructionPrompt(
        text=text,
        next_number=next_number,
        shown=tuple(examples),
        seed_count=seed_count,
        machine_count=machine_count,
        classification=classification,
    )


def example_text(instruction: str) -> str:
    """An example as the list shows it: one line, no trailing ':' (the reference's rule)."""
    return reference_example_text(instruction)


def stop_sequences(next_number: int) -> list[str]:
    """Stop on a blank line or where item 16 would begin ("16.", "16 .", or any line
    starting with 16), as the reference does: more items than asked are not parsed."""
    if next_number >= _STOP_AT:
        return ["\n\n"]
    return ["\n\n", f"\n{_STOP_AT}", f"{_STOP_AT}.", f"{_STOP_AT} ."]


def parse_instruction_items(text: str) -> list[str]:
    """Split a continuation of the numbered list into raw items.

    The prompt already carries the number of the first item, so the text before the first
    numbered line is an item too (unless the model repeated that number, or answered in
    chat style starting at "1."). Blank, whitespace-only and label-only items are dropped.
    """
    text = text.replace("\r\n", "\n")
    # Chat models sometimes wrap the list in a preamble line ending with ':'.
    pieces: list[str] = []
    positions = [(m.start(), m.end()) for m in _ITEM_START.finditer(text)]
    head_end = positions[0][0] if positions else len(text)
    head = text[:head_end]
    if head.strip() and not head.strip().endswith(":"):
        pieces.append(head)
    for idx, (_, end) in enumerate(positions):
        stop = positions[idx + 1][0] if idx + 1 < len(positions) else len(text)
        pieces.append(text[end:stop])
    items = []
    for piece in pieces:
        item = " ".join(piece.split())
        # "Instruction: ..." / "Task: ..." labels some models add
        item = re.sub(r"^(?:instruction|task)\s*:\s*", "", item, flags=re.IGNORECASE)
        if item:
            items.append(item)
    return items
