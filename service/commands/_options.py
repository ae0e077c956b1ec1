"""Flags shared by `generate`, `config` and `serve`: one definition, one mapping to config keys."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dedup import INDEXES, TOKENIZERS
from service.config import RANGES, Config, load_config, out_of_range
from service.llm.constants import DEFAULT_GIVE_UP_AFTER_S, DEFAULT_MAX_RESPONSE_BYTES

# flag dest -> config key (identical names; listed so the mapping is explicit and checked)
GENERATE_FLAGS: dict[str, str] = {
    "out": "out",
    "target": "target",
    "seed_tasks": "seed_tasks",
    "base_url": "base_url",
    "model": "model",
    "api": "api",
    "rpm": "rpm",
    "tpm": "tpm",
    "max_in_flight": "max_in_flight",
    "seed": "seed",
    "threshold": "threshold",
    "inclusive_threshold": "inclusive_threshold",
    "tokenizer": "tokenizer",
    "dedup_index": "dedup_index",
    "admission": "admission",
    "budget_usd": "budget_usd",
    "max_total_tokens": "max_total_tokens",
    "request_timeout": "request_timeout",
    "give_up_after": "give_up_after",
    "max_response_bytes": "max_response_bytes",
    "prompts_per_request": "prompts_per_request",
    "classification_share": "classification_share",
    "local_model": "local_model",
    "local_n_parallel": "local_n_parallel",
    "local_n_ctx": "local_n_ctx",
    "redis": "redis",
    "run_id": "run_id",
    "lease_seconds": "lease_seconds",
    "quiet": "quiet",
    "fsync": "fsync",
    "compat": "compat",
    "method": "method",
    "max_instances": "filters.max_instances",
    "alpaca_blacklist": "filters.alpaca_blacklist",
    "task_kinds": "task_kinds",
    "classification_seeds_only": "classification_seeds_only",
    "templates": "templates",
    "keep_raw": "keep_raw",
    "avg_similarity": "avg_similarity",
    "mode": "mode",
    "batch_backend": "batch_backend",
    "batch_dir": "batch_dir",
    "batch_max_requests": "batch_max_requests",
    "batch_poll_seconds": "batch_poll_seconds",
    "batch_timeout": "batch_timeout",
}


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """Every flag defaults to None so only what the user typed overrides env and file."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument("--out", metavar="DIR", help="run directory (an existing run is resumed)")
    parser.add_argument("--target", metavar="N", help="finished tasks to write")
    parser.add_argument("--seed-tasks", metavar="FILE", help="seed tasks (default: the project's own)")
    parser.add_argument("--base-url", metavar="URL", help="OpenAI-compatible endpoint ending in /v1; none: the embedded local model")
    parser.add_argument("--model", metavar="NAME", help="model name sent to the endpoint")
    parser.add_argument("--api", choices=["chat", "completions"], help="which API to call")
    parser.add_argument("--rpm", metavar="N", help="requests per minute to stay under")
    parser.add_argument("--tpm", metavar="N", help="tokens per minute to stay under")
    parser.add_argument("--max-in-flight", metavar="N|auto", help="cap on concurrent requests; auto: found from latency (self-hosted servers that queue); default: sized by Little's law from the rate limit (given or learned) and the measured latency, 256 while no rate is known")
    parser.add_argument("--seed", metavar="INT", help="makes sampling and prompts repeatable (whole runs repeat with --max-in-flight 1)")
    parser.add_argument("--threshold", metavar="F", help="ROUGE-L threshold (reject when above)")
    parser.add_argument("--inclusive-threshold", action="store_const", const=True, default=None, help="reject at >= threshold (the paper's text) instead of > (its code)")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, help="ROUGE-L tokenizer")
    parser.add_argument("--dedup-index", choices=INDEXES, help="dedup prefilter (brute: score every entry, as the reference did)")
    parser.add_argument("--admission", choices=["thread", "process"], help="where the dedup pool runs: its own process (default; a core of its own) or a thread")
    parser.add_argument("--budget-usd", metavar="USD", help="stop new calls once the cost reaches this")
    parser.add_argument("--max-total-tokens", metavar="N", help="stop new calls after this many tokens")
    parser.add_argument("--request-timeout", metavar="SECONDS", help="per-request timeout")
    parser.add_argument("--give-up-after", metavar="SECONDS", help=f"end the run when every call to the endpoint has failed this long (default {DEFAULT_GIVE_UP_AFTER_S:g})")
    parser.add_argument("--max-response-bytes", metavar="N", help=f"largest response body, also after gzip/deflate (default {DEFAULT_MAX_RESPONSE_BYTES})")
    parser.add_argument("--prompts-per-request", metavar="N", help="instruction prompts batched into one completions request")
    parser.add_argument("--classification-share", metavar="F", help="share of instruction prompts asking for classification tasks")
    parser.add_argument("--local-model", metavar="PATH.gguf", help="serve this GGUF file instead of the bundled model")
    parser.add_argument("--local-n-parallel", metavar="N", help="parallel slots of the local server")
    parser.add_argument("--local-n-ctx", metavar="N", help="context size of the local server")
    parser.add_argument("--redis", metavar="URL", help="join a distributed run through Redis")
    parser.add_argument("--run-id", metavar="ID", help="distributed run id")
    parser.add_argument("--lease-seconds", metavar="S", help="distributed: reclaim a silent worker's tasks after this (default 60)")
    parser.add_argument("--quiet", action="store_const", const=True, default=None, help="no progress display")
    parser.add_argument("--fsync", action="store_const", const=True, default=None, help="fsync every record (slower; survives power loss)")
    method = parser.add_argument_group("fidelity to the method (README: Fidelity to the method)")
    method.add_argument("--compat", choices=["default", "reference"], help="reference: the reference code's parsing, filters, stop sequences and max_tokens exactly")
    method.add_argument("--method", choices=["self-instruct", "alpaca"], help="alpaca: one call writes instruction, input and output (Stanford Alpaca's variant)")
    method.add_argument("--max-instances", metavar="N", help="instances kept a task (a random sample); also sets the 'Example N+1' stop sequence")
    method.add_argument("--alpaca-blacklist", action="store_const", const=True, default=None, help="also drop instructions naming Alpaca's 5 extra words (video, audio, music, flowchart, diagram)")
    kinds = method.add_mutually_exclusive_group()
    kinds.add_argument("--generation-tasks-only", dest="task_kinds", action="store_const", const="generation", default=None, help="write instances for non-classification tasks only")
    kinds.add_argument("--classification-tasks-only", dest="task_kinds", action="store_const", const="classification", help="write instances for classification tasks only")
    method.add_argument("--classification-seeds-only", action="store_const", const=True, default=None, help="prompt with (and dedup against) the classification seed tasks only, as the reference's --use_clf_seed_tasks_only")
    method.add_argument("--templates", metavar="FILE", help="prompt templates file (selfinstruct templates import)")
    similarity = method.add_mutually_exclusive_group()
    similarity.add_argument("--avg-similarity", dest="avg_similarity", action="store_const", const=True, default=None, help="write the reference's avg_similarity_score (scores each admitted instruction against the whole pool; default: only with --compat reference)")
    similarity.add_argument("--no-avg-similarity", dest="avg_similarity", action="store_const", const=False, help="leave out avg_similarity_score, also with --compat reference")
    method.add_argument("--keep-raw", action="store_const", const=True, default=None, help="store each call's raw completion and request index in raw_<stage>.jsonl (re-parse with selfinstruct parse)")
    parser.add_argument("--mode", choices=["online", "batch"], help="online calls, or rounds of Batch API files (half the price, hours not minutes)")
    parser.add_argument("--batch-backend", choices=["openai", "files"], help="batch mode: the endpoint's Batch API, or request/output files in --batch-dir")
    parser.add_argument("--batch-dir", metavar="DIR", help="batch mode, files backend: where request files go and output files are awaited")
    parser.add_argument("--batch-max-requests", metavar="N", help="batch mode: most requests in one batch file and instruction requests in one round")
    parser.add_argument("--batch-poll-seconds", metavar="S", help="batch mode: seconds between status polls")
    parser.add_argument("--batch-timeout", metavar="S", help="batch mode: a batch not finished after this is cancelled; its unfinished lines are resubmitted")
    add_range_help(parser)


