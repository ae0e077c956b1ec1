"""The batch journal: ``batches.jsonl`` in the run directory, the one record of what a
batch-mode run has asked a provider for and what it has done with the answers.

Why: a batch costs money once it is *created*, and a run may be killed at any moment
(uploading, right after creating, while polling, while writing the answers out). Every
step is journalled, fsynced, *before* the next one starts, so a resumed run knows for
each batch exactly how far it got and never creates it twice:

    prepared    the input file is written in the run directory (custom_ids and what
                each one asks for are in this event); nothing was sent yet
    uploaded    the provider holds the input file (its file id)
    submitted   the batch exists (its id); from here it is only ever polled
    finished    the provider's final state, output and error file ids
    processing  a round's answers are about to be written: the sizes of the run's files
                (a resumed run cuts them back to these sizes and processes again, so
                processing is idempotent and byte-identical)
    processed   the round's answers are in the run's files; classifications and the
                custom_ids to resubmit are recorded here

A batch "prepared" or "uploaded" but not "submitted" may still exist on the provider if
the kill came between the create call and its journal line: the resumed run looks it up
by the metadata it was created with before creating anything.

The journal is append-only; the in-memory view is rebuilt by replaying it. A torn last
line (kill -9 mid-write) is cut off on open, like the run's other files.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.errors import RunDirError
from service.rundir.store import open_fd, read_jsonl, repair_torn_tail

BATCHES = "batches.jsonl"
BATCH_FILES = "batches"  # the run directory's folder for input/output files

PREPARED = "prepared"
UPLOADED = "uploaded"
SUBMITTED = "submitted"
FINISHED = "finished"
PROCESSING = "processing"
PROCESSED = "processed"
RUN = "run"


@dataclass
class BatchEntry:
    """One batch file's journal state."""

    key: str  # local name, "b000001"
    round: int
    endpoint: str
    input: str  # path of the input file, relative to the run directory
    items: dict[str, dict[str, Any]]  # custom_id -> what it asks for (stage, task, ...)
    state: str = PREPARED
    input_file_id: str | None = None
    batch_id: str | None = None
    submitted_at: float | None = None  # wall clock, for batch_timeout across restarts
    status: str | None = None  # the provider's final status
    output_file_id: str | None = None
    error_file_id: str | None = None
    waited_s: float = 0.0  # from the round's start of waiting to this batch's end


@dataclass
class RoundRecord:
    number: int
    processing_sizes: dict[str, int] | None = None
    processed: bool = False


@dataclass
class JournalView:
    """The journal replayed."""

    token: str = ""
    batches: dict[str, BatchEntry] = field(default_factory=dict)
    rounds: dict[int, RoundRecord] = field(default_factory=dict)
    classified: dict[str, bool] = field(default_factory=dict)  # task id -> classification
    retry: dict[str, str] = field(default_factory=dict)  # custom_id -> batch key it was in
    attempts: dict[str, int] = field(default_factory=dict)  # custom_id -> times prepared

    @property
    def waiting_s(self) -> float:
        """Wall time spent waiting for batches: per round, its slowest batch."""
        slowest: dict[int, float] = {}
        for b in self.batches.values():
            slowest[b.round] = max(slowest.get(b.round, 0.0), b.waited_s)
        return sum(slowest.values())


