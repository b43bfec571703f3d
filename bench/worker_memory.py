"""A worker's memory over a long life: many short runs through one worker process.

Feeds ``--runs`` short runs (``--steps`` steps of ``--keys`` float keys each, one frame per run: start, one
column-wise block, finish) into a fresh namespace of the Redis at ``--redis-url``, one worker process consuming
them, and samples the worker's RSS (``VmRSS``) once the first ``--early`` runs are committed and again at the
end. The same load runs twice, each with a fresh worker and data directory:

- ``bounded``: the worker's defaults (idle run state is dropped from memory and reloaded from the metadata store
  when its run logs again);
- ``keep-all``: the same worker with eviction switched off (``PartitionProcessor.evict_idle`` replaced by a no-op
  in the worker process, :data:`KEEP_ALL_WORKER`), so it keeps every run's state: the reference, measured in the
  same process. (Setting ``STEPLINE_RUN_CACHE_MAX`` and ``STEPLINE_RUN_CACHE_IDLE_S`` beyond reach is not enough:
  a finished run's state is dropped whatever they say.) Each pass scrapes the worker's
  ``stepline_worker_run_states_evicted`` at the end, so the table shows that the reference evicted nothing.

The target (issue 15): RSS at the end no more than 50 MB above RSS after the first 1,000 runs, and throughput
within 10 % of the keep-all worker. Prints one JSON line, then a table.

    python bench/worker_memory.py --runs 100000 --steps 50
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
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis
import sqlalchemy
from e2e import status_mb  # (bench/ is the script's own folder)

from schemas import Finish, LogBlock, Names, Start, encode_event, encode_frame_raw
from stepline.embedded import free_port

PARTITIONS = 16

#: The keep-all reference: ``python -m workers`` with run-state eviction disabled (bench only; no setting does it).
KEEP_ALL_WORKER = ("import workers.partition as p; p.PartitionProcessor.evict_idle = lambda self, now=None: 0; "
                   "from workers.service import main; raise SystemExit(main())")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    return status_mb(pid, field)


def anon_mb(pid: int) -> float:
    """Anonymous memory (heap, arenas, Arrow's pool) as opposed to file pages mapped in (libraries, files)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def frame_of(i: int, steps: int, keys: int, rng: np.random.Generator) -> bytes:
    """One run in one frame: start, ``steps`` calls as one column-wise block, finish."""
    ts = 1_700_000_000.0 + i
    block = LogBlock(keys=[f"k{j}" for j in range(keys)], ts=np.full(steps, ts), step=list(range(steps)),
                     commit=[None] * steps, cols=[rng.random(steps) for _ in range(keys)])
    events = [encode_event(Start(ts=ts)), encode_event(block), encode_event(Finish(ts=ts + 1))]
    return encode_frame_raw("mem", f"r{i:07d}", f"p{i:07d}", 0, events)


def finished_runs(engine: sqlalchemy.Engine) -> int:
    try:
        with engine.connect() as c:
            return int(c.execute(sqlalchemy.text("SELECT count(*) FROM sl_runs WHERE state = 'finished'")).scalar()
                       or 0)
    except sqlalchemy.exc.OperationalError:
        return 0  # the worker has not created the tables yet


def evicted(port: int) -> int:
    """The worker's ``stepline_worker_run_states_evicted`` (-1 when it cannot be read)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("stepline_worker_run_states_evicted"):
            return int(float(line.split()[-1]))
    return -1


def one_pass(url: str, runs: int, steps: int, keys: int, early: int, keep_all: bool) -> dict[str, Any]:
    ns = "mem" + uuid.uuid4().hex[:8]
    names = Names(ns, PARTITIONS)
    data_dir = Path(tempfile.mkdtemp(prefix="stepline-bench-mem-"))
    env = {**os.environ, "STEPLINE_REDIS_URL": url, "STEPLINE_NAMESPACE": ns, "STEPLINE_PARTITIONS": str(PARTITIONS),
           "STEPLINE_DATA_DIR": str(data_dir), "STEPLINE_RETENTION_S": "0", "STEPLINE_TRIM_INTERVAL_S": "1"}
    metrics_port = free_port()
    env["STEPLINE_WORKER_METRICS_PORT"] = str(metrics_port)
    log = open(data_dir / "worker.log", "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-c", KEEP_ALL_WORKER] if keep_all else [sys.executable, "-m", "workers"]
    worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    engine = sqlalchemy.create_engine(f"sqlite:///{data_dir / 'meta.sqlite'}")
    rng = np.random.default_rng(7)
    r = redis.Redis.from_url(url)
    try:
        t0 = time.monotonic()
        rss_early = anon_early = None
        fed = 0
        while True:
            # Feed in slices so Redis holds a bounded backlog and the early sample lands near ``early`` runs.
            done = finished_runs(engine)
            if fed < runs and fed - done < 2_000:
                pipe = r.pipeline(transaction=False)
                for i in range(fed, min(runs, fed + 500)):
                    p = names.partition("mem", f"r{i:07d}")
                    pipe.xadd(names.stream(p), {"f": frame_of(i, steps, keys, rng)})
                pipe.execute()
                fed = min(runs, fed + 500)
            if rss_early is None and done >= early:
                rss_early, anon_early = rss_mb(worker.pid), anon_mb(worker.pid)
            if done >= runs:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the worker died: {(data_dir / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        return {"mode": "keep-all" if keep_all else "bounded", "runs": runs, "steps": steps, "keys": keys,
                "seconds": round(elapsed, 2), "points_per_s": round(runs * steps * keys / elapsed),
                "runs_per_s": round(runs / elapsed, 1), "rss_after_early_mb": round(rss_early or float("nan"), 1),
                "rss_end_mb": round(rss_mb(worker.pid), 1), "peak_rss_mb": round(rss_mb(worker.pid, "VmHWM"), 1),
                "anon_after_early_mb": round(anon_early or float("nan"), 1),
                "anon_end_mb": round(anon_mb(worker.pid), 1), "evicted": evicted(metrics_port)}
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        engine.dispose()
        for key in r.scan_iter(match=f"{ns}:*", count=1000):
            r.delete(key)
        r.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--early", type=int, default=1_000, help="sample RSS once this many runs are committed")
    ap.add_argument("--only", choices=["bounded", "keep-all"],
                    help="one pass only (e.g. the keep-all reference against an older worker on PYTHONPATH)")
    args = ap.parse_args()
    if args.only:
        row = one_pass(args.redis_url, args.runs, args.steps, args.keys, args.early, args.only == "keep-all")
        print(json.dumps({"bench": "worker_memory", "passes": [row]}))
        return 0
    rows = [one_pass(args.redis_url, args.runs, args.steps, args.keys, args.early, keep_all)
            for keep_all in (False, True)]
    bounded, keep = rows
    summary = {
        "rss_growth_mb": round(bounded["rss_end_mb"] - bounded["rss_after_early_mb"], 1),
        "rss_growth_keep_all_mb": round(keep["rss_end_mb"] - keep["rss_after_early_mb"], 1),
        "throughput_ratio": round(bounded["points_per_s"] / keep["points_per_s"], 3),
    }
    summary["met"] = summary["rss_growth_mb"] <= 50 and summary["throughput_ratio"] >= 0.9
    print(json.dumps({"bench": "worker_memory", "passes": rows, **summary}))
    print(f"\n{'mode':<9} {'runs':>8} {'seconds':>8} {'points/s':>10} {'RSS @early':>11} {'RSS end':>8} {'peak':>7}"
          f" {'evicted':>8}")
    for row in rows:
        print(f"{row['mode']:<9} {row['runs']:>8} {row['seconds']:>8} {row['points_per_s']:>10,} "
              f"{row['rss_after_early_mb']:>9} MB {row['rss_end_mb']:>5} MB {row['peak_rss_mb']:>4} MB"
              f" {row['evicted']:>8}")
    print(f"\nRSS growth after the first {args.early} runs: {summary['rss_growth_mb']} MB bounded "
          f"(target <= 50), {summary['rss_growth_keep_all_mb']} MB keep-all; throughput ratio "
          f"{summary['throughput_ratio']} (target >= 0.9): {'met' if summary['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
