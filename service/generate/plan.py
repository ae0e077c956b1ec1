"""`selfinstruct plan`: what a run will cost before it spends anything.

Requests and tokens per stage come from the real templates and seed tasks (prompts built
exactly as a run builds them, counted with the same estimator the client and simulator
use), and the method's yields: admitted instructions per instruction prompt and the share
of admitted tasks that end up written. Without a run directory the yields are the
defaults below; ``--from RUN_DIR`` replaces yields and tokens per call with what that
run's records and usage show (use a pilot run that was not resumed: run.json's usage
covers one process).

Cost uses the prices table (cached-input price and batch discount included); wall time:
online from the RPM/TPM limits and a typical call latency, batch from rounds x a typical
turnaround, local from the embedded model's measured token rate.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from service.config import Config
from service.errors import RunDirError
from service.generate.llm_backend import DEFAULT_MODEL, prices_of
from service.generate.stages import classify as classify_stage
from service.generate.stages import instances as instance_stage
from service.generate.stages import instructions as instruction_stage
from service.generate.templates import Templates, load_templates
from service.llm.tokens import estimate_chat_tokens, estimate_text_tokens
from service.rundir.seeds import SeedTask
from service.rundir.store import REJECTED, read_jsonl, read_run_json

# Defaults of the estimate (one place). Yields: a continuation of 8 examples that stops at
# item 16 writes up to 7 items; filters and ROUGE-L keep about half of them.
ADMITTED_PER_PROMPT = 3.5
TASK_SUCCESS = 0.85  # admitted tasks that are written (the rest: truncated, filtered)
ITEMS_PER_ANSWER = 7
CLASSIFY_COMPLETION_TOKENS = 1
HOSTED_BASE_LATENCY_S = 0.5  # per call, before the first token
HOSTED_TOKENS_PER_S = 80.0  # completion tokens a second of one hosted call
BATCH_TURNAROUND_S = 3_600.0  # a typical batch turnaround (the window is 24 h)
LOCAL_TOKENS_PER_S = 255.0  # embedded model, all tokens: benchmarks/RESULTS.md local_model
CACHE_MIN_TOKENS = 1_024  # OpenAI's prompt cache: prefixes from 1,024 tokens
CACHE_STEP_TOKENS = 128  # ... in steps of 128
SAMPLE_PROMPTS = 40
STAGES = ("instructions", "classify", "instances")


@dataclass(frozen=True)
class StageTokens:
    """Per call: prompt, completion and the stable prefix a cache can serve."""

    prompt: float
    completion: float
    cached: float = 0.0


@dataclass(frozen=True)
class Calibration:
    admitted_per_prompt: float = ADMITTED_PER_PROMPT
    task_success: float = TASK_SUCCESS
    per_call: dict[str, StageTokens] | None = None
    turnaround_s: float | None = None
    source: str | None = None


def _chat(config: Config, stage: str) -> bool:
    return (config.stage(stage).api or config.api) == "chat"


def _count(config: Config, stage: str, text: str, system: str | None) -> int:
    if _chat(config, stage):
        messages = [{"role": "system", "content": system}] if system else []
        return estimate_chat_tokens([*messages, {"role": "user", "content": text}])
    return estimate_text_tokens(text)


def _cacheable(prefix_chars: int) -> float:
    tokens = prefix_chars // 4
    if tokens < CACHE_MIN_TOKENS:
        return 0.0
    return float(tokens // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS)


def _common(a: str, b: str) -> int:
    n = 0
    limit = min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def template_tokens(config: Config, seeds: list[SeedTask],
                    templates: Templates | None = None) -> dict[str, StageTokens]:
    """Tokens per call of each stage, from the prompts a run would build."""
    t = templates or load_templates()
    rng = random.Random(config.seed)
    texts = [s.instruction for s in seeds]
    sc = config.stages
    # instructions: machine examples stand in as seed instructions
    prompts = []
    for _ in range(SAMPLE_PROMPTS):
        examples, n_seed, n_machine = instruction_stage.choose_examples(
            texts, texts, rng, total=config.num_prompt_instructions,
            machine_wanted=config.num_machine_instructions)
        prompts.append(instruction_stage.build_instruction_prompt(
            examples, t, seed_count=n_seed, machine_count=n_machine).text)
    mean_instr = sum(estimate_text_tokens(x) for x in texts) / max(1, len(texts))
    instr = StageTokens(
        prompt=sum(_count(config, "instructions", p, t.instructions_chat_system)
                   for p in prompts) / len(prompts),
        completion=min(sc["instructions"].max_tokens, ITEMS_PER_ANSWER * (mean_instr + 2)))
    # classify: each seed instruction as the new task
    cls_examples = classify_stage.pick_classify_examples(seeds)
    cls_prompts = [classify_stage.build_classify_prompt(cls_examples, x, t)
                   for x in texts[:SAMPLE_PROMPTS]]
    classify = StageTokens(
        prompt=sum(_count(config, "classify", p, t.classify_chat_system)
                   for p in cls_prompts) / len(cls_prompts),
        completion=min(sc["classify"].max_tokens, CLASSIFY_COMPLETION_TOKENS),
        cached=_cacheable(_common(cls_prompts[0], cls_prompts[1])))
    # instances: input-first or output-first as the seeds' classification share says
    in_first = instance_stage.pick_instance_examples(seeds, False, 4)
    out_first = instance_stage.pick_instance_examples(seeds, True, 3)
    inst_prompts = []
    answers = []
    for seed in seeds[:SAMPLE_PROMPTS]:
        if seed.is_classification:
            inst_prompts.append(instance_stage.build_output_first_prompt(out_first,
                                                                         seed.instruction, t))
            answers.append("".join(f"Class label: {i.output}\nInput: {i.input}\n"
                                   for i in seed.instances))
        else:
            inst_prompts.append(instance_stage.build_input_first_prompt(in_first,
                                                                        seed.instruction, t))
            answers.append("".join(f"Example {n}\nInput: {i.input}\nOutput: {i.output}\n"
                                   for n, i in enumerate(seed.instances, 1)))
    prefix = min(_common(inst_prompts[0], p) for p in inst_prompts[1:]) \
        if len(inst_prompts) > 1 else 0
    instances = StageTokens(
        prompt=sum(_count(config, "instances", p, t.instances_chat_system)
                   for p in inst_prompts) / len(inst_prompts),
        completion=min(sc["instances"].max_tokens,
                       sum(estimate_text_tokens(a) for a in answers) / len(answers)),
        cached=_cacheable(prefix))
    return {"instructions": instr, "classify": classify, "instances": instances}


def calibrate(run_dir: Path) -> Calibration:
    """Yields and tokens per call from a finished run directory's records and usage."""
    run = read_run_json(run_dir)
    if not run:
        raise RunDirError(f"{run_dir}: no run.json to calibrate from")
    counters = run.get("counters") or {}
    config = run.get("config") or {}
    tokens = ((run.get("usage") or {}).get("tokens") or {})
    by_stage = tokens.get("by_stage") or {}
    batch = run.get("mode") == "batch"
    per_request = 1 if batch else int(config.get("prompts_per_request") or 1)
    prompts = float(counters.get("instruction_requests") or 0) * per_request
    admitted = float(counters.get("instructions_admitted") or 0)
    written = float(counters.get("tasks_written") or 0)
    dropped = sum(1 for _, r in read_jsonl(run_dir / REJECTED) if r.get("task_level")) \
        if (run_dir / REJECTED).exists() else 0
    per_call: dict[str, StageTokens] = {}
    for stage in STAGES:
        counts = by_stage.get(stage) or {}
        calls = float(counts.get("requests") or 0)
        if stage == "instructions" and not batch and calls:
            calls *= per_request  # one completions request answered several prompts
        if calls:
            per_call[stage] = StageTokens(float(counts.get("prompt") or 0) / calls,
                                          float(counts.get("completion") or 0) / calls,
                                          float(counts.get("cached") or 0) / calls)
    rounds = float((run.get("batch") or {}).get("rounds") or 0)
    waited = float((run.get("batch") or {}).get("waiting_s") or 0)
    return Calibration(
        admitted_per_prompt=admitted / prompts if prompts and admitted else ADMITTED_PER_PROMPT,
        task_success=written / (written + dropped) if written else TASK_SUCCESS,
        per_call=per_call or None,
        turnaround_s=waited / rounds if batch and rounds and waited else None,
        source=str(run_dir),
    )


