"""Fixtures for tests with real worker processes: a fleet that always kills what it started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_harness import WorkerFleet


@pytest.fixture
def fleet(redis_url: str, namespace: str, data_dir: Path, tmp_path: Path) -> Iterator[WorkerFleet]:
    f = WorkerFleet(redis_url=redis_url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "logs")
    try:
        yield f
    finally:
        f.close()
