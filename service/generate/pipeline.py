"""The Self-Instruct pipeline as an asyncio producer/consumer graph.

    instruction workers ──▶ candidates queue ──▶ admission (one consumer, dedup thread)
          ▲  (sample the growing pool)                   │ admitted queue
          └──────────────────────────────────────────────┘
    task workers: classify ─▶ instances (output-first | input-first) ─▶ filters ─▶ writer

Every queue is bounded, so a slow stage pushes back instead of growing memory. Admission
is the one ordered step: a single consumer hands candidates, in arrival order, to the
dedup pool running in its own thread (the pool's only owner), so decisions equal a
sequential run over the admission log and the event loop never blocks on ROUGE-L.

Supply control: instruction workers only ask for more instructions while the expected
yield of the work already under way falls short of the target, so a run overshoots by
a few instructions, not by a whole wave of requests. Admitted instructions that a run
stops before finishing stay in instructions.jsonl and are picked up by the next run.

Repeatable runs: with ``max_in_flight == 1`` (and no coordinator) the stages take turns
as in the reference: ask for instructions, admit them, finish every admitted task, then
ask again. Nothing then depends on when answers arrive or when the dedup thread
finishes, so with a fixed ``seed``, the same seed tasks and settings and a deterministic
endpoint, tasks.jsonl, instructions.jsonl and rejected.jsonl come out the same byte for
byte (run.json differs in its timings). With more requests in flight, admission follows
the order answers arrive in, which no seed fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from service import __version__
from service.config import Config
from service.errors import BudgetExceeded, LLMError, RunDirError, SelfInstructError
from service.generate.backend import Backend, Choice, Sampling, StagePrompt
from service.generate.filters import clean_instruction, filter_instances, instruction_rejection
from service.generate.stages import classify as classify_stage
from service.generate.stages import instances as instance_stage
from service.generate.stages import instructions as instruction_stage
from service.generate.templates import Templates, load_templates
from service.rundir.seeds import Instance, SeedTask
from service.rundir.store import INSTRUCTIONS, REJECTED, SEEDS, TASKS, RunDir

TRUNCATED = "truncated_response"
NEAR_DUPLICATE = "near_duplicate"
LLM_FAILED = "llm_failed"


@dataclass
class Admission:
    """A normalised dedup decision, whatever the pool's own type is."""

    admitted: bool
    score: float
    match: str | None
    most_similar: dict[str, float]
    task_id: str | None = None  # set by a coordinator that numbers tasks globally


AdmitFn = Callable[[Sequence[str]], list[Admission]]


@dataclass
class PendingTask:
    id: str
    instruction: str
    most_similar: dict[str, float]
    attempts: int = 0
    ref: str | None = None  # the coordinator's handle (e.g. a Redis stream entry id)


class Coordinator(Protocol):
    """Several processes on one run (see service.generate.distributed). Admission goes through
    the ``admit`` function the coordinator built; admitted work is handed out by
    :meth:`work` (to any process), and a task is committed once, globally."""

    async def written(self) -> int:
        """Tasks written by all processes together."""
        ...

    async def unfinished(self) -> int:
        """Admitted instructions not yet written or dropped, by any process: the
        supply every process's instruction workers count on."""
        ...

    def work(self) -> AsyncIterator[PendingTask]:
        """Admitted instructions to finish (including ones reclaimed from dead workers)."""
        ...

    async def commit_task(self, task: PendingTask, record: dict[str, Any], target: int) -> bool:
        """Record the finished task unless it was already committed or the target is
        reached; True when this process should write it."""
        ...

    async def settle(self, task: PendingTask, outcome: str) -> None:
        """The task is finished here ("written", "dropped", "duplicate"): stop leasing it."""
        ...


@dataclass
class RunState:
    """Counters kept in run.json. The files stay the source of truth on resume."""

    tasks_written: int = 0
    instructions_admitted: int = 0
    rejected: int = 0
    candidates_seen: int = 0
    instruction_requests: int = 0
    truncated_responses: int = 0
    classify_unparsed: int = 0
    classified_yes: int = 0
    llm_failures: int = 0
    resumed_pending: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "rejected_by_reason"}
        data["rejected_by_reason"] = dict(sorted(self.rejected_by_reason.items()))
        return data


@dataclass(frozen=True)
class RunSummary:
    status: str  # "finished" | "interrupted" | "budget" | "failed"
    state: dict[str, Any]
    elapsed_s: float


