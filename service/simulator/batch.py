"""The simulator's Batch API, in OpenAI's shapes.

    POST /v1/files                (multipart: purpose=batch, file=<JSONL>)  -> file object
    GET  /v1/files/{id}/content   the file's bytes (input, output or error file)
    POST /v1/batches              {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches/{id}         the batch object; its status follows the clock
    GET  /v1/batches              list, newest first (``limit``, ``after``)
    POST /v1/batches/{id}/cancel  cancelled at once, with the lines answered so far

A batch is ``validating`` briefly, ``in_progress`` until ``turnaround_s`` after creation,
then ``completed`` (every line answered: output file; failed lines: error file) or, for a
drawn share of batches, ``expired`` with only part of its lines answered (the rest in the
error file as ``batch_expired``). Answers come from the same generator as the online
routes (:meth:`SimulatedServer.answer_request`), so a line's answer equals the online one.

Draws are seeded and keyed by content, not by timing: a line's failure by (seed,
custom_id, how often that custom_id was submitted), a batch's expiry by (seed, input
bytes, how often those bytes were submitted); a resubmitted line can therefore succeed.
:attr:`BatchService.answered` counts successful answers per custom_id, so a test can check
that a client never paid for one twice. Output lines are shuffled (seeded), as a real
provider does not promise their order.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import BodyPartReader, web

if TYPE_CHECKING:
    from service.simulator.server import SimulatedServer

MAX_FILE_BYTES: Final = 200 * 1024 * 1024  # OpenAI's cap on a batch input file
MAX_REQUESTS: Final = 50_000  # OpenAI's cap on lines of a batch
ENDPOINTS: Final = ("/v1/completions", "/v1/chat/completions")
_JSON = "application/json"


@dataclass(frozen=True)
class BatchSimSettings:
    turnaround_s: float = 2.0  # creation to completion
    line_failure_rate: float = 0.0  # a line answered with a 500 in the error file
    expire_rate: float = 0.0  # a batch that expires with only part of its lines done
    upload_error_status: int | None = None  # every upload answered with this (tests)
    fail_validation: bool = False  # every new batch ends "failed" (a rejected input file)
    max_file_bytes: int = MAX_FILE_BYTES
    max_requests: int = MAX_REQUESTS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("line_failure_rate", "expire_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.turnaround_s < 0:
            raise ValueError("turnaround_s must be >= 0")


@dataclass
class _File:
    id: str
    purpose: str
    filename: str
    data: bytes
    created_at: int

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose}


@dataclass
class _Batch:
    id: str
    endpoint: str
    input_file_id: str
    lines: list[dict[str, Any]]
    created: float
    created_at: int
    metadata: dict[str, str]
    expires: bool
    done_share: float
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0,
                                                            "failed": 0})
    finished_at: int | None = None

    def info(self) -> dict[str, Any]:
        stamp = {"completed": "completed_at", "expired": "expired_at",
                 "cancelled": "cancelled_at", "failed": "failed_at"}.get(self.status)
        body: dict[str, Any] = {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": {"object": "list", "data": [{"code": "invalid_request", "line": 1,
                                                   "message": "simulated validation failure"}]}
            if self.status == "failed" else None,
            "input_file_id": self.input_file_id, "completion_window": "24h",
            "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": self.created_at,
            "in_progress_at": self.created_at, "expires_at": self.created_at + 86_400,
            "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelled_at": None, "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }
        if stamp is not None:
            body[stamp] = self.finished_at
        return body


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


class BatchService:
    """The Batch API routes of one :class:`SimulatedServer` (in memory)."""

    def __init__(self, server: SimulatedServer, settings: BatchSimSettings | None = None) -> None:
        self.server = server
        self.settings = settings or BatchSimSettings()
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.answered: Counter[str] = Counter()  # custom_id -> successful answers
        self.submitted: Counter[str] = Counter()  # custom_id -> times in a created batch
        self._content_submits: Counter[str] = Counter()
        self.uploads = 0
        self.requests: Counter[str] = Counter()  # route -> count
        self._seq = 0

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._content)
        app.router.add_get("/v1/files/{file_id}", self._file_info)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel)

    def stats(self) -> dict[str, Any]:
        return {
            "files": len(self.files), "uploads": self.uploads, "batches": len(self.batches),
            "by_status": dict(Counter(b.status for b in self.batches.values())),
            "answered_lines": sum(self.answered.values()),
            "answered_twice": sum(1 for n in self.answered.values() if n > 1),
            "requests": dict(self.requests),
        }

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-sim{self._seq:06d}"

    def _denied(self, request: web.Request, kind: str | None) -> web.Response | None:
        """Count the request under ``kind`` (None: not counted), then check its key: the
        refusal to send back, or None when it may go on."""
        if kind is not None:
            self.requests[kind] += 1
        return self.server.check_auth(request)

    def _file(self, request: web.Request, kind: str | None) -> _File | web.Response:
        """The file the path names, or the response refusing the request."""
        denied = self._denied(request, kind)
        if denied is not None:
            return denied
        file = self.files.get(request.match_info["file_id"])
        return _error(404, "No such File object") if file is None else file

    def _batch(self, request: web.Request, kind: str) -> _Batch | web.Response:
        """The batch the path names, brought up to date, or the response refusing the
        request."""
        denied = self._denied(request, kind)
        if denied is not None:
            return denied
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "No such Batch object")
        self._advance(batch)
        return batch

    # ------------------------------------------------------------------ files
    async def _upload(self, request: web.Request) -> web.Response:
        denied = self._denied(request, "upload")
        if denied is not None:
            return denied
        if self.settings.upload_error_status is not None:
            return _error(self.settings.upload_error_status, "upload refused (simulated)")
        if not request.content_type.startswith("multipart/"):
            return _error(400, "expected multipart/form-data with 'purpose' and 'file'")
        purpose = None
        data = b""
        filename = "input.jsonl"
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                return _error(400, "nested multipart is not supported")
            if part.name == "purpose":
                purpose = (await part.read(decode=True)).decode("utf-8", "replace")
            elif part.name == "file":
                filename = part.filename or filename
                chunks = []
                size = 0
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > self.settings.max_file_bytes:
                        return _error(413, f"file exceeds {self.settings.max_file_bytes} bytes",
                                      "file")
                    chunks.append(chunk)
                data = b"".join(chunks)
        if purpose != "batch":
            return _error(400, "'purpose' must be 'batch'", "purpose")
        if not data:
            return _error(400, "'file' is required and must not be empty", "file")
        file = _File(self._next_id("file"), "batch", filename, data, int(time.time()))
        self.files[file.id] = file
        self.uploads += 1
        return web.json_response(file.info())

    async def _file_info(self, request: web.Request) -> web.Response:
        file = self._file(request, None)
        return file if isinstance(file, web.Response) else web.json_response(file.info())

    async def _content(self, request: web.Request) -> web.Response:
        file = self._file(request, "content")
        if isinstance(file, web.Response):
            return file
        return web.Response(body=file.data, content_type="application/octet-stream")

    # ------------------------------------------------------------------ batches
    def _parse_input(self, data: bytes, endpoint: str) -> list[dict[str, Any]] | str:
        """The input file's lines, or what is wrong with it (line numbers from 1)."""
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return f"line {number}: not valid JSON"
            if not isinstance(line, dict):
                return f"line {number}: not a JSON object"
            cid = line.get("custom_id")
            if not isinstance(cid, str) or not cid:
                return f"line {number}: 'custom_id' must be a non-empty string"
            if cid in seen:
                return f"line {number}: duplicate custom_id {cid!r}"
            seen.add(cid)
            if line.get("method") != "POST" or line.get("url") != endpoint:
                return f"line {number}: 'method' must be POST and 'url' {endpoint}"
            if not isinstance(line.get("body"), dict):
                return f"line {number}: 'body' must be an object"
            lines.append(line)
            if len(lines) > self.settings.max_requests:
                return f"more than {self.settings.max_requests} requests"
        if not lines:
            return "the file holds no requests"
        return lines

    async def _create(self, request: web.Request) -> web.Response:
        denied = self._denied(request, "create")
        if denied is not None:
            return denied
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            return _error(400, f"'endpoint' must be one of {', '.join(ENDPOINTS)}", "endpoint")
        if body.get("completion_window") != "24h":
            return _error(400, "'completion_window' must be '24h'", "completion_window")
        file = self.files.get(str(body.get("input_file_id")))
        if file is None:
            return _error(404, "No such File object", "input_file_id")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            return _error(400, "'metadata' must map strings to strings", "metadata")
        lines = self._parse_input(file.data, str(endpoint))
        if isinstance(lines, str):
            return _error(400, f"input file {file.id}: {lines}", "input_file_id")
        digest = hashlib.sha256(file.data).hexdigest()
        self._content_submits[digest] += 1
        draw = random.Random(f"{self.settings.seed}:expire:{digest}:"
                             f"{self._content_submits[digest]}")
        expires = draw.random() < self.settings.expire_rate
        done_share = draw.uniform(0.2, 0.8)
        for line in lines:
            self.submitted[str(line["custom_id"])] += 1
        batch = _Batch(self._next_id("batch"), str(endpoint), file.id, lines,
                       time.monotonic(), int(time.time()), dict(metadata), expires, done_share)
        batch.counts["total"] = len(lines)
        if self.settings.fail_validation:
            batch.status, batch.finished_at = "failed", int(time.time())
        self.batches[batch.id] = batch
        return web.json_response(batch.info())

    def _advance(self, batch: _Batch) -> None:
        """Move ``batch`` along the clock; answer its lines when its time is up."""
        if batch.status in ("completed", "expired", "cancelled", "failed"):
            return
        age = time.monotonic() - batch.created
        turnaround = self.settings.turnaround_s
        if age < turnaround:
            batch.status = "validating" if age < turnaround * 0.05 else "in_progress"
            return
        self._finish(batch, "expired" if batch.expires else "completed")

    def _finish(self, batch: _Batch, status: str, share: float = 1.0) -> None:
        if status == "expired":
            share = batch.done_share
        # an expired batch answers part of its lines, at least one (so retries progress)
        n_done = len(batch.lines) if status == "completed" else (
            math.ceil(len(batch.lines) * share) if status == "expired"
            else int(len(batch.lines) * share))
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for i, line in enumerate(batch.lines):
            cid = str(line["custom_id"])
            req_id = f"batch_req_{batch.id}_{i}"
            if i >= n_done:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                errors.append(orjson.dumps({
                    "id": req_id, "custom_id": cid, "response": None,
                    "error": {"code": code, "message": "This request could not be executed "
                              "before the batch ended."}}))
                continue
            rng = random.Random(f"{self.settings.seed}:line:{cid}:{self.submitted[cid]}")
            if rng.random() < self.settings.line_failure_rate:
                body: dict[str, Any] = {"error": {"message": "The server had an error while "
                                                  "processing your request.",
                                                  "type": "server_error"}}
                errors.append(orjson.dumps({
                    "id": req_id, "custom_id": cid, "error": None,
                    "response": {"status_code": 500, "request_id": req_id, "body": body}}))
                batch.counts["failed"] += 1
                continue
            status_code, body = self.server.answer_request(
                orjson.dumps(line["body"]), chat=batch.endpoint.endswith("/chat/completions"))
            record = orjson.dumps({"id": req_id, "custom_id": cid, "error": None,
                                   "response": {"status_code": status_code,
                                                "request_id": req_id, "body": body}})
            if status_code == 200:
                self.answered[cid] += 1
                batch.counts["completed"] += 1
                outputs.append(record)
            else:
                batch.counts["failed"] += 1
                errors.append(record)
        order = random.Random(f"{self.settings.seed}:order:{batch.id}")
        order.shuffle(outputs)
        now = int(time.time())
        if outputs:
            out = _File(self._next_id("file"), "batch_output", f"{batch.id}_output.jsonl",
                        b"\n".join(outputs) + b"\n", now)
            self.files[out.id] = out
            batch.output_file_id = out.id
        if errors:
            err = _File(self._next_id("file"), "batch_output", f"{batch.id}_error.jsonl",
                        b"\n".join(errors) + b"\n", now)
            self.files[err.id] = err
            batch.error_file_id = err.id
        batch.status = status
        batch.finished_at = now

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self._batch(request, "retrieve")
        return batch if isinstance(batch, web.Response) else web.json_response(batch.info())

    async def _list(self, request: web.Request) -> web.Response:
        denied = self._denied(request, "list")
        if denied is not None:
            return denied
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            return _error(400, "'limit' must be an integer", "limit")
        after = request.query.get("after")
        ordered = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)
        if after is not None:
            ordered = [b for b in ordered if b.id < after]
        page = ordered[:limit]
        for batch in page:
            self._advance(batch)
        return web.json_response({
            "object": "list", "data": [b.info() for b in page],
            "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
            "has_more": len(ordered) > limit,
        })

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request, "cancel")
        if isinstance(batch, web.Response):
            return batch
        if batch.status in ("validating", "in_progress"):
            age = time.monotonic() - batch.created
            share = min(1.0, age / self.settings.turnaround_s) if self.settings.turnaround_s else 1.0
            self._finish(batch, "cancelled", share)
        return web.json_response(batch.info())
