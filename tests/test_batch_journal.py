"""The batch journal: replay, torn tails, rollback of a half-processed round."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import RunDirError
from service.rundir.batch_journal import (
    BATCHES,
    FINISHED,
    PREPARED,
    PROCESSED,
    PROCESSING,
    SUBMITTED,
    UPLOADED,
    BatchJournal,
    file_sizes,
    roll_back,
)


def _prepare(journal: BatchJournal, key: str, number: int, ids: list[str]) -> None:
    journal.record({"event": PREPARED, "key": key, "round": number,
                    "endpoint": "/v1/completions", "input": f"batches/{key}.input.jsonl",
                    "items": [{"custom_id": c, "stage": "classify", "task": c} for c in ids]})


def test_replay_restores_every_state(tmp_path: Path) -> None:
    journal = BatchJournal(tmp_path)
    token = journal.view.token
    _prepare(journal, "b000001", 1, ["a", "b"])
    journal.record({"event": UPLOADED, "key": "b000001", "input_file_id": "file-1"})
    journal.record({"event": SUBMITTED, "key": "b000001", "batch_id": "batch-1"})
    journal.record({"event": FINISHED, "key": "b000001", "status": "expired",
                    "output_file_id": "file-2", "error_file_id": "file-3", "waited_s": 4.5})
    journal.record({"event": PROCESSING, "round": 1, "sizes": {"tasks.jsonl": 0}})
    journal.record({"event": PROCESSED, "round": 1, "classified": {"a": True},
                    "retry": {"b": "b000001"}})
    _prepare(journal, "b000002", 2, ["b"])  # the resubmission
    journal.close()
    again = BatchJournal(tmp_path)
    view = again.view
    assert view.token == token
    first = view.batches["b000001"]
    assert (first.state, first.batch_id, first.status, first.error_file_id) == \
        (FINISHED, "batch-1", "expired", "file-3")
    assert view.classified == {"a": True}
    assert view.retry == {}  # prepared again in round 2
    assert view.attempts == {"a": 1, "b": 2}
    assert again.unprocessed_rounds() == [2]
    assert view.waiting_s == pytest.approx(4.5)
    assert again.next_key() == "b000003"
    again.close()


def test_torn_last_line_is_cut_and_unknown_events_are_errors(tmp_path: Path) -> None:
    journal = BatchJournal(tmp_path)
    _prepare(journal, "b000001", 1, ["a"])
    journal.close()
    with (tmp_path / BATCHES).open("ab") as fh:
        fh.write(b'{"event": "submitted", "key": "b0000')  # kill -9 mid-write
    again = BatchJournal(tmp_path)
    assert again.repair is not None
    assert again.view.batches["b000001"].state == PREPARED
    again.close()
    with (tmp_path / BATCHES).open("ab") as fh:
        fh.write(b'{"event": "paid", "key": "b000001"}\n')
    with pytest.raises(RunDirError, match=r"batches\.jsonl:\d+: field 'event'"):
        BatchJournal(tmp_path)


def test_roll_back_cuts_a_half_processed_round(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_bytes(b'{"id": 1}\n')
    sizes = file_sizes(tmp_path, ("tasks.jsonl", "rejected.jsonl"))
    assert sizes == {"tasks.jsonl": 10, "rejected.jsonl": 0}
    with (tmp_path / "tasks.jsonl").open("ab") as fh:
        fh.write(b'{"id": 2}\n')
    (tmp_path / "rejected.jsonl").write_bytes(b'{"r": 1}\n')
    cut = roll_back(tmp_path, sizes)
    assert len(cut) == 2
    assert (tmp_path / "tasks.jsonl").read_bytes() == b'{"id": 1}\n'
    assert (tmp_path / "rejected.jsonl").read_bytes() == b""
    (tmp_path / "tasks.jsonl").write_bytes(b"")
    with pytest.raises(RunDirError, match="shorter than"):
        roll_back(tmp_path, sizes)
