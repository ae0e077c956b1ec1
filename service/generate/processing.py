"""The seam between model text and records: one object per ``compat`` mode.

Every decision the pipeline (and ``selfinstruct parse``) makes on a model's text goes
through :class:`TextRules`: stop sequences and max_tokens per stage, splitting an
instruction list and filtering its items, reading a Yes/No answer, parsing and
filtering instances, and the random cap on instances. ``compat="reference"`` gives
:class:`ReferenceRules` (the reference code's decisions exactly, service.generate.compat);
``compat="default"`` gives :class:`DefaultRules` (the project's parsers and filters, which
never drop what the reference keeps except through the improvements README's
"Fidelity to the method" names).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.config import FilterConfig, StageConfig
from service.generate import compat, filters
from service.generate.stages import classify as classify_stage
from service.generate.stages import instances as instance_stage
from service.generate.stages import instructions as instruction_stage
from service.rundir.seeds import Instance

TRUNCATED_INSTANCE = "truncated_instance"  # the unfinished last instance of a cut answer


@dataclass(frozen=True)
class ItemVerdict:
    """One instruction-list item: ``reason`` None means kept."""

    text: str
    reason: str | None
    detail: str = ""


@dataclass(frozen=True)
class InstanceOutcome:
    """Instances of one answer, before the random cap."""

    kept: tuple[Instance, ...]
    dropped: tuple[tuple[Instance, str], ...]
    task_rejection: str | None  # conflicting_outputs | no_instances | None


class TextRules(Protocol):
    """What a compat mode decides about model text (pure: no I/O, no state)."""

    @property
    def name(self) -> str: ...

    @property
    def max_instances(self) -> int: ...

    def instruction_stop(self, next_number: int) -> list[str]: ...

    def example_text(self, instruction: str) -> str: ...

    def instruction_items(self, text: str, finish_reason: str | None) -> list[ItemVerdict]: ...

    def is_classification(self, text: str, finish_reason: str | None) -> bool: ...

    def classify_stop(self) -> list[str]: ...

    def instance_stop(self) -> list[str]: ...

    def instance_max_tokens(self, stage: StageConfig, is_classification: bool) -> int: ...

    def instances(self, text: str, is_classification: bool, finish_reason: str | None) -> InstanceOutcome: ...

    def cap(self, kept: Sequence[Instance], rng: random.Random) -> tuple[list[Instance], list[Instance]]: ...


def kept_instructions(rules: TextRules, text: str, finish_reason: str | None) -> list[str]:
    """The instructions a mode keeps from one list continuation, in order."""
    return [v.text for v in rules.instruction_items(text, finish_reason) if v.reason is None]


def _as_instances(pairs: Sequence[tuple[str, str]]) -> tuple[Instance, ...]:
    return tuple(Instance(input=i, output=o) for i, o in pairs)


@dataclass(frozen=True)
class ReferenceRules:
    """The reference code's decisions, quirks included (see service.generate.compat)."""

    max_instances: int = compat.DEFAULT_MAX_INSTANCES
    name: str = "reference"

    def instruction_stop(self, next_number: int) -> list[str]:
        return compat.instruction_stop_sequences()

    def example_text(self, instruction: str) -> str:
        return compat.reference_example_text(instruction)

    def instruction_items(self, text: str, finish_reason: str | None) -> list[ItemVerdict]:
        return [ItemVerdict(d.text, d.reason) for d in compat.reference_instruction_items(text, finish_reason)]

    def is_classification(self, text: str, finish_reason: str | None) -> bool:
        return compat.reference_is_classification(text)

    def classify_stop(self) -> list[str]:
        return list(compat.CLASSIFY_STOP)

    def instance_stop(self) -> list[str]:
        return compat.instance_stop_sequences(self.max_instances)

    def instance_max_tokens(self, stage: StageConfig, is_classification: bool) -> int:
        # the reference's 300/350, within the stage's own cap (a small local model's slot)
        return min(stage.max_tokens, compat.instance_max_tokens(is_classification))

    def instances(self, text: str, is_classification: bool, finish_reason: str | None) -> InstanceOutcome:
        detail = compat.reference_instance_detail(text, is_classification, finish_reason)
        dropped = tuple((Instance(i, o), reason) for (i, o), reason in detail.dropped)
        kept = _as_instances(detail.kept)
        rejection = detail.task_rejection or (None if kept else filters.NO_INSTANCES)
        return InstanceOutcome(kept, dropped, rejection)

    def cap(self, kept: Sequence[Instance], rng: random.Random) -> tuple[list[Instance], list[Instance]]:
        pairs = [(i.input, i.output) for i in kept]
        chosen = compat.cap_instances(pairs, rng, self.max_instances)
        chosen_set = set(chosen)
        over = [Instance(i, o) for i, o in sorted(pairs) if (i, o) not in chosen_set]
        return [Instance(i, o) for i, o in chosen], over


