"""The same pipeline on a real Redis Cluster (3 masters + 3 replicas started by the suite): the 50-run end-to-end
test with 3 worker processes, the SDK through the cluster to the query API, and a master killed mid-stream.

What a failover may cost is what README's Guarantees section says Redis may lose: replication is asynchronous, so
the promoted replica can miss the last writes the killed master had acknowledged. The failover test checks exactly
that statement: every frame is in history, except possibly, per run, one contiguous range of frames that the
killed master acknowledged within the last moments before the kill (and the worker reports each such gap as the
run warning "events N..M are missing"); everything the producer had not seen acknowledged was resent and is there.
Which frames Redis lost is read from the streams after the failover, never from the workers' warnings: the
warnings are checked against it.
"""

from __future__ import annotations

import random
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
from schemas import DEFAULT_LIMITS, FRAME_FIELD, Finish, Log, LogBlock, Names, Start, decode_frame, unpackb
from schemas.store import runs as runs_table

pytestmark = pytest.mark.integration

E2E_RUNS, E2E_STEPS, E2E_FLOAT_KEYS, PARTITIONS = 50, 2_000, 18, 16


@pytest.mark.timeout(360)  # 100k rows through three workers: minutes on a loaded 2-core machine
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
            wait_caught_up(r, names, store, cluster_fleet, timeout=300)
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
    #: Set by the test once its fault is done. Until then the last fifth trickles in (a frame per 0.1 s), so the
    #: fault always lands mid-stream however slow a loaded machine makes the steps before it.
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def release(self) -> None:
        self.released.set()

    def run(self) -> None:
        try:
            r = redis.RedisCluster.from_url(plain(self.url), socket_timeout=2, socket_connect_timeout=1)
            per_run: dict[int, int] = {}
            paced = len(self.items) * 4 // 5
            pace = self.seconds / paced
            t = time.monotonic()
            for n, (run_i, p, frame) in enumerate(self.items):
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
                if n < paced:
                    t += pace
                    time.sleep(max(0.0, t - time.monotonic()))
                elif not self.released.is_set():
                    self.released.wait(0.1)
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
            elif isinstance(ev, LogBlock):
                for c in ev.calls():
                    o.log(c.ts, c.data, c.step, c.commit)
            elif isinstance(ev, Finish):
                o.finish(ev.ts)
    return o


def producer_items(scripts: list[RunScript], rng: random.Random) -> list[tuple[int, int, bytes]]:
    """The scripts' frames interleaved, each as (script index, partition, frame) for :class:`Producer`."""
    by_frame = {id(f): i for i, s in enumerate(scripts) for f in s.frames}
    return [(by_frame[id(f)], p, f) for p, f in interleave(scripts, rng)]


def test_master_killed_mid_stream_replica_promoted(tmp_path: Path, namespace: str, data_dir: Path) -> None:
    frame_events = 20
    with LocalCluster(tmp_path / "failover-cluster") as cluster:
        names = Names(namespace, PARTITIONS)
        rng = random.Random(11)
        scripts = [make_run(rng, names, "fo", f"run-{i:02d}", 1_200, 6, frame_events=frame_events)
                   for i in range(16)]
        items = producer_items(scripts, rng)
        fleet = WorkerFleet(redis_url=cluster.url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "logs")
        try:
            for _ in range(3):
                fleet.start()
            victim = cluster.master_of_key(names.stream(scripts[0].partition))
            replica = cluster.replicas_of(victim)[0]
            on_victim = {p for p in range(PARTITIONS) if cluster.master_of_key(names.stream(p)) is victim}
            producer = Producer(cluster.url, names, items, seconds=10)
            producer.start()
            # Mid-stream: every worker has joined (a worker still starting would meet the dead node first) and
            # part of every partition is committed.
            wait_committed(data_dir, fleet, 3, "three workers to own partitions and commit some of each")
            assert producer.is_alive()
            cluster.kill(victim)  # kill -9: no shutdown, no last replication
            killed_at = time.monotonic()
            cluster.wait_promoted(replica)
            promoted_in = time.monotonic() - killed_at
            producer.release()
            producer.join(60)
            assert producer.failure is None, producer.failure
            assert len(producer.acked) == len(items)  # the run completes: every frame acknowledged in the end
            with redis.RedisCluster.from_url(plain(cluster.seed_urls[0])) as r:
                store = open_store(data_dir)
                try:
                    wait_caught_up(r, names, store, fleet, timeout=60)
                    # What Redis kept, read from the streams themselves (nothing is trimmed: 24 h retention),
                    # not from what the workers report.
                    kept = frames_in_streams(r, names, scripts)
                    lost_total = read_before_kill = 0
                    for i, s in enumerate(scripts):
                        lost = sorted(set(range(len(s.frames))) - kept[i])
                        lost_total += len(lost)
                        if lost:
                            # Only what Redis may lose: one contiguous range of frames, on the killed master,
                            # acknowledged by it shortly before the kill.
                            assert s.partition in on_victim, (s.run, lost)
                            assert lost == list(range(lost[0], lost[-1] + 1)), lost
                            for k in lost:
                                acked = producer.acked[(i, k)]
                                assert killed_at - 1.0 <= acked <= killed_at + 0.05, (s.run, k, acked - killed_at)
                        # History holds every frame Redis kept; of the lost ones, those a worker had read from
                        # the old master before the kill: a leading part of the lost range (streams are read in
                        # order), possibly none.
                        got = read_history(data_dir, store, s.project, s.run)
                        j = next((j for j in range(len(lost) + 1)
                                  if rows_same(got, oracle_without(s, set(lost[j:])).rows)), None)
                        assert j is not None, f"{s.run}: history is not the oracle minus (part of) {lost}"
                        read_before_kill += j
                        gone = lost[j:]
                        want = oracle_without(s, set(gone))
                        assert rejections_of(store, s.project, s.run) == want.rejections
                        # The loss is reported, never silent: once a later frame of the run is applied, the run
                        # warns of exactly the missing events; a run whose last frame is gone is not finished.
                        info, state = run_info(store, s)
                        missing = [w for w in info.get("warnings", []) if "are missing" in str(w)]
                        if gone and gone[-1] < len(s.frames) - 1:
                            first = s.frame_seqs[gone[0]][0]
                            last = s.frame_seqs[gone[-1]][0] + s.frame_seqs[gone[-1]][1] - 1
                            assert len(missing) == 1 and f"events {first}..{last} are missing" in missing[0], (
                                s.run, gone, missing)
                        else:
                            assert not missing, (s.run, missing)
                        assert state == ("running" if gone and gone[-1] == len(s.frames) - 1 else "finished")
                finally:
                    store.close()
            assert all(w.alive() for w in fleet.procs), fleet.logs()
            print(f"failover: promoted in {promoted_in:.1f}s, {producer.errors} send errors resent, "
                  f"{lost_total} acknowledged frames lost by Redis, {read_before_kill} of them read before the kill")
        finally:
            fleet.close()


