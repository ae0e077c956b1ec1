"""Configuration: frozen dataclasses, loaded from four layers.

Precedence, highest first: command-line flags > environment (``OPENAI_API_KEY``,
``OPENAI_BASE_URL``, ``SELFINSTRUCT_<KEY>``) > TOML file (``--config``) > defaults.
Every value is validated on load; an error names the key, the layer it came from and
the bad value (never the value of a secret).

TOML layout::

    target = 2000
    base_url = "http://127.0.0.1:8000/v1"
    rpm = 3500
    [filters]
    min_words = 4
    [stages.instances]          # per-stage endpoint/model/sampling overrides
    model = "a-stronger-model"
    temperature = 0.0
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from dedup import INDEXES, TOKENIZERS, IndexName, TokenizerName
from service.errors import ConfigError
from service.generate.compat import ALPACA_EXTRA_BLACKLIST, COMPAT_MODES, REFERENCE_BLACKLIST
from service.llm.constants import (
    DEFAULT_GIVE_UP_AFTER_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_ADAPTIVE_IN_FLIGHT,
)
from service.secret import Secret as Secret  # re-exported: config users import it here
from service.secret import safe_url

ENV_PREFIX = "SELFINSTRUCT_"
STAGES = ("instructions", "classify", "instances")
ApiKind = Literal["chat", "completions"]
RunMode = Literal["online", "batch"]
BatchBackend = Literal["openai", "files"]
# Where the dedup pool lives: a thread of the generate process, or a child process of its
# own (its own interpreter lock and core; see service/generate/admission.py).
AdmissionMode = Literal["thread", "process"]
METHODS = ("self-instruct", "alpaca")
TASK_KINDS = ("all", "generation", "classification")
_LITERALS = {"api", "tokenizer", "dedup_index", "compat", "method", "task_kinds", "admission",
             "mode", "batch_backend"}


@dataclass(frozen=True)
class StageConfig:
    """Sampling and an optional endpoint override for one pipeline stage.

    ``None`` endpoint fields mean "use the run's endpoint"; the paper gained quality when a
    stronger model wrote the instance outputs, which is what these overrides are for.
    """

    model: str | None = None
    base_url: str | None = None
    api: ApiKind | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 300
    # instances stage: max_tokens of a classification task's call (its prompt is longer);
    # None: max_tokens. Never above max_tokens.
    classification_max_tokens: int | None = None


def default_stages() -> dict[str, StageConfig]:
    """The reference method's sampling per stage (the paper's settings)."""
    return {
        "instructions": StageConfig(
            temperature=0.7, top_p=0.5, presence_penalty=2.0, max_tokens=1024
        ),
        "classify": StageConfig(temperature=0.0, top_p=0.0, max_tokens=3),
        # 350 tokens for a generation task, 300 for a classification task, as the reference
        "instances": StageConfig(temperature=0.0, top_p=0.0, presence_penalty=1.5, max_tokens=350,
                                 classification_max_tokens=300),
    }


@dataclass(frozen=True)
class FilterConfig:
    """The reference's instruction and instance filters (all on by default)."""

    min_words: int = 4  # the reference drops <= 3 words
    max_words: int = 150
    blacklist: tuple[str, ...] = REFERENCE_BLACKLIST  # the reference's 13
    alpaca_blacklist: bool = False  # also ban Stanford Alpaca's 5 extra words
    drop_write_a_program: bool = True
    drop_leading_punctuation: bool = True
    drop_non_ascii_start: bool = True
    max_instances: int = 5


def effective_blacklist(filters: FilterConfig) -> tuple[str, ...]:
    """The banned words a run uses: the configured list, plus Alpaca's when asked."""
    if not filters.alpaca_blacklist:
        return filters.blacklist
    return filters.blacklist + tuple(w for w in ALPACA_EXTRA_BLACKLIST if w not in filters.blacklist)


