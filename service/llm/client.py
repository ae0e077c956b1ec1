"""Async OpenAI-compatible client: one aiohttp session, a shared limiter, retries,
accounting. ``complete`` posts to {base_url}/completions, ``chat`` to
{base_url}/chat/completions; both can stream (SSE) and then measure time to first token.

Only LLMError subclasses (service.errors) and BudgetExceeded leave this module;
CancelledError propagates untouched.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from operator import attrgetter
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from service.errors import (
    BadResponse,
    ClientRequestError,
    ClientSetupError,
    ConnectionFailed,
    ContextLengthError,
    DeadlineExceeded,
    EndpointUnavailable,
    LLMError,
    RateLimitError,
    RequestTimeout,
    ResponseTooLarge,
    RetriesExhausted,
    ServerError,
    error_kind,
)
from service.llm import http as lean_http
from service.llm.accounting import Accounting
from service.llm.constants import KEEPALIVE_S
from service.llm.health import EndpointHealth
from service.llm.http import HTTPPool
from service.llm.limiter import Outcome, Permit, RateLimiter
from service.llm.retry import (
    error_body_message,
    is_context_length_error,
    retry_after_from_headers,
    retry_delay,
    should_retry,
    shrink_max_tokens,
    truncate_message,
)
from service.llm.settings import ClientSettings
from service.llm.tokens import (
    estimate_chat_tokens,
    estimate_prompt_tokens,
    estimate_text_tokens,
    request_weight,
)
from service.llm.types import Choice, Result, Usage
from service.llm.usage import usage_of
from service.secret import has_credentials, redact, safe_url

Message = Mapping[str, str]
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_by_index = attrgetter("index")
# Attempts that say nothing about the endpoint being up; a 429 or another 4xx is an answer.
_ENDPOINT_FAILURES = (ConnectionFailed, RequestTimeout, ServerError, BadResponse)


def setup_problem(settings: ClientSettings) -> str | None:
    """What in our own settings makes every request impossible (None: nothing). Checked
    once, before anything is sent: such an error is fatal at once, never retried, and
    never counted as the endpoint's bad response. The key itself is never shown."""
    shown = safe_url(settings.base_url)
    try:
        parts = urlsplit(settings.base_url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        return f"base_url {shown!r} is not a valid URL ({safe_url(str(exc))})"
    if not parts.hostname:
        return f"base_url {shown!r} has no host"
    if any(c in settings.base_url for c in " \r\n\t\x00"):
        return f"base_url {shown!r} has whitespace or control characters"
    key = settings.api_key.reveal() if settings.api_key else ""
    if key:
        if has_credentials(settings.base_url):
            return (f"base_url {shown!r} carries credentials and an api_key is set too: "
                    "give the credentials one way")
        if not _header_safe(key):
            return ("api_key has characters that cannot be sent in an HTTP header "
                    "(CR, LF, other control characters, or characters outside Latin-1)")
    if not _header_safe(settings.user_agent):
        return "user_agent has characters that cannot be sent in an HTTP header"
    return None


def _header_safe(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(ord(c) < 32 or ord(c) == 127 for c in value)


class LLMClient:
    """Use as ``async with LLMClient(settings) as client:``. Share ``limiter`` and
    ``accounting`` between clients that talk to the same account."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        limiter: RateLimiter | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        self.settings = settings
        self.limiter = limiter or RateLimiter(settings.limiter)
        self.accounting = accounting or Accounting(settings.prices, settings.budget)
        self._rng = random.Random(settings.jitter_seed)
        self._session: aiohttp.ClientSession | None = None
        # Non-streaming calls go through the lean pool (service.llm.http) when the URL
        # allows; streaming, unusual URLs and redirects use the aiohttp session.
        self._pool: HTTPPool | None = None
        self._pool_ok = settings.lean_http and lean_http.supports(settings.base_url) and not any(
            "\r" in v or "\n" in v for v in self._headers().values())
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._setup_problem = setup_problem(settings)
        self._shown_url = safe_url(settings.base_url)  # for messages: never credentials
        retry = settings.retry
        self.health = EndpointHealth(retry.give_up_after_s, retry.backoff_base_s,
                                     retry.backoff_cap_s)

    def __repr__(self) -> str:
        return f"LLMClient(base_url={self._shown_url!r}, model={self.settings.model!r})"

    # ------------------------------------------------------------------ lifecycle
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": self.settings.user_agent}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key.reveal()}"
        return headers

    def _get_pool(self) -> HTTPPool | None:
        pool = self._pool
        if pool is not None and pool.loop is not None \
                and pool.loop is not asyncio.get_running_loop():
            pool.abandon()  # connections of another event loop: unusable here
            pool = None
        if pool is None or pool.closed:
            if not self._pool_ok:
                return None
            pool = self._pool = HTTPPool(self.settings.base_url, self._headers(),
                                         limit=self.settings.limiter.max_in_flight,
                                         keepalive_s=KEEPALIVE_S,
                                         max_body=self.settings.max_response_bytes)
        return pool

    def _client_timeout(self, timeout: float) -> aiohttp.ClientTimeout:
        cached = self._timeouts.get(timeout)
        if cached is None:
            cached = aiohttp.ClientTimeout(
                total=timeout, sock_connect=min(timeout, self.settings.retry.connect_timeout_s))
            if len(self._timeouts) < 64:  # deadline-clamped values vary: keep a few
                self._timeouts[timeout] = cached
        return cached

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = self._headers()
            connector = aiohttp.TCPConnector(
                limit=self.settings.limiter.max_in_flight, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, json_serialize=lambda o: orjson.dumps(o).decode()
            )
        return self._session

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {**self.accounting.snapshot(), "limiter": self.limiter.snapshot()}

    # ------------------------------------------------------------------ public calls
    async def complete(
        self,
        prompt: str | Sequence[str],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float | None = None,
        top_p: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        stop: str | Sequence[str] | None = None,
        n: int = 1,
        seed: int | None = None,
        stream: bool = False,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Result:
        """Legacy completions. With a list of prompts the choices come back mapped by
        ``index``: prompt i owns indices i*n .. i*n+n-1 (:meth:`Result.for_prompt`)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("complete() needs at least one prompt")
        body = self._body(model, max_tokens, temperature, top_p, presence_penalty,
                          frequency_penalty, stop, n, seed, stream, extra_body)
        body["prompt"] = prompts[0] if isinstance(prompt, str) else prompts
        return await self._call("/completions", body, estimate_prompt_tokens(prompts),
                                len(prompts), n, chat=False)

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float | None = None,
        top_p: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        stop: str | Sequence[str] | None = None,
        n: int = 1,
        seed: int | None = None,
        stream: bool = False,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Result:
        """Chat completions; ``messages`` like [{"role": "user", "content": "..."}]."""
        if not messages:
            raise ValueError("chat() needs at least one message")
        body = self._body(model, max_tokens, temperature, top_p, presence_penalty,
                          frequency_penalty, stop, n, seed, stream, extra_body)
        body["messages"] = [dict(m) for m in messages]
        return await self._call("/chat/completions", body, estimate_chat_tokens(messages),
                                1, n, chat=True)

    # ------------------------------------------------------------------ internals
    def _body(
        self,
        model: str | None,
        max_tokens: int,
        temperature: float | None,
        top_p: float | None,
        presence_penalty: float | None,
        frequency_penalty: float | None,
        stop: str | Sequence[str] | None,
        n: int,
        seed: int | None,
        stream: bool,
        extra_body: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        if n < 1:
            raise ValueError(f"n must be >= 1 (got {n})")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (got {max_tokens})")
        body: dict[str, Any] = {"model": model or self.settings.model, "max_tokens": max_tokens}
        optional = {"temperature": temperature, "top_p": top_p, "presence_penalty": presence_penalty,
                    "frequency_penalty": frequency_penalty, "seed": seed}
        body.update({k: v for k, v in optional.items() if v is not None})
        if stop is not None:
            body["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if n != 1:
            body["n"] = n
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if extra_body:
            body.update(extra_body)
        return body

    async def _call(
        self, path: str, body: dict[str, Any], prompt_tokens: int, n_prompts: int, n: int,
        *, chat: bool,
    ) -> Result:
        # New calls stop at the budget; calls already past this line finish normally.
        self.accounting.check_budget()
        if self._setup_problem is not None:
            self.accounting.record_call(False, ClientSetupError.kind)
            raise ClientSetupError(self._setup_problem)
        retry = self.settings.retry
        loop = asyncio.get_running_loop()
        deadline = None if retry.deadline_s is None else loop.time() + retry.deadline_s
        if self.health.streak:
            await self._pause_while_failing(loop, deadline)
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"deadline of {retry.deadline_s}s passed after {attempt - 1} attempts")
            weight = request_weight(prompt_tokens, int(body["max_tokens"]), n, n_prompts)
            try:
                # The overall deadline also bounds the wait for a rate-limit permit.
                async with asyncio.timeout(remaining):
                    permit = await self.limiter.acquire(weight)
            except TimeoutError:
                self.accounting.record_call(False, "deadline")
                raise DeadlineExceeded(
                    f"deadline of {retry.deadline_s}s passed waiting for the rate limiter"
                ) from None
            try:
                timeout = retry.request_timeout_s if remaining is None else min(retry.request_timeout_s, remaining)
                result = await self._attempt(path, body, permit, timeout, n_prompts, n, chat,
                                             attempt, started)
            except LLMError as exc:
                kind = error_kind(exc)
                permit.finish(_outcome(exc))
                if isinstance(exc, _ENDPOINT_FAILURES):
                    self.health.record_failure(loop.time())
                    self._give_up_if_due(loop)
                else:
                    self.health.record_answer()
                if isinstance(exc, RateLimitError):
                    permit.settle(0)  # the server did not admit it
                    self.limiter.on_rate_limited(exc.retry_after)
                if isinstance(exc, ContextLengthError):
                    if not retry.shrink_on_context_length or body["max_tokens"] <= 1:
                        self.accounting.record_call(False, kind)
                        raise
                    body["max_tokens"] = shrink_max_tokens(int(body["max_tokens"]))
                    delay = 0.0
                elif isinstance(exc, ClientRequestError):
                    self.accounting.record_call(False, kind)
                    raise  # other 4xx: fail fast
                else:
                    retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
                    delay = retry_delay(attempt - 1, self._rng, retry_after,
                                        retry.backoff_base_s, retry.backoff_cap_s)
                left = None if deadline is None else deadline - loop.time()
                if not should_retry(attempt, retry.max_attempts, left, delay):
                    self.accounting.record_call(False, RetriesExhausted.kind)
                    raise RetriesExhausted(
                        f"gave up after {attempt} attempt(s); last error ({kind}): {exc}", exc, attempt
                    ) from exc
                self.accounting.record_retry(kind)
            else:
                permit.finish("ok")
                self.health.record_answer()
                self.accounting.record_call(True, "ok", result.latency_s, result.ttft_s)
                return result
            finally:
                permit.release()
            if delay > 0:
                give_up_in = self.health.give_up_in(loop.time())
                if give_up_in is not None:  # wake for the give-up moment, not after it
                    delay = min(delay, max(0.0, give_up_in))
                await asyncio.sleep(delay)

    async def _pause_while_failing(self, loop: asyncio.AbstractEventLoop,
                                   deadline: float | None) -> None:
        """Back off before a new call while the endpoint fails every call: a closed port
        must not turn the pipeline's retry loop into a spin. The pause is jittered, capped
        (backoff_cap_s) and cut short at the give-up moment and the call's deadline."""
        self._give_up_if_due(loop)
        pause = self.health.pause(self._rng)
        now = loop.time()
        give_up_in = self.health.give_up_in(now)
        if give_up_in is not None:
            pause = min(pause, max(0.0, give_up_in))
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - now))
        if pause > 0:
            await asyncio.sleep(pause)
        self._give_up_if_due(loop)

    def _give_up_if_due(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.health.check(loop.time(), f"at {self._shown_url}")
        except EndpointUnavailable:
            self.accounting.record_call(False, EndpointUnavailable.kind)
            raise

    async def _attempt(
        self, path: str, body: dict[str, Any], permit: Permit, timeout: float,
        n_prompts: int, n: int, chat: bool, attempt: int, started: float,
    ) -> Result:
        url = self._shown_url + path  # for messages only: credentials masked
        t0 = time.perf_counter()
        stream = bool(body.get("stream"))
        pool = None if stream else self._get_pool()
        data: Any = None
        ttft: float | None = None
        try:
            if pool is not None:
                status, headers, raw = await pool.post(
                    path, orjson.dumps(body), timeout,
                    min(timeout, self.settings.retry.connect_timeout_s))
                if status in _REDIRECTS:
                    # aiohttp follows redirects: from now on every call goes through it
                    self._pool_ok = False
                    pool.close()
                    self._pool = pool = None
                else:
                    self.limiter.on_headers(headers)
                    if status != 200:
                        self.accounting.record_attempt(str(status))
                        raise self._status_error(status, raw, headers, url)
                    data = orjson.loads(raw)
            if pool is None:
                left = max(0.001, timeout - (time.perf_counter() - t0))
                session = self._get_session()
                limit = self.settings.max_response_bytes
                async with session.post(self.settings.base_url + path, data=orjson.dumps(body),
                                        timeout=self._client_timeout(left)) as resp:
                    self.limiter.on_headers(resp.headers)
                    if resp.status != 200:
                        self.accounting.record_attempt(str(resp.status))
                        raw = await _read_capped(resp, limit)
                        raise self._status_error(resp.status, raw, resp.headers, url)
                    if stream:
                        data, ttft = await _read_sse(resp, t0, chat, limit)
                    else:
                        data = orjson.loads(await _read_capped(resp, limit))
            latency = time.perf_counter() - t0
            result = _parse(data, body, n_prompts, n, chat, latency, ttft, attempt, started)
        except ResponseTooLarge as exc:  # the aiohttp path's cap
            self.accounting.record_attempt(ResponseTooLarge.kind)
            raise ResponseTooLarge(self._clean(f"response from {url}: {exc}")) from None
        except BadResponse as exc:  # from the stream reader or the shape checks
            self.accounting.record_attempt(BadResponse.kind)
            raise BadResponse(self._clean(str(exc))) from None
        except LLMError:
            raise  # status errors: recorded above, messages already cleaned
        except lean_http.BodyTooLarge as exc:  # the pool's cap (body or inflated size)
            self.accounting.record_attempt(ResponseTooLarge.kind)
            raise ResponseTooLarge(self._clean(f"response from {url}: {exc}")) from None
        except TimeoutError:
            self.accounting.record_attempt(RequestTimeout.kind)
            raise RequestTimeout(f"no complete response from {url} within {timeout:.1f}s") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as exc:
            self.accounting.record_attempt(ConnectionFailed.kind)
            raise ConnectionFailed(self._clean(f"connection to {url} failed: {type(exc).__name__}: {exc}")) from None
        except aiohttp.ClientError as exc:
            self.accounting.record_attempt(ConnectionFailed.kind)
            raise ConnectionFailed(self._clean(f"request to {url} failed: {type(exc).__name__}: {exc}")) from None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # orjson.JSONDecodeError is a ValueError; shape errors land here too
            self.accounting.record_attempt(BadResponse.kind)
            raise BadResponse(self._clean(f"unusable response body from {url}: {type(exc).__name__}: {exc}")) from None
        self.accounting.record_attempt("200")
        usage = result.usage
        self.accounting.record_usage(result.model, usage.prompt_tokens, usage.completion_tokens,
                                     usage.cached_tokens)
        permit.settle(usage.prompt_tokens + usage.completion_tokens)
        return result

    def _clean(self, text: str) -> str:
        return truncate_message(safe_url(redact(text, self.settings.api_key)))

    def _status_error(
        self, status: int, raw: bytes, headers: Mapping[str, str], url: str
    ) -> LLMError:
        message = _server_message(raw)
        text = self._clean(f"HTTP {status} from {url}: {message}")
        if status == 429:
            return RateLimitError(text, retry_after_from_headers(headers, time.time()))
        if status >= 500 or status == 408:
            return ServerError(text, status)
        if is_context_length_error(status, message):
            return ContextLengthError(text, status)
        return ClientRequestError(text, status)


def _outcome(exc: LLMError) -> Outcome:
    """What a failed attempt says about the server's load (for the limiter)."""
    if isinstance(exc, RateLimitError):
        return "rate_limited"
    if isinstance(exc, RequestTimeout | ServerError | ConnectionFailed):
        return "overload"
    return "failed"


def _server_message(raw: bytes) -> str:
    message = error_body_message(raw, top_level=True)
    return raw.decode("utf-8", "replace") if message is None else message


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body (as aiohttp inflates it, in bounded pieces) up to ``limit`` bytes; past it
    the connection is closed and ResponseTooLarge raised (the lean pool's cap, the same
    when SELFINSTRUCT_HTTP_CLIENT=aiohttp)."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        resp.close()
        raise ResponseTooLarge(f"Content-Length {declared} is past the limit of {limit} "
                               "bytes (max_response_bytes)")
    buf = bytearray()
    async for piece in resp.content.iter_chunked(64 * 1024):
        buf += piece
        if len(buf) > limit:
            resp.close()
            raise ResponseTooLarge(f"response body past the limit of {limit} bytes "
                                   "(max_response_bytes)")
    return bytes(buf)


async def _read_sse(resp: aiohttp.ClientResponse, t0: float, chat: bool,
                    limit: int) -> tuple[dict[str, Any], float | None]:
    """Fold an SSE stream into one non-streaming-shaped response dict; the stream's bytes
    count against ``limit`` like a body's."""
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    usage: dict[str, Any] | None = None
    model = ""
    ttft: float | None = None
    done = False
    seen = 0
    async for raw_line in resp.content:
        seen += len(raw_line)
        if seen > limit:
            resp.close()
            raise ResponseTooLarge(f"event stream past the limit of {limit} bytes "
                                   "(max_response_bytes)")
        line = raw_line.strip()
        if not line.startswith(b"data:"):
            continue  # comments, event names, blank separators
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        chunk = orjson.loads(payload)
        if "error" in chunk:
            raise BadResponse(truncate_message(f"error event in stream: {chunk['error']}"))
        model = chunk.get("model") or model
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            idx = int(c.get("index", 0))
            piece = (c.get("delta") or {}).get("content") if chat else c.get("text")
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                texts.setdefault(idx, []).append(piece)
            else:
                texts.setdefault(idx, [])
            if c.get("finish_reason") is not None:
                finish[idx] = c["finish_reason"]
    if not done:
        raise BadResponse("stream ended before data: [DONE]")
    choices = [
        {"index": i, "finish_reason": finish.get(i),
         **({"message": {"content": "".join(t)}} if chat else {"text": "".join(t)})}
        for i, t in sorted(texts.items())
    ]
    return {"model": model, "choices": choices, "usage": usage}, ttft


def _parse(
    data: Any, body: Mapping[str, Any], n_prompts: int, n: int, chat: bool,
    latency: float, ttft: float | None, attempts: int = 1, started: float | None = None,
) -> Result:
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise BadResponse("response has no 'choices' list")
    choices: list[Choice] = []
    for pos, c in enumerate(data["choices"]):
        idx = int(c.get("index", pos))
        text = (c["message"].get("content") or "") if chat else c["text"]
        if not isinstance(text, str):
            raise BadResponse("choice text is not a string")
        choices.append(Choice(text=text, finish_reason=c.get("finish_reason"), index=idx,
                              prompt_index=idx // n))
    choices.sort(key=_by_index)
    if {ch.index for ch in choices} != set(range(n_prompts * n)):
        raise BadResponse(f"expected choice indices 0..{n_prompts * n - 1}, got {[ch.index for ch in choices]}")
    # Negative counts would credit the budget and the limiter: usage_of clamps them.
    parsed_usage = usage_of(data.get("usage"))
    if parsed_usage is not None:
        usage = parsed_usage
    else:  # servers that omit usage: estimate, so budgets and the limiter still see tokens
        prompt_text = body.get("prompt")
        prompts = [prompt_text] if isinstance(prompt_text, str) else list(prompt_text or [])
        p_tokens = estimate_chat_tokens(body["messages"]) if chat else estimate_prompt_tokens(prompts)
        usage = Usage(p_tokens, sum(estimate_text_tokens(ch.text) for ch in choices))
    return Result(
        model=str(data.get("model") or body.get("model") or ""),
        choices=tuple(choices),
        usage=usage,
        latency_s=latency,
        ttft_s=ttft,
        attempts=attempts,
        max_tokens=int(body["max_tokens"]),
        n_prompts=n_prompts,
        id=data.get("id"),
        extra={} if started is None else {"total_s": round(time.perf_counter() - started, 6)},
    )
