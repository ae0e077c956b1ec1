"""`generate --mode batch`: the Self-Instruct loop in rounds of Batch API files.

Each round is one set of batch files holding, side by side,

    instruction requests   sampled from the pool as it stands (6 seeds + 2 generated,
                           the same prompts as online), as many as the expected yield
                           toward the target needs (bounded by batch_max_requests)
    classification         for the instructions admitted in the previous round
    instances              for the tasks classified in the previous round
    resubmissions          failed lines and lines an expired batch did not run, by
                           custom_id, in a batch file of their own

so stages overlap and a run takes about (rounds + 2) turnarounds. When every batch of a
round has finished, its answers are processed in custom_id order (instructions, then
classifications, then instances): admission never depends on when answers arrived, so a
fixed --seed and a deterministic endpoint give the same files byte for byte.

Never pays twice: every step is in the batch journal (service.rundir.batch_journal)
before the next starts. A resumed run (after kill -9 anywhere) submits only batches the
journal says were never created (looking the provider up first when the kill may have
come mid-create), polls the rest, and re-processes a half-processed round after cutting
the run's files back to where that round began.

Deliberate differences from online mode: all instruction requests of a round sample the
same pool (online, each request sees every admission before it); round sizes follow the
measured yield, so a run may overshoot the target by part of a round's tasks, which are
left admitted-but-unfinished in instructions.jsonl (as online leaves its in-flight work).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from service.config import Config
from service.errors import ConfigError, InputError, RunDirError, SelfInstructError
from service.generate.admission import make_admit
from service.generate.batch_requests import BatchRequests, split_files
from service.generate.batch_transport import (
    BatchTransport,
    FilesTransport,
    OpenAITransport,
    journal_finished,
    submitted_age,
    write_whole,
)
from service.generate.filters import (
    OVER_INSTANCE_LIMIT,
)
from service.generate.llm_backend import DEFAULT_MODEL, prices_of
from service.generate.plan import plan_for_run
from service.generate.processing import rules_for
from service.generate.records import (
    NEAR_DUPLICATE,
    TRUNCATED,
    RunState,
    RunSummary,
    instruction_record,
    rejection_record,
    run_json,
    task_record,
)
from service.generate.resume import seeds_for_run
from service.generate.seams import AdmitFn, PendingTask
from service.generate.stage_calls import TASK_KIND_EXCLUDED
from service.generate.stages import classify as classify_stage
from service.generate.templates import Templates, load_templates
from service.llm.accounting import Accounting, BudgetSettings
from service.llm.batch import (
    TERMINAL,
    BatchClient,
    LineResult,
    first_choice,
    iter_lines,
    parse_result_file,
    request_line,
)
from service.llm.usage import usage_of
from service.progress import Progress, format_count, format_eta
from service.rundir.batch_journal import (
    FINISHED,
    PREPARED,
    PROCESSED,
    PROCESSING,
    SUBMITTED,
    BatchEntry,
    BatchJournal,
    file_sizes,
    roll_back,
)
from service.rundir.seeds import SeedTask
from service.rundir.store import INSTRUCTIONS, REJECTED, TASKS, RunDir

RUN_FILES = (TASKS, INSTRUCTIONS, REJECTED)
MAX_LINE_ATTEMPTS = 8  # a custom_id failed this often is given up (its task stays pending)
MAX_IDLE_ROUNDS = 50  # rounds in a row with no new admission and no new task: give up
START_ADMITTED_PER_REQUEST = 4.0  # until the first round measures it
START_SUCCESS_RATE = 0.9
SUPPLY_MARGIN = 1.1  # instruction requests: a round too few costs a whole turnaround
ADVANCE_MARGIN = 1.0  # admitted tasks sent on to classify/instances: each one costs money


class BatchRun:
    """One batch-mode run into one run directory; ``await run()``."""

    def __init__(self, config: Config, run_dir: RunDir, seeds: Sequence[SeedTask],
                 admit: AdmitFn, transport: BatchTransport, journal: BatchJournal,
                 *, templates: Templates | None = None,
                 on_progress: Callable[[BatchRun], None] | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.seeds = list(seeds)
        self.admit = admit
        self.transport = transport
        self.journal = journal
        self.templates = templates or load_templates()
        self.on_progress = on_progress
        self.accounting = Accounting(prices_of(config), BudgetSettings(
            max_total_tokens=config.max_total_tokens, budget_usd=config.budget_usd))
        self.state = RunState()
        self.status = "running"
        self.started = time.monotonic()
        self.machine_instructions: list[str] = []
        self.rules = rules_for(config.compat, config.filters)  # the run's compat mode
        self.requests = BatchRequests(config, self.seeds, self.templates, self.rules)
        self.pending: dict[str, PendingTask] = {}  # admitted, not written nor dropped
        self._next_task_number = 1
        self._drain = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup")
        # yield estimates (supply control)
        self._requests_answered = 0
        self._admitted_from_requests = 0
        self._finished_tasks = 0
        self._written_tasks = 0
        # live view for progress
        self.round = journal.last_round()
        self.batch_states: Counter[str] = Counter()
        self.lines_done = 0
        self.lines_failed = 0
        self._idle_rounds = 0
        self.plan: dict[str, Any] | None = None  # the estimate, kept next to the actuals

    # ------------------------------------------------------------------ resume
    def load_existing(self) -> None:
        """Rebuild the run's state from its files (after any half-processed round was
        cut back by :func:`open_batch_run`)."""
        admitted = self.run_dir.records(INSTRUCTIONS)
        done = {str(r["id"]) for r in self.run_dir.records(TASKS) if "id" in r}
        rejected = self.run_dir.records(REJECTED)
        dropped = {str(r["id"]) for r in rejected if r.get("task_level") and "id" in r}
        self.state.tasks_written = len(done)
        self.state.instructions_admitted = len(admitted)
        self.state.rejected = len(rejected)
        for rec in rejected:
            self.state.rejected_by_reason[str(rec.get("reason"))] += 1
        for rec in admitted:
            text = str(rec["instruction"])
            self.machine_instructions.append(text)
            task_id = str(rec["id"])
            self._next_task_number = max(self._next_task_number, _task_number(task_id) + 1)
            if task_id not in done and task_id not in dropped:
                avg = rec.get("avg_similarity_score")
                self.pending[task_id] = PendingTask(
                    task_id, text, dict(rec.get("most_similar") or {}),
                    avg_similarity=float(avg) if isinstance(avg, int | float) else None)
        self.state.resumed_pending = len(self.pending)

    # ------------------------------------------------------------------ control
    def request_drain(self) -> None:
        """Ctrl-C / SIGTERM: stop waiting; submitted batches are polled by the next run."""
        self.status = "interrupted"
        self._drain.set()

    @property
    def remaining(self) -> int:
        return max(0, self.config.target - self.state.tasks_written)

    def _success_rate(self) -> float:
        if self._finished_tasks < 5:
            return START_SUCCESS_RATE
        return min(1.0, max(0.2, self._written_tasks / self._finished_tasks))

    def _admitted_per_request(self) -> float:
        if self._requests_answered == 0:
            return START_ADMITTED_PER_REQUEST
        return max(0.2, self._admitted_from_requests / self._requests_answered)

    # ------------------------------------------------------------------ requests
    def _stuck(self, task_id: str) -> bool:
        view = self.journal.view
        return any(view.attempts.get(f"{task_id}-{s}", 0) >= MAX_LINE_ATTEMPTS
                   and f"{task_id}-{s}" in view.retry for s in ("classify", "instances"))

    def plan_round(self, number: int) -> list[list[tuple[dict[str, Any], str, bytes]]]:
        """The round's batch files: [resubmissions], then new work split at the limits.
        Each line is (journal item, endpoint, request line)."""
        view = self.journal.view
        prepared = self.journal.prepared_ids()
        retryable = {cid for cid in view.retry if view.attempts.get(cid, 0) < MAX_LINE_ATTEMPTS}
        retry: list[str] = []
        new: list[tuple[dict[str, Any], str, dict[str, Any]]] = []
        rate = self._success_rate()
        # Advance only as many admitted tasks as the target needs (oldest first): extra
        # admissions stay pending instead of paying for their classify and instances;
        # a failed line is resubmitted only while its task is still needed.
        wanted = math.ceil(self.remaining / rate * ADVANCE_MARGIN)
        supply = 0
        for task_id in sorted(self.pending):
            task = self.pending[task_id]
            if self._stuck(task_id) or supply >= wanted:
                continue
            supply += 1
            classify_id, instances_id = f"{task_id}-classify", f"{task_id}-instances"
            if classify_id in retryable:
                retry.append(classify_id)
            elif instances_id in retryable:
                retry.append(instances_id)
            elif task_id in view.classified:
                if instances_id not in prepared:
                    new.append(self.requests.instances_line(task, view.classified[task_id]))
            elif classify_id not in prepared:
                new.append(self.requests.classify_line(task))
        deficit = self.remaining - supply * rate
        count = 0
        if deficit > 0:
            count = math.ceil(deficit / rate / self._admitted_per_request() * SUPPLY_MARGIN)
        count = min(count, self.config.batch_max_requests)
        # failed instruction requests first, then new ones, up to what the round needs
        failed_requests = sorted(cid for cid in retryable
                                 if self._stage_of(cid) == "instructions")[:count]
        retry += failed_requests
        count -= len(failed_requests)
        if self.remaining and not new and not retry:
            count = max(count, 1)
        files: list[list[tuple[dict[str, Any], str, bytes]]] = []
        if retry:  # resubmissions go alone, in files of their own
            files += split_files(self._original_lines(sorted(retry)),
                                 self.config.batch_max_requests)
        new = self.requests.instruction_lines(number, count, self.machine_instructions) + new
        files += split_files([(item, ep, request_line(item["custom_id"], ep, body))
                              for item, ep, body in new], self.config.batch_max_requests)
        return files

    def _stage_of(self, custom_id: str) -> str:
        view = self.journal.view
        return str(view.batches[view.retry[custom_id]].items[custom_id].get("stage"))

    def _original_lines(self, custom_ids: Sequence[str]
                        ) -> list[tuple[dict[str, Any], str, bytes]]:
        """The request lines as first sent (from the run directory's input files)."""
        view = self.journal.view
        wanted = {cid: view.retry[cid] for cid in custom_ids}
        found: dict[str, tuple[dict[str, Any], str, bytes]] = {}
        for key in sorted(set(wanted.values())):
            entry = view.batches[key]
            path = self.run_dir.path / entry.input
            for number, raw in iter_lines(path):
                try:
                    cid = orjson.loads(raw)["custom_id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    raise InputError(str(path), number, "custom_id", "unreadable") from None
                if wanted.get(cid) == key:
                    found[cid] = (entry.items[cid], entry.endpoint, raw.rstrip(b"\n"))
        missing = [cid for cid in custom_ids if cid not in found]
        if missing:
            raise RunDirError(f"{self.journal.path}: request lines of {missing[:3]} are missing "
                              "from the run's batch input files")
        return [found[cid] for cid in custom_ids]

    def prepare_round(self, number: int) -> list[BatchEntry]:
        """Write the round's input files and journal them (nothing is sent yet)."""
        entries = []
        for lines in self.plan_round(number):
            key = self.journal.next_key()
            rel = f"batches/{key}.input.jsonl"
            data = b"".join(raw + b"\n" for _, _, raw in lines)
            write_whole(self.run_dir.path / rel, data)
            self.journal.record({"event": PREPARED, "key": key, "round": number,
                                 "endpoint": lines[0][1], "input": rel,
                                 "items": [item for item, _, _ in lines]})
            entries.append(self.journal.view.batches[key])
        return entries

    # ------------------------------------------------------------------ waiting
    async def await_round(self, number: int, *, resumed: bool) -> bool:
        """Submit what is not submitted, poll until every batch is final and fetched.
        False when a drain interrupted the wait."""
        entries = self.journal.round_batches(number)
        for entry in entries:
            if entry.state not in (SUBMITTED, FINISHED):
                data = (self.run_dir.path / entry.input).read_bytes()
                await self.transport.submit(entry, data, resumed=resumed)
        started = time.monotonic()
        polled: dict[str, tuple[str, int, int]] = {}
        while True:
            for entry in entries:
                if entry.state == FINISHED:
                    continue
                status, ok, bad = await self.transport.poll(entry)
                polled[entry.key] = (status, ok, bad)
                if status in TERMINAL:
                    files = self.journal.files
                    ids = await self.transport.fetch(entry, files / f"{entry.key}.output.jsonl",
                                                     files / f"{entry.key}.errors.jsonl")
                    journal_finished(self.journal, entry, status, ids,
                                     time.monotonic() - started)
                    if status == "failed":  # the provider rejected the file as a whole
                        raise SelfInstructError(
                            f"batch {entry.batch_id} ({entry.key}, round {number}) failed at "
                            "the provider (its input was rejected; see GET /v1/batches/"
                            f"{entry.batch_id} for the errors); fix the cause and run again: "
                            "its lines are resubmitted, nothing else is")
                elif submitted_age(entry) > self.config.batch_timeout:
                    await self.transport.cancel(entry)
            self.batch_states = Counter(
                (e.status or "?") if e.state == FINISHED else polled.get(e.key, (e.state,))[0]
                for e in entries)
            self.lines_done = sum(p[1] for p in polled.values())
            self.lines_failed = sum(p[2] for p in polled.values())
            self._tick()
            if all(e.state == FINISHED for e in entries):
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain.wait(), self.config.batch_poll_seconds)
            if self._drain.is_set():
                return False

    # ------------------------------------------------------------------ processing
    def _results(self, number: int) -> tuple[list[tuple[LineResult, dict[str, Any]]],
                                             dict[str, str]]:
        """Every answer of the round with its journal item, in custom_id order, and the
        custom_ids to resubmit (failed, expired, or missing from the output)."""
        results: list[tuple[LineResult, dict[str, Any]]] = []
        retry: dict[str, str] = {}
        for entry in self.journal.round_batches(number):
            seen: dict[str, LineResult] = {}
            for name in (f"{entry.key}.output.jsonl", f"{entry.key}.errors.jsonl"):
                path = self.journal.files / name
                if not path.exists():
                    continue
                for line in parse_result_file(path, known=entry.items):
                    if line.custom_id in seen:
                        raise InputError(str(path), None, "custom_id",
                                         f"{line.custom_id!r} is in both the output and "
                                         "the error file")
                    seen[line.custom_id] = line
            for cid, item in entry.items.items():
                result = seen.get(cid)
                if result is None or not result.ok:
                    retry[cid] = entry.key
                    if result is not None and not result.expired:
                        self.state.llm_failures += 1
                    continue
                results.append((result, item))
        results.sort(key=lambda pair: pair[0].custom_id)
        return results, retry

    async def process_round(self, number: int) -> None:
        """Write the round's answers to the run's files (idempotent: see the journal)."""
        results, retry = self._results(number)
        self.journal.record({"event": PROCESSING, "round": number,
                             "sizes": file_sizes(self.run_dir.path, RUN_FILES)})
        admitted_before = self.state.instructions_admitted
        written_before = self.state.tasks_written
        for result, item in results:
            body = result.body or {}
            usage = usage_of(body.get("usage"))
            if usage is not None:
                model = str(body.get("model") or self.config.model or DEFAULT_MODEL)
                self.accounting.record_usage(model, usage.prompt_tokens,
                                             usage.completion_tokens, usage.cached_tokens,
                                             batch=True)
                self.accounting.record_stage(str(item["stage"]), usage.prompt_tokens,
                                             usage.completion_tokens, usage.cached_tokens)
            self.accounting.record_call(True)
        await self._process_instructions([(r, i) for r, i in results
                                          if i["stage"] == "instructions"])
        classified = self._process_classify([(r, i) for r, i in results
                                             if i["stage"] == "classify"])
        self._process_instances([(r, i) for r, i in results if i["stage"] == "instances"])
        self.journal.record({"event": PROCESSED, "round": number, "classified": classified,
                             "retry": retry})
        progressed = (self.state.instructions_admitted > admitted_before
                      or self.state.tasks_written > written_before)
        self._idle_rounds = 0 if progressed else self._idle_rounds + 1

    async def _process_instructions(self, results: list[tuple[LineResult, dict[str, Any]]]
                                    ) -> None:
        """As online (stage_calls.candidates_from): a cut list is dropped whole, the run's
        compat rules split and filter the items, the pool admits them in order."""
        candidates: list[tuple[str, dict[str, Any]]] = []
        for result, item in results:
            self.state.instruction_requests += 1
            text, finish = first_choice(result.body or {},
                                        self.requests.chat(str(item["stage"])))
            if finish == "length":
                self.state.truncated_responses += 1
                self._reject("instructions", TRUNCATED, text[:2000], task_level=False)
                continue
            source = {"seed_examples": item.get("seed_examples"),
                      "machine_examples": item.get("machine_examples"),
                      "classification_prompt": item.get("classification_prompt"),
                      "custom_id": result.custom_id}
            for verdict in self.rules.instruction_items(text, finish):
                self.state.candidates_seen += 1
                if verdict.reason is not None:
                    self._reject("filter", verdict.reason, verdict.text, task_level=False,
                                 detail=verdict.detail)
                    continue
                candidates.append((verdict.text, source))
        if candidates:
            loop = asyncio.get_running_loop()
            decisions = await loop.run_in_executor(self._executor, self.admit,
                                                   [t for t, _ in candidates])
            for (text, source), decision in zip(candidates, decisions, strict=True):
                if not decision.admitted:
                    self._reject("dedup", NEAR_DUPLICATE, text, task_level=False,
                                 matched=decision.match, score=decision.score)
                    continue
                task = PendingTask(self._new_task_id(), text, decision.most_similar,
                                   avg_similarity=decision.avg_similarity)
                self.run_dir.append(INSTRUCTIONS, instruction_record(
                    task.id, text, decision.most_similar, decision.score, source,
                    decision.avg_similarity))
                self.state.instructions_admitted += 1
                self.machine_instructions.append(text)
                self.pending[task.id] = task
                self._admitted_from_requests += 1
        self._requests_answered += len(results)

    def _process_classify(self, results: list[tuple[LineResult, dict[str, Any]]]
                          ) -> dict[str, bool]:
        """As online (stage_calls.classify): an answer that is neither Yes nor No reads
        as No and is counted; --generation/--classification-tasks-only drop the rest."""
        classified: dict[str, bool] = {}
        wanted = self.config.task_kinds
        for result, item in results:
            task = self.pending.get(str(item["task"]))
            if task is None:
                continue  # finished meanwhile (an earlier run)
            text, finish = first_choice(result.body or {},
                                        self.requests.chat(str(item["stage"])))
            if classify_stage.parse_classify_answer(text) is None:
                if finish == "length":
                    self.state.truncated_responses += 1
                else:
                    self.state.classify_unparsed += 1
            answer = self.rules.is_classification(text, finish)
            if answer:
                self.state.classified_yes += 1
            if (wanted == "generation" and answer) or (wanted == "classification"
                                                       and not answer):
                self._reject("classify", TASK_KIND_EXCLUDED, task.instruction,
                             task_level=True, id=task.id)
                self._finish(task.id, written=False)
                continue
            classified[task.id] = answer
        return classified

    def _process_instances(self, results: list[tuple[LineResult, dict[str, Any]]]) -> None:
        """As online (stage_calls.answer_task): the compat rules parse and filter, the
        instance cap samples with a generator per task, then the task is written."""
        for result, item in results:
            task = self.pending.get(str(item["task"]))
            if task is None:
                continue
            is_cls = bool(item.get("is_classification"))
            text, finish = first_choice(result.body or {},
                                        self.requests.chat(str(item["stage"])))
            if finish == "length":
                self.state.truncated_responses += 1  # only its unfinished instance is lost
            outcome = self.rules.instances(text, is_cls, finish)
            kept, over = self.rules.cap(outcome.kept,
                                        random.Random(f"{self.config.seed}:{task.id}"))
            for inst, reason in [*outcome.dropped, *((i, OVER_INSTANCE_LIMIT) for i in over)]:
                self._reject("instance_filter", reason, task.instruction, task_level=False,
                             id=task.id, instance={"input": inst.input, "output": inst.output})
            if outcome.task_rejection is not None:
                self._reject("instances", outcome.task_rejection, task.instruction,
                             task_level=True, id=task.id)
                self._finish(task.id, written=False)
                continue
            if self.remaining == 0:
                continue  # the target is reached: leave it pending, do not overshoot
            models = {stage: self.config.stage(stage).model or self.config.model
                      or DEFAULT_MODEL for stage in ("instructions", "classify", "instances")}
            raw = text if self.config.compat == "reference" else None
            self.run_dir.append(TASKS, task_record(task.id, task.instruction, is_cls,
                                                   list(kept), task.most_similar, models,
                                                   task.avg_similarity, raw))
            self.state.tasks_written += 1
            self._finish(task.id, written=True)

    def _finish(self, task_id: str, *, written: bool) -> None:
        self.pending.pop(task_id, None)
        self._finished_tasks += 1
        if written:
            self._written_tasks += 1

    def _new_task_id(self) -> str:
        number = self._next_task_number
        self._next_task_number += 1
        return f"task_{number:06d}"

    def _reject(self, stage: str, reason: str, text: str, *, task_level: bool,
                **extra: Any) -> None:
        self.run_dir.append(REJECTED, rejection_record(stage, reason, text,
                                                       task_level=task_level, **extra))
        self.state.rejected += 1
        self.state.rejected_by_reason[reason] += 1

    # ------------------------------------------------------------------ run
    async def run(self) -> RunSummary:
        """Finish the journal's open rounds, then run rounds until the target."""
        try:
            for number in self.journal.unprocessed_rounds():
                self.round = number
                if not await self.await_round(number, resumed=True):
                    return self._summary()
                await self.process_round(number)
                self.write_run_json()
            while self.status == "running":
                if self.remaining == 0:
                    self.status = "finished"
                    break
                reason = self.accounting.budget_reason()
                if reason is not None:
                    self.status = "budget"
                    break
                if self._idle_rounds >= MAX_IDLE_ROUNDS:
                    raise SelfInstructError(
                        f"batch mode: {MAX_IDLE_ROUNDS} rounds in a row admitted no "
                        "instruction and wrote no task; stopping (see rejected.jsonl)")
                self.round = self.journal.last_round() + 1
                self.prepare_round(self.round)
                if not await self.await_round(self.round, resumed=False):
                    break
                await self.process_round(self.round)
                self.write_run_json()
        except BaseException:
            if self.status == "running":
                self.status = "failed"
            raise
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(RunDirError, OSError):
                self.write_run_json()
        return self._summary()

    def _summary(self) -> RunSummary:
        if self.status == "running":
            self.status = "interrupted"
        self.write_run_json()
        return RunSummary(self.status, self.state.as_dict(), time.monotonic() - self.started)

    def batch_snapshot(self) -> dict[str, Any]:
        view = self.journal.view
        states = Counter(b.status or b.state for b in view.batches.values())
        return {
            "rounds": len(view.rounds), "round": self.round,
            "batches": len(view.batches), "by_state": dict(sorted(states.items())),
            "lines": sum(len(b.items) for b in view.batches.values()),
            "lines_to_resubmit": len(view.retry), "waiting_s": round(view.waiting_s, 3),
            "backend": self.config.batch_backend,
        }

    def usage(self) -> dict[str, Any]:
        snap = dict(self.accounting.snapshot())
        snap["total_tokens"] = self.accounting.total_tokens
        snap["in_flight"] = 0
        return snap

    def run_json(self) -> dict[str, Any]:
        data = run_json(self.status, self.config.redacted(), self.state, self.usage(),
                        time.monotonic() - self.started)
        data.update({"mode": "batch", "batch": self.batch_snapshot(), "plan": self.plan})
        return data

    def write_run_json(self) -> None:
        self.run_dir.write_run_json(self.run_json())

    def _tick(self) -> None:
        with contextlib.suppress(RunDirError, OSError):
            self.write_run_json()
        if self.on_progress is not None:
            self.on_progress(self)


def batch_line(run: BatchRun) -> str:
    """The progress line: rounds, batch states, lines, waiting time, tasks, cost."""
    states = ", ".join(f"{n} {s}" for s, n in sorted(run.batch_states.items())) or "-"
    waited = run.journal.view.waiting_s
    usage = run.usage()
    return (f"round {run.round} | batches {states} | lines {run.lines_done} done, "
            f"{run.lines_failed} failed | waiting {format_eta(waited)} | "
            f"tasks {run.state.tasks_written}/{run.config.target} | "
            f"tokens {format_count(float(usage['total_tokens']))} | "
            f"${float(usage.get('cost_usd') or 0.0):.2f}")


def _task_number(task_id: str) -> int:
    try:
        return int(task_id.rsplit("_", 1)[-1])
    except ValueError:
        return 0


@contextlib.asynccontextmanager
async def _transport(config: Config, journal: BatchJournal) -> Any:
    if config.batch_backend == "files":
        if config.batch_dir is None:
            raise ConfigError("config key 'batch_dir': --batch-backend files needs "
                              "--batch-dir DIR")
        files = FilesTransport(Path(config.batch_dir), journal)
        try:
            yield files
        finally:
            await files.aclose()
        return
    if config.base_url is None:
        raise ConfigError("config key 'base_url': batch mode with the openai backend needs "
                          "--base-url (or --batch-backend files --batch-dir DIR)")
    async with BatchClient(config.base_url, config.api_key,
                           timeout_s=config.request_timeout,
                           max_attempts=config.max_attempts) as client:
        yield OpenAITransport(client, journal)


async def run_batch_generate(config: Config, *, progress: Progress | None = None,
                             install_signal_handlers: bool = True,
                             on_run: Callable[[BatchRun], None] | None = None,
                             seeds: Sequence[SeedTask] | None = None) -> RunSummary:
    """Run (or resume) a batch-mode generation into ``config.out``."""
    from service.generate.orchestrator import load_seeds

    if config.method != "self-instruct":
        raise ConfigError("config key 'method': batch mode runs the self-instruct method "
                          "(run --method alpaca online)")
    if config.keep_raw:
        raise ConfigError("config key 'keep_raw': batch mode keeps every raw answer already, "
                          "in the run's batches/*.output.jsonl")
    progress = progress or Progress(quiet=config.quiet)
    seed_tasks = list(seeds) if seeds is not None else load_seeds(config)
    with RunDir.open(config.out, fsync=config.fsync) as run_dir:
        for repair in run_dir.repairs:
            progress.message(f"repaired {repair.describe()}")
        journal = BatchJournal(run_dir.path)
        try:
            # A round half written when the last run was killed: cut it back first, so
            # the state read below is the state before that round.
            for number in journal.unprocessed_rounds():
                sizes = journal.view.rounds[number].processing_sizes
                if sizes is not None:
                    for cut in roll_back(run_dir.path, sizes):
                        progress.message(f"rolled back {cut}")
            seed_tasks = seeds_for_run(run_dir, seed_tasks)
            # --classification-seeds-only: the pool holds the classification seeds only
            seed_texts = [s.instruction for s in seed_tasks
                          if s.is_classification or not config.classification_seeds_only]
            existing = [str(r["instruction"]) for r in run_dir.records(INSTRUCTIONS)]
            admit = make_admit(config, seed_texts, existing)
            templates = load_templates(config.templates) if config.templates is not None else None
            async with _transport(config, journal) as transport:
                run = BatchRun(config, run_dir, seed_tasks, admit, transport, journal,
                               templates=templates,
                               on_progress=lambda r: progress.update(batch_line(r)))
                run.load_existing()
                run.plan = plan_for_run(config, seed_tasks)
                if on_run is not None:
                    on_run(run)
                loop = asyncio.get_running_loop()
                installed: list[int] = []
                if install_signal_handlers:
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        with contextlib.suppress(NotImplementedError, RuntimeError):
                            loop.add_signal_handler(sig, run.request_drain)
                            installed.append(sig)
                try:
                    summary = await run.run()
                finally:
                    for installed_sig in installed:
                        loop.remove_signal_handler(installed_sig)
                    progress.update(batch_line(run), force=True)
                    progress.finish()
        finally:
            journal.close()
    return summary
