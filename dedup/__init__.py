"""Near-duplicate detection with exact rouge-score ROUGE-L semantics; no I/O, no asyncio.

The choices a caller may name are listed here once (config, the CLI and the pool all
read them from this light module, which imports nothing heavy).
"""

from __future__ import annotations

from typing import Literal, get_args

IndexName = Literal["exact", "lsh64", "lsh128", "brute"]
INDEXES: tuple[IndexName, ...] = get_args(IndexName)
TokenizerName = Literal["rouge", "unicode"]
TOKENIZERS: tuple[TokenizerName, ...] = get_args(TokenizerName)
