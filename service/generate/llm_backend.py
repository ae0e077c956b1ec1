"""The production :class:`service.generate.backend.Backend`: pipeline stages over the HTTP client.

One :class:`LLMClient` (one aiohttp session, one limiter, one accounting) per endpoint;
every stage that talks to the same endpoint shares it, so the rate limit and the budget
hold for the whole run. Each stage may override endpoint, model and API
(``[stages.instances] model = ...``). With the completions API several prompts go in
one request (the endpoint answers them by ``index``), which multiplies throughput under a
requests-per-minute limit; chat sends one request per prompt, concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from service.config import Config
from service.generate.backend import Sampling, StageAnswer, StagePrompt
from service.llm import (
    BudgetSettings,
    ClientSettings,
    LimiterSettings,
    LLMClient,
    Price,
    Result,
    RetrySettings,
    install_uvloop,
)
from service.llm.accounting import Accounting
from service.llm.limiter import RateLimiter

__all__ = ["LLMBackend", "install_uvloop", "open_backend"]

DEFAULT_MODEL = "default"


class LLMBackend:
    """Routes each stage to its endpoint/model/API; see the module docstring."""

    def __init__(self, config: Config, clients: dict[str, LLMClient], accounting: Accounting,
                 list_prompts: bool = True) -> None:
        self.config = config
        self._clients = clients
        self.accounting = accounting
        self.list_prompts = list_prompts

    def _base_url(self, stage: str) -> str:
        url = self.config.stage(stage).base_url or self.config.base_url
        if url is None:
            raise ValueError("no endpoint configured")
        return url.rstrip("/")

    def stage_model(self, stage: str) -> str:
        return self.config.stage(stage).model or self.config.model or DEFAULT_MODEL

    def stage_api(self, stage: str) -> str:
        return self.config.stage(stage).api or self.config.api

    async def complete(
        self, stage: str, prompts: Sequence[StagePrompt], sampling: Sampling
    ) -> list[StageAnswer]:
        client = self._clients[self._base_url(stage)]
        model = self.stage_model(stage)
        options: dict[str, Any] = {
            "model": model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "presence_penalty": sampling.presence_penalty or None,
            "frequency_penalty": sampling.frequency_penalty or None,
            "stop": list(sampling.stop) or None,
            "seed": sampling.seed,
        }
        if self.stage_api(stage) == "chat":
            results = await asyncio.gather(
                *(client.chat(_messages(p), **options) for p in prompts)
            )
            self._record_stage(stage, results)
            return [_first(result.choices) for result in results]
        if self.list_prompts or len(prompts) == 1:
            result = await client.complete([p.text for p in prompts], **options)
            self._record_stage(stage, [result])
            return [_first(result.for_prompt(i)) for i in range(len(prompts))]
        results = await asyncio.gather(*(client.complete(p.text, **options) for p in prompts))
        self._record_stage(stage, results)
        return [_first(result.choices) for result in results]

    def _record_stage(self, stage: str, results: Sequence[Result]) -> None:
        for result in results:
            u = result.usage
            self.accounting.record_stage(stage, u.prompt_tokens, u.completion_tokens,
                                         u.cached_tokens)

    def limiters(self) -> list[RateLimiter]:
        return [client.limiter for client in self._clients.values()]

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = dict(self.accounting.snapshot())
        snap["total_tokens"] = self.accounting.total_tokens
        limiters = {url: client.limiter.snapshot() for url, client in self._clients.items()}
        snap["limiter"] = next(iter(limiters.values())) if len(limiters) == 1 else limiters
        snap["in_flight"] = sum(int(c.limiter.snapshot().get("in_flight", 0))
                                for c in self._clients.values())
        return snap


def _messages(prompt: StagePrompt) -> list[dict[str, str]]:
    messages = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    messages.append({"role": "user", "content": prompt.text})
    return messages


def _first(choices: Sequence[Any]) -> StageAnswer:
    """The first choice, or an empty one if the endpoint returned none for this prompt
    (an empty answer is parsed into nothing and counted, never crashes the run)."""
    if not choices:
        return StageAnswer("", "missing")
    choice = choices[0]
    return StageAnswer(str(choice.text), choice.finish_reason)


def prices_of(config: Config) -> dict[str, Price]:
    """The prices table as the accounting needs it (cached-input price, batch discount)."""
    return {model: Price(i, o, config.cached_input_prices.get(model), config.batch_discount)
            for model, (i, o) in config.prices.items()}


def client_settings(config: Config, base_url: str) -> ClientSettings:
    return ClientSettings(
        base_url=base_url,
        api_key=config.api_key,
        model=config.model or DEFAULT_MODEL,
        limiter=LimiterSettings(rpm=config.rpm, tpm=config.tpm,
                                max_in_flight=config.in_flight_bound(),
                                in_flight=config.in_flight_mode()),
        retry=RetrySettings(max_attempts=config.max_attempts,
                            request_timeout_s=config.request_timeout,
                            deadline_s=config.deadline,
                            give_up_after_s=config.give_up_after),
        prices=prices_of(config),
        budget=BudgetSettings(max_total_tokens=config.max_total_tokens,
                              budget_usd=config.budget_usd),
        jitter_seed=config.seed,
        # SELFINSTRUCT_HTTP_CLIENT=aiohttp: every call through aiohttp instead of the lean pool
        lean_http=os.environ.get("SELFINSTRUCT_HTTP_CLIENT", "lean") != "aiohttp",
        max_response_bytes=config.max_response_bytes,
    )


@contextlib.asynccontextmanager
async def open_backend(
    config: Config, *, list_prompts: bool = True, limiter: RateLimiter | None = None
) -> AsyncIterator[LLMBackend]:
    """Clients for every endpoint the stages use, closed on exit. One accounting object
    is shared so the budget covers every endpoint together; ``limiter`` (e.g. the
    Redis-shared one of a distributed run) replaces each client's own."""
    if config.base_url is None and not any(s.base_url for s in config.stages.values()):
        raise ValueError("open_backend needs an endpoint: set base_url")
    urls = {(config.stage(s).base_url or config.base_url or "").rstrip("/")
            for s in ("instructions", "classify", "instances")}
    first = client_settings(config, sorted(urls)[0])
    accounting = Accounting(first.prices, first.budget)
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, LLMClient] = {}
        for url in sorted(urls):
            client = LLMClient(client_settings(config, url), accounting=accounting,
                               limiter=limiter)
            clients[url] = await stack.enter_async_context(client)
        yield LLMBackend(config, clients, accounting, list_prompts=list_prompts)
