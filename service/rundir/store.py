"""The run directory: append-only JSONL files, an atomically replaced ``run.json``, a lock.

Why this shape: a bulk run lasts hours, so every record is appended and handed to the
OS in one ``write`` the moment it exists (a ``kill -9`` loses nothing already written),
files are never rewritten whole, and a restart reads them back to resume. A crash can
only tear the *last* line of a file; that torn tail is detected on open, cut off and
reported, and never parsed as data.

Layout (README, "The run directory"):

    tasks.jsonl          finished tasks
    instructions.jsonl   every admitted instruction, in admission order
    rejected.jsonl       every dropped candidate or instance, with stage and reason
    seeds.jsonl          the seed tasks the run started from (so verify/resume are self-contained)
    run.json             configuration (no secrets), counters, usage, timings, version
    .lock                held with flock(LOCK_EX) by the one process writing the directory

Every file here is opened with ``O_NOFOLLOW`` and must be a regular file: a symbolic
link (or a FIFO, a device) planted in a run directory is refused with a clear error,
never followed, so a ``.lock`` link cannot make the lock truncate another file and a
``tasks.jsonl`` link cannot make the torn-tail repair cut one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from service.errors import RunDirError

TASKS = "tasks.jsonl"
INSTRUCTIONS = "instructions.jsonl"
REJECTED = "rejected.jsonl"
SEEDS = "seeds.jsonl"
RUN_JSON = "run.json"
LOCK = ".lock"
JSONL_FILES = (TASKS, INSTRUCTIONS, REJECTED, SEEDS)
# --keep-raw: each call's raw completion (re-parse with `selfinstruct parse`)
RAW_FILES = {stage: f"raw_{stage}.jsonl" for stage in ("instructions", "classify", "instances", "alpaca")}


def open_fd(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symbolic link and accepts only a regular file
    (``O_NONBLOCK`` while opening, so a FIFO cannot block us before it is refused)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(
                f"{path}: is a symbolic link; refusing to follow it (files here must be "
                "regular files: remove the link)"
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO with no reader, opened for writing
            raise RunDirError(f"{path}: not a regular file; refusing to use it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path}: not a regular file; refusing to use it")
    os.set_blocking(fd, True)
    return fd


def open_file(path: Path, mode: Literal["rb", "rb+"] = "rb") -> BinaryIO:
    """A buffered binary file opened through :func:`open_fd`."""
    fd = open_fd(path, os.O_RDONLY if mode == "rb" else os.O_RDWR)
    return os.fdopen(fd, mode)


@dataclass(frozen=True)
class Repair:
    """A torn tail cut off a JSONL file when the run directory was opened."""

    file: str
    bytes_removed: int
    line: int

    def describe(self) -> str:
        return (
            f"{self.file}: line {self.line} was incomplete (a crash mid-write); "
            f"removed {self.bytes_removed} bytes"
        )


def repair_torn_tail(path: Path) -> Repair | None:
    """Cut a last line that lacks its newline; return what was cut, or None."""
    try:
        fh = open_file(path, "rb+")
    except FileNotFoundError:
        return None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return None
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return None
        # Scan backwards in blocks for the last newline.
        block = 65536
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        fh.seek(0)
        line = fh.read(keep).count(b"\n") + 1
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return Repair(file=path.name, bytes_removed=size - keep, line=line)


TornTail = Literal["error", "skip"]
ProblemFn = Callable[[int, str], None]  # (line number, what is wrong with the line)
INCOMPLETE = "incomplete last line (torn write)"


def read_jsonl(
    path: Path, *, torn: TornTail = "error", on_torn: Callable[[int], None] | None = None,
    on_problem: ProblemFn | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each JSON-object line of ``path`` (none if it is
    missing). The one reader of run-directory JSONL files; callers choose the policy:

    * ``torn``: a last line without its newline (a crash mid-write) raises RunDirError
      (``"error"``; RunDir.open cuts such a tail first, so it is never mistaken for
      corruption) or is left out (``"skip"``; its line number goes to ``on_torn``);
    * ``on_problem``: without it a bad complete line raises RunDirError naming file and
      line; with it, each bad line is reported and reading goes on (verify).
    """
    try:
        fh = open_file(path)
    except FileNotFoundError:
        return
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if not raw.endswith(b"\n"):
                if torn == "error":
                    raise RunDirError(f"{path}:{lineno}: {INCOMPLETE}")
                if on_torn is not None:
                    on_torn(lineno)
                return
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc})"
            else:
                if isinstance(obj, dict):
                    yield lineno, obj
                    continue
                problem = f"expected a JSON object, got {type(obj).__name__}"
            if on_problem is None:
                raise RunDirError(f"{path}:{lineno}: {problem}")
            on_problem(lineno, problem)


