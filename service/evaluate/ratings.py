"""`selfinstruct eval-summary RATINGS... --mapping FILE`: ratings into the paper's stacked bar
chart (share of A/B/C/D per model) and a table.

A ratings file is what the rating page downloads: one JSON object whose ``ratings`` list
has one ``{"item", "rating"}`` a line. It is checked against the sheet's key: a file from
another sheet, an item the sheet does not have, a rating off the scale or an item rated
twice is an error naming the file, the line and the field. Several files (several raters)
add up.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.errors import InputError
from service.evaluate.sheet import SCALE

LEVELS = tuple(level for level, _ in SCALE)
MAX_RATINGS_BYTES = 64 * 1024 * 1024
_COLOURS = {"A": "#2e7d32", "B": "#9ccc65", "C": "#ffb74d", "D": "#e53935"}


@dataclass(frozen=True)
class Key:
    path: Path
    sheet_id: str
    models: list[str]
    items: dict[str, str]  # item id -> model


def read_key(path: Path) -> Key:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), None, None, "no such mapping file") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(str(path), None, None, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sheet_id"), str):
        raise InputError(str(path), None, "sheet_id", "missing: not a rating sheet's key")
    items = data.get("items")
    models = data.get("models")
    if not isinstance(items, dict) or not isinstance(models, list):
        raise InputError(str(path), None, "items", "missing: not a rating sheet's key")
    mapping = {}
    for rid, entry in items.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise InputError(str(path), None, f"items.{rid}.model", "missing")
        mapping[rid] = entry["model"]
    return Key(path, data["sheet_id"], [str(m) for m in models], mapping)


def _line_of(lines: Sequence[str], *needles: str) -> int | None:
    for number, line in enumerate(lines, start=1):
        if all(n in line for n in needles):
            return number
    return None


def read_ratings(path: Path, key: Key) -> tuple[str, dict[str, str]]:
    """(rater, item -> level) of one downloaded ratings file, checked against ``key``."""
    try:
        if path.stat().st_size > MAX_RATINGS_BYTES:
            raise InputError(str(path), None, None, f"larger than {MAX_RATINGS_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), None, None, "no such file") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(str(path), getattr(exc, "lineno", None), None,
                         f"not valid JSON ({exc})") from None
    lines = raw.decode("utf-8", "replace").splitlines()
    if not isinstance(data, dict):
        raise InputError(str(path), 1, None, "expected a JSON object (a rating page's download)")
    sheet_id = data.get("sheet_id")
    if not isinstance(sheet_id, str):
        raise InputError(str(path), _line_of(lines, '"sheet_id"'), "sheet_id",
                         "missing: not a rating page's download")
    if sheet_id != key.sheet_id:
        raise InputError(str(path), _line_of(lines, '"sheet_id"'), "sheet_id",
                         f"ratings from another sheet ({sheet_id}); {key.path} is the mapping of "
                         f"sheet {key.sheet_id}")
    ratings = data.get("ratings")
    if not isinstance(ratings, list):
        raise InputError(str(path), _line_of(lines, '"ratings"'), "ratings", "expected a list")
    result: dict[str, str] = {}
    for i, entry in enumerate(ratings):
        if not isinstance(entry, dict):
            raise InputError(str(path), None, f"ratings[{i}]", "expected an object")
        item, level = entry.get("item"), entry.get("rating")
        where = _line_of(lines, f'"{item}"') if isinstance(item, str) else None
        if not isinstance(item, str) or item not in key.items:
            raise InputError(str(path), where, f"ratings[{i}].item",
                             f"{item!r} is not an item of sheet {key.sheet_id}")
        if level not in LEVELS:
            raise InputError(str(path), where, f"ratings[{i}].rating",
                             f"{level!r} is not one of {', '.join(LEVELS)}")
        if item in result:
            raise InputError(str(path), where, f"ratings[{i}].item", f"{item} rated twice")
        result[item] = str(level)
    rater = data.get("rater")
    return (rater if isinstance(rater, str) else ""), result


def summarize_ratings(files: Sequence[Path], key: Key) -> dict[str, Any]:
    counts: dict[str, Counter[str]] = {m: Counter() for m in key.models}
    raters = []
    for path in files:
        rater, ratings = read_ratings(path, key)
        raters.append({"file": str(path), "rater": rater, "ratings": len(ratings)})
        for item, level in ratings.items():
            counts.setdefault(key.items[item], Counter())[level] += 1
    per_item = Counter(key.items.values())
    models: dict[str, Any] = {}
    for model, c in counts.items():
        total = sum(c.values())
        models[model] = {
            **{level: c[level] for level in LEVELS},
            "rated": total,
            "items": per_item.get(model, 0),
            "shares": {level: (round(c[level] / total, 4) if total else None) for level in LEVELS},
        }
    return {"sheet_id": key.sheet_id, "scale": [{"level": lv, "meaning": m} for lv, m in SCALE],
            "raters": raters, "models": models}


def table(summary: dict[str, Any]) -> str:
    """A Markdown table: counts and shares per model."""
    head = "| model | " + " | ".join(LEVELS) + " | rated | A+B share |"
    rows = [head, "|" + "---|" * (len(LEVELS) + 3)]
    for model, m in summary["models"].items():
        ab = (m["A"] + m["B"]) / m["rated"] if m["rated"] else None
        cells = [f"{m[level]} ({m['shares'][level]:.0%})" if m["rated"] else "0"
                 for level in LEVELS]
        rows.append(f"| {model} | " + " | ".join(cells) + f" | {m['rated']}/{m['items']} | "
                    + (f"{ab:.0%}" if ab is not None else "–") + " |")
    return "\n".join(rows)


def chart(summary: dict[str, Any]) -> bytes:
    """Horizontal stacked bars of each model's A/B/C/D shares (the paper's Figure 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["models"].items())
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(models) + 1.6))
    left = [0.0] * len(models)
    names = [name for name, _ in models]
    for level in LEVELS:
        shares = [float(m["shares"][level] or 0.0) for _, m in models]
        ax.barh(names, shares, left=left, color=_COLOURS[level], label=level, edgecolor="white")
        for y, (x, s) in enumerate(zip(left, shares, strict=True)):
            if s >= 0.06:
                ax.text(x + s / 2, y, f"{s:.0%}", ha="center", va="center", fontsize=8)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of rated responses")
    ax.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(models) < 4 else -0.1))
    ax.set_title("Human ratings (A best, D worst)")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
