"""The workloads of the end-to-end fault tests (``support.worker_harness.make_run``) are what they claim: frames
the workers accept, blocks mixed with single events so the column-wise fast path is crossed, and an oracle that
equals what an aligner makes of the frames (checked here in-process, call by call against block by block)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from support.blocks import Counted
from support.history_oracle import rows_same
from support.worker_harness import make_run

from schemas import Log, LogBlock, Names, decode_frame
from schemas.store import field_name


def apply_script(frames: list[bytes]) -> tuple[Counted, list[Any], list[Any], int, int, int]:
    """Apply a run's frames to one aligner the way a worker does (dedupe by seq, events in order)."""
    r = Counted()
    blocks = fast = singles = 0
    for raw in frames:
        f = decode_frame(raw, strict=True)
        skip = r.al.check_seq(f.producer, f.seq, len(f.events))
        for e in f.events[skip:]:
            if isinstance(e, LogBlock):
                blocks += 1
                fast += r.apply_block(e)
            else:
                singles += isinstance(e, Log)
                r.al.apply(e)
    rows, rej = r.al.take()
    got = [(x.step, x.ts, x.runtime, {field_name(r.al.displays[c], c[1]): v for c, v in x.values.items()})
           for x in rows]
    return r, got, [(x.reason, x.step, x.cursor) for x in rej], blocks, fast, singles


@pytest.mark.parametrize(("seed", "frame_events"), [(1, 5), (2, 10), (3, 20), (4, 50)])
def test_make_run_mixes_blocks_and_single_events_and_its_oracle_is_right(seed: int, frame_events: int) -> None:
    names = Names("h", 16)
    s = make_run(random.Random(seed), names, "p", f"r{seed}", 2_000, 4, frame_events=frame_events,
                 reject_rate=0.01)
    r, got, rej, blocks, fast, singles = apply_script(s.frames)
    assert rows_same(got, s.oracle.rows)
    assert rej == s.oracle.rejections and rej  # some calls were rejected, inside blocks too
    assert r.al.state == "finished"
    # The wire really mixes: blocks, blocks the fast path must take (and did), and calls sent alone.
    assert blocks == s.blocks > 0 and singles > 0
    assert fast >= s.fast_blocks >= blocks // 4, (fast, s.fast_blocks, blocks)
    # Frames: contiguous seqs as recorded, at most frame_events calls each.
    seq = 0
    for raw, (first, n) in zip(s.frames, s.frame_seqs, strict=True):
        f = decode_frame(raw, strict=True)
        assert (f.seq, len(f.events)) == (first, n) and first == seq
        seq += n
        calls = sum(len(e) if isinstance(e, LogBlock) else 1 for e in f.events)
        assert calls <= frame_events
        assert s.frame_of_seq(first) == s.frame_of_seq(first + n - 1) == s.frame_seqs.index((first, n))


def test_make_run_without_blocks_sends_every_call_alone() -> None:
    s = make_run(random.Random(7), Names("h", 16), "p", "r", 500, 3, frame_events=10, blocks=0)
    _r, got, rej, blocks, _fast, singles = apply_script(s.frames)
    assert blocks == s.blocks == 0 and singles == 500
    assert rows_same(got, s.oracle.rows) and rej == s.oracle.rejections
    assert all(n == 10 for _first, n in s.frame_seqs[:-1])


def test_a_lost_frame_is_what_the_oracle_says() -> None:
    """Frames are whole units of events: dropping one (as a failover may) leaves the calls of the other frames,
    and the aligner's "events N..M are missing" warning names exactly its seqs."""
    s = make_run(random.Random(8), Names("h", 16), "p", "r", 800, 3, frame_events=20)
    k = len(s.frames) // 2
    r, _got, _rej, *_ = apply_script(s.frames[:k] + s.frames[k + 1:])
    first, n = s.frame_seqs[k]
    assert any(f"events {first}..{first + n - 1} are missing" in w for w in r.al.warnings), r.al.warnings
