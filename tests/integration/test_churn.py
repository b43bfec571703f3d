"""Worker churn: 6 worker slots started, stopped (SIGTERM) and killed (kill -9) at random for a minute while 20
runs log, with PostgreSQL metadata (the backend for several workers) and with one SQLite file.
History equals the oracle exactly, and no partition ever had two committing owners: every commit is recorded with
its epoch in ``sl_commits`` (``STEPLINE_COMMIT_AUDIT=1``, same transaction as the commit), and per partition, in
commit order, offsets strictly increase and epochs never go back (epoch e+1 committed means epoch e never commits
again: no interleaving). After a kill -9 every partition the victim owned is taken over (a new epoch) before the
next fault; how long that took is printed, not asserted (a wall-clock bound fails at random on a busy machine).
"""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select
from support.pg import fresh_database
from support.worker_harness import (
    Feeder,
    WorkerFleet,
    WorkerProc,
    check_history,
    interleave,
    make_run,
    wait_caught_up,
    wait_until,
)

from schemas import Names
from schemas.store import commits, partitions, reader_engine
from workers.metastore import MetaStore, sqlite_url
from workers.partition import id_tuple

pytestmark = pytest.mark.integration

CHURN_S, SLOTS, RUNS, PARTITIONS, TTL_MS = 60.0, 6, 20, 16, 2000
AUDIT = {"STEPLINE_COMMIT_AUDIT": "1"}


def owners(engine: Engine) -> dict[int, tuple[str | None, int]]:
    """partition → (owner, epoch), read now through the readers' engine (a WAL snapshot, never the write lock the
    workers' commits queue for). Errors propagate: a check that cannot read must not pass on empty data."""
    with engine.connect() as conn:
        rows = conn.execute(select(partitions.c.p, partitions.c.owner, partitions.c.epoch)).all()
    return {int(r.p): (r.owner, int(r.epoch)) for r in rows}


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
    engine = reader_engine(metadata_url)
    feeder = Feeder(redis_url, names, interleave(scripts, rng), seconds=CHURN_S - 10, hold=True)
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
            held = {p: e for p, (o, e) in owners(engine).items() if o == w.wid}
            fleet.kill9(w)
            killed = time.monotonic()
            # Nothing else changes until every partition the victim held has a new epoch (a generous deadline
            # only catches a takeover that never comes).
            for p, epoch in held.items():
                wait_until(lambda p=p, epoch=epoch: owners(engine)[p][1] > epoch, 60,
                           f"partition {p} of {w.wid} to be taken over\n{fleet.logs()}")
                takeovers.append(time.monotonic() - killed)
        assert feeder.held > 0, "no frame arrived while the faults went on"
        feeder.release()
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
        feeder.release()
        engine.dispose()
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
    assert takeovers, f"no kill -9 hit a worker that owned partitions: {actions}"
    print(f"churn: {actions}; {len(rows)} commits audited over {len(by_p)} partitions, "
          f"{sum(len({e for e, _ in s}) for s in by_p.values())} epochs committed; takeovers after kill -9: "
          f"{[round(t, 2) for t in takeovers]}")
