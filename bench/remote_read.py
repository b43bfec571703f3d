"""Reads through the gateway (``Api(url=...)``, HTTP on loopback) next to the local ``Api`` on the same data,
measured in the same run.

    flock /work/helpers/bench.lock /work/venv/bin/python bench/remote_read.py [--repeat 7]

Data: synthetic history in the segment format (bench/query_bench.py's ``make_run``, SQLite metadata): one run of
100k steps x 20 float keys (2M points) and one run of one key over 1M steps. The gateway is a real process
(``python -m gateway``) on a free loopback port, open mode (no keys), default column cache.

Cases (targets from issue 16):
- full read of 2M points: ``history(samples=None, pandas=False)`` remote (target <= 1 s, and within 10x of local);
- the same as a DataFrame, and ``scan_history()`` of all rows (context);
- 1000-bucket sampled read of the 1M-step key: ``sampled(key, buckets=1000)`` remote (target <= 50 ms).

Prints a table and one JSON line (medians; the first call of each case is a warm-up: imports, page cache,
connection pool, the gateway's column cache).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from query_bench import make_run

from history.query import Api
from workers.metastore import MetaStore, sqlite_url


def median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(data_dir: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "STEPLINE_HOME": str(data_dir / "home")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--data-dir", str(data_dir), "--port", str(port), "--redis-url", redis_url,
         "--namespace", f"bench{port}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the gateway did not start (exit {proc.poll()})")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--redis-url", default=os.environ.get("STEPLINE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        store = MetaStore(sqlite_url(data_dir))
        make_run(store, data_dir, "wide", 100_000, [f"m{i:02d}" for i in range(20)], 1)
        make_run(store, data_dir, "big", 1_000_000, ["loss"], 1)
        store.close()
        proc, url = start_gateway(data_dir, args.redis_url)
        try:
            with Api(data_dir=data_dir) as local, Api(url=url) as remote:
                lw, lb = local.run("bench/wide"), local.run("bench/big")
                rw, rb = remote.run("bench/wide"), remote.run("bench/big")
                cases: list[tuple[str, str, Callable[[], Any], Callable[[], Any], int]] = [
                    ("full", "history 100k x 20 (2M points), all rows",
                     lambda: lw.history(samples=None, pandas=False), lambda: rw.history(samples=None, pandas=False),
                     args.repeat),
                    ("full_df", "history 100k x 20 -> DataFrame", lambda: lw.history(samples=None),
                     lambda: rw.history(samples=None), args.repeat),
                    ("scan", "scan_history 100k x 20 (row dicts)", lambda: sum(1 for _ in lw.scan_history()),
                     lambda: sum(1 for _ in rw.scan_history(page_size=10_000)), 3),
                    ("sampled", "sampled 1M steps, 1000 buckets", lambda: lb.sampled("loss", buckets=1000),
                     lambda: rb.sampled("loss", buckets=1000), max(args.repeat, 20)),
                ]
                out: dict[str, Any] = {"bench": "remote_read"}
                rows = []
                for key, name, loc, rem, rep in cases:
                    l_med, _ = median_ms(loc, rep)
                    r_med, r_best = median_ms(rem, rep)
                    out[f"{key}_local_ms"], out[f"{key}_http_ms"] = round(l_med, 2), round(r_med, 2)
                    rows.append((name, l_med, r_med, r_best))
        finally:
            proc.terminate()
            proc.wait(20)
    print(f"{'case':42s} {'local':>10s} {'http':>10s} {'http best':>10s} {'ratio':>7s}")
    for name, l_med, r_med, r_best in rows:
        print(f"{name:42s} {l_med:8.1f}ms {r_med:8.1f}ms {r_best:8.1f}ms {r_med / l_med:6.1f}x")
    full, sampled = out["full_http_ms"], out["sampled_http_ms"]
    print(f"targets: full read over HTTP <= 1000 ms: {full:.0f} ms "
          f"({'met' if full <= 1000 else 'NOT met'}), within 10x of local: {full / out['full_local_ms']:.1f}x "
          f"({'met' if full <= 10 * out['full_local_ms'] else 'NOT met'}); "
          f"sampled over HTTP <= 50 ms: {sampled:.1f} ms ({'met' if sampled <= 50 else 'NOT met'})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
