"""The growing pool of admitted instructions and the admission decision.

``Pool.admit(text)`` keeps the reference's semantics: reject when the ROUGE-L F-measure
against any pool entry is above the threshold (``inclusive``: at or above), else add the
text. Scores are ``rouge-score``'s to the bit (``dedup.rougel``); the candidate index only
decides which entries are scored. Pure and single-threaded: the pipeline gives the pool
to one worker thread and nothing else touches it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from dedup import INDEXES
from dedup.index import (
    BruteIndex,
    CandidateIndex,
    FullIndex,
    LshIndex,
    PrefixIndex,
)
from dedup.rougel import Vocabulary
from dedup.tokenize import get_tokenizer

_BOUND_SLACK = 1e-9
_FIRST_PASS = 64
_REJECTED_MEMO = 200_000  # rejected token strings remembered (a few tens of MB at most)


@dataclass(frozen=True, slots=True)
class Decision:
    """``score`` is the highest similarity found: for a rejection, the best of the
    candidates scored before a match turned up (see ``Pool._first_matches``); for an
    admission, exact when ``top_k`` > 0. ``match`` is the entry with that score (the
    earliest on ties) when rejected. ``most_similar`` is the exact top-k (score > 0) for admitted candidates."""

    admitted: bool
    score: float
    match: str | None
    most_similar: tuple[tuple[str, float], ...] = ()
    mean_similarity: float | None = None


class Pool:
    """Instructions admitted so far, with the indexes that make admission fast.

    ``index``: "exact" (prefix filtering; never misses), "lsh64"/"lsh128" (datasketch
    MinHash LSH with 64/128 permutations; may miss), "brute" (scores every entry).
    ``top_k``: how many most-similar entries to report for admitted candidates (the
    reference keeps 10); 0 skips that work. ``mean_similarity`` also reports the mean F
    against the whole pool, which costs one vectorised LCS per entry sharing a token.
    """

    def __init__(
        self,
        threshold: float = 0.7,
        *,
        inclusive: bool = False,
        tokenizer: str = "rouge",
        index: str = "exact",
        top_k: int = 10,
        mean_similarity: bool = False,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k!r}")
        self.threshold = threshold
        self.inclusive = inclusive
        self.top_k = top_k
        self.mean_similarity = mean_similarity
        self._tokenize = get_tokenizer(tokenizer)
        self._vocabulary = Vocabulary()
        self._texts: list[str] = []
        self._codes: list[str] = []
        self._lengths = array("i")
        # The same strings as an object array: fancy indexing feeds rapidfuzz quickly.
        self._code_array: npt.NDArray[np.object_] = np.empty(0, dtype=object)
        self._prefilter: CandidateIndex
        if index == "exact":
            self._prefilter = PrefixIndex(threshold, self._codes)
        elif index == "lsh64":
            self._prefilter = LshIndex(threshold, num_perm=64)
        elif index == "lsh128":
            self._prefilter = LshIndex(threshold, num_perm=128)
        elif index == "brute":
            self._prefilter = BruteIndex(self._codes)
        else:
            raise ValueError(f"unknown index {index!r}: expected one of {', '.join(INDEXES)}")
        self._full = FullIndex() if (top_k or mean_similarity) else None
        # Exact repeats are decided without the index: a repeat of an entry scores 1.0
        # against it, and a repeat of a rejected candidate is rejected again (the pool
        # only grows, so its match is still there).
        self._entry_by_code: dict[str, int] = {}
        self._rejected: dict[str, Decision] = {}

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> Sequence[str]:
        return self._texts

    def encode(self, text: str) -> str:
        return self._vocabulary.encode(self._tokenize(text))

    # ------------------------------------------------------------------ building
    def add(self, text: str) -> int:
        """Add unconditionally (seeds, and admitted instructions on resume)."""
        return self.add_encoded(text, self.encode(text))

    def add_encoded(self, text: str, code: str) -> int:
        """Add an already-encoded text (for ``dedup.scan``, which encodes once)."""
        entry = len(self._texts)
        # Order matters: the prefix index reads the pool's lists when it rebuilds.
        self._texts.append(text)
        self._codes.append(code)
        self._lengths.append(len(code))
        if entry >= self._code_array.size:  # grow by doubling: amortised O(1)
            grown = np.empty(max(1024, 2 * self._code_array.size), dtype=object)
            grown[: self._code_array.size] = self._code_array
            self._code_array = grown
        self._code_array[entry] = code
        self._entry_by_code.setdefault(code, entry)
        self._prefilter.add(entry, code)
        if self._full is not None:
            self._full.add(entry, code)
        return entry

    def preload(self, texts: Iterable[str]) -> int:
        count = 0
        for text in texts:
            self.add(text)
            count += 1
        return count

    # ------------------------------------------------------------------ scoring
    def matches(self, code: str) -> list[tuple[int, float]]:
        """Every entry whose F against ``code`` exceeds the threshold, by entry order
        (complete for the exact and brute indexes)."""
        n = len(code)
        if n == 0 or not self._texts:
            return []
        entries = self._prefilter.candidates(code)
        if entries.size == 0:
            return []
        lengths = np.frombuffer(self._lengths, dtype=np.int32)[entries]
        # The length bound (vectorised): 2*min/(sum) can reach the threshold.
        fits = 2 * np.minimum(lengths, n) / (lengths + n) >= self.threshold - _BOUND_SLACK
        entries = entries[fits]
        if entries.size == 0:
            return []
        scores = self._f_measures(code, entries, lengths[fits])
        if self.inclusive:
            over = np.flatnonzero(scores >= self.threshold)
        else:
            over = np.flatnonzero(scores > self.threshold)
        return [(int(entries[i]), float(scores[i])) for i in over.tolist()]

    def _f_measures(
        self, code: str, entries: npt.NDArray[np.int32], lengths: npt.NDArray[np.int32]
    ) -> npt.NDArray[np.float64]:
        """rouge-score's F for many entries at once. IEEE-754 division and multiplication
        are correctly rounded in numpy as in Python, and the operations run in the same
        order as ``rouge_score.scoring.fmeasure``, so every value is bit-identical."""
        others = self._code_array[entries]
        lcs = process.cdist([code], others, scorer=LCSseq.similarity, dtype=np.int32)[0]
        lcs = lcs.astype(np.float64)
        precision = lcs / lengths
        recall = lcs / len(code)
        total = precision + recall
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = 2 * precision * recall / total
        return np.where(total > 0, scores, 0.0)

    def check(self, text: str) -> Decision:
        """The decision for ``text`` against the pool, without adding it."""
        return self._decide(text, self.encode(text))

    def admit(self, text: str) -> Decision:
        code = self.encode(text)
        decision = self._decide(code=code, text=text)
        if decision.admitted:
            self.add_encoded(text, code)
        return decision

    def admit_batch(self, texts: Iterable[str]) -> list[Decision]:
        """In order: a later candidate is checked against earlier admitted ones."""
        return [self.admit(text) for text in texts]

    def _repeat(self, code: str) -> Decision | None:
        """The decision for an exact repeat (same tokens) of an entry or of a rejected
        candidate; None for anything new."""
        if not code:
            return None
        entry = self._entry_by_code.get(code)
        if entry is not None and (self.inclusive or self.threshold < 1.0):  # F = 1.0 is a match
            return Decision(False, 1.0, self._texts[entry])
        return self._rejected.get(code)

    def _first_matches(self, code: str) -> list[tuple[int, float]]:
        """Entries over the threshold among the first batch that holds any.

        A rejection needs one match, not all: the candidates that the most probes found
        (the likeliest near-duplicates) are scored first, and the rest only when none of
        those matches. The decision is the same as scoring every candidate; the score and
        match reported for a rejection are the best of the batch that decided it."""
        n = len(code)
        if n == 0 or not self._texts:
            return []
        entries, hits = self._prefilter.candidate_hits(code)
        if entries.size == 0:
            return []
        lengths = np.frombuffer(self._lengths, dtype=np.int32)[entries]
        fits = 2 * np.minimum(lengths, n) / (lengths + n) >= self.threshold - _BOUND_SLACK
        entries, hits, lengths = entries[fits], hits[fits], lengths[fits]
        if entries.size > _FIRST_PASS:
            # Which 64 of equally likely candidates come first does not matter: the best
            # of a batch wins, the earliest entry on ties (``_decide``).
            order = np.argpartition(-hits, _FIRST_PASS - 1)
            batches = [order[:_FIRST_PASS], order[_FIRST_PASS:]]
        else:
            batches = [np.arange(entries.size)]
        for batch in batches:
            if batch.size == 0:
                continue
            scores = self._f_measures(code, entries[batch], lengths[batch])
            over = scores >= self.threshold if self.inclusive else scores > self.threshold
            found = np.flatnonzero(over)
            if found.size:
                return [(int(entries[batch[i]]), float(scores[i])) for i in found.tolist()]
        return []

    def _decide(self, text: str, code: str) -> Decision:
        repeat = self._repeat(code)
        if repeat is not None:
            return repeat
        hits = self._first_matches(code)
        if hits:
            entry, score = max(hits, key=lambda hit: (hit[1], -hit[0]))
            decision = Decision(False, score, self._texts[entry])
            if len(self._rejected) >= _REJECTED_MEMO:
                del self._rejected[next(iter(self._rejected))]  # the oldest
            self._rejected[code] = decision
            return decision
        most_similar: tuple[tuple[str, float], ...] = ()
        mean: float | None = None
        if self._full is not None and code and self._texts:
            bounds = self._full.upper_bounds(code)
            if self.top_k:
                most_similar = tuple(
                    (self._texts[entry], score) for entry, score in self._top_k(code, bounds)
                )
            if self.mean_similarity:
                mean = self._mean(code, bounds)
        elif self.mean_similarity:
            mean = 0.0
        score = most_similar[0][1] if most_similar else 0.0
        return Decision(True, score, None, most_similar, mean)

    def _scores(self, code: str, entries: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        lengths = np.frombuffer(self._lengths, dtype=np.int32)[entries]
        return self._f_measures(code, entries.astype(np.int32), lengths)

    def _top_k(self, code: str, bounds: npt.NDArray[np.float64]) -> list[tuple[int, float]]:
        """Exact top-k: score the entries with the best bounds first, then, in rounds,
        every entry whose bound could still reach the k-th best score found so far."""
        k = self.top_k
        pending = np.flatnonzero(bounds > 0)
        found_entries: list[npt.NDArray[np.int64]] = []
        found_scores: list[npt.NDArray[np.float64]] = []
        kth = 0.0
        batch = _FIRST_PASS
        while pending.size:
            if pending.size > batch:
                best = np.argpartition(-bounds[pending], batch - 1)
                chosen, pending = pending[best[:batch]], pending[best[batch:]]
            else:
                chosen, pending = pending, pending[:0]
            found_entries.append(chosen)
            found_scores.append(self._scores(code, chosen))
            scores = np.concatenate(found_scores)
            if scores.size >= k:
                kth = float(np.partition(scores, scores.size - k)[scores.size - k])
                # Entries whose bound is below the k-th best can never enter the top k.
                pending = pending[bounds[pending] + _BOUND_SLACK >= kth]
            batch *= 4
        if not found_entries:
            return []
        entries = np.concatenate(found_entries)
        scores = np.concatenate(found_scores)
        order = np.lexsort((entries, -scores))[:k]  # best score first, earliest on ties
        return [
            (int(entries[i]), float(scores[i])) for i in order.tolist() if scores[i] > 0
        ]

    def _mean(self, code: str, bounds: np.ndarray) -> float:
        positive = np.flatnonzero(bounds > 0)
        total = float(self._scores(code, positive).sum()) if positive.size else 0.0
        return total / len(self._texts)
