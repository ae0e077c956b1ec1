"""The documents cite tests as proof; a renamed or removed test must not leave a citation
pointing at nothing. ``test_x.py::test_name`` (or ``tests/test_x.py::...``) names a test
function of that file; a bare ``::test_name`` continues the file named last before it; a
trailing ``*`` stands for every test starting so."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = ("RELIABILITY.md", "README.md", "ARCHITECTURE.md")
CITATION = re.compile(r"(?:(?:tests/)?(test_\w+\.py))?::(test_\w+\*?)")


def defined_tests(path: Path) -> set[str]:
    """Every test function defined in ``path`` (module level or in a class)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test_")}


def citations(text: str) -> list[tuple[int, str, str]]:
    """(line, file, test name) of every citation, bare ``::name`` resolved to the last file."""
    found: list[tuple[int, str, str]] = []
    last_file = ""
    for number, line in enumerate(text.splitlines(), start=1):
        for match in CITATION.finditer(line):
            last_file = match.group(1) or last_file
            found.append((number, last_file, match.group(2)))
    return found


def test_citations_are_found_and_resolved() -> None:
    text = "`tests/test_a.py::test_one`, `::test_two`\n`test_b.py::test_three*`"
    assert citations(text) == [(1, "test_a.py", "test_one"), (1, "test_a.py", "test_two"),
                               (2, "test_b.py", "test_three*")]


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_test_exists(doc: str) -> None:
    cited = citations((ROOT / doc).read_text(encoding="utf-8"))
    assert cited or doc != "RELIABILITY.md", "RELIABILITY.md cites no test: the parser broke"
    missing = []
    for number, file, name in cited:
        path = ROOT / "tests" / file
        if not file or not path.is_file():
            missing.append(f"{doc}:{number}: {file or '(no file named before)'}::{name}: "
                           "no such test file")
            continue
        defined = defined_tests(path)
        if name.endswith("*"):
            ok = any(test.startswith(name[:-1]) for test in defined)
        else:
            ok = name in defined
        if not ok:
            missing.append(f"{doc}:{number}: {file}::{name}: no such test function")
    assert not missing, "\n".join(missing)
