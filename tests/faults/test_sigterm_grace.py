"""SIGTERM exits within the drain timeout even when a commit cannot finish (the metadata database is locked) or
fails during the drain while another stays blocked."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import redis
from support.pg import fresh_database
from support.worker_harness import WorkerFleet, make_run, wait_caught_up, wait_until, xadd_frames

import ingest
from history.query import Api
from schemas import Names
from workers.metastore import MetaStore

pytestmark = pytest.mark.faults

DRAIN_S = 3.0


def test_sigterm_exits_within_grace_while_sqlite_is_locked(redis_url: str, namespace: str, data_dir: Path,
                                                            fleet: WorkerFleet) -> None:
    w = fleet.start(env={"STEPLINE_DRAIN_TIMEOUT_S": str(DRAIN_S)})
    run = ingest.init(project="g", id="r", redis_url=redis_url, namespace=namespace, data_dir=str(data_dir))
    for s in range(100):
        run.log({"x": float(s)}, step=s)
    assert run.finish(timeout=30).ok
    db = data_dir / "meta.sqlite"
    # The first run committed: the worker is past its start (migrations, signal handlers) and in its main loop.
    with Api(data_dir=data_dir) as api:
        wait_until(lambda: _rows(api, "g/r") == 100, 30, "the worker's first commit")
    lock = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # every commit now waits on SQLite's busy timeout (30 s)
        more = ingest.init(project="g", id="r2", redis_url=redis_url, namespace=namespace, data_dir=str(data_dir))
        for s in range(100):
            more.log({"x": float(s)}, step=s)
        assert more.finish(timeout=30).ok
        time.sleep(1.0)  # let the worker read the new entries and start a commit that blocks on the lock
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        rc = w.proc.wait(DRAIN_S + 5)
        elapsed = time.monotonic() - t0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert rc == 0, w.tail()
    assert elapsed < DRAIN_S + 3, f"exit took {elapsed:.1f}s with a drain timeout of {DRAIN_S}s"
    # Nothing is lost: a new worker resumes from the committed offset once the old lease expires.
    fleet.start()
    with Api(data_dir=data_dir) as api:
        wait_until(lambda: _rows(api, "g/r2") == 100, 30, "the second run committed by the next worker")


def _rows(api: object, path: str) -> int:
    try:
        return int(api.run(path).rows)  # type: ignore[attr-defined]
    except LookupError:
        return 0


def test_sigusr1_dumps_every_thread_and_the_worker_goes_on(redis_url: str, namespace: str, data_dir: Path,
                                                           fleet: WorkerFleet) -> None:
    """A worker that will not stop can be looked into: SIGUSR1 writes each thread's stack to its log (no ptrace
    needed, unlike py-spy), and the worker keeps working and still drains on SIGTERM."""
    w = fleet.start()
    wait_until(lambda: "took partition" in w.tail(200), 30, "the worker's first partition")
    dump = w.stacks()
    assert "--- end of stacks ---" in dump, dump
    assert "(MainThread)" in dump, dump
    assert "workers/worker.py" in dump, dump  # the event loop thread is in the worker's code
    assert w.alive()
    run = ingest.init(project="u", id="r", redis_url=redis_url, namespace=namespace, data_dir=str(data_dir))
    run.log({"x": 1.0}, step=0)
    assert run.finish(timeout=30).ok
    with Api(data_dir=data_dir) as api:
        wait_until(lambda: _rows(api, "u/r") == 1, 30, "the run committed after the dump")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(15) == 0, w.tail()


def test_sigterm_exits_within_the_drain_timeout_when_a_commit_fails_during_the_drain(
        redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet) -> None:
    """PostgreSQL: the commits of both partitions wait on row locks other sessions hold (PostgreSQL waits for a row
    lock without a timeout). After SIGTERM, one of them fails (its backend is terminated: an error that is neither
    a timeout nor a Redis error) while the other stays blocked. The failure used to escape the drain: the rest of
    the shutdown was skipped (leases, membership, exit_now) and the normal interpreter exit then joined the thread
    still blocked, so the process never exited. Now the whole shutdown ends within the drain timeout."""
    import psycopg

    parts = 2
    fleet.partitions = parts
    names = Names(namespace, parts)
    rng = random.Random(3)
    runs = {p: next(f"r{i}" for i in range(100) if names.partition("lk", f"r{i}") == p) for p in range(parts)}
    scripts = {p: make_run(rng, names, "lk", run, 200, 2, frame_events=10) for p, run in runs.items()}
    with fresh_database() as url, redis.Redis.from_url(redis_url) as r:
        fleet.db_url = url
        store = MetaStore(url)
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        lockers: list[psycopg.Connection[tuple[object, ...]]] = []
        try:
            w = fleet.start(env={"STEPLINE_DRAIN_TIMEOUT_S": str(DRAIN_S)})
            half = {p: len(s.frames) // 2 for p, s in scripts.items()}
            xadd_frames(r, names, [(p, f) for p, s in scripts.items() for f in s.frames[:half[p]]])
            wait_caught_up(r, names, store, fleet, timeout=30)  # both partitions taken and committed once
            for p in range(parts):
                c = psycopg.connect(dsn)
                c.execute("SELECT p FROM sl_partitions WHERE p = %s FOR UPDATE", (p,))  # held: the commits queue
                lockers.append(c)
            xadd_frames(r, names, [(p, f) for p, s in scripts.items() for f in s.frames[half[p]:]])
            with psycopg.connect(dsn, autocommit=True) as admin:

                def waiting_on(locker: psycopg.Connection[tuple[object, ...]]) -> list[int]:
                    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                         (locker.info.backend_pid,)).fetchall()
                    return [int(x[0]) for x in rows]

                wait_until(lambda: all(waiting_on(c) for c in lockers), 20, "both commits waiting on the row locks")
                t0 = time.monotonic()
                w.proc.send_signal(signal.SIGTERM)
                time.sleep(0.5)  # the drain has begun: it waits for both commits
                for pid in waiting_on(lockers[0]):
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                try:
                    rc = w.proc.wait(DRAIN_S + 5)
                except Exception:
                    raise AssertionError(f"no exit within {DRAIN_S + 5} s of SIGTERM\n{w.stacks()}") from None
                elapsed = time.monotonic() - t0
        finally:
            for c in lockers:
                c.close()
            store.close()
        assert rc == 0, w.tail()
        assert elapsed < DRAIN_S + 0.5, f"exit took {elapsed:.1f}s with a drain timeout of {DRAIN_S}s"
        assert r.hget(names.workers, w.wid) is None, "the worker did not leave the membership"
        assert all(r.get(names.lease(p)) is None for p in range(parts)), "leases still held"
