"""The reference method's filters as pure functions: each returns a reason or None.

Reasons are stable strings: they are written to rejected.jsonl and counted in run.json,
so scripts can rely on them.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from service.config import FilterConfig, effective_blacklist
from service.rundir.seeds import Instance

# instruction-level reasons
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
BLACKLISTED_WORD = "blacklisted_word"
WRITE_A_PROGRAM = "write_a_program"
LEADING_PUNCTUATION = "leading_punctuation"
NON_ASCII_START = "non_ascii_start"
EMPTY = "empty"
# instance-level reasons
OUTPUT_EQUALS_INPUT = "output_equals_input"
EMPTY_OUTPUT = "empty_output"
ENDS_WITH_COLON = "ends_with_colon"
DUPLICATE_INSTANCE = "duplicate_instance"
OVER_INSTANCE_LIMIT = "over_instance_limit"
# task-level reasons
CONFLICTING_OUTPUTS = "conflicting_outputs"
NO_INSTANCES = "no_instances"


@lru_cache(maxsize=8)
def _blacklist_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words)
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def clean_instruction(text: str) -> str:
    """Collapse whitespace and upper-case the first letter.

    The reference used str.capitalize(), which also lower-cases every other letter and so
    mangles names and code; we upper-case only the first character. ROUGE-L lower-cases
    anyway, so dedup decisions are unaffected.
    """
    text = re.sub(r"\s+", " ", text).strip()
    return text[:1].upper() + text[1:]


def instruction_rejection(text: str, config: FilterConfig) -> tuple[str, str] | None:
    """Return (reason, detail) when the instruction must be dropped, else None."""
    if not text:
        return EMPTY, ""
    words = len(text.split())
    if words < config.min_words:
        return TOO_SHORT, f"{words} words"
    if words > config.max_words:
        return TOO_LONG, f"{words} words"
    words_banned = effective_blacklist(config)
    if words_banned:
        match = _blacklist_pattern(words_banned).search(text)
        if match:
            return BLACKLISTED_WORD, match.group(0).lower()
    if config.drop_write_a_program and text.lower().startswith("write a program"):
        return WRITE_A_PROGRAM, ""
    if config.drop_leading_punctuation and text[0] in string.punctuation:
        return LEADING_PUNCTUATION, text[0]
    if config.drop_non_ascii_start and not text[0].isascii():
        return NON_ASCII_START, text[0]
    return None


@dataclass(frozen=True)
class InstanceVerdict:
    kept: tuple[Instance, ...]
    dropped: tuple[tuple[Instance, str], ...]
    task_rejection: str | None


def check_instances(instances: Sequence[Instance], config: FilterConfig) -> InstanceVerdict:
    """Apply the reference's instance filters, in its order (no cap; see cap_instances).

    A pair is dropped when its output is empty or equals its input, or when its input or
    output ends with ':' (an unfinished generation). A task whose instances map one
    non-empty input to different outputs is dropped whole: the task is ambiguous, and no
    subset of its instances is trustworthy. Pairs with no input never conflict: a
    no-input task ("Write a haiku") has many right outputs.
    """
    kept: list[Instance] = []
    dropped: list[tuple[Instance, str]] = []
    seen: set[tuple[str, str]] = set()
    for inst in instances:
        inp, out = inst.input.strip(), inst.output.strip()
        inst = Instance(input=inp, output=out)
        if not out:
            dropped.append((inst, EMPTY_OUTPUT))
        elif out == inp:
            dropped.append((inst, OUTPUT_EQUALS_INPUT))
        elif out.endswith(":") or inp.endswith(":"):
            dropped.append((inst, ENDS_WITH_COLON))
        elif (inp, out) in seen:
            dropped.append((inst, DUPLICATE_INSTANCE))
        else:
            seen.add((inp, out))
            kept.append(inst)
    outputs_by_input: dict[str, set[str]] = {}
    for inst in kept:
        if inst.input:
            outputs_by_input.setdefault(inst.input, set()).add(inst.output)
    if any(len(outs) > 1 for outs in outputs_by_input.values()):
        return InstanceVerdict((), (*dropped, *((i, CONFLICTING_OUTPUTS) for i in kept)), CONFLICTING_OUTPUTS)
    if not kept:
        return InstanceVerdict((), tuple(dropped), NO_INSTANCES)
    return InstanceVerdict(tuple(kept), tuple(dropped), None)


def cap_instances(
    kept: Sequence[Instance], limit: int, rng: random.Random
) -> tuple[list[Instance], list[Instance]]:
    """At most ``limit`` instances, a random sample as in the reference (not the first
    ones, which would favour whatever the model writes first); kept in their order."""
    if len(kept) <= limit:
        return list(kept), []
    chosen = set(rng.sample(range(len(kept)), limit))
    return (
        [inst for n, inst in enumerate(kept) if n in chosen],
        [inst for n, inst in enumerate(kept) if n not in chosen],
    )


def filter_instances(
    instances: Sequence[Instance], config: FilterConfig, rng: random.Random | None = None
) -> InstanceVerdict:
    """check_instances, then the random cap (``rng`` None: a fixed seed, for tests and
    tools that want one answer)."""
    verdict = check_instances(instances, config)
    if verdict.task_rejection is not None:
        return verdict
    kept, over = cap_instances(verdict.kept, config.max_instances, rng or random.Random(0))
    return InstanceVerdict(
        tuple(kept), (*verdict.dropped, *((i, OVER_INSTANCE_LIMIT) for i in over)), None
    )
