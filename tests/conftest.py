"""Shared fixtures: real Redis servers, per-test namespaces, and data directories. Everything cleans up.

Tests that need Redis use the server at ``STEPLINE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) under a
namespace of their own, or start private ``redis-server`` processes on free ports (:func:`redis_server_factory`).
Without a reachable server they skip with the reason, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from support.s3 import Storage, parametrize_storage, s3_bucket, s3_server, storage  # S3 (moto), both backends
from support.servers import PG_URL, REDIS_URL, RedisServer, free_port, need
from support.worker_harness import WorkerFleet

__all__ = ["PG_URL", "REDIS_URL", "RedisServer", "free_port", "need", "s3_bucket", "s3_server", "storage"]

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_storage(metafunc)  # tests marked both_backends (or naming storage) run on local and s3


@pytest.fixture(autouse=True, scope="session")
def _no_local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A developer's running ``stepline up`` must not redirect tests that rely on defaults (schemas.local): every
    test, and every process it starts, looks for the local stack's record in an empty folder of the session."""
    old = os.environ.get("STEPLINE_HOME")
    os.environ["STEPLINE_HOME"] = str(tmp_path_factory.mktemp("stepline-home"))
    yield
    if old is None:
        os.environ.pop("STEPLINE_HOME", None)
    else:
        os.environ["STEPLINE_HOME"] = old


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def redis_url(namespace: str) -> Iterator[str]:
    """The shared real Redis; every key the test makes lives under its own namespace and is removed after."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as e:
        client.close()
        need(f"no Redis at {REDIS_URL}: {e}")
    yield REDIS_URL
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private Redis servers: ``redis_server_factory("--appendonly", "yes")``; all are stopped after."""
    if shutil.which("redis-server") is None:
        need("redis-server is not on PATH")
    servers: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        d = tmp_path / f"redis-{len(servers)}"
        d.mkdir()
        srv = RedisServer(port=free_port(), dir=d, args=list(args))
        srv.start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop(kill=True)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def fleet(redis_url: str, namespace: str, data_dir: Path, tmp_path: Path, storage: Storage) -> Iterator[WorkerFleet]:
    """Worker processes on the shared Redis under the test's namespace, keeping history where ``storage`` says (the
    data directory, or a bucket in a test marked ``both_backends``: the processes inherit its variables); every one
    it started is killed after."""
    with WorkerFleet(redis_url=redis_url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "logs",
                     objects=storage.objects) as f:
        yield f
