"""Scale-out: committed points/s with 1, 2 and 4 worker processes over 16 partitions, on a single Redis and on a
3-master + 3-replica Redis Cluster (both started here on loopback, no persistence).

The workers start first and take the partitions; then the clock starts, 16 runs (one per partition when the hash
allows; 1,000-call column-wise frames of 20 keys, as the SDK sends) are XADDed as fast as Redis takes them, and
the clock stops when every committed offset reached its stream's end: points/s is feed + consume + commit.
Per-worker CPU seconds come from /proc, so the scaling can be read on a machine with few cores: points/s flattens
where the cores run out, CPU per point should not grow.
Metadata: SQLite in a fresh data directory per measurement.

    python bench/scale.py                       # 16 runs x 150,000 steps (48 M points)
    python bench/scale.py --steps 10000 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.redis_cluster import LocalCluster, free_cluster_ports, plain

from schemas import Names, encode_frame_raw
from schemas.frame import LogBlock, encode_event
from workers.metastore import MetaStore, sqlite_url

KEYS = [f"train/m{i:02d}" for i in range(18)] + ["epoch", "phase"]
BLOCK = 1000


def frames_of(run: int, steps: int) -> list[bytes]:
    rng = np.random.default_rng(run)
    out = []
    for b in range(steps // BLOCK):
        s0 = b * BLOCK
        cols: list[Any] = [rng.random(BLOCK) for _ in range(18)]
        cols += [np.arange(s0, s0 + BLOCK, dtype=np.int64) // 1000, ["train"] * BLOCK]
        block = LogBlock(keys=KEYS, ts=np.full(BLOCK, 1.7e9 + s0), step=list(range(s0, s0 + BLOCK)),
                         commit=[None] * BLOCK, cols=cols)
        out.append(encode_frame_raw("scale", f"r{run}", f"prod-{run}", b, [encode_event(block)]))
    return out


def runs_for_partitions(names: Names, n: int) -> list[int]:
    """Run numbers whose partitions cover as many of the partitions as possible."""
    chosen: dict[int, int] = {}
    i = 0
    while len(chosen) < min(n, names.partitions) and i < 10_000:
        chosen.setdefault(names.partition("scale", f"r{i}"), i)
        i += 1
    return sorted(chosen.values())[:n]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, client: Any, workers: int, runs: list[int], frames: dict[int, list[bytes]],
            partitions: int) -> dict[str, Any]:
    """Start the workers on empty streams, wait until they own every partition, then feed and time."""
    ns = f"scale{os.getpid()}x{workers}x{int(time.time() * 1000) % 100000}"
    names = Names(ns, partitions)
    points = sum(len(frames[i]) for i in runs) * BLOCK * len(KEYS)
    data = Path(tempfile.mkdtemp(prefix="stepline-scale-"))
    store = MetaStore(sqlite_url(data))
    procs = []
    for w in range(workers):
        log = (data / f"w{w}.log").open("ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "workers", "--redis-url", url, "--namespace", ns, "--partitions",
             str(partitions), "--data-dir", str(data), "--worker-id", f"w{w}", "--commit-interval", "0.25"],
            stdout=log, stderr=subprocess.STDOUT))
        log.close()
    try:
        deadline = time.monotonic() + 60
        while True:  # every worker joined and the partitions are spread (rendezvous over all of them)
            owners = {client.get(names.lease(p)) for p in range(partitions)}
            if None not in owners and len(owners) == min(workers, partitions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not take the partitions")
            time.sleep(0.05)
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        t0 = time.perf_counter()
        for i in runs:
            pipe = client.pipeline(transaction=False)
            for k, f in enumerate(frames[i]):
                pipe.xadd(names.stream(names.partition("scale", f"r{i}")), {b"f": f})
                if k % 50 == 49:
                    pipe.execute()
            pipe.execute()
        fed = time.perf_counter() - t0
        ends = {}
        for p in range(partitions):
            last = client.xrevrange(names.stream(p), count=1)
            if last:
                ends[p] = last[0][0].decode()
        while True:
            offsets = {int(r["p"]): r["offset"] for r in store.partitions()}
            if all(offsets.get(p) == e for p, e in ends.items()):
                break
            if time.perf_counter() - t0 > 600:
                raise TimeoutError("workers did not catch up in 10 minutes")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cpu = [cpu_seconds(p.pid) - c0 for p, c0 in zip(procs, cpu0, strict=True)]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        store.close()
        shutil.rmtree(data, ignore_errors=True)
        for p in range(partitions):
            client.delete(names.stream(p), names.dlq(p), names.lease(p))
        client.delete(names.workers)
    return {"workers": workers, "points": points, "seconds": round(elapsed, 2), "feed_seconds": round(fed, 2),
            "points_per_s": round(points / elapsed), "cpu_s_per_worker": [round(c, 2) for c in cpu],
            "cpu_us_per_point": round(sum(cpu) / points * 1e6, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=150_000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--backends", nargs="+", default=["single", "cluster"], choices=["single", "cluster"])
    args = ap.parse_args()
    names = Names("scale", args.partitions)
    runs = runs_for_partitions(names, args.runs)
    frames = {i: frames_of(i, args.steps) for i in runs}
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="stepline-scale-redis-"))
    try:
        for backend in args.backends:
            if backend == "single":
                port = free_cluster_ports(1)[0]
                srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", str(tmp)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                url = f"redis://127.0.0.1:{port}/0"
                try:
                    for _ in range(100):
                        try:
                            redis.Redis(port=port).ping()
                            break
                        except redis.ConnectionError:
                            time.sleep(0.05)
                    with redis.Redis.from_url(url) as c:
                        for w in args.workers:
                            results.append({"backend": backend, **measure(url, c, w, runs, frames, args.partitions)})
                            print(json.dumps(results[-1]), flush=True)
                finally:
                    srv.kill()
                    srv.wait()
            else:
                with LocalCluster(tmp / "cluster") as cluster, \
                        redis.RedisCluster.from_url(plain(cluster.url)) as cc:
                    for w in args.workers:
                        results.append({"backend": backend,
                                        **measure(cluster.url, cc, w, runs, frames, args.partitions)})
                        print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'backend':<8} {'workers':>7} {'points/s':>12} {'seconds':>8} {'(feed s)':>8} "
          f"{'CPU us/point':>12}  CPU s per worker")
    for r in results:
        print(f"{r['backend']:<8} {r['workers']:>7} {r['points_per_s']:>12,} {r['seconds']:>8} "
              f"{r['feed_seconds']:>8} {r['cpu_us_per_point']:>12}  {r['cpu_s_per_worker']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
