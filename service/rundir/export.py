"""Fine-tuning files from a run directory: one record a line, in one of four formats.

The run's ``tasks.jsonl`` is read one line at a time and every record is written as soon as
it is built, so a run of any size exports in constant memory. The output goes to a hidden
temporary file next to the destination and is renamed over it at the end: a reader sees
the previous export or the new one, never half of one, and a failed export leaves nothing.

Every format writes one record per *instance* (a task with 3 instances gives 3 records),
in the order of ``tasks.jsonl``; with ``include_seeds`` the seed tasks recorded in the run
directory (``seeds.jsonl``) come first. Strings are written as they are stored (the
pipeline already stripped them); non-ASCII text is written as UTF-8, not escaped.

Formats (``input`` is the instance input, possibly empty):

``alpaca``
    ``{"instruction": instruction, "input": input, "output": output}``
``sharegpt``
    ``{"conversations": [{"from": "human", "value": U}, {"from": "gpt", "value": output}]}``
``openai-chat``
    ``{"messages": [{"role": "user", "content": U}, {"role": "assistant", "content": output}]}``
``self-instruct``
    the reference implementation's prompt/completion pairs, with its first template and no
    random choice, so the file is reproducible::

        prompt     = instruction + "\\nInput: " + input + "\\nOutput:"   (input non-empty)
                     instruction + "\\nOutput:"                          (input empty)
        completion = " " + output + "<|endoftext|>"

    The leading space and the ``<|endoftext|>`` end marker are what the reference wrote
    (and what prompt/completion fine-tuning expects: the prompt ends with a fixed separator,
    the completion starts with a space and ends with a fixed stop sequence).

``prompt-completion``
    the reference's fine-tuning file: each instance encoded with one of its prompt/
    completion templates (7 with an input, 6 without, all ending in ``<|endoftext|>``),
    chosen by a random generator seeded with ``seed`` (the same seed gives the same file).
    Records keep the order of ``tasks.jsonl`` (the reference shuffles the whole file; shuffle
    in your loader) and the reference's 50% input rewriting is not applied.

where ``U`` = instruction + "\\n\\n" + input when input is non-empty, else the instruction.

``compat="reference"`` (``export --compat reference``) writes the prompt-completion file as
the reference's ``prepare_for_finetuning.py`` does, every step included: seed tasks (with
``include_seeds``) after the generated ones; half of the inputs rewritten (a single
``field:`` name removed, blank lines collapsed); one random template each; duplicate
prompt/completion pairs dropped; the whole file shuffled. One generator seeded with
``seed`` drives every random choice, so the same seed gives the same file. The shuffle
holds the records in memory (a few hundred bytes each).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.errors import RunDirError
from service.rundir.store import SEEDS, TASKS, atomic_file, read_jsonl

EXPORT_DIR = "export"
END_OF_TEXT = "<|endoftext|>"

Formatter = Callable[[str, str, str], dict[str, Any]]


def _user_text(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def format_alpaca(instruction: str, input_text: str, output: str) -> dict[str, Any]:
    return {"instruction": instruction, "input": input_text, "output": output}


def format_sharegpt(instruction: str, input_text: str, output: str) -> dict[str, Any]:
    return {
        "conversations": [
            {"from": "human", "value": _user_text(instruction, input_text)},
            {"from": "gpt", "value": output},
        ]
    }


def format_openai_chat(instruction: str, input_text: str, output: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": _user_text(instruction, input_text)},
            {"role": "assistant", "content": output},
        ]
    }


def format_self_instruct(instruction: str, input_text: str, output: str) -> dict[str, Any]:
    if input_text:
        prompt = f"{instruction}\nInput: {input_text}\nOutput:"
    else:
        prompt = f"{instruction}\nOutput:"
    return {"prompt": prompt, "completion": f" {output}{END_OF_TEXT}"}


# The reference's encoding templates (prompt, completion), as data.
PROMPT_COMPLETION_WITH_INPUT = (
    ("{instruction}\nInput: {input}\nOutput:", " {output}" + END_OF_TEXT),
    ("{instruction}\n\nInput: {input}\n\nOutput:", " {output}" + END_OF_TEXT),
    ("Task: {instruction}\nInput: {input}\nOutput:", " {output}" + END_OF_TEXT),
    ("{instruction}\n\n{input}\n\nOutput:", " {output}" + END_OF_TEXT),
    ("{instruction}\n\n{input}\n\n", "{output}" + END_OF_TEXT),
    ("{instruction}\n{input}\n\n", "{output}" + END_OF_TEXT),
    ("Task: {instruction}\n\n{input}\n\n", "{output}" + END_OF_TEXT),
)
PROMPT_COMPLETION_WITHOUT_INPUT = (
    ("{instruction} Output:", " {output}" + END_OF_TEXT),
    ("{instruction}\nOutput:", " {output}" + END_OF_TEXT),
    ("{instruction}\n\nOutput:", " {output}" + END_OF_TEXT),
    ("{instruction}\n", "{output}" + END_OF_TEXT),
    ("{instruction}\n\n", "{output}" + END_OF_TEXT),
    ("Task: {instruction}\n\n", "{output}" + END_OF_TEXT),
)


def prompt_completion_formatter(seed: int = 0) -> Formatter:
    """The reference's randomly templated prompt/completion pairs, repeatably."""
    return _seeded_encoder(random.Random(seed))


