"""One entry or one run's data cannot stall a partition (issue 15, items 2 and 4), with real worker processes.

- An entry that kills its worker every time (``STEPLINE_TEST_POISON``: SIGKILL while applying it, or while its
  commit writes the segment), or fails its commit every time (in the segment writer, or in the metadata
  transaction after the batch's dead letters were written), is isolated and dead-lettered as ``poison`` after
  ``RANGE_FAILS + ALONE_FAILS`` attempts (docs/DESIGN.md §6); the partition moves on and every other run is
  committed exactly.
- An int beyond int64 (msgpack uint64, which a hand-made frame can carry) rejects only its call (``int_range``),
  and so does a call without a step once the cursor is past the last storable step (``bad_step``): the segment
  writer used to refuse the whole commit, forever.
- A frame written to another partition's stream is dead-lettered (``wrong_partition``), not applied there.
- A frame whose ``seq`` is far past its producer's window is refused (``seq_out_of_window``) and cannot make the
  producer's later frames look like duplicates.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from support.history_oracle import Oracle, read_history, rows_same
from support.pg import fresh_database
from support.worker_harness import (
    WorkerFleet,
    WorkerProc,
    caught_up,
    check_history,
    interleave,
    make_run,
    rejections_of,
    wait_caught_up,
    xadd_frames,
)

from schemas import FRAME_FIELD, Finish, Log, Names, Start, encode_event, encode_frame_raw
from workers.attempts import ALONE_FAILS, RANGE_FAILS
from workers.metastore import MetaStore, sqlite_url
from workers.partition import SEQ_WINDOW

pytestmark = pytest.mark.faults

T0 = 1_700_000_000.0


def _dead_letters(r: redis.Redis, names: Names) -> list[dict[str, bytes]]:
    return [{k.decode(): v for k, v in f.items()} for p in range(names.partitions) for _, f in r.xrange(names.dlq(p))]


# --- item 2: an entry that crashes the worker -----------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["apply", "segments", "raise", "sql"])
def test_an_entry_that_kills_or_fails_its_worker_is_dead_lettered_and_the_partition_moves_on(
        redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet, how: str) -> None:
    """Two worker slots, restarted when they die (as Kubernetes would). The poison entry sits early in its
    partition's stream, so the first batch of each attempt holds it; every other run must be committed exactly."""
    parts = 4
    fleet.partitions = parts
    fleet.lease_ttl_ms = 1000
    fleet.commit_interval_s = 0.2
    names = Names(namespace, parts)
    rng = random.Random(41)
    scripts = [make_run(rng, names, "good", f"run-{i:02d}", 300, 3, frame_events=10) for i in range(8)]
    magic = "poison-run"
    target = names.partition("bad", magic)
    poison = encode_frame_raw("bad", magic, "pp", 0, [
        encode_event(Start(ts=T0)), encode_event(Log(ts=T0, data={"x": 1.0}, step=0)), encode_event(Finish(ts=T0)),
    ])
    items = interleave(scripts, rng)
    seen, cut = 0, len(items)
    for i, (p, _) in enumerate(items):
        seen += p == target
        if seen == 5:
            cut = i + 1
            break
    env = {"STEPLINE_TEST_POISON": f"{magic}:{how}"}
    store = MetaStore(sqlite_url(data_dir))
    ids = itertools.count()
    try:
        with redis.Redis.from_url(redis_url) as r:
            xadd_frames(r, names, items[:cut])
            poison_id = r.xadd(names.stream(target), {FRAME_FIELD: poison}).decode()
            xadd_frames(r, names, items[cut:])
            slots: list[WorkerProc] = [fleet.start(f"w{next(ids)}", env=env) for _ in range(2)]
            deaths = 0
            deadline = time.monotonic() + 180
            while not caught_up(r, names, store):
                for i, w in enumerate(slots):
                    if not w.alive():
                        assert w.proc.returncode == -signal.SIGKILL, fleet.logs()
                        deaths += 1
                        slots[i] = fleet.start(f"w{next(ids)}", env=env)
                assert time.monotonic() < deadline, f"not caught up after {deaths} deaths\n{fleet.logs()}"
                time.sleep(0.1)
            letters = [f for f in _dead_letters(r, names) if f["reason"] == b"poison"]
        assert len(letters) == 1, letters
        assert letters[0]["id"].decode() == poison_id
        assert letters[0]["raw"] == poison  # kept for a look (or a resend) later
        message = letters[0]["message"].decode()
        if how in ("raise", "sql"):
            assert deaths == 0, fleet.logs()
            assert "RuntimeError: test poison" in message, message
        else:
            assert deaths == RANGE_FAILS + ALONE_FAILS, fleet.logs()
            assert "died" in message, message
        assert store.segments_of("bad", magic) == []
        check_history(data_dir, store, scripts)  # everything else, exactly once
    finally:
        store.close()


