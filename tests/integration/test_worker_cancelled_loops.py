"""A worker's background loops end when shutdown cancels them, even when a Redis call absorbs the cancel: the
client can turn a cancel that arrives mid-command into a connection error (which the loops catch and log), or
finish the command instead. Before the fix the membership loop went on heartbeating after the worker had closed
its Redis client, on new connections that outlived the event loop (the browser tests' "ResourceWarning: loop is
closed", reported in whichever later test the garbage collector ran in)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from workers.settings import WorkerSettings
from workers.worker import Worker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("absorb", ["as_redis_error", "silently"])
async def test_cancelled_membership_loop_ends_even_if_redis_absorbs_the_cancel(
        redis_url: str, namespace: str, data_dir: Path, absorb: str) -> None:
    settings = WorkerSettings(redis_url=redis_url, namespace=namespace, data_dir=data_dir, lease_ttl_s=0.3,
                              drain_timeout_s=3.0)
    worker = Worker(settings, handle_signals=False)
    real = worker._heartbeat
    calls = 0
    inside = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal calls
        calls += 1
        await real()
        if calls < 3:  # the first (joining) and one loop round pass; from then on the cancel lands "in Redis"
            return
        inside.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if absorb == "as_redis_error":
                raise redis.ConnectionError("Connection closed by the cancelled command") from None
            return  # the command finished instead

    worker._heartbeat = heartbeat  # type: ignore[method-assign]
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(inside.wait(), 15)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
        await worker.redis.aclose()
    left = [t for t in asyncio.all_tasks() if t.get_name().startswith("stepline-") and not t.done()]
    assert not left, f"the worker's loops outlived its shutdown: {left}"
