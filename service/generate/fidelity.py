"""Where the default mode's decisions differ from the reference's, by named reason.

The default mode may differ from the reference only through the improvements named in
:data:`IMPROVEMENTS` (README "Fidelity to the method" has the same table). Given one model
text, :func:`instruction_differences` and :func:`instance_differences` compare the two
modes and name a reason for every difference; a reference result the default loses for
no named reason is reported as ``UNEXPLAINED`` (the golden test asserts there is none).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from service.generate import compat
from service.generate.processing import TextRules, kept_instructions
from service.generate.stages.instances import NULL_INPUTS

UNEXPLAINED = "unexplained"

# name -> (what the default does, why); the option that turns each off is in the README.
IMPROVEMENTS: dict[str, str] = {
    "case_kept": "keeps the instruction's case (the reference's capitalize() lower-cases names and code)",
    "list_items_split": "splits list items numbered '2)' or indented ' 2.' (the reference merges them into one item)",
    "instruction_label": "drops an 'Instruction:'/'Task:' label before judging the item",
    "chat_preamble": "drops a preamble line ending in ':' before a chat model's list",
    "input_label_stripped": "drops a leading 'Input:' label from a classification input",
    "null_input_marker": "reads '[NULL]', 'none', 'n/a', '-' as no input",
    "empty_class_label": "skips a 'Class label:' with no label (the reference takes the next line as the label)",
    "pairs_beyond_first": "parses every Input/Output pair of an answer without 'Example' headers (the reference reads only the first)",
    "example_headers_only": "splits instances at 'Example N' header lines only (the reference splits at the word 'Example' anywhere)",
    "labels_at_line_start": "reads 'Input:'/'Output:'/'Class label:' labels at line starts, any case",
    "next_task_cut": "ignores text after a line starting 'Task:' (the model began a new task)",
}


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


_LABEL_PREFIX = re.compile(r"^(?:instruction|task)\s*:\s*", re.IGNORECASE)
_INNER_NUMBER = re.compile(r"(?:^|\s)\d{1,3}\s*[.)](?:\s|$)")
_INPUT_PREFIX = re.compile(r"^Input\s*\d*\s*:\s*")
_NEXT_TASK_LINE = re.compile(r"^[ \t]*task[ \t]*:", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Difference:
    """One reference result missing from the default (``lost``) or one the default adds."""

    reason: str
    item: str
    lost: bool


def instruction_differences(
    default: TextRules, text: str, finish_reason: str | None
) -> list[Difference]:
    """Every instruction one mode keeps that the other does not, with a reason."""
    ref = compat.reference_instructions(text, finish_reason)
    mine = kept_instructions(default, text, finish_reason)
    if ref == mine:
        return []
    mine_norm = {_norm(m) for m in mine}
    ref_norm = {_norm(r) for r in ref}
    raw_ref = [_norm(d.text) for d in compat.reference_instruction_items(text, finish_reason)]
    out: list[Difference] = []
    for n, item in enumerate(ref):
        key = _norm(item)
        if key in mine_norm:
            if item not in mine:
                out.append(Difference("case_kept", item, lost=False))
            continue
        if _LABEL_PREFIX.match(item):
            reason = "instruction_label"
        elif _INNER_NUMBER.search(item[1:]):
            reason = "list_items_split"
        elif n == 0 and item.endswith(":"):
            reason = "chat_preamble"
        else:
            reason = UNEXPLAINED
        out.append(Difference(reason, item, lost=True))
    for item in mine:
        key = _norm(item)
        if key in ref_norm:
            continue
        if any(key != r and key in r and _INNER_NUMBER.search(r) for r in raw_ref):
            reason = "list_items_split"
        elif any(_LABEL_PREFIX.sub("", r) == key for r in raw_ref):
            reason = "instruction_label"
        else:
            reason = "other_extra"
        out.append(Difference(reason, item, lost=False))
    return out


def _null(value: str) -> str:
    return "" if value.strip().lower() in NULL_INPUTS else value


def instance_differences(
    default: TextRules, text: str, is_classification: bool, finish_reason: str | None
) -> list[Difference]:
    """Every instance the reference keeps that the default does not (and the reverse)."""
    ref = compat.reference_instances(text, is_classification, finish_reason)
    outcome = default.instances(text, is_classification, finish_reason)
    mine = {(i.input, i.output) for i in outcome.kept}
    if set(ref) == mine:
        return []
    mine_outputs = {o for _, o in mine}
    next_task = _NEXT_TASK_LINE.search(text)
    out: list[Difference] = []
    for inp, output in ref:
        shown = f"{inp!r} -> {output!r}"
        if (inp, output) in mine:
            continue
        stripped = _INPUT_PREFIX.sub("", inp)
        if (stripped, output) in mine:
            reason = "input_label_stripped"
        elif (_null(inp), output) in mine or (_null(stripped), output) in mine:
            reason = "null_input_marker"
        elif next_task is not None and text.find(output.split("\n")[0], next_task.start()) >= 0:
            reason = "next_task_cut"
        elif is_classification and re.search(
            r"Class label:[ \t]*\n\s*" + re.escape(output.split("\n")[0]), text
        ):
            reason = "empty_class_label"
        elif is_classification and output not in mine_outputs:
            reason = "labels_at_line_start"
        elif not is_classification and outcome.task_rejection == "conflicting_outputs":
            reason = "pairs_beyond_first"
        elif not is_classification and re.search(r"Example(?!\s?\d*\.?[ \t]*\n)", text):
            reason = "example_headers_only"
        elif not is_classification and not re.search(r"^[ \t]*Example", text, re.MULTILINE):
            reason = "pairs_beyond_first"
        else:
            reason = UNEXPLAINED
        out.append(Difference(reason, shown, lost=True))
    ref_set = set(ref)
    for inp, output in sorted(mine - ref_set):
        out.append(Difference("default_keeps_more", f"{inp!r} -> {output!r}", lost=False))
    return out


def count_reasons(differences: Sequence[Sequence[Difference]]) -> dict[str, int]:
    """Cases that differ, by reason (a case with several reasons counts under each)."""
    counts: dict[str, int] = {}
    for case in differences:
        for reason in sorted({d.reason for d in case}):
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))
