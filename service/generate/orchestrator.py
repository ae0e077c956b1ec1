"""One `generate` run end to end: run directory, seeds, dedup pool, endpoint, signals.

This is the glue the CLI and the long-lived worker share; the pipeline itself knows
nothing about files on disk, signals or which server it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from service.config import Config, StageConfig
from service.errors import ConfigError, SelfInstructError
from service.generate.admission import open_admission
from service.generate.backend import Backend
from service.generate.pipeline import Pipeline
from service.generate.records import RunSummary
from service.generate.resume import read_back, seeds_for_run
from service.generate.templates import load_templates
from service.generate.timeline import record_timeline
from service.progress import Progress, status_line
from service.rundir.seeds import SeedTask, default_seed_path, load_seed_tasks
from service.rundir.store import TASKS, RunDir

if TYPE_CHECKING:
    from service.generate.distributed import RedisCoordinator
    from service.llm.limiter import RateLimiter


@dataclass(frozen=True)
class RunResult:
    summary: RunSummary
    out: Path
    repairs: tuple[str, ...]


@contextlib.asynccontextmanager
async def endpoint_for(config: Config) -> AsyncIterator[Config]:
    """Yield the config pointed at a live endpoint: the configured one, or the embedded
    local model started for the duration of the run (and stopped on any exit)."""
    if config.base_url is not None:
        yield config
        return
    from service.llm.local import LocalModelServer, LocalModelSettings

    settings = LocalModelSettings(
        model_path=config.local_model,
        n_ctx=config.local_n_ctx,
        n_parallel=config.local_n_parallel,
        threads=config.local_threads,
    )
    async with LocalModelServer(settings) as server:
        yield replace(
            config,
            base_url=server.base_url,
            model=config.model or server.model,
            # Completions suit the bundled model: our prompts are continuations.
            max_in_flight=local_in_flight(config),
            stages=local_stage_limits(config),
        )


def local_in_flight(config: Config) -> int | Literal["auto"]:
    """The embedded server has ``local_n_parallel`` slots: twice that keeps them busy
    (a fixed setting above it only queues); "auto" finds it by itself."""
    slots = max(1, config.local_n_parallel * 2)
    if config.max_in_flight == "auto":
        return "auto"
    return slots if config.max_in_flight is None else min(config.max_in_flight, slots)


def local_stage_limits(config: Config) -> dict[str, StageConfig]:
    """llama.cpp splits its context evenly between its parallel slots; a prompt plus
    max_tokens beyond a slot is cut ("length") and the reference discards cut answers.
    Keep each stage's max_tokens within half a slot, leaving the rest to the prompt."""
    per_slot = config.local_n_ctx // max(1, config.local_n_parallel)
    cap = max(64, per_slot // 2)
    return {
        name: replace(stage, max_tokens=min(stage.max_tokens, cap))
        for name, stage in config.stages.items()
    }


def load_seeds(config: Config) -> list[SeedTask]:
    return load_seed_tasks(config.seed_tasks or default_seed_path())


async def run_generate(
    config: Config,
    *,
    backend_factory: Callable[[Config], contextlib.AbstractAsyncContextManager[Backend]] | None = None,
    progress: Progress | None = None,
    install_signal_handlers: bool = True,
    on_pipeline: Callable[[Pipeline], None] | None = None,
) -> RunResult:
    """Run (or resume) a generation into ``config.out``."""
    progress = progress or Progress(quiet=config.quiet)
    if config.mode == "batch":  # rounds of Batch API files: service.generate.batch_mode
        if config.redis is not None:
            raise ConfigError("config key 'mode': batch mode runs in one process (no --redis)")
        from service.generate.batch_mode import run_batch_generate

        summary = await run_batch_generate(config, progress=progress,
                                           install_signal_handlers=install_signal_handlers)
        return RunResult(summary, Path(config.out), ())
    seeds = load_seeds(config)
    async with contextlib.AsyncExitStack() as stack:
        coordinator = None
        limiter = None
        if config.redis is not None:
            coordinator, limiter = await _join_distributed(config, stack)
            seeds = await coordinator.join(config, seeds)
        run_dir = stack.enter_context(RunDir.open(config.out, fsync=config.fsync))
        for repair in run_dir.repairs:
            progress.message(f"repaired {repair.describe()}")
        seeds = seeds_for_run(run_dir, seeds)
        resumed = read_back(run_dir, distributed=coordinator is not None)
        if backend_factory is None:
            from service.generate.llm_backend import open_backend

            backend_factory = functools.partial(open_backend, limiter=limiter)
        live_config = await stack.enter_async_context(endpoint_for(config))
        backend = await stack.enter_async_context(backend_factory(live_config))
        # --classification-seeds-only: the pool holds the classification seeds only, as
        # the reference's --use_clf_seed_tasks_only compares with the seeds it prompts with
        seed_texts = [s.instruction for s in seeds
                      if s.is_classification or not config.classification_seeds_only]
        if coordinator is not None:
            # The replica catches up on the whole admission stream: not on the loop.
            admit = await asyncio.get_running_loop().run_in_executor(
                None, coordinator.make_admit, live_config, seed_texts
            )
        else:
            admit = stack.enter_context(
                open_admission(live_config, seed_texts, resumed.admitted_texts)
            )
        templates = load_templates(config.templates) if config.templates is not None else None
        pipeline = Pipeline(live_config, backend, run_dir, seeds, admit,
                            coordinator=coordinator, templates=templates)
        pipeline.load_existing(resumed)
        record_timeline(pipeline)
        if on_pipeline is not None:
            on_pipeline(pipeline)
        start_written = pipeline.state.tasks_written
        if start_written and not config.quiet:
            progress.message(
                f"resuming {config.out}: {start_written} tasks written, "
                f"{pipeline.state.resumed_pending} admitted instructions pending"
            )
        pipeline.on_progress = lambda p: progress.update(_line(p, start_written))
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, _on_signal, pipeline, progress)
                    installed.append(sig)
        from service.generate.plan import plan_for_run

        plan = plan_for_run(live_config, seeds)
        try:
            summary = await pipeline.run()
            if plan is not None:  # the estimate next to the actuals
                run_dir.write_run_json({**pipeline.run_json(), "plan": plan})
        finally:
            for installed_sig in installed:
                loop.remove_signal_handler(installed_sig)
            progress.update(_line(pipeline, start_written), force=True)
            progress.finish()
        if pipeline.fatal is not None:
            raise _as_error(pipeline.fatal)
    return RunResult(summary, Path(config.out), tuple(r.describe() for r in run_dir.repairs))