# --- item 4: one run's bad data affects only that run ------------------------------------------------------------


def _bad_int_run(names: Names, project: str, run: str) -> tuple[list[bytes], Oracle]:
    """Calls with ints beyond int64 (msgpack uint64) among good ones, as single calls and inside a block; the oracle
    rejects exactly those calls (``int_range``) and keeps the rest."""
    o = Oracle()
    o.start(T0)
    events: list[bytes] = [encode_event(Start(ts=T0))]
    calls: list[tuple[dict[str, Any], int]] = [({"x": 1.0}, 0), ({"x": 2**63}, 1), ({"x": 3.0, "n": 2**64 - 1}, 2),
                                               ({"x": 4.0, "n": 7}, 3)]
    for i, (data, step) in enumerate(calls):
        ts = T0 + i
        events.append(msgpack.packb({"k": "log", "ts": ts, "step": step, "commit": None, "data": data}))
        if any(type(v) is int and v >= 2**63 for v in data.values()):
            o.rejections.append(("int_range", step, o.cursor))
        else:
            o.log(ts, data, step)
    # A block of 6 calls whose list column holds one wide int: only that call is rejected.
    col = [10, 11, 2**63 + 5, 13, 14, 15]
    steps = list(range(4, 10))
    events.append(msgpack.packb({"k": "logs", "keys": ["c"], "ts": [T0 + 10 + i for i in range(6)], "step": steps,
                                 "commit": [None] * 6, "cols": [col]}))
    for i, (v, step) in enumerate(zip(col, steps, strict=True)):
        if v >= 2**63:
            o.rejections.append(("int_range", step, o.cursor))
        else:
            o.log(T0 + 10 + i, {"c": v}, step)
    # The last step a segment holds, committed: the cursor is 2**63 after it, and a call without a step (alone or
    # in a block) would be written there. Those are rejected (bad_step; the stored cursor is clamped to int64).
    last = (1 << 63) - 1
    events.append(msgpack.packb({"k": "log", "ts": T0 + 16, "step": last, "commit": True, "data": {"x": 9.0}}))
    o.log(T0 + 16, {"x": 9.0}, last, True)
    events.append(msgpack.packb({"k": "log", "ts": T0 + 17, "step": None, "commit": None, "data": {"x": 10.0}}))
    events.append(msgpack.packb({"k": "logs", "keys": ["c"], "ts": [T0 + 18 + i / 10 for i in range(5)],
                                 "step": [None] * 5, "commit": [None] * 5, "cols": [[1, 2, 3, 4, 5]]}))
    o.rejections += [("bad_step", None, last)] * 6
    events.append(encode_event(Finish(ts=T0 + 20)))
    o.finish(T0 + 20)
    frames = [encode_frame_raw(project, run, "wide", s, events[s:s + 3]) for s in range(0, len(events), 3)]
    return frames, o


def _same_partition_run(names: Names, project: str, p: int, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(10_000) if names.partition(project, f"{prefix}{i}") == p)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_value_the_segment_cannot_hold_rejects_only_its_call(redis_url: str, namespace: str, data_dir: Path,
                                                               fleet: WorkerFleet, backend: str) -> None:
    """An int beyond int64, or a row past the last step: used to fail every commit of the partition (OverflowError
    in the segment writer or the metadata insert), so the good run next to it was never committed. A frame whose
    project holds NUL is in the same stream too (refused on decode; PostgreSQL text cannot hold NUL)."""
    parts = 2
    fleet.partitions = parts
    names = Names(namespace, parts)
    frames, oracle = _bad_int_run(names, "wide", "ints")
    p = names.partition("wide", "ints")
    good = make_run(random.Random(5), names, "wide", _same_partition_run(names, "wide", p, "good-"), 200, 2,
                    frame_events=10)
    nul = msgpack.packb({"v": 1, "project": "nul\x00name", "run": "r", "producer": "n", "seq": 0,
                         "events": [encode_event(Log(ts=T0, data={"x": 1.0}))]})
    with fresh_database() if backend == "postgresql" else contextlib.nullcontext(sqlite_url(data_dir)) as url:
        fleet.db_url = url
        store = MetaStore(url)
        try:
            with redis.Redis.from_url(redis_url) as r:
                items = [(p, f) for f in good.frames[:5]] + [(p, f) for f in frames] + [(p, nul)]
                items += [(p, f) for f in good.frames[5:]]
                xadd_frames(r, names, items)
                fleet.start()
                wait_caught_up(r, names, store, fleet, timeout=60)
                letters = _dead_letters(r, names)
            check_history(data_dir, store, [good])
            got = read_history(data_dir, store, "wide", "ints")
            assert rows_same(got, oracle.rows), (got, oracle.rows)
            assert rejections_of(store, "wide", "ints") == oracle.rejections
            reasons = sorted(f["reason"].decode() for f in letters)
            assert reasons == sorted(["int_range"] * 3 + ["bad_step"] * 6 + ["bad_frame"] + ["non_monotonic_step"] *
                                     len(good.oracle.rejections)), reasons
        finally:
            store.close()


