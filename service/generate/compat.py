"""The reference method's own decisions on model text, as pure functions (``compat="reference"``).

Self-Instruct's public code (Wang et al. 2022) makes many small decisions on each model
text: how a numbered list is split, which words ban an instruction, what counts as an
input, which instances an unfinished answer loses. Reproducing the paper means making
exactly the same decisions, quirks included, so this module restates each rule (written
for this project, tested for equality against ``/work/shared/reference/golden``):

- instruction lists: split only where a line starts with ``<digits>[one space]. ``; each
  item has its whitespace collapsed and is ``str.capitalize()``-d (which lower-cases every
  letter after the first); nothing is kept from a response cut off at max_tokens;
- instances: generation answers are split on the word ``Example`` wherever it occurs,
  and everything before the first ``Output:`` is the input; classification answers are
  split on ``Class label:``, the first line being the label and the rest the input;
- a Yes/No answer is Yes only when it is exactly "Yes", "yes" or "YES" once stripped.

The project's default mode (``service.generate.stages``) differs where it improves on
these rules; README "Fidelity to the method" lists each difference and its switch.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Compat = Literal["default", "reference"]
COMPAT_MODES: tuple[Compat, ...] = ("default", "reference")

# The reference's 13 banned words and phrases (bootstrap_instructions.py).
REFERENCE_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to",
)
# Stanford Alpaca added these five to the list; an option here (filters.alpaca_blacklist).
ALPACA_EXTRA_BLACKLIST: tuple[str, ...] = ("video", "audio", "music", "flowchart", "diagram")

# Word-count bounds: the reference drops an instruction of <= 3 or > 150 words.
MIN_WORDS_EXCLUSIVE = 3
MAX_WORDS = 150
PROGRAM_PREFIX = "Write a program"  # compared after capitalize(), so case-sensitive
DEFAULT_MAX_INSTANCES = 5

# Instruction stage: where a list item 16 would start, generation stops.
LIST_STOP_NUMBER = 16
INSTRUCTIONS_MAX_TOKENS = 1024
CLASSIFY_MAX_TOKENS = 3
CLASSIFY_STOP = ("\n", "Task")
# Instance stage: the classification template is longer, so a batch holding a
# classification task asks for fewer tokens.
INSTANCES_MAX_TOKENS_WITH_CLASSIFICATION = 300
INSTANCES_MAX_TOKENS_GENERATION_ONLY = 350
YES_ANSWERS = frozenset({"Yes", "yes", "YES"})

_LIST_ITEM_BREAK = re.compile(r"\n\d+\s?\. ")
_WHITESPACE = re.compile(r"\s+")
_OUTPUT_LABEL = re.compile(r"Output\s*\d*\s*:")
_INPUT_LABEL = re.compile(r"Input\s*\d*\s*:")
_LEADING_INPUT_LABEL = re.compile(r"^Input\s*\d*\s*:")
_EXAMPLE_MARK = re.compile(r"Example\s?\d*\.?")
CLASS_LABEL = "Class label:"

Pair = tuple[str, str]  # (input, output)


def instruction_stop_sequences() -> list[str]:
    """Stop at a blank line or where item 16 would begin (with or without the space)."""
    n = LIST_STOP_NUMBER
    return ["\n\n", f"\n{n}", f"{n}.", f"{n} ."]


def instance_stop_sequences(max_instances: int = DEFAULT_MAX_INSTANCES) -> list[str]:
    """Stop where one example too many would begin, or where the model starts a new task."""
    return [f"Example {max_instances + 1}", "Task:"]


def instance_max_tokens(batch_has_classification: bool) -> int:
    """The reference sizes max_tokens per request batch, not per task."""
    if batch_has_classification:
        return INSTANCES_MAX_TOKENS_WITH_CLASSIFICATION
    return INSTANCES_MAX_TOKENS_GENERATION_ONLY


# --------------------------------------------------------------------------------------
# Stage 1: instruction lists


def _banned_word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"\b({word})\b", re.IGNORECASE)


_BANNED = tuple(_banned_word_pattern(w) for w in REFERENCE_BLACKLIST)


@dataclass(frozen=True)
class ItemDecision:
    """One list item after cleaning: ``reason`` is None when the item is kept."""

    text: str
    reason: str | None


def reference_item_reason(item: str) -> str | None:
    """Why the reference drops an already-cleaned item, or None (the reasons' names are
    those of service.generate.filters)."""
    if item == "":
        return "empty"
    n_words = len(item.split())
    if n_words <= MIN_WORDS_EXCLUSIVE:
        return "too_short"
    if n_words > MAX_WORDS:
        return "too_long"
    if any(p.search(item) for p in _BANNED):
        return "blacklisted_word"
    if item.startswith(PROGRAM_PREFIX):
        return "write_a_program"
    if item[0] in string.punctuation:
        return "leading_punctuation"
    if not item[0].isascii():
        return "non_ascii_start"
    return None


def reference_instruction_items(text: str, finish_reason: str | None) -> list[ItemDecision]:
    """Every item of a list continuation with the reference's verdict on it, in order.

    A response cut off at max_tokens yields nothing (the whole list is discarded).
    """
    if finish_reason == "length":
        return []
    decisions = []
    for piece in _LIST_ITEM_BREAK.split(text):
        item = _WHITESPACE.sub(" ", piece).strip().capitalize()
        decisions.append(ItemDecision(item, reference_item_reason(item)))
    return decisions


def reference_instructions(text: str, finish_reason: str | None) -> list[str]:
    """The instructions the reference keeps from one list continuation, in order
    (before the ROUGE-L filter)."""
    return [d.text for d in reference_instruction_items(text, finish_reason) if d.reason is None]


def reference_example_text(instruction: str) -> str:
    """How the reference shows an example in the list prompt: whitespace collapsed and a
    trailing ':' removed (so the list does not read as a header)."""
    return _WHITESPACE.sub(" ", instruction).strip().rstrip(":")


# --------------------------------------------------------------------------------------
# Stage 3: classification or not


def reference_is_classification(answer: str) -> bool:
    """Yes only for an exact Yes (any other text, a cut-off or an empty answer, is No)."""
    return answer.strip() in YES_ANSWERS


# --------------------------------------------------------------------------------------
# Stage 4: instances


def reference_parse_input_output(text: str) -> Pair:
    """Input = everything before the first "Output:" (minus a leading "Input:" label);
    output = what follows it, up to a later "Output:" or "Input:"."""
    if _OUTPUT_LABEL.search(text):
        parts = _OUTPUT_LABEL.split(text)
        inp, out = parts[0].strip(), parts[1].strip()
    else:
        inp, out = "", text.strip()
    if _INPUT_LABEL.search(out):
        out = _INPUT_LABEL.split(out)[0].strip()
    inp = _LEADING_INPUT_LABEL.sub("", inp).strip()
    return inp, out


def invalid_reason(inp: str, out: str) -> str | None:
    """Why the reference drops a pair: output empty or equal to the input, or input or
    output ending with ':' (usually an unfinished generation)."""
    if inp == out:
        return "output_equals_input"
    if out == "":
        return "empty_output"
    if inp.strip().endswith(":") or out.strip().endswith(":"):
        return "ends_with_colon"
    return None


def reference_conflicting(pairs: Sequence[Pair]) -> bool:
    """True when one non-empty input has two different outputs (the task is then dropped
    whole); pairs with an empty input never conflict."""
    outputs: dict[str, str] = {}
    for inp, out in pairs:
        if inp == "":
            continue
        if outputs.setdefault(inp, out) != out:
            return True
    return False


@dataclass(frozen=True)
class InstanceDetail:
    """The reference's verdict on one answer: ``kept`` sorted and de-duplicated."""

    kept: tuple[Pair, ...]
    dropped: tuple[tuple[Pair, str], ...]
    task_rejection: str | None