class Ranged:
    """argparse ``type=`` for a numeric flag: parse ``kind`` and check it against
    ``RANGES[name]`` (the one table) at parse time, so a bad value stops before anything
    runs; argparse prefixes the flag, this names the value and the range."""

    def __init__(self, name: str, kind: type[int] | type[float] = int,
                 words: tuple[str, ...] = ()) -> None:
        if name not in RANGES:
            raise KeyError(f"no range for {name!r} in config.RANGES")
        self.name = name
        self.kind = kind
        self.words = words  # also accepted as typed (lower-cased), e.g. "auto"
        self.__name__ = kind.__name__  # argparse names the type in its own messages

    def __call__(self, text: str) -> int | float | str:
        if text.strip().lower() in self.words:
            return text.strip().lower()
        try:
            value = self.kind(text)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        expected = out_of_range(self.name, value)
        if expected is not None:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value


def add_range_help(parser: argparse.ArgumentParser) -> None:
    """Append each numeric flag's range (config.RANGES, the one table) to its help."""
    for action in parser._actions:  # argparse has no public way to list a parser's flags
        bounds = (RANGES[action.type.name] if isinstance(action.type, Ranged)
                  else RANGES.get(action.dest))
        if bounds is not None and action.help and "range" not in action.help:
            low, high = (int(b) if float(b).is_integer() else b for b in bounds)
            action.help += f" (range {low}-{high})"


def flags_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, dest, None) for dest, key in GENERATE_FLAGS.items()}


def config_from_args(args: argparse.Namespace) -> tuple[Config, dict[str, str]]:
    return load_config(flags_from_args(args), config_file=getattr(args, "config", None))
