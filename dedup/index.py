"""Candidate indexes: which pool entries could reach the threshold against a query.

Both index encoded token strings (one code point per token, see ``dedup.rougel``).

``PrefixIndex`` is exact (it never misses a pair). ROUGE-L F = 2*LCS/(|a|+|b|), and
LCS <= the multiset overlap m of the two token bags <= min(|a|, |b|). So F >= t needs
m >= t*(|a|+|b|)/2 >= t*|x|/(2-t) for x either side (the length bound forces
|b| >= t*|a|/(2-t)). Treat each token occurrence (token, k-th time) as an element and
order all elements by one fixed order, rarest first: two bags with overlap >= o share an
element within each one's first |x|-o+1 elements (prefix filtering, Chaudhuri et al.
2006; Xiao et al. 2008). Only prefixes are indexed and probed, so the common words
("the", "a", "of") are almost never touched. The order is rebuilt from the pool's own
token frequencies each time the pool doubles, which keeps prefixes rare as vocabulary
drifts (amortised O(1) per entry); any order is correct, a good one is fast.

``FullIndex`` keeps every element's postings for the top-k: a vectorised count of the
multiset overlap with every entry gives an upper bound on each entry's F, and only
entries whose bound can reach the k-th best score are scored exactly.

``LshIndex`` is datasketch's MinHash LSH over the same elements: approximate (recall
is measured in benchmarks/dedup.py), for comparison with the exact index.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Element = str | tuple[str, int]
_EPSILON = 1e-9
_REBUILD_MIN = 256
_DENSE_FACTOR = 16  # probe hits x this below the pool size: count them by sorting
_NO_ENTRIES: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
_NO_HITS: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)


def _unranked(entries: npt.NDArray[np.int32]) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """Indexes that cannot rank their candidates give each one hit."""
    return entries, np.ones(entries.size, dtype=np.int64)


def elements(code: str) -> list[tuple[str, int]]:
    """Token occurrences as (token, k): the k-th time the token appears."""
    seen: Counter[str] = Counter()
    out = []
    for char in code:
        seen[char] += 1
        out.append((char, seen[char]))
    return out


def sorted_unique(values: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """np.unique for short arrays, without its hashing overhead."""
    values.sort()
    if values.size < 2:
        return values
    keep = np.empty(values.size, dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def element_key(char: str, k: int) -> Element:
    return char if k == 1 else (char, k)


def _post(postings: dict[Element, array[int]], entry: int,
          occurrences: Iterable[tuple[str, int]]) -> None:
    """Append ``entry`` to the postings of each token occurrence."""
    for char, k in occurrences:
        key = element_key(char, k)
        bucket = postings.get(key)
        if bucket is None:
            postings[key] = array("i", [entry])
        else:
            bucket.append(entry)


def min_overlap(length: int, threshold: float) -> int:
    """Smallest multiset overlap any partner of a ``length``-token entry needs to reach F
    >= threshold (rounded down by a hair so float error can only widen the search)."""
    if threshold <= 0:
        return 1
    return max(1, math.ceil(threshold * length / (2 - threshold) - _EPSILON))


class CandidateIndex(Protocol):
    """Finds pool entries that may reach the threshold against a query."""

    def add(self, entry: int, code: str) -> None: ...

    def candidates(self, code: str) -> npt.NDArray[np.int32]:
        """Sorted, unique entry numbers."""
        ...

    def candidate_hits(self, code: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """``candidates`` and, for each, how many probes found it (more: likelier match)."""
        ...


class PrefixIndex:
    """Exact candidate index by prefix filtering over token occurrences."""

    def __init__(self, threshold: float, codes: Sequence[str]) -> None:
        self.threshold = threshold
        self._codes = codes  # the pool's list of entries, read on rebuild
        self._rank: dict[str, int] = {}
        self._postings: dict[Element, array[int]] = {}
        self._built_at = 0

    def _sorted_elements(self, code: str) -> list[tuple[str, int]]:
        rank = self._rank
        # Unranked tokens (new since the last rebuild) count as rarest: rank -1.
        return sorted(elements(code), key=lambda e: (rank.get(e[0], -1), e[0], e[1]))

    def _prefix(self, code: str) -> list[tuple[str, int]]:
        n = len(code)
        if n == 0:
            return []
        size = n - min_overlap(n, self.threshold) + 1
        return self._sorted_elements(code)[: max(1, min(n, size))]

    def add(self, entry: int, code: str) -> None:
        _post(self._postings, entry, self._prefix(code))
        if entry + 1 >= max(_REBUILD_MIN, 2 * self._built_at):
            self._rebuild(entry + 1)

    def _rebuild(self, count: int) -> None:
        frequency: Counter[str] = Counter()
        for code in self._codes[:count]:
            frequency.update(set(code))
        ordered = sorted(frequency.items(), key=lambda item: (item[1], item[0]))
        self._rank = {char: i for i, (char, _) in enumerate(ordered)}
        self._built_at = count
        postings: dict[Element, array[int]] = {}
        for entry, code in enumerate(self._codes[:count]):
            _post(postings, entry, self._prefix(code))
        self._postings = postings

    def _probe(self, code: str) -> list[npt.NDArray[np.int32]]:
        postings = self._postings
        # Copies: a live buffer view would stop the array from growing later.
        return [
            np.frombuffer(bucket, dtype=np.int32).copy()
            for char, k in self._prefix(code)
            if (bucket := postings.get(element_key(char, k)))
        ]

    def candidates(self, code: str) -> npt.NDArray[np.int32]:
        parts = self._probe(code)
        if not parts:
            return _NO_ENTRIES
        return sorted_unique(np.concatenate(parts))

    def candidate_hits(self, code: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        parts = self._probe(code)
        if not parts:
            return _NO_ENTRIES, _NO_HITS
        found = np.concatenate(parts)
        if found.size * _DENSE_FACTOR < len(self._codes):
            # Few hits in a large pool: sorting them beats a count array of pool size.
            entries, hits = np.unique(found, return_counts=True)
            return entries.astype(np.int32, copy=False), hits.astype(np.int64, copy=False)
        counts = np.bincount(found)
        entries = np.flatnonzero(counts).astype(np.int32)
        return entries, counts[entries]


class BruteIndex:
    """Every entry is a candidate: the baseline the other indexes are checked against."""

    def __init__(self, codes: Sequence[str]) -> None:
        self._codes = codes

    def add(self, entry: int, code: str) -> None:
        return None

    def candidates(self, code: str) -> npt.NDArray[np.int32]:
        return np.arange(len(self._codes), dtype=np.int32)

    def candidate_hits(self, code: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        return _unranked(self.candidates(code))


class LshIndex:
    """datasketch MinHash LSH over token occurrences (approximate)."""

    def __init__(self, threshold: float, num_perm: int = 128, seed: int = 1) -> None:
        from datasketch import MinHash, MinHashLSH

        # F >= t implies multiset Jaccard >= t/(2-t) (0.54 at 0.7); aim a little lower.
        jaccard = max(0.05, threshold / (2 - threshold) - 0.1) if threshold > 0 else 0.05
        self._minhash = MinHash
        self._lsh = MinHashLSH(threshold=jaccard, num_perm=num_perm)
        self._num_perm = num_perm
        self._seed = seed

    def _signature(self, code: str) -> object:
        sketch = self._minhash(num_perm=self._num_perm, seed=self._seed)
        sketch.update_batch(
            [f"{char}\x00{k}".encode("utf-8", "surrogatepass") for char, k in elements(code)]
        )
        return sketch

    def add(self, entry: int, code: str) -> None:
        if code:
            self._lsh.insert(entry, self._signature(code), check_duplication=False)

    def candidates(self, code: str) -> npt.NDArray[np.int32]:
        if not code:
            return _NO_ENTRIES
        found = np.array(self._lsh.query(self._signature(code)), dtype=np.int32)
        found.sort()
        return found

    def candidate_hits(self, code: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        return _unranked(self.candidates(code))


class FullIndex:
    """Postings of every token occurrence, for the exact top-k and the mean similarity."""

    def __init__(self) -> None:
        self._postings: dict[Element, array[int]] = {}
        self._lengths = array("i")

    def add(self, entry: int, code: str) -> None:
        _post(self._postings, entry, elements(code))
        self._lengths.append(len(code))

    def overlap(self, code: str) -> npt.NDArray[np.int64]:
        """Multiset token overlap of ``code`` with every entry (an upper bound on LCS)."""
        size = len(self._lengths)
        parts = []
        for char, k in elements(code):
            bucket = self._postings.get(element_key(char, k))
            if bucket:
                parts.append(np.frombuffer(bucket, dtype=np.int32).copy())
        if not parts:
            return np.zeros(size, dtype=np.int64)
        # Copies above: a live buffer view would stop the array from growing later.
        return np.bincount(np.concatenate(parts), minlength=size)

    def upper_bounds(self, code: str) -> npt.NDArray[np.float64]:
        """2*overlap/(|a|+|b|) >= F for every entry (0 where nothing is shared)."""
        overlap = self.overlap(code)
        lengths = np.frombuffer(self._lengths, dtype=np.int32).astype(np.float64)
        bounds: npt.NDArray[np.float64] = 2.0 * overlap / (len(code) + np.maximum(lengths, 1.0))
        return bounds
