"""History on a bucket under faults (issue #18): worker processes write segments to a real S3-compatible server (moto's,
started by the test as its own process on a free loopback port) through a proxy that fails requests the way a bucket
does. Each fault happens while frames are being committed; afterwards every run's history equals its oracle (nothing
lost, nothing duplicated), every referenced segment object exists, and objects of commits that never happened are
never referenced and are collected as orphans.

- the bucket hangs (the server is SIGSTOPped) and comes back;
- the bucket is unreachable (connections refused) and comes back;
- throttling: PUTs answered ``503 SlowDown``;
- PUTs cut half-way (the server never gets the whole object);
- a worker killed between the object write and the SQL commit (``STEPLINE_TEST_CRASH_AT=segments``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from support.s3 import MotoServer, S3FaultProxy, Storage, make_bucket, s3_storage, start_moto
from support.worker_harness import (
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

from schemas import Names
from workers.metastore import MetaStore

PARTITIONS = 4


@dataclass
class Bucket:
    server: MotoServer
    proxy: S3FaultProxy
    storage: Storage  # through the proxy


@pytest.fixture
def bucket(tmp_path: Path) -> Iterator[Bucket]:
    """A private moto server (faults stop or starve it) and a fault proxy in front of it."""
    srv = start_moto(tmp_path / "moto.log")
    proxy = S3FaultProxy(srv.port)
    try:
        yield Bucket(srv, proxy, s3_storage(srv, make_bucket(srv), endpoint=proxy.endpoint))
    finally:
        proxy.close()
        srv.stop()


def _fleet(redis_url: str, namespace: str, data_dir: Path, tmp_path: Path, b: Bucket) -> WorkerFleet:
    return WorkerFleet(
        redis_url=redis_url,
        namespace=namespace,
        data_dir=data_dir,
        log_dir=tmp_path / "logs",
        partitions=PARTITIONS,
        lease_ttl_ms=6000,
        commit_interval_s=0.2,
    )


def _scripts(names: Names, seed: int, runs: int = 4, steps: int = 300) -> list[RunScript]:
    rng = random.Random(seed)
    return [make_run(rng, names, "s3f", f"r{seed}-{i}", steps, 4) for i in range(runs)]


def _referenced_exist(store: MetaStore, b: Bucket, scripts: list[RunScript]) -> None:
    for s in scripts:
        for seg in store.segments_of(s.project, s.run):
            assert b.storage.objects.exists(seg["file"]), f"{s.run}: referenced object {seg['file']} is missing"


def _run_with_fault(
    redis_url: str, namespace: str, data_dir: Path, tmp_path: Path, b: Bucket, seed: int, fault: str
) -> tuple[MetaStore, list[RunScript]]:
    """Feed two halves of the workload; inject ``fault`` between them; wait until everything is committed."""
    names = Names(namespace, PARTITIONS)
    scripts = _scripts(names, seed)
    items = interleave(scripts, random.Random(seed))
    half = len(items) // 2
    fleet = _fleet(redis_url, namespace, data_dir, tmp_path, b)
    store = open_store(data_dir)
    with fleet, redis.Redis.from_url(redis_url) as r:
        fleet.start(env=b.storage.env)
        xadd_frames(r, names, items[:half])
        if fault == "pause":
            b.server.pause()
            xadd_frames(r, names, items[half:])
            time.sleep(8)  # the fault's duration (what is waited for below is a condition)
            b.server.resume()
        elif fault == "drop":
            b.proxy.drop()
            xadd_frames(r, names, items[half:])
            time.sleep(8)
            b.proxy.heal()
        elif fault == "slowdown":
            b.proxy.slow_down(40)
            xadd_frames(r, names, items[half:])
            wait_until(lambda: b.proxy.injected >= 40, 120, "40 PUTs answered 503 SlowDown")
        elif fault == "cut":
            b.proxy.cut_puts(20)
            xadd_frames(r, names, items[half:])
            wait_until(lambda: b.proxy.injected >= 20, 120, "20 PUTs cut half-way")
        wait_caught_up(r, names, store, fleet, timeout=240)
        assert all(w.alive() for w in fleet.procs), fleet.logs()
    return store, scripts


@pytest.mark.timeout(400)  # a hung bucket costs the S3 client's retries (about 45 s) before a commit starts over
@pytest.mark.parametrize("fault", ["pause", "drop", "slowdown", "cut"])
def test_bucket_faults_lose_and_duplicate_nothing(
    redis_url: str, namespace: str, data_dir: Path, tmp_path: Path, bucket: Bucket, fault: str
) -> None:
    store, scripts = _run_with_fault(redis_url, namespace, data_dir, tmp_path, bucket, 18, fault)
    try:
        check_history(bucket.storage.objects, store, scripts)
        _referenced_exist(store, bucket, scripts)
        assert not list((data_dir / "segments").rglob("*.parquet")), "segments went to the local directory"
    finally:
        store.close()


@pytest.mark.timeout(300)
def test_worker_killed_between_object_write_and_sql_commit(
    redis_url: str, namespace: str, data_dir: Path, tmp_path: Path, bucket: Bucket
) -> None:
    names = Names(namespace, PARTITIONS)
    scripts = _scripts(names, 19)
    fleet = _fleet(redis_url, namespace, data_dir, tmp_path, bucket)
    store = open_store(data_dir)
    try:
        with fleet, redis.Redis.from_url(redis_url) as r:
            # The first worker dies once its first commit's segment objects are written, before their SQL commit.
            doomed = fleet.start("doomed", env={**bucket.storage.env, "STEPLINE_TEST_CRASH_AT": "segments"})
            xadd_frames(r, names, interleave(scripts, random.Random(19)))
            wait_until(lambda: not doomed.alive(), 120, "the worker to die between object write and SQL commit")
            fleet.start("heir", env=bucket.storage.env)
            wait_caught_up(r, names, store, fleet, timeout=240)
        check_history(bucket.storage.objects, store, scripts)
        _referenced_exist(store, bucket, scripts)
        referenced = {seg["file"] for s in scripts for seg in store.segments_of(s.project, s.run)}
        listed = {rel for rel, _size, _mtime in bucket.storage.objects.list("segments")}
        orphans = listed - referenced
        assert orphans, "the killed commit's objects should be in the bucket, unreferenced"
        # Collected once old enough (grace 0 here): only unreferenced objects go, history stays whole.
        deleted = store.collect_orphans(bucket.storage.objects, grace_s=-60)
        assert deleted == len(orphans)
        assert {rel for rel, _s, _m in bucket.storage.objects.list("segments")} == referenced
        check_history(bucket.storage.objects, store, scripts)
    finally:
        store.close()
