"""End-to-end benchmark: SDK → Redis → 1 worker process → committed, queryable history.

Measures, next to raw pipelined XADD of the same frame bytes into the same Redis in the same run:

- end-to-end points/s (first ``log()`` → all rows committed), N runs × M steps × 20 keys (18 floats, 1 int,
  1 string), logged concurrently from one thread per run;
- log → queryable latency p50/p99 at a steady rate (default 100k points/s) for a few seconds;
- bytes on disk per point (segments, after the worker's compaction had its chance), worker peak RSS;
- full-history read of the largest run (``history(samples=None, pandas=False)``);
- a 1000-bucket sampled read of one key with ``--sampled-steps`` steps (logged through the SDK too).

Prints one JSON line and a table. Medians of ``--repeat`` runs. Uses the Redis at ``--redis-url`` under a fresh
namespace (removed afterwards) and a temporary data directory.

    python bench/e2e.py --runs 1 --steps 100000 --repeat 3
    python bench/e2e.py --runs 100 --steps 1000
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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis
import sqlalchemy

import ingest
from history.query import Api
from schemas import encode_frame_raw
from schemas.frame import LogBlock, encode_event
from schemas.store import segments

KEYS = [f"train/m{i:02d}" for i in range(18)] + ["epoch", "phase"]


def make_row(rng: np.random.Generator, step: int) -> dict[str, Any]:
    vals = rng.random(18)
    row: dict[str, Any] = {k: float(v) for k, v in zip(KEYS[:18], vals, strict=True)}
    row["epoch"] = step // 1000
    row["phase"] = "train"
    return row


def raw_xadd(url: str, ns: str, events: int) -> float:
    """Events/s of pipelined XADD of 1,000-call frames (the SDK's block layout) into the same Redis."""
    rng = np.random.default_rng(0)
    rows = [make_row(rng, i) for i in range(1000)]
    block = LogBlock(keys=KEYS, ts=np.full(1000, time.time()), step=list(range(1000)), commit=[None] * 1000,
                     cols=[np.array([r[k] for r in rows]) for k in KEYS[:18]]
                     + [np.array([r["epoch"] for r in rows], dtype=np.int64), [r["phase"] for r in rows]])
    frame = encode_frame_raw("bench", "raw", "raw", 0, [encode_event(block)])
    key = f"{ns}:raw"
    frames = max(1, events // 1000)
    with redis.Redis.from_url(url) as r:
        t0 = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        for i in range(frames):
            pipe.xadd(key, {b"f": frame})
            if i % 50 == 49:
                pipe.execute()
        pipe.execute()
        dt = time.perf_counter() - t0
        r.delete(key)
    return frames * 1000 / dt


def start_worker(url: str, ns: str, data_dir: Path) -> subprocess.Popen[bytes]:
    log = open(data_dir / "worker.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "workers", "--redis-url", url, "--namespace", ns, "--data-dir", str(data_dir),
         "--commit-interval", "0.25"],
        stdout=log, stderr=log,
    )


def status_mb(pid: int, field: str) -> float:
    """A memory figure of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``: peak RSS) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    return status_mb(pid, "VmHWM")


def committed_rows(api: Api, project: str) -> int:
    return sum(r.rows for r in api.runs(project))


def log_runs(url: str, ns: str, data_dir: Path, project: str, runs: int, steps: int) -> tuple[float, float]:
    """Log the runs concurrently (a thread per run); return (clock at the first call, seconds until every run
    finished). The rows are made before the clock starts, so the figure is stepline's cost, not the benchmark's
    random number generation."""
    rngs = [np.random.default_rng(i) for i in range(runs)]
    rows = [[make_row(rngs[i], s) for s in range(steps)] for i in range(runs)]

    def one(i: int) -> None:
        run = ingest.init(project=project, id=f"r{i}", redis_url=url, namespace=ns, data_dir=str(data_dir))
        for s, row in enumerate(rows[i]):
            run.log(row, step=s)
        run.finish(timeout=600)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return t0, time.perf_counter() - t0


def wait_rows(api: Api, project: str, rows: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while committed_rows(api, project) < rows:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {committed_rows(api, project)} of {rows} rows committed")
        time.sleep(0.02)


def latency(url: str, ns: str, data_dir: Path, api: Api, rate_points: int, seconds: float) -> list[float]:
    """Log at a steady rate; for each call, the time until its row is visible through Api."""
    calls_per_s = rate_points / 20
    n = int(calls_per_s * seconds)
    sent: list[float] = [0.0] * n
    seen: list[float] = [0.0] * n
    run = ingest.init(project="latency", id="steady", redis_url=url, namespace=ns, data_dir=str(data_dir))
    rng = np.random.default_rng(7)
    done = threading.Event()

    def poll() -> None:
        nxt = 0
        while nxt < n and not done.is_set():
            try:
                rows = api.run("latency/steady").rows
            except LookupError:
                rows = 0
            now = time.perf_counter()
            # log(step=s) stays pending until step s+1 arrives: row s is visible once rows > s.
            while nxt < min(rows, n):
                seen[nxt] = now
                nxt += 1
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    t0 = time.perf_counter()
    for i in range(n):
        target = t0 + i / calls_per_s
        while time.perf_counter() < target:
            time.sleep(0.0002)
        run.log(make_row(rng, i), step=i, commit=True)
        sent[i] = time.perf_counter()
    run.finish(timeout=120)
    poller.join(60)
    done.set()
    return [s - t for s, t in zip(seen, sent, strict=True) if s]


def sampled_read(url: str, ns: str, data_dir: Path, api: Api, steps: int) -> dict[str, float]:
    run = ingest.init(project="sampled", id="long", redis_url=url, namespace=ns, data_dir=str(data_dir))
    rng = np.random.default_rng(3)
    vals = rng.random(steps)
    t0 = time.perf_counter()
    for s in range(steps):
        run.log({"loss": float(vals[s])}, step=s, commit=True)
    run.finish(timeout=600)
    t_log = time.perf_counter() - t0
    deadline = time.monotonic() + 900
    while True:
        try:
            if api.run("sampled/long").rows >= steps:
                break
        except LookupError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("sampled run not committed")
        time.sleep(0.05)
    r = api.run("sampled/long")

    def median_ms(rr: Any) -> float:
        times = []
        for _ in range(11):
            t = time.perf_counter()
            out = rr.sampled("loss", buckets=1000)
            times.append(time.perf_counter() - t)
            assert len(out["x"]) <= 4000
        return statistics.median(times) * 1000

    # Both sides of the Api's decoded-column cache: cold (every read decodes Parquet, as the first look at a run
    # does) and warm (a chart that redraws or zooms pays only for M4).
    with Api(data_dir=data_dir, cache_bytes=0) as cold:
        cold_ms = median_ms(cold.run("sampled/long"))
    return {"sampled_read_ms": median_ms(r), "sampled_read_cold_ms": cold_ms,
            "sampled_log_calls_per_s": steps / t_log}


def rss_with_runs(url: str, runs: int, steps: int) -> float:
    """Peak RSS (MB) of a fresh worker that has taken ``runs`` active runs of ``steps`` steps each."""
    ns = f"bench{uuid.uuid4().hex[:8]}"
    data_dir = Path(tempfile.mkdtemp(prefix="stepline-bench-rss-"))
    worker = start_worker(url, ns, data_dir)
    api = Api(data_dir=data_dir)
    try:
        rng = np.random.default_rng(1)
        active = [ingest.init(project="rss", id=f"r{i}", redis_url=url, namespace=ns, data_dir=str(data_dir))
                  for i in range(runs)]
        for s in range(steps):
            for run in active:
                run.log(make_row(rng, s), step=s)
        for run in active:
            run.finish(timeout=600)
        wait_rows(api, "rss", runs * steps)
        return peak_rss_mb(worker.pid)
    finally:
        api.close()
        worker.terminate()
        worker.wait(30)
        with redis.Redis.from_url(url) as r:
            for key in r.scan_iter(match=f"{ns}:*", count=1000):
                r.delete(key)
        shutil.rmtree(data_dir, ignore_errors=True)


def once(args: argparse.Namespace, rep: int) -> dict[str, Any]:
    ns = f"bench{uuid.uuid4().hex[:8]}"
    data_dir = Path(tempfile.mkdtemp(prefix="stepline-bench-"))
    worker = start_worker(args.redis_url, ns, data_dir)
    api = Api(data_dir=data_dir)
    out: dict[str, Any] = {}
    try:
        points = args.runs * args.steps * 20
        out["raw_xadd_points_per_s"] = raw_xadd(args.redis_url, ns, 200_000) * 20
        # The clock starts at the first log() call (log_runs makes the rows before that).
        t0, t_log = log_runs(args.redis_url, ns, data_dir, "e2e", args.runs, args.steps)
        wait_rows(api, "e2e", args.runs * args.steps)
        t_all = time.perf_counter() - t0
        out["points"] = points
        out["log_points_per_s"] = points / t_log
        out["e2e_points_per_s"] = points / t_all
        t = time.perf_counter()
        hist = api.run("e2e/r0").history(samples=None, pandas=False)
        out["full_read_s"] = time.perf_counter() - t
        out["full_read_points"] = sum(len(v) for k, v in hist.items() if not k.startswith("_"))
        if args.latency_seconds > 0:
            lat = sorted(latency(args.redis_url, ns, data_dir, api, args.latency_rate, args.latency_seconds))
            out["latency_p50_ms"] = lat[len(lat) // 2] * 1000 if lat else float("nan")
            out["latency_p99_ms"] = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
        if args.sampled_steps > 0 and rep == 0:
            out.update(sampled_read(args.redis_url, ns, data_dir, api, args.sampled_steps))
        time.sleep(args.settle)  # give compaction its interval
        seg_bytes = sum(p.stat().st_size for p in (data_dir / "segments").rglob("*.parquet"))
        # Only the e2e runs' points are counted against their segments: the other phases' runs share the dir.
        engine = sqlalchemy.create_engine(f"sqlite:///{data_dir / 'meta.sqlite'}")
        with engine.connect() as conn:
            e2e_bytes = int(conn.execute(
                sqlalchemy.select(sqlalchemy.func.sum(segments.c.bytes)).where(segments.c.project == "e2e")
            ).scalar() or 0)
        engine.dispose()
        out["bytes_per_point"] = e2e_bytes / points
        out["all_segment_bytes"] = seg_bytes
        out["worker_peak_rss_mb"] = peak_rss_mb(worker.pid)
        out["ratio_e2e_to_raw_xadd"] = out["e2e_points_per_s"] / out["raw_xadd_points_per_s"]
    finally:
        api.close()
        worker.terminate()
        worker.wait(30)
        with redis.Redis.from_url(args.redis_url) as r:
            for key in r.scan_iter(match=f"{ns}:*", count=1000):
                r.delete(key)
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default=os.environ.get("STEPLINE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency-rate", type=int, default=100_000, help="points/s of the latency phase")
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    ap.add_argument("--sampled-steps", type=int, default=1_000_000)
    ap.add_argument("--settle", type=float, default=6.0, help="seconds for compaction before measuring bytes")
    ap.add_argument("--rss-runs", type=int, default=1000, help="active runs for the worker RSS figure (0: skip)")
    ap.add_argument("--rss-steps", type=int, default=50)
    args = ap.parse_args()
    results = [once(args, i) for i in range(args.repeat)]
    if args.rss_runs > 0:
        results[0]["worker_peak_rss_mb_with_runs"] = rss_with_runs(args.redis_url, args.rss_runs, args.rss_steps)
        results[0]["rss_runs"] = args.rss_runs
    med: dict[str, Any] = {}
    for k in results[0]:
        vals = [r[k] for r in results if k in r]
        med[k] = statistics.median(vals) if all(isinstance(v, int | float) for v in vals) else vals[0]
    print(json.dumps({"bench": "e2e", "runs": args.runs, "steps": args.steps, "repeat": args.repeat,
                      "median": med, "all": results}))
    print(f"\n{'figure':<34} {'median':>16}")
    for k, v in med.items():
        print(f"{k:<34} {v:>16,.3f}" if isinstance(v, float) else f"{k:<34} {v:>16,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
