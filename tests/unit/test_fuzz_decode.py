"""The worker's decode path never crashes on hostile input (a seeded sample; ``bench/fuzz.py`` runs 100,000+).

Every mutant either decodes, or raises :class:`SchemaError` and is dead-lettered with its reason; applying what
decodes, and the in-memory half of a commit, never raise (see ``tests/frame_fuzz.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.frame_fuzz import drive


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_frames_never_crash_the_decode_path(seed: int, tmp_path: Path) -> None:
    res = drive(seed, 3_000, tmp_path, commit_every=100)
    assert not res.crashes, "\n\n".join(res.crashes[:3])
    # The sample exercises both outcomes: frames that decode and frames that are dead-lettered.
    assert res.decoded > 500 and res.dead_lettered > 500, res.line()


@pytest.mark.slow
def test_100k_mutated_frames_never_crash_the_decode_path(tmp_path: Path) -> None:
    res = drive(7, 100_000, tmp_path)
    assert not res.crashes, "\n\n".join(res.crashes[:3])
