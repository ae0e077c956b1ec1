"""OpenAI-compatible client: rate limits, retries, accounting.

    from service.llm import ClientSettings, LLMClient, LimiterSettings, Secret
    settings = ClientSettings("http://127.0.0.1:8000/v1", api_key=Secret(key), model="m",
                              limiter=LimiterSettings(rpm=3000, tpm=1_000_000, max_in_flight=256))
    async with LLMClient(settings) as client:
        result = await client.complete(["p1", "p2"], max_tokens=64, n=2)
        result.for_prompt(1)  # the two choices answering "p2"
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.llm.accounting import Accounting, BudgetSettings, Price
    from service.llm.client import LLMClient
    from service.llm.limiter import LimiterSettings, Permit, RateLimiter
    from service.llm.loop import install_uvloop
    from service.llm.settings import ClientSettings, RetrySettings
    from service.llm.types import Choice, Result, Usage
    from service.secret import Secret

# name -> module: loaded on first use, so importing a light submodule (the defaults in
# service.llm.constants, which config reads) does not pull in aiohttp.
_EXPORTS = {
    "Accounting": "accounting", "BudgetSettings": "accounting", "Price": "accounting",
    "LLMClient": "client", "LimiterSettings": "limiter", "Permit": "limiter",
    "RateLimiter": "limiter", "install_uvloop": "loop", "Secret": "service.secret",
    "ClientSettings": "settings", "RetrySettings": "settings", "Choice": "types",
    "Result": "types", "Usage": "types",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'service.llm' has no attribute {name!r}")
    path = module if "." in module else f"service.llm.{module}"
    return getattr(importlib.import_module(path), name)


__all__ = [
    "Accounting",
    "BudgetSettings",
    "Choice",
    "ClientSettings",
    "LLMClient",
    "LimiterSettings",
    "Permit",
    "Price",
    "RateLimiter",
    "Result",
    "RetrySettings",
    "Secret",
    "Usage",
    "install_uvloop",
]
