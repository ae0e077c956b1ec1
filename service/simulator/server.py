"""A simulated OpenAI-compatible endpoint on loopback (aiohttp): rate limits, latency,
faults and deterministic Self-Instruct-format answers.

    async with SimulatedServer(SimSettings(rpm=600, error_rate=0.1)) as sim:
        sim.base_url        # "http://127.0.0.1:PORT/v1"
        sim.stats()         # what it served (also GET /stats)

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /stats.

Order of a request: auth (when ``api_key`` is set) -> body validation (400) -> context
length (400 ``context_length_exceeded``) -> RPM/TPM admission (429 with Retry-After and
``x-ratelimit-*``) -> fault draw -> latency -> answer. Every response of the two API
routes carries the ``x-ratelimit-*`` headers of the configured limits.

Determinism: an answer depends only on the prompt, the server ``seed``, the choice's index
within its prompt and (when the request samples, temperature != 0) the request's ``seed``.
Faults and latency jitter are drawn from generators seeded with ``seed``, one draw a
request in arrival order, so a sequential client sees the same faults every run.

Cheap per request (one core serves thousands of concurrent connections): answers are
cached by (prompt, seeds, choice), waits are ``asyncio.sleep``, no thread or process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Any, Final

import orjson
from aiohttp import web

from service.llm.loop import raise_fd_limit
from service.llm.tokens import estimate_chat_tokens, estimate_text_tokens
from service.simulator.answers import AnswerSettings, answer, rng_for
from service.simulator.batch import BatchService, BatchSimSettings
from service.simulator.capacity import BatchCapacity, QueueFull
from service.simulator.prompt_cache import PromptCache, PromptCacheSettings
from service.simulator.ratelimit import ServerLimiter
from service.simulator.settings import SimSettings

DEFAULT_MAX_TOKENS: Final = 256  # when a request gives none
MAX_N: Final = 128
MAX_STOPS: Final = 4  # as the OpenAI API allows
STREAM_PIECES: Final = 8  # content chunks a choice is streamed in (at most)
STREAM_TTFT_SHARE: Final = 0.5  # share of the latency spent before the first chunk
BACKLOG: Final = 4096
FAULTS: Final = ("error", "reset", "garbage", "hang", "truncate")
CHARS_PER_TOKEN: Final = 4
_JSON = "application/json"


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class _Parsed:
    chat: bool
    prompts: tuple[str, ...]  # completions: the prompts; chat: one joined text
    prompt_tokens: tuple[int, ...]
    model: str
    max_tokens: int
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    answer_seed: str


@dataclass(frozen=True)
class ReceivedRequest:
    """What one request asked for, as the server parsed it (settings.record_requests)."""

    chat: bool
    prompts: tuple[str, ...]
    max_tokens: int
    stop: tuple[str, ...]


@lru_cache(maxsize=2048)  # a few kB a prompt: ~15 MB at most
def _cached_answer(prompt: str, seed: str, choice: int, duplicate_rate: float,
                   bad_item_rate: float) -> str:
    settings = AnswerSettings(duplicate_rate=duplicate_rate, bad_item_rate=bad_item_rate)
    return answer(prompt, rng_for(prompt, seed, choice), settings)


def apply_limits(text: str, max_tokens: int, stop: Sequence[str]) -> tuple[str, str]:
    """Cut ``text`` at the first stop sequence ("stop") or at ``max_tokens`` estimated
    tokens ("length"), whichever comes first, as a model generating left to right would."""
    cut = len(text)
    for s in stop:
        if s:
            pos = text.find(s)
            if 0 <= pos < cut:
                cut = pos
    limit_chars = max_tokens * CHARS_PER_TOKEN
    if limit_chars < cut:
        return text[:limit_chars], "length"
    return text[:cut], "stop"


def _error_body(message: str, type_: str, param: str | None = None,
                code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class SimulatedServer:
    """The simulated endpoint; an async context manager (start on enter, stop on exit)."""

    def __init__(self, settings: SimSettings | None = None, *,
                 prompt_cache: PromptCacheSettings | None = None,
                 batch: BatchSimSettings | None = None) -> None:
        self.settings = settings or SimSettings()
        self.prompt_cache = PromptCache(prompt_cache)
        self.batch = BatchService(self, batch)
        self._limiter = self._make_limiter(self.settings)
        self._capacity = self._make_capacity(self.settings)
        self._fault_rng = random.Random(f"faults:{self.settings.seed}")
        self._latency_rng = random.Random(f"latency:{self.settings.seed}")
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._port: int | None = None
        self._started_at = time.monotonic()
        self._reset_counters()

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def _make_limiter(settings: SimSettings) -> ServerLimiter:
        return ServerLimiter(settings.rpm, settings.tpm, settings.burst_seconds,
                             announce=settings.ratelimit_headers)

    @staticmethod
    def _make_capacity(settings: SimSettings) -> BatchCapacity | None:
        if settings.capacity is None:
            return None
        return BatchCapacity(settings.capacity, settings.batch_slowdown, settings.queue_limit)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/stats", self._stats)
        self.batch.register(app)  # the Batch API: /v1/files, /v1/batches
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        raise_fd_limit()
        self._closing = asyncio.Event()
        runner = web.AppRunner(self.build_app(), access_log=None, handler_cancellation=True,
                               shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port, backlog=BACKLOG,
                           reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._started_at = time.monotonic()

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._closing.set()  # wakes every hang at once
        runner, self._runner = self._runner, None
        await runner.cleanup()

    aclose = stop

    async def __aenter__(self) -> SimulatedServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("SimulatedServer is not running")
        return self._port

    @property
    def url(self) -> str:
        """Root URL, "http://127.0.0.1:PORT" (no /v1)."""
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        elif host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What clients use as OPENAI_BASE_URL: "http://127.0.0.1:PORT/v1"."""
        return self.url + "/v1"

    def update(self, **changes: Any) -> SimSettings:
        """Change settings while running (fault rates, latency, limits, seed...; validated
        like the constructor). A new rpm/tpm starts fresh buckets, a new seed restarts the
        fault and latency sequences; host/port changes take effect on the next start."""
        new = dataclasses.replace(self.settings, **changes)
        old = self.settings
        if (new.rpm, new.tpm, new.burst_seconds, new.ratelimit_headers) != \
                (old.rpm, old.tpm, old.burst_seconds, old.ratelimit_headers):
            self._limiter = self._make_limiter(new)
        if (new.capacity, new.batch_slowdown, new.queue_limit) != \
                (old.capacity, old.batch_slowdown, old.queue_limit):
            self._capacity = self._make_capacity(new)
        if new.seed != old.seed:
            self._fault_rng = random.Random(f"faults:{new.seed}")
            self._latency_rng = random.Random(f"latency:{new.seed}")
        self.settings = new
        return new

    # ------------------------------------------------------------------ counters
    def _reset_counters(self) -> None:
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.by_route: Counter[str] = Counter()
        self.faults: Counter[str] = Counter({f: 0 for f in FAULTS})
        self.rate_limited: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.choices = 0
        self.streams = 0
        self.context_length_errors = 0
        self.received: deque[ReceivedRequest] = deque(
            maxlen=max(1, self.settings.record_requests)
        )
        self.in_flight = 0
        self.max_in_flight = 0

    def reset_stats(self) -> None:
        self._reset_counters()

    async def watch_answers(self, done: asyncio.Event, samples: list[tuple[float, int, int]],
                            every_s: float = 0.25) -> None:
        """Until ``done`` is set, append (seconds since the call, 200s, 429s) every
        ``every_s`` from this server's own counters: a run's served rate and rate-limit
        misses over time, seen from the endpoint."""
        start = time.monotonic()
        while not done.is_set():
            by_status = self.by_status
            samples.append((time.monotonic() - start, by_status.get("200", 0),
                            by_status.get("429", 0)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every_s)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_route": dict(self.by_route),
            "by_status": dict(self.by_status),
            "faults": dict(self.faults),
            "rate_limited": dict(self.rate_limited),
            "context_length_errors": self.context_length_errors,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "total": self.prompt_tokens + self.completion_tokens},
            "choices": self.choices,
            "cached_tokens": self.prompt_cache.cached_tokens,
            "batch": self.batch.stats(),
            "streams": self.streams,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "capacity": None if self._capacity is None else {
                "serving": self._capacity.serving, "queued": self._capacity.queued,
                "max_queued": self._capacity.max_queued, "refused": self._capacity.refused},
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "settings": {k: v for k, v in dataclasses.asdict(self.settings).items()
                         if k != "api_key"},
        }

    # ------------------------------------------------------------------ small routes
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type=_JSON)

    async def _models(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        body = {"object": "list", "data": [{"id": self.settings.model, "object": "model",
                                            "created": 0, "owned_by": "simulator"}]}
        return web.Response(body=orjson.dumps(body), content_type=_JSON)

    def check_auth(self, request: web.Request) -> web.Response | None:
        """The API-key check, for routes other modules register (the Batch API)."""
        return self._check_auth(request)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        key = self.settings.api_key
        if not key:
            return None
        given = request.headers.get("Authorization", "")
        if given == f"Bearer {key}":
            return None
        # Echoes what it received (unlike OpenAI, which masks it) so that tests can check
        # that clients redact keys from error messages.
        shown = given[7:] if given.startswith("Bearer ") else given
        msg = f"Incorrect API key provided: {shown or '(none)'}."
        return web.Response(status=401, body=_error_body(msg, "invalid_request_error",
                                                         code="invalid_api_key"),
                            content_type=_JSON)

    # ------------------------------------------------------------------ API routes
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.requests += 1
        self.by_route["chat" if chat else "completions"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._handle(request, chat)
        finally:
            self.in_flight -= 1
        return response

    def _respond(self, status: int, body: bytes, headers: Mapping[str, str] | None = None,
                 content_type: str = _JSON) -> web.Response:
        self.by_status[str(status)] += 1
        return web.Response(status=status, body=body, headers=headers, content_type=content_type)

    async def _handle(self, request: web.Request, chat: bool) -> web.StreamResponse:
        denied = self._check_auth(request)
        if denied is not None:
            self.by_status[str(denied.status)] += 1
            return denied
        limiter = self._limiter
        try:
            raw = await request.read()
            parsed = self._parse(raw, chat)
            if self.settings.record_requests:
                self.received.append(ReceivedRequest(chat, parsed.prompts, parsed.max_tokens, parsed.stop))
        except _BadRequest as exc:
            return self._respond(400, _error_body(exc.message, "invalid_request_error",
                                                  exc.param, exc.code), limiter.headers())
        settings = self.settings
        longest = max(parsed.prompt_tokens)
        if longest + parsed.max_tokens > settings.context_tokens:
            self.context_length_errors += 1
            where = "in the messages" if chat else "in your prompt"
            msg = (f"This model's maximum context length is {settings.context_tokens} tokens. "
                   f"However, you requested {longest + parsed.max_tokens} tokens ({longest} "
                   f"{where}; {parsed.max_tokens} for the completion). Please reduce the "
                   f"length of the {'messages' if chat else 'prompt'} or the completion.")
            return self._respond(400, _error_body(msg, "invalid_request_error",
                                                  "messages" if chat else "prompt",
                                                  "context_length_exceeded"), limiter.headers())

        prompt_total = sum(parsed.prompt_tokens)
        weight = prompt_total + parsed.max_tokens * parsed.n * len(parsed.prompts)
        admission = limiter.admit(weight)
        if not admission.ok:
            self.rate_limited[admission.dimension] += 1
            headers = dict(admission.headers)
            headers["Retry-After"] = str(max(1, math.ceil(admission.retry_after)))
            headers["retry-after-ms"] = str(max(1, math.ceil(admission.retry_after * 1000)))
            msg = (f"Rate limit reached for {parsed.model} on {admission.dimension} per min: "
                   f"Please try again in {admission.retry_after:.3f}s.")
            code = "rate_limit_exceeded"
            return self._respond(429, _error_body(msg, "requests" if admission.dimension ==
                                                  "requests" else "tokens", None, code), headers)

        fault = self._draw_fault()
        completion_budget = weight - prompt_total
        if fault is not None and fault != "truncate":
            self.faults[fault] += 1
            limiter.refund_tokens(completion_budget)
            return await self._fault(request, fault, limiter)

        capacity = self._capacity
        if capacity is None:
            return await self._answer(request, parsed, fault, completion_budget, 1.0)
        try:
            async with capacity.slot() as slowdown:
                return await self._answer(request, parsed, fault, completion_budget, slowdown)
        except QueueFull:
            limiter.refund_tokens(completion_budget)
            return self._respond(503, _error_body(
                "The server is overloaded (queue full), please try again later.",
                "server_error"), limiter.headers())

    async def _answer(self, request: web.Request, parsed: _Parsed, fault: str | None,
                      completion_budget: int, slowdown: float) -> web.StreamResponse:
        """Generate, wait the (batch-slowed) latency, respond."""
        limiter = self._limiter
        prompt_total = sum(parsed.prompt_tokens)
        latency = self._draw_latency() * slowdown
        choices = self._generate(parsed, truncate=fault == "truncate")
        if fault == "truncate":
            self.faults["truncate"] += 1
        completion = sum(estimate_text_tokens(text) for text, _ in choices)
        limiter.refund_tokens(completion_budget - completion)
        self.prompt_tokens += prompt_total
        self.completion_tokens += completion
        self.choices += len(choices)
        usage = self.usage_of(parsed, prompt_total, completion)
        if parsed.stream:
            return await self._stream(request, parsed, choices, usage, latency, limiter)
        await self._sleep(latency)
        return self._respond(200, orjson.dumps(self._body(parsed, choices, usage)),
                             limiter.headers())

    def answer_request(self, raw: bytes, *, chat: bool) -> tuple[int, dict[str, Any]]:
        """Answer one request body at once, as a Batch API worker does: no rate limit, no
        latency, no transport fault (the batch layer draws its own per-line failures).
        Returns the HTTP status and the response body."""
        try:
            parsed = self._parse(raw, chat)
        except _BadRequest as exc:
            return 400, orjson.loads(_error_body(exc.message, "invalid_request_error",
                                                 exc.param, exc.code))
        longest = max(parsed.prompt_tokens)
        if longest + parsed.max_tokens > self.settings.context_tokens:
            self.context_length_errors += 1
            msg = (f"This model's maximum context length is {self.settings.context_tokens} "
                   f"tokens; you requested {longest + parsed.max_tokens}.")
            return 400, orjson.loads(_error_body(msg, "invalid_request_error", None,
                                                 "context_length_exceeded"))
        choices = self._generate(parsed, truncate=False)
        prompt_total = sum(parsed.prompt_tokens)
        completion = sum(estimate_text_tokens(text) for text, _ in choices)
        self.prompt_tokens += prompt_total
        self.completion_tokens += completion
        self.choices += len(choices)
        return 200, self._body(parsed, choices, self.usage_of(parsed, prompt_total, completion))

    def usage_of(self, parsed: _Parsed, prompt_total: int, completion: int) -> dict[str, Any]:
        """The usage object of an answered request, with the prompt-cache hits of its
        prompts as ``prompt_tokens_details.cached_tokens`` (OpenAI's field)."""
        cached = sum(self.prompt_cache.lookup(p) for p in parsed.prompts)
        return {"prompt_tokens": prompt_total, "completion_tokens": completion,
                "total_tokens": prompt_total + completion,
                "prompt_tokens_details": {"cached_tokens": min(cached, prompt_total)}}

    # ------------------------------------------------------------------ parsing
    def _parse(self, raw: bytes, chat: bool) -> _Parsed:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _BadRequest("We could not parse the JSON body of your request.") from None
        if not isinstance(data, dict):
            raise _BadRequest("The request body must be a JSON object.")
        model = data.get("model", self.settings.model)
        if not isinstance(model, str) or not model:
            raise _BadRequest("'model' must be a non-empty string.", "model")
        if chat:
            messages = data.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest("'messages' is a required property (a non-empty list).",
                                  "messages")
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                        or not isinstance(m.get("role"), str):
                    raise _BadRequest(f"messages[{i}] needs a string 'role' and 'content'.",
                                      f"messages[{i}]")
            # the user's message last, as answers.py expects
            ordered = [m for m in messages if m["role"] != "user"] + \
                      [m for m in messages if m["role"] == "user"]
            prompts: tuple[str, ...] = ("\n".join(m["content"] for m in ordered),)
            prompt_tokens: tuple[int, ...] = (estimate_chat_tokens(messages),)
        else:
            prompt = data.get("prompt")
            if isinstance(prompt, str):
                prompts = (prompt,)
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                prompts = tuple(prompt)
            elif prompt is None:
                raise _BadRequest("You must provide a 'prompt' (a string or a list of strings).",
                                  "prompt")
            else:
                raise _BadRequest("'prompt' must be a string or a non-empty list of strings "
                                  "(token arrays are not supported).", "prompt")
            prompt_tokens = tuple(estimate_text_tokens(p) for p in prompts)
        max_tokens = data.get("max_tokens")
        if max_tokens is None:
            max_tokens = data.get("max_completion_tokens", DEFAULT_MAX_TOKENS)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _BadRequest(f"'max_tokens' must be an integer >= 1 (got {max_tokens!r}).",
                              "max_tokens")
        n = data.get("n", 1)
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise _BadRequest(f"'n' must be an integer within 1..{MAX_N} (got {n!r}).", "n")
        stop_raw = data.get("stop")
        if stop_raw is None:
            stop: tuple[str, ...] = ()
        elif isinstance(stop_raw, str):
            stop = (stop_raw,)
        elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
            if len(stop_raw) > MAX_STOPS:
                raise _BadRequest(f"'stop' allows at most {MAX_STOPS} sequences.", "stop")
            stop = tuple(stop_raw)
        else:
            raise _BadRequest("'stop' must be a string or a list of strings.", "stop")
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise _BadRequest("'stream' must be a boolean.", "stream")
        options = data.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        temperature = data.get("temperature", 1.0)
        request_seed = data.get("seed")
        answer_seed = str(self.settings.seed)
        if request_seed is not None and temperature != 0:
            answer_seed += f":{request_seed}"
        return _Parsed(chat, prompts, prompt_tokens, model, max_tokens, n, stop, stream,
                       include_usage, answer_seed)

    # ------------------------------------------------------------------ answers
    def _generate(self, parsed: _Parsed, *, truncate: bool) -> list[tuple[str, str]]:
        s = self.settings
        out: list[tuple[str, str]] = []
        for prompt in parsed.prompts:  # prompt-major: index = prompt_idx * n + choice_idx
            for ci in range(parsed.n):
                full = _cached_answer(prompt, parsed.answer_seed, ci, s.duplicate_rate,
                                      s.bad_item_rate)
                text, finish = apply_limits(full, parsed.max_tokens, parsed.stop)
                if truncate:
                    text, finish = text[: max(1, len(text) // 2)], "length"
                out.append((text, finish))
        return out

    def _body(self, parsed: _Parsed, choices: list[tuple[str, str]],
              usage: dict[str, int]) -> dict[str, Any]:
        created = int(time.time())
        if parsed.chat:
            return {
                "id": f"chatcmpl-sim{self.requests}", "object": "chat.completion",
                "created": created, "model": parsed.model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}
                            for i, (text, finish) in enumerate(choices)],
                "usage": usage,
            }
        return {
            "id": f"cmpl-sim{self.requests}", "object": "text_completion",
            "created": created, "model": parsed.model,
            "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                        for i, (text, finish) in enumerate(choices)],
            "usage": usage,
        }

    async def _stream(self, request: web.Request, parsed: _Parsed,
                      choices: list[tuple[str, str]], usage: dict[str, int], latency: float,
                      limiter: ServerLimiter) -> web.StreamResponse:
        self.streams += 1
        await self._sleep(latency * STREAM_TTFT_SHARE)
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                   **limiter.headers()}
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        self.by_status["200"] += 1
        created = int(time.time())
        ident = f"{'chatcmpl' if parsed.chat else 'cmpl'}-sim{self.requests}"
        obj = "chat.completion.chunk" if parsed.chat else "text_completion"

        def chunk(items: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            payload = {"id": ident, "object": obj, "created": created, "model": parsed.model,
                       "choices": items, **(extra or {})}
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        def piece(i: int, text: str | None, finish: str | None) -> dict[str, Any]:
            if parsed.chat:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}

        # One event per choice (as OpenAI streams n > 1), the events of a round in one write.
        if parsed.chat:
            await resp.write(b"".join(
                chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                        "logprobs": None, "finish_reason": None}])
                for i in range(len(choices))))
        split = [_split_pieces(text) for text, _ in choices]
        rounds = max((len(p) for p in split), default=0)
        gap = latency * (1 - STREAM_TTFT_SHARE) / max(1, rounds)
        for r in range(rounds):
            await resp.write(b"".join(chunk([piece(i, parts[r], None)])
                                      for i, parts in enumerate(split) if r < len(parts)))
            if r + 1 < rounds:
                await self._sleep(gap)
        tail = [chunk([piece(i, None, finish)]) for i, (_, finish) in enumerate(choices)]
        if parsed.include_usage:
            tail.append(chunk([], {"usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        await resp.write(b"".join(tail))
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ faults and timing
    def _draw_fault(self) -> str | None:
        s = self.settings
        u = self._fault_rng.random()
        for name, rate in (("error", s.error_rate), ("reset", s.reset_rate),
                           ("garbage", s.garbage_rate), ("hang", s.hang_rate),
                           ("truncate", s.truncate_rate)):
            if u < rate:
                return name
            u -= rate
        return None

    def _draw_latency(self) -> float:
        s = self.settings
        base = s.latency_ms / 1000.0
        if base <= 0:
            return 0.0
        return base * self._latency_rng.uniform(1.0 - s.jitter, 1.0 + s.jitter)

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _fault(self, request: web.Request, fault: str,
                     limiter: ServerLimiter) -> web.StreamResponse:
        if fault == "hang":
            # Outlasts client timeouts; ends early on shutdown or when the client leaves
            # (handler cancellation).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.settings.hang_seconds)
            _abort(request)
            return web.Response(status=504)
        await self._sleep(self._draw_latency())
        if fault == "error":
            status = 500 if self._fault_rng.random() < 0.5 else 503
            msg = ("The server had an error while processing your request. Sorry about that!"
                   if status == 500 else "The engine is currently overloaded, please try again later.")
            return self._respond(status, _error_body(msg, "server_error"), limiter.headers())
        if fault == "garbage":
            body = (b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                    if self._fault_rng.random() < 0.5 else b'{"id": "cmpl-sim", "choices": [{"te')
            return self._respond(200, body, limiter.headers())
        # reset: close the connection abruptly (RST), no response at all
        _abort(request)
        return web.Response(status=502)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _split_pieces(text: str) -> list[str]:
    """Up to STREAM_PIECES consecutive pieces that join back to ``text``."""
    if not text:
        return []
    size = max(1, math.ceil(len(text) / STREAM_PIECES))
    return [text[i:i + size] for i in range(0, len(text), size)]