@dataclass(frozen=True)
class Config:
    """Everything `generate` (and friends) need, after all layers are merged."""

    out: Path = Path("runs/default")
    target: int = 100
    seed_tasks: Path | None = None
    seed: int = 0

    # endpoint
    base_url: str | None = None
    api_key: Secret | None = None
    model: str | None = None
    api: ApiKind = "completions"
    rpm: int | None = None
    tpm: int | None = None
    # None: sized by Little's law from the rate in force (configured or learned) and the
    # measured latency, NO_RATE_IN_FLIGHT (256) while no rate is known; "auto": the
    # adaptive limit driven by latency (servers that queue instead of answering 429);
    # a number: fixed.
    max_in_flight: int | Literal["auto"] | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    deadline: float | None = None
    # every call to the endpoint failed this long: the run ends (EndpointUnavailable)
    give_up_after: float = DEFAULT_GIVE_UP_AFTER_S
    # a response body, and what gzip/deflate inflate it to, past this fails the call
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    budget_usd: float | None = None
    max_total_tokens: int | None = None
    prompts_per_request: int = 5

    # method
    # "reference": the reference code's decisions on model text exactly (quirks included);
    # "default": the project's (README "Fidelity to the method" lists the differences)
    compat: Literal["default", "reference"] = "default"
    # "alpaca": one call writes instruction, input and output (Stanford Alpaca's variant)
    method: Literal["self-instruct", "alpaca"] = "self-instruct"
    # which admitted tasks get instances (the reference's --generation_tasks_only /
    # --classification_tasks_only); the others are recorded as rejected
    task_kinds: Literal["all", "generation", "classification"] = "all"
    # the reference's --use_clf_seed_tasks_only: prompt (and dedup against) the
    # classification seeds only, with the classification list header
    classification_seeds_only: bool = False
    # prompt templates overlaid on the project's (`selfinstruct templates import`)
    templates: Path | None = None
    # store each call's raw completion text and request index in raw_<stage>.jsonl
    keep_raw: bool = False
    # the reference's avg_similarity_score (mean ROUGE-L F against the whole pool) in the
    # records. It scores every admitted instruction against every pool entry sharing a
    # word, which halves admission throughput on long runs (benchmarks/RESULTS.md, 30,000
    # RPM): None (the default) means on with compat = "reference", off otherwise.
    avg_similarity: bool | None = None
    num_prompt_instructions: int = 8
    num_machine_instructions: int = 2
    classification_share: float = 0.0
    threshold: float = 0.7
    inclusive_threshold: bool = False
    tokenizer: TokenizerName = "rouge"
    # "brute" scores every pool entry, as the reference did (slow; for comparisons)
    dedup_index: IndexName = "exact"
    admission: AdmissionMode = "process"
    filters: FilterConfig = field(default_factory=FilterConfig)
    stages: dict[str, StageConfig] = field(default_factory=default_stages)
    # USD per 1M tokens by model name, [input, output]: cost in run.json, --budget-usd
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    # USD per 1M cached prompt tokens by model ([prices."m"] cached_input_per_1m); a model
    # not listed pays its input price for cached tokens
    cached_input_prices: dict[str, float] = field(default_factory=dict)
    batch_discount: float = 0.5  # share of every price taken off for Batch API calls

    # batch mode (`generate --mode batch`): rounds of Batch API files instead of live calls
    mode: RunMode = "online"
    batch_backend: BatchBackend = "openai"  # files: request/output files in batch_dir
    batch_dir: Path | None = None
    batch_max_requests: int = 50_000  # lines of one batch file (the provider's cap)
    batch_poll_seconds: float = 30.0
    batch_timeout: float = 86_400.0  # a batch not finished after this counts as expired

    # embedded local model
    local_model: Path | None = None
    local_n_ctx: int = 8192  # split between the slots: 2048 tokens each by default
    local_n_parallel: int = 4
    local_threads: int = 1

    # distributed
    redis: str | None = None
    run_id: str | None = None
    lease_seconds: float = 60.0  # a dead worker's admitted work is reclaimed after this

    # behaviour
    quiet: bool = False
    fsync: bool = False

    def records_avg_similarity(self) -> bool:
        """Whether admitted records carry avg_similarity_score (see ``avg_similarity``)."""
        if self.avg_similarity is not None:
            return self.avg_similarity
        return self.compat == "reference"

    def stage(self, name: str) -> StageConfig:
        return self.stages[name]

    def in_flight_bound(self) -> int:
        """The most requests this run may ever have in flight (workers, connection pools)."""
        if isinstance(self.max_in_flight, int):
            return self.max_in_flight
        return MAX_ADAPTIVE_IN_FLIGHT

    def in_flight_mode(self) -> Literal["fixed", "rate", "auto"]:
        if self.max_in_flight == "auto":
            return "auto"
        return "rate" if self.max_in_flight is None else "fixed"

    def redacted(self) -> dict[str, Any]:
        """A JSON-able dict for printing and run.json: secrets and the credentials of
        URLs shown as '***'."""
        result: dict[str, Any] = _to_jsonable(self)
        return result


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Secret):
        return "***" if value else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return safe_url(value)  # base_url, redis: a password in a URL is a secret too
    return value


