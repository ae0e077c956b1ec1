"""A bounded client for OpenAI's Batch API, and the batch JSONL format.

    async with BatchClient(base_url, api_key) as client:
        file_id = await client.upload("round-1.jsonl", data)
        info = await client.create(file_id, "/v1/completions", {"selfinstruct_batch": key})
        info = await client.retrieve(info.id)          # poll until info.terminal
        await client.download(info.output_file_id, path)

Everything the provider sends is untrusted: JSON answers are read up to
``MAX_API_RESPONSE_BYTES``, downloads up to ``MAX_OUTPUT_FILE_BYTES`` (streamed to a file,
renamed into place only when whole), each output line up to ``MAX_OUTPUT_LINE_BYTES``, and
a line that is not what the format says is an :class:`InputError` naming file, line and
field. 429/5xx/connection errors are retried a bounded number of times; any other 4xx
(a refused upload, an unknown batch) fails at once with the provider's message, with the
API key redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
import orjson

from service.errors import (
    BadResponse,
    ClientRequestError,
    ConnectionFailed,
    InputError,
    LLMError,
    RateLimitError,
    RequestTimeout,
    ServerError,
)
from service.llm.retry import error_body_message, truncate_message
from service.secret import Secret, redact

MAX_BATCH_REQUESTS: Final = 50_000  # lines of one batch (OpenAI's cap)
MAX_BATCH_FILE_BYTES: Final = 200 * 1024 * 1024  # one input file (OpenAI's cap)
MAX_OUTPUT_FILE_BYTES: Final = 2 * 1024 * 1024 * 1024  # a download larger than this is refused
MAX_OUTPUT_LINE_BYTES: Final = 8 * 1024 * 1024
MAX_API_RESPONSE_BYTES: Final = 4 * 1024 * 1024  # a batch object or a list page
MAX_LIST_PAGES: Final = 20  # looking a batch up by metadata reads at most this many pages
DEFAULT_TIMEOUT_S: Final = 120.0
DEFAULT_ATTEMPTS: Final = 6
BACKOFF_BASE_S: Final = 0.5
BACKOFF_CAP_S: Final = 30.0
TERMINAL: Final = frozenset({"completed", "expired", "failed", "cancelled"})
KNOWN_STATUSES: Final = TERMINAL | {"validating", "in_progress", "finalizing", "cancelling"}
COMPLETIONS: Final = "/v1/completions"
CHAT: Final = "/v1/chat/completions"


@dataclass(frozen=True)
class BatchInfo:
    """The parts of a batch object a client acts on."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    errors: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: Any, where: str) -> BatchInfo:
        if not isinstance(data, dict):
            raise BadResponse(f"{where}: expected a batch object")
        ident, status = data.get("id"), data.get("status")
        if not isinstance(ident, str) or not ident or len(ident) > 256:
            raise BadResponse(f"{where}: field 'id': expected a string")
        if status not in KNOWN_STATUSES:
            raise BadResponse(f"{where}: field 'status': unknown value {str(status)[:40]!r}")
        raw_counts, raw_meta = data.get("request_counts"), data.get("metadata")
        counts: dict[str, Any] = raw_counts if isinstance(raw_counts, dict) else {}
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}

        def opt(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) and 0 < len(value) <= 256 else None

        def count(name: str) -> int:
            value = counts.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) \
                and 0 <= value <= 10**9 else 0

        errors = data.get("errors")
        return cls(
            id=ident, status=str(status), input_file_id=opt("input_file_id"),
            output_file_id=opt("output_file_id"), error_file_id=opt("error_file_id"),
            total=count("total"), completed=count("completed"), failed=count("failed"),
            metadata={str(k): str(v)[:512] for k, v in list(meta.items())[:16]},
            errors=truncate_message(str(errors)) if errors else None,
        )


@dataclass(frozen=True)
class LineResult:
    """One line of an output or error file. ``ok``: a 200 answer in ``body``;
    ``expired``: the batch ended before the line ran (resubmit it); otherwise a failure
    (``status_code`` and ``error`` say which)."""

    custom_id: str
    ok: bool
    body: dict[str, Any] | None = None
    status_code: int | None = None
    error: str = ""
    expired: bool = False


def request_line(custom_id: str, url: str, body: Mapping[str, Any]) -> bytes:
    """One input line (no newline)."""
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                         "body": dict(body)})


def split_requests(lines: Sequence[bytes], max_requests: int = MAX_BATCH_REQUESTS,
                   max_bytes: int = MAX_BATCH_FILE_BYTES) -> list[list[bytes]]:
    """Cut input lines into files within the provider's limits, keeping their order."""
    if max_requests < 1:
        raise ValueError("max_requests must be >= 1")
    files: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        need = len(line) + 1
        if need > max_bytes:
            raise InputError("batch input", None, None, f"one request is {need} bytes, "
                             f"above the file cap of {max_bytes} bytes")
        if current and (len(current) >= max_requests or size + need > max_bytes):
            files.append(current)
            current, size = [], 0
        current.append(line)
        size += need
    if current:
        files.append(current)
    return files


