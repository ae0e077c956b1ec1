"""Supply control as tables: when instruction workers ask for more, and how the yield
estimate moves. Pure functions, no event loop."""

from __future__ import annotations

import pytest

from service.generate.supply import (
    MIN_ADMITTED_PER_PROMPT,
    START_ADMIT_RATIO,
    START_ADMITTED_PER_PROMPT,
    START_SUCCESS_RATE,
    Flow,
    Supply,
    YieldEstimate,
    need_more_instructions,
    note_yield,
    success_rate,
)

KNOWN = YieldEstimate(admitted_per_prompt=2.0, admit_ratio=0.5, prompts_answered=10,
                      candidates_total=40, admitted_total=20)


@pytest.mark.parametrize(
    ("written", "finished", "expected"),
    [
        (0, 0, START_SUCCESS_RATE),  # nothing finished: the start guess
        (4, 4, START_SUCCESS_RATE),  # fewer than five finished: still the guess
        (5, 5, 1.0),
        (3, 6, 0.5),
        (0, 10, 0.2),  # floored: a bad stretch must not stop supply for good
        (12, 10, 1.0),  # capped (a resumed run counts earlier writes)
    ],
)
def test_success_rate(written: int, finished: int, expected: float) -> None:
    assert success_rate(written, finished) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("before", "prompts", "candidates", "admitted", "per_prompt", "ratio"),
    [
        # The first answers replace the start guesses.
        (YieldEstimate(), 1, 8, 4, 4.0, 0.5),
        (YieldEstimate(), 2, 10, 1, 0.5, 0.1),
        # An empty batch: the ratio keeps its guess, the per-prompt yield hits its floor.
        (YieldEstimate(), 1, 0, 0, MIN_ADMITTED_PER_PROMPT, START_ADMIT_RATIO),
        # Cumulative over the run, not the last batch.
        (KNOWN, 10, 40, 0, 1.0, 0.25),
        (KNOWN, 1, 10, 10, 30 / 11, 0.6),
    ],
)
def test_note_yield(before: YieldEstimate, prompts: int, candidates: int, admitted: int,
                    per_prompt: float, ratio: float) -> None:
    after = note_yield(before, prompts, candidates, admitted)
    assert after.admitted_per_prompt == pytest.approx(per_prompt)
    assert after.admit_ratio == pytest.approx(ratio)
    assert after.prompts_answered == before.prompts_answered + prompts
    assert after.candidates_total == before.candidates_total + candidates
    assert after.admitted_total == before.admitted_total + admitted


def test_start_guesses_are_high() -> None:
    """The first wave must not overshoot: the start guess is a generous yield."""
    assert YieldEstimate().admitted_per_prompt == START_ADMITTED_PER_PROMPT >= 4


@pytest.mark.parametrize(
    ("supply", "estimate", "expected"),
    [
        # Nothing under way and work to do: ask.
        (Supply(remaining=10), YieldEstimate(), True),
        # Target reached, stopping or draining: never.
        (Supply(remaining=0), YieldEstimate(), False),
        (Supply(remaining=10, stopping=True), YieldEstimate(), False),
        # Slow start: one request out, its yield unknown, nothing admitted yet: wait.
        (Supply(remaining=100, inflight_prompts=1), YieldEstimate(), False),
        # ... unless admitted work is already under way (a resumed backlog).
        (Supply(remaining=100, inflight_prompts=1, in_progress=1, backlog=1),
         YieldEstimate(), True),
        # Taking turns: anything under way blocks the next request.
        (Supply(remaining=10, sequential=True, in_progress=1, backlog=1), KNOWN, False),
        (Supply(remaining=10, sequential=True, batches_unadmitted=1), KNOWN, False),
        (Supply(remaining=10, sequential=True, inflight_prompts=1), KNOWN, False),
        (Supply(remaining=10, sequential=True), KNOWN, True),
        # Expected yield 10 backlog * 0.9 = 9 < 10 * 1.1 + 1 = 12: ask.
        (Supply(remaining=10, in_progress=10, backlog=10), KNOWN, True),
        # 14 * 0.9 = 12.6 >= 12: enough under way.
        (Supply(remaining=10, in_progress=14, backlog=14), KNOWN, False),
        # Prompts in flight count at the admitted-per-prompt estimate (4 * 2.0 = 8),
        # queued candidates at the admit ratio (10 * 0.5 = 5): 13 * 0.9 = 11.7 < 12.
        (Supply(remaining=10, inflight_prompts=4, queued_candidates=10), KNOWN, True),
        (Supply(remaining=10, inflight_prompts=5, queued_candidates=10), KNOWN, False),
        # A poor success rate (written / finished = 0.2) needs five times the backlog.
        (Supply(remaining=10, in_progress=14, backlog=14, written=2, finished=10), KNOWN,
         True),
        # Distributed: the run's backlog counts, not this process's in-progress.
        (Supply(remaining=10, in_progress=0, backlog=20), KNOWN, False),
        (Supply(remaining=10, in_progress=20, backlog=0), KNOWN, True),
    ],
)
def test_need_more_instructions(supply: Supply, estimate: YieldEstimate,
                                expected: bool) -> None:
    assert need_more_instructions(supply, estimate) is expected


@pytest.mark.parametrize(("distributed", "backlog"), [(False, 3), (True, 7)])
def test_flow_backlog(distributed: bool, backlog: int) -> None:
    flow = Flow(in_progress=3, global_unfinished=7, inflight_prompts=2)
    view = flow.supply(5, 1, stopping=False, sequential=False, distributed=distributed)
    assert view.backlog == backlog
    assert (view.in_progress, view.inflight_prompts, view.remaining, view.written) == (3, 2, 5, 1)


@pytest.mark.parametrize(
    ("inflight_prompts", "batches_unadmitted", "tasks_running", "in_progress", "waits"),
    [
        (0, 0, 0, 0, False),   # nothing under way
        (0, 0, 0, 40, False),  # admitted tasks only queued: a drain leaves them pending
        (3, 0, 0, 0, True),    # instruction prompts in flight
        (0, 1, 0, 0, True),    # answers received, not yet through admission
        (0, 0, 2, 2, True),    # tasks a worker has started
    ],
)
def test_drain_waits_for_started_work_only(inflight_prompts: int, batches_unadmitted: int,
                                           tasks_running: int, in_progress: int,
                                           waits: bool) -> None:
    flow = Flow(in_progress=in_progress, inflight_prompts=inflight_prompts,
                batches_unadmitted=batches_unadmitted, tasks_running=tasks_running)
    assert flow.drain_waits() is waits
