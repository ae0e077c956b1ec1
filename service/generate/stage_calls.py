"""One call of each stage: the prompt it sends, its sampling, and how its answer is read.

The pipeline decides *when* to call; this module decides *what* a call is. It owns the
run's random number generator and request counter, so with a fixed seed and one request
at a time the sequence of prompts (and per-request seeds) repeats exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.config import Config
from service.generate.backend import Backend, Sampling, StageAnswer, StagePrompt
from service.generate.filters import clean_instruction, filter_instances, instruction_rejection
from service.generate.records import TRUNCATED, RunState
from service.generate.seams import CallFinished
from service.generate.stages import classify as classify_stage
from service.generate.stages import instances as instance_stage
from service.generate.stages import instructions as instruction_stage
from service.generate.templates import Templates
from service.rundir.seeds import Instance, SeedTask

Candidate = tuple[str, dict[str, Any]]  # (instruction text, where its prompt came from)
RejectFn = Callable[..., None]  # (stage, reason, text, *, task_level, **extra)
InstructionPrompt = instruction_stage.InstructionPrompt


class StageCalls:
    """The three stages' requests for one run; see the module docstring."""

    def __init__(self, config: Config, backend: Backend, templates: Templates,
                 seeds: Sequence[SeedTask], state: RunState, reject: RejectFn,
                 on_call: Callable[[CallFinished], None]) -> None:
        self.config = config
        self.backend = backend
        self.templates = templates
        self.seeds = list(seeds)
        self.state = state
        self.reject = reject
        self.on_call = on_call
        self.rng = random.Random(config.seed)
        self.requests = 0
        self.seed_instructions = [t.instruction for t in self.seeds]
        self.classify_examples = classify_stage.pick_classify_examples(self.seeds)
        self.input_first_examples = instance_stage.pick_instance_examples(self.seeds, False, 4)
        self.output_first_examples = instance_stage.pick_instance_examples(self.seeds, True, 3)

    async def call(self, stage: str, prompts: Sequence[StagePrompt],
                   sampling: Sampling) -> list[StageAnswer]:
        """The backend's answer, with a ``call_finished`` event either way."""
        try:
            choices = await self.backend.complete(stage, prompts, sampling)
        except Exception as exc:
            self.on_call(CallFinished(stage, len(prompts), False, type(exc).__name__))
            raise
        self.on_call(CallFinished(stage, len(prompts), True))
        return choices

    def sampling(self, stage: str, stop: Sequence[str]) -> Sampling:
        sc = self.config.stage(stage)
        self.requests += 1
        return Sampling(
            temperature=sc.temperature, top_p=sc.top_p, max_tokens=sc.max_tokens,
            presence_penalty=sc.presence_penalty, frequency_penalty=sc.frequency_penalty,
            stop=tuple(stop), seed=self.config.seed * 1_000_003 + self.requests,
        )

    # ------------------------------------------------------------------ instructions
    def instruction_request(
        self, count: int, machine_instructions: list[str]
    ) -> tuple[list[tuple[StagePrompt, InstructionPrompt]], Sampling]:
        """The prompts of one instruction request and its sampling (stop sequences
        after the next item number)."""
        prompts = self.instruction_prompts(count, machine_instructions)
        stop = instruction_stage.stop_sequences(prompts[0][1].next_number)
        return prompts, self.sampling("instructions", stop)

    def instruction_prompts(
        self, count: int, machine_instructions: list[str]
    ) -> list[tuple[StagePrompt, InstructionPrompt]]:
        out = []
        for _ in range(count):
            classification = self.rng.random() < self.config.classification_share
            seeds = self.seed_instructions
            if classification:
                cls_seeds = [t.instruction for t in self.seeds if t.is_classification]
                seeds = cls_seeds or seeds
            examples, n_seed, n_machine = instruction_stage.choose_examples(
                seeds,
                machine_instructions,
                self.rng,
                total=self.config.num_prompt_instructions,
                machine_wanted=self.config.num_machine_instructions,
            )
            prompt = instruction_stage.build_instruction_prompt(
                examples, self.templates, classification=classification,
                seed_count=n_seed, machine_count=n_machine,
            )
            out.append((StagePrompt(prompt.text, self.templates.instructions_chat_system), prompt))
        return out

    def candidates_from(self, choice: StageAnswer, prompt: InstructionPrompt) -> list[Candidate]:
        """The answer's new instructions that pass the instruction filters; the others
        go to rejected.jsonl."""
        if choice.finish_reason == "length":
            # The reference discards a cut response whole: its last item is unreliable
            # and the stop at item 16 never fired.
            self.state.truncated_responses += 1
            self.reject("instructions", TRUNCATED, choice.text[:2000], task_level=False)
            return []
        source = {
            "seed_examples": prompt.seed_count,
            "machine_examples": prompt.machine_count,
            "classification_prompt": prompt.classification,
        }
        out = []
        for raw in instruction_stage.parse_instruction_items(choice.text):
            text = clean_instruction(raw)
            self.state.candidates_seen += 1
            rejection = instruction_rejection(text, self.config.filters)
            if rejection is not None:
                reason, detail = rejection
                self.reject("filter", reason, text, task_level=False, detail=detail)
                continue
            out.append((text, source))
        return out

    # ------------------------------------------------------------------ tasks
    async def classify(self, instruction: str) -> bool | None:
        """Yes/No; None when the answer was cut (``length``) before a Yes or No: such a
        response is unusable (max_tokens is tiny here, so a cut answer that does start
        with Yes/No is still read)."""
        prompt = classify_stage.build_classify_prompt(
            self.classify_examples, instruction, self.templates
        )
        sampling = self.sampling("classify", ["\n"])
        (choice,) = await self.call(
            "classify", [StagePrompt(prompt, self.templates.classify_chat_system)], sampling
        )
        answer = classify_stage.parse_classify_answer(choice.text)
        if answer is None:
            if choice.finish_reason == "length":
                return None
            self.state.classify_unparsed += 1
            return False
        if answer:
            self.state.classified_yes += 1
        return answer

    async def instances(self, instruction: str, is_cls: bool) -> tuple[list[Instance], bool]:
        """The task's instances (output-first for classification), and whether the answer
        was cut (then nothing of it is used)."""
        if is_cls:
            prompt = instance_stage.build_output_first_prompt(
                self.output_first_examples, instruction, self.templates
            )
        else:
            prompt = instance_stage.build_input_first_prompt(
                self.input_first_examples, instruction, self.templates
            )
        sampling = self.sampling("instances", ["\nTask:", "\n\n\n"])
        (choice,) = await self.call(
            "instances", [StagePrompt(prompt, self.templates.instances_chat_system)], sampling
        )
        if choice.finish_reason == "length":
            return [], True
        parse = instance_stage.parse_output_first if is_cls else instance_stage.parse_input_first
        return parse(choice.text), False

    async def answer_task(self, task_id: str, instruction: str) -> TaskAnswer:
        """Classify, write instances, filter them. Instance-level and task-level
        rejections go to rejected.jsonl here; LLM errors propagate to the caller."""
        answer = await self.classify(instruction)
        instances: list[Instance] = []
        if answer is None:  # a cut classify answer: nothing of it is used
            is_cls, truncated, cut_stage = False, True, "classify"
        else:
            is_cls, cut_stage = answer, "instances"
            instances, truncated = await self.instances(instruction, is_cls)
        if truncated:
            self.state.truncated_responses += 1
            self.reject(cut_stage, TRUNCATED, instruction, task_level=True, id=task_id)
            return TaskAnswer(is_cls, [], dropped=True)
        verdict = filter_instances(instances, self.config.filters)
        for inst, reason in verdict.dropped:
            self.reject(
                "instance_filter", reason, instruction, task_level=False, id=task_id,
                instance={"input": inst.input, "output": inst.output},
            )
        if verdict.task_rejection is not None:
            self.reject("instances", verdict.task_rejection, instruction, task_level=True,
                        id=task_id)
            return TaskAnswer(is_cls, [], dropped=True)
        return TaskAnswer(is_cls, list(verdict.kept), dropped=False)


@dataclass(frozen=True)
class TaskAnswer:
    """A task's answers after the filters; ``dropped``: rejected as a whole (recorded)."""

    is_classification: bool
    instances: list[Instance]
    dropped: bool