# ---------------------------------------------------------------------------------------
# Coercion and validation: one table, so every key is checked the same way.

# Every numeric key's inclusive range, in one table: the TOML file, the environment,
# flags and job bodies of `serve` are all checked against it (and serve's own limits,
# the keys after "worker"). Upper bounds keep one request from exhausting memory
# (300,000 in flight cost ~390 MB) and every duration finite.
DAY_S = 86_400.0
RANGES: dict[str, tuple[float, float]] = {
    # run and endpoint
    "target": (1, 10_000_000),
    "seed": (0, 2**63 - 1),
    "rpm": (1, 100_000_000),
    "tpm": (1, 100_000_000_000),
    "max_in_flight": (1, 10_000),
    "request_timeout": (0.01, 3_600.0),
    "max_attempts": (1, 100),
    "deadline": (0.01, DAY_S),
    "give_up_after": (0.1, DAY_S),
    "max_response_bytes": (4_096, 1024 * 1024 * 1024),
    "budget_usd": (1e-6, 1e9),
    "max_total_tokens": (1, 10**13),
    "prompts_per_request": (1, 100),
    # method
    "num_prompt_instructions": (1, 64),
    "num_machine_instructions": (0, 64),
    "classification_share": (0.0, 1.0),
    "threshold": (0.0, 1.0),
    # stages
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "max_tokens": (1, 1_000_000),
    "classification_max_tokens": (1, 1_000_000),
    # filters
    "min_words": (0, 100_000),
    "max_words": (1, 100_000),
    "max_instances": (1, 1_000),
    # embedded local model
    "local_n_ctx": (256, 1_048_576),
    "local_n_parallel": (1, 256),
    "local_threads": (1, 1_024),
    # distributed
    "lease_seconds": (0.1, DAY_S),
    # [prices."model"]: USD per 1M tokens
    "input_per_1m": (0.0, 1e6),
    "output_per_1m": (0.0, 1e6),
    "cached_input_per_1m": (0.0, 1e6),
    "batch_discount": (0.0, 1.0),
    # batch mode
    "batch_max_requests": (1, 50_000),
    "batch_poll_seconds": (0.01, 3_600.0),
    "batch_timeout": (1.0, 7 * DAY_S),
    # worker (`selfinstruct serve`)
    "port": (0, 65_535),
    "max_jobs": (1, 1_000),
    "max_queued_jobs": (1, 100_000),
    "max_kept_jobs": (1, 1_000_000),
    "job_retention_s": (60.0, 3_650 * DAY_S),
    "max_sse_streams": (1, 10_000),
    "drain_timeout_s": (0.1, 3_600.0),
    "max_body_bytes": (1_024, 16 * 1024 * 1024),
    # decontamination, report, eval
    "ngram": (1, 64),
    "ngram_min_tokens": (1, 64),
    "eval_max_tokens": (1, 100_000),
    "eval_temperature": (0.0, 2.0),
    "report_overlap_sample": (0, 10_000_000),
    "report_top": (1, 1_000),
    "show": (0, 10_000),
    # `selfinstruct bench`
    "bench_duration": (0.01, DAY_S),
    "bench_requests": (1, 10_000_000),
    "bench_prompt_tokens": (1, 1_000_000),
    # `selfinstruct simulate` (the upper ends as service/simulator/settings.py's MAX_*)
    "sim_share": (0.0, 1.0),
    "sim_burst_seconds": (0.01, 3_600.0),
    "sim_latency_ms": (0.0, 600_000.0),
    "sim_hang_seconds": (0.001, 30.0),
    "sim_context_tokens": (1, 10_000_000),
    "sim_capacity": (1, 100_000),
    "sim_batch_slowdown": (0.0, 100.0),
    "sim_queue_limit": (0, 1_000_000),
    "sim_batch_turnaround": (0.0, DAY_S),
}


