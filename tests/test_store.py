"""The run directory: lock, torn-tail repair, append-only writers, atomic run.json."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from service.errors import RunDirError
from service.rundir.store import (
    INSTRUCTIONS,
    LOCK,
    REJECTED,
    RUN_JSON,
    TASKS,
    JsonlWriter,
    RunDir,
    read_jsonl,
    read_run_json,
    repair_torn_tail,
    write_json_atomic,
)


def _jsonl(*records: dict[str, object]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


# ------------------------------------------------------------------ lock

def test_second_open_fails_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "run"
    first = RunDir.open(root)
    try:
        assert (root / LOCK).read_text() == str(os.getpid())
        with pytest.raises(RunDirError, match=rf"in use by another selfinstruct process \(pid {os.getpid()}\)"):
            RunDir.open(root)
    finally:
        first.close()
    # released on close: a later open succeeds
    with RunDir.open(root) as again:
        assert again.path == root.resolve()


def test_context_manager_releases_the_lock(tmp_path: Path) -> None:
    held = f"in use by another selfinstruct process \\(pid {os.getpid()}\\)"
    with RunDir.open(tmp_path / "run"), pytest.raises(RunDirError, match=held):
        RunDir.open(tmp_path / "run")
    # leaving the block released it: the next open takes the lock
    with RunDir.open(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())


def test_open_rejects_files_and_missing_dirs(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        RunDir.open(a_file)
    with pytest.raises(RunDirError, match="no such run directory"):
        RunDir.open(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_closed_run_dir_refuses_writes(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path / "run")
    run.close()
    with pytest.raises(RunDirError, match="closed"):
        run.append(TASKS, {"id": "t"})


# ------------------------------------------------------------------ torn tail

def test_torn_tail_is_cut_and_reported_complete_lines_kept(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    complete = _jsonl({"id": "task_000001", "instruction": "A"}, {"id": "task_000002", "instruction": "B"})
    torn = b'{"id": "task_000003", "instr'
    (root / TASKS).write_bytes(complete + torn)
    (root / INSTRUCTIONS).write_bytes(_jsonl({"id": "task_000001"}))  # intact
    with RunDir.open(root) as run:
        assert len(run.repairs) == 1
        repair = run.repairs[0]
        assert (repair.file, repair.line, repair.bytes_removed) == (TASKS, 3, len(torn))
        assert "tasks.jsonl: line 3 was incomplete" in repair.describe()
        assert (root / TASKS).read_bytes() == complete
        assert [r["id"] for r in run.records(TASKS)] == ["task_000001", "task_000002"]
        # appending after the repair continues on a clean line
        run.append(TASKS, {"id": "task_000003"})
        assert [r["id"] for r in run.records(TASKS)][-1] == "task_000003"
    with RunDir.open(root) as run:
        assert run.repairs == []


def test_torn_only_line_and_long_torn_tail(tmp_path: Path) -> None:
    only = tmp_path / "only.jsonl"
    only.write_bytes(b'{"id": "x"')
    repair = repair_torn_tail(only)
    assert repair is not None and (repair.line, repair.bytes_removed) == (1, 10)
    assert only.read_bytes() == b""

    # a torn tail longer than the backwards scan's block
    long = tmp_path / "long.jsonl"
    head = _jsonl({"n": 1}) * 3
    tail = b'{"text": "' + b"x" * 200_000
    long.write_bytes(head + tail)
    repair = repair_torn_tail(long)
    assert repair is not None and (repair.line, repair.bytes_removed) == (4, len(tail))
    assert long.read_bytes() == head


def test_nothing_to_repair(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl({"a": 1}))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert repair_torn_tail(good) is None
    assert repair_torn_tail(empty) is None
    assert repair_torn_tail(tmp_path / "missing.jsonl") is None
    assert good.read_bytes() == _jsonl({"a": 1})


# ------------------------------------------------------------------ reading

def test_read_jsonl_numbers_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]
    assert list(read_jsonl(tmp_path / "missing.jsonl")) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": \n', r"x\.jsonl:2: not valid JSON"),
        (b'{"a": 1}\n[1, 2]\n', r"x\.jsonl:2: expected a JSON object"),
        (b'{"a": 1}\n{"a": 2}', r"x\.jsonl:2: incomplete last line"),
    ],
)
def test_read_jsonl_bad_lines_name_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(RunDirError, match=message):
        list(read_jsonl(path))


# ------------------------------------------------------------------ writers

def test_jsonl_writer_appends_across_writers(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first = JsonlWriter(path)
    first.append({"n": 1, "text": "café ✓"})
    first.append({"n": 2})
    assert first.count == 2
    first.close()
    second = JsonlWriter(path, fsync=True)
    second.append({"n": 3})
    second.close()
    assert [obj for _, obj in read_jsonl(path)] == [{"n": 1, "text": "café ✓"}, {"n": 2}, {"n": 3}]
    assert path.read_bytes().count(b"\n") == 3
    with pytest.raises(RunDirError, match="closed"):
        second.append({"n": 4})
    second.close()  # closing twice is harmless


def test_run_dir_append_and_read(tmp_path: Path) -> None:
    with RunDir.open(tmp_path / "run") as run:
        run.append(REJECTED, {"stage": "filter", "reason": "too_short", "text": "Hi."})
        run.append(REJECTED, {"stage": "dedup", "reason": "near_duplicate", "text": "Hello."})
        assert run.writer(REJECTED) is run.writer(REJECTED)
        assert [line for line, _ in run.read(REJECTED)] == [1, 2]
        assert [r["reason"] for r in run.records(REJECTED)] == ["too_short", "near_duplicate"]
        assert run.records(TASKS) == []


# ------------------------------------------------------------------ run.json

def test_write_json_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / RUN_JSON
    path.write_text("old and much longer content " * 100)
    write_json_atomic(path, {"status": "running", "counters": {"b": 2, "a": 1}})
    text = path.read_text()
    assert text.endswith("\n")
    assert orjson.loads(text) == {"status": "running", "counters": {"b": 2, "a": 1}}
    assert text.index('"a"') < text.index('"b"')  # keys sorted, indented for people
    write_json_atomic(path, {"status": "finished"})
    assert read_run_json(tmp_path) == {"status": "finished"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_JSON]  # no temp file left


def test_run_dir_run_json_roundtrip(tmp_path: Path) -> None:
    with RunDir.open(tmp_path / "run") as run:
        assert run.read_run_json() == {}
        run.write_run_json({"version": "0.1.0", "counters": {"tasks_written": 3}})
        assert run.read_run_json()["counters"] == {"tasks_written": 3}


@pytest.mark.parametrize(("content", "message"), [(b"{nope", "not valid JSON"), (b"[1]", "expected a JSON object")])
def test_read_run_json_errors(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / RUN_JSON).write_bytes(content)
    with pytest.raises(RunDirError, match=message):
        read_run_json(tmp_path)


# ------------------------------------------------------------------ links are refused

@pytest.mark.parametrize("name", [LOCK, TASKS, INSTRUCTIONS, RUN_JSON])
def test_a_symlink_in_the_run_directory_is_refused_and_its_target_untouched(
        tmp_path: Path, name: str) -> None:
    """A `.lock` link made the lock truncate its target; a `tasks.jsonl` link made the
    torn-tail repair cut another file. Now: refused with a clear error, never followed."""
    root = tmp_path / "run"
    root.mkdir()
    victim = tmp_path / "victim.txt"
    content = b"precious data without a final newline"
    victim.write_bytes(content)
    (root / name).symlink_to(victim)
    with pytest.raises(RunDirError, match=rf"{name}: is a symbolic link; refusing to follow"), \
            RunDir.open(root) as run:
        run.read_run_json()  # run.json is only read
        run.records(name)
    assert victim.read_bytes() == content
    assert (root / name).is_symlink()


def test_a_dangling_link_is_not_created_through(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (root / TASKS).symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(RunDirError, match="symbolic link"):
        RunDir.open(root)
    with pytest.raises(RunDirError, match="symbolic link"):
        JsonlWriter(root / TASKS).append({"id": "t"})
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    os.mkfifo(root / TASKS)
    with pytest.raises(RunDirError, match="not a regular file"):
        RunDir.open(root)
    with pytest.raises(RunDirError, match="not a regular file"):
        JsonlWriter(root / TASKS)


def test_atomic_write_replaces_a_planted_temporary_link_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    target = tmp_path / "run.json"
    (tmp_path / f".run.json.{os.getpid()}.tmp").symlink_to(victim)
    write_json_atomic(target, {"a": 1})
    assert victim.read_bytes() == b"keep"
    assert orjson.loads(target.read_bytes()) == {"a": 1}
