"""The project's own seed tasks (prompts/seed_tasks.jsonl): shape, filters and diversity.

The set replaces the paper's 175 seeds, so it must be at least as large, pass the same
instruction filters the pipeline applies to generated instructions, and be diverse under
the same ROUGE-L measure: no pair of instructions above 0.7, within the set or against the
paper's seed and evaluation instructions.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from service.config import FilterConfig
from service.generate.filters import filter_instances, instruction_rejection
from service.rundir.seeds import SeedTask, default_seed_path, load_seed_tasks

THRESHOLD = 0.7
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAPER_FILES = ("seed_tasks.jsonl", "user_oriented_instructions.jsonl")
NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
ID_RE = re.compile(r"seed_task_\d+")


@pytest.fixture(scope="module")
def tasks() -> list[SeedTask]:
    return load_seed_tasks(default_seed_path())


@pytest.fixture(scope="module")
def scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _rouge_l(scorer: rouge_scorer.RougeScorer, a: str, b: str) -> float:
    return float(scorer.score(a, b)["rougeL"].fmeasure)


def test_default_path_is_the_project_file() -> None:
    path = default_seed_path()
    assert path.name == "seed_tasks.jsonl"
    assert path.parent.name == "prompts"
    assert path.is_file()


def test_size_and_classification_share(tasks: list[SeedTask]) -> None:
    assert len(tasks) >= 175
    assert sum(t.is_classification for t in tasks) >= 25
    assert sum(not t.is_classification for t in tasks) >= 100


def test_ids_and_names_unique_and_well_formed(tasks: list[SeedTask]) -> None:
    ids = [t.id for t in tasks]
    names = [t.name for t in tasks]
    assert len(set(ids)) == len(ids)
    assert len(set(names)) == len(names)
    for t in tasks:
        assert ID_RE.fullmatch(t.id), t.id
        assert NAME_RE.fullmatch(t.name), t.name


def test_instances_are_usable(tasks: list[SeedTask]) -> None:
    config = FilterConfig()
    for t in tasks:
        assert 1 <= len(t.instances) <= 3, t.name
        outputs_by_input: dict[str, set[str]] = {}
        for inst in t.instances:
            assert inst.output.strip(), t.name
            assert inst.output.strip() != inst.input.strip(), t.name
            outputs_by_input.setdefault(inst.input.strip(), set()).add(inst.output.strip())
        assert all(len(outs) == 1 for outs in outputs_by_input.values()), t.name
        verdict = filter_instances(t.instances, config)
        assert verdict.task_rejection is None, (t.name, verdict.task_rejection)
        assert not verdict.dropped, (t.name, verdict.dropped)


def test_classification_outputs_are_short_labels(tasks: list[SeedTask]) -> None:
    for t in tasks:
        if t.is_classification:
            for inst in t.instances:
                assert len(inst.output.split()) <= 4, (t.name, inst.output)


def test_instructions_pass_the_pipeline_filters(tasks: list[SeedTask]) -> None:
    config = FilterConfig()
    for t in tasks:
        assert instruction_rejection(t.instruction, config) is None, t.name
        assert t.instruction.isascii(), t.name
        assert t.instruction[0].isalpha(), t.name
        assert not t.instruction.endswith(":"), t.name


def test_no_near_duplicate_instructions_within_the_set(
    tasks: list[SeedTask], scorer: rouge_scorer.RougeScorer
) -> None:
    worst = (0.0, "", "")
    for a, b in itertools.combinations(tasks, 2):
        score = _rouge_l(scorer, a.instruction, b.instruction)
        if score > worst[0]:
            worst = (score, a.name, b.name)
    assert worst[0] <= THRESHOLD, worst


def test_no_near_duplicate_of_the_paper_instructions(
    tasks: list[SeedTask], scorer: rouge_scorer.RougeScorer
) -> None:
    if not all((SHARED_DATA / name).is_file() for name in PAPER_FILES):
        pytest.skip(f"paper data not found under {SHARED_DATA}")
    paper: list[str] = []
    for name in PAPER_FILES:
        with open(SHARED_DATA / name, encoding="utf-8") as fh:
            paper.extend(json.loads(line)["instruction"] for line in fh if line.strip())
    assert len(paper) >= 400
    mine = {t.instruction for t in tasks}
    worst = (0.0, "", "")
    for t in tasks:
        for other in paper:
            score = _rouge_l(scorer, other, t.instruction)
            if score > worst[0]:
                worst = (score, t.name, other)
        assert t.instruction not in paper, t.name
    assert worst[0] <= THRESHOLD, worst
    assert len(mine) == len(tasks)