def out_of_range(name: str, value: float) -> str | None:
    """None if ``value`` is within ``RANGES[name]``, else what was expected."""
    low, high = RANGES[name]
    if low <= value <= high:
        return None
    if isinstance(value, int) and float(low).is_integer() and float(high).is_integer():
        return f"an integer from {int(low)} to {int(high)}"
    return f"a number from {low:g} to {high:g}"


def check_range(name: str, value: float, where: str) -> None:
    """Raise a ConfigError naming ``where`` (a flag or key) when ``value`` is out of range."""
    expected = out_of_range(name, value)
    if expected is not None:
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def _fail(key: str, source: str, value: Any, expected: str) -> ConfigError:
    shown = "***" if "key" in key.split(".")[-1] else safe_url(repr(value))
    return ConfigError(f"config key '{key}' ({source}): expected {expected}, got {shown}")


def _coerce(key: str, annotation: Any, value: Any, source: str) -> Any:
    """Turn a raw value (a string from the environment, a TOML value, a flag) into the
    field's type, then range-check it."""
    name = key.split(".")[-1]
    type_text = str(annotation)
    original = value
    optional = "None" in type_text
    if value is None:
        if optional:
            return None
        raise _fail(key, source, value, "a value")
    if isinstance(value, str) and optional and value.strip().lower() in {"", "none", "null"}:
        return None
    if "Secret" in type_text:
        if not isinstance(value, str | Secret):
            raise _fail(key, source, "***", "a string")
        return value if isinstance(value, Secret) else Secret(value)
    literal_args: tuple[Any, ...] = ()
    if "Literal" in type_text or name in _LITERALS:
        literal_args = {
            "api": get_args(ApiKind),
            "admission": get_args(AdmissionMode),
            "compat": COMPAT_MODES,
            "method": METHODS,
            "task_kinds": TASK_KINDS,
            "mode": get_args(RunMode),
            "batch_backend": get_args(BatchBackend),
            "tokenizer": TOKENIZERS,
            "dedup_index": INDEXES,
        }.get(name, ())
    if literal_args:
        if value not in literal_args:
            raise _fail(key, source, value, "one of " + ", ".join(literal_args))
        return value
    if name == "max_in_flight" and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if "bool" in type_text:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
            return False
        raise _fail(key, source, value, "true or false")
    if "int" in type_text and "float" not in type_text:
        integer = "an integer or 'auto'" if name == "max_in_flight" else "an integer"
        if isinstance(value, bool):
            raise _fail(key, source, value, integer)
        if isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""))
            except ValueError:
                raise _fail(key, source, value, integer) from None
        if not isinstance(value, int):
            raise _fail(key, source, value, integer)
        expected = out_of_range(name, value)
        if expected is not None:
            raise _fail(key, source, original, expected)
        return value
    if "float" in type_text:
        if isinstance(value, bool):
            raise _fail(key, source, value, "a number")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise _fail(key, source, value, "a number") from None
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(key, source, value, "a finite number")
        value = float(value)
        expected = out_of_range(name, value)
        if expected is not None:
            raise _fail(key, source, original, expected)
        return value
    if "Path" in type_text:
        if not isinstance(value, str | Path) or not str(value).strip() or "\x00" in str(value):
            raise _fail(key, source, value, "a path")
        try:
            return Path(value).expanduser()
        except RuntimeError:  # "~user/..." for a user this machine does not know
            raise _fail(key, source, value, "a path whose ~user exists") from None
    if "tuple" in type_text:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise _fail(key, source, value, "a list of strings")
        return tuple(value)
    if "str" in type_text:
        if not isinstance(value, str):
            raise _fail(key, source, value, "a string")
        if name == "base_url" and not value.startswith(("http://", "https://")):
            raise _fail(key, source, value, "an http:// or https:// URL")
        if name == "base_url":
            return value.rstrip("/")
        if name == "redis" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise _fail(key, source, value, "a redis:// URL")
        if name == "run_id" and not valid_run_id(value):
            raise _fail(key, source, value, "letters, digits, '-', '_' or '.' (1-64 chars)")
        return value
    raise _fail(key, source, value, type_text)  # pragma: no cover - table is exhaustive


