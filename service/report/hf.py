"""`export --format hf`: a folder the Hugging Face ``datasets`` library loads, with a
dataset card that says how the data was made.

Layout::

    DIR/README.md          the card: YAML metadata, then how the data was made
    DIR/data/train.jsonl   one record per instance: instruction, input, output (Alpaca)
    DIR/images/*.png       the report's key charts, linked from the card

The data file is written by the ordinary exporter (constant memory); the card's numbers
come from the report's summary, so the card and ``selfinstruct report`` never disagree.
The YAML leaves ``license`` for the user to set: the license of generated data depends on
the model's terms and the seed tasks', which this tool cannot know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompts import PROMPTS_DIR
from service import __version__
from service.decontam.check import file_sha256
from service.report.page import decontamination_sentence, render_plots
from service.report.summary import ReportOptions, summarize
from service.rundir.export import export_run
from service.rundir.store import SEEDS, atomic_file, read_run_json

DATA_FILE = "data/train.jsonl"
CARD = "README.md"
CARD_PLOTS = ("funnel", "overlap", "lengths", "verbs")
DEFAULT_TEMPLATES = PROMPTS_DIR / "templates.toml"
# Settings shown on the card: what shapes the data, never endpoints or paths.
CARD_SETTINGS = (
    "model", "api", "compat", "method", "mode", "task_kinds", "classification_seeds_only",
    "target", "seed", "threshold", "inclusive_threshold", "tokenizer", "dedup_index",
    "num_prompt_instructions", "num_machine_instructions", "prompts_per_request",
    "classification_share", "max_instances",
)


_COMPAT_MEANING = {
    "default": "the project's decisions on model text",
    "reference": "the reference code's decisions on model text, exactly",
}


@dataclass(frozen=True)
class HfExport:
    out: Path
    card: Path
    data: Path
    records: int


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for ``n`` rows."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                         (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return label
    return "n>1T"


def sha256_file(path: Path) -> str | None:
    """The file's sha256, or None when it is not there."""
    return file_sha256(path) if path.is_file() else None


