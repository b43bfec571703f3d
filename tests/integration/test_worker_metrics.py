"""A worker's /metrics (Prometheus text): entries, commits with their latency, rejections by reason, partitions."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest

import ingest
from workers.settings import WorkerSettings
from workers.worker import Worker

pytestmark = pytest.mark.integration


def value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


async def test_worker_metrics(redis_url: str, namespace: str, data_dir: Path) -> None:
    settings = WorkerSettings(redis_url=redis_url, namespace=namespace, data_dir=data_dir, metrics_port=0,
                              commit_interval_s=0.1)
    worker = Worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())

    def log() -> None:
        run = ingest.init(project="m", id="r", redis_url=redis_url, namespace=namespace, data_dir=str(data_dir))
        for s in range(200):
            run.log({"loss": 1.0 / (s + 1)}, step=s)
        run.log({"loss": 5.0}, step=3)  # rejected
        run.finish(timeout=30)

    try:
        await asyncio.to_thread(log)
        async with aiohttp.ClientSession() as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                assert not task.done(), task
                if worker.metrics_url is None:  # the server starts with the worker
                    await asyncio.sleep(0.05)
                    continue
                async with http.get(worker.metrics_url) as resp:
                    assert resp.status == 200
                    text = await resp.text()
                if 'stepline_worker_rejections_total{reason="non_monotonic_step"} 1' in text:
                    break
                assert loop.time() < deadline, text
                await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await task
        # The worker abandons closing its Redis client past its shutdown deadline (a loaded machine); closing again
        # is harmless and keeps its sockets from being collected, as unclosed, in a later test.
        await worker.redis.aclose()
    assert value(text, "stepline_worker_entries_total") >= 1
    commits = value(text, "stepline_worker_commits_total")
    assert commits >= 1
    assert value(text, "stepline_worker_commit_seconds_count") >= commits
    assert value(text, 'stepline_worker_commit_seconds_bucket{le="+Inf"}') == value(
        text, "stepline_worker_commit_seconds_count")
    assert value(text, "stepline_worker_owned_partitions") == 16
    assert value(text, "stepline_worker_dead_letters_total") == 1
    assert value(text, "stepline_worker_fenced_total") == 0
