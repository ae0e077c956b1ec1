"""The project's exception hierarchy, in one place. Everything the library raises on
purpose derives from :class:`SelfInstructError`; the CLI prints its message and exits
with ``exit_code``. The LLM client translates aiohttp and asyncio exceptions into the
LLMError branch at its boundary (CancelledError propagates).

    SelfInstructError
    ├── ConfigError               bad configuration value (names the key and value)
    │   └── NeedsKey              a job needs the worker's key (service.serve.policy)
    ├── InputError                bad input file (names file, line and field)
    ├── RunDirError               run directory problems (locked, corrupt, mismatched)
    ├── BudgetExceeded            a token or cost cap was reached
    ├── LLMError                  the LLM client's errors
    │   ├── RateLimitError        429 (retried)
    │   ├── ServerError           5xx (retried)
    │   ├── RequestTimeout        per-request timeout or hang (retried)
    │   │   └── DeadlineExceeded  the call's overall deadline passed (not retried)
    │   ├── ConnectionFailed      refused / reset / disconnected (retried)
    │   ├── BadResponse           200 with a body that is not the expected JSON (retried)
    │   │   └── ResponseTooLarge  body (or its inflated size) past max_response_bytes (retried)
    │   ├── ClientRequestError    other 4xx: fails fast with status and server message
    │   │   └── ContextLengthError  prompt + max_tokens too long (shrunk, retried)
    │   ├── RetriesExhausted      attempts used up; ``last`` is the final cause
    │   ├── ClientSetupError      our own key or URL cannot be sent (fatal at once, never retried)
    │   └── EndpointUnavailable   every call failed for give_up_after seconds (fatal: ends the run)
    ├── LocalModelError           the embedded model did not start (service.llm.local)
    └── worker (service.serve.jobs): Draining, StateDirLocked, TooManyJobs, WrongState
"""

from __future__ import annotations


class SelfInstructError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code: int = 1


class ConfigError(SelfInstructError):
    """A configuration key has a bad value; the message names the key and the value."""

    exit_code = 2


class InputError(SelfInstructError):
    """An input file is malformed; the message names the file, the line and the field."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, field: str | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem
        where = path
        if line is not None:
            where += f":{line}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")


class RunDirError(SelfInstructError):
    """The run directory cannot be used (locked by another process, corrupt, ...)."""


class LLMError(SelfInstructError):
    """Base of the LLM client's errors (the subclasses below)."""


class BudgetExceeded(SelfInstructError):
    """A configured token or cost budget has been reached; no new calls are made."""


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


class EndpointUnavailable(LLMError):
    """Every call to the endpoint failed (no connection, timeouts, 5xx, unusable bodies)
    for ``give_up_after`` seconds: the run ends instead of retrying for ever."""

    kind = "endpoint_unavailable"

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


def is_fatal(exc: BaseException) -> bool:
    """A 4xx other than 429 (bad key, unknown model, bad request) will not get better, nor
    will our own unsendable settings or an endpoint that failed every call for
    give_up_after; a too-long prompt is the request's problem (shrunk and retried)."""
    if isinstance(exc, ClientSetupError | EndpointUnavailable):
        return True
    return isinstance(exc, ClientRequestError) and not isinstance(exc, ContextLengthError)


def error_kind(exc: BaseException) -> str:
    """Short stable name for accounting: 'rate_limited', 'timeout', ..."""
    return str(getattr(exc, "kind", type(exc).__name__))
