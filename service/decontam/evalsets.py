"""Reading evaluation sets: the texts decontamination protects and ``eval`` runs.

Formats (detected per line, so one reader serves both):

* the paper's user-oriented tasks (the default): ``id``, ``instruction`` and
  ``instances`` (a list of ``{"input", "output"}``); ``motivation_app`` is kept if present;
* any JSONL with named text fields (``fields``), e.g. ``--field question --field answer``;
  the id comes from ``id_field`` or, when absent, ``FILE:LINE``.

Everything is untrusted: lines, items and text lengths are bounded and every problem is
an :class:`InputError` naming the file, line and field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.errors import InputError

MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_ITEMS = 1_000_000
MAX_INSTANCES = 100
DEFAULT_ID_FIELD = "id"


@dataclass(frozen=True)
class EvalInstance:
    input: str
    output: str


@dataclass(frozen=True)
class EvalTask:
    """One evaluation task (the paper's format); ``line`` points back into the file."""

    id: str
    instruction: str
    instances: tuple[EvalInstance, ...]
    motivation_app: str
    file: str
    line: int


@dataclass(frozen=True)
class EvalText:
    """One text of an evaluation item, as decontamination indexes it."""

    item_id: str
    field: str
    text: str


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line is an InputError."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise InputError(str(path), None, None, "no such file") from None
    except IsADirectoryError:
        raise InputError(str(path), None, None, "is a directory, expected a JSONL file") from None
    with fh:
        count = 0
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(str(path), lineno, None,
                                 f"line longer than {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InputError(str(path), lineno, None, f"not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise InputError(str(path), lineno, None, "expected a JSON object")
            count += 1
            if count > MAX_ITEMS:
                raise InputError(str(path), lineno, None, f"more than {MAX_ITEMS} items")
            yield lineno, obj


def _text(path: Path, lineno: int, obj: dict[str, Any], name: str, *, required: bool = True,
          where: str | None = None) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise InputError(str(path), lineno, where or name, "missing")
    if not isinstance(value, str):
        raise InputError(str(path), lineno, where or name,
                         f"expected a string, got {type(value).__name__}")
    return value


def _item_id(path: Path, lineno: int, obj: dict[str, Any], id_field: str) -> str:
    value = obj.get(id_field)
    if value is None:
        return f"{path.name}:{lineno}"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(str(path), lineno, id_field, "expected a string or an integer")
    return str(value)


def read_eval_tasks(path: Path, *, id_field: str = DEFAULT_ID_FIELD) -> Iterator[EvalTask]:
    """Tasks in the paper's format; ``instances`` may be missing (no reference output)."""
    seen: set[str] = set()
    for lineno, obj in iter_json_lines(path):
        task_id = _item_id(path, lineno, obj, id_field)
        if task_id in seen:
            raise InputError(str(path), lineno, id_field, f"duplicate id {task_id!r}")
        seen.add(task_id)
        instruction = _text(path, lineno, obj, "instruction")
        if not instruction.strip():
            raise InputError(str(path), lineno, "instruction", "empty")
        raw_instances = obj.get("instances", [])
        if not isinstance(raw_instances, list):
            raise InputError(str(path), lineno, "instances", "expected a list")
        if len(raw_instances) > MAX_INSTANCES:
            raise InputError(str(path), lineno, "instances", f"more than {MAX_INSTANCES}")
        instances = []
        for i, inst in enumerate(raw_instances):
            where = f"instances[{i}]"
            if not isinstance(inst, dict):
                raise InputError(str(path), lineno, where, "expected an object")
            instances.append(EvalInstance(
                _text(path, lineno, inst, "input", required=False, where=f"{where}.input"),
                _text(path, lineno, inst, "output", required=False, where=f"{where}.output"),
            ))
        app = obj.get("motivation_app", "")
        yield EvalTask(task_id, instruction, tuple(instances),
                       app if isinstance(app, str) else "", str(path), lineno)


def read_eval_texts(
    path: Path, *, fields: Sequence[str] = (), id_field: str = DEFAULT_ID_FIELD
) -> Iterator[EvalText]:
    """Every text of an evaluation file. Without ``fields``: the paper's format
    (instruction and each instance's input and output). With ``fields``: those named
    top-level string fields, each required."""
    if not fields:
        for task in read_eval_tasks(path, id_field=id_field):
            yield EvalText(task.id, "instruction", task.instruction)
            for inst in task.instances:
                if inst.input:
                    yield EvalText(task.id, "input", inst.input)
                if inst.output:
                    yield EvalText(task.id, "output", inst.output)
        return
    for lineno, obj in iter_json_lines(path):
        item_id = _item_id(path, lineno, obj, id_field)
        for name in fields:
            yield EvalText(item_id, name, _text(path, lineno, obj, name))


DEFAULT_EVAL_SET = Path(__file__).resolve().parents[1] / "data" / "user_oriented_instructions.jsonl"
"""The paper's 252 user-oriented tasks, bundled: ``eval`` runs them and decontamination
protects them unless told otherwise."""
