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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_bench import make_run

import ingest
from history.query import Api
from schemas.commits import live_workers
from schemas.names import DEFAULT_PARTITIONS, Names
from schemas.objects import ObjectStore, open_store, parse_storage_url
from stepline.embedded import free_port
from workers.metastore import MetaStore, sqlite_url

CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


@dataclass
class Moto:
    """moto's server process, its endpoint and its request log (one line per request)."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    log: Path


def start_moto(log: Path) -> Moto:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
            stdout=out,
            stderr=out,
            env={**os.environ, **CREDS},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return Moto(proc, url, log)
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_since(log: Path, pos: int) -> dict[str, int]:
    """moto's requests by method after byte ``pos`` of its log (werkzeug's access lines: ``"PUT /b/k HTTP/1.1"``)."""
    out: dict[str, int] = {}
    for line in log.read_bytes()[pos:].decode(errors="replace").splitlines():
        parts = line.split('"')
        if len(parts) > 2 and parts[1].endswith("HTTP/1.1"):
            method = parts[1].split()[0]
            out[method] = out.get(method, 0) + 1
    return out


def e2e(redis_url: str, data_dir: Path, env: dict[str, str], steps: int, moto: Moto) -> dict[str, float]:
    """One run × ``steps`` × 20 keys, SDK → Redis → one worker process → the storage location: points/s, and the
    CPU seconds the worker and moto's server spent meanwhile, and moto's requests."""
    ns = "b" + uuid.uuid4().hex[:8]
    log = open(data_dir / "worker.log", "ab")  # noqa: SIM115 - closed with the process
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--redis-url", redis_url, "--namespace", ns, "--data-dir", str(data_dir)],
        stdout=log,
        stderr=log,
        env={**os.environ, **env},
    )
    try:
        # The worker has joined (its heartbeat is in Redis) before the clock starts: on a loaded machine its start
        # takes seconds, and finish() would otherwise give up waiting with "no worker is running".
        names = Names(ns, DEFAULT_PARTITIONS)
        deadline = time.monotonic() + 120
        with redis.Redis.from_url(redis_url) as r:
            while not live_workers(r.hgetall(names.workers), time.time() * 1000):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not start: {(data_dir / 'worker.log').read_text()[-2000:]}")
                time.sleep(0.05)
        keys = [f"train/m{j:02d}" for j in range(20)]
        rng = np.random.default_rng(0)
        vals = rng.random((steps, 20))
        run = ingest.init(
            project="bench", id="e2e", redis_url=redis_url, namespace=ns, data_dir=str(data_dir / "client")
        )
        pos = moto.log.stat().st_size
        cpu0 = cpu_s(worker.pid), cpu_s(moto.proc.pid)
        t0 = time.perf_counter()
        for i in range(steps):
            run.log(dict(zip(keys, vals[i].tolist(), strict=True)), step=i)
        result = run.finish(timeout=600)
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_s(worker.pid), cpu_s(moto.proc.pid)
        if not result.ok or not result.committed:
            raise RuntimeError(f"the run was not committed: {result}")
        reqs = requests_since(moto.log, pos)
        return {
            "points_per_s": steps * 20 / elapsed,
            "worker_cpu_s": cpu1[0] - cpu0[0],
            "moto_cpu_s": cpu1[1] - cpu0[1],
            "moto_puts": reqs.pop("PUT", 0),
            "moto_other_requests": sum(reqs.values()),
        }
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


def raw_puts(objects: ObjectStore, moto: Moto, n: int, size: int) -> dict[str, float]:
    """The reference for the end-to-end case: ``n`` PUTs of ``size`` random bytes through the same store, one after
    another (what a worker's commits do): ms per PUT, MB/s, and moto's CPU seconds per MB."""
    data = np.random.default_rng(1).bytes(size)
    cpu0, t0 = cpu_s(moto.proc.pid), time.perf_counter()
    for i in range(n):
        objects.put(f"raw/{i}.bin", data)
    elapsed, cpu = time.perf_counter() - t0, cpu_s(moto.proc.pid) - cpu0
    return {
        "put_ms": elapsed / n * 1e3,
        "put_mb_per_s": n * size / elapsed / 1e6,
        "moto_cpu_s_per_mb": cpu / (n * size / 1e6),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--e2e-repeat", type=int, default=5, help="end-to-end runs per backend, alternating (median)")
    ap.add_argument("--redis-url", default=os.environ.get("STEPLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stepline-bench-s3-"))
    moto = start_moto(root / "moto.log")
    results: dict[str, dict[str, float]] = {}
    e2e_runs: dict[str, list[dict[str, float]]] = {"local": [], "s3": []}
    try:
        env_s3 = {**CREDS, "AWS_ENDPOINT_URL": moto.endpoint}
        bucket = "bench-" + uuid.uuid4().hex[:8]
        pafs.S3FileSystem(
            access_key="bench",
            secret_key="bench",
            region="us-east-1",
            endpoint_override=moto.endpoint.removeprefix("http://"),
            scheme="http",
            allow_bucket_creation=True,
        ).create_dir(bucket)
        stores = {
            "local": lambda d: open_store(parse_storage_url(None, d)),
            "s3": lambda d: open_store(parse_storage_url(f"s3://{bucket}/{d.name}", d, environ=env_s3), environ=env_s3),
        }
        for name, make_store in stores.items():
            d = root / name / "reads"
            d.mkdir(parents=True)
            results[name] = reads(make_store(d), d, args.repeat)
        # Alternating, so a slow spell of a shared machine hits both backends alike.
        for k in range(args.e2e_repeat):
            for name in ("local", "s3"):
                d = root / name / f"e2e{k}"
                d.mkdir(parents=True)
                env = {**env_s3, "STEPLINE_STORAGE_URL": f"s3://{bucket}/e2e{k}"} if name == "s3" else {}
                e2e_runs[name].append(e2e(args.redis_url, d, env, args.steps, moto))
        for name, runs in e2e_runs.items():
            for key in runs[0]:
                results[name][f"e2e_{key}"] = statistics.median(r[key] for r in runs)
            results[name]["e2e_points_per_s_all"] = [round(r["points_per_s"]) for r in runs]  # type: ignore[assignment]
        # The reference: what moto itself takes for the e2e case's PUTs (same count and mean size, no worker).
        segs = MetaStore(sqlite_url(root / "s3" / "e2e0"))
        sizes = [int(g["bytes"]) for g in segs.segments_of("bench", "e2e")]
        segs.close()
        n, size = max(1, len(sizes)), max(1, sum(sizes) // max(1, len(sizes)))
        results["s3"].update(raw_puts(stores["s3"](root / "s3" / "raw"), moto, n, size))
        results["local"].update(raw_puts(stores["local"](root / "local" / "raw"), moto, n, size))
    finally:
        moto.proc.kill()
        moto.proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    loc, s3 = results["local"], results["s3"]
    rows = [
        (
            f"end to end, points/s (1 run x {args.steps} x 20 keys, median of {args.e2e_repeat})",
            "e2e_points_per_s",
            "%.0f",
        ),
        ("  worker CPU s during it", "e2e_worker_cpu_s", "%.2f"),
        ("  moto CPU s during it", "e2e_moto_cpu_s", "%.2f"),
        ("  PUT requests", "e2e_moto_puts", "%.0f"),
        (f"reference: {n} PUTs of {size / 1e6:.1f} MB, ms each", "put_ms", "%.1f"),
        ("reference: PUT MB/s", "put_mb_per_s", "%.0f"),
        ("sampled read, 1M-step key, cold (ms)", "sampled_1m_cold_ms", "%.1f"),
        ("sampled read, 1M-step key, warm (ms)", "sampled_1m_warm_ms", "%.1f"),
        ("full read, 2M points, cold (ms)", "full_2m_cold_ms", "%.1f"),
    ]
    print(f"{'case':62s} {'local':>10s} {'s3 (moto)':>10s} {'s3/local':>9s}")
    for label, key, fmt in rows:
        ratio = f"{s3[key] / loc[key]:9.2f}" if loc[key] else f"{'':9s}"
        print(f"{label:62s} {fmt % loc[key]:>10s} {fmt % s3[key]:>10s} {ratio}")
    print(f"end to end, every run: local {loc['e2e_points_per_s_all']}, s3 {s3['e2e_points_per_s_all']}")
    print(f"moto's CPU per MB PUT: {s3['moto_cpu_s_per_mb'] * 1e3:.1f} ms")
    print(json.dumps({"bench": "s3", "steps": args.steps, "e2e_repeat": args.e2e_repeat, "local": loc, "s3": s3}))


if __name__ == "__main__":
    main()
