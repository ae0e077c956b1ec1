"""The dedup pool in its own process decides exactly as the in-thread pool does."""

from __future__ import annotations

import dataclasses
import random

import pytest

from service.config import Config
from service.generate.admission import (
    AdmissionProcessError,
    ProcessAdmission,
    make_admit,
    open_admission,
)
from service.simulator.answers import make_instruction, near_duplicate


def _stream(count: int) -> list[str]:
    rng = random.Random(3)
    return [near_duplicate(rng) if rng.random() < 0.3 else make_instruction(rng)
            for _ in range(count)]


def test_process_admission_equals_thread_admission() -> None:
    texts = _stream(1500)
    seeds, admitted, candidates = texts[:100], texts[100:300], texts[300:]
    config = Config()
    in_thread = make_admit(config, seeds, admitted)
    with open_admission(dataclasses.replace(config, admission="process"), seeds,
                        admitted) as in_process:
        for start in range(0, len(candidates), 13):  # batches as instruction answers come
            batch = candidates[start:start + 13]
            assert in_process(batch) == in_thread(batch)


def test_admission_process_exits_with_the_run_and_a_dead_one_is_a_clear_error() -> None:
    admission = ProcessAdmission(Config(), ["Write a poem about the sea."], [])
    try:
        assert not admission(["Write a poem about the sea!"])[0].admitted
        assert admission.is_alive()
        admission.close()
        assert not admission.is_alive()
        with pytest.raises(AdmissionProcessError, match="admission process ended"):
            admission(["Write a story."])
    finally:
        admission.close()


def test_thread_mode_needs_no_process() -> None:
    config = dataclasses.replace(Config(), admission="thread")
    with open_admission(config, ["Write a poem about the sea."], []) as admit:
        decision = admit(["Write a poem about the sea!"])[0]
    assert not decision.admitted and decision.match == "Write a poem about the sea."