class BatchJournal:
    """Append-and-fsync writer plus the replayed view (see the module docstring)."""

    def __init__(self, run_path: Path) -> None:
        self.path = run_path / BATCHES
        self.files = run_path / BATCH_FILES
        self.files.mkdir(exist_ok=True)
        self.repair = repair_torn_tail(self.path)
        self.view = JournalView()
        try:
            for number, event in read_jsonl(self.path):
                self._apply(event, number)
        except FileNotFoundError:
            pass
        self._fd: int | None = open_fd(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        if not self.view.token:
            self.record({"event": RUN, "token": secrets.token_hex(8)})
        for pattern in (".*.part", ".*.tmp"):  # a download or write a kill interrupted
            for stale in self.files.glob(pattern):
                stale.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, event: dict[str, Any]) -> None:
        """Append ``event``, fsync, then apply it to the view: the disk is ahead of memory."""
        if self._fd is None:
            raise RunDirError(f"{self.path}: journal is closed")
        data = orjson.dumps({**event, "at": round(time.time(), 3)}) + b"\n"
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        self._apply(orjson.loads(data), None)

    # ------------------------------------------------------------------ replay
    def _apply(self, event: dict[str, Any], line: int | None) -> None:
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        kind = event.get("event")
        v = self.view
        try:
            if kind == RUN:
                v.token = str(event["token"])
            elif kind == PREPARED:
                items = {str(i["custom_id"]): dict(i) for i in event["items"]}
                entry = BatchEntry(str(event["key"]), int(event["round"]),
                                   str(event["endpoint"]), str(event["input"]), items)
                v.batches[entry.key] = entry
                v.rounds.setdefault(entry.round, RoundRecord(entry.round))
                for cid in items:
                    v.retry.pop(cid, None)
                    v.attempts[cid] = v.attempts.get(cid, 0) + 1
            elif kind == UPLOADED:
                entry = v.batches[str(event["key"])]
                entry.input_file_id, entry.state = str(event["input_file_id"]), UPLOADED
            elif kind == SUBMITTED:
                entry = v.batches[str(event["key"])]
                entry.batch_id, entry.state = str(event["batch_id"]), SUBMITTED
                entry.submitted_at = float(event.get("at") or time.time())
            elif kind == FINISHED:
                entry = v.batches[str(event["key"])]
                entry.state, entry.status = FINISHED, str(event["status"])
                entry.output_file_id = event.get("output_file_id")
                entry.error_file_id = event.get("error_file_id")
                entry.waited_s = float(event.get("waited_s") or 0.0)
            elif kind == PROCESSING:
                record = v.rounds.setdefault(int(event["round"]), RoundRecord(int(event["round"])))
                record.processing_sizes = {str(k): int(n) for k, n in event["sizes"].items()}
            elif kind == PROCESSED:
                record = v.rounds.setdefault(int(event["round"]), RoundRecord(int(event["round"])))
                record.processed = True
                for task_id, value in dict(event.get("classified") or {}).items():
                    v.classified[str(task_id)] = bool(value)
                for cid, key in dict(event.get("retry") or {}).items():
                    v.retry[str(cid)] = str(key)
            else:
                raise RunDirError(f"{where}: field 'event': unknown value {str(kind)[:40]!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirError(f"{where}: malformed {kind!s:.20} event ({type(exc).__name__}: "
                              f"{exc})") from None

    # ------------------------------------------------------------------ queries
    def unprocessed_rounds(self) -> list[int]:
        return sorted(n for n, r in self.view.rounds.items() if not r.processed)

    def round_batches(self, number: int) -> list[BatchEntry]:
        return sorted((b for b in self.view.batches.values() if b.round == number),
                      key=lambda b: b.key)

    def next_key(self) -> str:
        return f"b{len(self.view.batches) + 1:06d}"

    def last_round(self) -> int:
        return max(self.view.rounds, default=0)

    def prepared_ids(self) -> set[str]:
        return set(self.view.attempts)


def file_sizes(run_path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Current sizes of the run's append-only files (0 for a missing one)."""
    sizes = {}
    for name in names:
        try:
            sizes[name] = (run_path / name).stat().st_size
        except FileNotFoundError:
            sizes[name] = 0
    return sizes


def roll_back(run_path: Path, sizes: dict[str, int]) -> list[str]:
    """Cut each file back to its recorded size (a round half processed when a run was
    killed); returns what was cut, for the progress display. A file shorter than its
    record means the directory was changed behind the run's back: an error."""
    cut = []
    for name, size in sorted(sizes.items()):
        path = run_path / name
        try:
            fd = open_fd(path, os.O_RDWR)
        except FileNotFoundError:
            if size:
                raise RunDirError(f"{path}: missing, but the batch journal recorded "
                                  f"{size} bytes") from None
            continue
        try:
            now = os.fstat(fd).st_size
            if now < size:
                raise RunDirError(f"{path}: {now} bytes, shorter than the {size} bytes the "
                                  "batch journal recorded; the run directory was changed")
            if now > size:
                os.ftruncate(fd, size)
                os.fsync(fd)
                cut.append(f"{name}: {now - size} bytes of a half-processed round")
        finally:
            os.close(fd)
    return cut
