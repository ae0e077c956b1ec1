"""Models' responses to an evaluation set, from `eval` output directories or from files in
the paper's predictions format, read into one shape.

Sources:

* an ``eval`` output directory: ``predictions.jsonl`` (``id``, ``instance``, ``response``,
  ...) and ``eval.json`` (the model's name);
* a JSONL file in the Self-Instruct paper's predictions format (``instruction``,
  ``input``, ``response``, optional ``target``; no id): each line is matched to its task of
  the evaluation set by instruction and input; the model is named after the file
  (``davinci_predictions.jsonl`` -> ``davinci``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from service.decontam.evalsets import EvalTask, iter_json_lines, read_eval_tasks
from service.errors import InputError

PREDICTIONS = "predictions.jsonl"
EVAL_JSON = "eval.json"
MAX_RESPONSE_CHARS = 200_000
_SUFFIX = "_predictions"


@dataclass(frozen=True)
class Response:
    task_id: str
    instance: int
    instruction: str
    input: str
    target: str
    response: str


@dataclass(frozen=True)
class ModelResponses:
    model: str
    source: str
    responses: dict[tuple[str, int], Response]


def _string(path: Path, line: int, obj: dict[str, object], name: str, *,
            required: bool = True) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise InputError(str(path), line, name, "missing")
    if not isinstance(value, str):
        raise InputError(str(path), line, name, f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_RESPONSE_CHARS:
        raise InputError(str(path), line, name, f"longer than {MAX_RESPONSE_CHARS} characters")
    return value


def _model_from_dir(directory: Path) -> str:
    meta = directory / EVAL_JSON
    if meta.is_file():
        try:
            data = orjson.loads(meta.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise InputError(str(meta), None, None, f"not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("model"), str) and data["model"]:
            return str(data["model"])
        raise InputError(str(meta), None, "model", "missing")
    return directory.name


def _load_eval_dir(directory: Path) -> ModelResponses:
    path = directory / PREDICTIONS
    if not path.is_file():
        raise InputError(str(directory), None, None,
                         f"not an eval output directory (no {PREDICTIONS})")
    responses: dict[tuple[str, int], Response] = {}
    for line, obj in iter_json_lines(path):
        task_id = _string(path, line, obj, "id")
        instance = obj.get("instance", 0)
        if isinstance(instance, bool) or not isinstance(instance, int) or instance < 0:
            raise InputError(str(path), line, "instance", "expected an integer >= 0")
        responses[(task_id, instance)] = Response(
            task_id, instance, _string(path, line, obj, "instruction"),
            _string(path, line, obj, "input", required=False),
            _string(path, line, obj, "target", required=False),
            _string(path, line, obj, "response"),
        )
    return ModelResponses(_model_from_dir(directory), str(directory), responses)


def _key(instruction: str, input_text: str) -> tuple[str, str]:
    return " ".join(instruction.split()), " ".join(input_text.split())


def _load_paper_file(path: Path, tasks: Sequence[EvalTask]) -> ModelResponses:
    by_text: dict[tuple[str, str], tuple[str, int]] = {}
    for task in tasks:
        for i, inst in enumerate(task.instances or ()):
            by_text.setdefault(_key(task.instruction, inst.input), (task.id, i))
    responses: dict[tuple[str, int], Response] = {}
    for line, obj in iter_json_lines(path):
        instruction = _string(path, line, obj, "instruction")
        input_text = _string(path, line, obj, "input", required=False)
        found = by_text.get(_key(instruction, input_text))
        if found is None:
            raise InputError(str(path), line, "instruction",
                             "matches no task (and input) of the evaluation set")
        task_id, instance = found
        responses[found] = Response(task_id, instance, instruction.strip(), input_text,
                                    _string(path, line, obj, "target", required=False),
                                    _string(path, line, obj, "response"))
    model = path.stem[: -len(_SUFFIX)] if path.stem.endswith(_SUFFIX) else path.stem
    return ModelResponses(model, str(path), responses)


def load_sources(sources: Iterable[Path], tasks_file: Path) -> list[ModelResponses]:
    """Every source's responses; two sources may not have the same model name."""
    tasks: list[EvalTask] | None = None
    loaded: list[ModelResponses] = []
    for source in sources:
        if source.is_dir():
            loaded.append(_load_eval_dir(source))
        elif source.is_file():
            if tasks is None:
                tasks = list(read_eval_tasks(tasks_file))
            loaded.append(_load_paper_file(source, tasks))
        else:
            raise InputError(str(source), None, None, "no such file or directory")
    names = [m.model for m in loaded]
    for m in loaded:
        if names.count(m.model) > 1:
            raise InputError(m.source, None, "model",
                             f"model name {m.model!r} is used by more than one source")
    return loaded
