"""Benchmark of read-your-writes: what ``run.finish()`` costs now that it waits for a worker's commit.

One worker process (default settings, as ``stepline up`` runs it) on a namespace ``bench-<random>`` of the given
Redis (deleted afterwards), a fresh data directory. Each measured run logs ``--steps`` steps of 10 numbers, then
finishes; runs alternate between ``finish(wait=False)`` (the reference: every frame acknowledged by Redis, the old
behaviour) and ``finish()`` (also waits until the worker has committed the run, so ``Api`` reads all of it), so
drift on a loaded machine hits both alike. Two phases:

- idle: nothing else is logged;
- busy: a second process logs as fast as it can into ``--load-runs`` other runs (same worker) the whole time.

Prints ONE JSON line, then a table: p50/p99 of each way of finishing and the added latency (the difference of the
medians and of the p99s)::

    flock /work/helpers/bench.lock python bench/finish_latency.py [--redis-url URL] [--runs 40] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

import ingest


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def start_worker(url: str, ns: str, data_dir: Path) -> subprocess.Popen[bytes]:
    log = open(data_dir / "worker.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "workers", "--redis-url", url, "--namespace", ns,
                             "--data-dir", str(data_dir)], stdout=log, stderr=log)


def wait_heartbeat(r: redis.Redis, ns: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not r.hlen(f"{ns}:workers"):
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not start (see worker.log)")
        time.sleep(0.05)


def load(url: str, ns: str, data_dir: str, runs: int) -> None:
    """The busy phase's other process: log into ``runs`` runs as fast as possible until killed."""
    rs = [ingest.init(project="load", id=f"load{i}", redis_url=url, namespace=ns, data_dir=data_dir,
                      settings={"silent": True}) for i in range(runs)]
    step = 0
    while True:
        for r in rs:
            r.log({f"k{j}": step * 0.5 + j for j in range(20)}, step=step)
        step += 1
        if step % 1000 == 0:
            time.sleep(0.01)  # let the senders' threads in


def measure(url: str, ns: str, data_dir: str, runs: int, steps: int, tag: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"nowait": [], "wait": []}
    for i in range(2 * runs):
        mode = "wait" if i % 2 else "nowait"
        run = ingest.init(project="fin", id=f"{tag}{i}", redis_url=url, namespace=ns, data_dir=data_dir,
                          settings={"silent": True})
        for s in range(steps):
            run.log({f"m{j}": s * 0.1 + j for j in range(10)}, step=s)
        t0 = time.perf_counter()
        res = run.finish(wait=mode == "wait")
        times[mode].append(time.perf_counter() - t0)
        if mode == "wait" and not res.committed:
            raise SystemExit(f"run {tag}{i} was not committed: {res}")
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    for mode, xs in times.items():
        out[f"{mode}_p50_ms"] = round(_pct(xs, 0.5) * 1000, 2)
        out[f"{mode}_p99_ms"] = round(_pct(xs, 0.99) * 1000, 2)
    out["added_p50_ms"] = round(out["wait_p50_ms"] - out["nowait_p50_ms"], 2)
    out["added_p99_ms"] = round(out["wait_p99_ms"] - out["nowait_p99_ms"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--runs", type=int, default=40, help="runs per way of finishing, per phase")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--load-runs", type=int, default=8)
    ap.add_argument("--load", nargs=3, metavar=("NS", "DATA_DIR", "RUNS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        load(args.redis_url, args.load[0], args.load[1], int(args.load[2]))
        return
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(args.redis_url)
    result: dict[str, Any] = {"bench": "finish_latency", "runs": args.runs, "steps": args.steps,
                              "load_runs": args.load_runs}
    with tempfile.TemporaryDirectory(prefix="sl-finish-") as tmp:
        data_dir = Path(tmp)
        worker = start_worker(args.redis_url, ns, data_dir)
        loader = None
        try:
            wait_heartbeat(r, ns)
            measure(args.redis_url, ns, tmp, 2, args.steps, "warm")  # imports, connections, first segments
            result["idle"] = summarise(measure(args.redis_url, ns, tmp, args.runs, args.steps, "idle"))
            loader = subprocess.Popen([sys.executable, __file__, "--redis-url", args.redis_url, "--load", ns, tmp,
                                       str(args.load_runs)])
            time.sleep(2.0)  # the load is flowing
            if loader.poll() is not None:
                raise SystemExit("the load process ended early")
            result["busy"] = summarise(measure(args.redis_url, ns, tmp, args.runs, args.steps, "busy"))
        finally:
            if loader is not None:
                loader.kill()
                loader.wait()
            worker.terminate()
            worker.wait(60)
            for key in r.scan_iter(match=f"{ns}:*", count=1000):
                r.delete(key)
            r.close()
    print(json.dumps(result))
    print()
    print(f"finish() latency, one worker, {args.runs} runs per cell of {args.steps} steps x 10 keys")
    print(f"{'phase':<6} {'finish(wait=False) p50/p99':>28} {'finish() p50/p99':>20} {'added p50/p99':>18}")
    for phase in ("idle", "busy"):
        s = result[phase]
        print(f"{phase:<6} {s['nowait_p50_ms']:>12.1f} / {s['nowait_p99_ms']:>8.1f} ms "
              f"{s['wait_p50_ms']:>8.1f} / {s['wait_p99_ms']:>6.1f} ms "
              f"{s['added_p50_ms']:>7.1f} / {s['added_p99_ms']:>6.1f} ms")


if __name__ == "__main__":
    main()
