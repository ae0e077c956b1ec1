"""Where a batch-mode run's batch files go: a provider's Batch API, or a folder.

Both transports work from the journal (service.rundir.batch_journal): ``submit`` takes an
entry from whatever state it is in to "submitted", journalling each step before the next,
``poll`` reports the provider's status, ``fetch`` brings the output (and error) file into
the run directory, ``cancel`` ends a batch that ran past ``batch_timeout``.

``files``: for a provider we cannot reach from here, e.g. vLLM's offline
``run_batch`` entry point on a GPU node. Each batch's request file is written to
``DIR/<run token>-<key>.input.jsonl``; the runner writes ``<run token>-<key>.output.jsonl``
next to it (the same JSONL format). The output counts as complete when it answers every
custom_id of the request file, each line whole; a batch past ``batch_timeout`` takes what
is there and the rest is resubmitted. DIR is locked (flock) for the run, so two runs
cannot share it at once; the run token keeps runs that use it one after the other apart.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import orjson

from service.errors import ConfigError, InputError
from service.llm.batch import BatchClient, iter_lines
from service.rundir.batch_journal import (
    FINISHED,
    PREPARED,
    SUBMITTED,
    UPLOADED,
    BatchEntry,
    BatchJournal,
)
from service.rundir.store import atomic_file, lock_exclusive, unlock

METADATA_KEY = "selfinstruct_batch"  # how a resumed run finds a batch it did not record
DIR_LOCK = ".selfinstruct-batch.lock"


class BatchTransport(Protocol):
    async def submit(self, entry: BatchEntry, data: bytes, *, resumed: bool) -> None:
        """Upload and create (journalled), from the entry's state on; never creates a
        batch the journal or the provider already has."""
        ...

    async def poll(self, entry: BatchEntry) -> tuple[str, int, int]:
        """(status, lines answered, lines failed) as the provider reports them."""
        ...

    async def fetch(self, entry: BatchEntry, output: Path, errors: Path) -> tuple[str | None,
                                                                                 str | None]:
        """Bring the finished batch's files into the run directory; their provider ids."""
        ...

    async def cancel(self, entry: BatchEntry) -> None:
        ...

    async def aclose(self) -> None:
        ...


def name_of(journal: BatchJournal, entry: BatchEntry) -> str:
    return f"{journal.view.token}-{entry.key}"


class OpenAITransport:
    """OpenAI's Batch API (and servers that copy it) through :class:`BatchClient`."""

    def __init__(self, client: BatchClient, journal: BatchJournal) -> None:
        self.client = client
        self.journal = journal
        self._last: dict[str, tuple[str | None, str | None]] = {}

    async def submit(self, entry: BatchEntry, data: bytes, *, resumed: bool) -> None:
        name = name_of(self.journal, entry)
        if entry.state == PREPARED:
            file_id = await self.client.upload(f"{name}.jsonl", data)
            self.journal.record({"event": UPLOADED, "key": entry.key, "input_file_id": file_id})
        elif entry.state == UPLOADED and resumed:
            # Killed between "create" and its journal line? Then the batch exists: adopt it.
            found = await self.client.find(METADATA_KEY, name)
            if found is not None:
                self.journal.record({"event": SUBMITTED, "key": entry.key,
                                     "batch_id": found.id})
                return
        if entry.state != UPLOADED or entry.input_file_id is None:
            return
        info = await self.client.create(entry.input_file_id, entry.endpoint,
                                        {METADATA_KEY: name})
        self.journal.record({"event": SUBMITTED, "key": entry.key, "batch_id": info.id})

    async def poll(self, entry: BatchEntry) -> tuple[str, int, int]:
        assert entry.batch_id is not None
        info = await self.client.retrieve(entry.batch_id)
        self._last[entry.key] = (info.output_file_id, info.error_file_id)
        return info.status, info.completed, info.failed

    async def fetch(self, entry: BatchEntry, output: Path,
                    errors: Path) -> tuple[str | None, str | None]:
        out_id, err_id = self._last.get(entry.key, (entry.output_file_id, entry.error_file_id))
        for file_id, dest in ((out_id, output), (err_id, errors)):
            if file_id is not None:
                await self.client.download(file_id, dest)
            else:
                dest.unlink(missing_ok=True)
        return out_id, err_id

    async def cancel(self, entry: BatchEntry) -> None:
        if entry.batch_id is not None:
            await self.client.cancel(entry.batch_id)

    async def aclose(self) -> None:
        return None