def estimate(config: Config, seeds: list[SeedTask], calibration: Calibration | None = None,
             templates: Templates | None = None) -> dict[str, Any]:
    """The plan as one JSON-able object (see the module docstring)."""
    cal = calibration or Calibration()
    per_call = dict(template_tokens(config, seeds, templates))
    if cal.per_call:
        per_call.update(cal.per_call)
    success = min(1.0, max(0.05, cal.task_success))
    finished = config.target / success  # admitted tasks that must be classified etc.
    prompts = finished / max(0.05, cal.admitted_per_prompt)
    calls = {"instructions": prompts, "classify": finished, "instances": finished}
    prices = prices_of(config)
    stages: dict[str, Any] = {}
    online_cost = batch_cost = 0.0
    priced = True
    for stage in STAGES:
        pc = per_call[stage]
        n = calls[stage]
        model = config.stage(stage).model or config.model or DEFAULT_MODEL
        prompt, completion, cached = n * pc.prompt, n * pc.completion, n * pc.cached
        stages[stage] = {"model": model, "calls": round(n), "prompt_tokens": round(prompt),
                         "completion_tokens": round(completion),
                         "cached_tokens": round(cached)}
        price = prices.get(model)
        if price is None:
            priced = False
            continue
        online_cost += price.cost(round(prompt), round(completion), round(cached))
        batch_cost += price.cost(round(prompt), round(completion), round(cached), batch=True)
    total_prompt = sum(s["prompt_tokens"] for s in stages.values())
    total_completion = sum(s["completion_tokens"] for s in stages.values())
    total = total_prompt + total_completion
    # online wall time: the binding limit, or latency over the calls in flight
    ppr = 1 if _chat(config, "instructions") else max(1, config.prompts_per_request)
    requests = prompts / ppr + 2 * finished
    by_rate = [requests / config.rpm * 60 if config.rpm else 0.0,
               total / config.tpm * 60 if config.tpm else 0.0]
    latency = {s: HOSTED_BASE_LATENCY_S + per_call[s].completion / HOSTED_TOKENS_PER_S
               for s in STAGES}
    busy = (prompts / ppr * latency["instructions"] + finished * latency["classify"]
            + finished * latency["instances"]) / max(1, config.in_flight_bound())
    online_wall = max([busy, *by_rate]) + sum(latency.values())
    rounds = math.ceil(prompts / config.batch_max_requests) + 2 + 1  # +1: resubmissions
    turnaround = cal.turnaround_s or BATCH_TURNAROUND_S
    return {
        "target": config.target,
        "assumptions": {
            "admitted_per_prompt": round(cal.admitted_per_prompt, 4),
            "task_success": round(success, 4),
            "tokens_per_call": {s: {k: round(v, 1) for k, v in asdict(per_call[s]).items()}
                                for s in STAGES},
            "batch_turnaround_s": turnaround, "local_tokens_per_s": LOCAL_TOKENS_PER_S,
            "calibrated_from": cal.source,
        },
        "stages": stages,
        "requests": round(requests),
        "tokens": {"prompt": total_prompt, "completion": total_completion, "total": total,
                   "cached": sum(s["cached_tokens"] for s in stages.values())},
        "modes": {
            "online": {"cost_usd": round(online_cost, 4) if priced else None,
                       "wall_s": round(online_wall, 1)},
            "batch": {"cost_usd": round(batch_cost, 4) if priced else None,
                      "wall_s": round(rounds * turnaround, 1), "rounds": rounds},
            "local": {"cost_usd": 0.0, "wall_s": round(total / LOCAL_TOKENS_PER_S, 1)},
        },
    }


