"""Seed tasks: the standard Self-Instruct JSONL, a JSON array, or plain text lines.

Bad input stops with an :class:`~service.errors.InputError` naming the file, the line
and the field, because a seed file is hand-written and a typo should take seconds to fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from prompts import PROMPTS_DIR
from service.errors import InputError

DEFAULT_SEED_TASKS = PROMPTS_DIR / "seed_tasks.jsonl"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


@dataclass(frozen=True)
class SeedTask:
    id: str
    name: str
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "instruction": self.instruction,
            "instances": [{"input": i.input, "output": i.output} for i in self.instances],
            "is_classification": self.is_classification,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> SeedTask:
        """The inverse of :meth:`to_json`, for records this program wrote itself
        (a run's seeds.jsonl, a distributed run's seeds); user files go through
        :func:`load_seed_tasks`, which validates."""
        return cls(
            id=str(record["id"]),
            name=str(record.get("name", record["id"])),
            instruction=str(record["instruction"]),
            instances=tuple(
                Instance(str(i["input"]), str(i["output"])) for i in record.get("instances", [])
            ),
            is_classification=bool(record.get("is_classification", False)),
        )


def default_seed_path() -> Path:
    return DEFAULT_SEED_TASKS


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), None, None, "file not found") from None
    except IsADirectoryError:
        raise InputError(str(path), None, None, "is a directory, expected a file") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            str(path), line, None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise InputError(str(path), None, None, "file is empty: no seed tasks")
    return text


def _str_field(obj: dict[str, Any], key: str, path: Path, line: int, *, required: bool) -> str | None:
    if key not in obj:
        if required:
            raise InputError(str(path), line, key, "missing")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(str(path), line, key, f"expected a string, got {type(value).__name__}")
    return value


def _task_from_obj(obj: Any, path: Path, line: int, index: int) -> SeedTask:
    if not isinstance(obj, dict):
        raise InputError(str(path), line, None, f"expected a JSON object, got {type(obj).__name__}")
    instruction = _str_field(obj, "instruction", path, line, required=True)
    assert instruction is not None
    if not instruction.strip():
        raise InputError(str(path), line, "instruction", "is empty")
    task_id = _str_field(obj, "id", path, line, required=False) or f"seed_task_{index}"
    name = _str_field(obj, "name", path, line, required=False) or task_id
    is_cls = obj.get("is_classification", False)
    if not isinstance(is_cls, bool):
        raise InputError(
            str(path), line, "is_classification", f"expected true or false, got {is_cls!r}"
        )
    raw_instances = obj.get("instances", [])
    if not isinstance(raw_instances, list):
        raise InputError(
            str(path), line, "instances", f"expected a list, got {type(raw_instances).__name__}"
        )
    instances: list[Instance] = []
    for i, inst in enumerate(raw_instances):
        where = f"instances[{i}]"
        if not isinstance(inst, dict):
            raise InputError(str(path), line, where, "expected an object with input and output")
        for key in ("input", "output"):
            if key not in inst:
                raise InputError(str(path), line, f"{where}.{key}", "missing")
            if not isinstance(inst[key], str):
                raise InputError(
                    str(path), line, f"{where}.{key}",
                    f"expected a string, got {type(inst[key]).__name__}",
                )
        instances.append(Instance(input=inst["input"], output=inst["output"]))
    return SeedTask(
        id=task_id,
        name=name,
        instruction=instruction.strip(),
        instances=tuple(instances),
        is_classification=is_cls,
    )


def _lines(text: str) -> list[str]:
    """Split on \n, \r\n and \r only: str.splitlines() also breaks at U+2028, U+0085 and
    other characters that a JSON string may hold unescaped (orjson writes them so)."""
    return _LINE_BREAK.split(text)


def _parse_jsonl(text: str, path: Path) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            raise InputError(str(path), lineno, None, f"invalid JSON ({exc})") from None
    return out


def _parse_json_array(text: str, path: Path) -> list[tuple[int, Any]]:
    """Parse a top-level array while keeping each element's line number."""
    decoder = json.JSONDecoder()

    def fail(pos: int, problem: str) -> InputError:
        return InputError(str(path), text.count("\n", 0, pos) + 1, None, problem)

    pos = text.index("[") + 1
    out: list[tuple[int, Any]] = []
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            raise fail(pos, "invalid JSON: the array is not closed with ']'")
        if text[pos] == "]":
            pos += 1
            break
        if out:
            if text[pos] != ",":
                raise fail(pos, "invalid JSON: expected ',' or ']' between tasks")
            pos += 1
            while pos < n and text[pos] in " \t\r\n":
                pos += 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, f"invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise fail(pos, "invalid JSON (nested too deeply)") from None
        out.append((text.count("\n", 0, pos) + 1, obj))
        pos = end
    if text[pos:].strip():
        raise fail(pos, "invalid JSON: extra data after the array")
    return out


def load_seed_tasks(path: Path | str) -> list[SeedTask]:
    """Load seed tasks, detecting the format from the content.

    - a JSON array of task objects (first non-blank character ``[``)
    - JSONL, one task object a line (first non-blank character ``{``)
    - otherwise plain text: one instruction a line, no instances, not classification
    """
    p = Path(path)
    text = _read_text(p)
    first = text.lstrip()[0]
    tasks: list[SeedTask] = []
    if first in "[{":
        entries = _parse_json_array(text, p) if first == "[" else _parse_jsonl(text, p)
        if not entries:
            raise InputError(str(p), None, None, "no seed tasks found")
        tasks = [_task_from_obj(obj, p, line, i) for i, (line, obj) in enumerate(entries)]
        lines = [line for line, _ in entries]
    else:
        lines = []
        for lineno, text_line in enumerate(_lines(text), start=1):
            if text_line.strip():
                idx = len(tasks)
                tasks.append(
                    SeedTask(
                        id=f"seed_task_{idx}", name=f"seed_task_{idx}",
                        instruction=text_line.strip(), instances=(), is_classification=False,
                    )
                )
                lines.append(lineno)
    seen: dict[str, int] = {}
    for task, line in zip(tasks, lines, strict=True):
        if task.id in seen:
            raise InputError(
                str(p), line, "id", f"duplicate id {task.id!r} (first used on line {seen[task.id]})"
            )
        seen[task.id] = line
    return tasks
