"""A bad value never costs the valid calls around it (issue 15, item 3), through real Redis and a worker process.

Before: ``run.log({"s": "ok\\ud800"})`` was accepted, the sender failed to pack the batch and dropped it whole
(the valid calls around it and the run's finish), ``finish()`` reported nothing and no warning said so. Now
``log()`` refuses the bad call at once; a call that slips past ``log()`` anyway (simulated here) is the only call
lost, counted by ``finish()`` and written to the run's warnings. Each test has its own namespace (fixtures).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.worker_harness import WorkerFleet

import ingest
from history.query import Api
from schemas import SchemaError

pytestmark = [pytest.mark.integration, pytest.mark.both_backends]  # history on the data directory and a bucket

BAD_TEXT = "ok\ud800"


def _finished_run(data_dir: Path, fleet: WorkerFleet, path: str, rows: int) -> dict[str, list[object]]:
    """The run's warnings and history (``i`` and ``s`` columns) once the worker has committed all of it."""
    with Api(data_dir=data_dir) as api:
        deadline = time.monotonic() + 60
        while True:
            views = {f"{r.project}/{r.id}": r for r in api.runs(path.split("/")[0])}
            v = views.get(path)
            if v is not None and v.state == "finished" and v.rows == rows:
                break
            assert time.monotonic() < deadline, (v and (v.state, v.rows), fleet.logs())
            time.sleep(0.1)
        run = api.run(path)
        got = list(run.scan_history(page_size=1000))
        return {"i": [g.get("i") for g in got], "s": [g.get("s") for g in got],
                "step": [g["_step"] for g in got], "warnings": list(run.warnings)}


def start_run(fleet: WorkerFleet, run_id: str, redis_url: str, namespace: str, data_dir: Path) -> ingest.Run:
    """A worker, and a run of project "bad" that has logged 50 valid calls ``{"i": 0.0.., "s": "ok"}``."""
    fleet.start()
    run = ingest.init(project="bad", id=run_id, redis_url=redis_url, namespace=namespace, data_dir=data_dir)
    for i in range(50):
        run.log({"i": float(i), "s": "ok"})
    return run


def test_bad_text_is_refused_and_every_valid_call_around_it_is_stored(
    redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet
) -> None:
    run = start_run(fleet, "surrogate", redis_url, namespace, data_dir)
    with pytest.raises(SchemaError, match="'s'"):
        run.log({"i": 50.0, "s": BAD_TEXT})  # the fast path (same keys and types as before)
    with pytest.raises(SchemaError, match="'t'"):
        run.log({"t": ["nested", BAD_TEXT]})  # the slow path
    for i in range(50, 100):
        run.log({"i": float(i), "s": "ok"})
    res = run.finish(timeout=30)
    assert res.ok and res.dropped_calls == 0, res
    got = _finished_run(data_dir, fleet, "bad/surrogate", 100)
    assert got["i"] == [float(i) for i in range(100)]
    assert got["step"] == list(range(100))
    assert got["s"] == ["ok"] * 100
    assert all(w.alive() for w in fleet.procs), fleet.logs()


def test_a_call_that_fails_in_the_sender_is_counted_and_in_the_run_warnings(
    redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet
) -> None:
    run = start_run(fleet, "slipped", redis_url, namespace, data_dir)
    # A call log() would refuse, queued as a bug past its checks would (white box): the sender must not lose
    # the calls packed with it.
    b = run._b
    with b.lock:
        keys = b.block_keys
        assert keys == ("i", "s")
        run._step += 1
        b.add_row_locked(keys, ((50.0, BAD_TEXT), None, None, time.time()), (float, str))
    for i in range(51, 100):
        run.log({"i": float(i), "s": "ok"})
    res = run.finish(timeout=30)
    assert res.dropped_calls == 1 and res.unsent_frames == 0 and not res.ok, res
    # The other 99 calls are stored, in order. The worker numbers the calls it receives, so those after the
    # dropped one sit one step below the client's cursor (run.step counted the dropped call).
    got = _finished_run(data_dir, fleet, "bad/slipped", 99)
    assert got["i"] == [float(i) for i in range(100) if i != 50]
    assert got["step"] == list(range(99)) and run.step == 100
    assert got["s"] == ["ok"] * 99
    assert any(str(w).startswith("client: 1 log() call(s) dropped") and "'s'" in str(w) for w in got["warnings"]), (
        got["warnings"])
    assert all(w.alive() for w in fleet.procs), fleet.logs()
