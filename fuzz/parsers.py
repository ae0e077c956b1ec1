"""Coverage-guided fuzz target (atheris) for every parser of outside input.

What it feeds: the first byte of each input picks a target, the rest is the input:

    0  stage 1: parse_instruction_items, then clean_instruction + instruction_rejection
    1  stage 3: parse_classify_answer
    2  stage 4: parse_input_first, then filter_instances
    3  stage 4: parse_output_first, then filter_instances
    4  seed loader: load_seed_tasks on the bytes as a file
    5  config loader: load_config on the bytes as a TOML file
    6  simulator: answer() for the text as a prompt

It fails (an uncaught exception, which atheris reports with the input that caused it)
when anything other than the documented errors escapes (InputError, ConfigError), or
when a parser's result breaks its documented shape.

Run it by hand (atheris is not a dependency; it needs a CPython that it has wheels for):

    .venv/bin/pip install atheris
    mkdir -p fuzz/corpus
    .venv/bin/python fuzz/parsers.py fuzz/corpus -max_total_time=600   # ten minutes
    .venv/bin/python fuzz/parsers.py crash-<hash>                      # replay a crash

Any libFuzzer flag works (``-runs=N``, ``-max_len=4096``, ``-jobs=2``, ``-dict=...``).
The test suite imports this file without atheris (tests/test_fuzz.py runs
:func:`test_one_input` on a few inputs), so keep atheris imports inside :func:`main`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.config import Config, load_config  # noqa: E402
from service.errors import ConfigError, InputError  # noqa: E402
from service.generate.filters import clean_instruction, filter_instances, instruction_rejection  # noqa: E402
from service.generate.stages.classify import parse_classify_answer  # noqa: E402
from service.generate.stages.instances import parse_input_first, parse_output_first  # noqa: E402
from service.generate.stages.instructions import parse_instruction_items  # noqa: E402
from service.rundir.seeds import Instance, load_seed_tasks  # noqa: E402
from service.simulator.answers import AnswerSettings, answer, rng_for  # noqa: E402

FILTERS = Config().filters
_scratch: list[Path] = []  # one temporary directory, made on first use


def _scratch_file(name: str) -> Path:
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="fuzz-parsers-")))
    return _scratch[0] / name


def _check_instances(instances: list[Instance]) -> None:
    for inst in instances:
        if not (isinstance(inst, Instance) and isinstance(inst.input, str)
                and isinstance(inst.output, str)):
            raise AssertionError(f"bad instance {inst!r}")
    verdict = filter_instances(instances, FILTERS)
    if len(verdict.kept) > FILTERS.max_instances:
        raise AssertionError("more instances kept than allowed")
    for inst in verdict.kept:
        if not inst.output or inst.output == inst.input:
            raise AssertionError(f"filter kept a bad instance {inst!r}")


def test_one_input(data: bytes) -> None:
    """One fuzz input: see the module docstring for the layout."""
    if not data:
        return
    target, payload = data[0] % 7, data[1:]
    text = payload.decode("utf-8", "replace")
    if target == 0:
        for item in parse_instruction_items(text):
            if not item or item != " ".join(item.split()):
                raise AssertionError(f"unclean item {item!r}")
            rejection = instruction_rejection(clean_instruction(item), FILTERS)
            if rejection is not None and not isinstance(rejection[0], str):
                raise AssertionError("bad rejection")
    elif target == 1:
        if parse_classify_answer(text) not in (True, False, None):
            raise AssertionError("classify answer is not True/False/None")
    elif target == 2:
        _check_instances(parse_input_first(text))
    elif target == 3:
        _check_instances(parse_output_first(text))
    elif target == 4:
        path = _scratch_file("seeds.jsonl")
        path.write_bytes(payload)
        try:
            tasks = load_seed_tasks(path)
        except InputError:
            return
        if not tasks or any(not t.instruction.strip() for t in tasks):
            raise AssertionError("seed loader returned an empty task list or instruction")
    elif target == 5:
        path = _scratch_file("config.toml")
        path.write_bytes(payload)
        try:
            load_config(env={}, config_file=path)
        except ConfigError:
            return
    else:
        if not isinstance(answer(text, rng_for(text, 0, 0), AnswerSettings(0.2, 0.1)), str):
            raise AssertionError("simulator answer is not text")


def main() -> None:
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # only here

    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
