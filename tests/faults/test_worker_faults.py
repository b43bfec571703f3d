"""Fault injection with real worker processes: kill -9 at random moments, and a paused zombie that wakes up.

docs/DESIGN.md §6: consumption restarts from the committed offset, so a crash at any point loses nothing and duplicates
nothing; a worker whose partition was taken (its epoch moved on) has every commit refused.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from support.history_oracle import read_history
from support.s3 import Storage
from support.worker_harness import (
    Feeder,
    RunScript,
    WorkerFleet,
    check_history,
    interleave,
    make_run,
    open_store,
    wait_caught_up,
    wait_until,
    xadd_frames,
)

from schemas import DEFAULT_LIMITS, FencedError, Names
from workers.metastore import MetaStore
from workers.partition import PartitionProcessor

pytestmark = pytest.mark.faults

PARTITIONS = 8
KILLS = 20


def settle(feeder: Feeder, redis_url: str, names: Names, store: MetaStore, fleet: WorkerFleet, data_dir: Path,
           scripts: list[RunScript]) -> None:
    """The faults are over: send the held-back frames, wait for the workers to commit everything, check history."""
    feeder.release()
    feeder.join(60)
    assert feeder.error is None
    with redis.Redis.from_url(redis_url) as r:
        wait_caught_up(r, names, store, fleet, timeout=60)
    check_history(data_dir, store, scripts)


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(redis_url: str, namespace: str, data_dir: Path,
                                                               fleet: WorkerFleet) -> None:
    fleet.partitions = PARTITIONS
    fleet.lease_ttl_ms = 1200
    names = Names(namespace, PARTITIONS)
    rng = random.Random(99)
    scripts = [make_run(rng, names, "kill9", f"run-{i:02d}", 2_000, 8, frame_events=10) for i in range(12)]
    for _ in range(3):
        fleet.start()
    feeder = Feeder(redis_url, names, interleave(scripts, rng), seconds=15, hold=True)
    store = open_store(data_dir)
    chaos = random.Random(5)
    try:
        wait_until(lambda: len([p for p in store.partitions() if p["owner"]]) == PARTITIONS, 20,
                   "the workers to own every partition")
        feeder.start()
        for _ in range(KILLS):
            time.sleep(chaos.uniform(0.2, 1.3))  # a random moment, while frames keep arriving
            victim = chaos.choice(fleet.live())
            fleet.kill9(victim)
            assert victim.proc.returncode == -signal.SIGKILL
            fleet.start()
        assert not feeder.done.is_set(), "the feeder is held back until the kills are done"
        settle(feeder, redis_url, names, store, fleet, data_dir, scripts)
        assert len(fleet.procs) == 3 + KILLS
        epochs = sum(int(p["epoch"]) for p in store.partitions())
        assert epochs > PARTITIONS + KILLS, "partitions should have changed hands after the kills"
    finally:
        feeder.release()
        store.close()


def test_paused_zombie_is_fenced(redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet) -> None:
    fleet.partitions = PARTITIONS
    fleet.lease_ttl_ms = 1500
    fleet.commit_interval_s = 1.0  # the zombie holds uncommitted work when it is paused
    names = Names(namespace, PARTITIONS)
    rng = random.Random(11)
    scripts = [make_run(rng, names, "zombie", f"run-{i:02d}", 1_500, 6, frame_events=10) for i in range(10)]
    zombie = fleet.start("zombie")
    store = open_store(data_dir)
    feeder = Feeder(redis_url, names, interleave(scripts, rng), seconds=6, hold=True)
    try:
        wait_until(lambda: {p["owner"] for p in store.partitions()} == {"zombie"}
                   and len(store.partitions()) == PARTITIONS, 20, "the zombie to own every partition")
        feeder.start()
        wait_until(lambda: sum(p["offset"] != "0-0" for p in store.partitions()) == PARTITIONS, 20,
                   "the zombie to commit on every partition")
        before = {int(p["p"]): (int(p["epoch"]), p["offset"]) for p in store.partitions()}
        pause_outside_a_transaction(zombie.proc, data_dir)
        fleet.start("rescuer")
        # The rescuer waits for the leases to expire, takes every partition (epochs move on) and commits past
        # where the zombie stopped.
        def taken_over() -> bool:
            return all(p["owner"] == "rescuer" and int(p["epoch"]) > before[int(p["p"])][0]
                       and p["offset"] != before[int(p["p"])][1] for p in store.partitions())

        wait_until(taken_over, 30, "the rescuer to take over and commit every partition")
        zombie.proc.send_signal(signal.SIGCONT)
        noticed = wait_until(lambda: [m for m in ("fenced", "lost the lease") if m in zombie.log.read_text()], 15,
                             "the zombie to notice it lost its partitions")
        print(f"the zombie noticed: {noticed}")
        settle(feeder, redis_url, names, store, fleet, data_dir, scripts)
        assert zombie.alive(), fleet.logs()
    finally:
        feeder.release()
        store.close()


def pause_outside_a_transaction(proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    """SIGSTOP a worker at a moment it holds no SQLite write lock.

    SQLite has one writer: a worker paused inside its commit transaction would block every other process's
    transaction (the rescuer's and the test's) until it is resumed, and the test would measure SQLite's busy
    timeout instead of the fencing. Paused at a random moment, that happened on a loaded machine; so pause, check
    the write lock is free, and if not resume it briefly and try again."""
    db = data_dir / "meta.sqlite"
    for _ in range(200):
        proc.send_signal(signal.SIGSTOP)
        con = sqlite3.connect(db, timeout=0.2, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        finally:
            con.close()
    pytest.fail("the worker held the SQLite write lock at every try")


async def test_zombie_commit_is_refused_and_writes_nothing(redis_url: str, namespace: str, data_dir: Path,
                                                           storage: Storage) -> None:
    """The fencing itself, deterministically: a processor of an old epoch commits after another took over. On both
    storage backends: the zombie's segment objects are written but never referenced, and orphan collection removes
    exactly them."""
    names = Names(namespace, 1)
    rng = random.Random(1)
    script = make_run(rng, names, "fence", "run", 200, 2, frame_events=20, reject_rate=0.1)
    assert len(script.oracle.rejections) > 10
    r = aioredis.Redis.from_url(redis_url)
    store = open_store(data_dir)
    try:
        with redis.Redis.from_url(redis_url) as sync_r:
            xadd_frames(sync_r, names, [(0, f) for f in script.frames])
        entries = await r.xrange(names.stream(0))
        half = len(entries) // 2

        def processor(owner: str) -> PartitionProcessor:
            epoch, offset = store.take_partition(0, owner)
            return PartitionProcessor(p=0, epoch=epoch, offset=offset, names=names, store=store, data_dir=data_dir,
                                      redis=r, limits=DEFAULT_LIMITS, objects=storage.objects)

        old = processor("zombie")
        await old.process(entries[:half])
        assert await old.commit()
        await old.process(entries[half:])  # the zombie has more work, then is paused...
        new = processor("rescuer")  # ...another worker takes the partition (epoch + 1)
        assert new.offset == entries[half - 1][0].decode()
        await new.process(entries[half:])
        assert await new.commit()
        with pytest.raises(FencedError):
            await old.commit()  # the zombie wakes up: refused
        part = store.partitions()[0]
        assert (part["owner"], part["epoch"], part["offset"]) == ("rescuer", new.epoch, entries[-1][0].decode())
        rows = read_history(storage.objects, store, "fence", "run")
        assert [x[0] for x in rows] == [x[0] for x in script.oracle.rows]  # no duplicate from the zombie
        check_history(storage.objects, store, [script])
        referenced = {seg["file"] for seg in store.segments_of("fence", "run")}
        listed = {rel for rel, _size, _mtime in storage.objects.list("segments")}
        assert listed > referenced  # the zombie's objects: written, never referenced
        assert store.collect_orphans(storage.objects, grace_s=-60) == len(listed - referenced)
        assert {rel for rel, _size, _mtime in storage.objects.list("segments")} == referenced
        check_history(storage.objects, store, [script])
        # Dead letters are not duplicated by the zombie's refused commit either.
        # (Two rejections of one entry may share step and cursor, so the check is the whole list, in call order.)
        dlq = [(f[b"reason"].decode(), int(f[b"step"]), int(f[b"cursor"])) for _, f in await r.xrange(names.dlq(0))]
        assert dlq == script.oracle.rejections
    finally:
        store.close()
        await r.aclose()
