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
# "Input 2:" / "Output 3:": numbered labels count too, as in the reference
_INPUT = re.compile(r"^[ \t]*(?:\*\*)?input[ \t]*\d*[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE | re.MULTILINE)
_OUTPUT = re.compile(r"^[ \t]*(?:\*\*)?output[ \t]*\d*[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE | re.MULTILINE)
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
    if templates.instances_input_first_prefix is not None:
        return f"{templates.instances_input_first_prefix} {instruction.strip()}\n"
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
    if templates.instances_output_first_prefix is not None:
        return f"{templates.instances_output_first_prefix} {instruction.strip()}\n"
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


def stop_sequences(max_instances: int) -> list[str]:
    """Stop where one example too many would begin (so a cut-off is rarer), where the
    model starts a next task, or at a run of blank lines."""
    return [f"Example {max_instances + 1}", "\nTask:", "\n\n\n"]


def input_first_blocks(text: str) -> tuple[list[str], bool]:
    """One block per instance: split at "Example N" header lines, or, without headers, at
    each "Input:" that follows an "Output:". The flag says whether headers were found."""
    text = _cut_at_next_task(text.replace("\r\n", "\n"))
    if _EXAMPLE.search(text):
        return [b for b in _EXAMPLE.split(text) if b.strip()], True
    return [b for b in _split_bare_pairs(text) if b.strip()], False


def parse_input_first_block(block: str, headed: bool = True) -> Instance | None:
    """The input is what follows an "Input:" label before the first "Output:", or, with
    no such label, everything before "Output:" (a field such as "Paragraph: ..." is the
    input too, as in the reference). A block with no "Output:" label is a direct output
    (a no-input task answered under an "Example N" header)."""
    outs = list(_OUTPUT.finditer(block))
    if not outs and not headed:
        return None  # text without any label is not an example (a refusal, a comment)
    if not outs:
        first_input = _INPUT.search(block)
        direct = (block[: first_input.start()] if first_input else block).strip()
        return Instance(input="", output=direct) if direct else None
    out_match = outs[0]
    inputs = list(_INPUT.finditer(block, 0, out_match.start()))
    input_text = block[inputs[-1].end() : out_match.start()] if inputs else block[: out_match.start()]
    output_end = outs[1].start() if len(outs) > 1 else len(block)
    nxt = _INPUT.search(block, out_match.end())
    if nxt and nxt.start() < output_end:
        output_end = nxt.start()
    output_text = block[out_match.end() : output_end].strip()
    return Instance(input=_normalise_input(input_text), output=output_text)


def parse_input_first(text: str) -> list[Instance]:
    """Parse "Example N / Input: / Output:" blocks, or a bare "Output:" for no-input tasks."""
    blocks, headed = input_first_blocks(text)
    parsed = (parse_input_first_block(b, headed) for b in blocks)
    return [inst for inst in parsed if inst is not None]


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


_LEADING_INPUT = re.compile(r"^[ \t]*(?:\*\*)?input[ \t]*\d*[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE)


def output_first_blocks(text: str) -> list[str]:
    """One block per "Class label:" line (the label line and the lines under it)."""
    text = _cut_at_next_task(text.replace("\r\n", "\n"))
    labels = list(_LABEL.finditer(text))
    if not labels:
        return []
    starts = [m.end() for m in labels]
    ends = [m.start() for m in labels[1:]] + [len(text)]
    return [text[a:b] for a, b in zip(starts, ends, strict=True)]


def parse_output_first_block(block: str) -> Instance | None:
    """The label's line is the output; the lines under it, less a leading "Input:"
    label, are the input. An empty label yields nothing (the reference would read the
    input line as the label)."""
    first_line, _, rest = block.partition("\n")
    label = first_line.strip()
    if not label:
        return None
    body = _LEADING_INPUT.sub("", rest.strip(), count=1)
    return Instance(input=_normalise_input(body), output=label)


def parse_output_first(text: str) -> list[Instance]:
    """Parse "Class label: X / Input: ..." pairs; the label is the output."""
    parsed = (parse_output_first_block(b) for b in output_first_blocks(text))
    return [inst for inst in parsed if inst is not None]


def parse_instances(text: str, is_classification: bool, cut_off: bool) -> tuple[list[Instance], list[Instance]]:
    """(instances, lost): an answer cut at max_tokens loses only its last block, the
    unfinished one (as in the reference), not the whole task."""
    if is_classification:
        blocks, parse_block = output_first_blocks(text), parse_output_first_block
    else:
        blocks, headed = input_first_blocks(text)

        def parse_block(block: str) -> Instance | None:
            return parse_input_first_block(block, headed)

    lost: list[Instance] = []
    if cut_off and blocks:
        last = parse_block(blocks.pop())
        lost = [last] if last is not None else []
    parsed = (parse_block(b) for b in blocks)
    return [inst for inst in parsed if inst is not None], lost
