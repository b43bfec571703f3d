"""Servers for tests and benchmarks: the shared Redis and PostgreSQL URLs, private ``redis-server`` processes on
free ports, and the rule for a missing server (skip with the reason, or fail under ``CI=true``)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from stepline.embedded import free_port

__all__ = ["IN_CI", "PG_URL", "REDIS_URL", "RedisServer", "free_port", "need"]

IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("STEPLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("STEPLINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def need(reason: str) -> None:
    """Skip with ``reason``, or fail under CI where every server must be there."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


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
