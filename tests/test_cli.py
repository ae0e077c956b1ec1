"""The command line stays fast and strict: ``--help`` imports no command module (nor the
heavy libraries behind them), a command imports only its own module, and no parser
accepts an abbreviated flag."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from service.cli import COMMANDS, main, requested_command
from tests.conftest import PYTHON, ROOT

HEAVY = ("aiohttp", "numpy", "rapidfuzz", "datasketch", "rouge_score", "prometheus_client")


def modules_after(argv: list[str]) -> set[str]:
    """``sys.modules`` after running the CLI with ``argv`` in a fresh interpreter."""
    code = (
        "import json, sys, contextlib, io\n"
        "from service.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def command_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith("service.commands.")}


def test_help_imports_no_command_module() -> None:
    modules = modules_after(["--help"])
    assert "service.cli" in modules  # the check ran the real CLI
    assert command_modules(modules) == set()
    assert not [m for m in HEAVY if m in modules]


@pytest.mark.parametrize("command", ["verify", "seeds", "export"])
def test_a_command_imports_only_its_own_module(command: str) -> None:
    modules = command_modules(modules_after([command, "--help"]))
    assert f"service.commands.{command}" in modules
    others = {f"service.commands.{name}" for name in COMMANDS if name != command}
    assert not modules & others


def test_every_command_is_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_text) in COMMANDS.items():
        assert name in out and help_text in out


def test_an_abbreviated_flag_is_refused(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    """``--mod`` must not be read as ``--model`` (nor any later flag that starts so)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "--mod", "x", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --mod" in capsys.readouterr().err


def test_the_full_flag_still_works(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "--model", "some-model", "--out", str(tmp_path / "run")]) == 0
    assert "some-model" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], None),
        (["--help"], None),
        (["generate", "--out", "x"], "generate"),
        (["--version", "verify"], "verify"),
        (["unknown", "generate"], None),  # the first word decides
        (["--", "generate"], None),
    ],
)
def test_requested_command(argv: list[str], expected: str | None) -> None:
    assert requested_command(argv) == expected


@pytest.mark.parametrize(("argv", "code"), [([], 2), (["nosuch"], 2)])
def test_no_or_unknown_command_exits_2(argv: list[str], code: int,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    try:
        result = main(argv)
    except SystemExit as exc:
        result = int(exc.code or 0)
    assert result == code
    captured = capsys.readouterr()
    assert "COMMAND" in captured.out + captured.err


def _parser_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, has allow_abbrev=False) for every ArgumentParser(...) / add_parser(...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("ArgumentParser", "add_parser"):
            continue
        strict = any(
            kw.arg == "allow_abbrev" and isinstance(kw.value, ast.Constant)
            and kw.value.value is False
            for kw in node.keywords
        )
        found.append((node.lineno, strict))
    return found


def test_every_parser_turns_off_prefix_matching() -> None:
    files = [ROOT / "service" / "cli.py", *sorted((ROOT / "service" / "commands").glob("*.py")),
             *sorted((ROOT / "benchmarks").glob("*.py"))]
    calls = {f"{path.relative_to(ROOT)}:{line}": strict
             for path in files for line, strict in _parser_calls(path)}
    assert "service/cli.py" in " ".join(calls)  # the scan sees the CLI's parsers
    assert [where for where, strict in calls.items() if not strict] == []
