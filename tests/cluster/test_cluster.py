"""The same pipeline on a real Redis Cluster (3 masters + 3 replicas started by the suite): the 50-run end-to-end
test with 3 worker processes, the SDK through the cluster to the query API, and a master killed mid-stream.

What a failover may cost is what README's Guarantees section says Redis may lose: replication is asynchronous, so
the promoted replica can miss the last writes the killed master had acknowledged. The failover test checks exactly
that statement: every frame is in history, except possibly, per run, one contiguous range of frames that the
killed master acknowledged within the last moments before the kill (and the worker reports each such gap as the
run warning "events N..M are missing"); everything the producer had not seen acknowledged was resent and is there.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from support.history_oracle import Oracle, read_history, rows_same
from support.redis_cluster import LocalCluster, plain
from support.worker_harness import (
    RunScript,
    WorkerFleet,
    check_history,
    interleave,
    make_run,
    open_store,
    rejections_of,
    wait_caught_up,
    wait_until,
    xadd_frames,
)

import ingest
from history.query import Api
from schemas import DEFAULT_LIMITS, FRAME_FIELD, Finish, Log, Names, Start, decode_frame, unpackb
from schemas.store import runs as runs_table

pytestmark = pytest.mark.integration

E2E_RUNS, E2E_STEPS, E2E_FLOAT_KEYS, PARTITIONS = 50, 2_000, 18, 16


def test_end_to_end_50_runs_3_workers_on_a_cluster(cluster_url: str, namespace: str, data_dir: Path,
                                                    cluster_fleet: WorkerFleet) -> None:
    names = Names(namespace, PARTITIONS)
    rng = random.Random(20240601)
    scripts = [make_run(rng, names, "e2e", f"run-{i:02d}", E2E_STEPS, E2E_FLOAT_KEYS) for i in range(E2E_RUNS)]
    for _ in range(3):
        cluster_fleet.start()
    t = time.monotonic()
    with redis.RedisCluster.from_url(plain(cluster_url)) as r:
        # The partitions really are spread over the three masters.
        assert len({r.keyslot(names.stream(p)) // 5462 for p in range(PARTITIONS)}) == 3
        xadd_frames(r, names, interleave(scripts, rng))
        store = open_store(data_dir)
        try:
            wait_caught_up(r, names, store, cluster_fleet, timeout=90)
            elapsed = time.monotonic() - t
            check_history(data_dir, store, scripts)
            owners = {row["owner"] for row in store.partitions()}
        finally:
            store.close()
    assert all(w.alive() for w in cluster_fleet.procs), cluster_fleet.logs()
    assert len(owners - {None}) == 3, owners
    print(f"cluster: {E2E_RUNS * E2E_STEPS} calls committed in {elapsed:.1f}s")


def test_sdk_through_the_cluster_to_the_api(cluster_url: str, namespace: str, data_dir: Path,
                                            cluster_fleet: WorkerFleet) -> None:
    from integration.test_sdk_e2e import drive, same

    for _ in range(2):
        cluster_fleet.start()
    n_runs = 8
    oracles = [Oracle() for _ in range(n_runs)]
    runs = [ingest.init(project="sdkc", id=f"run{i:02d}", redis_url=cluster_url, namespace=namespace,
                        data_dir=str(data_dir)) for i in range(n_runs)]
    threads = [threading.Thread(target=drive, args=(r, random.Random(i), o))
               for i, (r, o) in enumerate(zip(runs, oracles, strict=True))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with Api(data_dir=data_dir) as api:
        def done() -> bool:
            views = {v.id: v for v in api.runs("sdkc")}
            return len(views) == n_runs and all(
                views[f"run{i:02d}"].state == "finished" and views[f"run{i:02d}"].rows == len(o.rows)
                for i, o in enumerate(oracles))
        try:
            wait_until(done, 60, "the SDK runs to be committed", 0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{cluster_fleet.logs()}") from None
        for i, o in enumerate(oracles):
            run = api.run(f"sdkc/run{i:02d}")
            got = list(run.scan_history(page_size=5000))
            assert [g["_step"] for g in got] == [s for s, _, _, _ in o.rows]
            for g, (_step, _ts, _rt, want) in zip(got, o.rows, strict=True):
                values = {k: v for k, v in g.items() if not k.startswith("_")}
                assert all(same(values[k.split(":")[0]], v) for k, v in want.items()), g["_step"]
            assert [(x["reason"], x["step"], x["cursor"]) for x in run.rejections()] == o.rejections
    # Every partition's keys stayed in their own slot: the streams used are spread over the masters.
    with redis.RedisCluster.from_url(plain(cluster_url)) as r:
        used = [p for p in range(PARTITIONS) if r.exists(Names(namespace, PARTITIONS).stream(p))]
        assert len(used) >= 4


# --- failover --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Producer(threading.Thread):
    """Plays the SDK's part: a frame leaves the outbox only once its XADD was acknowledged; on any error the
    same frame is sent again (a lost reply makes a duplicate, which the workers skip by ``(producer, seq)``)."""

    url: str
    names: Names
    items: list[tuple[int, int, bytes]]  # (run index, partition, frame)
    seconds: float
    acked: dict[tuple[int, int], float] = field(default_factory=dict)  # (run, frame index) → ack time
    errors: int = 0
    failure: BaseException | None = None

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def run(self) -> None:
        try:
            r = redis.RedisCluster.from_url(plain(self.url), socket_timeout=2, socket_connect_timeout=1)
            per_run: dict[int, int] = {}
            pace = self.seconds / len(self.items)
            t = time.monotonic()
            for run_i, p, frame in self.items:
                while True:
                    try:
                        r.xadd(self.names.stream(p), {FRAME_FIELD: frame})
                        break
                    except (redis.RedisError, OSError):
                        self.errors += 1
                        time.sleep(0.05)
                k = per_run.get(run_i, 0)
                per_run[run_i] = k + 1
                self.acked[(run_i, k)] = time.monotonic()
                t += pace
                time.sleep(max(0.0, t - time.monotonic()))
            r.close()
        except BaseException as e:
            self.failure = e


def oracle_without(script: RunScript, missing: set[int]) -> Oracle:
    """The run's oracle rebuilt from its frames minus the frames (indexes) Redis lost."""
    o = Oracle()
    for i, raw in enumerate(script.frames):
        if i in missing:
            continue
        for ev in decode_frame(raw, DEFAULT_LIMITS).events:
            if isinstance(ev, Start):
                o.start(ev.ts)
            elif isinstance(ev, Log):
                o.log(ev.ts, ev.data, ev.step, ev.commit)
            elif isinstance(ev, Finish):
                o.finish(ev.ts)
    return o


