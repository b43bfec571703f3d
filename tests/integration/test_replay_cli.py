"""Replay and the CLI against real Redis: replay gives identical history; demo, status and history run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.s3 import Storage

import ingest
from history.query import Api
from schemas import SettingsError
from workers.replay import replay
from workers.settings import WorkerSettings
from workers.worker import Worker

pytestmark = pytest.mark.integration


async def wait_for(cond: Any, limit_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not await asyncio.to_thread(cond):
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def log_runs(redis_url: str, namespace: str, data_dir: Path) -> dict[str, int]:
    """Three runs with numbers, strings, media, a type conflict, case collisions and rejected steps."""
    expected_rows = {}
    for i in range(3):
        run = ingest.init(project="rp", id=f"run{i}", redis_url=redis_url, namespace=namespace,
                          data_dir=str(data_dir), config={"seed": i})
        run.define_metric("val/*", step_metric="epoch")
        rng = np.random.default_rng(i)
        for s in range(400):
            run.log({"train/loss": float(rng.random()), "Acc": s / 400, "tag": "a" if s % 2 else 1}, step=s)
            if s % 50 == 49:
                run.log({"val/loss": float(rng.random()), "epoch": s // 50, "acc": 0.5,
                         "h": ingest.Histogram(rng.random(100))}, step=s)
                run.log({"val/loss": 3.0}, step=s - 10)  # rejected
        run.log({"val/acc": 0.9}, step=405)  # written at finish; step_sync fills in epoch
        run.finish(timeout=30)
        expected_rows[f"run{i}"] = 401
    return expected_rows


def everything(api: Api, path: str) -> tuple[dict[str, list[Any]], list[tuple[Any, ...]], dict[str, Any]]:
    r = api.run(path)
    hist = r.history(samples=None, pandas=False)
    cols = {k: [repr(x) for x in np.asarray(v).tolist()] for k, v in hist.items() if k != "_runtime"}
    rej = [(x["reason"], x["step"], x["cursor"]) for x in r.rejections()]
    return cols, rej, {"summary": repr(r.summary), "warnings": r.warnings, "rejected": r.rejected,
                       "rows": r.rows, "state": r.state}


async def test_replay_gives_identical_history(redis_url: str, namespace: str, tmp_path: Path,
                                              storage: Storage) -> None:
    """On both storage backends (with compaction on: fan-in 2), live and replayed history are identical."""
    live_dir, fresh_dir = tmp_path / "live", tmp_path / "fresh"
    where = storage.settings()
    settings = WorkerSettings(redis_url=redis_url, namespace=namespace, data_dir=live_dir, lease_ttl_s=3.0,
                              commit_interval_s=0.1, compaction_interval_s=0.2, compaction_fanin=2, **where)
    worker = Worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        expected = await asyncio.to_thread(log_runs, redis_url, namespace, live_dir)
        with Api(data_dir=live_dir) as api:
            def done() -> bool:
                try:
                    return all(api.run(f"rp/{r}").rows == n and api.run(f"rp/{r}").state == "finished"
                               for r, n in expected.items())
                except LookupError:
                    return False
            await wait_for(done)
    finally:
        worker.stop()
        await task
        # The worker abandons closing its Redis client past its shutdown deadline (a loaded machine); closing again
        # is harmless and keeps its sockets from being collected, as unclosed, in a later test.
        await worker.redis.aclose()
    # Into a new storage location: a replay refuses one holding segments (the live deployment's sweep would delete
    # the replay's as orphans).
    with pytest.raises(SettingsError, match="replay needs an empty storage location"):
        await replay(WorkerSettings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "refused",
                                    **(where if storage.url else {"storage_url": f"file://{live_dir}"})))
    target = storage.elsewhere(fresh_dir, "fresh")
    report = await replay(WorkerSettings(redis_url=redis_url, namespace=namespace, data_dir=fresh_dir,
                                         **target.settings()))
    assert report.runs == 3
    with Api(data_dir=live_dir) as live, Api(data_dir=fresh_dir, objects=target.objects) as fresh:
        for r in expected:
            a, b = everything(live, f"rp/{r}"), everything(fresh, f"rp/{r}")
            assert a == b
            cols, rej, meta = a
            assert meta["rows"] == 401
            assert len(rej) == 8
            assert all(x[0] == "non_monotonic_step" for x in rej)
            assert any("only by case" in w for w in meta["warnings"])
            assert any("logged as" in w for w in meta["warnings"])  # "tag" as number and string
            assert float(cols["epoch"][-1]) == 7  # step_sync filled the step metric on the last row
    # Replaying one run only touches that run.
    one_dir = tmp_path / "one"
    one = storage.elsewhere(one_dir, "one")
    report = await replay(WorkerSettings(redis_url=redis_url, namespace=namespace, data_dir=one_dir,
                                         **one.settings()), lambda p, r: r == "run1")
    assert report.runs == 1
    with Api(data_dir=one_dir, objects=one.objects) as api:
        assert [r.id for r in api.runs("rp")] == ["run1"]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "stepline.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_demo_status_and_history_cli(tmp_path: Path) -> None:
    out = run_cli("demo", "--runs", "3", "--steps", "600", "--no-progress", cwd=tmp_path)
    assert "verified: history read back equals what was logged" in out
    data = tmp_path / "stepline-data"
    assert (data / "meta.sqlite").exists()
    assert list((data / "segments").rglob("*.parquet"))
    with Api(data_dir=data) as api:
        runs = api.runs("demo")
        assert len(runs) == 3
        assert all(r.rows == 600 and r.state == "finished" for r in runs)
        path = runs[0].path
    text = run_cli("history", path, "--keys", "train/loss", "--format", "json", "--data-dir", str(data),
                   cwd=tmp_path)
    rows = json.loads(text)
    assert len(rows) == 600
    assert rows[0]["_step"] == 0
    assert "train/loss" in rows[0]
