"""`selfinstruct eval`: one model's responses to an evaluation set, resumable.

Requests go through the project's client (:class:`service.llm.client.LLMClient`): the same
limiter (rpm, tpm, requests in flight), retries and accounting as ``generate``. Each
response is appended to ``predictions.jsonl`` the moment it arrives (one write, so a
crash loses nothing written); a re-run with the same ``--out`` skips what is there. An
item whose request failed is left out and retried by the next run.

The prompt is the one the exported fine-tuning data teaches (``export --format
self-instruct`` for ``--api completions``, the user turn of ``openai-chat`` for chat), so
a model tuned on this project's output is asked the way it was taught.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rouge_score import rouge_scorer

from service import __version__
from service.config import Config
from service.decontam.check import file_sha256
from service.decontam.evalsets import EvalTask, read_eval_tasks
from service.errors import ClientRequestError, LLMError, RunDirError
from service.evaluate.predictions import EVAL_JSON, PREDICTIONS
from service.generate.llm_backend import client_settings
from service.llm.client import LLMClient
from service.rundir.export import END_OF_TEXT, format_openai_chat, format_self_instruct
from service.rundir.store import RunDir, read_jsonl, repair_torn_tail, write_json_atomic
from service.secret import safe_url

DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.0


@dataclass(frozen=True)
class EvalSettings:
    tasks_file: Path
    out: Path
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE


@dataclass(frozen=True)
class EvalResult:
    items: int
    done: int
    new: int
    failed: int
    rouge_l: float | None
    scored: int
    out: Path


def make_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(scorer: rouge_scorer.RougeScorer, target: str, response: str) -> float:
    return float(scorer.score(target, response)["rougeL"].fmeasure)


def _items(tasks: list[EvalTask]) -> list[tuple[EvalTask, int, str, str]]:
    """(task, instance index, input, reference output); a task without instances is
    asked once with no input and no reference."""
    items = []
    for task in tasks:
        if not task.instances:
            items.append((task, 0, "", ""))
        for i, inst in enumerate(task.instances):
            items.append((task, i, inst.input, inst.output))
    return items


def _check_same_eval(out: Path, identity: dict[str, Any]) -> None:
    meta = out / EVAL_JSON
    if not meta.is_file():
        return
    try:
        previous = orjson.loads(meta.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise RunDirError(f"{meta}: not valid JSON ({exc})") from None
    for key, value in identity.items():
        if isinstance(previous, dict) and previous.get(key) != value:
            raise RunDirError(
                f"{out} holds an eval with {key}={previous.get(key)!r}, not {value!r}; "
                "use another --out to evaluate something else"
            )


async def run_eval(config: Config, settings: EvalSettings, *,
                   on_item: Callable[[int, int], None] | None = None) -> EvalResult:
    """Run ``config.model`` at ``config.base_url`` over the tasks; resume what is missing."""
    if config.base_url is None:
        raise RunDirError("eval needs --base-url (an OpenAI-compatible endpoint)")
    tasks = list(read_eval_tasks(settings.tasks_file))
    items = _items(tasks)
    identity = {"model": config.model, "tasks_sha256": file_sha256(settings.tasks_file),
                "api": config.api}
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    _check_same_eval(out, identity)
    scorer = make_scorer()
    started = time.monotonic()
    with RunDir.open(out) as directory:
        repair_torn_tail(out / PREDICTIONS)
        done = {(str(r.get("id")), r.get("instance")) for _, r in read_jsonl(out / PREDICTIONS)}
        todo = [item for item in items if (item[0].id, item[1]) not in done]
        failed = 0
        written = 0
        queue: asyncio.Queue[tuple[EvalTask, int, str, str]] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)
        async with LLMClient(client_settings(config, config.base_url)) as client:

            async def ask(task: EvalTask, input_text: str) -> tuple[str, str | None]:
                if config.api == "chat":
                    messages = format_openai_chat(task.instruction, input_text, "")["messages"][:1]
                    result = await client.chat(messages, max_tokens=settings.max_tokens,
                                               temperature=settings.temperature)
                else:
                    prompt = format_self_instruct(task.instruction, input_text, "")["prompt"]
                    result = await client.complete(prompt, max_tokens=settings.max_tokens,
                                                   temperature=settings.temperature,
                                                   stop=[END_OF_TEXT])
                choice = result.choices[0] if result.choices else None
                return (choice.text.strip() if choice else ""), (choice.finish_reason if choice else None)

            async def worker() -> None:
                nonlocal failed, written
                while True:
                    try:
                        task, instance, input_text, target = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    try:
                        text, finish = await ask(task, input_text)
                    except ClientRequestError:
                        raise  # a 4xx the endpoint will answer to every item: stop
                    except LLMError:
                        failed += 1
                        continue
                    record: dict[str, Any] = {
                        "id": task.id, "instance": instance, "instruction": task.instruction,
                        "input": input_text, "target": target, "response": text,
                        "model": config.model, "finish_reason": finish,
                    }
                    if target:
                        record["rouge_l"] = round(rouge_l(scorer, target, text), 6)
                    directory.append(PREDICTIONS, record)
                    written += 1
                    if on_item is not None:
                        on_item(len(done) + written, len(items))

            workers = min(config.in_flight_bound(), max(1, len(todo)))
            await asyncio.gather(*(worker() for _ in range(workers)))
            usage = client.snapshot()
        scores = [float(r["rouge_l"]) for _, r in read_jsonl(out / PREDICTIONS)
                  if isinstance(r.get("rouge_l"), int | float)]
        complete = len(done) + written
        mean = round(sum(scores) / len(scores), 6) if scores else None
        write_json_atomic(out / EVAL_JSON, {
            **identity,
            "version": __version__,
            "base_url": safe_url(config.base_url),
            "tasks_file": str(settings.tasks_file),
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "items": len(items), "done": complete, "failed_last_run": failed,
            "rouge_l_mean": mean, "rouge_l_scored": len(scores),
            "elapsed_s_last_run": round(time.monotonic() - started, 3),
            "usage_last_run": {k: usage.get(k) for k in ("tokens", "cost_usd", "calls",
                                                          "retries_total", "rate_limited")},
        })
    return EvalResult(len(items), complete, written, failed, mean, len(scores), out)
