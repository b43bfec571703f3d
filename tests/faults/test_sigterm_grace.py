"""SIGTERM exits within the drain timeout even when a commit cannot finish (the metadata database is locked)."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from support.worker_harness import WorkerFleet, wait_until

import ingest
from history.query import Api

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
