"""The report as one self-contained HTML page and the summary.json beside it.

Self-contained: every chart is an embedded PNG (data: URI), the style is inline, there is
no script and nothing is fetched. Every text that came from a model or a file is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.report import plots
from service.report.summary import ReportOptions, summarize
from service.rundir.store import atomic_file

REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
DEFAULT_OUT = "report"

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:left;vertical-align:top}th{background:#f5f5f5}td.n{text-align:right;
font-variant-numeric:tabular-nums}img{max-width:100%;border:1px solid #eee}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;border-radius:6px;
padding:.6rem 1rem;min-width:9rem}.card b{display:block;font-size:1.4rem}
.note{color:#666;font-size:.9rem}.ex{max-width:40rem;font-size:.9rem;color:#444}
"""


def render_plots(summary: Mapping[str, Any]) -> dict[str, bytes]:
    """Chart name -> PNG bytes (charts without data are left out)."""
    charts: dict[str, bytes | None] = {
        "funnel": plots.funnel(summary),
        "overlap": plots.overlap(summary),
        "lengths": plots.lengths(summary),
        "verbs": plots.verbs(summary),
        "throughput": plots.throughput(summary),
        "tokens": plots.tokens(summary),
    }
    return {name: png for name, png in charts.items() if png is not None}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value if value is not None else "–")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return _e(value)


def decontamination_sentence(last: Mapping[str, Any], rejected: int) -> str:
    """What decontamination.json says, in words (the page and the card share it)."""
    against = ", ".join(f"{Path(str(a.get('path'))).name} ({a.get('items')} items, sha256 "
                        f"{str(a.get('sha256'))[:12]})" for a in last.get("against", [])
                        if isinstance(a, dict))
    if last.get("mode") == "generate":
        return (f"Every task was checked as it was made ({last.get('n')}-grams of normalised "
                f"tokens) against {against}: {rejected:,} rejected for contamination.")
    return (f"Last check: {last.get('checked', 0):,} tasks against {against} with "
            f"{last.get('n')}-grams of normalised tokens: {last.get('contaminated_tasks', 0):,} "
            f"contaminated, {last.get('dropped', 0):,} dropped.")


