"""The client's errors. Nothing else escapes :class:`service.llm.client.LLMClient`:
aiohttp and asyncio exceptions are translated at the boundary (CancelledError propagates).

    LLMError
    ├── RateLimitError        429 (retried)
    ├── ServerError           5xx (retried)
    ├── RequestTimeout        per-request timeout or hang (retried)
    │   └── DeadlineExceeded  the call's overall deadline passed (not retried)
    ├── ConnectionFailed      refused / reset / disconnected (retried)
    ├── BadResponse           200 with a body that is not the expected JSON (retried)
    │   └── ResponseTooLarge  body (or its inflated size) past max_response_bytes (retried)
    ├── ClientRequestError    other 4xx: fails fast with status and server message
    │   └── ContextLengthError  prompt + max_tokens too long (max_tokens shrunk, retried)
    ├── RetriesExhausted      attempts used up; ``last`` is the final cause
    ├── ClientSetupError      our own key or URL cannot be sent (fatal at once, never retried)
    └── EndpointUnavailable   every call failed for give_up_after seconds (fatal: ends the run)

``fatal = True`` marks the errors that end a run (the pipeline stops on them).
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


class ResponseTooLarge(BadResponse):
    kind = "response_too_large"


class ClientSetupError(LLMError):
    """The request cannot be built from our own settings (a key with CR/LF or characters
    outside Latin-1, a key plus credentials in the URL, a malformed URL): no retry can
    help, and nothing was sent."""

    kind = "client_setup"
    fatal = True


class EndpointUnavailable(LLMError):
    """Every call to the endpoint failed (no connection, timeouts, 5xx, unusable bodies)
    for ``give_up_after`` seconds: the run ends instead of retrying for ever."""

    kind = "endpoint_unavailable"
    fatal = True

    def __init__(self, message: str, failing_s: float, attempts: int) -> None:
        super().__init__(message)
        self.failing_s = failing_s
        self.attempts = attempts


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


def error_kind(exc: BaseException) -> str:
    """Short stable name for accounting: 'rate_limited', 'timeout', ..."""
    return str(getattr(exc, "kind", type(exc).__name__))


__all__ = [
    "RETRYABLE",
    "BadResponse",
    "ClientRequestError",
    "ClientSetupError",
    "ConnectionFailed",
    "ContextLengthError",
    "DeadlineExceeded",
    "EndpointUnavailable",
    "LLMError",
    "RateLimitError",
    "RequestTimeout",
    "ResponseTooLarge",
    "RetriesExhausted",
    "ServerError",
    "error_kind",
]
