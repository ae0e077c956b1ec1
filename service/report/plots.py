"""The report's charts as PNG bytes (matplotlib's Agg backend: no display, no network).

Each function takes the summary's numbers (never the run's files) so the page shows
exactly what summary.json says. Figures are closed as soon as they are rendered.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

_DPI = 100


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=_DPI)
    plt.close(fig)
    return buffer.getvalue()


def funnel(summary: Mapping[str, Any]) -> bytes:
    steps = summary["funnel"]
    reasons: Mapping[str, int] = summary["rejections"]["by_reason"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(2.8, 0.22 * len(reasons) + 1.2)))
    names = [s["step"] for s in steps][::-1]
    counts = [s["count"] for s in steps][::-1]
    left.barh(names, counts, color="#4c72b0")
    for y, c in enumerate(counts):
        left.text(c, y, f" {c:,}", va="center")
    left.set_title("Funnel")
    left.set_xlabel("count")
    items = list(reasons.items())[::-1]
    right.barh([k for k, _ in items] or ["(none)"], [v for _, v in items] or [0], color="#c44e52")
    right.set_title("Rejections by reason")
    right.set_xlabel("count")
    return _png(fig)


def overlap(summary: Mapping[str, Any]) -> bytes:
    data = summary["overlap"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=False)
    for ax, key, title in ((axes[0], "seed", "to the most similar seed"),
                           (axes[1], "earlier", "to the most similar earlier instruction")):
        hist = data[key]
        edges = hist["bin_edges"]
        ax.bar(edges[:-1], hist["counts"], width=edges[1] - edges[0], align="edge",
               color="#55a868", edgecolor="white")
        ax.axvline(summary["run"]["threshold"], color="#c44e52", linestyle="--",
                   label="threshold")
        ax.set_xlim(0, 1)
        ax.set_title(f"ROUGE-L {title}")
        ax.set_xlabel("ROUGE-L F")
        ax.set_ylabel("instructions")
        ax.legend()
    return _png(fig)


def _bucketed(by_words: Mapping[str, int], bins: int = 30) -> tuple[list[float], list[int], float]:
    values = {int(k): v for k, v in by_words.items()}
    if not values:
        return [], [], 1.0
    top = max(values)
    width = max(1.0, (top + 1) / bins)
    counts = [0] * bins
    for k, v in values.items():
        counts[min(bins - 1, int(k / width))] += v
    return [i * width for i in range(bins)], counts, width


def lengths(summary: Mapping[str, Any]) -> bytes:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key in zip(axes, ("instruction", "input", "output"), strict=True):
        dist = summary["lengths"][key]
        lefts, counts, width = _bucketed(dist["by_words"])
        ax.bar(lefts, counts, width=width, align="edge", color="#8172b2", edgecolor="white")
        ax.set_title(f"{key} length (n={dist['count']:,})")
        ax.set_xlabel("words")
    axes[0].set_ylabel("count")
    return _png(fig)


def verbs(summary: Mapping[str, Any], top_verbs: int = 15) -> bytes:
    data = summary["verbs"]
    verb_counts: Sequence[Sequence[Any]] = data["top_verbs"][:top_verbs]
    pairs: Sequence[Sequence[Any]] = data["top_pairs"][:top_verbs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.28 * max(len(verb_counts), len(pairs), 4) + 1.4))
    left.barh([str(v) for v, _ in verb_counts][::-1] or ["(none)"],
              [n for _, n in verb_counts][::-1] or [0], color="#dd8452")
    left.set_title("Leading verbs")
    right.barh([f"{v} → {o}" for v, o, _ in pairs][::-1] or ["(none)"],
               [n for _, _, n in pairs][::-1] or [0], color="#937860")
    right.set_title("Verb → object")
    for ax in (left, right):
        ax.set_xlabel("tasks")
    return _png(fig)


def throughput(summary: Mapping[str, Any]) -> bytes | None:
    points = summary["throughput"]["points"]
    if not points:
        return None
    t = [p["elapsed_s"] / 60 for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.0))
    axes[0].plot(t, [p["tasks_per_min"] for p in points], color="#4c72b0")
    axes[0].set_title("finished tasks / min")
    axes[1].plot(t, [p["requests_per_s"] for p in points], color="#55a868")
    axes[1].set_title("requests / s")
    axes[2].plot(t, [p["rate_limited"] for p in points], label="429s", color="#c44e52")
    axes[2].plot(t, [p["retries"] for p in points], label="retries", color="#8172b2")
    axes[2].set_title("429s and retries per interval")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("minutes into the run")
    return _png(fig)


def tokens(summary: Mapping[str, Any]) -> bytes | None:
    """Prompt and completion tokens by model, and by stage when the run recorded it."""
    groups = [(title, data) for title, data in (("by model", summary["usage"]["by_model"]),
                                                ("by stage", summary["usage"]["by_stage"]))
              if isinstance(data, Mapping) and data]
    if not groups:
        return None
    rows = max(len(data) for _, data in groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 0.5 * rows + 1.6),
                             squeeze=False)
    for ax, (title, data) in zip(axes[0], groups, strict=True):
        names = list(data)
        prompt = [float(data[m].get("prompt", 0) or 0) for m in names]
        completion = [float(data[m].get("completion", 0) or 0) for m in names]
        ax.barh(names, prompt, label="prompt", color="#4c72b0")
        ax.barh(names, completion, left=prompt, label="completion", color="#dd8452")
        ax.set_xlabel("tokens")
        ax.set_title(f"Tokens {title}")
        ax.legend()
    return _png(fig)
