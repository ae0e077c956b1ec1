"""The pipeline's view of the dedup pool: a plain function the admission thread calls.

The pool is built once (seeds, then the run's admitted instructions in admission order)
and then owned by one place: the pipeline's single dedup thread, or (``admission =
"process"``, the default) a child process that the dedup thread talks to over a pipe.
Either way decisions are made one batch at a time in arrival order, so they equal a
sequential run over the admission log; nothing else touches the pool, so it needs no
locks. The child process has its own interpreter lock: ROUGE-L work no longer competes
with the event loop for it (benchmarks/RESULTS.md, the 30,000 RPM case).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from dedup import IndexName, TokenizerName
from dedup.pool import Pool
from service.config import Config
from service.errors import SelfInstructError
from service.generate.seams import AdmitFn, DedupDecision

_TOP_K = 10  # most similar entries kept per admitted instruction, as the reference does
_JOIN_S = 5.0  # how long a closing admission process may take to exit


class AdmissionProcessError(SelfInstructError):
    """The admission process ended or failed; the run stops (its files stay consistent:
    a decision is only written after it came back)."""


@dataclass(frozen=True)
class PoolSettings:
    """What the pool needs from the configuration (sent to the admission process)."""

    threshold: float
    inclusive: bool
    tokenizer: TokenizerName
    index: IndexName
    mean_similarity: bool = True

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings:
        return cls(config.threshold, config.inclusive_threshold, config.tokenizer,
                   config.dedup_index, config.records_avg_similarity())


def build_pool(config: Config, seed_texts: Sequence[str], admitted_texts: Sequence[str]) -> Pool:
    return _build(PoolSettings.from_config(config), seed_texts, admitted_texts)


def _build(settings: PoolSettings, seed_texts: Sequence[str], admitted_texts: Sequence[str]) -> Pool:
    pool = Pool(
        threshold=settings.threshold,
        inclusive=settings.inclusive,
        tokenizer=settings.tokenizer,
        index=settings.index,
        top_k=_TOP_K,
        # avg_similarity_score in the records, as the reference writes (scores the pool)
        mean_similarity=settings.mean_similarity,
    )
    pool.preload(list(seed_texts))
    # Already-admitted instructions passed the filter when they were admitted; re-adding
    # them unconditionally restores the exact pool even if the threshold changed since.
    pool.preload(list(admitted_texts))
    return pool


def _to_admission(decision: Any) -> DedupDecision:
    most_similar = {str(text): round(float(score), 6) for text, score in decision.most_similar}
    return DedupDecision(
        admitted=bool(decision.admitted),
        score=float(decision.score),
        match=decision.match,
        most_similar=most_similar,
        avg_similarity=None if decision.mean_similarity is None else round(float(decision.mean_similarity), 6),
    )


def _decide(pool: Pool, texts: Sequence[str]) -> list[DedupDecision]:
    return [_to_admission(d) for d in pool.admit_batch(list(texts))]


def make_admit(config: Config, seed_texts: Sequence[str], admitted_texts: Sequence[str]) -> AdmitFn:
    pool = build_pool(config, seed_texts, admitted_texts)

    def admit(texts: Sequence[str]) -> list[DedupDecision]:
        return _decide(pool, texts)

    return admit


def _serve_pool(conn: Connection, settings: PoolSettings) -> None:
    """The admission process: build the pool, then answer batches until told to stop
    (``None``) or until the parent goes away (EOF)."""
    try:
        seed_texts, admitted_texts = conn.recv()
        pool = _build(settings, seed_texts, admitted_texts)
        conn.send(len(pool))
        while True:
            texts = conn.recv()
            if texts is None:
                return
            conn.send(_decide(pool, texts))
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the parent ended: nothing to answer


class ProcessAdmission:
    """An :data:`AdmitFn` whose pool lives in a child process.

    Called from the dedup thread only (one batch at a time), so one pipe suffices and the
    order of decisions is the order of calls."""

    def __init__(self, config: Config, seed_texts: Sequence[str],
                 admitted_texts: Sequence[str]) -> None:
        # spawn: a fresh interpreter, never a fork of a process with threads and a loop.
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_pool, args=(child, PoolSettings.from_config(config)),
            name="selfinstruct-admission", daemon=True,
        )
        self._process.start()
        child.close()
        self._call((list(seed_texts), list(admitted_texts)))

    def _call(self, message: object) -> Any:
        try:
            self._conn.send(message)
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise AdmissionProcessError(
                f"the admission process ended unexpectedly (exit code {self._process.exitcode})"
            ) from exc

    def __call__(self, texts: Sequence[str]) -> list[DedupDecision]:
        decisions: list[DedupDecision] = self._call(list(texts))
        return decisions

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(None)
        self._process.join(_JOIN_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(_JOIN_S)
        self._conn.close()


@contextlib.contextmanager
def open_admission(config: Config, seed_texts: Sequence[str],
                   admitted_texts: Sequence[str]) -> Iterator[AdmitFn]:
    """The run's admission function, in a thread or a child process (``config.admission``),
    closed when the run ends."""
    if config.admission == "thread":
        yield make_admit(config, seed_texts, admitted_texts)
        return
    admission = ProcessAdmission(config, seed_texts, admitted_texts)
    try:
        yield admission
    finally:
        admission.close()
