"""A synthetic instruction corpus for benchmarks: Zipf-distributed vocabulary seeded with
the paper's instructions' words, sentence templates of realistic length (5-40 tokens),
and near-duplicate families (edited copies of earlier instructions)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
_OPENERS = ["Write", "Generate", "Explain", "Give", "List", "Describe", "Classify", "Create",
            "Summarize", "Find", "Suggest", "Rewrite", "Identify", "Tell me", "Compose"]


def paper_instructions() -> list[str]:
    texts: list[str] = []
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        path = SHARED / name
        if path.exists():
            with open(path, encoding="utf-8") as handle:
                texts += [json.loads(line)["instruction"] for line in handle if line.strip()]
    return texts


def synthetic_corpus(count: int, seed: int = 0, duplicate_share: float = 0.2) -> list[str]:
    rng = random.Random(seed)
    words: list[str] = []
    for text in paper_instructions():
        words += text.lower().replace(".", " ").replace(",", " ").split()
    common = sorted(set(words))
    rng.shuffle(common)
    vocabulary = common + [f"term{i}" for i in range(60_000)]
    # Zipf-like weights: a few very common words, a long tail.
    weights = [1.0 / (rank + 1) ** 1.07 for rank in range(len(vocabulary))]
    cumulative = list(itertools.accumulate(weights))

    def draw(k: int) -> list[str]:
        return rng.choices(vocabulary, cum_weights=cumulative, k=k)

    out: list[str] = []
    while len(out) < count:
        if out and rng.random() < duplicate_share:
            tokens = rng.choice(out[-5000:]).split()
            for _ in range(rng.randint(1, 3)):
                position = rng.randrange(len(tokens))
                if rng.random() < 0.5:
                    tokens[position] = draw(1)[0]
                else:
                    tokens.insert(position, draw(1)[0])
            out.append(" ".join(tokens))
            continue
        length = max(4, min(40, int(rng.lognormvariate(2.6, 0.45))))
        body = draw(length - 1)
        out.append(" ".join([rng.choice(_OPENERS), *body]) + ".")
    return out
