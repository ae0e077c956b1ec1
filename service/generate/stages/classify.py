"""Stage 3: is the new instruction a classification task? A 31-shot Yes/No prompt."""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.generate.templates import Templates
from service.rundir.seeds import SeedTask

CLASSIFY_EXAMPLES = (12, 19)  # classification, not: as in the reference


def pick_classify_examples(seeds: Sequence[SeedTask]) -> list[SeedTask]:
    """12 classification and 19 other seed tasks, interleaved in a fixed order."""
    yes = [t for t in seeds if t.is_classification][: CLASSIFY_EXAMPLES[0]]
    no = [t for t in seeds if not t.is_classification][: CLASSIFY_EXAMPLES[1]]
    merged: list[SeedTask] = []
    while yes or no:
        if no:
            merged.append(no.pop(0))
        if yes:
            merged.append(yes.pop(0))
        if no:
            merged.append(no.pop(0))
    return merged


def build_classify_prompt(
    examples: Sequence[SeedTask], instruction: str, templates: Templates
) -> str:
    q = templates.classify_question
    if templates.classify_prefix is not None:
        # the reference layout: its few-shot block, then " <task>\n<question>"
        return f"{templates.classify_prefix} {instruction.strip()}\n{q}"
    blocks = [templates.classify_header, ""]
    for task in examples:
        answer = "Yes" if task.is_classification else "No"
        blocks.append(f"Task: {' '.join(task.instruction.split())}\n{q} {answer}\n")
    blocks.append(f"Task: {' '.join(instruction.split())}\n{q}")
    return "\n".join(blocks)


_ANSWER = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_classify_answer(text: str) -> bool | None:
    """Yes -> True, No -> False, anything else -> None (counted, treated as not classification)."""
    match = _ANSWER.match(text.strip())
    if not match:
        return None
    return match.group(1).lower() == "yes"
