"""Fixtures for the W&B compatibility suite: a real Redis, one in-process worker, and the ``STEPLINE_*`` variables
pointing an unchanged W&B script (``import ingest as wandb``) at them. History goes where ``storage`` says (a bucket
in the ``s3`` case of a test marked ``both_backends``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.compat_stack import Stack
from support.s3 import Storage

from workers.settings import WorkerSettings
from workers.worker import Worker


@pytest.fixture
def stack(redis_url: str, namespace: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
          storage: Storage) -> Iterator[Stack]:
    for name, value in (("REDIS_URL", redis_url), ("NAMESPACE", namespace), ("DATA_DIR", str(data_dir))):
        monkeypatch.setenv(f"STEPLINE_{name}", value)
    settings = WorkerSettings(redis_url=redis_url, namespace=namespace, data_dir=data_dir, worker_id="compat",
                              commit_interval_s=0.1, lease_ttl_s=3.0, **storage.settings())
    worker = Worker(settings, handle_signals=False)
    loop = asyncio.new_event_loop()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(worker.async_run())
        except BaseException as e:  # reported by the test, not lost in a thread
            errors.append(e)

    thread = threading.Thread(target=run, name="compat-worker", daemon=True)
    thread.start()
    try:
        yield Stack(redis_url=redis_url, namespace=namespace, data_dir=data_dir, worker=worker)
    finally:
        loop.call_soon_threadsafe(worker.stop)
        thread.join(30)
        if not thread.is_alive() and worker._redis is not None:
            # The worker closes its client within its shutdown deadline and abandons the close past it (a
            # loaded machine): close it here too (idempotent), or its connections are collected later, in
            # another test, as "unclosed Connection ... loop is closed" (seen once in a loaded CI run).
            loop.run_until_complete(asyncio.wait_for(worker._redis.aclose(), 30))
        loop.close()
    assert not thread.is_alive(), "the worker did not stop"
    assert not errors, errors