async def _join_distributed(
    config: Config, stack: contextlib.AsyncExitStack
) -> tuple[RedisCoordinator, RateLimiter]:
    from service.generate.distributed import RedisCoordinator, SharedRateLimiter
    from service.llm.limiter import LimiterSettings

    if config.run_id is None:
        raise ConfigError("config key 'run_id': a distributed run (--redis) needs --run-id")
    coordinator = RedisCoordinator(config.redis or "", config.run_id,
                                   lease_seconds=config.lease_seconds)
    stack.push_async_callback(coordinator.aclose)
    limiter = SharedRateLimiter(
        LimiterSettings(rpm=config.rpm, tpm=config.tpm, max_in_flight=config.in_flight_bound(),
                        in_flight=config.in_flight_mode()),
        coordinator.aio, coordinator.keys,
    )
    return coordinator, limiter


def _line(pipeline: Pipeline, start_written: int) -> str:
    return status_line(
        written=pipeline.state.tasks_written,
        target=pipeline.config.target,
        admitted=pipeline.state.instructions_admitted,
        elapsed_s=time.monotonic() - pipeline.started,
        written_this_run=pipeline.state.tasks_written - start_written,
        usage=pipeline.backend.snapshot(),
    )


def _on_signal(pipeline: Pipeline, progress: Progress) -> None:
    if pipeline.status == "interrupted":
        # A second Ctrl-C: stop now; everything written so far stays written.
        pipeline.request_stop("interrupted")
        return
    progress.message("stopping: finishing in-flight work (Ctrl-C again to stop now)")
    pipeline.request_drain()


def _as_error(exc: BaseException) -> SelfInstructError:
    if isinstance(exc, SelfInstructError):
        return exc
    return SelfInstructError(str(exc))


def show_tasks(out: Path, count: int = 2) -> list[dict[str, Any]]:
    """The first finished tasks, for the end-of-run summary."""
    from service.rundir.store import read_jsonl

    shown: list[dict[str, Any]] = []
    for _, record in read_jsonl(out / TASKS):
        shown.append(record)
        if len(shown) >= count:
            break
    return shown


def print_summary(result: RunResult, stream: Any = None, examples: Sequence[dict[str, Any]] = ()) -> None:
    stream = stream or sys.stdout
    s = result.summary.state
    print(
        f"{result.summary.status}: {s['tasks_written']} tasks in {result.out} "
        f"({s['instructions_admitted']} instructions admitted, {s['rejected']} rejections) "
        f"in {result.summary.elapsed_s:.1f}s",
        file=stream,
    )
    for task in examples:
        print(f"\n[{task['id']}] {task['instruction']}", file=stream)
        for inst in task.get("instances", [])[:2]:
            if inst.get("input"):
                print(f"  input:  {_short(inst['input'])}", file=stream)
            print(f"  output: {_short(inst['output'])}", file=stream)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