def valid_run_id(value: str) -> bool:
    return (
        0 < len(value) <= 64
        and value not in {".", ".."}
        and all(c.isascii() and (c.isalnum() or c in "-_.") for c in value)
    )


_FIELD_TYPES = {f.name: f.type for f in fields(Config)}
_FILTER_TYPES = {f.name: f.type for f in fields(FilterConfig)}
_STAGE_TYPES = {f.name: f.type for f in fields(StageConfig)}
# Keys that are not simple scalars and so have no SELFINSTRUCT_ env variable of their own.
_NESTED = {"filters", "stages", "prices", "cached_input_prices"}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: invalid TOML (nested too deeply)") from None


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> tuple[Config, dict[str, str]]:
    """Merge the layers; return the config and where each non-default value came from.

    ``flags`` holds only values the user actually gave (None means "not given").
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    filters: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {}

    # Layer 1: TOML file.
    if config_file is not None:
        data = _read_toml(config_file)
        src = f"from {config_file}"
        for key, raw in data.items():
            if key == "filters":
                if not isinstance(raw, dict):
                    raise _fail("filters", src, raw, "a table")
                for fkey, fraw in raw.items():
                    if fkey not in _FILTER_TYPES:
                        raise ConfigError(f"config key 'filters.{fkey}' ({src}): unknown key")
                    filters[fkey] = _coerce(f"filters.{fkey}", _FILTER_TYPES[fkey], fraw, src)
                    sources[f"filters.{fkey}"] = src
            elif key == "stages":
                if not isinstance(raw, dict):
                    raise _fail("stages", src, raw, "a table")
                for stage, sraw in raw.items():
                    if stage not in STAGES:
                        raise ConfigError(
                            f"config key 'stages.{stage}' ({src}): unknown stage; "
                            f"expected one of {', '.join(STAGES)}"
                        )
                    if not isinstance(sraw, dict):
                        raise _fail(f"stages.{stage}", src, sraw, "a table")
                    for skey, sval in sraw.items():
                        full = f"stages.{stage}.{skey}"
                        if skey not in _STAGE_TYPES:
                            raise ConfigError(f"config key '{full}' ({src}): unknown key")
                        stages.setdefault(stage, {})[skey] = _coerce(
                            full, _STAGE_TYPES[skey], sval, src
                        )
                        sources[full] = src
            elif key == "prices":
                values["prices"], cached = _read_prices(raw, src)
                sources["prices"] = src
                if cached:
                    values["cached_input_prices"] = cached
            elif key in _FIELD_TYPES:
                values[key] = _coerce(key, _FIELD_TYPES[key], raw, src)
                sources[key] = src
            else:
                raise ConfigError(f"config key '{key}' ({src}): unknown key")

    # Layer 2: environment. The OpenAI names first, so SELFINSTRUCT_* can override them.
    for env_key, key in (("OPENAI_BASE_URL", "base_url"), ("OPENAI_API_KEY", "api_key")):
        if env.get(env_key):
            src = f"from environment {env_key}"
            values[key] = _coerce(key, _FIELD_TYPES[key], env[env_key], src)
            sources[key] = src
    for key, annotation in _FIELD_TYPES.items():
        if key in _NESTED:
            continue
        name = env_name(key)
        if name in env:
            src = f"from environment {name}"
            values[key] = _coerce(key, annotation, env[name], src)
            sources[key] = src

    # Layer 3: flags.
    for key, raw in flags.items():
        if key.startswith("filters.") and key[len("filters."):] in _FILTER_TYPES:
            fkey = key[len("filters."):]
            filters[fkey] = _coerce(key, _FILTER_TYPES[fkey], raw, "from flags")
            sources[key] = "from flags"
            continue
        if key not in _FIELD_TYPES or key in _NESTED:
            raise ConfigError(f"config key '{key}' (from flags): unknown key")
        if key == "api_key":
            raise ConfigError(
                "config key 'api_key' (from flags): pass the key through OPENAI_API_KEY "
                "or the config file, never a flag (flags show in process lists)"
            )
        values[key] = _coerce(key, _FIELD_TYPES[key], raw, "from flags")
        sources[key] = "from flags"

    stage_configs = default_stages()
    for stage, overrides in stages.items():
        stage_configs[stage] = dataclasses.replace(stage_configs[stage], **overrides)
    config = Config(**values, filters=FilterConfig(**filters), stages=stage_configs)
    _check_consistency(config)
    return config, sources


def _read_prices(raw: Any, src: str) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """``[prices."model"] input_per_1m = 0.5, output_per_1m = 1.5, cached_input_per_1m =
    0.25`` (USD per 1M tokens): the [input, output] pairs and the cached-input prices."""
    if not isinstance(raw, dict):
        raise _fail("prices", src, raw, "a table of models")
    prices: dict[str, tuple[float, float]] = {}
    cached: dict[str, float] = {}
    for model, table in raw.items():
        key = f"prices.{model}"
        if not isinstance(table, dict):
            raise _fail(key, src, table, "a table with input_per_1m and output_per_1m")
        unknown = set(table) - {"input_per_1m", "output_per_1m", "cached_input_per_1m"}
        if unknown:
            raise ConfigError(f"config key '{key}.{sorted(unknown)[0]}' ({src}): unknown key")
        values: dict[str, float] = {}
        for side in ("input_per_1m", "output_per_1m", "cached_input_per_1m"):
            if side not in table and side == "cached_input_per_1m":
                continue
            value = table.get(side, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise _fail(f"{key}.{side}", src, value, "a finite number")
            expected = out_of_range(side, float(value))
            if expected is not None:
                raise _fail(f"{key}.{side}", src, value, expected)
            values[side] = float(value)
        prices[str(model)] = (values["input_per_1m"], values["output_per_1m"])
        if "cached_input_per_1m" in values:
            cached[str(model)] = values["cached_input_per_1m"]
    return prices, cached


def _check_consistency(config: Config) -> None:
    if config.num_machine_instructions > config.num_prompt_instructions:
        raise ConfigError(
            "config key 'num_machine_instructions': must not exceed num_prompt_instructions "
            f"({config.num_machine_instructions} > {config.num_prompt_instructions})"
        )
    if config.filters.min_words > config.filters.max_words:
        raise ConfigError(
            f"config key 'filters.min_words': {config.filters.min_words} is above "
            f"filters.max_words {config.filters.max_words}"
        )
    if config.run_id is not None and config.redis is None:
        raise ConfigError("config key 'run_id': only meaningful with 'redis' (a distributed run)")


def render(config: Config, sources: Mapping[str, str]) -> str:
    """Human-readable TOML dump with the source of every non-default value."""
    data = config.redacted()

    def line(key: str, value: Any, source_key: str) -> str:
        note = f"  # {sources[source_key]}" if source_key in sources else ""
        if value is None:
            return f"# {key} is unset{note}"
        return f"{key} = {_toml_value(value)}{note}"

    lines = [line(k, v, k) for k, v in data.items() if k not in _NESTED]
    lines += ["", "[filters]"]
    lines += [line(k, v, f"filters.{k}") for k, v in data["filters"].items()]
    for stage, stage_values in data["stages"].items():
        lines += ["", f"[stages.{stage}]"]
        lines += [line(k, v, f"stages.{stage}.{k}") for k, v in stage_values.items()]
    for model, (input_price, output_price) in config.prices.items():
        note = f"  # {sources['prices']}" if "prices" in sources else ""
        lines += ["", f"[prices.{json.dumps(model)}]{note}",
                  f"input_per_1m = {input_price!r}", f"output_per_1m = {output_price!r}"]
        if model in config.cached_input_prices:
            lines.append(f"cached_input_per_1m = {config.cached_input_prices[model]!r}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)
