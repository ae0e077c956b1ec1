"""An index of an evaluation set's n-grams on normalised tokens, checked in batches.

Why this shape: the check runs over every instruction, input and output of runs of
hundreds of thousands of tasks, so it must not cost a Python set lookup per window.
Tokens become integer ids from the evaluation set's own vocabulary (a token the set never
uses gets id 0, and no window containing it can match); a whole batch of texts is joined
into one array and every window's polynomial hash is computed with numpy at once, looked
up in a sorted array, and only the few hits are confirmed token by token.

Normalisation follows GPT-3's and lm-evaluation-harness's overlap checks: case-folded,
punctuation dropped, split into word tokens. ``n`` is 13 by default; an evaluation text
shorter than ``n`` tokens but at least ``min_tokens`` long is indexed whole (GPT-3 used
shorter n-grams for short benchmarks the same way), shorter ones are counted as unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt

DEFAULT_N = 13
DEFAULT_MIN_TOKENS = 8
_TOKEN = re.compile(r"[^\W_]+")
_MULT = np.uint64(0x9E3779B97F4A7C15)
_MASK = (1 << 64) - 1
# Joins a batch's texts: a token no text normalises to by accident; id 0 is "unknown".
_SEPARATOR = "zq0textbreak0qz"
_SEPARATOR_ID = 1
_BITMAP_SIZE = 1 << 20
_BITMAP_MASK = np.uint64(_BITMAP_SIZE - 1)


def normalise_tokens(text: str) -> list[str]:
    """Case-folded word tokens, punctuation and underscores dropped."""
    return _TOKEN.findall(text.casefold())


def _hash_ids(ids: Sequence[int]) -> int:
    """The same polynomial hash as :func:`_window_hashes`, for one gram."""
    h = 0
    mult = int(_MULT)
    for token in ids:
        h = (h * mult + token) & _MASK
    return h


def _window_hashes(ids: npt.NDArray[np.uint64], length: int) -> npt.NDArray[np.uint64]:
    count = ids.size - length + 1
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(length):
            h = h * _MULT + ids[j: j + count]
    return h


@dataclass(frozen=True)
class Match:
    """The first evaluation n-gram found in a text: which item and field, and the gram."""

    item_id: str
    field: str
    ngram: str


class NgramIndex:
    """Add evaluation texts, then :meth:`find` matches for batches of generated texts."""

    def __init__(self, n: int = DEFAULT_N, min_tokens: int = DEFAULT_MIN_TOKENS) -> None:
        if not 1 <= min_tokens <= n:
            raise ValueError(f"need 1 <= min_tokens <= n, got {min_tokens}, {n}")
        self.n = n
        self.min_tokens = min_tokens
        self._vocab: dict[str, int] = {_SEPARATOR: _SEPARATOR_ID}
        self._words: list[str] = ["", _SEPARATOR]
        # length -> hash -> [(gram ids, item id, field)]
        self._grams: dict[int, dict[int, list[tuple[tuple[int, ...], str, str]]]] = {}
        self._sorted: dict[int, npt.NDArray[np.uint64]] = {}
        self._bitmaps: dict[int, npt.NDArray[np.bool_]] = {}
        self.texts = 0
        self.too_short = 0
        self.items: set[str] = set()

    @property
    def lengths(self) -> list[int]:
        """The gram lengths indexed (n, and shorter whole texts)."""
        return sorted(self._grams)

    def __len__(self) -> int:
        return sum(len(by_hash) for by_hash in self._grams.values())

    def add(self, item_id: str, field: str, text: str) -> None:
        tokens = normalise_tokens(text)
        self.texts += 1
        self.items.add(item_id)
        if len(tokens) < self.min_tokens:
            self.too_short += 1
            return
        ids = []
        for token in tokens:
            token_id = self._vocab.get(token)
            if token_id is None:
                token_id = self._vocab[token] = len(self._words)
                self._words.append(token)
            ids.append(token_id)
        length = min(self.n, len(ids))
        by_hash = self._grams.setdefault(length, {})
        for start in range(len(ids) - length + 1):
            gram = tuple(ids[start: start + length])
            entries = by_hash.setdefault(_hash_ids(gram), [])
            if all(existing != gram for existing, _, _ in entries):
                entries.append((gram, item_id, field))
        self._sorted.clear()
        self._bitmaps.clear()

    def find(self, texts: Sequence[str]) -> list[Match | None]:
        """For each text, the match at its earliest position (None if clean)."""
        if not texts or not self._grams:
            return [None] * len(texts)
        if not self._sorted:
            for length, by_hash in self._grams.items():
                known = np.fromiter(by_hash, dtype=np.uint64, count=len(by_hash))
                self._sorted[length] = np.sort(known)
                bitmap = np.zeros(_BITMAP_SIZE, dtype=bool)
                bitmap[known & _BITMAP_MASK] = True
                self._bitmaps[length] = bitmap
        # One regex pass and one C-level lookup pass for the whole batch: the texts are
        # joined with a separator token (id 1), unknown tokens get id 0.
        joined = f" {_SEPARATOR} ".join(texts) + f" {_SEPARATOR}"
        tokens = normalise_tokens(joined)
        flat = np.fromiter(map(self._vocab.get, tokens, repeat(0)), dtype=np.uint64,
                           count=len(tokens))
        separators = np.flatnonzero(flat == _SEPARATOR_ID)
        bad = np.concatenate(([0], np.cumsum(flat <= _SEPARATOR_ID)))
        best: dict[int, tuple[int, Match]] = {}
        for length, table in self._sorted.items():
            if flat.size < length:
                continue
            hashes = _window_hashes(flat, length)
            valid = (bad[length:] - bad[:-length]) == 0
            # A bitmap of the hashes' low bits first (one gather per window); the binary
            # search only for the few windows that pass it.
            maybe = np.flatnonzero(valid & self._bitmaps[length][hashes & _BITMAP_MASK])
            where = np.searchsorted(table, hashes[maybe])
            where[where >= table.size] = 0
            hits = maybe[table[where] == hashes[maybe]]
            owners = np.searchsorted(separators, hits, side="right")
            for pos, owner in zip(hits.tolist(), owners.tolist(), strict=True):
                if owner in best and best[owner][0] <= pos:
                    continue
                gram = tuple(int(t) for t in flat[pos: pos + length])
                for stored, item_id, field in self._grams[length][int(hashes[pos])]:
                    if stored == gram:
                        words = " ".join(self._words[t] for t in gram)
                        best[owner] = (pos, Match(item_id, field, words))
                        break
        return [best[i][1] if i in best else None for i in range(len(texts))]