def iter_lines(path: Path, max_line_bytes: int = MAX_OUTPUT_LINE_BYTES
               ) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, bytes) of a JSONL file, blank lines skipped; a line longer
    than ``max_line_bytes`` is an error naming the file and line."""
    with path.open("rb") as fh:
        number = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise InputError(str(path), number, None,
                                 f"line longer than {max_line_bytes} bytes")
            if raw.strip():
                yield number, raw


def parse_result_line(raw: bytes, path: str, line: int) -> LineResult:
    """One output/error-file line in OpenAI's shape (errors name ``path`` and ``line``)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InputError(path, line, None, "not valid JSON") from None
    if not isinstance(data, dict):
        raise InputError(path, line, None, "expected a JSON object")
    cid = data.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > 512:
        raise InputError(path, line, "custom_id", "expected a non-empty string")
    error = data.get("error")
    response = data.get("response")
    if response is None:
        if not isinstance(error, dict):
            raise InputError(path, line, "response", "missing, and no 'error' object")
        code = str(error.get("code") or "")
        message = truncate_message(f"{code}: {error.get('message') or ''}")
        return LineResult(cid, ok=False, error=message, expired=code == "batch_expired"
                          or code == "batch_cancelled")
    if not isinstance(response, dict):
        raise InputError(path, line, "response", "expected an object")
    status = response.get("status_code")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise InputError(path, line, "response.status_code", "expected an HTTP status")
    body = response.get("body")
    if not isinstance(body, dict):
        raise InputError(path, line, "response.body", "expected an object")
    if status != 200:
        err = body.get("error")
        detail: Any = err.get("message") if isinstance(err, dict) else err
        return LineResult(cid, ok=False, body=None, status_code=status,
                          error=truncate_message(f"HTTP {status}: {detail or ''}"))
    return LineResult(cid, ok=True, body=body, status_code=200)


def parse_result_file(path: Path, known: Iterable[str] | None = None) -> list[LineResult]:
    """Every line of an output or error file. With ``known`` (the custom_ids sent), a
    line naming any other custom_id, or one answered twice in the file, is an error."""
    expected = set(known) if known is not None else None
    results: list[LineResult] = []
    seen: set[str] = set()
    for number, raw in iter_lines(path):
        result = parse_result_line(raw, str(path), number)
        if expected is not None and result.custom_id not in expected:
            raise InputError(str(path), number, "custom_id",
                             f"{result.custom_id[:80]!r} was not in the batch's requests")
        if result.custom_id in seen:
            raise InputError(str(path), number, "custom_id",
                             f"{result.custom_id[:80]!r} appears twice")
        seen.add(result.custom_id)
        results.append(result)
    return results


