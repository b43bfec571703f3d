"""Fixtures for the Redis Cluster tier: one 3-master + 3-replica cluster per session (``tests/redis_cluster.py``),
a namespace per test (its keys removed after), and worker fleets pointed at ``redis+cluster://``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.redis_cluster import LocalCluster, plain
from support.servers import need
from support.worker_harness import WorkerFleet


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        need("redis-server / redis-cli are not on PATH")
    c = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster_url(cluster: LocalCluster, namespace: str) -> Iterator[str]:
    url = cluster.url
    yield url
    with redis.RedisCluster.from_url(plain(url)) as r:
        for key in r.scan_iter(match=f"{namespace}:*", count=1000, target_nodes=redis.RedisCluster.PRIMARIES):
            r.delete(key)


@pytest.fixture
def cluster_fleet(cluster_url: str, namespace: str, data_dir: Path, tmp_path: Path) -> Iterator[WorkerFleet]:
    with WorkerFleet(redis_url=cluster_url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "logs") as f:
        yield f
