"""Test-only oracle: the reference code's own prompt builders, taken from its files.

The project never imports or executes the reference (``templates import`` only reads
string constants); its tests do, to check that the prompts the project builds from
imported templates are byte-identical to what the reference's own expressions build.
Only the prompt-building expressions are compiled (with ``ast``), not the modules, so
the reference's dependencies (openai, tqdm, ...) are not needed.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "self_instruct"


def _tree(name: str) -> ast.Module:
    with warnings.catch_warnings():  # the reference has a "\s" in a plain string
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse((REFERENCE / name).read_text(encoding="utf-8"))


def _constant(name: str, variable: str) -> str:
    for node in _tree(name).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == variable for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError(f"{variable} not in {name}")


def encode_prompt() -> Callable[..., str]:
    """bootstrap_instructions.encode_prompt(prompt_instructions, classification=False)."""
    tree = _tree("bootstrap_instructions.py")
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "encode_prompt")
    namespace: dict[str, Any] = {"re": re}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "bootstrap_instructions.py", "exec"), namespace)
    func: Callable[..., str] = namespace["encode_prompt"]
    return func


def classify_prompt(instruction: str) -> str:
    """The prompt identify_clf_or_not.py builds for one instruction (its list comprehension)."""
    comp = next(n for n in ast.walk(_tree("identify_clf_or_not.py")) if isinstance(n, ast.ListComp)
                and any(isinstance(x, ast.Name) and x.id == "prefix" for x in ast.walk(n.elt)))
    code = compile(ast.Expression(body=comp.elt), "identify_clf_or_not.py", "eval")
    prefix = _constant("templates/clf_task_template.py", "template_1")
    value = eval(code, {"prefix": prefix, "d": {"instruction": instruction}})
    assert isinstance(value, str)
    return value


def instance_prompt(instruction: str, classification: bool) -> str:
    """The prompt generate_instances.py builds for one task (its two ``prompt = ...``)."""
    wanted = "output_first_template_for_clf" if classification else "input_first_template_for_gen"
    for node in ast.walk(_tree("generate_instances.py")):
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "prompt"
                and any(isinstance(n, ast.Name) and n.id == wanted for n in ast.walk(node.value))):
            code = compile(ast.Expression(body=node.value), "generate_instances.py", "eval")
            names = {wanted: _constant("templates/instance_gen_template.py", wanted),
                     "task": {"instruction": instruction}}
            value = eval(code, names)
            assert isinstance(value, str)
            return value
    raise AssertionError(f"no prompt built from {wanted}")


def finetuning_records(training_instances: list[tuple[str, str, str]], rng: Any) -> list[dict[str, str]]:
    """prepare_for_finetuning.py's steps from ``gpt3_instances = []`` to the shuffle, run on
    ``training_instances`` with ``rng`` as its ``random`` module."""
    tree = _tree("prepare_for_finetuning.py")
    encode = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "encode_instance")
    main = next(n for n in tree.body if isinstance(n, ast.If))
    start = next(i for i, s in enumerate(main.body)
                 if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name)
                 and s.targets[0].id == "gpt3_instances")
    end = next(i for i, s in enumerate(main.body)
               if isinstance(s, ast.Expr) and "shuffle" in ast.unparse(s))
    namespace: dict[str, Any] = {"random": rng, "re": re, "training_instances": training_instances}
    module = ast.Module(body=[encode, *main.body[start : end + 1]], type_ignores=[])
    exec(compile(module, "prepare_for_finetuning.py", "exec"), namespace)
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in namespace["gpt3_instances"]]