def _seeded_encoder(rng: random.Random) -> Formatter:
    def encode(instruction: str, input_text: str, output: str) -> dict[str, Any]:
        templates = PROMPT_COMPLETION_WITH_INPUT if input_text.strip() else (
            PROMPT_COMPLETION_WITHOUT_INPUT)
        prompt, completion = rng.choice(templates)
        # str.replace, not str.format: braces in generated text are data, never fields.
        return {
            "prompt": prompt.replace("{instruction}", instruction.strip()).replace(
                "{input}", input_text.strip()),
            "completion": completion.replace("{output}", output.strip()),
        }

    return encode


FORMATS: dict[str, Formatter] = {
    "alpaca": format_alpaca,
    "sharegpt": format_sharegpt,
    "openai-chat": format_openai_chat,
    "self-instruct": format_self_instruct,
    "prompt-completion": prompt_completion_formatter(),  # export_run makes a seeded one
}
DEFAULT_FORMAT = "alpaca"


_FIELD_NAME = re.compile(r"(\w+):")


def reference_input_rewrite(input_text: str, rng: random.Random) -> str:
    """Half of the time: drop the field name of an input with exactly one ``name:``
    ("Sentence: I loved it." -> "I loved it.") and collapse blank lines, so a model
    fine-tuned on the file also sees inputs without their field names."""
    if rng.random() >= 0.5:
        return input_text
    names = set(_FIELD_NAME.findall(input_text))
    text = input_text.split(":", 1)[1].strip() if len(names) == 1 else input_text.strip()
    return text.replace("\n\n", "\n")


def _reference_records(
    instances: Iterator[tuple[str, str, str]], rng: random.Random
) -> list[dict[str, Any]]:
    """prepare_for_finetuning's steps after loading: rewrite, encode, dedup, shuffle."""
    encode = _seeded_encoder(rng)
    seen: set[tuple[str, str]] = set()
    records: list[dict[str, Any]] = []
    for instruction, input_text, output in instances:
        record = encode(instruction, reference_input_rewrite(input_text, rng), output)
        pair = (record["prompt"], record["completion"])
        if pair in seen:
            continue
        seen.add(pair)
        records.append(record)
    rng.shuffle(records)
    return records


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    format: str
    tasks: int  # tasks read from tasks.jsonl
    seed_tasks: int  # seed tasks included (0 without include_seeds)
    records: int  # lines written
    skipped_tasks: int  # tasks (or seeds) without instances: nothing to write
    torn_tail: bool  # tasks.jsonl ended in an incomplete line (a run still writing, or a crash)

    def describe(self) -> str:
        parts = [f"{self.records} {self.format} records from {self.tasks} tasks"]
        if self.seed_tasks:
            parts.append(f" and {self.seed_tasks} seed tasks")
        parts.append(f" -> {self.path}")
        if self.skipped_tasks:
            parts.append(f" ({self.skipped_tasks} tasks without instances skipped)")
        if self.torn_tail:
            parts.append(f" (incomplete last line of {TASKS} ignored)")
        return "".join(parts)


