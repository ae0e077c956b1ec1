"""`selfinstruct eval compare SRC...`: several models' responses side by side, and each
model's ROUGE-L against the reference outputs."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from service.evaluate.predictions import ModelResponses
from service.evaluate.runner import make_scorer, rouge_l


def model_table(models: Sequence[ModelResponses]) -> list[dict[str, Any]]:
    """Per model: responses, empty responses, and mean ROUGE-L where a reference exists."""
    scorer = make_scorer()
    rows = []
    for m in models:
        scores = [rouge_l(scorer, r.target, r.response)
                  for r in m.responses.values() if r.target.strip()]
        rows.append({
            "model": m.model, "source": m.source, "responses": len(m.responses),
            "empty": sum(1 for r in m.responses.values() if not r.response.strip()),
            "rouge_l_mean": round(sum(scores) / len(scores), 4) if scores else None,
            "scored": len(scores),
        })
    return rows


def side_by_side(models: Sequence[ModelResponses], *, ids: Sequence[str] = (),
                 limit: int = 5, width: int = 100) -> str:
    """Text blocks, one per item: the task, the reference, then every model's response."""
    keys: list[tuple[str, int]] = []
    for m in models:
        for key in m.responses:
            if key not in keys and (not ids or key[0] in ids):
                keys.append(key)
    if not ids:
        keys = keys[:limit]
    scorer = make_scorer()
    out: list[str] = []
    for task_id, instance in keys:
        first = next(m.responses[(task_id, instance)] for m in models
                     if (task_id, instance) in m.responses)
        out.append(f"=== {task_id}" + (f" #{instance}" if instance else "") + " ===")
        out.append(textwrap.fill("instruction: " + first.instruction, width))
        if first.input.strip():
            out.append(textwrap.shorten("input: " + first.input, width * 4))
        if first.target.strip():
            out.append(textwrap.shorten("reference: " + first.target, width * 4))
        for m in models:
            r = m.responses.get((task_id, instance))
            if r is None:
                out.append(f"--- {m.model}: (no response)")
                continue
            score = (f" (ROUGE-L {rouge_l(scorer, r.target, r.response):.3f})"
                     if r.target.strip() else "")
            out.append(f"--- {m.model}{score}:")
            out.append(textwrap.indent(textwrap.shorten(r.response or "(empty)", width * 6), "    "))
        out.append("")
    return "\n".join(out)
