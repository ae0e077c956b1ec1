"""The reference method's filters as pure functions: each returns a reason or None.

Reasons are stable strings: they are written to rejected.jsonl and counted in run.json,
so scripts can rely on them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from service.config import FilterConfig
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
    if config.blacklist:
        match = _blacklist_pattern(tuple(config.blacklist)).search(text)
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


def filter_instances(instances: Sequence[Instance], config: FilterConfig) -> InstanceVerdict:
    """Apply the reference's instance filters, in its order.

    A task whose instances map one input to different outputs is dropped whole: the task
    is ambiguous, and no subset of its instances is trustworthy.
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
        elif out.endswith(":"):
            dropped.append((inst, ENDS_WITH_COLON))
        elif (inp, out) in seen:
            dropped.append((inst, DUPLICATE_INSTANCE))
        else:
            seen.add((inp, out))
            kept.append(inst)
    outputs_by_input: dict[str, set[str]] = {}
    for inst in kept:
        outputs_by_input.setdefault(inst.input, set()).add(inst.output)
    if any(len(outs) > 1 for outs in outputs_by_input.values()):
        return InstanceVerdict((), (*dropped, *((i, CONFLICTING_OUTPUTS) for i in kept)), CONFLICTING_OUTPUTS)
    over = kept[config.max_instances :]
    kept = kept[: config.max_instances]
    dropped.extend((inst, OVER_INSTANCE_LIMIT) for inst in over)
    if not kept:
        return InstanceVerdict((), tuple(dropped), NO_INSTANCES)
    return InstanceVerdict(tuple(kept), tuple(dropped), None)
