"""Configuration layers, validation messages and redaction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from service.cli import main
from service.config import RANGES, Config, FilterConfig, Secret, StageConfig, load_config, render
from service.errors import ConfigError


def test_defaults_follow_the_reference_method() -> None:
    config, sources = load_config({}, env={})
    assert config.threshold == 0.7 and config.inclusive_threshold is False
    assert config.num_prompt_instructions == 8 and config.num_machine_instructions == 2
    assert config.stage("instructions").temperature == 0.7
    assert config.stage("instructions").top_p == 0.5
    assert config.stage("instructions").presence_penalty == 2.0
    assert config.stage("classify").max_tokens == 3
    assert config.stage("instances").presence_penalty == 1.5
    assert sources == {}


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('target = 10\nrpm = 100\ntpm = 5000\nmodel = "from-file"\n')
    env = {"SELFINSTRUCT_RPM": "200", "SELFINSTRUCT_MODEL": "from-env"}
    config, sources = load_config({"model": "from-flag", "target": None}, env=env, config_file=toml)
    assert config.model == "from-flag" and sources["model"] == "from flags"
    assert config.rpm == 200 and "SELFINSTRUCT_RPM" in sources["rpm"]
    assert config.tpm == 5000 and str(toml) in sources["tpm"]
    assert config.target == 10  # a flag given as None does not override


def test_openai_env_names_and_selfinstruct_override() -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1/", "OPENAI_API_KEY": "sk-x"}
    config, _ = load_config({}, env=env)
    assert config.base_url == "http://127.0.0.1:1/v1"
    assert isinstance(config.api_key, Secret) and config.api_key.get() == "sk-x"
    env["SELFINSTRUCT_BASE_URL"] = "http://127.0.0.1:2/v1"
    config, _ = load_config({}, env=env)
    assert config.base_url == "http://127.0.0.1:2/v1"


def test_stage_overrides_from_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[stages.instances]\nmodel = "strong"\ntemperature = 0.2\n[filters]\nmax_words = 99\n')
    config, _ = load_config({}, env={}, config_file=toml)
    assert config.stage("instances").model == "strong"
    assert config.stage("instances").temperature == 0.2
    assert config.stage("instances").presence_penalty == 1.5  # default kept
    assert config.stage("instructions").model is None
    assert config.filters.max_words == 99


@pytest.mark.parametrize(
    ("flags", "env", "toml", "message"),
    [
        ({"target": "0"}, {}, "", "'target' (from flags): expected an integer from 1 to 10000000, got '0'"),
        ({"target": "ten"}, {}, "", "'target' (from flags): expected an integer, got 'ten'"),
        ({"threshold": "1.5"}, {}, "", "'threshold' (from flags): expected a number from 0 to 1"),
        ({"threshold": "nan"}, {}, "", "'threshold' (from flags): expected a finite number"),
        ({}, {"SELFINSTRUCT_RPM": "-3"}, "", "'rpm' (from environment SELFINSTRUCT_RPM)"),
        ({}, {"SELFINSTRUCT_QUIET": "maybe"}, "", "'quiet' (from environment SELFINSTRUCT_QUIET): expected true or false"),
        ({"api": "soap"}, {}, "", "'api' (from flags): expected one of chat, completions"),
        ({"base_url": "ftp://x"}, {}, "", "'base_url' (from flags): expected an http"),
        ({}, {}, "tagret = 5\n", "'tagret' (from "),
        ({}, {}, "target = 'x'\n", "'target' (from "),
        ({}, {}, "[stages.bogus]\nmodel='m'\n", "'stages.bogus'"),
        ({}, {}, "[stages.classify]\ntemprature=1\n", "'stages.classify.temprature'"),
        ({}, {}, "[stages.classify]\ntemperature=9\n", "a number from 0 to 2"),
        ({}, {}, "[filters]\nmin_words = 200\n", "'filters.min_words'"),
        ({}, {}, "target = [\n", "invalid TOML"),
        ({"run_id": "../../etc"}, {}, "", "'run_id' (from flags)"),
    ],
)
def test_bad_values_name_key_source_and_value(
    tmp_path: Path, flags: dict[str, str], env: dict[str, str], toml: str, message: str
) -> None:
    config_file = None
    if toml:
        config_file = tmp_path / "bad.toml"
        config_file.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(flags, env=env, config_file=config_file)
    assert message in str(info.value)


def test_api_key_is_never_a_flag_and_never_shown() -> None:
    with pytest.raises(ConfigError, match="never a flag"):
        load_config({"api_key": "sk-canary-123"}, env={})
    config, sources = load_config({}, env={"OPENAI_API_KEY": "sk-canary-123"})
    assert "sk-canary-123" not in repr(config)
    assert "sk-canary-123" not in str(config.redacted())
    assert "sk-canary-123" not in render(config, sources)


def test_config_command_prints_redacted(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-456")
    monkeypatch.setenv("SELFINSTRUCT_TPM", "90000")
    assert main(["config", "--target", "7", "--rpm", "60"]) == 0
    out = capsys.readouterr().out
    assert "sk-canary-456" not in out
    assert 'api_key = "***"' in out
    assert "target = 7  # from flags" in out
    assert "tpm = 90000  # from environment SELFINSTRUCT_TPM" in out
    assert main(["config", "--json"]) == 0
    assert "sk-canary-456" not in capsys.readouterr().out


def test_config_command_bad_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--target", "-1"]) == 2
    assert "config key 'target'" in capsys.readouterr().err


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.target = 5  # type: ignore[misc]


def test_price_table_from_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[prices."gpt-x"]\ninput_per_1m = 0.5\noutput_per_1m = 1.5\n'
                    '[prices.small]\ninput_per_1m = 0.1\n')
    config, sources = load_config(config_file=path, env={})
    assert config.prices == {"gpt-x": (0.5, 1.5), "small": (0.1, 0.0)}
    assert '[prices."gpt-x"]' in render(config, sources)


@pytest.mark.parametrize(
    ("toml", "message"),
    [('prices = 3\n', "config key 'prices'"),
     ('[prices.m]\ninput_per_1m = -1\n', "config key 'prices.m.input_per_1m'"),
     ('[prices.m]\ninput_per_1m = "x"\n', "config key 'prices.m.input_per_1m'"),
     ('[prices.m]\ncost = 1\n', "config key 'prices.m.cost'")],
)
def test_bad_price_table(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(config_file=path, env={})


def _numeric_fields() -> list[tuple[str, str]]:
    """(table, key) for every int or float option of the configuration."""
    found = []
    for table, cls in (("", Config), ("stages.instances.", StageConfig),
                       ("filters.", FilterConfig)):
        for f in dataclasses.fields(cls):
            if ("int" in str(f.type) or "float" in str(f.type)) and f.name not in ("prices", "cached_input_prices"):
                found.append((table, f.name))
    return found


def test_every_numeric_option_has_a_range() -> None:
    missing = [key for _, key in _numeric_fields() if key not in RANGES]
    assert missing == []
    assert all(low <= high for low, high in RANGES.values())


@pytest.mark.parametrize(("table", "key"), _numeric_fields())
def test_every_numeric_option_is_refused_past_its_range_in_every_layer(
        tmp_path: Path, table: str, key: str) -> None:
    low, high = RANGES[key]
    fractions = {"threshold", "classification_share", "top_p", "temperature",
                 "presence_penalty", "frequency_penalty"}
    is_int = float(low).is_integer() and float(high).is_integer() and key not in fractions
    too_big = int(high) + 1 if is_int else high * 2 + 1
    too_small = int(low) - 1 if is_int else low - abs(low) - 1
    for bad in (too_big, too_small):
        toml = tmp_path / "c.toml"
        if table:
            section = table.rstrip(".")
            toml.write_text(f"[{section}]\n{key} = {bad!r}\n")
        else:
            toml.write_text(f"{key} = {bad!r}\n")
        with pytest.raises(ConfigError, match=f"'{table}{key}' \\(from {toml}\\): expected"):
            load_config({}, env={}, config_file=toml)
        if not table:  # top-level keys also come from flags and the environment
            with pytest.raises(ConfigError, match=f"'{key}' \\(from flags\\): expected"):
                load_config({key: str(bad)}, env={})
            name = "SELFINSTRUCT_" + key.upper()
            with pytest.raises(ConfigError, match=f"'{key}' \\(from environment {name}\\)"):
                load_config({}, env={name: str(bad)})
    # the bounds themselves are accepted
    edge = int(high) if is_int else high
    toml = tmp_path / "ok.toml"
    toml.write_text((f"[{table.rstrip('.')}]\n" if table else "") + f"{key} = {edge!r}\n")
    if key not in {"num_prompt_instructions", "num_machine_instructions", "min_words"}:
        load_config({}, env={}, config_file=toml)  # (those three are also checked together)


def test_prices_have_a_range(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[prices.m]\ninput_per_1m = 1e300\n')
    with pytest.raises(ConfigError, match=r"prices\.m\.input_per_1m.*from 0 to 1e"):
        load_config(config_file=path, env={})
