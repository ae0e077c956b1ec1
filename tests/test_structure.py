"""The code's shape, checked: components talk through seams, never through each other's
underscore names; the pipeline stays split by concern; every folder of service/ says
what lives in it.

tests/ is exempt from the underscore rule (a test may look inside what it tests).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCANNED = ("service", "dedup", "benchmarks", "prompts")

# (file, expression) -> why it is allowed. Only names outside the project's control.
ALLOWED = {
    ("service/commands/_options.py", "parser._actions"):
        "argparse has no public way to list a parser's flags",
    ("service/llm/local.py", "os._exit"): "os._exit is documented, public API",
    ("benchmarks/dedup.py", "scorer._tokenizer"):
        "the baseline is rouge-score's own tokenizer, as the reference used it",
    ("benchmarks/dedup.py", "rouge_scorer._score_lcs"):
        "the baseline is rouge-score's own LCS, as the reference used it",
    ("service/rundir/verify.py", "getattr(..., '_score_lcs')"):
        "rouge-score's LCS on pre-tokenized texts, with its public score() as fallback",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_names(tree: ast.AST) -> set[str]:
    """Underscore names this module defines: functions, classes, attributes it assigns
    through ``self``/``cls``, class-level names and ``__slots__`` entries."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in ("self", "cls"):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            own.update(c.value for c in ast.walk(node.value)
                       if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return {name for name in own if _private(name)}


def violations(source: str, filename: str) -> list[str]:
    """Every place ``source`` imports, reads or assigns another module's underscore name."""
    tree = ast.parse(source, filename)
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{filename}:{node.lineno}: imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own:
                continue  # the same module's own name (e.g. a helper class's field)
            expr = ast.unparse(node)
            if (filename, expr) not in ALLOWED:
                found.append(f"{filename}:{node.lineno}: uses {expr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and _private(node.args[1].value) \
                and node.args[1].value not in own:
            expr = f"{node.func.id}(..., {node.args[1].value!r})"
            if (filename, expr) not in ALLOWED:
                found.append(f"{filename}:{node.lineno}: {expr}")
    return found


def project_files() -> list[Path]:
    return [p for top in SCANNED for p in sorted((ROOT / top).rglob("*.py"))
            if "__pycache__" not in p.parts]


def test_no_module_touches_another_modules_underscore_names() -> None:
    files = project_files()
    assert len(files) > 50  # the scan found the tree
    found = []
    for path in files:
        found += violations(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("from service.generate.pipeline import _task_number\n", True),
        ("pipeline._admit = wrap(pipeline._admit)\n", True),
        ("for c in backend._clients.values(): pass\n", True),
        ("n = getattr(pipeline, '_queued_candidates', 0)\n", True),
        ("setattr(limiter, '_acquire', f)\n", True),
        ("class A:\n    def f(self):\n        return self._x\n", False),
        ("class P:\n    __slots__ = ('_owner',)\n\ndef f(p):\n    return p._owner\n", False),
        ("pipeline.request_stop('interrupted')\n", False),
        ("x = obj.__class__\n", False),
    ],
)
def test_the_scan_catches_what_it_should(source: str, bad: bool) -> None:
    assert bool(violations(source, "example.py")) is bad


def test_pipeline_stays_small() -> None:
    lines = (ROOT / "service" / "generate" / "pipeline.py").read_text().count("\n")
    assert lines < 400, f"pipeline.py has {lines} lines: move a concern into its own module"


def test_every_service_folder_says_what_lives_there() -> None:
    folders = [d for d in (ROOT / "service").rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))]
    assert len(folders) >= 5
    missing = []
    for folder in [ROOT / "service", *folders]:
        init = folder / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) if init.exists() else None
        if not doc or not doc.splitlines()[0].strip():
            missing.append(str(folder.relative_to(ROOT)))
    assert missing == []
