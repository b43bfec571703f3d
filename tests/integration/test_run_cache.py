"""Bounded worker memory: a partition drops the state of runs that are finished, idle or past its cap once every
change to them is committed, and reloads it from the metadata store when the run logs again, with the same
history as a worker that keeps everything (issue 15, item 9)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis
from support.worker_harness import check_history, interleave, make_run, open_store, xadd_frames

from schemas import DEFAULT_LIMITS, Names
from workers.partition import PartitionProcessor


async def test_evicted_runs_reload_and_give_the_same_history(redis_url: str, namespace: str, data_dir: Path) -> None:
    names = Names(namespace, 1)
    rng = random.Random(11)
    # Runs logging in turns (blocks and single calls, rejected steps among them), each resumed after eviction.
    scripts = [make_run(rng, names, "cache", f"r{i}", 300, 3, frame_events=10, reject_rate=0.05) for i in range(12)]
    items = interleave(scripts, rng)
    r = aioredis.Redis.from_url(redis_url)
    store = open_store(data_dir)
    try:
        with redis.Redis.from_url(redis_url) as sync_r:
            xadd_frames(sync_r, names, items)
        entries = await r.xrange(names.stream(0))
        epoch, offset = store.take_partition(0, "w")
        proc = PartitionProcessor(p=0, epoch=epoch, offset=offset, names=names, store=store, data_dir=data_dir,
                                  redis=r, limits=DEFAULT_LIMITS, run_cache_max=4, run_cache_idle_s=1e9)
        reloads = 0
        clock = 0.0
        for lo in range(0, len(entries), 7):
            before = set(proc.runs)
            await proc.process(entries[lo:lo + 7])
            reloads += len(set(proc.runs) - before)
            assert await proc.commit() or lo + 7 >= len(entries)
            clock += 2.0  # past the once-a-second gate of the eviction pass
            proc.evict_idle(now=clock)
            assert len(proc.runs) <= 4, "the cap holds once the commit is written"
        assert proc.evicted > 12, "run state was dropped and reloaded many times"
        assert reloads > 12
        check_history(data_dir, store, scripts)
    finally:
        await r.aclose()
        store.close()


async def test_dirty_runs_are_never_dropped(redis_url: str, namespace: str, data_dir: Path) -> None:
    """A run with uncommitted changes stays in memory whatever its age (its changes exist nowhere else)."""
    names = Names(namespace, 1)
    rng = random.Random(12)
    scripts = [make_run(rng, names, "cache", f"d{i}", 50, 2, frame_events=10) for i in range(3)]
    r = aioredis.Redis.from_url(redis_url)
    store = open_store(data_dir)
    try:
        with redis.Redis.from_url(redis_url) as sync_r:
            xadd_frames(sync_r, names, interleave(scripts, rng))
        entries = await r.xrange(names.stream(0))
        epoch, offset = store.take_partition(0, "w")
        proc = PartitionProcessor(p=0, epoch=epoch, offset=offset, names=names, store=store, data_dir=data_dir,
                                  redis=r, limits=DEFAULT_LIMITS, run_cache_max=64, run_cache_idle_s=0.001)
        await proc.process(entries)
        later = time.monotonic() + 1000  # every run idle by then
        assert proc.dirty and proc.evict_idle(now=later) == 0  # nothing committed yet: nothing may go
        assert set(proc.runs) == proc.dirty
        assert await proc.commit()
        assert proc.evict_idle(now=later + 2) == 3  # all committed: every run may go now
        assert not proc.runs and proc.evicted == 3
        check_history(data_dir, store, scripts)
    finally:
        await r.aclose()
        store.close()
