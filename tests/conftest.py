"""Shared fixtures: real Redis servers, per-test namespaces, and data directories. Everything cleans up.

Tests that need Redis use the server at ``STEPLINE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) under a
namespace of their own, or start private ``redis-server`` processes on free ports (:func:`redis_server_factory`).
Without a reachable server they skip with the reason, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("STEPLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("STEPLINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def need(reason: str) -> None:
    """Skip with ``reason``, or fail under CI where every server must be there."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@dataclass
class RedisServer:
    """A private ``redis-server`` process on a free port, with its files under ``dir``."""

    port: int
    dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as c:
                    c.ping()
                    return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


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
