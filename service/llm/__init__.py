"""OpenAI-compatible client: rate limits, retries, accounting.

    from service.llm import ClientSettings, LLMClient, LimiterSettings, Secret
    settings = ClientSettings("http://127.0.0.1:8000/v1", api_key=Secret(key), model="m",
                              limiter=LimiterSettings(rpm=3000, tpm=1_000_000, max_in_flight=256))
    async with LLMClient(settings) as client:
        result = await client.complete(["p1", "p2"], max_tokens=64, n=2)
        result.for_prompt(1)  # the two choices answering "p2"
"""

from service.llm.accounting import Accounting, BudgetSettings, Price
from service.llm.client import LLMClient
from service.llm.limiter import LimiterSettings, Permit, RateLimiter
from service.llm.loop import install_uvloop
from service.llm.secret import Secret
from service.llm.settings import ClientSettings, RetrySettings
from service.llm.types import Choice, Result, Usage

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
