"""All near-duplicate pairs in a collection (what ``selfinstruct verify`` checks)."""

from __future__ import annotations

from collections.abc import Sequence

from dedup.pool import Pool


def near_duplicate_pairs(
    texts: Sequence[str],
    threshold: float = 0.7,
    inclusive: bool = False,
    tokenizer: str = "rouge",
) -> list[tuple[int, int, float]]:
    """Every pair (i, j, F) with i < j whose ROUGE-L F exceeds the threshold, exactly
    (the prefix index never misses a pair), in O(pairs found + index work)."""
    pool = Pool(threshold, inclusive=inclusive, tokenizer=tokenizer, index="exact", top_k=0)
    pairs: list[tuple[int, int, float]] = []
    for j, text in enumerate(texts):
        code = pool.encode(text)
        pairs.extend((i, j, score) for i, score in pool.matches(code))
        pool.add_encoded(text, code)  # every text joins the pool, duplicate or not
    return pairs