def _md(value: Any) -> str:
    """A value safe inside a Markdown table cell (model output never reaches the card,
    but settings come from a file too)."""
    text = "–" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")[:300]


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_card(summary: Mapping[str, Any], run_json: Mapping[str, Any], records: int,
                *, templates: Path, templates_hash: str | None, seeds_hash: str | None,
                plots: list[str], name: str) -> str:
    config = run_json.get("config") if isinstance(run_json.get("config"), dict) else {}
    assert isinstance(config, dict)
    counts, usage, tasks = summary["counts"], summary["usage"], summary["tasks"]
    compat = config.get("compat") or "default"
    lines = [
        "---",
        "# license: set your data's license (it depends on the generating model's terms and",
        "# the seed tasks' license, which this tool cannot know)",
        "license: unknown",
        f"pretty_name: {_yaml_str(name)}",
        "language:",
        "- en",
        "task_categories:",
        "- text-generation",
        "tags:",
        "- self-instruct",
        "- synthetic",
        "- instruction-tuning",
        "size_categories:",
        f"- {size_category(records)}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {DATA_FILE}",
        "---",
        "",
        f"# {name}",
        "",
        "Instruction-tuning data generated with the Self-Instruct method (Wang et al., 2022, "
        "\"Self-Instruct: Aligning Language Models with Self-Generated Instructions\") by "
        f"selfinstruct {__version__}: a language model wrote new task "
        "instructions from a few examples, a ROUGE-L filter kept out near-duplicates, the "
        "model labelled each task as classification or not and wrote input/output instances "
        "for it, and filters dropped bad instances. The data is synthetic and unreviewed: "
        "expect errors.",
        "",
        "## Data",
        "",
        f"`{DATA_FILE}`: {records:,} records, one per instance, with fields `instruction`, "
        "`input` (may be empty) and `output`.",
        "",
        "```python",
        "from datasets import load_dataset",
        "ds = load_dataset(\"path/to/this/folder\")",
        "```",
        "",
        "## How it was made",
        "",
        "| | |",
        "|---|---|",
        f"| method | {_md(config.get('method') or 'self-instruct')}; compatibility mode "
        f"(`--compat`): {_md(compat)} ({_COMPAT_MEANING.get(str(compat), 'see the README')}) |",
        f"| selfinstruct version | {_md(run_json.get('version'))} |",
        f"| run status | {_md(run_json.get('status'))} |",
        f"| templates | `{_md(templates.name)}` sha256 `{_md(templates_hash)}` |",
        f"| seed tasks | {counts['seeds']:,} (`seeds.jsonl` sha256 `{_md(seeds_hash)}`) |",
    ]
    for stage, model in usage["stage_models"].items():
        lines.append(f"| model, {_md(stage)} stage | `{_md(model)}` |")
    lines += ["", "### Settings", "", "| setting | value |", "|---|---|"]
    for key in CARD_SETTINGS:
        if key in config:
            lines.append(f"| `{key}` | {_md(config[key])} |")
    filters = config.get("filters")
    if isinstance(filters, dict):
        for key, value in sorted(filters.items()):
            lines.append(f"| `filters.{key}` | {_md(value)} |")
    stages = config.get("stages")
    if isinstance(stages, dict):
        for stage, spec in sorted(stages.items()):
            if isinstance(spec, dict):
                sampling = ", ".join(f"{k}={v}" for k, v in sorted(spec.items())
                                     if k not in {"base_url", "model", "api"} and v is not None)
                lines.append(f"| `stages.{stage}` | {_md(sampling)} |")
    lines += [
        "", "## Counts", "",
        "| | count |", "|---|---|",
        f"| finished tasks | {counts['tasks']:,} |",
        f"| instances (records) | {counts['instances']:,} |",
        f"| classification tasks | {tasks['classification']:,} |",
        f"| instances with empty input | {tasks['empty_input_instances']:,} |",
        f"| admitted instructions | {counts['instructions_admitted']:,} |",
        f"| rejections | {counts['rejected']:,} |",
        "", "### Funnel", "", "| step | count | lost next | to |", "|---|---|---|---|",
    ]
    for step in summary["funnel"]:
        lines.append(f"| {_md(step['step'])} | {step['count']:,} | {step['lost']:,} | "
                     f"{_md(step['lost_to'])} |")
    lines += ["", "### Rejections by reason", "", "| reason | count |", "|---|---|"]
    for reason, n in summary["rejections"]["by_reason"].items():
        lines.append(f"| `{_md(reason)}` | {n:,} |")
    cost = usage["cost_usd"]
    lines += [
        "", "## Cost", "",
        f"Tokens: {_md(usage['total_tokens'])} ({_md(usage['prompt_tokens'])} prompt, "
        f"{_md(usage['completion_tokens'])} completion); cost: "
        + ("not priced (no prices configured)" if not cost else f"${cost:,.4f}") + ".",
        "", "| model | requests | prompt tokens | completion tokens |", "|---|---|---|---|",
    ]
    for model, data in usage["by_model"].items():
        if isinstance(data, dict):
            lines.append(f"| `{_md(model)}` | {_md(data.get('requests'))} | "
                         f"{_md(data.get('prompt'))} | {_md(data.get('completion'))} |")
    by_stage = usage["by_stage"] if isinstance(usage["by_stage"], dict) else {}
    if by_stage:
        lines += ["", "| stage | model | requests | prompt tokens | completion tokens |",
                  "|---|---|---|---|---|"]
        for stage, data in by_stage.items():
            if isinstance(data, dict):
                lines.append(f"| {_md(stage)} | `{_md(usage['stage_models'].get(stage))}` | "
                             f"{_md(data.get('requests'))} | {_md(data.get('prompt'))} | "
                             f"{_md(data.get('completion'))} |")
    lines += ["", "## Plots", ""]
    for plot in plots:
        lines.append(f"![{plot}](images/{plot}.png)")
        lines.append("")
    decon = summary["decontamination"]
    last = decon["last_check"]
    lines += ["## Decontamination", ""]
    if last:
        lines.append(decontamination_sentence(last, decon["rejected_contamination"]))
    else:
        lines.append("No decontamination check was recorded for this run "
                     "(`selfinstruct decontaminate RUN_DIR`).")
    lines.append(f"Tasks rejected for contamination: {decon['rejected_contamination']:,}.")
    lines.append("")
    return "\n".join(lines)


def export_hf(run_dir: Path, out: Path, *, include_seeds: bool = False,
              name: str | None = None) -> HfExport:
    """Write the Hugging Face folder for ``run_dir`` into ``out``."""
    summary = summarize(run_dir, ReportOptions())
    root = Path(summary["run"]["path"])
    run_json = read_run_json(root)
    out.mkdir(parents=True, exist_ok=True)
    result = export_run(root, "alpaca", out / DATA_FILE, include_seeds=include_seeds)
    charts = render_plots(summary)
    (out / "images").mkdir(exist_ok=True)
    plots = [p for p in CARD_PLOTS if p in charts]
    for plot in plots:
        (out / "images" / f"{plot}.png").write_bytes(charts[plot])
    config = run_json.get("config") if isinstance(run_json.get("config"), dict) else {}
    templates_value = config.get("templates") if isinstance(config, dict) else None
    templates = Path(templates_value) if isinstance(templates_value, str) else DEFAULT_TEMPLATES
    card = render_card(
        summary, run_json, result.records, templates=templates,
        templates_hash=sha256_file(templates), seeds_hash=sha256_file(root / SEEDS),
        plots=plots, name=name or f"Self-Instruct data: {root.name}",
    )
    with atomic_file(out / CARD) as fh:
        fh.write(card.encode("utf-8"))
    return HfExport(out, out / CARD, out / DATA_FILE, result.records)