def default_export_path(run_dir: Path, fmt: str) -> Path:
    return run_dir / EXPORT_DIR / f"{fmt}.jsonl"


class _TornTail:
    """Set when a file's last line lacks its newline (it is then not parsed)."""

    def __init__(self) -> None:
        self.seen = False


def _iter_tasks(path: Path, torn: _TornTail) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line, object); a bad complete line is an error, a torn last line is skipped."""

    def seen(_line: int) -> None:
        torn.seen = True

    try:
        yield from read_jsonl(path, torn="skip", on_torn=seen)
    except RunDirError as exc:
        raise RunDirError(f"{exc}; run `selfinstruct verify`") from None


def _instances(path: Path, lineno: int, task: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    instruction = task.get("instruction")
    if not isinstance(instruction, str):
        raise RunDirError(f"{path}:{lineno}: field 'instruction' missing or not a string")
    instances = task.get("instances", [])
    if not isinstance(instances, list):
        raise RunDirError(f"{path}:{lineno}: field 'instances' is not a list")
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise RunDirError(f"{path}:{lineno}: field 'instances[{i}]' is not an object")
        input_text, output = inst.get("input", ""), inst.get("output")
        if not isinstance(input_text, str) or not isinstance(output, str):
            raise RunDirError(
                f"{path}:{lineno}: field 'instances[{i}]' needs string 'input' and 'output'"
            )
        yield instruction, input_text, output


def export_run(
    run_dir: Path | str,
    fmt: str = DEFAULT_FORMAT,
    out: Path | str | None = None,
    *,
    include_seeds: bool = False,
    seed: int = 0,
    compat: str = "default",
) -> ExportResult:
    """Export ``run_dir``'s tasks in format ``fmt`` to ``out`` (default ``run_dir/export/<fmt>.jsonl``).

    Reads without taking the run directory's lock, so a running ``generate`` can be exported
    (its last, half-written line is ignored). Raises RunDirError for a missing directory or a
    corrupt line (naming file:line), ValueError for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if compat == "reference" and fmt != "prompt-completion":
        raise ValueError("compat 'reference' writes the reference's prompt-completion file; "
                         f"format {fmt!r} has no reference form")
    formatter = prompt_completion_formatter(seed) if fmt == "prompt-completion" else FORMATS[fmt]
    root = Path(run_dir)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such run directory")
    tasks_path = root / TASKS
    if not tasks_path.exists() and not (include_seeds and (root / SEEDS).exists()):
        raise RunDirError(f"{root}: no {TASKS} (not a run directory, or no task finished yet)")
    dest = Path(out) if out is not None else default_export_path(root, fmt)
    dest.parent.mkdir(parents=True, exist_ok=True)
    counts = {"tasks": 0, "seeds": 0, "records": 0, "skipped": 0}
    torn = _TornTail()
    seed_torn = _TornTail()
    with atomic_file(dest) as fh:
        sources: list[tuple[str, Path, _TornTail]] = []
        if include_seeds:
            sources.append(("seeds", root / SEEDS, seed_torn))
        sources.append(("tasks", tasks_path, torn))
        if compat == "reference":
            sources.reverse()  # the reference appends the seed tasks after its own

        def instances() -> Iterator[tuple[str, str, str]]:
            for kind, path, tail in sources:
                for lineno, task in _iter_tasks(path, tail):
                    counts[kind] += 1
                    wrote = 0
                    for triple in _instances(path, lineno, task):
                        yield triple
                        wrote += 1
                    if wrote == 0:
                        counts["skipped"] += 1

        if compat == "reference":
            for record in _reference_records(instances(), random.Random(seed)):
                fh.write(orjson.dumps(record) + b"\n")
                counts["records"] += 1
        else:
            for instruction, input_text, output in instances():
                fh.write(orjson.dumps(formatter(instruction, input_text, output)) + b"\n")
                counts["records"] += 1
    return ExportResult(
        path=dest,
        format=fmt,
        tasks=counts["tasks"],
        seed_tasks=counts["seeds"],
        records=counts["records"],
        skipped_tasks=counts["skipped"],
        torn_tail=torn.seen or seed_torn.seen,
    )