def wait_committed(data_dir: Path, fleet: WorkerFleet, workers: int, what: str) -> None:
    """Wait until ``workers`` workers own partitions and at least half the partitions have a commit."""
    store = open_store(data_dir)
    try:
        wait_until(lambda: len({p["owner"] for p in store.partitions()} - {None}) >= workers
                   and sum(p["offset"] != "0-0" for p in store.partitions()) >= PARTITIONS // 2, 90, what)
    finally:
        store.close()
    assert all(w.alive() for w in fleet.procs), fleet.logs()


def frames_in_streams(r: Any, names: Names, scripts: list[RunScript]) -> list[set[int]]:
    """Per script, the indexes of its frames that have at least one entry in the partition streams."""
    index = {(s.project, s.run): i for i, s in enumerate(scripts)}
    out: list[set[int]] = [set() for _ in scripts]
    for p in {s.partition for s in scripts}:
        for _id, fields in r.xrange(names.stream(p)):
            f = decode_frame(fields[FRAME_FIELD], DEFAULT_LIMITS)
            i = index[(f.project, f.run)]
            out[i].add(scripts[i].frame_of_seq(f.seq))
    return out


def run_info(store: Any, s: RunScript) -> tuple[dict[str, Any], str]:
    with store.engine.connect() as conn:
        row = conn.execute(runs_table.select().where(runs_table.c.project == s.project,
                                                     runs_table.c.run == s.run)).first()
    assert row is not None, s.run
    return unpackb(row.info), row.state


def test_resharding_under_load_moves_partitions_with_no_loss(tmp_path: Path, namespace: str,
                                                             data_dir: Path) -> None:
    """The slots of the partitions on one master migrate, key by key, to another while frames are written and
    workers read and commit: clients follow ASK and MOVED, and history equals the oracle exactly."""
    with LocalCluster(tmp_path / "reshard-cluster") as cluster:
        names = Names(namespace, PARTITIONS)
        rng = random.Random(5)
        scripts = [make_run(rng, names, "rs", f"run-{i:02d}", 1_200, 6, frame_events=20) for i in range(16)]
        items = producer_items(scripts, rng)
        fleet = WorkerFleet(redis_url=cluster.url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "logs")
        try:
            for _ in range(2):
                fleet.start()
            src = cluster.master_of_key(names.stream(scripts[0].partition))
            dst = next(n for n in cluster.nodes if n is not src and cluster.master_of_key(names.stream(0)) is not n
                       and n.alive() and any(t["port"] == n.port and t["master"] for t in cluster.topology()))
            moved = {p for p in range(PARTITIONS) if cluster.master_of_key(names.stream(p)) is src}
            producer = Producer(cluster.url, names, items, seconds=10)
            producer.start()
            wait_committed(data_dir, fleet, 2, "two workers to own partitions and commit some of each")
            assert producer.is_alive()
            t = time.monotonic()
            with redis.Redis(port=src.port) as c:
                slots = sorted({int(c.execute_command("CLUSTER KEYSLOT", names.stream(p))) for p in moved})
            keys = sum(cluster.migrate_slot(slot, src, dst, pause_s=0.3) for slot in slots)
            took = time.monotonic() - t
            assert keys >= len(slots)  # the streams (and leases) really moved
            assert producer.is_alive(), "the held producer ended before the resharding did"
            assert all(cluster.master_of_key(names.stream(p)) is dst for p in moved)
            producer.release()
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
