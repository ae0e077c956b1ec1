"""Every numeric flag is range-checked at parse time (config.RANGES through one argparse
type, _options.Ranged): the error names the flag, the value and the range."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from service.cli import build_parser
from service.commands._options import Ranged
from service.config import RANGES
from tests.conftest import PYTHON, ROOT

# (command, words before the flag, flag, bad value, the range the error must name)
CASES: list[tuple[str, list[str], str, str, str]] = [
    ("simulate", [], "--port", "70000", "an integer from 0 to 65535"),
    ("simulate", [], "--rpm", "0", "a number from 1 to 1e+08"),
    ("simulate", [], "--tpm", "-5", "a number from 1 to 1e+11"),
    ("simulate", [], "--burst-seconds", "0", "a number from 0.01 to 3600"),
    ("simulate", [], "--latency-ms", "-1", "a number from 0 to 600000"),
    ("simulate", [], "--jitter", "1.5", "a number from 0 to 1"),
    ("simulate", [], "--error-rate", "2", "a number from 0 to 1"),
    ("simulate", [], "--reset-rate", "-0.1", "a number from 0 to 1"),
    ("simulate", [], "--garbage-rate", "nan", "a number from 0 to 1"),
    ("simulate", [], "--hang-rate", "1.01", "a number from 0 to 1"),
    ("simulate", [], "--truncate-rate", "inf", "a number from 0 to 1"),
    ("simulate", [], "--duplicate-rate", "3", "a number from 0 to 1"),
    ("simulate", [], "--bad-item-rate", "-1", "a number from 0 to 1"),
    ("simulate", [], "--hang-seconds", "31", "a number from 0.001 to 30"),
    ("simulate", [], "--context-tokens", "0", "an integer from 1 to 10000000"),
    ("simulate", [], "--seed", "-1", "an integer from 0 to 9223372036854775807"),
    ("simulate", [], "--capacity", "0", "an integer from 1 to 100000"),
    ("simulate", [], "--batch-slowdown", "101", "a number from 0 to 100"),
    ("simulate", [], "--queue-limit", "1000001", "an integer from 0 to 1000000"),
    ("simulate", [], "--batch-api-turnaround", "-1", "a number from 0 to 86400"),
    ("simulate", [], "--batch-api-failure-rate", "1.5", "a number from 0 to 1"),
    ("simulate", [], "--batch-api-expire-rate", "1.5", "a number from 0 to 1"),
    ("bench", [], "--duration", "0", "a number from 0.01 to 86400"),
    ("bench", [], "--requests", "0", "an integer from 1 to 10000000"),
    ("bench", [], "--concurrency", "20000", "an integer from 1 to 10000"),
    ("bench", [], "--rpm", "0", "a number from 1 to 1e+08"),
    ("bench", [], "--tpm", "0", "a number from 1 to 1e+11"),
    ("bench", [], "--max-tokens", "0", "an integer from 1 to 1000000"),
    ("bench", [], "--prompt-tokens", "0", "an integer from 1 to 1000000"),
    ("bench", [], "--prompts-per-request", "101", "an integer from 1 to 100"),
    ("bench", [], "--max-attempts", "0", "an integer from 1 to 100"),
    ("bench", [], "--request-timeout", "0", "a number from 0.01 to 3600"),
    ("bench", [], "--seed", "-1", "an integer from 0 to 9223372036854775807"),
    ("generate", [], "--show", "-1", "an integer from 0 to 10000"),
    ("dedup", ["--in", "x.jsonl"], "--threshold", "1.5", "a number from 0 to 1"),
    ("export", ["run"], "--seed", "-1", "an integer from 0 to 9223372036854775807"),
    ("eval", [], "--rpm", "0", "a number from 1 to 1e+08"),
    ("eval", [], "--tpm", "0", "a number from 1 to 1e+11"),
    ("eval", [], "--request-timeout", "0", "a number from 0.01 to 3600"),
    ("eval", [], "--max-tokens", "100001", "an integer from 1 to 100000"),
    ("eval", [], "--temperature", "2.5", "a number from 0 to 2"),
    ("eval", [], "--limit", "0", "an integer from 1 to 1000"),
    ("eval-sheet", ["src", "--out", "page.html"], "--limit", "0", "an integer from 1 to 10000000"),
    ("eval-sheet", ["src", "--out", "page.html"], "--seed", "-1",
     "an integer from 0 to 9223372036854775807"),
    ("decontaminate", ["run"], "--ngram", "65", "an integer from 1 to 64"),
    ("decontaminate", ["run"], "--min-tokens", "0", "an integer from 1 to 64"),
    ("report", ["run"], "--overlap-sample", "-1", "an integer from 0 to 10000000"),
    ("report", ["run"], "--top", "1001", "an integer from 1 to 1000"),
]


@pytest.mark.parametrize(("command", "before", "flag", "value", "expected"), CASES,
                         ids=[f"{c[0]} {c[2]}" for c in CASES])
def test_out_of_range_flag_is_refused_at_parse_time_naming_flag_value_and_range(
        command: str, before: list[str], flag: str, value: str, expected: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser(command).parse_args([command, *before, f"{flag}={value}"])
    assert stopped.value.code == 2
    assert f"argument {flag}: expected {expected}, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "before", "flag", "value", "expected"), CASES,
                         ids=[f"{c[0]} {c[2]}" for c in CASES])
def test_the_range_is_shown_in_help(command: str, before: list[str], flag: str, value: str,
                                    expected: str) -> None:
    sub = next(a for a in build_parser(command)._actions  # argparse lists flags only here
               if isinstance(a, argparse._SubParsersAction))
    helps = [a.help for a in sub.choices[command]._actions if flag in a.option_strings]
    low = expected.split(" from ")[1].split(" to ")[0]
    assert len(helps) == 1 and helps[0] is not None
    assert f"(range {low}-" in helps[0]


def test_values_at_the_ends_of_the_range_are_accepted() -> None:
    share, port = Ranged("sim_share", float), Ranged("port")
    assert (share("0"), share("1"), port("0"), port("65535")) == (0.0, 1.0, 0, 65535)
    concurrency = build_parser("bench").parse_args(["bench", "--concurrency", "Auto"]).concurrency
    assert concurrency == "auto"
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected an integer, got '1\.5'"):
        port("1.5")


def test_a_range_name_missing_from_the_table_fails_when_the_flag_is_defined() -> None:
    assert "no_such_range" not in RANGES
    with pytest.raises(KeyError, match="no_such_range"):
        Ranged("no_such_range")


def test_the_real_command_line_refuses_an_out_of_range_flag() -> None:
    done = subprocess.run([PYTHON, "-m", "service", "simulate", "--error-rate", "1.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "argument --error-rate: expected a number from 0 to 1, got '1.5'" in done.stderr
