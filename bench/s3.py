"""History on a bucket next to the local data directory, in the same run (issue #18, item 9).

    flock /work/helpers/bench.lock /work/venv/bin/python bench/s3.py [--steps 100000] [--repeat 10]

The bucket is moto's S3 server (``moto[server]``), started here on a free loopback port as its own process: every
request is real HTTP (range GETs, PUTs), but moto is a Python server on the same machine, so its figures are an upper
bound on request overhead rather than a model of S3's latency (~10-30 ms a request in a region). Cases, each on both
backends:

- end to end: 1 run × ``--steps`` steps × 20 keys through the SDK and one worker process, from the first ``log()``
  until ``finish()`` saw the commit; points/s;
- sampled read (1000 buckets) of one key of a 1M-step run: cold (a new ``Api``: footers and columns fetched and
  decoded) and warm (the ``Api``'s decoded-column cache);
- full read of 2M points (100k rows × 20 keys, ``history(samples=None)``), cold.

Prints a table and one JSON line; the local figures are the reference measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_bench import make_run

import ingest
from history.query import Api
from schemas.objects import ObjectStore, open_store, parse_storage_url
from stepline.embedded import free_port
from workers.metastore import MetaStore, sqlite_url

CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **CREDS},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)


def e2e(redis_url: str, data_dir: Path, env: dict[str, str], steps: int) -> float:
    """Points/s of one run × ``steps`` × 20 keys, SDK → Redis → one worker process → the storage location."""
    ns = "b" + uuid.uuid4().hex[:8]
    log = open(data_dir / "worker.log", "ab")  # noqa: SIM115 - closed with the process
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--redis-url", redis_url, "--namespace", ns, "--data-dir", str(data_dir)],
        stdout=log,
        stderr=log,
        env={**os.environ, **env},
    )
    try:
        time.sleep(2)  # the worker joins and takes its partitions
        keys = [f"train/m{j:02d}" for j in range(20)]
        rng = np.random.default_rng(0)
        vals = rng.random((steps, 20))
        run = ingest.init(
            project="bench", id="e2e", redis_url=redis_url, namespace=ns, data_dir=str(data_dir / "client")
        )
        t0 = time.perf_counter()
        for i in range(steps):
            run.log(dict(zip(keys, vals[i].tolist(), strict=True)), step=i)
        result = run.finish(timeout=600)
        elapsed = time.perf_counter() - t0
        if not result.ok:
            raise RuntimeError(f"the run was not committed: {result}")
        return steps * 20 / elapsed
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
        with redis.Redis.from_url(redis_url) as r:
            for k in r.scan_iter(match=f"{ns}:*", count=1000):
                r.delete(k)


def timed(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def reads(objects: ObjectStore, db_dir: Path, repeat: int) -> dict[str, float]:
    store = MetaStore(sqlite_url(db_dir))
    make_run(store, objects, "big", 1_000_000, ["loss"], 1)  # type: ignore[arg-type]
    make_run(store, objects, "wide", 100_000, [f"m{i:02d}" for i in range(20)], 1)  # type: ignore[arg-type]
    store.close()
    url = sqlite_url(db_dir)

    def cold_sampled() -> None:
        with Api(data_dir=db_dir, db_url=url, objects=objects) as api:
            api.run("bench/big").sampled("loss", buckets=1000)

    def cold_full() -> None:
        with Api(data_dir=db_dir, db_url=url, objects=objects) as api:
            api.run("bench/wide").history(samples=None, pandas=False)

    cold_sampled()  # imports, connection pools: not what is measured
    out = {"sampled_1m_cold_ms": timed(cold_sampled, repeat), "full_2m_cold_ms": timed(cold_full, repeat)}
    with Api(data_dir=db_dir, db_url=url, objects=objects) as api:
        big = api.run("bench/big")
        big.sampled("loss", buckets=1000)
        out["sampled_1m_warm_ms"] = timed(lambda: big.sampled("loss", buckets=1000), repeat)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--redis-url", default=os.environ.get("STEPLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()
    moto, endpoint = start_moto()
    root = Path(tempfile.mkdtemp(prefix="stepline-bench-s3-"))
    results: dict[str, dict[str, float]] = {}
    try:
        env_s3 = {**CREDS, "AWS_ENDPOINT_URL": endpoint}
        bucket = "bench-" + uuid.uuid4().hex[:8]
        pafs.S3FileSystem(
            access_key="bench",
            secret_key="bench",
            region="us-east-1",
            endpoint_override=endpoint.removeprefix("http://"),
            scheme="http",
            allow_bucket_creation=True,
        ).create_dir(bucket)
        backends = {
            "local": ({}, lambda d: open_store(parse_storage_url(None, d))),
            "s3": (
                {**env_s3, "STEPLINE_STORAGE_URL": f"s3://{bucket}/e2e"},
                lambda d: open_store(parse_storage_url(f"s3://{bucket}/{d.name}", d, environ=env_s3), environ=env_s3),
            ),
        }
        for name, (env, make_store) in backends.items():
            d = root / name
            (d / "reads").mkdir(parents=True)
            r = reads(make_store(d / "reads"), d / "reads", args.repeat)
            r["e2e_points_per_s"] = e2e(args.redis_url, d, env, args.steps)
            results[name] = r
    finally:
        moto.kill()
        moto.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    loc, s3 = results["local"], results["s3"]
    rows = [
        (f"end to end, points/s (1 run x {args.steps} x 20 keys)", "e2e_points_per_s", "%.0f"),
        ("sampled read, 1M-step key, cold (ms)", "sampled_1m_cold_ms", "%.1f"),
        ("sampled read, 1M-step key, warm (ms)", "sampled_1m_warm_ms", "%.1f"),
        ("full read, 2M points, cold (ms)", "full_2m_cold_ms", "%.1f"),
    ]
    print(f"{'case':50s} {'local':>12s} {'s3 (moto)':>12s} {'s3/local':>9s}")
    for label, key, fmt in rows:
        print(f"{label:50s} {fmt % loc[key]:>12s} {fmt % s3[key]:>12s} {s3[key] / loc[key]:9.2f}")
    print(json.dumps({"bench": "s3", "steps": args.steps, "local": loc, "s3": s3}))


if __name__ == "__main__":
    main()