class Pipeline:
    """One run of the method into one run directory. Create, then ``await run()``."""

    def __init__(
        self,
        config: Config,
        backend: Backend,
        run_dir: RunDir,
        seeds: Sequence[SeedTask],
        admit: AdmitFn,
        *,
        templates: Templates | None = None,
        on_progress: Callable[[Pipeline], None] | None = None,
        drain_timeout_s: float = 30.0,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.coordinator = coordinator
        self._global_written: int | None = None
        self.config = config
        self.backend = backend
        self.run_dir = run_dir
        self.seeds = list(seeds)
        self._admit = admit
        self.templates = templates or load_templates()
        self.on_progress = on_progress
        self.drain_timeout_s = drain_timeout_s
        self.state = RunState()
        self.rng = random.Random(config.seed)
        self.machine_instructions: list[str] = []
        self.seed_instructions = [t.instruction for t in self.seeds]
        self.classify_examples = classify_stage.pick_classify_examples(self.seeds)
        self.input_first_examples = instance_stage.pick_instance_examples(self.seeds, False, 4)
        self.output_first_examples = instance_stage.pick_instance_examples(self.seeds, True, 3)
        self.started = time.monotonic()
        self.status = "running"
        self.fatal: BaseException | None = None
        self._next_task_number = 1
        self._pending_resume: list[PendingTask] = []
        # Set once the resumed backlog is queued: new admissions queue behind it, so a
        # resumed run finishes what the last one left before anything it admits itself.
        self._pending_fed = asyncio.Event()
        self._in_progress = 0  # admitted, not yet written or rejected
        self._inflight_prompts = 0
        # Supply control estimates; the start guesses are deliberately high (a list
        # continuation of 8 examples yields up to 8 new items) so the first wave of
        # requests does not overshoot the target, then real counts take over.
        self._admitted_per_prompt = 4.0
        self._admit_ratio = 0.7  # admitted / candidates
        self._prompts_answered = 0
        self._candidates_total = 0
        self._admitted_total = 0
        self._queued_candidates = 0  # parsed, waiting for admission
        self._batches_unadmitted = 0  # candidate batches not yet through admission
        # One request at a time: take turns (see the module docstring), so runs repeat.
        self.sequential = config.max_in_flight == 1 and coordinator is None
        self._global_unfinished = 0  # a coordinator's admitted-not-finished count, polled
        self._finished_tasks = 0
        self._stop = asyncio.Event()  # target reached, budget hit or fatal error
        self._drain = asyncio.Event()  # a signal: finish in-flight work, start nothing new
        self._supply_changed = asyncio.Event()
        self._request_counter = 0
        self._dedup_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup")
        n_workers = max(1, config.in_flight_bound())
        self.n_task_workers = n_workers
        self.n_instruction_workers = max(1, min(64, n_workers // 4))
        self._candidates: asyncio.Queue[list[tuple[str, dict[str, Any]]]] = asyncio.Queue(
            maxsize=max(8, self.n_instruction_workers * 2)
        )
        self._admitted: asyncio.Queue[PendingTask] = asyncio.Queue(maxsize=n_workers * 2)

    # ------------------------------------------------------------------ resume
    def load_existing(self) -> list[str]:
        """Read the run directory back: admitted instructions, finished and dropped tasks.

        Returns the texts to pre-load into the dedup pool after the seeds (admission order).
        """
        admitted: list[dict[str, Any]] = self.run_dir.records(INSTRUCTIONS)
        done_ids = {rec["id"] for rec in self.run_dir.records(TASKS) if "id" in rec}
        rejected = self.run_dir.records(REJECTED)
        dropped_ids = {
            rec["id"] for rec in rejected if rec.get("task_level") and "id" in rec
        }
        self.state.tasks_written = len(done_ids)
        self.state.instructions_admitted = len(admitted)
        self.state.rejected = len(rejected)
        for rec in rejected:
            self.state.rejected_by_reason[str(rec.get("reason"))] += 1
        texts: list[str] = []
        for rec in admitted:
            text = str(rec["instruction"])
            texts.append(text)
            self.machine_instructions.append(text)
            number = _task_number(str(rec["id"]))
            self._next_task_number = max(self._next_task_number, number + 1)
            # A distributed run's pending work lives in Redis, not in this directory.
            if self.coordinator is None and rec["id"] not in done_ids and rec["id"] not in dropped_ids:
                self._pending_resume.append(
                    PendingTask(str(rec["id"]), text, dict(rec.get("most_similar") or {}))
                )
        self.state.resumed_pending = len(self._pending_resume)
        return texts

    # ------------------------------------------------------------------ control
    def request_drain(self) -> None:
        """Ctrl-C / SIGTERM: start nothing new, let in-flight work finish, then stop."""
        if not self._drain.is_set():
            self._drain.set()
            self.status = "interrupted"
            self._supply_changed.set()

    def _request_stop(self, status: str) -> None:
        if not self._stop.is_set():
            self.status = status
            self._stop.set()
            self._supply_changed.set()

    @property
    def remaining(self) -> int:
        written = self.state.tasks_written
        if self._global_written is not None:
            written = max(written, self._global_written)
        return max(0, self.config.target - written)

    @property
    def in_flight(self) -> int:
        return self._in_progress

    def _success_rate(self) -> float:
        if self._finished_tasks < 5:
            return 0.9
        return min(1.0, max(0.2, self.state.tasks_written / self._finished_tasks))

    def _need_more_instructions(self) -> bool:
        if self._stop.is_set() or self._drain.is_set() or self.remaining == 0:
            return False
        if self._prompts_answered == 0 and self._inflight_prompts > 0 and not self._in_progress:
            return False  # slow start: one request until the yield of a prompt is known
        if self.sequential and (self._in_progress or self._batches_unadmitted
                                or self._inflight_prompts):
            return False  # taking turns: the last batch is admitted and finished first
        rate = self._success_rate()
        # Distributed: the run's unfinished admissions (every process's, in-progress
        # ones included) replace the local count; each process adds its own requests.
        backlog = self._in_progress if self.coordinator is None else self._global_unfinished
        expected = (
            backlog
            + self._inflight_prompts * self._admitted_per_prompt
            + self._queued_candidates * self._admit_ratio
        )
        supply = expected * rate
        return supply < self.remaining * 1.1 + 1

    # ------------------------------------------------------------------ stages
    def _next_seed(self) -> int:
        self._request_counter += 1
        return self.config.seed * 1_000_003 + self._request_counter

    def _instruction_prompts(self, count: int) -> list[tuple[StagePrompt, instruction_stage.InstructionPrompt]]:
        out = []
        for _ in range(count):
            classification = self.rng.random() < self.config.classification_share
            seeds = self.seed_instructions
            if classification:
                cls_seeds = [t.instruction for t in self.seeds if t.is_classification]
                seeds = cls_seeds or seeds
            examples, n_seed, n_machine = instruction_stage.choose_examples(
                seeds,
                self.machine_instructions,
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

    def _sampling(self, stage: str, stop: Sequence[str]) -> Sampling:
        sc = self.config.stage(stage)
        return Sampling(
            temperature=sc.temperature, top_p=sc.top_p, max_tokens=sc.max_tokens,
            presence_penalty=sc.presence_penalty, frequency_penalty=sc.frequency_penalty,
            stop=tuple(stop), seed=self._next_seed(),
        )

    async def _instruction_worker(self) -> None:
        per_request = max(1, self.config.prompts_per_request)
        while True:
            while not self._need_more_instructions():
                if self._stop.is_set() or self._drain.is_set():
                    return
                self._supply_changed.clear()
                await self._supply_changed.wait()
            prompts = self._instruction_prompts(per_request)
            next_number = prompts[0][1].next_number
            sampling = self._sampling("instructions", instruction_stage.stop_sequences(next_number))
            self._inflight_prompts += len(prompts)
            try:
                choices = await self.backend.complete(
                    "instructions", [p for p, _ in prompts], sampling
                )
            except BudgetExceeded:
                self._request_stop("budget")
                return
            except LLMError as exc:
                self.state.llm_failures += 1
                if _is_fatal(exc):
                    self._fail(exc)
                    return
                continue
            finally:
                self._inflight_prompts -= len(prompts)
            self.state.instruction_requests += 1
            batch: list[tuple[str, dict[str, Any]]] = []
            for (_, prompt), choice in zip(prompts, choices, strict=True):
                batch.extend(self._candidates_from(choice, prompt))
            # Bounded queue: blocks while admission is behind (back-pressure).
            self._queued_candidates += len(batch)
            self._batches_unadmitted += 1
            await self._candidates.put(batch)

    def _candidates_from(
        self, choice: Choice, prompt: instruction_stage.InstructionPrompt
    ) -> list[tuple[str, dict[str, Any]]]:
        if choice.finish_reason == "length":
            # The reference discards a cut response whole: its last item is unreliable
            # and the stop at item 16 never fired.
            self.state.truncated_responses += 1
            self._reject("instructions", TRUNCATED, choice.text[:2000], task_level=False)
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
                self._reject("filter", reason, text, task_level=False, detail=detail)
                continue
            out.append((text, source))
        return out

    async def _admission_consumer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._candidates.get()
            self._queued_candidates -= len(batch)
            if not batch:
                self._batches_unadmitted -= 1
                self._note_yield(0, 0)
                continue
            texts = [t for t, _ in batch]
            # The pool lives in its own thread: ROUGE-L work never blocks the event loop.
            decisions = await loop.run_in_executor(self._dedup_executor, self._admit, texts)
            admitted_now = 0
            for (text, source), decision in zip(batch, decisions, strict=True):
                if not decision.admitted:
                    self._reject(
                        "dedup", NEAR_DUPLICATE, text, task_level=False,
                        matched=decision.match, score=decision.score,
                    )
                    continue
                admitted_now += 1
                task = PendingTask(decision.task_id or self._new_task_id(), text,
                                   decision.most_similar)
                self.run_dir.append(INSTRUCTIONS, {
                    "id": task.id, "instruction": text, "most_similar": decision.most_similar,
                    "max_score": decision.score, "source": source,
                })
                self.state.instructions_admitted += 1
                self.machine_instructions.append(text)
                if self.coordinator is not None:
                    self._global_unfinished += 1  # until the next poll counts it
                    continue  # the coordinator hands it out
                self._in_progress += 1
                if not self._pending_fed.is_set():
                    await self._pending_fed.wait()
                await self._admitted.put(task)
            self._batches_unadmitted -= 1
            self._note_yield(len(batch), admitted_now)

    def _note_yield(self, candidates: int, admitted: int) -> None:
        self._prompts_answered += max(1, self.config.prompts_per_request)
        self._candidates_total += candidates
        self._admitted_total += admitted
        if self._candidates_total:
            self._admit_ratio = self._admitted_total / self._candidates_total
        # Cumulative, floored: a run of bad answers must not stall generation for good.
        self._admitted_per_prompt = max(0.2, self._admitted_total / self._prompts_answered)
        self._supply_changed.set()

    def _new_task_id(self) -> str:
        number = self._next_task_number
        self._next_task_number += 1
        return f"task_{number:06d}"

    async def _task_worker(self) -> None:
        while True:
            task = await self._admitted.get()
            finished = False
            try:
                finished = await self._finish_task(task)
            finally:
                if finished:
                    self._in_progress -= 1
                    self._finished_tasks += 1
                    self._supply_changed.set()

    async def _finish_task(self, task: PendingTask) -> bool:
        """Classify, write instances, filter, write. False: left pending for a later run."""
        try:
            answer = await self._classify(task.instruction)
            instances: list[Instance] = []
            if answer is None:  # a cut classify answer: nothing of it is used
                is_cls, truncated, cut_stage = False, True, "classify"
            else:
                is_cls, cut_stage = answer, "instances"
                instances, truncated = await self._instances(task.instruction, is_cls)
        except BudgetExceeded:
            self._request_stop("budget")
            return False
        except LLMError as exc:
            self.state.llm_failures += 1
            if _is_fatal(exc):
                self._fail(exc)
                return False
            task.attempts += 1
            if task.attempts < 2 and not self._stop.is_set():
                # put_nowait: a worker blocking on its own input queue could deadlock.
                with contextlib.suppress(asyncio.QueueFull):
                    self._admitted.put_nowait(task)
                    return False
            self._in_progress -= 1  # left pending in instructions.jsonl for the next run
            self._supply_changed.set()
            return False
        if truncated:
            self.state.truncated_responses += 1
            self._reject(cut_stage, TRUNCATED, task.instruction, task_level=True, id=task.id)
            await self._settle(task, "dropped")
            return True
        verdict = filter_instances(instances, self.config.filters)
        for inst, reason in verdict.dropped:
            self._reject(
                "instance_filter", reason, task.instruction, task_level=False, id=task.id,
                instance={"input": inst.input, "output": inst.output},
            )
        if verdict.task_rejection is not None:
            self._reject("instances", verdict.task_rejection, task.instruction, task_level=True, id=task.id)
            await self._settle(task, "dropped")
            return True
        if self.remaining == 0:
            return False  # target reached meanwhile: leave it pending, do not overshoot
        record = {
            "id": task.id,
            "instruction": task.instruction,
            "is_classification": is_cls,
            "instances": [{"input": i.input, "output": i.output} for i in verdict.kept],
            "most_similar": task.most_similar,
            "meta": {
                "model": self.backend.stage_model("instructions"),
                "stage_models": {s: self.backend.stage_model(s) for s in ("classify", "instances")},
            },
        }
        # Committed once, globally, before the local copy: a duplicate (a task reclaimed
        # from a worker that was only slow) or a full target writes nothing.
        if self.coordinator is not None and not await self.coordinator.commit_task(
            task, record, self.config.target
        ):
            await self.coordinator.settle(task, "duplicate")
            return True
        self.run_dir.append(TASKS, record)
        if self.coordinator is not None:
            await self.coordinator.settle(task, "written")
        self.state.tasks_written += 1
        if self.state.tasks_written >= self.config.target:
            self._request_stop("finished")
        return True

    async def _settle(self, task: PendingTask, outcome: str) -> None:
        if self.coordinator is not None:
            await self.coordinator.settle(task, outcome)

    async def _classify(self, instruction: str) -> bool | None:
        """Yes/No; None when the answer was cut (``length``) before a Yes or No: such a
        response is unusable (max_tokens is tiny here, so a cut answer that does start
        with Yes/No is still read)."""
        prompt = classify_stage.build_classify_prompt(
            self.classify_examples, instruction, self.templates
        )
        sampling = self._sampling("classify", ["\n"])
        (choice,) = await self.backend.complete(
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

    async def _instances(self, instruction: str, is_cls: bool) -> tuple[list[Instance], bool]:
        if is_cls:
            prompt = instance_stage.build_output_first_prompt(
                self.output_first_examples, instruction, self.templates
            )
        else:
            prompt = instance_stage.build_input_first_prompt(
                self.input_first_examples, instruction, self.templates
            )
        sampling = self._sampling("instances", ["\nTask:", "\n\n\n"])
        (choice,) = await self.backend.complete(
            "instances", [StagePrompt(prompt, self.templates.instances_chat_system)], sampling
        )
        if choice.finish_reason == "length":
            return [], True
        parse = instance_stage.parse_output_first if is_cls else instance_stage.parse_input_first
        return parse(choice.text), False

    # ------------------------------------------------------------------ records
    def _reject(self, stage: str, reason: str, text: str, *, task_level: bool, **extra: Any) -> None:
        record: dict[str, Any] = {"stage": stage, "reason": reason, "text": text}
        if task_level:
            record["task_level"] = True
        record.update({k: v for k, v in extra.items() if v is not None and v != ""})
        self.run_dir.append(REJECTED, record)
        self.state.rejected += 1
        self.state.rejected_by_reason[reason] += 1

    def _fail(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self._request_stop("failed")

    def run_json(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "status": self.status,
            "config": self.config.redacted(),
            "counters": self.state.as_dict(),
            "usage": self.backend.snapshot(),
            "timings": {"elapsed_s": round(time.monotonic() - self.started, 3)},
        }

    def write_run_json(self) -> None:
        self.run_dir.write_run_json(self.run_json())

    # ------------------------------------------------------------------ main
    async def run(self) -> RunSummary:
        """Run to the target (or a drain/stop), keeping run.json current; never raises
        for per-request failures. A fatal endpoint error ends the run as "failed"."""
        if self.coordinator is not None:
            self._global_written = await self.coordinator.written()
        if self.remaining == 0:
            self.status = "finished"
            self.write_run_json()
            return RunSummary(self.status, self.state.as_dict(), 0.0)
        self._in_progress = len(self._pending_resume)
        workers: list[asyncio.Task[None]] = []
        try:
            # The resumed backlog may exceed the bounded queue: feed it from a task.
            feeder = asyncio.create_task(self._feed_pending(), name="resume-feeder")
            workers.append(feeder)
            if self.coordinator is not None:
                workers.append(asyncio.create_task(self._feed_coordinated(), name="work-feeder"))
                workers.append(asyncio.create_task(self._watch_global(), name="global-count"))
            workers.append(asyncio.create_task(self._admission_consumer(), name="admission"))
            workers += [
                asyncio.create_task(self._task_worker(), name=f"task-{i}")
                for i in range(self.n_task_workers)
            ]
            producers = [
                asyncio.create_task(self._instruction_worker(), name=f"instructions-{i}")
                for i in range(self.n_instruction_workers)
            ]
            workers += producers
            for worker in workers:
                # A stage that dies of an unexpected error must end the run, not leave
                # the others waiting for it for ever.
                worker.add_done_callback(self._on_worker_done)
            ticker = asyncio.create_task(self._ticker(), name="progress")
            await self._wait_until_done()
            ticker.cancel()
        finally:
            for w in workers:
                w.cancel()
            # Cancellation must reach every worker before the run directory closes, so
            # no append can land after run.json is final.
            await asyncio.gather(*workers, return_exceptions=True)
            with contextlib.suppress(Exception):
                self._dedup_executor.shutdown(wait=True, cancel_futures=True)
            self.write_run_json()
        if self.status == "running":
            self.status = "finished" if self.remaining == 0 else "interrupted"
            self.write_run_json()
        return RunSummary(self.status, self.state.as_dict(), time.monotonic() - self.started)

    async def _feed_coordinated(self) -> None:
        assert self.coordinator is not None
        async for task in self.coordinator.work():
            self._in_progress += 1
            await self._admitted.put(task)  # bounded: the lease is taken only when there is room

    def _on_worker_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc)

    async def _watch_global(self) -> None:
        assert self.coordinator is not None
        failures = 0
        while True:
            try:
                self._global_written = await self.coordinator.written()
                if self.remaining == 0:
                    self._request_stop("finished")
                    return
                self._global_unfinished = await self.coordinator.unfinished()
                failures = 0
            except Exception as exc:  # e.g. redis.ConnectionError, socket errors, timeouts
                # The coordinator is unreachable: keep trying for a while, then fail the
                # run (unfinished work stays leased in Redis for another process).
                failures += 1
                if failures >= _COORDINATOR_RETRIES:
                    raise SelfInstructError(f"the coordinator is unreachable: {exc}") from exc
            self._supply_changed.set()
            await asyncio.sleep(0.2 if failures == 0 else 1.0)

    async def _feed_pending(self) -> None:
        try:
            for task in self._pending_resume:
                await self._admitted.put(task)
        finally:
            self._pending_fed.set()

    async def _wait_until_done(self) -> None:
        stop = asyncio.create_task(self._stop.wait())
        drain = asyncio.create_task(self._drain.wait())
        try:
            await asyncio.wait({stop, drain}, return_when=asyncio.FIRST_COMPLETED)
            if self._drain.is_set() and not self._stop.is_set():
                # Let in-flight task work finish (bounded), then stop.
                deadline = time.monotonic() + self.drain_timeout_s
                while self._busy() and time.monotonic() < deadline and not self._stop.is_set():
                    await asyncio.sleep(0.05)
        finally:
            stop.cancel()
            drain.cancel()

    def _busy(self) -> bool:
        return self._inflight_prompts > 0 or not self._admitted.empty() or self._in_progress_running()

    def _in_progress_running(self) -> bool:
        # Tasks taken by a worker and not yet finished: in_progress minus queued ones.
        return self._in_progress - self._admitted.qsize() > 0

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(RunDirError, OSError):
                self.write_run_json()
            if self.on_progress is not None:
                self.on_progress(self)


_COORDINATOR_RETRIES = 30  # about 30 s of failed polls before a distributed run gives up


def _task_number(task_id: str) -> int:
    try:
        return int(task_id.rsplit("_", 1)[-1])
    except ValueError:
        return 0


def _is_fatal(exc: SelfInstructError) -> bool:
    """A 4xx other than 429 (bad key, unknown model, bad request) will not get better."""
    return bool(getattr(exc, "fatal", False)) or type(exc).__name__ in {
        "ClientRequestError", "AuthenticationError", "NotFoundError", "PermissionDeniedError",
    }


def seeds_for_run(run_dir: RunDir, seeds: Sequence[SeedTask]) -> list[SeedTask]:
    """Record the seeds in the run directory on first use; on resume, use the recorded ones
    so a changed --seed-tasks file cannot silently change a run half-way."""
    recorded = run_dir.records(SEEDS)
    if recorded:
        return [SeedTask.from_json(r) for r in recorded]
    # All at once: a crash part-way through must not leave a part of the seeds for the
    # next run to take as the whole.
    run_dir.write_all(SEEDS, [task.to_json() for task in seeds])
    return list(seeds)


def eta_seconds(pipeline: Pipeline) -> float | None:
    elapsed = time.monotonic() - pipeline.started
    written = pipeline.state.tasks_written
    if written == 0 or elapsed <= 0:
        return None
    return pipeline.remaining / (written / elapsed) if written else math.inf
