"""Frozen settings of the client; every default comes from service.llm.constants."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.llm.accounting import BudgetSettings, Price
from service.llm.constants import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DEADLINE_S,
    DEFAULT_GIVE_UP_AFTER_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_REQUEST_TIMEOUT_S,
    USER_AGENT,
)
from service.llm.limiter import LimiterSettings
from service.secret import Secret, safe_url


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    deadline_s: float | None = DEFAULT_DEADLINE_S  # whole call, retries and waits included
    shrink_on_context_length: bool = True
    # every call to the endpoint failed this long: EndpointUnavailable ends the run
    give_up_after_s: float | None = DEFAULT_GIVE_UP_AFTER_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (got {self.max_attempts!r})")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0 (got {self.request_timeout_s!r})")
        if self.give_up_after_s is not None and not self.give_up_after_s > 0:
            raise ValueError(f"give_up_after_s must be > 0 (got {self.give_up_after_s!r})")


@dataclass(frozen=True)
class ClientSettings:
    """``base_url`` ends in /v1 like OPENAI_BASE_URL (http://127.0.0.1:8000/v1).
    ``api_key`` may be given as str; it is wrapped in :class:`Secret` (repr shows ***)."""

    base_url: str
    api_key: Secret | None = None
    model: str = "default"
    limiter: LimiterSettings = field(default_factory=LimiterSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    prices: Mapping[str, Price] = field(default_factory=dict)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    user_agent: str = USER_AGENT
    jitter_seed: int | None = None  # makes backoff jitter repeatable in tests
    # Non-streaming calls through the lean keep-alive pool (service.llm.http) when the URL
    # allows; False sends everything through aiohttp (the escape hatch).
    lean_http: bool = True
    # a response body, and what gzip/deflate inflate it to, past this fails the attempt
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):
            object.__setattr__(self, "api_key", Secret(self.api_key))
        if not self.api_key:
            object.__setattr__(self, "api_key", None)
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https:// "
                             f"(got {safe_url(self.base_url)!r})")
        if self.max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1 (got {self.max_response_bytes!r})")