def test_a_frame_in_another_partitions_stream_is_dead_lettered(redis_url: str, namespace: str, data_dir: Path,
                                                                fleet: WorkerFleet) -> None:
    """Applied in the wrong partition, the stray frame wrote rows and state for the run from a second owner: its
    history got rows its real stream never had."""
    parts = 4
    fleet.partitions = parts
    names = Names(namespace, parts)
    run = make_run(random.Random(9), names, "wp", "run", 300, 2, frame_events=10, reject_rate=0)
    other = (run.partition + 1) % parts
    stray = encode_frame_raw("wp", "run", "stray", 0, [encode_event(Log(ts=T0, data={"x": 5.0}, step=10_000,
                                                                        commit=True))])
    store = MetaStore(sqlite_url(data_dir))
    try:
        with redis.Redis.from_url(redis_url) as r:
            half = len(run.frames) // 2
            xadd_frames(r, names, [(run.partition, f) for f in run.frames[:half]])
            stray_id = r.xadd(names.stream(other), {FRAME_FIELD: stray}).decode()
            xadd_frames(r, names, [(run.partition, f) for f in run.frames[half:]])
            fleet.start()
            wait_caught_up(r, names, store, fleet, timeout=60)
            letters = [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in r.xrange(names.dlq(other))]
        check_history(data_dir, store, [run])
        assert [(f["id"].decode(), f["reason"], f["raw"]) for _, f in letters] == [(stray_id, b"wrong_partition",
                                                                                   stray)]
        assert b"belongs to partition" in letters[0][1]["message"]
    finally:
        store.close()


def test_a_seq_far_past_the_window_cannot_make_later_frames_duplicates(redis_url: str, namespace: str,
                                                                       data_dir: Path, fleet: WorkerFleet) -> None:
    """A frame with seq 2**62 used to move the producer's next expected seq there: every later frame of the producer
    was skipped as a duplicate. Same for a new producer whose first frame claims seq 2**62."""
    names = Names(namespace, 1)
    fleet.partitions = 1
    script = make_run(random.Random(13), names, "seq", "run", 400, 2, frame_events=10, reject_rate=0)
    producer = "prod-run"  # make_run's producer id for run "run"
    absurd = encode_frame_raw("seq", "run", producer, 1 << 62, [encode_event(Log(ts=T0, data={"x": 1.0},
                                                                                  step=1_000_000))])
    stranger = encode_frame_raw("seq", "run", "stranger", SEQ_WINDOW + 1, [encode_event(Log(ts=T0, data={"y": 1.0}))])
    store = MetaStore(sqlite_url(data_dir))
    try:
        with redis.Redis.from_url(redis_url) as r:
            half = len(script.frames) // 2
            items = [(0, f) for f in script.frames[:half]] + [(0, absurd), (0, stranger)]
            items += [(0, f) for f in script.frames[half:]]
            xadd_frames(r, names, items)
            fleet.start()
            wait_caught_up(r, names, store, fleet, timeout=60)
            letters = _dead_letters(r, names)
        got = read_history(data_dir, store, "seq", "run")
        assert rows_same(got, script.oracle.rows), f"{len(got)} rows, want {len(script.oracle.rows)}"
        reasons = [(x[0]) for x in rejections_of(store, "seq", "run")]
        assert reasons == ["seq_out_of_window"] * 2, reasons
        assert [f["reason"] for f in letters] == [b"seq_out_of_window"] * 2
    finally:
        store.close()
