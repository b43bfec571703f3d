"""Soak: a steady rate of frames for a long time (default 30 min) through 3 worker processes restarted every few
minutes; reports every process's RSS curve and the commit lag, and checks the invariants at the end (issue 6).

One private ``redis-server`` (AOF ``everysec``), SQLite in a temporary data directory. Runs are made with
``tests/worker_harness.make_run`` (explicit steps, ``commit=False`` chains, rejected lower steps) and fed in order;
a new batch of runs starts every minute so there are always runs starting, running and finished. Every
``--restart-every`` seconds the oldest worker gets SIGTERM (drain, commit, release) and a new one starts.

    python bench/soak.py --minutes 30 --rate 2000 --restart-every 180

Prints a sample line every ``--sample`` seconds (RSS MiB per process, Redis included; lag = how far behind the
stream end the oldest committed offset is, in seconds) and a JSON result with the curves; exits 1 when the
invariants fail, the lag exceeds ``--max-lag`` at the end, or a process's RSS grew by more than ``--max-growth``
between the middle and the last third of its life (workers live for ``--restart-every`` seconds each, so their
curves are short; Redis lives for the whole soak).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import redis
from support.invariants import Violations, check_runs
from support.servers import RedisServer, free_port
from support.worker_harness import RunScript, WorkerFleet, caught_up, make_run, xadd_frames

from schemas import Names
from workers.metastore import MetaStore, sqlite_url

P = 8
NS = "soak"


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def lag_s(r: redis.Redis, names: Names, store: MetaStore) -> float:
    offsets = {int(x["p"]): x["offset"] for x in store.partitions()}
    worst = 0.0
    for p in range(names.partitions):
        last = cast("list[tuple[bytes, Any]]", r.xrevrange(names.stream(p), count=1))
        if not last:
            continue
        end = last[0][0].decode()
        end_ms = int(end.split("-")[0])
        off = offsets.get(p, "0-0")
        if off == end:
            continue
        off_ms = int(off.split("-")[0])
        worst = max(worst, (end_ms - off_ms) / 1000 if off_ms else (time.time() * 1000 - end_ms) / 1000)
    return worst


class SteadyFeeder(threading.Thread):
    """Frames of new runs at ``rate`` frames/s until stopped; each run's frames in order."""

    def __init__(self, url: str, names: Names, rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.url, self.names, self.rate = url, names, rate
        self.rng = random.Random(seed)
        self.scripts: list[RunScript] = []
        self.stop = threading.Event()
        self.frames = 0

    def run(self) -> None:
        r = redis.Redis.from_url(self.url)
        queue: list[tuple[int, bytes]] = []
        batch_no = 0
        t = time.monotonic()
        while not self.stop.is_set():
            if not queue:
                scripts = [make_run(self.rng, self.names, "soak", f"b{batch_no:04d}-{k}", 2000, 6, frame_events=10,
                                    t0=1_700_000_000.0 + batch_no) for k in range(8)]
                batch_no += 1
                self.scripts.extend(scripts)
                cursors = [0] * len(scripts)
                while any(c < len(s.frames) for c, s in zip(cursors, scripts, strict=True)):
                    for i, s in enumerate(scripts):
                        if cursors[i] < len(s.frames):
                            queue.append((s.partition, s.frames[cursors[i]]))
                            cursors[i] += 1
                queue.reverse()
            n = max(1, int(self.rate * 0.05))
            chunk = [queue.pop() for _ in range(min(n, len(queue)))]
            xadd_frames(r, self.names, chunk)
            self.frames += len(chunk)
            t += 0.05
            time.sleep(max(0.0, t - time.monotonic()))
        # Finish the runs that were started: the oracle expects every frame.
        while queue:
            xadd_frames(r, self.names, [queue.pop() for _ in range(min(500, len(queue)))])
        r.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=2000, help="frames per second (10 log calls each)")
    ap.add_argument("--restart-every", type=float, default=180)
    ap.add_argument("--sample", type=float, default=10)
    ap.add_argument("--max-lag", type=float, default=30)
    ap.add_argument("--max-growth", type=float, default=1.5, help="last-third / first-third median RSS ratio")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--retention", type=float, default=120, help="workers' stream retention: Redis memory is "
                    "flat only when streams are trimmed")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="stepline-soak-"))
    (root / "redis").mkdir()
    srv = RedisServer(port=free_port(), dir=root / "redis", args=["--appendonly", "yes", "--appendfsync", "everysec"])
    srv.start()
    names = Names(NS, P)
    data_dir = root / "data"
    data_dir.mkdir()
    fleet = WorkerFleet(redis_url=srv.url, namespace=NS, data_dir=data_dir, log_dir=root / "logs", partitions=P,
                        lease_ttl_ms=3000, commit_interval_s=0.5, extra_args=["--retention", str(args.retention)])
    workers = [fleet.start(f"w{i}") for i in range(3)]
    store = MetaStore(sqlite_url(data_dir))
    feeder = SteadyFeeder(srv.url, names, args.rate, args.seed)
    curves: dict[str, list[tuple[float, float]]] = {}
    lags: list[tuple[float, float]] = []
    t0 = time.monotonic()
    last_restart = t0
    restarts = 0
    feeder.start()
    try:
        with redis.Redis.from_url(srv.url) as r:
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(args.sample)
                now = time.monotonic() - t0
                procs: dict[str, int] = {"redis": srv.proc.pid if srv.proc else 0}
                procs.update({w.wid: w.proc.pid for w in workers if w.alive()})
                for name, pid in procs.items():
                    mib = rss_mib(pid)
                    if mib is not None:
                        curves.setdefault(name, []).append((round(now, 1), round(mib, 1)))
                lag = lag_s(r, names, store)
                lags.append((round(now, 1), round(lag, 2)))
                print(f"t={now:6.0f}s frames={feeder.frames} lag={lag:5.1f}s "
                      + " ".join(f"{k}={curves[k][-1][1]:.0f}MiB" for k in procs if k in curves), flush=True)
                if time.monotonic() - last_restart >= args.restart_every:
                    last_restart = time.monotonic()
                    old = workers.pop(0)
                    old.proc.send_signal(signal.SIGTERM)
                    old.proc.wait(30)
                    restarts += 1
                    workers.append(fleet.start(f"w{3 + restarts - 1}"))
            feeder.stop.set()
            feeder.join()
            deadline = time.monotonic() + 120
            while not caught_up(r, names, store) and time.monotonic() < deadline:
                time.sleep(0.5)
            final_lag = lag_s(r, names, store)
        v: Violations = check_runs(data_dir, store, {(s.project, s.run): s.oracle for s in feeder.scripts})
    finally:
        feeder.stop.set()
        fleet.close()
        store.close()
        srv.stop(kill=True)
    growth: dict[str, float] = {}
    for name, curve in curves.items():
        if len(curve) >= 6:
            third = len(curve) // 3
            # Middle third against the last third: the first holds the start-up (imports, first batches).
            growth[name] = round(statistics.median(m for _, m in curve[-third:])
                                 / statistics.median(m for _, m in curve[third:2 * third]), 2)
    wall = time.monotonic() - t0
    ok = v.ok and final_lag <= args.max_lag and all(g <= args.max_growth for g in growth.values())
    print(f"soak: {wall / 60:.1f} min, frames={feeder.frames}, restarts={restarts}, final_lag={final_lag:.1f}s, "
          f"max_lag={max((lag for _, lag in lags), default=0):.1f}s, rss_growth={growth}, {v.line()}")
    result: dict[str, Any] = {"minutes": round(wall / 60, 1), "frames": feeder.frames, "restarts": restarts,
                              "final_lag_s": final_lag, "lag": lags, "rss_mib": curves, "rss_growth": growth,
                              "lost": v.lost, "duplicated": v.duplicated, "reordered": v.reordered,
                              "mismatched": v.mismatched, "ok": ok}
    print(json.dumps(result))
    shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
