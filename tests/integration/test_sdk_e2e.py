"""Through the SDK, 3 worker processes and the query API: history equals an independent oracle of the calls.

50 runs x 2,000 steps x 20 keys (18 floats, 1 int, 1 string), logged concurrently from one thread per run with
W&B-style calls (mostly ``log(d, step=i)``, which the SDK batches column-wise, plus ``commit=False`` chains,
calls without a step, ``commit=True`` and deliberately non-monotonic steps).
"""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.history_oracle import Oracle
from support.worker_harness import WorkerFleet

import ingest
from history.query import Api

pytestmark = [pytest.mark.integration, pytest.mark.both_backends]  # history on the data directory and a bucket

RUNS, STEPS, FLOATS = 50, 2_000, 18


def drive(run: Any, rng: random.Random, oracle: Oracle) -> None:
    keys = [f"train/m{j:02d}" for j in range(FLOATS)]
    for i in range(STEPS):
        data: dict[str, Any] = {k: rng.random() for k in keys}
        data["count"] = i
        data["phase"] = "train" if i % 7 else "eval"
        u = rng.random()
        step: int | None = oracle.cursor if u >= 0.1 else None
        commit: bool | None = None
        if 0.1 <= u < 0.103 and oracle.cursor > 3:
            step = oracle.cursor - rng.randint(1, 3)  # rejected
        elif u < 0.03:
            commit = False
            data = {k: data[k] for k in rng.sample(sorted(data), 3)}
        elif u < 0.05:
            commit = True
        elif u >= 0.103:
            step = oracle.cursor + (1 if u < 0.98 else rng.randint(2, 5))
        run.log(data, step=step, commit=commit)
        oracle.log(float(i), data, step, commit)
    run.finish(timeout=60)
    oracle.finish(float(STEPS))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b) and type(a) is type(b)


@pytest.mark.timeout(360)  # generous: only catches a hang (it took 120 s on the bucket with a CPU hog at load 15)
def test_sdk_to_api_equals_oracle(redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet) -> None:
    for _ in range(3):
        fleet.start()
    oracles = [Oracle() for _ in range(RUNS)]
    runs = [ingest.init(project="sdk", id=f"run{i:02d}", redis_url=redis_url, namespace=namespace,
                        data_dir=str(data_dir)) for i in range(RUNS)]
    threads = [threading.Thread(target=drive, args=(r, random.Random(i), o))
               for i, (r, o) in enumerate(zip(runs, oracles, strict=True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(o.rejections) for o in oracles) > 0
    with Api(data_dir=data_dir) as api:
        deadline = time.monotonic() + 120
        while True:
            views = {r.id: r for r in api.runs("sdk")}
            if len(views) == RUNS and all(
                views[f"run{i:02d}"].state == "finished" and views[f"run{i:02d}"].rows == len(o.rows)
                for i, o in enumerate(oracles)
            ):
                break
            assert time.monotonic() < deadline, fleet.logs()
            time.sleep(0.1)
        for i, o in enumerate(oracles):
            run = api.run(f"sdk/run{i:02d}")
            got = list(run.scan_history(page_size=5000))
            assert [g["_step"] for g in got] == [s for s, _, _, _ in o.rows]
            for g, (_step, _ts, _rt, want) in zip(got, o.rows, strict=True):
                values = {k: v for k, v in g.items() if not k.startswith("_")}
                want_keys = {f.split(":")[0]: v for f, v in want.items()}
                assert values.keys() == want_keys.keys(), (g["_step"], values.keys(), want_keys.keys())
                assert all(same(values[k], want_keys[k]) for k in values), g["_step"]
            got_rej = [(x["reason"], x["step"], x["cursor"]) for x in run.rejections()]
            assert got_rej == o.rejections
    assert all(w.alive() for w in fleet.procs), fleet.logs()