def _judge(pairs: list[Pair], finish_reason: str | None) -> InstanceDetail:
    dropped: list[tuple[Pair, str]] = []
    if finish_reason == "length" and pairs:
        dropped.append((pairs[-1], "truncated_instance"))  # only the unfinished last one
        pairs = pairs[:-1]
    valid = []
    for pair in pairs:
        reason = invalid_reason(*pair)
        if reason is None:
            valid.append(pair)
        else:
            dropped.append((pair, reason))
    if reference_conflicting(valid):
        dropped.extend((p, "conflicting_outputs") for p in valid)
        return InstanceDetail((), tuple(dropped), "conflicting_outputs")
    unique = sorted(set(valid))
    return InstanceDetail(tuple(unique), tuple(dropped), None)


def reference_generation_pairs(text: str) -> list[Pair]:
    """Raw pairs of an input-first answer: split on the word "Example" wherever it occurs,
    or one pair when only an "Output:" label is present."""
    text = text.strip()
    if _EXAMPLE_MARK.search(text):
        blocks = [b.strip() for b in _EXAMPLE_MARK.split(text)]
        pairs = [reference_parse_input_output(b) for b in blocks if b]
    elif _OUTPUT_LABEL.search(text):
        pairs = [reference_parse_input_output(text)]
    else:
        return []
    return [(i.strip(), o.strip()) for i, o in pairs]


def reference_classification_pairs(text: str) -> list[Pair]:
    """Raw pairs of an output-first answer: after each "Class label:", the first line is
    the label (the output) and the remaining lines the input."""
    if CLASS_LABEL not in text:
        return []
    pairs = []
    for block in text.split(CLASS_LABEL)[1:]:
        label, _, rest = block.strip().partition("\n")
        pairs.append((rest.strip(), label.strip()))
    return pairs


def reference_instance_detail(text: str, is_classification: bool, finish_reason: str | None) -> InstanceDetail:
    """Parse and filter one instance answer as the reference does, with the reasons."""
    if is_classification:
        pairs = reference_classification_pairs(text)
    else:
        pairs = reference_generation_pairs(text)
    return _judge(pairs, finish_reason)


def reference_instances(text: str, is_classification: bool, finish_reason: str | None) -> list[Pair]:
    """The reference's instances for one answer, sorted (before the random cap)."""
    return list(reference_instance_detail(text, is_classification, finish_reason).kept)


def cap_instances(pairs: Sequence[Pair], rng: random.Random, limit: int = DEFAULT_MAX_INSTANCES) -> list[Pair]:
    """At most ``limit`` instances, sampled at random as the reference does.

    The reference samples from a set, whose order depends on the process's hash seed; the
    pairs are sorted first here, so a run's seed alone fixes the sample.
    """
    ordered = sorted(pairs)
    if len(ordered) <= limit:
        return ordered
    return rng.sample(ordered, limit)
