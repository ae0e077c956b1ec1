"""`selfinstruct templates import DIR --out FILE`: the paper's prompts, brought by the user.

Reads a checkout of the Self-Instruct reference code (``bootstrap_instructions.py``,
``identify_clf_or_not.py``, ``templates/clf_task_template.py``,
``templates/instance_gen_template.py``; DIR may be the repository root or its
``self_instruct/`` folder) or of Stanford Alpaca (``prompt.txt``), and writes a templates
file for ``generate --templates FILE``. The Python files are parsed with ``ast`` for their
string constants: never imported, never executed. The project ships none of this text.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import warnings
from pathlib import Path

from service.errors import InputError
from service.generate.templates import load_templates, render_templates

MAX_SOURCE_BYTES = 4 * 1024 * 1024
TASK_SLOT = "Task:"  # the reference's prefixes end here; the task is appended after it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="read a reference or Alpaca checkout, write a templates file",
                         allow_abbrev=False)
    imp.add_argument("source", type=Path, metavar="DIR",
                     help="a checkout of yizhongw/self-instruct (or its self_instruct/ folder) "
                          "or of tatsu-lab/stanford_alpaca")
    imp.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="the templates file to write (TOML)")


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_SOURCE_BYTES:
            raise InputError(str(path), None, None, f"larger than {MAX_SOURCE_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(path), None, None, "not found (needed to import the templates)") from None
    except UnicodeDecodeError:
        raise InputError(str(path), None, None, "not UTF-8 text") from None
    except OSError as exc:
        raise InputError(str(path), None, None, f"unreadable ({exc.strerror})") from None


def _parse(path: Path) -> ast.Module:
    text = _read_text(path)
    try:
        with warnings.catch_warnings():  # e.g. "invalid escape sequence" in the user's file
            warnings.simplefilter("ignore")
            return ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise InputError(str(path), exc.lineno, None, f"not valid Python ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise InputError(str(path), None, None, "not parseable Python") from None


def _module_string(path: Path, name: str) -> str:
    """The string a module-level ``name = "..."`` assigns."""
    for node in _parse(path).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
            raise InputError(str(path), node.lineno, name, "is not a plain string constant")
    raise InputError(str(path), None, name, "missing (no module-level string of that name)")


def _prefix(path: Path, name: str) -> str:
    text = _module_string(path, name)
    if not text.rstrip().endswith(TASK_SLOT):
        raise InputError(str(path), None, name,
                         f"does not end with '{TASK_SLOT}' (the slot the task is appended to)")
    return text


def _list_headers(path: Path) -> tuple[str, str]:
    """(plain, classification) headers: the strings ``encode_prompt`` starts its prompt
    with in the two branches of its ``if classification:``."""
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.FunctionDef) and node.name == "encode_prompt":
            for stmt in node.body:
                if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "classification":
                    clf, plain = _assigned_string(stmt.body), _assigned_string(stmt.orelse)
                    if clf is None or plain is None:
                        break
                    return plain, clf
            raise InputError(str(path), node.lineno, "encode_prompt",
                             "no 'if classification:' branches assigning the prompt's header strings")
    raise InputError(str(path), None, "encode_prompt", "missing (the function that builds the list prompt)")


def _assigned_string(body: list[ast.stmt]) -> str | None:
    for stmt in body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            return stmt.value.value
    return None


def _classify_question(path: Path, template: str) -> str:
    """The question appended after the task: the string constant ending in '?' that the
    prompt expression adds, and that the few-shot template itself uses."""
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            right = node.right
            if isinstance(right, ast.Constant) and isinstance(right.value, str) and right.value.endswith("?"):
                if right.value not in template:
                    raise InputError(str(path), node.lineno, "question",
                                     f"{right.value!r} does not occur in the classification template")
                return right.value
    raise InputError(str(path), None, "question",
                     "missing (no '... + \"<question>?\"' expression building the classify prompt)")


def _reference_dir(source: Path) -> Path | None:
    for candidate in (source, source / "self_instruct"):
        if (candidate / "bootstrap_instructions.py").is_file():
            return candidate
    return None


def import_templates(source: Path) -> tuple[str, str]:
    """(templates file text, what it was read from)."""
    if not source.is_dir():
        raise InputError(str(source), None, None, "not a directory")
    ref = _reference_dir(source)
    if ref is not None:
        plain, clf = _list_headers(ref / "bootstrap_instructions.py")
        clf_template = _prefix(ref / "templates" / "clf_task_template.py", "template_1")
        question = _classify_question(ref / "identify_clf_or_not.py", clf_template)
        instance_file = ref / "templates" / "instance_gen_template.py"
        values = {
            ("instructions", "header"): plain,
            ("instructions", "classification_header"): clf,
            ("classify", "prefix"): clf_template,
            ("classify", "question"): question,
            ("instances", "output_first_prefix"): _prefix(instance_file, "output_first_template_for_clf"),
            ("instances", "input_first_prefix"): _prefix(instance_file, "input_first_template_for_gen"),
        }
        note = (f"Prompt templates imported from the Self-Instruct reference code at {ref}\n"
                "(Apache-2.0, Wang et al. 2022) by `selfinstruct templates import`; use with\n"
                "`selfinstruct generate --templates THIS_FILE` (add --compat reference for the\n"
                "reference's parsing and filters too).")
        return render_templates(values, layout="reference", source="self-instruct", note=note), str(ref)
    prompt_file = source / "prompt.txt"
    if prompt_file.is_file():
        prompt = _read_text(prompt_file)
        if not prompt.strip():
            raise InputError(str(prompt_file), None, None, "empty (the Alpaca prompt's requirements text)")
        note = (f"Alpaca prompt imported from {prompt_file} by `selfinstruct templates import`;\n"
                "use with `selfinstruct generate --method alpaca --templates THIS_FILE`.")
        text = render_templates({("alpaca", "prompt"): prompt}, layout="project", source="alpaca", note=note)
        return text, str(prompt_file)
    raise InputError(str(source), None, None,
                     "neither a Self-Instruct checkout (bootstrap_instructions.py, here or in "
                     "self_instruct/) nor a Stanford Alpaca checkout (prompt.txt)")


def run(args: argparse.Namespace) -> int:
    text, origin = import_templates(args.source)
    out: Path = args.out
    partial = out.with_name(out.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    try:
        load_templates.cache_clear()
        load_templates(partial)  # what was written must load back (and to the same text)
    except Exception:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    load_templates.cache_clear()
    print(f"templates from {origin} written to {out}", file=sys.stderr)
    return 0