def test_master_killed_mid_stream_replica_promoted(tmp_path: Path, namespace: str, data_dir: Path) -> None:
    frame_events = 20
    with LocalCluster(tmp_path / "failover-cluster") as cluster:
        names = Names(namespace, PARTITIONS)
        rng = random.Random(11)
        scripts = [make_run(rng, names, "fo", f"run-{i:02d}", 1_200, 6, frame_events=frame_events)
                   for i in range(16)]
        order = interleave(scripts, rng)
        by_frame = {id(f): (i, k) for i, s in enumerate(scripts) for k, f in enumerate(s.frames)}
        items = [(by_frame[id(f)][0], p, f) for p, f in order]
        fleet = WorkerFleet(redis_url=cluster.url, namespace=namespace, data_dir=data_dir,
                            log_dir=tmp_path / "logs")
        try:
            for _ in range(3):
                fleet.start()
            victim = cluster.master_of_key(names.stream(scripts[0].partition))
            replica = cluster.replicas_of(victim)[0]
            on_victim = {p for p in range(PARTITIONS) if cluster.master_of_key(names.stream(p)) is victim}
            producer = Producer(cluster.url, names, items, seconds=10)
            producer.start()
            time.sleep(4)  # mid-stream: workers own and have committed part of every partition
            assert producer.is_alive()
            cluster.kill(victim)  # kill -9: no shutdown, no last replication
            killed_at = time.monotonic()
            cluster.wait_promoted(replica)
            promoted_in = time.monotonic() - killed_at
            producer.join(60)
            assert producer.failure is None, producer.failure
            assert len(producer.acked) == len(items)  # the run completes: every frame acknowledged in the end
            with redis.RedisCluster.from_url(plain(cluster.seed_urls[0])) as r:
                store = open_store(data_dir)
                try:
                    wait_caught_up(r, names, store, fleet, timeout=60)
                    lost_total = 0
                    for i, s in enumerate(scripts):
                        missing = missing_frames(store, s, frame_events)
                        lost_total += len(missing)
                        if missing:
                            # Only what Redis may lose: one contiguous range of frames, on the killed master,
                            # acknowledged by it shortly before the kill.
                            assert s.partition in on_victim, (s.run, missing)
                            assert sorted(missing) == list(range(min(missing), max(missing) + 1)), missing
                            for k in missing:
                                acked = producer.acked[(i, k)]
                                assert killed_at - 1.0 <= acked <= killed_at + 0.05, (s.run, k, acked - killed_at)
                        want = oracle_without(s, missing)
                        got = read_history(data_dir, store, s.project, s.run)
                        assert rows_same(got, want.rows), f"{s.run}: history differs from the oracle"
                        assert rejections_of(store, s.project, s.run) == want.rejections
                finally:
                    store.close()
            assert all(w.alive() for w in fleet.procs), fleet.logs()
            print(f"failover: promoted in {promoted_in:.1f}s, {producer.errors} send errors resent, "
                  f"{lost_total} acknowledged frames lost by the failover")
        finally:
            fleet.close()


