"""`selfinstruct templates import`: the paper's prompts from a checkout, byte for byte, and
clear errors for a checkout that lacks them. The reference's own prompt expressions are
the oracle (tests/reference_oracle.py)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from service.cli import main
from service.commands.templates import import_templates
from service.errors import ConfigError, InputError
from service.generate.stages.classify import build_classify_prompt
from service.generate.stages.instances import build_input_first_prompt, build_output_first_prompt
from service.generate.stages.instructions import build_instruction_prompt, choose_examples
from service.generate.templates import Templates, load_templates
from tests import reference_oracle
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not reference_oracle.REFERENCE.is_dir(), reason="reference not present")


@pytest.fixture
def imported(tmp_path: Path) -> Templates:
    out = tmp_path / "reference.toml"
    assert main(["templates", "import", str(reference_oracle.REFERENCE), "--out", str(out)]) == 0
    return load_templates(out)


def _paper_instructions() -> list[str]:
    lines = (SHARED_DATA / "seed_tasks.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["instruction"] for line in lines if line.strip()]


def test_imported_prompts_equal_the_references_byte_for_byte(imported: Templates) -> None:
    assert imported.layout == "reference" and imported.source == "self-instruct"
    encode = reference_oracle.encode_prompt()
    seeds = _paper_instructions()
    rng = random.Random(5)
    machine = ["Write a limerick about a cat:", "  Describe\nthe   weather in Paris today. "]
    for n in range(40):
        classification = n % 4 == 0
        examples, _, _ = choose_examples(seeds, machine[: n % 3], rng)
        built = build_instruction_prompt(examples, imported, classification=classification)
        assert built.text == encode(examples, classification=classification)
    for instruction in ["Classify the sentiment of the tweet.", "  Write a poem about the sea:  ", seeds[3]]:
        assert build_classify_prompt([], instruction, imported) == reference_oracle.classify_prompt(instruction)
        assert build_output_first_prompt([], instruction, imported) == reference_oracle.instance_prompt(instruction, True)
        assert build_input_first_prompt([], instruction, imported) == reference_oracle.instance_prompt(instruction, False)


def test_project_layout_strips_trailing_colons_of_examples() -> None:
    prompt = build_instruction_prompt(["List three fruits:", "Name a color"], load_templates())
    assert "1. List three fruits\n2. Name a color\n3." in prompt.text


def _checkout(tmp_path: Path) -> Path:
    copy = tmp_path / "self-instruct" / "self_instruct"
    shutil.copytree(reference_oracle.REFERENCE, copy)
    return copy


def test_import_reads_the_repository_root_and_never_executes_the_files(tmp_path: Path) -> None:
    copy = _checkout(tmp_path)
    marker = tmp_path / "executed"
    for name in ("bootstrap_instructions.py", "templates/clf_task_template.py"):
        path = copy / name
        path.write_text(f"open({str(marker)!r}, 'w').write('x')\n" + path.read_text(encoding="utf-8"),
                        encoding="utf-8")
    text, origin = import_templates(copy.parent)  # the root: finds self_instruct/
    assert origin == str(copy) and 'layout = "reference"' in text
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("rm templates/clf_task_template.py", "clf_task_template.py: not found"),
        ("rm identify_clf_or_not.py", "identify_clf_or_not.py: not found"),
        ("sub templates/instance_gen_template.py input_first_template_for_gen =|other_name =",
         "instance_gen_template.py: field 'input_first_template_for_gen': missing"),
        ("sub templates/clf_task_template.py \\n\\nTask:'''|\\n\\n'''",
         "clf_task_template.py: field 'template_1': does not end with 'Task:'"),
        ("sub bootstrap_instructions.py def encode_prompt|def other_prompt",
         "bootstrap_instructions.py: field 'encode_prompt': missing"),
        ("sub identify_clf_or_not.py \"Is it classification?\"|\"Is it a task?\"",
         "does not occur in the classification template"),
        ("sub templates/clf_task_template.py template_1 = '''|template_1 = (",
         "clf_task_template.py:57: not valid Python"),
    ],
)
def test_import_errors_name_the_file_and_what_is_missing(tmp_path: Path, change: str, expected: str) -> None:
    copy = _checkout(tmp_path)
    verb, rest = change.split(" ", 1)
    if verb == "rm":
        (copy / rest).unlink()
    else:
        name, pattern = rest.split(" ", 1)
        old, new = pattern.split("|")
        old, new = old.replace("\\n", "\n"), new.replace("\\n", "\n")
        path = copy / name
        source = path.read_text(encoding="utf-8")
        assert old in source
        path.write_text(source.replace(old, new), encoding="utf-8")
    with pytest.raises(InputError) as info:
        import_templates(copy)
    assert expected in str(info.value)


def test_import_alpaca_prompt_and_unknown_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alpaca = tmp_path / "alpaca"
    alpaca.mkdir()
    (alpaca / "prompt.txt").write_text("You are asked to come up with tasks.\nList of 20 tasks:\n", encoding="utf-8")
    out = tmp_path / "alpaca.toml"
    assert main(["templates", "import", str(alpaca), "--out", str(out)]) == 0
    templates = load_templates(out)
    assert templates.alpaca_prompt.endswith("List of 20 tasks:\n") and templates.layout == "project"
    (alpaca / "prompt.txt").write_text("  \n", encoding="utf-8")
    assert main(["templates", "import", str(alpaca), "--out", str(out)]) == 2
    assert "prompt.txt: empty" in capsys.readouterr().err
    assert main(["templates", "import", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["templates", "import", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "neither a Self-Instruct checkout" in capsys.readouterr().err
    assert load_templates(out).alpaca_prompt.endswith("List of 20 tasks:\n")  # left as it was


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('layout = "paper"\n', "key 'layout'"),
        ('[classify]\nprefix = 3\n', "key 'classify.prefix': expected a string"),
        ('[classify]\nnope = "x"\n', "key 'classify.nope': unknown key"),
        ('layout = "reference"\n[classify]\nprefix = "x Task:"\n', "needs instances.input_first_prefix"),
        ("[classify\n", "invalid TOML"),
    ],
)
def test_bad_templates_file_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_templates(path)
    assert str(path) in str(info.value) and expected in str(info.value)
