"""Frames into the worker's decode, apply and commit path never crash it, and every frame is stored exactly or
refused with a reason (``tests/support/frame_fuzz.py`` says what is generated and checked; ``bench/fuzz.py
--target frames`` runs the same for as long as you like).

Seeds are fixed and printed (``pytest -s`` shows them): a failure here reproduces with
``python bench/fuzz.py --target frames --seed SEED --frames N``. Failures that match a product bug already known
(``support.fuzz_report.KNOWN``, each with a strict-xfail reproducer in ``test_fuzz_found.py``) are counted, not
failed; anything new fails the test with its first example.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from support.frame_fuzz import FramePipe, FuzzResult, drive, hostile_frame, new_context, scratch_dir, warnings_quiet

SEEDS = [1, 2]
HYPOTHESIS_SEED = 20_151


def _no_new_failures(res: FuzzResult) -> None:
    for what, found in (("crashes", res.crashes), ("commits that failed alone (poison)", res.poisoned),
                        ("commits that failed", res.commit_failures)):
        assert not found.unknown(), f"{what}:\n{found.report()}"


@pytest.mark.parametrize("fuzz_seed", SEEDS)
def test_fuzzed_frames_are_stored_exactly_or_refused_with_a_reason(fuzz_seed: int) -> None:
    print(f"frame fuzz: seed={fuzz_seed}, 5000 frames")
    with scratch_dir() as tmp:
        res = drive(fuzz_seed, 5_000, tmp, commit_every=100)
    print(res.line())
    _no_new_failures(res)
    # The sample reaches every outcome: frames applied, whole frames dead-lettered (several reasons), bad events
    # rejected, commits checked segment by segment, and clean runs checked against the oracle.
    assert res.decoded > 1_000 and res.dead_lettered > 500, res.line()
    assert {"malformed", "bad_frame", "wrong_partition", "unknown_version"} <= set(res.entry_reasons), res.entry_reasons
    assert {"non_monotonic_step", "bad_event", "seq_out_of_window", "int_range"} <= set(res.rejections), res.rejections
    assert res.segments_checked > 50 and res.clean_runs_checked >= 5 and res.clean_rows_checked > 200, res.line()


def test_hypothesis_frames() -> None:
    """The structure-aware generator driven by hypothesis: a few frames of fresh runs per example, committed."""
    print(f"frame fuzz (hypothesis): seed={HYPOTHESIS_SEED}, 150 examples")
    with scratch_dir() as tmp, warnings_quiet():
        pipe = FramePipe(tmp)
        examples = 0

        @seed(HYPOTHESIS_SEED)
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(rng=st.randoms(use_true_random=False), n=st.integers(1, 6), hostile=st.sampled_from([0.1, 0.5, 1.0]))
        def check(rng: random.Random, n: int, hostile: float) -> None:
            nonlocal examples
            examples += 1
            res = FuzzResult()
            ctx = new_context(rng)

            async def go() -> None:
                for j in range(n):
                    await pipe.feed(hostile_frame(rng, ctx, hostile), f"example {examples} frame {j}", res)
                await pipe.commit(res, f"example {examples}")

            asyncio.run(go())
            _no_new_failures(res)

        try:
            check()
        finally:
            pipe.close()
