"""Supply control: when to ask the model for more instructions. Pure functions.

Instruction workers only ask while the expected yield of the work already under way
falls short of the target, so a run overshoots by a few instructions, not by a whole
wave of requests. The yield estimates start deliberately high (a list continuation of 8
examples yields up to 8 new items) so the first wave does not overshoot; real counts
take over as answers come in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

START_ADMITTED_PER_PROMPT = 4.0
START_ADMIT_RATIO = 0.7  # admitted / candidates
START_SUCCESS_RATE = 0.9  # written / finished, until a few tasks are finished
MIN_ADMITTED_PER_PROMPT = 0.2  # floor: a run of bad answers must not stall generation
OVERSHOOT = 1.1  # ask for 10% (plus one) more than the remaining target


@dataclass(frozen=True)
class YieldEstimate:
    """What answers have yielded so far (cumulative over the run)."""

    admitted_per_prompt: float = START_ADMITTED_PER_PROMPT
    admit_ratio: float = START_ADMIT_RATIO
    prompts_answered: int = 0
    candidates_total: int = 0
    admitted_total: int = 0


def note_yield(estimate: YieldEstimate, prompts: int, candidates: int,
               admitted: int) -> YieldEstimate:
    """The estimate after ``prompts`` answered prompts gave ``candidates`` candidates, of
    which ``admitted`` passed dedup."""
    answered = estimate.prompts_answered + prompts
    candidates_total = estimate.candidates_total + candidates
    admitted_total = estimate.admitted_total + admitted
    ratio = admitted_total / candidates_total if candidates_total else estimate.admit_ratio
    per_prompt = (max(MIN_ADMITTED_PER_PROMPT, admitted_total / answered)
                  if answered else estimate.admitted_per_prompt)
    return replace(estimate, admitted_per_prompt=per_prompt, admit_ratio=ratio,
                   prompts_answered=answered, candidates_total=candidates_total,
                   admitted_total=admitted_total)


def success_rate(written: int, finished: int) -> float:
    """The share of finished tasks that got written (not dropped by the filters),
    clamped to [0.2, 1]; a guess until five tasks are finished."""
    if finished < 5:
        return START_SUCCESS_RATE
    return min(1.0, max(0.2, written / finished))


@dataclass(frozen=True)
class Supply:
    """The work under way, as the instruction workers see it."""

    remaining: int  # tasks still to write for the target
    stopping: bool = False  # a stop or drain was requested
    sequential: bool = False  # taking turns (max_in_flight 1): see the pipeline docstring
    in_progress: int = 0  # admitted here, not yet written or dropped
    backlog: int = 0  # admitted, unfinished: in_progress, or the whole run's if distributed
    inflight_prompts: int = 0  # prompts sent, not yet answered
    queued_candidates: int = 0  # parsed, waiting for admission
    batches_unadmitted: int = 0  # candidate batches not yet through admission
    written: int = 0
    finished: int = 0  # tasks written or dropped


def need_more_instructions(supply: Supply, estimate: YieldEstimate) -> bool:
    """True when another instruction request should go out now."""
    if supply.stopping or supply.remaining == 0:
        return False
    if (estimate.prompts_answered == 0 and supply.inflight_prompts > 0
            and not supply.in_progress):
        return False  # slow start: one request until the yield of a prompt is known
    if supply.sequential and (supply.in_progress or supply.batches_unadmitted
                              or supply.inflight_prompts):
        return False  # taking turns: the last batch is admitted and finished first
    expected = (
        supply.backlog
        + supply.inflight_prompts * estimate.admitted_per_prompt
        + supply.queued_candidates * estimate.admit_ratio
    )
    return expected * success_rate(supply.written, supply.finished) < (
        supply.remaining * OVERSHOOT + 1
    )


@dataclass
class Flow:
    """The pipeline's live counts of work under way (mutated by the pipeline only)."""

    in_progress: int = 0  # admitted here, not yet written or dropped
    inflight_prompts: int = 0  # prompts sent, not yet answered
    queued_candidates: int = 0  # parsed, waiting for admission
    batches_unadmitted: int = 0  # candidate batches not yet through admission
    finished: int = 0  # tasks written or dropped
    tasks_running: int = 0  # taken by a task worker and not yet done
    global_written: int | None = None  # a coordinator's count of the whole run, polled
    global_unfinished: int = 0  # a coordinator's admitted-not-finished count, polled
    estimate: YieldEstimate = field(default_factory=YieldEstimate)

    def drain_waits(self) -> bool:
        """Work a drain lets finish: prompts in flight, answers not yet through admission,
        tasks a worker has started. Queued tasks are not started by a drain."""
        return self.inflight_prompts > 0 or self.batches_unadmitted > 0 or self.tasks_running > 0

    def supply(self, remaining: int, written: int, *, stopping: bool, sequential: bool,
               distributed: bool) -> Supply:
        """The view :func:`need_more_instructions` decides on. Distributed: the run's
        unfinished admissions (every process's, in-progress ones included) replace the
        local count; each process adds its own requests."""
        return Supply(
            remaining=remaining, stopping=stopping, sequential=sequential,
            in_progress=self.in_progress,
            backlog=self.global_unfinished if distributed else self.in_progress,
            inflight_prompts=self.inflight_prompts, queued_candidates=self.queued_candidates,
            batches_unadmitted=self.batches_unadmitted, written=written,
            finished=self.finished,
        )
