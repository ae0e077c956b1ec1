"""Tokenizers for ROUGE-L.

``rouge_tokens`` reproduces ``rouge_score.tokenize.tokenize(text, stemmer=None)`` exactly
(lower-case, every run of characters outside [a-z0-9] becomes a space, split), so scores
and decisions agree with ``rouge-score`` to the bit. It drops every character outside
[a-z0-9], so any non-Latin text has no tokens at all and scores 0 against everything;
``unicode_tokens`` keeps words of any script and splits CJK and Thai text into single
characters, so near-duplicates in Chinese, Russian or Arabic are caught too.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable

from dedup import TOKENIZERS

Tokenizer = Callable[[str], list[str]]

# Same patterns as rouge_score.tokenize (NON_ALPHANUM_RE, SPACES_RE, VALID_TOKEN_RE).
_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID = re.compile(r"^[a-z0-9]+$")

# Scripts written without spaces between words: one token per character.
_CHAR_SCRIPTS = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f"  # Bopomofo
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0002fa1f"  # CJK extensions B-F
)


@functools.cache
def _unicode_pattern() -> re.Pattern[str]:
    """Letters, digits and combining marks (Devanagari vowel signs, Arabic harakat, ...)
    make words; built once from the Unicode database, on first use."""
    marks: list[str] = []
    start = -1
    for code in range(0x110000 + 1):
        is_mark = code < 0x110000 and unicodedata.category(chr(code)).startswith("M")
        if is_mark and start < 0:
            start = code
        elif not is_mark and start >= 0:
            marks.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start = -1
    mark_class = "".join(marks)
    return re.compile(rf"[{_CHAR_SCRIPTS}]|(?:[^\W_{_CHAR_SCRIPTS}]|[{mark_class}])+")



def rouge_tokens(text: str) -> list[str]:
    """``rouge_score`` tokenization without stemming, step for step."""
    lowered = _NON_ALPHANUM.sub(" ", text.lower())
    return [token for token in _SPACES.split(lowered) if _VALID.match(token)]


def unicode_tokens(text: str) -> list[str]:
    """Words of any script (NFKC, case-folded); CJK/Thai-like scripts one per character.
    Combining marks stay attached to their word."""
    normalized = unicodedata.normalize("NFKC", text).casefold()
    return _unicode_pattern().findall(normalized)


def get_tokenizer(name: str) -> Tokenizer:
    if name == "rouge":
        return rouge_tokens
    if name == "unicode":
        return unicode_tokens
    raise ValueError(f"unknown tokenizer {name!r}: expected one of {', '.join(TOKENIZERS)}")