class JsonlWriter:
    """Appends one JSON object a line; each record reaches the OS in a single write."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync
        # O_APPEND: every write lands at the end even if the offset was stale.
        self._fd: int | None = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.count = 0

    def append(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise RunDirError(f"{self.path}: writer is closed")
        data = orjson.dumps(record) + b"\n"
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, full pipes)
            written = os.write(self._fd, view)
            view = view[written:]
        if self._fsync:
            os.fsync(self._fd)
        self.count += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write then rename: readers see the old file or the new one, never half of one."""
    with atomic_file(path) as fh:
        fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole JSONL file at once (temporary file, fsync, rename): a crash leaves no
    file or the complete one, never a part of it (for files written once, like seeds)."""
    with atomic_file(path) as fh:
        fh.write(b"".join(orjson.dumps(record) + b"\n" for record in records))


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """The one atomic writer: write into the yielded file; on success it is fsynced and
    renamed over ``path``, on any error removed (``path`` is then untouched).

    A fresh temporary file (O_EXCL: whatever had its name, a link included, is gone
    first); the rename replaces ``path`` itself, never a link's target.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with os.fdopen(open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def lock_exclusive(path: Path, mode: int = 0o644) -> int | None:
    """The one lock helper: ``flock(LOCK_EX | LOCK_NB)`` on ``path`` (created if
    missing, never through a link); the held descriptor, or None when another process
    holds the lock. Release with :func:`unlock`."""
    fd = open_fd(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def read_run_json(path: Path) -> dict[str, Any]:
    file = path / RUN_JSON
    try:
        with open_file(file) as fh:
            raw = fh.read()
    except FileNotFoundError:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RunDirError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{file}: expected a JSON object")
    return data


@dataclass
class RunDir:
    """An opened, locked run directory. Use :meth:`open` (or ``with RunDir.open(p)``)."""

    path: Path
    repairs: list[Repair] = field(default_factory=list)
    _lock_fd: int | None = None
    _writers: dict[str, JsonlWriter] = field(default_factory=dict)
    fsync: bool = False

    @classmethod
    def open(cls, path: Path | str, *, create: bool = True, fsync: bool = False) -> RunDir:
        root = Path(path).resolve()
        if root.exists() and not root.is_dir():
            raise RunDirError(f"{root}: exists and is not a directory")
        if not root.exists():
            if not create:
                raise RunDirError(f"{root}: no such run directory")
            root.mkdir(parents=True)
        run = cls(path=root, fsync=fsync)
        run._lock()
        try:
            for name in (*JSONL_FILES, *RAW_FILES.values()):
                repair = repair_torn_tail(root / name)
                if repair is not None:
                    run.repairs.append(repair)
            # Temporary files of an atomic write that a crash interrupted: never read,
            # and no other process can be writing them while we hold the lock.
            for stale in root.glob(".*.tmp"):
                if stale.name.startswith((f".{RUN_JSON}.", f".{SEEDS}.")):
                    stale.unlink(missing_ok=True)
        except BaseException:
            run.close()
            raise
        return run

    def _lock(self) -> None:
        fd = lock_exclusive(self.path / LOCK)
        if fd is None:
            holder = self._lock_holder()
            raise RunDirError(
                f"{self.path} is in use by another selfinstruct process (pid {holder}); "
                "wait for it to finish or stop it first"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _lock_holder(self) -> str:
        try:
            with open_file(self.path / LOCK) as fh:
                return fh.read(64).decode("ascii", "replace").strip() or "unknown"
        except (OSError, RunDirError):
            return "unknown"

    def writer(self, name: str) -> JsonlWriter:
        if self._lock_fd is None:
            raise RunDirError(f"{self.path}: run directory is closed")
        if name not in self._writers:
            self._writers[name] = JsonlWriter(self.path / name, fsync=self.fsync)
        return self._writers[name]

    def append(self, name: str, record: dict[str, Any]) -> None:
        self.writer(name).append(record)

    def read(self, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
        return read_jsonl(self.path / name)

    def records(self, name: str) -> list[dict[str, Any]]:
        return [obj for _, obj in read_jsonl(self.path / name)]

    def write_all(self, name: str, records: Iterable[dict[str, Any]]) -> None:
        """Create ``name`` whole and atomically (see :func:`write_jsonl_atomic`)."""
        if self._lock_fd is None:
            raise RunDirError(f"{self.path}: run directory is closed")
        if name in self._writers:
            raise RunDirError(f"{self.path / name}: is open for appending")
        write_jsonl_atomic(self.path / name, records)

    def write_run_json(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.path / RUN_JSON, data)

    def read_run_json(self) -> dict[str, Any]:
        return read_run_json(self.path)

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
