"""Configuration layers, validation messages and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from service.config import Config, Secret, load_config, render
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
        ({"target": "0"}, {}, "", "'target' (from flags): expected a positive integer, got '0'"),
        ({"target": "ten"}, {}, "", "'target' (from flags): expected an integer, got 'ten'"),
        ({"threshold": "1.5"}, {}, "", "'threshold' (from flags): expected a number between 0 and 1"),
        ({"threshold": "nan"}, {}, "", "'threshold' (from flags): expected a finite number"),
        ({}, {"SELFINSTRUCT_RPM": "-3"}, "", "'rpm' (from environment SELFINSTRUCT_RPM)"),
        ({}, {"SELFINSTRUCT_QUIET": "maybe"}, "", "'quiet' (from environment SELFINSTRUCT_QUIET): expected true or false"),
        ({"api": "soap"}, {}, "", "'api' (from flags): expected one of chat, completions"),
        ({"base_url": "ftp://x"}, {}, "", "'base_url' (from flags): expected an http"),
        ({}, {}, "tagret = 5\n", "'tagret' (from "),
        ({}, {}, "target = 'x'\n", "'target' (from "),
        ({}, {}, "[stages.bogus]\nmodel='m'\n", "'stages.bogus'"),
        ({}, {}, "[stages.classify]\ntemprature=1\n", "'stages.classify.temprature'"),
        ({}, {}, "[stages.classify]\ntemperature=9\n", "between 0 and 2"),
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
