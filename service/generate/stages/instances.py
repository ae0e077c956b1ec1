"""Stage 4: instance generation, output-first for classification, input-first otherwise.

Output-first exists because, asked for an input first, a model writes inputs that mostly
belong to one label; naming the label first spreads the examples over the labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.generate.templates import Templates
from service.rundir.seeds import Instance, SeedTask

NULL_INPUTS = {"", "[null]", "null", "none", "n/a", "na", "<noinput>", "no input", "(none)", "[none]", "-"}

_LABEL = re.compile(r"^[ \t]*(?:\*\*)?class[ \t_-]*label[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE | re.MULTILINE)
_INPUT = re.compile(r"^[ \t]*(?:\*\*)?input[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE | re.MULTILINE)
_OUTPUT = re.compile(r"^[ \t]*(?:\*\*)?output[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE | re.MULTILINE)
_EXAMPLE = re.compile(r"^[ \t]*(?:\*\*)?example[ \t]*\d+[ \t]*(?:\*\*)?[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_NEXT_TASK = re.compile(r"^[ \t]*task[ \t]*:", re.IGNORECASE | re.MULTILINE)


def _task_text(task: SeedTask) -> str:
    return " ".join(task.instruction.split())


def pick_instance_examples(seeds: Sequence[SeedTask], classification: bool, count: int) -> list[SeedTask]:
    """Seed tasks with instances to show as worked examples (a fixed, repeatable choice)."""
    pool = [t for t in seeds if t.instances and t.is_classification == classification]
    if not classification:
        with_input = [t for t in pool if any(i.input.strip() for i in t.instances)]
        without = [t for t in pool if not any(i.input.strip() for i in t.instances)]
        mixed: list[SeedTask] = []
        while (with_input or without) and len(mixed) < count:
            if with_input:
                mixed.append(with_input.pop(0))
            if without and len(mixed) < count and len(mixed) % 3 == 1:
                mixed.append(without.pop(0))
        return mixed[:count]
    return pool[:count]


def build_input_first_prompt(examples: Sequence[SeedTask], instruction: str, templates: Templates) -> str:
    blocks = [templates.instances_input_first_header, ""]
    for task in examples:
        lines = [f"Task: {_task_text(task)}"]
        if all(not i.input.strip() for i in task.instances):
            lines.append(f"Output: {task.instances[0].output.strip()}")
        else:
            for n, inst in enumerate(task.instances, start=1):
                lines.append(f"Example {n}")
                lines.append(f"Input: {inst.input.strip() or '[NULL]'}")
                lines.append(f"Output: {inst.output.strip()}")
        blocks.append("\n".join(lines) + "\n")
    blocks.append(f"Task: {' '.join(instruction.split())}")
    return "\n".join(blocks)


def build_output_first_prompt(examples: Sequence[SeedTask], instruction: str, templates: Templates) -> str:
    blocks = [templates.instances_output_first_header, ""]
    for task in examples:
        lines = [f"Task: {_task_text(task)}"]
        for inst in task.instances:
            lines.append(f"Class label: {inst.output.strip()}")
            lines.append(f"Input: {inst.input.strip() or '[NULL]'}")
        blocks.append("\n".join(lines) + "\n")
    blocks.append(f"Task: {' '.join(instruction.split())}")
    return "\n".join(blocks)


def _cut_at_next_task(text: str) -> str:
    """A base model may go on to invent the next task; keep only this task's examples."""
    match = _NEXT_TASK.search(text)
    return text[: match.start()] if match else text


def _normalise_input(value: str) -> str:
    value = value.strip()
    return "" if value.lower() in NULL_INPUTS else value


def parse_input_first(text: str) -> list[Instance]:
    """Parse "Example N / Input: / Output:" blocks, or a bare "Output:" for no-input tasks."""
    text = _cut_at_next_task(text.replace("\r\n", "\n"))
    if _EXAMPLE.search(text):
        blocks = [b for b in _EXAMPLE.split(text) if b.strip()]
    else:
        blocks = _split_bare_pairs(text)
    instances: list[Instance] = []
    for block in blocks:
        outs = list(_OUTPUT.finditer(block))
        if not outs:
            continue
        out_match = outs[0]
        inputs = list(_INPUT.finditer(block, 0, out_match.start()))
        input_text = block[inputs[-1].end() : out_match.start()] if inputs else ""
        output_end = outs[1].start() if len(outs) > 1 else len(block)
        nxt = _INPUT.search(block, out_match.end())
        if nxt and nxt.start() < output_end:
            output_end = nxt.start()
        output_text = block[out_match.end() : output_end].strip()
        instances.append(Instance(input=_normalise_input(input_text), output=output_text))
    return instances


def _split_bare_pairs(text: str) -> list[str]:
    """Without "Example N" headers, each "Input:" that follows an "Output:" starts a pair."""
    starts = [0]
    seen_output = False
    for match in sorted([*_INPUT.finditer(text), *_OUTPUT.finditer(text)], key=lambda m: m.start()):
        is_input = _INPUT.match(text, match.start()) is not None
        if is_input and seen_output:
            starts.append(match.start())
            seen_output = False
        elif not is_input:
            seen_output = True
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def parse_output_first(text: str) -> list[Instance]:
    """Parse "Class label: X / Input: ..." pairs; the label is the output."""
    text = _cut_at_next_task(text.replace("\r\n", "\n"))
    labels = list(_LABEL.finditer(text))
    instances: list[Instance] = []
    for idx, match in enumerate(labels):
        end = labels[idx + 1].start() if idx + 1 < len(labels) else len(text)
        block = text[match.end() : end]
        first_line, _, rest = block.partition("\n")
        label = first_line.strip()
        inp = _INPUT.search(rest)
        body = rest[inp.end() :] if inp else rest
        if not label:
            continue
        instances.append(Instance(input=_normalise_input(body), output=label))
    return instances
