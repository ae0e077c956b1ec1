"""`export --format hf`: the folder loads with the real `datasets` library, and its card
holds the run's settings, counts, hashes and decontamination result."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from service.cli import main
from service.generate.orchestrator import run_generate
from service.report.hf import DEFAULT_TEMPLATES, size_category
from service.rundir.store import RUN_JSON, SEEDS, TASKS
from service.simulator import SimulatedServer
from tests.conftest import make_config
from tests.helpers import jsonl


@pytest.fixture(autouse=True)
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The datasets library works offline in a private cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    yield


async def test_hf_folder_loads_with_datasets_and_card_says_how(
    sim: SimulatedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    await run_generate(make_config(run, sim.base_url, target=70, seed=5,
                                   classification_share=0.3), install_signal_handlers=False)
    assert main(["decontaminate", str(run)]) == 0
    out = tmp_path / "hf"
    assert main(["export", "--run", str(run), "--format", "hf", "--out", str(out)]) == 0
    capsys.readouterr()

    import datasets
    from huggingface_hub import DatasetCard

    ds = datasets.load_dataset(str(out))
    tasks = jsonl(run / TASKS)
    expected = [{"instruction": t["instruction"], "input": i["input"], "output": i["output"]}
                for t in tasks for i in t["instances"]]
    assert list(ds) == ["train"]
    assert ds["train"].num_rows == len(expected)
    assert [dict(r) for r in ds["train"]] == expected

    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "unknown"  # left for the user, and the card says so
    assert "# license: set your data's license" in (out / "README.md").read_text()
    assert meta["task_categories"] == ["text-generation"]
    assert meta["language"] == ["en"]
    assert meta["size_categories"] == [size_category(len(expected))]
    text = card.text
    run_json = orjson.loads((run / RUN_JSON).read_bytes())
    config = run_json["config"]
    assert f"| `threshold` | {config['threshold']} |" in text
    assert f"| `seed` | {config['seed']} |" in text
    assert f"| `target` | {config['target']} |" in text
    assert "| model, instances stage | `sim` |" in text
    by_stage = run_json["usage"]["tokens"]["by_stage"]["instances"]
    assert (f"| instances | `sim` | {by_stage['requests']} | {by_stage['prompt']} | "
            f"{by_stage['completion']} |") in text
    assert "compatibility mode (`--compat`): default" in text
    assert hashlib.sha256((run / SEEDS).read_bytes()).hexdigest() in text
    assert hashlib.sha256(DEFAULT_TEMPLATES.read_bytes()).hexdigest() in text
    assert f"| finished tasks | {len(tasks):,} |" in text
    assert f"| instances (records) | {len(expected):,} |" in text
    assert f"Last check: {len(tasks):,} tasks against user_oriented_instructions.jsonl" in text
    assert "user_oriented_instructions.jsonl" in text and "0 contaminated" in text
    for plot in ("funnel", "overlap", "lengths", "verbs"):
        assert f"](images/{plot}.png)" in text
        assert (out / "images" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    assert sim.base_url not in (out / "README.md").read_text()  # no endpoints on a card


def test_hf_export_of_something_that_is_not_a_run(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--run", str(tmp_path), "--format", "hf", "--out",
                 str(tmp_path / "o")]) == 1
    assert "not a run directory" in capsys.readouterr().err


def test_size_categories() -> None:
    assert [size_category(n) for n in (0, 999, 1000, 52_002, 200_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M"]
