"""Discovery of a running local stack, and read-your-writes: ``run.finish()`` returns once a worker has committed
the run (rows, summary and rejections readable through ``Api``), warns (never raises) when none does, and
``finish(wait=False)`` keeps the old behaviour. Real Redis, real worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest
import redis
from support.worker_harness import WorkerFleet, wait_until

import ingest
from history import Api
from history.query import QuerySettings
from ingest.settings import ClientSettings
from schemas.local import LocalStack, encode_stack
from schemas.names import Names

pytestmark = pytest.mark.integration


def write_record(home: Path, redis_url: str, namespace: str, data_dir: Path) -> LocalStack:
    home.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(pid=os.getpid(), redis_url=redis_url, data_dir=str(data_dir.resolve()), namespace=namespace,
                       partitions=16, gateway_url="http://127.0.0.1:9", started_at=time.time())
    (home / "stack.json").write_bytes(encode_stack(stack))
    return stack


def test_discovery_order(redis_url: str, namespace: str, data_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_record(home, redis_url, namespace, data_dir)
    env = {"STEPLINE_HOME": str(home)}
    # Nothing else configured: the local stack.
    s, stack = ClientSettings.discover(env)
    assert stack is not None
    assert (s.redis_url, s.namespace, s.data_dir, s.page_url) == (redis_url, namespace, data_dir.resolve(),
                                                                   "http://127.0.0.1:9")
    q = QuerySettings.from_env(environ=env)
    assert q.data_dir == data_dir.resolve() and q.db_url.endswith(f"{data_dir.resolve()}/meta.sqlite")
    # A variable wins over the stack, and then nothing of the stack is mixed in.
    s, stack = ClientSettings.discover({**env, "STEPLINE_REDIS_URL": "redis://10.0.0.1:6379/0"})
    assert stack is None and s.redis_url == "redis://10.0.0.1:6379/0" and s.namespace == "sl"
    q = QuerySettings.from_env(environ={**env, "STEPLINE_DATA_DIR": str(tmp_path / "elsewhere")})
    assert q.data_dir == tmp_path / "elsewhere"
    # An explicit argument wins over both.
    s, stack = ClientSettings.discover({**env, "STEPLINE_REDIS_URL": "redis://10.0.0.1:6379/0"},
                                       redis_url="redis://10.0.0.2:6379/0")
    assert s.redis_url == "redis://10.0.0.2:6379/0"
    assert QuerySettings.from_env(data_dir=tmp_path / "x", environ=env).data_dir == tmp_path / "x"
    # A field the stack knows but a variable sets keeps the variable's value.
    s, _ = ClientSettings.discover({**env, "STEPLINE_NAMESPACE": "other"})
    assert (s.redis_url, s.namespace) == (redis_url, "other")
    # No record: the documented defaults.
    s, stack = ClientSettings.discover({"STEPLINE_HOME": str(tmp_path / "empty")})
    assert stack is None and s.redis_url == "redis://127.0.0.1:6379/0"


def start_worker(fleet: WorkerFleet) -> None:
    """A worker, and its first heartbeat (finish() gives up at once when no worker of the namespace is live)."""
    fleet.start()
    r = redis.Redis.from_url(fleet.redis_url)
    try:
        wait_until(lambda: r.hlen(Names(fleet.namespace).workers) > 0, 60, "a worker's heartbeat")
    finally:
        r.close()


def log_run(run: ingest.Run, steps: int) -> None:
    for s in range(steps):
        run.log({"loss": 1 / (s + 1), "tag": "x"}, step=s)
    run.log({"loss": 0.0}, step=1)  # rejected: below the cursor
    run.summary["best"] = 0.5


@pytest.mark.both_backends
def test_finish_returns_once_committed(redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    start_worker(fleet)
    with Api(data_dir=data_dir) as api:
        for i in range(5):  # each read right after finish(): never a race
            run = ingest.init(project="ryw", id=f"r{i}", redis_url=redis_url, namespace=namespace,
                              data_dir=str(data_dir))
            log_run(run, 300)
            res = run.finish()
            assert (res.committed, res.rows, res.rejected) == (True, 300, 1), res
            view = api.run(f"ryw/r{i}")
            assert (view.state, view.rows, view.rejected) == ("finished", 300, {"non_monotonic_step": 1})
            assert view.summary["best"] == 0.5
            assert [x["reason"] for x in view.rejections()] == ["non_monotonic_step"]
            assert view.history(samples=None, pandas=False)["_step"].tolist() == list(range(300))
    err = capsys.readouterr().err
    assert f"stepline: run ryw/r0 logging to {redis_url} (namespace {namespace})" in err
    assert "stepline: run ryw/r4 finished: 300 rows, 1 call rejected (run.rejections() says why)" in err


@pytest.mark.both_backends
def test_afinish_returns_once_committed(redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet) -> None:
    start_worker(fleet)

    async def main() -> ingest.FinishResult:
        run = await ingest.async_init(project="ryw", id="async", redis_url=redis_url, namespace=namespace,
                                      data_dir=str(data_dir))
        log_run(run, 200)
        return await run.afinish()

    res = asyncio.run(main())
    assert (res.committed, res.rows, res.rejected) == (True, 200, 1), res
    with Api(data_dir=data_dir) as api:
        assert api.run("ryw/async").rows == 200


def test_no_worker_is_a_warning_not_an_exception(redis_url: str, namespace: str, data_dir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    run = ingest.init(project="ryw", id="alone", redis_url=redis_url, namespace=namespace, data_dir=str(data_dir))
    log_run(run, 10)
    with caplog.at_level(logging.WARNING, logger="ingest"):
        res = run.finish()
    assert res.ok and res.committed is False and res.rows is None
    assert any("no worker is running for namespace" in r.getMessage() for r in caplog.records), caplog.text


def test_commit_timeout_is_a_warning(redis_url: str, namespace: str, data_dir: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """A worker that beats but never commits (a stuck one): finish gives up after commit_timeout_s, with a
    warning saying so."""
    r = redis.Redis.from_url(redis_url)
    r.hset(Names(namespace).workers, "stuck", str(int(time.time() * 1000) + 60_000))
    r.close()
    run = ingest.init(project="ryw", id="stuck", redis_url=redis_url, namespace=namespace, data_dir=str(data_dir),
                      settings={"commit_timeout_s": 0.5})
    log_run(run, 10)
    with caplog.at_level(logging.WARNING, logger="ingest"):
        res = run.finish()
    assert res.ok and res.committed is False
    assert any("no worker committed it within 0.5 s" in r.getMessage() for r in caplog.records), caplog.text


def test_finish_without_waiting(redis_url: str, namespace: str, data_dir: Path) -> None:
    run = ingest.init(project="ryw", id="nowait", redis_url=redis_url, namespace=namespace, data_dir=str(data_dir),
                      settings={"silent": True})
    log_run(run, 10)
    res = run.finish(wait=False)
    assert res.ok and res.committed is None


def test_silent(redis_url: str, namespace: str, data_dir: Path, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLINE_SILENT", "1")
    run = ingest.init(project="ryw", id="quiet", redis_url=redis_url, namespace=namespace, data_dir=str(data_dir))
    run.finish(wait=False)
    assert "stepline:" not in capsys.readouterr().err