def plan_for_run(config: Config, seeds: list[SeedTask]) -> dict[str, Any] | None:
    """The uncalibrated plan a run records in run.json next to its actuals; None if it
    cannot be made (a plan never stops a run)."""
    try:
        return estimate(config, seeds)
    except (ValueError, KeyError, IndexError, ZeroDivisionError, OSError):
        return None


def render(plan: dict[str, Any]) -> str:
    """The plan as a small table for a terminal."""
    from service.progress import format_count, format_eta

    lines = [f"plan for {plan['target']} tasks"
             + (f" (calibrated from {plan['assumptions']['calibrated_from']})"
                if plan["assumptions"]["calibrated_from"] else "")]
    lines.append(f"{'stage':<13}{'calls':>10}{'prompt tok':>13}{'compl. tok':>13}"
                 f"{'cached tok':>13}")
    for stage, s in plan["stages"].items():
        lines.append(f"{stage:<13}{format_count(s['calls']):>10}"
                     f"{format_count(s['prompt_tokens']):>13}"
                     f"{format_count(s['completion_tokens']):>13}"
                     f"{format_count(s['cached_tokens']):>13}")
    lines.append("")
    lines.append(f"{'mode':<13}{'cost':>12}{'wall time':>12}")
    for mode, m in plan["modes"].items():
        cost = "-" if m["cost_usd"] is None else f"${m['cost_usd']:.2f}"
        lines.append(f"{mode:<13}{cost:>12}{format_eta(m['wall_s']):>12}")
    if plan["modes"]["online"]["cost_usd"] is None:
        lines.append("(no price for a stage's model: add [prices.\"MODEL\"] to the config)")
    return "\n".join(lines)


def to_json(plan: dict[str, Any]) -> str:
    return orjson.dumps(plan, option=orjson.OPT_INDENT_2).decode()
