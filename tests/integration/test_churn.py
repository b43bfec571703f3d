"""Worker churn: 6 worker slots started, stopped (SIGTERM) and killed (kill -9) at random for a minute while 20
runs log, with PostgreSQL metadata (the backend for several workers) and with one SQLite file.
History equals the oracle exactly, and no partition ever had two committing owners: every commit is recorded with
its epoch in ``sl_commits`` (``STEPLINE_COMMIT_AUDIT=1``, same transaction as the commit), and per partition, in
commit order, offsets strictly increase and epochs never go back (epoch e+1 committed means epoch e never commits
again: no interleaving). After a kill -9 its partitions are taken over within lease TTL + 2 s.
"""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from support.pg import fresh_database
from support.worker_harness import (
    Feeder,
    WorkerFleet,
    WorkerProc,
    check_history,
    interleave,
    make_run,
    wait_caught_up,
)

from schemas import Names
from schemas.store import commits, partitions, reader_engine
from workers.metastore import MetaStore, sqlite_url
from workers.partition import id_tuple

pytestmark = pytest.mark.integration

CHURN_S, SLOTS, RUNS, PARTITIONS, TTL_MS = 60.0, 6, 20, 16, 2000
AUDIT = {"STEPLINE_COMMIT_AUDIT": "1"}


class OwnerWatch(threading.Thread):
    """Samples ``sl_partitions`` every 0.1 s: (time, partition) → (owner, epoch), to time takeovers. Reads through
    the readers' engine (a WAL snapshot, never the write lock the workers' commits queue for)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = reader_engine(url)
        self.samples: list[tuple[float, dict[int, tuple[str | None, int]]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.engine.connect() as conn:
                    rows = conn.execute(select(partitions.c.p, partitions.c.owner, partitions.c.epoch)).all()
                self.samples.append((time.monotonic(), {int(r.p): (r.owner, int(r.epoch)) for r in rows}))
            except Exception:  # the database is busy: the next sample will do
                pass
            time.sleep(0.1)
        self.engine.dispose()

    def owned_by(self, wid: str) -> dict[int, int]:
        """Partitions owned by ``wid`` in the last sample: partition → epoch."""
        return {p: e for p, (o, e) in self.samples[-1][1].items() if o == wid} if self.samples else {}

    def taken_at(self, p: int, after_epoch: int, since: float) -> float | None:
        for t, snap in self.samples:
            if t >= since and snap.get(p, (None, 0))[1] > after_epoch:
                return t
        return None


@pytest.fixture(params=["postgresql", "sqlite"])
def metadata_url(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(data_dir)
    else:
        with fresh_database() as url:
            yield url


@pytest.mark.timeout(300)
def test_churn_no_loss_no_two_committing_owners(redis_url: str, namespace: str, data_dir: Path,
                                                 fleet: WorkerFleet, metadata_url: str) -> None:
    fleet.lease_ttl_ms = TTL_MS
    fleet.db_url = metadata_url
    names = Names(namespace, PARTITIONS)
    rng = random.Random(2027)
    scripts = [make_run(rng, names, "churn", f"run-{i:02d}", 3_000, 6, frame_events=20) for i in range(RUNS)]
    ids = itertools.count()
    live: list[WorkerProc] = []

    def start() -> None:
        live.append(fleet.start(f"w{next(ids)}", env=AUDIT))

    for _ in range(3):
        start()
    store = MetaStore(metadata_url)
    watch = OwnerWatch(metadata_url)
    watch.start()
    feeder = Feeder(redis_url, names, interleave(scripts, rng), seconds=CHURN_S - 5)
    feeder.start()
    takeovers: list[float] = []
    actions: list[str] = []
    try:
        end = time.monotonic() + CHURN_S
        while time.monotonic() < end:
            time.sleep(rng.uniform(1.0, 3.0))
            live[:] = [w for w in live if w.alive()]
            if len(live) <= 2:
                action = "start"
            elif len(live) >= SLOTS:
                action = rng.choice(["term", "kill"])
            else:
                action = rng.choice(["start", "start", "term", "kill"])
            actions.append(action)
            if action == "start":
                start()
                continue
            w = rng.choice(live)
            live.remove(w)
            if action == "term":
                w.proc.send_signal(signal.SIGTERM)
                # 0 = drained; -SIGTERM = stopped while still starting, before it installed its handler.
                try:
                    rc = w.proc.wait(30)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"{w.wid} did not exit within 30 s of SIGTERM (drain time 20 s)\n"
                                         f"{w.stacks()}\n{fleet.logs()}") from None
                assert rc in (0, -signal.SIGTERM), fleet.logs()
                continue
            held = watch.owned_by(w.wid)
            fleet.kill9(w)
            killed = time.monotonic()
            # Nothing else changes until the takeover had its chance: lease TTL + 2 s (and a sample's slack).
            time.sleep(TTL_MS / 1000 + 2.5)
            for p, epoch in held.items():
                t = watch.taken_at(p, epoch, killed)
                assert t is not None, f"partition {p} of {w.wid} not taken over within TTL + 2 s\n{fleet.logs()}"
                takeovers.append(t - killed)
        feeder.join(60)
        assert feeder.error is None
        while len([w for w in live if w.alive()]) < 2:
            start()
        with redis.Redis.from_url(redis_url) as r:
            wait_caught_up(r, names, store, fleet, timeout=90)
        check_history(data_dir, store, scripts)
        with store.engine.connect() as conn:
            rows = conn.execute(commits.select().order_by(commits.c.id)).all()
    finally:
        watch.stop.set()
        watch.join(5)
        store.close()
    assert actions.count("kill") + actions.count("term") >= 5, actions
    by_p: dict[int, list[tuple[int, str]]] = {}
    for r in rows:
        by_p.setdefault(int(r.p), []).append((int(r.epoch), str(r.offset)))
    for p, seq in by_p.items():
        for (e1, o1), (e2, o2) in itertools.pairwise(seq):
            assert e2 >= e1, f"partition {p}: epoch {e2} committed after epoch {e1}: two committing owners"
            assert id_tuple(o2) > id_tuple(o1), f"partition {p}: offset {o2} committed after {o1}"
    moved = [p for p, seq in by_p.items() if len({e for e, _ in seq}) > 1]
    assert len(moved) >= PARTITIONS // 2, f"churn moved too few partitions: {moved}"
    assert all(t <= TTL_MS / 1000 + 2.0 + 0.2 for t in takeovers), takeovers
    print(f"churn: {actions}; {len(rows)} commits audited over {len(by_p)} partitions, "
          f"{sum(len({e for e, _ in s}) for s in by_p.values())} epochs committed; takeovers after kill -9: "
          f"{[round(t, 2) for t in takeovers]}")
