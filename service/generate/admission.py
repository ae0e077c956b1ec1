"""The pipeline's view of the dedup pool: a plain function the admission thread calls.

The pool is built once (seeds, then the run's admitted instructions in admission order)
and then owned by the pipeline's single dedup thread; nothing else touches it, so it
needs no locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dedup.pool import Pool
from service.config import Config
from service.generate.seams import AdmitFn, DedupDecision


def build_pool(config: Config, seed_texts: Sequence[str], admitted_texts: Sequence[str]) -> Pool:
    pool = Pool(
        threshold=config.threshold,
        inclusive=config.inclusive_threshold,
        tokenizer=config.tokenizer,
        index=config.dedup_index,
        top_k=10,
        # avg_similarity_score in the records, as the reference writes (scores the pool)
        mean_similarity=config.avg_similarity,
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


def make_admit(config: Config, seed_texts: Sequence[str], admitted_texts: Sequence[str]) -> AdmitFn:
    pool = build_pool(config, seed_texts, admitted_texts)

    def admit(texts: Sequence[str]) -> list[DedupDecision]:
        return [_to_admission(d) for d in pool.admit_batch(list(texts))]

    return admit
