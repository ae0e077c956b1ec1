"""The Self-Instruct pipeline as an asyncio producer/consumer graph.

    instruction workers ──▶ candidates queue ──▶ admission (one consumer, dedup thread)
          ▲  (sample the growing pool)                   │ admitted queue
          └──────────────────────────────────────────────┘
    task workers: classify ─▶ instances (output-first | input-first) ─▶ filters ─▶ writer

Every queue is bounded, so a slow stage pushes back instead of growing memory. Admission
is the one ordered step: a single consumer hands candidates, in arrival order, to the
dedup pool's only owner (a thread, or the process of :mod:`.admission`), so decisions
equal a sequential run over the admission log and the event loop never blocks on ROUGE-L.
This class keeps the graph; a stage call lives in :mod:`.stage_calls`, when to ask for
more in :mod:`.supply`, the files' records in :mod:`.records`, reading a run directory
back in :mod:`.resume`, stop and drain in :mod:`.control`, plug-ins in :mod:`.seams`.

Repeatable runs: with ``max_in_flight == 1`` (and no coordinator) the stages take turns
as in the reference (ask, admit, finish every admitted task, ask again), so a fixed
``seed``, the same seeds and settings and a deterministic endpoint give the same files
byte for byte. With more in flight, admission follows the order answers arrive in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service.config import Config
from service.errors import BudgetExceeded, LLMError, RunDirError, is_fatal
from service.generate import control, records, resume, supply
from service.generate.backend import Backend
from service.generate.control import RunControl
from service.generate.records import NEAR_DUPLICATE, RunState, RunSummary
from service.generate.seams import (
    AdmissionBatch,
    AdmitFn,
    Coordinator,
    Observers,
    PendingTask,
    PipelineObserver,
    TaskChecks,
    timed_admit,
)
from service.generate.stage_calls import Candidate, StageCalls
from service.generate.templates import Templates, load_templates
from service.rundir.seeds import SeedTask
from service.rundir.store import INSTRUCTIONS, RAW_FILES, REJECTED, TASKS, RunDir


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
        observers: Sequence[PipelineObserver] = (),
    ) -> None:
        self.config = config
        self.backend = backend
        self.run_dir = run_dir
        self.seeds = list(seeds)
        self.coordinator = coordinator
        self.on_progress = on_progress
        self.drain_timeout_s = drain_timeout_s
        self.state = RunState()
        self.started = time.monotonic()
        self.machine_instructions: list[str] = []
        self.observers = Observers(observers)
        self.control = RunControl(self.observers)
        self.checks = TaskChecks()  # a finished task must pass these to be written
        self._admit = admit
        self._calls = StageCalls(config, backend, templates or load_templates(), self.seeds,
                                 self.state, self._reject, self.observers.call_finished,
                                 lambda stage, rec: self.run_dir.append(RAW_FILES[stage], rec))
        self._next_task_number = 1
        self._pending_resume: list[PendingTask] = []
        # Set once the resumed backlog is queued: a resumed run's new admissions wait behind it.
        self._pending_fed = asyncio.Event()
        self.flow = supply.Flow()
        # One request at a time: take turns (see the module docstring), so runs repeat.
        self.sequential = config.max_in_flight == 1 and coordinator is None
        self._dedup_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup")
        n_workers = max(1, config.in_flight_bound())
        self.n_task_workers = n_workers
        self.n_instruction_workers = max(1, min(64, n_workers // 4))
        self._candidates: asyncio.Queue[list[Candidate]] = asyncio.Queue(
            maxsize=max(8, self.n_instruction_workers * 2)
        )
        self._admitted: asyncio.Queue[PendingTask] = asyncio.Queue(maxsize=n_workers * 2)

    # ------------------------------------------------------------------ seams
    def add_observer(self, observer: PipelineObserver) -> None:
        """Subscribe to the run's events (see :class:`.seams.PipelineObserver`)."""
        self.observers.add(observer)

    def load_existing(self, back: resume.Resumed | None = None) -> list[str]:
        """Take up where the run directory says the run is (``back``, or read it now: see
        :mod:`.resume`); returns the admitted texts, in admission order."""
        back = back or resume.read_back(self.run_dir, distributed=self.coordinator is not None)
        self.state = back.state
        self._calls.state = back.state
        self.machine_instructions.extend(back.admitted_texts)
        self._next_task_number = max(self._next_task_number, back.next_task_number)
        self._pending_resume = back.pending
        self._calls.remember(back.sources)
        return back.admitted_texts

    def request_drain(self) -> None:
        """Ctrl-C / SIGTERM: start nothing new, let in-flight work finish, then stop."""
        self.control.request_drain()

    def request_stop(self, status: str) -> None:
        """Stop now with ``status``; everything written so far stays written."""
        self.control.request_stop(status)

    @property
    def status(self) -> str:
        return self.control.status

    @property
    def fatal(self) -> BaseException | None:
        return self.control.fatal

    @property
    def remaining(self) -> int:
        written = max(self.state.tasks_written, self.flow.global_written or 0)
        return max(0, self.config.target - written)

    @property
    def candidates_queued(self) -> int:
        """Parsed candidates waiting for admission."""
        return self.flow.queued_candidates

    @property
    def tasks_queued(self) -> int:
        """Admitted instructions waiting for a task worker."""
        return self._admitted.qsize()

    # ------------------------------------------------------------------ stages
    def _need_more_instructions(self) -> bool:
        return supply.need_more_instructions(self.flow.supply(
            self.remaining, self.state.tasks_written, stopping=self.control.stopping,
            sequential=self.sequential, distributed=self.coordinator is not None,
        ), self.flow.estimate)

    async def _instruction_worker(self) -> None:
        per_request = max(1, self.config.prompts_per_request)
        while True:
            while not self._need_more_instructions():
                if self.control.stopping:
                    return
                self.control.changed.clear()
                await self.control.changed.wait()
            prompts, sampling = self._calls.instruction_request(per_request,
                                                                self.machine_instructions)
            self.flow.inflight_prompts += len(prompts)
            try:
                choices = await self._calls.call("instructions", [p for p, _ in prompts], sampling)
            except BudgetExceeded:
                self.request_stop("budget")
                return
            except LLMError as exc:
                self.state.llm_failures += 1
                if is_fatal(exc):
                    self.control.fail(exc)
                    return
                continue
            finally:
                self.flow.inflight_prompts -= len(prompts)
            self.state.instruction_requests += 1
            batch: list[Candidate] = []
            for (_, prompt), choice in zip(prompts, choices, strict=True):
                batch.extend(self._calls.candidates_from(choice, prompt))
            # Bounded queue: blocks while admission is behind (back-pressure).
            self.flow.queued_candidates += len(batch)
            self.flow.batches_unadmitted += 1
            await self._candidates.put(batch)

    async def _admission_consumer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._candidates.get()
            self.flow.queued_candidates -= len(batch)
            if not batch:
                self.flow.batches_unadmitted -= 1
                self._note_yield(0, 0)
                continue
            texts = [t for t, _ in batch]
            # The pool lives in its own thread: ROUGE-L work never blocks the event loop.
            decisions, seconds = await loop.run_in_executor(
                self._dedup_executor, timed_admit, self._admit, texts
            )
            admitted_now = sum(1 for d in decisions if d.admitted)
            self.observers.admission(AdmissionBatch(len(texts), admitted_now, seconds))
            for (text, source), decision in zip(batch, decisions, strict=True):
                if not decision.admitted:
                    self._reject(
                        "dedup", NEAR_DUPLICATE, text, task_level=False,
                        matched=decision.match, score=decision.score,
                    )
                    continue
                task = PendingTask(decision.task_id or self._new_task_id(), text,
                                   decision.most_similar, avg_similarity=decision.avg_similarity)
                self.run_dir.append(INSTRUCTIONS, records.instruction_record(
                    task.id, text, decision.most_similar, decision.score, source,
                    decision.avg_similarity))
                self.state.instructions_admitted += 1
                self.machine_instructions.append(text)
                if self.coordinator is not None:
                    self.flow.global_unfinished += 1  # until the next poll counts it
                    continue  # the coordinator hands it out
                self.flow.in_progress += 1
                if not self._pending_fed.is_set():
                    await self._pending_fed.wait()
                await self._admitted.put(task)
            self.flow.batches_unadmitted -= 1
            self._note_yield(len(batch), admitted_now)

    def _note_yield(self, candidates: int, admitted: int) -> None:
        self.flow.estimate = supply.note_yield(
            self.flow.estimate, max(1, self.config.prompts_per_request), candidates, admitted
        )
        self.control.changed.set()

    def _new_task_id(self) -> str:
        self._next_task_number += 1
        return f"task_{self._next_task_number - 1:06d}"

    async def _task_worker(self) -> None:
        while True:
            task = await self._admitted.get()
            if self.control.stopping:
                # A drain starts no task: it stays pending for the next run. Taking it off
                # the queue lets admission record the answers already received.
                self.flow.in_progress -= 1
                continue
            finished = False
            self.flow.tasks_running += 1
            try:
                finished = await self._finish_task(task)
            finally:
                self.flow.tasks_running -= 1
                if finished:
                    self.flow.in_progress -= 1
                    self.flow.finished += 1
                    self.control.changed.set()

    async def _finish_task(self, task: PendingTask) -> bool:
        """Classify, write instances, filter, write. False: left pending for a later run."""
        try:
            answer = await self._calls.answer_task(task.id, task.instruction)
        except BudgetExceeded:
            self.request_stop("budget")
            return False
        except LLMError as exc:
            self.state.llm_failures += 1
            if is_fatal(exc):
                self.control.fail(exc)
                return False
            task.attempts += 1
            if task.attempts < 2 and not self.control.stopping:
                # put_nowait: a worker blocking on its own input queue could deadlock.
                with contextlib.suppress(asyncio.QueueFull):
                    self._admitted.put_nowait(task)
                    return False
            self.flow.in_progress -= 1  # left pending in instructions.jsonl for the next run
            self.control.changed.set()
            return False
        if answer.dropped:
            await self._settle(task, "dropped")
            return True
        if self.remaining == 0:
            return False  # target reached meanwhile: leave it pending, do not overshoot
        models = {s: self.backend.stage_model(s) for s in ("instructions", "classify", "instances")}
        record = records.task_record(task.id, task.instruction, answer.is_classification,
                                     answer.instances, task.most_similar, models,
                                     task.avg_similarity, answer.raw_instances)
        if (refused := self.checks.first_rejection(record)) is not None:
            self._reject(refused.stage, refused.reason, task.instruction, task_level=True,
                         id=task.id, **refused.detail)
            await self._settle(task, "dropped")
            return True
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
        self.observers.task_written(task.id)
        if self.state.tasks_written >= self.config.target:
            self.request_stop("finished")
        return True

    async def _settle(self, task: PendingTask, outcome: str) -> None:
        if self.coordinator is not None:
            await self.coordinator.settle(task, outcome)

    # ------------------------------------------------------------------ records
    def _reject(self, stage: str, reason: str, text: str, *, task_level: bool, **extra: Any) -> None:
        record = records.rejection_record(stage, reason, text, task_level=task_level, **extra)
        self.run_dir.append(REJECTED, record)
        self.state.rejected += 1
        self.state.rejected_by_reason[reason] += 1

    def run_json(self) -> dict[str, Any]:
        return records.run_json(self.status, self.config.redacted(), self.state,
                                self.backend.snapshot(), time.monotonic() - self.started)

    def write_run_json(self) -> None:
        self.run_dir.write_run_json(self.run_json())

    # ------------------------------------------------------------------ main
    async def run(self) -> RunSummary:
        """Run to the target (or a drain/stop), keeping run.json current; never raises
        for per-request failures. A fatal endpoint error ends the run as "failed"."""
        if self.coordinator is not None:
            self.flow.global_written = await self.coordinator.written()
        if self.remaining == 0:
            self.control.status = "finished"
            self.write_run_json()
            return RunSummary(self.status, self.state.as_dict(), 0.0)
        self.flow.in_progress = len(self._pending_resume)
        workers: list[asyncio.Task[None]] = []
        try:
            # The resumed backlog may exceed the bounded queue: feed it from a task.
            workers.append(asyncio.create_task(self._feed_pending(), name="resume-feeder"))
            if self.coordinator is not None:
                workers.append(asyncio.create_task(self._feed_coordinated(), name="work-feeder"))
                workers.append(asyncio.create_task(control.poll_coordinator(
                    self.coordinator, self.flow, lambda: self.remaining, self.control,
                ), name="global-count"))
            workers.append(asyncio.create_task(self._admission_consumer(), name="admission"))
            workers += [
                asyncio.create_task(self._task_worker(), name=f"task-{i}")
                for i in range(self.n_task_workers)
            ]
            workers += [
                asyncio.create_task(self._instruction_worker(), name=f"instructions-{i}")
                for i in range(self.n_instruction_workers)
            ]
            for worker in workers:
                worker.add_done_callback(self.control.on_worker_done)
            ticker = asyncio.create_task(self._ticker(), name="progress")
            await self.control.wait(self.flow.drain_waits, self.drain_timeout_s)
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
            self.control.status = "finished" if self.remaining == 0 else "interrupted"
            self.write_run_json()
        return RunSummary(self.status, self.state.as_dict(), time.monotonic() - self.started)

    async def _feed_coordinated(self) -> None:
        assert self.coordinator is not None
        async for task in self.coordinator.work():
            if self.control.stopping:
                return  # a drain leases no more; this lease expires and is reclaimed
            self.flow.in_progress += 1
            await self._admitted.put(task)  # bounded: the lease is taken only when there is room

    async def _feed_pending(self) -> None:
        try:
            for task in self._pending_resume:
                await self._admitted.put(task)
        finally:
            self._pending_fed.set()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(RunDirError, OSError):
                self.write_run_json()
            if self.on_progress is not None:
                self.on_progress(self)