_MISSING = re.compile(r"events (\d+)\.\.(\d+) are missing")


def missing_frames(store: Any, s: RunScript, frame_events: int) -> set[int]:
    """Frames of the run the workers found missing (the aligner's "events N..M are missing" warnings)."""
    with store.engine.connect() as conn:
        row = conn.execute(runs_table.select().where(runs_table.c.project == s.project,
                                                     runs_table.c.run == s.run)).first()
    assert row is not None, s.run
    info = unpackb(row.info)
    out: set[int] = set()
    for w in info.get("warnings", []):
        m = _MISSING.search(str(w))
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            assert lo % frame_events == 0 and (hi + 1) % frame_events == 0, (lo, hi)  # whole frames
            out.update(range(lo // frame_events, hi // frame_events + 1))
    assert row.state == "finished" or max(out, default=-1) == len(s.frames) - 1, s.run
    return out


def test_resharding_under_load_moves_partitions_with_no_loss(tmp_path: Path, namespace: str,
                                                             data_dir: Path) -> None:
    """The slots of the partitions on one master migrate, key by key, to another while frames are written and
    workers read and commit: clients follow ASK and MOVED, and history equals the oracle exactly."""
    with LocalCluster(tmp_path / "reshard-cluster") as cluster:
        names = Names(namespace, PARTITIONS)
        rng = random.Random(5)
        scripts = [make_run(rng, names, "rs", f"run-{i:02d}", 1_200, 6, frame_events=20) for i in range(16)]
        order = interleave(scripts, rng)
        by_frame = {id(f): (i, k) for i, s in enumerate(scripts) for k, f in enumerate(s.frames)}
        items = [(by_frame[id(f)][0], p, f) for p, f in order]
        fleet = WorkerFleet(redis_url=cluster.url, namespace=namespace, data_dir=data_dir,
                            log_dir=tmp_path / "logs")
        try:
            for _ in range(2):
                fleet.start()
            src = cluster.master_of_key(names.stream(scripts[0].partition))
            dst = next(n for n in cluster.nodes if n is not src and cluster.master_of_key(names.stream(0)) is not n
                       and n.alive() and any(t["port"] == n.port and t["master"] for t in cluster.topology()))
            moved = {p for p in range(PARTITIONS) if cluster.master_of_key(names.stream(p)) is src}
            producer = Producer(cluster.url, names, items, seconds=10)
            producer.start()
            time.sleep(3)
            assert producer.is_alive()
            t = time.monotonic()
            with redis.Redis(port=src.port) as c:
                slots = sorted({int(c.execute_command("CLUSTER KEYSLOT", names.stream(p))) for p in moved})
            keys = sum(cluster.migrate_slot(slot, src, dst, pause_s=0.3) for slot in slots)
            took = time.monotonic() - t
            assert keys >= len(slots)  # the streams (and leases) really moved
            assert producer.is_alive(), "the producer finished before the resharding did: make it slower"
            assert all(cluster.master_of_key(names.stream(p)) is dst for p in moved)
            producer.join(60)
            assert producer.failure is None, producer.failure
            with redis.RedisCluster.from_url(plain(cluster.url)) as r:
                store = open_store(data_dir)
                try:
                    wait_caught_up(r, names, store, fleet, timeout=60)
                    check_history(data_dir, store, scripts)
                finally:
                    store.close()
            assert all(w.alive() for w in fleet.procs), fleet.logs()
            print(f"reshard: partitions {sorted(moved)} moved to another master under load in {took:.1f}s; "
                  f"{producer.errors} send errors resent")
        finally:
            fleet.close()
