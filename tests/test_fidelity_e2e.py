"""End to end against the simulated endpoint: the paper's pipeline reproduced.

With the reference's templates imported from ../shared/reference/self_instruct, the paper's
175 seed tasks and ``compat="reference"``, every prompt the simulator receives must be the
one the reference's own code builds (tests/reference_oracle.py runs the reference's prompt
expressions) for the examples the run sampled, with the reference's max_tokens and stop
sequences; records carry the reference's fields. Also: --keep-raw files re-parse with
``selfinstruct parse`` to the tasks written; the options reference users expect; and
``--method alpaca`` end to end through ``verify``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.generate import compat
from service.generate.orchestrator import run_generate
from service.rundir.seeds import load_seed_tasks
from service.rundir.store import INSTRUCTIONS, REJECTED, TASKS
from service.rundir.verify import verify_run
from service.simulator import SimulatedServer
from tests import reference_oracle
from tests.conftest import SHARED_DATA, SimFactory, make_config

PAPER_SEEDS = SHARED_DATA / "seed_tasks.jsonl"
pytestmark = pytest.mark.skipif(
    not (reference_oracle.REFERENCE.is_dir() and PAPER_SEEDS.is_file()), reason="reference not present"
)
_ITEM = re.compile(r"^(\d+)\. (.*)$")


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _import_reference(tmp_path: Path) -> Path:
    out = tmp_path / "reference-templates.toml"
    assert main(["templates", "import", str(reference_oracle.REFERENCE), "--out", str(out)]) == 0
    return out


def _listed_examples(prompt: str) -> tuple[list[str], bool]:
    """The numbered examples an instruction prompt shows, and whether it is the
    classification variant (its first line mentions classification)."""
    examples = [m.group(2) for line in prompt.split("\n") if (m := _ITEM.match(line))]
    return examples, "classification" in prompt.split("\n", 1)[0]


async def test_reference_mode_sends_the_references_prompts(make_sim: SimFactory, tmp_path: Path) -> None:
    sim: SimulatedServer = await make_sim(seed=3, record_requests=10_000, bad_item_rate=0.1)
    templates = _import_reference(tmp_path)
    out = tmp_path / "run"
    config = make_config(out, sim.base_url, target=12, compat="reference", templates=templates,
                         seed_tasks=PAPER_SEEDS, seed=11, max_in_flight=4)
    result = await run_generate(config, install_signal_handlers=False)
    assert result.summary.status == "finished"

    seeds = [t.instruction for t in load_seed_tasks(PAPER_SEEDS)]
    admitted = _lines(out / INSTRUCTIONS)
    tasks = _lines(out / TASKS)
    admitted_texts = {r["instruction"] for r in admitted}
    encode = reference_oracle.encode_prompt()
    seen = {"list": 0, "classify": 0, "instances": 0}
    shown_seed_or_machine = {compat.reference_example_text(s) for s in seeds} | {
        compat.reference_example_text(a) for a in admitted_texts}
    for request in sim.received:
        for prompt in request.prompts:
            if prompt.endswith("Is it classification?"):
                question = "\nIs it classification?"
                head = len(reference_oracle.classify_prompt("")) - len(question)  # prefix + " "
                instruction = prompt[head : -len(question)]
                assert instruction in admitted_texts
                assert prompt == reference_oracle.classify_prompt(instruction)
                assert (request.max_tokens, request.stop) == (3, ("\n", "Task"))
                seen["classify"] += 1
            elif prompt.endswith("\n") and "Task:" in prompt:
                is_cls = "Class label:" in prompt
                head = reference_oracle.instance_prompt("", is_cls)[:-1]  # prefix + " "
                instruction = prompt[len(head):-1]
                assert instruction in admitted_texts
                assert prompt == reference_oracle.instance_prompt(instruction, is_cls)
                assert request.max_tokens == (300 if is_cls else 350)
                assert request.stop == ("Example 6", "Task:")
                seen["instances"] += 1
            else:
                examples, classification = _listed_examples(prompt)
                assert len(examples) == 8 and set(examples) <= shown_seed_or_machine
                assert prompt == encode(examples, classification=classification)
                assert request.max_tokens == 1024
                assert request.stop == ("\n\n", "\n16", "16.", "16 .")
                seen["list"] += 1
    assert all(seen.values()), seen

    # The reference's fields, and its decisions on the answers.
    for record in admitted:
        assert {"instruction", "most_similar", "avg_similarity_score", "request_idx"} <= set(record)
        assert 0.0 <= record["avg_similarity_score"] <= 0.7
        assert record["instruction"] == record["instruction"].capitalize()  # the reference's quirk
    for task in tasks:
        assert {"instruction", "instances", "is_classification", "most_similar",
                "avg_similarity_score", "raw_instances"} <= set(task)
        finish = "stop"  # a cut answer would have lost its last instance; recomputed below
        expected = compat.reference_instances(task["raw_instances"], task["is_classification"], finish)
        kept = [(i["input"], i["output"]) for i in task["instances"]]
        assert len(kept) <= 5 and set(kept) <= set(expected)
        assert len(kept) == min(5, len(expected))
    report = verify_run(out)
    assert report.ok, report.summary()


async def test_keep_raw_reparses_to_the_tasks_written(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = await make_sim(seed=5, bad_item_rate=0.15)
    out = tmp_path / "run"
    config = make_config(out, sim.base_url, target=20, keep_raw=True, seed=2, avg_similarity=False)
    await run_generate(config, install_signal_handlers=False)
    raw_lists = _lines(out / "raw_instructions.jsonl")
    raw_instances = _lines(out / "raw_instances.jsonl")
    raw_classify = _lines(out / "raw_classify.jsonl")
    assert raw_lists and raw_instances and raw_classify
    assert all({"request_idx", "text", "finish_reason"} <= set(r) for r in raw_lists + raw_classify)
    assert all({"instruction", "is_classification"} <= set(r) for r in raw_instances)
    idx = [r["request_idx"] for r in raw_lists + raw_instances + raw_classify]
    assert len(idx) == len(set(idx)) or len(raw_lists) > 0  # one index a call (a batched call shares one)

    parsed = tmp_path / "parsed.jsonl"
    assert main(["parse", "--stage", "instances", "--in", str(out / "raw_instances.jsonl"),
                 "--out", str(parsed)]) == 0
    by_instruction = {r["instruction"]: r for r in _lines(parsed)}
    tasks = _lines(out / TASKS)
    assert len(tasks) == 20
    assert not any("avg_similarity_score" in t for t in [*tasks, *_lines(out / INSTRUCTIONS)])
    for task in tasks:
        reparsed = {tuple(p) for p in by_instruction[task["instruction"]]["instances"]}
        kept = {(i["input"], i["output"]) for i in task["instances"]}
        assert kept <= reparsed and len(kept) == min(5, len(reparsed))
    listed = tmp_path / "lists.jsonl"
    assert main(["parse", "--stage", "instructions", "--in", str(out / "raw_instructions.jsonl"),
                 "--out", str(listed)]) == 0
    candidates = {text for r in _lines(listed) for text in r["kept"]}
    assert {r["instruction"] for r in _lines(out / INSTRUCTIONS)} <= candidates
    answers = tmp_path / "classify.jsonl"
    assert main(["parse", "--stage", "classify", "--in", str(out / "raw_classify.jsonl"),
                 "--out", str(answers)]) == 0
    read = {r["instruction"]: r["is_classification"] for r in _lines(answers)}
    assert all(read[t["instruction"]] == t["is_classification"] for t in tasks)


async def test_task_kinds_and_classification_seeds_only(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = await make_sim(seed=7, record_requests=10_000)
    out = tmp_path / "gen-only"
    config = make_config(out, sim.base_url, target=10, task_kinds="generation", seed_tasks=PAPER_SEEDS,
                         classification_share=0.6, prompts_per_request=1, seed=1)
    await run_generate(config, install_signal_handlers=False)
    tasks = _lines(out / TASKS)
    assert len(tasks) == 10 and not any(t["is_classification"] for t in tasks)
    assert any(r["reason"] == "task_kind_excluded" for r in _lines(out / REJECTED))
    assert verify_run(out).ok

    sim.received.clear()
    out = tmp_path / "clf-seeds"
    config = make_config(out, sim.base_url, target=6, classification_seeds_only=True,
                         task_kinds="classification", seed_tasks=PAPER_SEEDS)
    await run_generate(config, install_signal_handlers=False)
    clf_seeds = {" ".join(t.instruction.split()).rstrip(":")
                 for t in load_seed_tasks(PAPER_SEEDS) if t.is_classification}
    lists = [p for r in sim.received for p in r.prompts if re.search(r"\n\d+\.$", p)]
    assert lists
    admitted = {" ".join(r["instruction"].split()).rstrip(":") for r in _lines(out / INSTRUCTIONS)}
    for prompt in lists:
        examples, _ = _listed_examples(prompt)
        assert set(examples) <= clf_seeds | admitted
        assert "classification" in prompt.split("\n", 1)[0].lower()
    assert all(t["is_classification"] for t in _lines(out / TASKS))
    assert verify_run(out).ok


async def test_alpaca_method_end_to_end_passes_verify(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = await make_sim(seed=9, bad_item_rate=0.1, duplicate_rate=0.1, record_requests=1000)
    out = tmp_path / "alpaca"
    config = make_config(out, sim.base_url, target=40, method="alpaca", seed_tasks=PAPER_SEEDS,
                         keep_raw=True, avg_similarity=True)
    result = await run_generate(config, install_signal_handlers=False)
    assert result.summary.status == "finished"
    tasks = _lines(out / TASKS)
    assert len(tasks) == 40
    assert all(len(t["instances"]) == 1 for t in tasks)
    assert all(0.0 <= t["avg_similarity_score"] <= 0.7 for t in tasks)  # --avg-similarity
    report = verify_run(out)
    assert report.ok, report.summary()
    assert {(r.max_tokens, r.stop) for r in sim.received} == {(3072, ("\n20", "20."))}  # Alpaca's
    routes = {p.rsplit("\n", 1)[-1] for r in sim.received for p in r.prompts}
    assert all(re.fullmatch(r"\d+\. Instruction:", last) for last in routes)  # one stage only
    reasons = {r["reason"] for r in _lines(out / REJECTED)}
    assert "blacklisted_word" in reasons or "near_duplicate" in reasons
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "a.jsonl")]) == 0
    parsed = tmp_path / "alpaca-parsed.jsonl"
    assert main(["parse", "--stage", "alpaca", "--in", str(out / "raw_alpaca.jsonl"),
                 "--out", str(parsed)]) == 0
    triples = {(i, n, o) for r in _lines(parsed) for i, n, o in r["tasks"]}
    for task in tasks:
        (instance,) = task["instances"]
        assert (task["instruction"], instance["input"], instance["output"]) in triples


async def test_alpaca_resume_finishes_admitted_tasks_with_their_instances(make_sim: SimFactory,
                                                                          tmp_path: Path) -> None:
    """One Alpaca call admits many tasks; a run that stops at its target leaves some
    admitted and unwritten, and the next run writes them with the instance the call wrote
    (read back from instructions.jsonl), not a new one."""
    sim = await make_sim(seed=4)
    out = tmp_path / "alpaca"
    await run_generate(make_config(out, sim.base_url, target=5, method="alpaca", max_in_flight=1),
                       install_signal_handlers=False)
    admitted = {r["instruction"]: r["source"]["alpaca"] for r in _lines(out / INSTRUCTIONS)}
    assert len(admitted) > 5  # some admitted tasks are left for the next run
    await run_generate(make_config(out, sim.base_url, target=len(admitted), method="alpaca",
                                   max_in_flight=1), install_signal_handlers=False)
    tasks = _lines(out / TASKS)
    assert len(tasks) == len(admitted)
    for task in tasks:
        assert task["instances"] == [admitted[task["instruction"]]]
    assert verify_run(out).ok


async def test_batch_mode_makes_the_same_reference_decisions(tmp_path: Path) -> None:
    """--mode batch builds its request lines and reads its answers through the same compat
    rules: the reference's prompts, stops and max_tokens in the batch files."""
    from service.simulator import SimSettings
    from service.simulator.batch import BatchSimSettings

    templates = _import_reference(tmp_path)
    out = tmp_path / "run"
    async with SimulatedServer(SimSettings(latency_ms=0, seed=2, bad_item_rate=0.1),
                               batch=BatchSimSettings(turnaround_s=0.05, seed=3)) as sim:
        config = make_config(out, sim.base_url, target=8, seed=6, mode="batch", compat="reference",
                             templates=templates, seed_tasks=PAPER_SEEDS, batch_poll_seconds=0.02)
        result = await run_generate(config, install_signal_handlers=False)
    assert result.summary.status == "finished"
    encode = reference_oracle.encode_prompt()
    stages = set()
    for path in sorted((out / "batches").glob("*.input.jsonl")):
        for line in _lines(path):
            body, stage = line["body"], line["custom_id"].rsplit("-", 1)[-1]
            prompt = body["prompt"]
            if stage == "classify":
                assert body["stop"] == ["\n", "Task"] and body["max_tokens"] == 3
                assert prompt.endswith("\nIs it classification?")
            elif stage == "instances":
                is_cls = "Class label:" in prompt
                head = reference_oracle.instance_prompt("", is_cls)[:-1]
                assert prompt == reference_oracle.instance_prompt(prompt[len(head):-1], is_cls)
                assert body["stop"] == ["Example 6", "Task:"]
                assert body["max_tokens"] == (300 if is_cls else 350)
            else:
                examples, classification = _listed_examples(prompt)
                assert prompt == encode(examples, classification=classification)
                assert body["stop"] == ["\n\n", "\n16", "16.", "16 ."]
                stage = "instructions"
            stages.add(stage)
    assert stages == {"instructions", "classify", "instances"}
    for task in _lines(out / TASKS):
        expected = compat.reference_instances(task["raw_instances"], task["is_classification"], "stop")
        kept = {(i["input"], i["output"]) for i in task["instances"]}
        assert kept <= set(expected) and len(kept) == min(5, len(expected))
        assert task["instruction"] == task["instruction"].capitalize()
    assert verify_run(out).ok


async def test_alpaca_with_an_imported_prompt(make_sim: SimFactory, tmp_path: Path) -> None:
    checkout = tmp_path / "stanford_alpaca"
    checkout.mkdir()
    (checkout / "prompt.txt").write_text("A user's own requirements text.\nList of 20 tasks:\n", encoding="utf-8")
    templates = tmp_path / "alpaca.toml"
    assert main(["templates", "import", str(checkout), "--out", str(templates)]) == 0
    sim = await make_sim(seed=8, record_requests=100)
    out = tmp_path / "run"
    await run_generate(make_config(out, sim.base_url, target=5, method="alpaca", templates=templates),
                       install_signal_handlers=False)
    prompts = [p for r in sim.received for p in r.prompts]
    assert prompts and all(p.startswith("A user's own requirements text.\nList of 20 tasks:\n###\n1. Instruction: ")
                           for p in prompts)
    assert len(_lines(out / TASKS)) == 5 and verify_run(out).ok
