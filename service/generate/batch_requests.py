"""Batch mode's request lines: the same prompts and sampling as online, as Batch API
bodies with a custom_id each.

custom_ids say what a line asks for and sort in processing order: ``r000003-i000017`` is
round 3's 18th instruction request, ``task_000042-classify`` and ``task_000042-instances``
the two calls of one task. Every body carries a sampling seed derived from its custom_id,
so a line resubmitted after a failure asks exactly what it asked the first time.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

from service.config import Config
from service.generate.backend import StagePrompt
from service.generate.llm_backend import DEFAULT_MODEL
from service.generate.processing import TextRules
from service.generate.seams import PendingTask
from service.generate.stages import classify as classify_stage
from service.generate.stages import instances as instance_stage
from service.generate.stages import instructions as instruction_stage
from service.generate.templates import Templates
from service.llm.batch import CHAT, COMPLETIONS, split_requests
from service.rundir.seeds import SeedTask

# (journal item, endpoint, body): what a line asks for, where, and the request body
Line = tuple[dict[str, Any], str, dict[str, Any]]
# (journal item, endpoint, the encoded request line)
EncodedLine = tuple[dict[str, Any], str, bytes]


class BatchRequests:
    """Builds each stage's request lines from the stage modules' prompt builders."""

    def __init__(self, config: Config, seeds: Sequence[SeedTask], templates: Templates,
                 rules: TextRules) -> None:
        self.config = config
        self.rules = rules  # the run's compat mode: stop sequences and max_tokens
        self.seeds = list(seeds)
        self.templates = templates
        self.seed_instructions = [t.instruction for t in self.seeds]
        self.classification_seeds = [t.instruction for t in self.seeds if t.is_classification]
        self.classify_examples = classify_stage.pick_classify_examples(self.seeds)
        self.input_first_examples = instance_stage.pick_instance_examples(self.seeds, False, 4)
        self.output_first_examples = instance_stage.pick_instance_examples(self.seeds, True, 3)

    def chat(self, stage: str) -> bool:
        return (self.config.stage(stage).api or self.config.api) == "chat"

    def body(self, stage: str, prompt: StagePrompt, stop: Sequence[str],
             custom_id: str, max_tokens: int | None = None) -> tuple[str, dict[str, Any]]:
        """(endpoint, body) as the online backend would send it for one prompt."""
        sc = self.config.stage(stage)
        body: dict[str, Any] = {
            "model": sc.model or self.config.model or DEFAULT_MODEL,
            "max_tokens": sc.max_tokens if max_tokens is None else max_tokens,
            "temperature": sc.temperature, "top_p": sc.top_p,
        }
        if sc.presence_penalty:
            body["presence_penalty"] = sc.presence_penalty
        if sc.frequency_penalty:
            body["frequency_penalty"] = sc.frequency_penalty
        if stop:
            body["stop"] = list(stop)
        body["seed"] = self.config.seed * 1_000_003 + zlib.crc32(custom_id.encode())
        if self.chat(stage):
            messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
            messages.append({"role": "user", "content": prompt.text})
            body["messages"] = messages
            return CHAT, body
        body["prompt"] = prompt.text
        return COMPLETIONS, body

    def instruction_lines(self, number: int, count: int,
                          machine_instructions: Sequence[str]) -> list[Line]:
        """``count`` instruction requests of round ``number``, all sampling the pool as it
        stands (a generator seeded by --seed and the round: a resumed run repeats them)."""
        rng = random.Random(f"{self.config.seed}:round:{number}")
        out: list[Line] = []
        for i in range(count):
            classification = (self.config.classification_seeds_only
                              or rng.random() < self.config.classification_share)
            seeds = (self.classification_seeds or self.seed_instructions) if classification \
                else self.seed_instructions
            examples, n_seed, n_machine = instruction_stage.choose_examples(
                seeds, machine_instructions, rng,
                total=self.config.num_prompt_instructions,
                machine_wanted=self.config.num_machine_instructions)
            prompt = instruction_stage.build_instruction_prompt(
                examples, self.templates, classification=classification,
                seed_count=n_seed, machine_count=n_machine)
            cid = f"r{number:06d}-i{i:06d}"
            endpoint, body = self.body(
                "instructions", StagePrompt(prompt.text, self.templates.instructions_chat_system),
                self.rules.instruction_stop(prompt.next_number), cid)
            item = {"custom_id": cid, "stage": "instructions", "seed_examples": n_seed,
                    "machine_examples": n_machine, "classification_prompt": classification}
            out.append((item, endpoint, body))
        return out

    def classify_line(self, task: PendingTask) -> Line:
        cid = f"{task.id}-classify"
        prompt = classify_stage.build_classify_prompt(self.classify_examples, task.instruction,
                                                      self.templates)
        endpoint, body = self.body(
            "classify", StagePrompt(prompt, self.templates.classify_chat_system),
            self.rules.classify_stop(), cid)
        return {"custom_id": cid, "stage": "classify", "task": task.id}, endpoint, body

    def instances_line(self, task: PendingTask, is_cls: bool) -> Line:
        """Output-first for a classification task, input-first otherwise (as online)."""
        cid = f"{task.id}-instances"
        if is_cls:
            prompt = instance_stage.build_output_first_prompt(
                self.output_first_examples, task.instruction, self.templates)
        else:
            prompt = instance_stage.build_input_first_prompt(
                self.input_first_examples, task.instruction, self.templates)
        endpoint, body = self.body(
            "instances", StagePrompt(prompt, self.templates.instances_chat_system),
            self.rules.instance_stop(), cid,
            self.rules.instance_max_tokens(self.config.stage("instances"), is_cls))
        item = {"custom_id": cid, "stage": "instances", "task": task.id,
                "is_classification": is_cls}
        return item, endpoint, body


def split_files(lines: Sequence[EncodedLine], max_requests: int) -> list[list[EncodedLine]]:
    """Batch files: one endpoint a file, each within the provider's limits, order kept."""
    out: list[list[EncodedLine]] = []
    for endpoint in (COMPLETIONS, CHAT):
        mine = [line for line in lines if line[1] == endpoint]
        pos = 0
        for chunk in split_requests([line[2] for line in mine], max_requests):
            out.append(mine[pos:pos + len(chunk)])
            pos += len(chunk)
    return out
