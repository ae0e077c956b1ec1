"""USD per 1,000 finished tasks at a real model's list prices: the reference's prompt
layout online, ours online with the provider's prompt cache, ours through the Batch API.

    python -m benchmarks.cost [--target 1000] [--no-write]

Our two rows are measured: real runs against the simulator (online routes, then the
Batch API with 5% failed lines and 20% of batches expiring), billed from the usage each
answer reported, cached prompt tokens included (the simulator caches >=1,024-token
prefixes in 128-token steps, as OpenAI documents). The reference row re-prices the same
online run's work with the reference's own prompts (its classification and instance
templates, read from /work/shared/reference at run time, never copied into the project),
passed through the same cache rules in the same order; its completions are taken to be
ours (same model, same method). Failed batch lines are not billed (OpenAI bills
completed requests only), so they cost nothing here either.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson

from benchmarks._results import table, write_section
from service.config import load_config
from service.generate.orchestrator import run_generate
from service.llm.accounting import Price
from service.llm.tokens import estimate_text_tokens
from service.simulator import SimSettings, SimulatedServer
from service.simulator.batch import BatchSimSettings
from service.simulator.prompt_cache import PromptCache

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "self_instruct" / "templates"
# gpt-4o-mini list prices, USD per 1M tokens (cached input half price; Batch API -50%)
MODEL = "gpt-4o-mini"
PRICE = Price(input_per_1m=0.15, output_per_1m=0.60, cached_input_per_1m=0.075,
              batch_discount=0.5)


def _reference_templates() -> dict[str, str] | None:
    """The reference's template strings, read (not imported, not copied) at run time."""
    found: dict[str, str] = {}
    for name in ("clf_task_template.py", "instance_gen_template.py"):
        path = REFERENCE / name
        if not path.exists():
            return None
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = node.value.value
    return found


def _classify_tokens() -> float:
    """Our classification prompt's tokens, as the planner counts them."""
    from service.generate.orchestrator import load_seeds
    from service.generate.plan import template_tokens

    config, _ = load_config({"base_url": "http://127.0.0.1:9/v1"}, env={})
    return template_tokens(config, load_seeds(config))["classify"].prompt


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


async def _run(out: Path, target: int, mode: str) -> dict[str, Any]:
    sim = SimulatedServer(SimSettings(latency_ms=0, seed=1, duplicate_rate=0.2,
                                      bad_item_rate=0.1),
                          batch=BatchSimSettings(turnaround_s=0.3, line_failure_rate=0.05,
                                                 expire_rate=0.2))
    async with sim:
        config, _ = load_config({"out": out, "base_url": sim.base_url, "model": MODEL,
                                 "quiet": True, "target": target, "seed": 1, "mode": mode,
                                 "batch_poll_seconds": 0.05}, env={})
        await run_generate(config, install_signal_handlers=False)
    run: dict[str, Any] = orjson.loads((out / "run.json").read_bytes())
    return run


def _cost(tokens: dict[str, Any], *, batch: bool) -> float:
    return PRICE.cost(int(tokens["prompt"]), int(tokens["completion"]), int(tokens["cached"]),
                      batch=batch)


def _reference_tokens(out: Path, run: dict[str, Any], ref: dict[str, str]) -> dict[str, int]:
    """The online run's work with the reference's prompts, through the same cache."""
    stages = run["usage"]["tokens"]["by_stage"]
    cache = PromptCache()
    admitted = [str(r["instruction"]) for r in _lines(out / "instructions.jsonl")]
    tasks = {str(t["instruction"]): bool(t["is_classification"])
             for t in _lines(out / "tasks.jsonl")}
    prompt = cached = 0
    n_classify = int(stages["classify"]["requests"])
    for text in admitted[:n_classify]:
        p = ref["template_1"] + " " + text.strip() + "\n" + "Is it classification?"
        prompt += estimate_text_tokens(p)
        cached += cache.lookup(p)
    n_instances = int(stages["instances"]["requests"])
    for text in admitted[:n_instances]:
        template = ref["output_first_template_for_clf"] if tasks.get(text) \
            else ref["input_first_template_for_gen"]
        p = template + " " + text.strip() + "\n"
        prompt += estimate_text_tokens(p)
        cached += cache.lookup(p)
    instr = stages["instructions"]  # the same numbered-list prompts as ours
    completion = sum(int(s["completion"]) for s in stages.values())
    return {"prompt": prompt + int(instr["prompt"]), "completion": completion,
            "cached": cached + int(instr["cached"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--target", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    ref = _reference_templates()
    with tempfile.TemporaryDirectory() as tmp:
        online_out, batch_out = Path(tmp) / "online", Path(tmp) / "batch"
        online = asyncio.run(_run(online_out, args.target, "online"))
        batch = asyncio.run(_run(batch_out, args.target, "batch"))
        ref_tokens = _reference_tokens(online_out, online, ref) if ref else None
    per_k = 1000 / args.target
    rows: list[list[object]] = []
    results: dict[str, float] = {}

    def row(name: str, tokens: dict[str, Any], is_batch: bool, written: int) -> None:
        usd = _cost(tokens, batch=is_batch) * 1000 / max(1, written)
        results[name] = usd
        rows.append([name, f"{int(tokens['prompt']) * per_k:,.0f}",
                     f"{int(tokens['cached']) * per_k:,.0f}",
                     f"{int(tokens['completion']) * per_k:,.0f}", f"${usd:.4f}"])

    if ref_tokens is not None:
        row("reference prompt layout, online", ref_tokens, False,
            int(online["counters"]["tasks_written"]))
    row("ours, online with prompt caching", online["usage"]["tokens"], False,
        int(online["counters"]["tasks_written"]))
    row("ours, Batch API", batch["usage"]["tokens"], True,
        int(batch["counters"]["tasks_written"]))
    ours = results["ours, online with prompt caching"]
    for r in rows:
        r.append(f"{results[str(r[0])] / ours:.2f}")
    text = table(["layout and mode", "prompt tokens / 1k tasks", "cached / 1k tasks",
                  "completion tokens / 1k tasks", "USD / 1,000 tasks", "vs ours online"], rows)
    ratio = results["ours, Batch API"] / ours
    text += (f"\n\n{args.target} tasks each, {MODEL} list prices (USD per 1M tokens: input "
             f"{PRICE.input_per_1m}, cached input {PRICE.cached_input_per_1m}, output "
             f"{PRICE.output_per_1m}; Batch API {PRICE.batch_discount:.0%} off). Batch mode "
             f"costs {ratio:.0%} of online for the same tasks (target: <= 55%); its "
             f"batches: {batch['batch']['by_state']}, {batch['batch']['rounds']} rounds. "
             f"Our classification prompt is {_classify_tokens():.0f} tokens"
             f"{', under' if _classify_tokens() < 1024 else ', over'} the 1,024-token cache "
             "minimum; only prompts with fixed parts that long are served from the cache.")
    print(text)
    if not args.no_write:
        write_section("cost", "## Cost per 1,000 tasks (`python -m benchmarks.cost`)\n\n" + text)
    return 0 if ratio <= 0.55 else 1


if __name__ == "__main__":
    raise SystemExit(main())
