"""One call of each stage: the prompt it sends, its sampling, and how its answer is read.

The pipeline decides *when* to call; this module decides *what* a call is. It owns the
run's random number generator and request counter, so with a fixed seed and one request
at a time the sequence of prompts (and per-request seeds) repeats exactly. What a call's
answer means (stop sequences, max_tokens, parsing, filters, the instance cap) is the
run's compat mode's (:mod:`.processing`); ``--method alpaca`` asks for whole tasks in one
call (:mod:`.stages.alpaca`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.config import Config
from service.generate.backend import Backend, Sampling, StageAnswer, StagePrompt
from service.generate.filters import OVER_INSTANCE_LIMIT, check_instances
from service.generate.processing import rules_for
from service.generate.records import TRUNCATED, RunState
from service.generate.seams import CallFinished
from service.generate.stages import alpaca as alpaca_stage
from service.generate.stages import classify as classify_stage
from service.generate.stages import instances as instance_stage
from service.generate.stages import instructions as instruction_stage
from service.generate.templates import Templates
from service.rundir.seeds import Instance, SeedTask

Candidate = tuple[str, dict[str, Any]]  # (instruction text, where its prompt came from)
RejectFn = Callable[..., None]  # (stage, reason, text, *, task_level, **extra)
RawFn = Callable[[str, dict[str, Any]], None]  # (stage, record): --keep-raw
InstructionPrompt = instruction_stage.InstructionPrompt | alpaca_stage.AlpacaPrompt
TASK_KIND_EXCLUDED = "task_kind_excluded"  # --generation-tasks-only / --classification-tasks-only


class StageCalls:
    """The three stages' requests for one run; see the module docstring."""

    def __init__(self, config: Config, backend: Backend, templates: Templates,
                 seeds: Sequence[SeedTask], state: RunState, reject: RejectFn,
                 on_call: Callable[[CallFinished], None], on_raw: RawFn | None = None) -> None:
        self.config = config
        self.backend = backend
        self.templates = templates
        self.seeds = list(seeds)
        self.state = state
        self.reject = reject
        self.on_call = on_call
        self.on_raw = on_raw if config.keep_raw else None
        self.rules = rules_for(config.compat, config.filters)
        self.rng = random.Random(config.seed)
        self.requests = 0
        # --classification-seeds-only: the reference's --use_clf_seed_tasks_only
        self.seed_instructions = [t.instruction for t in self.seeds
                                  if t.is_classification or not config.classification_seeds_only]
        self.alpaca_answers: dict[str, Instance] = {}
        self.classify_examples = classify_stage.pick_classify_examples(self.seeds)
        self.input_first_examples = instance_stage.pick_instance_examples(self.seeds, False, 4)
        self.output_first_examples = instance_stage.pick_instance_examples(self.seeds, True, 3)

    async def call(self, stage: str, prompts: Sequence[StagePrompt],
                   sampling: Sampling) -> list[StageAnswer]:
        """The backend's answer, with a ``call_finished`` event either way."""
        start = time.monotonic()
        try:
            choices = await self.backend.complete(stage, prompts, sampling)
        except Exception as exc:
            self.on_call(CallFinished(stage, len(prompts), False, type(exc).__name__,
                                      time.monotonic() - start))
            raise
        self.on_call(CallFinished(stage, len(prompts), True, seconds=time.monotonic() - start))
        return choices

    def sampling(self, stage: str, stop: Sequence[str], max_tokens: int | None = None) -> Sampling:
        sc = self.config.stage(stage)
        self.requests += 1
        return Sampling(
            temperature=sc.temperature, top_p=sc.top_p,
            max_tokens=sc.max_tokens if max_tokens is None else max_tokens,
            presence_penalty=sc.presence_penalty, frequency_penalty=sc.frequency_penalty,
            stop=tuple(stop), seed=self.config.seed * 1_000_003 + self.requests,
        )

    # ------------------------------------------------------------------ instructions
    def instruction_request(
        self, count: int, machine_instructions: list[str]
    ) -> tuple[list[tuple[StagePrompt, InstructionPrompt]], Sampling]:
        """The prompts of one instruction request and its sampling (stop sequences
        after the next item number)."""
        if self.config.method == "alpaca":
            return self.alpaca_request(count)
        prompts = self.instruction_prompts(count, machine_instructions)
        stop = self.rules.instruction_stop(prompts[0][1].next_number)
        return list(prompts), self.sampling("instructions", stop)

    def alpaca_request(self, count: int) -> tuple[list[tuple[StagePrompt, InstructionPrompt]], Sampling]:
        """Alpaca's call: 3 seed tasks a prompt, whole tasks back (its sampling)."""
        out: list[tuple[StagePrompt, InstructionPrompt]] = []
        for _ in range(count):
            examples = alpaca_stage.choose_alpaca_examples(self.seeds, self.rng)
            prompt = alpaca_stage.build_alpaca_prompt(examples, self.templates)
            out.append((StagePrompt(prompt.text, self.templates.alpaca_chat_system), prompt))
        sampling = self.sampling("instructions", alpaca_stage.stop_sequences(),
                                 max_tokens=alpaca_stage.MAX_TOKENS)
        return out, dataclasses.replace(
            sampling, temperature=alpaca_stage.TEMPERATURE, top_p=alpaca_stage.TOP_P,
            presence_penalty=0.0, frequency_penalty=0.0)

    def instruction_prompts(
        self, count: int, machine_instructions: list[str]
    ) -> list[tuple[StagePrompt, instruction_stage.InstructionPrompt]]:
        out = []
        for _ in range(count):
            classification = (self.config.classification_seeds_only
                              or self.rng.random() < self.config.classification_share)
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

    def raw(self, stage: str, choice: StageAnswer, **fields: Any) -> None:
        """--keep-raw: the call's raw answer, shaped like ``selfinstruct parse``'s input."""
        if self.on_raw is not None:
            self.on_raw(stage, {"request_idx": self.requests, **fields, "text": choice.text,
                                "finish_reason": choice.finish_reason})

    def candidates_from(self, choice: StageAnswer, prompt: InstructionPrompt) -> list[Candidate]:
        """The answer's new instructions that pass the instruction filters; the others
        go to rejected.jsonl."""
        if isinstance(prompt, alpaca_stage.AlpacaPrompt):
            return self.alpaca_candidates(choice, prompt)
        self.raw("instructions", choice)
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
            "request_idx": self.requests,
        }
        out = []
        for item in self.rules.instruction_items(choice.text, choice.finish_reason):
            self.state.candidates_seen += 1
            if item.reason is not None:
                self.reject("filter", item.reason, item.text, task_level=False, detail=item.detail)
                continue
            out.append((item.text, source))
        return out

    def alpaca_candidates(self, choice: StageAnswer, prompt: alpaca_stage.AlpacaPrompt) -> list[Candidate]:
        """Whole tasks: the instruction goes to admission, its instance waits here."""
        self.raw("alpaca", choice, next_number=prompt.next_number)
        filters = alpaca_stage.alpaca_filter_config(self.config.filters)
        out: list[Candidate] = []
        for item in alpaca_stage.parse_alpaca(choice.text, prompt.next_number, choice.finish_reason, filters):
            self.state.candidates_seen += 1
            if item.reason is not None:
                self.reject("filter", item.reason, item.instruction, task_level=False, detail=item.detail)
                continue
            if item.instruction in self.alpaca_answers:
                self.reject("filter", "duplicate_instance", item.instruction, task_level=False)
                continue
            self.alpaca_answers[item.instruction] = Instance(item.input, item.output)
            out.append((item.instruction, {"request_idx": self.requests,
                                           "alpaca": {"input": item.input, "output": item.output}}))
        return out

    def remember(self, sources: dict[str, dict[str, Any]]) -> None:
        """Resume: the pending Alpaca tasks' instances, from their admission records."""
        for text, source in sources.items():
            answer = source.get("alpaca")
            if isinstance(answer, dict):
                self.alpaca_answers[text] = Instance(str(answer.get("input", "")), str(answer.get("output", "")))

    # ------------------------------------------------------------------ tasks
    async def classify(self, instruction: str) -> bool:
        """Yes or No; an answer that is neither (a cut one too) reads as No, as in the
        reference, and is counted."""
        prompt = classify_stage.build_classify_prompt(
            self.classify_examples, instruction, self.templates
        )
        sampling = self.sampling("classify", self.rules.classify_stop())
        (choice,) = await self.call(
            "classify", [StagePrompt(prompt, self.templates.classify_chat_system)], sampling
        )
        self.raw("classify", choice, instruction=instruction)
        if classify_stage.parse_classify_answer(choice.text) is None:
            if choice.finish_reason == "length":
                self.state.truncated_responses += 1
            else:
                self.state.classify_unparsed += 1
        answer = self.rules.is_classification(choice.text, choice.finish_reason)
        if answer:
            self.state.classified_yes += 1
        return answer

    async def instances(self, instruction: str, is_cls: bool) -> StageAnswer:
        """The instance call's answer (output-first for classification)."""
        if is_cls:
            prompt = instance_stage.build_output_first_prompt(
                self.output_first_examples, instruction, self.templates
            )
        else:
            prompt = instance_stage.build_input_first_prompt(
                self.input_first_examples, instruction, self.templates
            )
        max_tokens = self.rules.instance_max_tokens(self.config.stage("instances"), is_cls)
        sampling = self.sampling("instances", self.rules.instance_stop(), max_tokens)
        (choice,) = await self.call(
            "instances", [StagePrompt(prompt, self.templates.instances_chat_system)], sampling
        )
        self.raw("instances", choice, instruction=instruction, is_classification=is_cls)
        if choice.finish_reason == "length":
            self.state.truncated_responses += 1  # only its last, unfinished instance is lost
        return choice

    async def answer_task(self, task_id: str, instruction: str) -> TaskAnswer:
        """Classify, write instances, filter them. Instance-level and task-level
        rejections go to rejected.jsonl here; LLM errors propagate to the caller."""
        if self.config.method == "alpaca":
            return self.alpaca_answer(task_id, instruction)
        is_cls = await self.classify(instruction)
        wanted = self.config.task_kinds
        if (wanted == "generation" and is_cls) or (wanted == "classification" and not is_cls):
            self.reject("classify", TASK_KIND_EXCLUDED, instruction, task_level=True, id=task_id)
            return TaskAnswer(is_cls, [], dropped=True)
        choice = await self.instances(instruction, is_cls)
        outcome = self.rules.instances(choice.text, is_cls, choice.finish_reason)
        # The cap is a random sample; a generator per task keeps it repeatable whatever
        # order tasks finish in.
        kept, over = self.rules.cap(outcome.kept, random.Random(f"{self.config.seed}:{task_id}"))
        dropped = [*outcome.dropped, *((inst, OVER_INSTANCE_LIMIT) for inst in over)]
        for inst, reason in dropped:
            self.reject(
                "instance_filter", reason, instruction, task_level=False, id=task_id,
                instance={"input": inst.input, "output": inst.output},
            )
        if outcome.task_rejection is not None:
            self.reject("instances", outcome.task_rejection, instruction, task_level=True,
                        id=task_id)
            return TaskAnswer(is_cls, [], dropped=True)
        raw = choice.text if self.config.compat == "reference" else None
        return TaskAnswer(is_cls, kept, dropped=False, raw_instances=raw)

    def alpaca_answer(self, task_id: str, instruction: str) -> TaskAnswer:
        """The instance written with the instruction, through the instance filters."""
        instance = self.alpaca_answers.pop(instruction, None)
        if instance is None:  # an admission record without its instance (not ours)
            self.reject("instances", TRUNCATED, instruction, task_level=True, id=task_id)
            return TaskAnswer(False, [], dropped=True)
        verdict = check_instances([instance], self.config.filters)
        for inst, reason in verdict.dropped:
            self.reject("instance_filter", reason, instruction, task_level=False, id=task_id,
                        instance={"input": inst.input, "output": inst.output})
        if verdict.task_rejection is not None:
            self.reject("instances", verdict.task_rejection, instruction, task_level=True, id=task_id)
            return TaskAnswer(False, [], dropped=True)
        return TaskAnswer(False, list(verdict.kept), dropped=False)


@dataclass(frozen=True)
class TaskAnswer:
    """A task's answers after the filters; ``dropped``: rejected as a whole (recorded)."""

    is_classification: bool
    instances: list[Instance]
    dropped: bool
    raw_instances: str | None = None  # compat reference: the answer, as the reference stores it