def _obj_get(data: Mapping[str, Any], key: str, field: str) -> Any:
    entry = data.get(key)
    return entry.get(field) if isinstance(entry, dict) else None


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share:.1%}"


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{_num(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: Mapping[str, Any], charts: Mapping[str, bytes]) -> str:
    run, counts, tasks = summary["run"], summary["counts"], summary["tasks"]
    rej, lengths, usage = summary["rejections"], summary["lengths"], summary["usage"]
    tp, decon, ov = summary["throughput"], summary["decontamination"], summary["overlap"]
    parts: list[str] = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>selfinstruct report: {_e(Path(run['path']).name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Self-Instruct run report: <code>{_e(Path(run['path']).name)}</code></h1>",
        f"<p class='note'>{_e(run['path'])} · status {_e(run['status'])} · "
        f"selfinstruct {_e(run['version'])} · "
        f"threshold {_e(run['threshold'])} ({_e(run['tokenizer'])} tokens) · "
        f"models {_e(', '.join(run['models']) or '–')}</p>",
        "<div class='cards'>",
    ]
    for label, value in (("finished tasks", counts["tasks"]), ("instances", counts["instances"]),
                         ("admitted instructions", counts["instructions_admitted"]),
                         ("rejections", counts["rejected"]), ("seed tasks", counts["seeds"]),
                         ("classification share", _pct(tasks["classification_share"])),
                         ("empty-input share", _pct(tasks["empty_input_share"])),
                         ("cost (USD)", usage["cost_usd"])):
        parts.append(f"<div class='card'>{_e(label)}<b>{_num(value)}</b></div>")
    parts.append("</div>")

    parts.append("<h2>Funnel</h2>")
    parts.append(_img(charts.get("funnel"), "funnel and rejections by reason"))
    parts.append(_table(["step", "count", "lost next", "to"],
                        [[s["step"], s["count"], s["lost"], s["lost_to"]] for s in summary["funnel"]],
                        {1, 2}))
    rows = [[stage, reason, n] for stage, reasons in rej["by_stage_reason"].items()
            for reason, n in reasons.items()]
    parts.append("<h3>Rejections by stage and reason</h3>")
    parts.append(_table(["stage", "reason", "count"], rows, {2}))

    parts.append("<h2>Overlap with seeds and earlier instructions (ROUGE-L)</h2>")
    parts.append(f"<p class='note'>{ov['sampled']:,} of {ov['instructions']:,} admitted "
                 "instructions, evenly spaced; each against every seed and every instruction "
                 "admitted before it (exact ROUGE-L, the run's tokenizer).</p>")
    parts.append(_img(charts.get("overlap"), "ROUGE-L overlap histograms"))
    parts.append(_table(["against", "instructions", "mean", "max"],
                        [["most similar seed", ov["seed"]["count"], ov["seed"]["mean"], ov["seed"]["max"]],
                         ["most similar earlier instruction", ov["earlier"]["count"],
                          ov["earlier"]["mean"], ov["earlier"]["max"]]], {1, 2, 3}))

    parts.append("<h2>Lengths</h2>")
    parts.append(_img(charts.get("lengths"), "length distributions"))
    parts.append(_table(["text", "count", "mean words", "median", "p90", "max"],
                        [[k, lengths[k]["count"], lengths[k]["mean"], lengths[k]["p50"],
                          lengths[k]["p90"], lengths[k]["max"]]
                         for k in ("instruction", "input", "output")], {1, 2, 3, 4, 5}))
    parts.append(_table(["tasks", "classification", "instances", "empty inputs",
                         "tasks with only empty inputs"],
                        [[counts["tasks"], tasks["classification"], tasks["instances"],
                          tasks["empty_input_instances"], tasks["tasks_all_inputs_empty"]]],
                        {0, 1, 2, 3, 4}))

    verbs = summary["verbs"]
    parts.append("<h2>What the tasks ask for</h2>")
    parts.append(f"<p class='note'>Leading verb and its object by a light heuristic (no parser): "
                 f"{verbs['tasks_with_verb']:,} of {counts['tasks']:,} tasks start with a "
                 f"recognisable imperative; {verbs['distinct_verbs']:,} distinct verbs.</p>")
    parts.append(_img(charts.get("verbs"), "leading verbs and verb-object pairs"))

    parts.append("<h2>Throughput</h2>")
    if charts.get("throughput"):
        parts.append(_img(charts.get("throughput"), "throughput over time"))
    else:
        parts.append("<p class='note'>No timeline.jsonl in this run directory (the run "
                     "recorded no timeline); overall rate only.</p>")
    parts.append(_table(["elapsed (s)", "finished tasks / min overall"],
                        [[tp["elapsed_s"], tp["tasks_per_min_overall"]]], {0, 1}))

    parts.append("<h2>Tokens and cost</h2>")
    parts.append(_img(charts.get("tokens"), "tokens by model and by stage"))
    model_rows = [[m, d.get("requests"), d.get("prompt"), d.get("completion"), d.get("cost_usd")]
                  for m, d in usage["by_model"].items() if isinstance(d, dict)]
    parts.append(_table(["model", "requests", "prompt tokens", "completion tokens", "cost (USD)"],
                        model_rows, {1, 2, 3, 4}))
    by_stage = usage["by_stage"] if isinstance(usage["by_stage"], dict) else {}
    parts.append(_table(
        ["stage", "model", "requests", "prompt tokens", "cached prompt tokens",
         "completion tokens"],
        [[stage, model, _obj_get(by_stage, stage, "requests"), _obj_get(by_stage, stage, "prompt"),
          _obj_get(by_stage, stage, "cached"), _obj_get(by_stage, stage, "completion")]
         for stage, model in usage["stage_models"].items()], {2, 3, 4, 5}))

    parts.append("<h2>Slowest and most rejected</h2>")
    latency = usage["latency_s"] if isinstance(usage["latency_s"], dict) else {}
    parts.append(_table(["requests", "latency p50 (s)", "p90", "p99", "max", "retries", "429s"],
                        [[latency.get("count"), latency.get("p50"), latency.get("p90"),
                          latency.get("p99"), latency.get("max"), usage["retries_total"],
                          usage["rate_limited"]]], {0, 1, 2, 3, 4, 5, 6}))
    if tp["calls_by_stage"]:
        per_call = tp["seconds_per_call_by_stage"]
        parts.append(_table(["stage", "calls", "failed calls", "seconds per call (mean)"],
                            [[stage, n, tp["failed_calls_by_stage"].get(stage, 0),
                              per_call.get(stage)]
                             for stage, n in sorted(tp["calls_by_stage"].items(),
                                                    key=lambda kv: -float(per_call.get(kv[0]) or 0))],
                            {1, 2, 3}))
    total_rej = max(1, counts["rejected"])
    parts.append(_table(["reason", "count", "share of rejections", "example"],
                        [[r, n, round(n / total_rej, 3), rej["examples"].get(r, "")]
                         for r, n in rej["by_reason"].items()], {1, 2}))

    parts.append("<h2>Decontamination</h2>")
    last = decon["last_check"]
    if last:
        parts.append(f"<p>{_e(decontamination_sentence(last, decon['rejected_contamination']))}</p>")
    else:
        parts.append("<p class='note'>No decontamination check recorded "
                     "(<code>selfinstruct decontaminate RUN_DIR</code>).</p>")
    parts.append(f"<p>Rejected for contamination: {decon['rejected_contamination']:,} "
                 f"(matching {decon['matched_eval_items']:,} evaluation items).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _write_atomic(path: Path, payload: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(payload)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    summary: Path
    data: dict[str, Any]


def build_report(run_dir: Path, out: Path | None = None,
                 options: ReportOptions | None = None) -> ReportFiles:
    """Write report.html and summary.json into ``out`` (default RUN_DIR/report)."""
    summary = summarize(run_dir, options)
    out_dir = Path(out) if out is not None else Path(summary["run"]["path"]) / DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = render_plots(summary)
    html_path, summary_path = out_dir / REPORT_HTML, out_dir / SUMMARY_JSON
    _write_atomic(summary_path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    _write_atomic(html_path, render_html(summary, charts).encode("utf-8"))
    return ReportFiles(html_path, summary_path, summary)
