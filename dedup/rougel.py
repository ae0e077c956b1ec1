"""ROUGE-L F-measure with ``rouge-score``'s exact float formula over a fast LCS.

Tokens are interned as single code points, so a token sequence becomes a short ``str``
and rapidfuzz's bit-parallel ``LCSseq`` computes the LCS length in ~0.1 us. The
F-measure is then computed exactly as ``rouge_score.rouge_scorer._score_lcs`` and
``rouge_score.scoring.fmeasure`` do (precision = lcs/len(prediction), recall =
lcs/len(target), 2*p*r/(p+r)); this is symmetric to the bit because doubling is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import LCSseq

_SURROGATES = 0xD800
_SURROGATE_SPAN = 0x800
MAX_VOCABULARY = 0x110000 - _SURROGATE_SPAN


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two encoded token strings."""
    return int(LCSseq.similarity(a, b))


def f_from_lcs(lcs: int, target_len: int, prediction_len: int) -> float:
    """``rouge-score``'s F-measure from an LCS length, bit for bit."""
    if target_len == 0 or prediction_len == 0:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l(target: str, prediction: str) -> float:
    """ROUGE-L F of two encoded token strings (see :class:`Vocabulary`)."""
    if not target or not prediction:
        return 0.0
    return f_from_lcs(lcs_length(target, prediction), len(target), len(prediction))


def exceeds(score: float, threshold: float, inclusive: bool) -> bool:
    """The reference rejects when F > threshold; the paper's text says >=."""
    return score >= threshold if inclusive else score > threshold


class Vocabulary:
    """Interns tokens as code points (skipping the surrogate block)."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def encode(self, tokens: Sequence[str]) -> str:
        ids = self._ids
        chars = []
        for token in tokens:
            char = ids.get(token)
            if char is None:
                code = len(ids)
                if code >= MAX_VOCABULARY:
                    raise OverflowError("vocabulary exceeds the code point space")
                char = chr(code + _SURROGATE_SPAN if code >= _SURROGATES else code)
                ids[token] = char
            chars.append(char)
        return "".join(chars)