@dataclass(frozen=True)
class DefaultRules:
    """The project's parsers and filters (improvements named in README's fidelity table)."""

    filter_config: FilterConfig = field(default_factory=FilterConfig)
    name: str = "default"

    @property
    def max_instances(self) -> int:
        return self.filter_config.max_instances

    def instruction_stop(self, next_number: int) -> list[str]:
        return instruction_stage.stop_sequences(next_number)

    def example_text(self, instruction: str) -> str:
        return compat.reference_example_text(instruction)

    def instruction_items(self, text: str, finish_reason: str | None) -> list[ItemVerdict]:
        if finish_reason == "length":
            # A cut list is dropped whole, as in the reference: the stop at item 16 never
            # fired, so the list ran on and its last item is unfinished.
            return []
        out = []
        for raw in instruction_stage.parse_instruction_items(text):
            item = filters.clean_instruction(raw)
            rejection = filters.instruction_rejection(item, self.filter_config)
            out.append(ItemVerdict(item, *rejection) if rejection else ItemVerdict(item, None))
        return out

    def is_classification(self, text: str, finish_reason: str | None) -> bool:
        # Anything but a Yes (an unparsed or cut answer too) reads as No, as in the reference.
        return classify_stage.parse_classify_answer(text) is True

    def classify_stop(self) -> list[str]:
        return ["\n"]

    def instance_stop(self) -> list[str]:
        return instance_stage.stop_sequences(self.max_instances)

    def instance_max_tokens(self, stage: StageConfig, is_classification: bool) -> int:
        if is_classification and stage.classification_max_tokens is not None:
            return min(stage.max_tokens, stage.classification_max_tokens)
        return stage.max_tokens

    def instances(self, text: str, is_classification: bool, finish_reason: str | None) -> InstanceOutcome:
        parsed, last = instance_stage.parse_instances(text, is_classification, finish_reason == "length")
        lost = [(i, TRUNCATED_INSTANCE) for i in last]
        verdict = filters.check_instances(parsed, self.filter_config)
        return InstanceOutcome(verdict.kept, (*lost, *verdict.dropped), verdict.task_rejection)

    def cap(self, kept: Sequence[Instance], rng: random.Random) -> tuple[list[Instance], list[Instance]]:
        return filters.cap_instances(kept, self.max_instances, rng)


def rules_for(mode: str, filter_config: FilterConfig | None = None, max_instances: int | None = None) -> TextRules:
    """The rules of a compat mode; ``max_instances`` overrides the filter config's cap."""
    config = filter_config or FilterConfig()
    if max_instances is not None:
        config = FilterConfig(**{**config.__dict__, "max_instances": max_instances})
    if mode == "reference":
        return ReferenceRules(max_instances=config.max_instances)
    if mode == "default":
        return DefaultRules(config)
    raise ValueError(f"unknown compat mode {mode!r}")