class FilesTransport:
    """Request and output files in a folder (see the module docstring)."""

    def __init__(self, folder: Path, journal: BatchJournal) -> None:
        self.folder = folder.resolve()
        self.journal = journal
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = lock_exclusive(self.folder / DIR_LOCK)
        if fd is None:
            raise ConfigError(
                f"config key 'batch_dir': {self.folder} is in use by another selfinstruct "
                "run; give each run its own --batch-dir (or wait for the other to finish)"
            )
        self._lock_fd: int | None = fd
        self._expired: set[str] = set()

    def _paths(self, entry: BatchEntry) -> tuple[Path, Path]:
        name = name_of(self.journal, entry)
        return self.folder / f"{name}.input.jsonl", self.folder / f"{name}.output.jsonl"

    async def submit(self, entry: BatchEntry, data: bytes, *, resumed: bool) -> None:
        request, _ = self._paths(entry)
        if entry.state == PREPARED:
            write_whole(request, data)  # a runner never sees half a request file
            self.journal.record({"event": UPLOADED, "key": entry.key,
                                 "input_file_id": request.name})
        if entry.state == UPLOADED:
            self.journal.record({"event": SUBMITTED, "key": entry.key,
                                 "batch_id": request.name.removesuffix(".input.jsonl")})

    def _complete_lines(self, entry: BatchEntry) -> tuple[list[bytes], set[str]]:
        """Whole lines of the output file so far and the custom_ids they answer."""
        _, output = self._paths(entry)
        lines: list[bytes] = []
        ids: set[str] = set()
        if output.is_symlink() or (output.exists() and not output.is_file()):
            raise InputError(str(output), None, None, "not a regular file (a link?); "
                             "refusing to read it")
        if not output.exists():
            return lines, ids
        for number, raw in iter_lines(output):
            if not raw.endswith(b"\n"):
                break  # the runner is still writing this line
            try:
                cid = orjson.loads(raw).get("custom_id")
            except (orjson.JSONDecodeError, AttributeError):
                raise InputError(str(output), number, None, "not a JSON object") from None
            if not isinstance(cid, str) or cid not in entry.items:
                raise InputError(str(output), number, "custom_id",
                                 f"{str(cid)[:80]!r} was not in the request file")
            ids.add(cid)
            lines.append(raw)
        return lines, ids

    async def poll(self, entry: BatchEntry) -> tuple[str, int, int]:
        _, ids = self._complete_lines(entry)
        if entry.key in self._expired:
            return "expired", len(ids), 0
        if ids >= set(entry.items):
            return "completed", len(ids), 0
        return "in_progress", len(ids), 0

    async def fetch(self, entry: BatchEntry, output: Path,
                    errors: Path) -> tuple[str | None, str | None]:
        lines, _ = self._complete_lines(entry)
        write_whole(output, b"".join(lines))
        errors.unlink(missing_ok=True)
        return self._paths(entry)[1].name, None

    async def cancel(self, entry: BatchEntry) -> None:
        self._expired.add(entry.key)

    async def aclose(self) -> None:
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            self._lock_fd = None


def write_whole(path: Path, data: bytes) -> None:
    """Write a file whole (the run directory's atomic writer: a fresh O_EXCL temporary,
    never through a link someone planted in a shared folder, fsync, rename)."""
    with atomic_file(path) as fh:
        fh.write(data)


def journal_finished(journal: BatchJournal, entry: BatchEntry, status: str,
                     ids: tuple[str | None, str | None], waited_s: float) -> None:
    journal.record({"event": FINISHED, "key": entry.key, "status": status,
                    "output_file_id": ids[0], "error_file_id": ids[1],
                    "waited_s": round(waited_s, 3)})


def submitted_age(entry: BatchEntry) -> float:
    """Seconds since the batch was created (wall clock: survives restarts)."""
    return 0.0 if entry.submitted_at is None else max(0.0, time.time() - entry.submitted_at)


__all__ = ["SUBMITTED", "BatchTransport", "FilesTransport", "OpenAITransport",
           "journal_finished", "name_of", "submitted_age"]
