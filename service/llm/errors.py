"""The client's errors. Nothing else escapes :class:`service.llm.client.LLMClient`:
aiohttp and asyncio exceptions are translated at the boundary (CancelledError propagates).

    LLMError
    ├── RateLimitError        429 (retried)
    ├── ServerError           5xx (retried)
    ├── RequestTimeout        per-request timeout or hang (retried)
    │   └── DeadlineExceeded  the call's overall deadline passed (not retried)
    ├── ConnectionFailed      refused / reset / disconnected (retried)
    ├── BadResponse           200 with a body that is not the expected JSON (retried)
    ├── ClientRequestError    other 4xx: fails fast with status and server message
    │   └── ContextLengthError  prompt + max_tokens too long (max_tokens shrunk, retried)
    └── RetriesExhausted      attempts used up; ``last`` is the final cause
"""

from __future__ import annotations

from service.errors import LLMError


class RateLimitError(LLMError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = 429
        self.retry_after = retry_after


class ServerError(LLMError):
    kind = "server_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RequestTimeout(LLMError):
    kind = "timeout"


class DeadlineExceeded(RequestTimeout):
    kind = "deadline"


class ConnectionFailed(LLMError):
    kind = "connection"


class BadResponse(LLMError):
    kind = "bad_response"


class ClientRequestError(LLMError):
    kind = "client_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ContextLengthError(ClientRequestError):
    kind = "context_length"


class RetriesExhausted(LLMError):
    kind = "retries_exhausted"

    def __init__(self, message: str, last: LLMError, attempts: int) -> None:
        super().__init__(message)
        self.last = last
        self.attempts = attempts


RETRYABLE: tuple[type[LLMError], ...] = (
    RateLimitError,
    ServerError,
    ConnectionFailed,
    BadResponse,
    ContextLengthError,
)


def is_fatal(exc: BaseException) -> bool:
    """A 4xx other than 429 (bad key, unknown model, bad request) will not get better; a
    too-long prompt is the request's problem (it is shrunk and retried), not fatal."""
    return isinstance(exc, ClientRequestError) and not isinstance(exc, ContextLengthError)


def error_kind(exc: BaseException) -> str:
    """Short stable name for accounting: 'rate_limited', 'timeout', ..."""
    return str(getattr(exc, "kind", type(exc).__name__))


__all__ = [
    "RETRYABLE",
    "BadResponse",
    "ClientRequestError",
    "ConnectionFailed",
    "ContextLengthError",
    "DeadlineExceeded",
    "LLMError",
    "RateLimitError",
    "RequestTimeout",
    "RetriesExhausted",
    "ServerError",
    "error_kind",
    "is_fatal",
]