def first_choice(body: Mapping[str, Any], chat: bool) -> tuple[str, str | None]:
    """(text, finish_reason) of a completions or chat response body; ("", "missing")
    when it has no usable choice (counted by the caller, never a crash)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "", "missing"
    first = choices[0]
    if chat:
        message = first.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = first.get("text")
    finish = first.get("finish_reason")
    return (text if isinstance(text, str) else ""), (finish if isinstance(finish, str)
                                                       else None)


class BatchClient:
    """The Batch API routes over one aiohttp session (see the module docstring)."""

    def __init__(self, base_url: str, api_key: Secret | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_attempts: int = DEFAULT_ATTEMPTS) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BatchClient:
        headers = {"User-Agent": "selfinstruct-batch/0.1"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key.reveal()}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _clean(self, text: str) -> str:
        return truncate_message(redact(text, self.api_key))

    async def _call(self, method: str, path: str, *, json_body: Any = None,
                    form: Mapping[str, tuple[str, bytes] | str] | None = None,
                    params: Mapping[str, str] | None = None) -> Any:
        """One JSON API call with bounded retries; returns the parsed JSON answer."""
        if self._session is None:
            raise RuntimeError("BatchClient is not open (use async with)")
        url = self.base_url + path
        last: LLMError | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
                if isinstance(last, RateLimitError) and last.retry_after:
                    delay = min(BACKOFF_CAP_S, max(delay, last.retry_after))
                await asyncio.sleep(delay)
            data: Any = None
            if form is not None:
                data = aiohttp.FormData()
                for name, value in form.items():
                    if isinstance(value, tuple):
                        data.add_field(name, value[1], filename=value[0],
                                       content_type="application/jsonl")
                    else:
                        data.add_field(name, value)
            try:
                async with self._session.request(
                        method, url, json=json_body, data=data, params=params) as resp:
                    raw = await resp.content.read(MAX_API_RESPONSE_BYTES + 1)
                    if len(raw) > MAX_API_RESPONSE_BYTES:
                        raise BadResponse(f"answer from {url} exceeds "
                                          f"{MAX_API_RESPONSE_BYTES} bytes")
                    if resp.status == 200:
                        try:
                            return orjson.loads(raw)
                        except orjson.JSONDecodeError:
                            raise BadResponse(f"answer from {url} is not JSON") from None
                    message = self._clean(f"HTTP {resp.status} from {method} {url}: "
                                          f"{_message(raw)}")
                    if resp.status == 429:
                        retry_after = _float(resp.headers.get("Retry-After"))
                        last = RateLimitError(message, retry_after)
                    elif resp.status >= 500 or resp.status == 408:
                        last = ServerError(message, resp.status)
                    else:
                        raise ClientRequestError(message, resp.status)
            except (aiohttp.ClientError, ConnectionError) as exc:
                last = ConnectionFailed(self._clean(f"{method} {url} failed: "
                                                    f"{type(exc).__name__}: {exc}"))
            except TimeoutError:
                last = RequestTimeout(f"{method} {url}: no answer within {self.timeout_s:.0f}s")
            except BadResponse as exc:
                last = exc
        assert last is not None
        raise last

    async def upload(self, filename: str, data: bytes) -> str:
        """Upload one input file (purpose "batch"); returns its file id."""
        if len(data) > MAX_BATCH_FILE_BYTES:
            raise InputError(filename, None, None, f"{len(data)} bytes, above the "
                             f"{MAX_BATCH_FILE_BYTES}-byte cap of a batch file")
        answer = await self._call("POST", "/files",
                                  form={"purpose": "batch", "file": (filename, data)})
        ident = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(ident, str) or not ident or len(ident) > 256:
            raise BadResponse(f"upload of {filename}: answer has no file 'id'")
        return ident

    async def create(self, input_file_id: str, endpoint: str,
                     metadata: Mapping[str, str]) -> BatchInfo:
        answer = await self._call("POST", "/batches", json_body={
            "input_file_id": input_file_id, "endpoint": endpoint,
            "completion_window": "24h", "metadata": dict(metadata)})
        return BatchInfo.from_json(answer, "POST /batches")

    async def retrieve(self, batch_id: str) -> BatchInfo:
        answer = await self._call("GET", f"/batches/{_segment(batch_id)}")
        return BatchInfo.from_json(answer, f"GET /batches/{batch_id}")

    async def cancel(self, batch_id: str) -> BatchInfo:
        answer = await self._call("POST", f"/batches/{_segment(batch_id)}/cancel")
        return BatchInfo.from_json(answer, f"POST /batches/{batch_id}/cancel")

    async def find(self, key: str, value: str) -> BatchInfo | None:
        """The newest batch whose metadata has ``key == value`` (None if none in the
        first MAX_LIST_PAGES pages): how a resumed run finds a batch it created but was
        killed before recording."""
        after: str | None = None
        for _ in range(MAX_LIST_PAGES):
            params = {"limit": "100"} if after is None else {"limit": "100", "after": after}
            page = await self._call("GET", "/batches", params=params)
            items = page.get("data") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise BadResponse("GET /batches: answer has no 'data' list")
            for item in items:
                info = BatchInfo.from_json(item, "GET /batches")
                if info.metadata.get(key) == value:
                    return info
            if not page.get("has_more") or not items:
                return None
            after = BatchInfo.from_json(items[-1], "GET /batches").id
        return None

    async def download(self, file_id: str, dest: Path,
                       max_bytes: int = MAX_OUTPUT_FILE_BYTES) -> int:
        """Stream a file's content to ``dest`` (a temporary name, renamed when whole);
        returns its size. Retried like the other calls."""
        if self._session is None:
            raise RuntimeError("BatchClient is not open (use async with)")
        url = f"{self.base_url}/files/{_segment(file_id)}/content"
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        last: LLMError | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                await asyncio.sleep(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
            try:
                async with self._session.get(url) as resp:
                    if resp.status != 200:
                        raw = await resp.content.read(MAX_API_RESPONSE_BYTES)
                        message = self._clean(f"HTTP {resp.status} from GET {url}: "
                                              f"{_message(raw)}")
                        if resp.status == 429 or resp.status >= 500:
                            last = ServerError(message, resp.status)
                            continue
                        raise ClientRequestError(message, resp.status)
                    size = 0
                    with tmp.open("wb") as fh:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            size += len(chunk)
                            if size > max_bytes:
                                raise InputError(f"file {file_id}", None, None,
                                                 f"larger than {max_bytes} bytes; refusing "
                                                 "to download it")
                            fh.write(chunk)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, dest)
                    return size
            except (aiohttp.ClientError, ConnectionError) as exc:
                last = ConnectionFailed(self._clean(f"GET {url} failed: {type(exc).__name__}"))
            except TimeoutError:
                last = RequestTimeout(f"GET {url}: no answer within {self.timeout_s:.0f}s")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        assert last is not None
        raise last


def _segment(ident: str) -> str:
    """An id from the provider or our journal, safe as one URL path segment."""
    if not ident or len(ident) > 256 or not all(c.isalnum() or c in "-_." for c in ident):
        raise InputError("batch journal", None, "id",
                         f"not a valid batch or file id: {ident[:80]!r}")
    return ident


def _message(raw: bytes) -> str:
    message = error_body_message(raw, top_level=False)
    return raw[:300].decode("utf-8", "replace") if message is None else message


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
