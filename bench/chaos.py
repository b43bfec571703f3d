"""Chaos runner: randomized rounds of a multi-run workload through 3 worker processes, faults at random moments,
and after every round the invariant checker of ``tests/invariants.py`` (issue 6).

One private ``redis-server`` (AOF, ``appendfsync always``, so every acknowledged write survives its kill -9), one
data directory (SQLite), 3 ``python -m workers`` processes that live across rounds (killed and restarted by the
faults). The workers reach Redis through one TCP proxy, an SDK run per round through another. Each round: 4 runs
of frames (explicit steps, ``commit=False`` chains, rejected lower steps) fed by a retrying feeder, one SDK run,
and 1-3 faults drawn from:

    kill9        kill -9 a worker (restarted at once)
    crash_at     restart a worker that kill -9s itself at read / segments / committed (its 2nd pass)
    sigstop      SIGSTOP a worker past its lease, then SIGCONT (a zombie: its commits are refused)
    redis_kill   kill -9 Redis, restart it on the same port (AOF always)
    net_cut      cut every connection of a proxy (SDK or workers)
    net_stall    stop a proxy forwarding for up to 1.5 s
    net_drop     refuse connections through a proxy for up to 1 s
    lose_reply   let the server run commands but lose their replies (the client resends: duplicate frames)
    resend       XADD again frames already sent (a client retrying)
    poison       XADD hostile entries (random bytes, truncated msgpack, wrong shapes)
    db_lock      hold an exclusive SQLite lock for up to 2 s

After the round: heal, restart dead workers, wait until every committed offset reaches its stream's end, check.
Prints ``rounds=…, faults=…, lost=0, duplicated=0, reordered=0`` and a JSON result; exits 1 on any violation.
Seeded: ``--seed`` fixes the workload, the faults and their moments (process timing still varies).

    python bench/chaos.py --rounds 200 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import redis
from support.history_oracle import Oracle
from support.invariants import Violations, check_runs
from support.netproxy import Proxy
from support.servers import RedisServer, free_port
from support.worker_harness import RunScript, WorkerFleet, caught_up, interleave, make_run

import ingest
from ingest.settings import ClientSettings
from schemas import FRAME_FIELD, Names
from workers.metastore import MetaStore, sqlite_url

P = 4
NS = "chaos"
FAULTS = ("kill9", "crash_at", "sigstop", "redis_kill", "net_cut", "net_stall", "net_drop", "lose_reply", "resend",
          "poison", "db_lock")
WORKER_ENV = {"STEPLINE_TRIM_INTERVAL_S": "1", "STEPLINE_COMPACTION_INTERVAL_S": "0.5"}


class RetryingFeeder(threading.Thread):
    """XADD frames at a steady pace; a failed batch is sent again (duplicates are the workers' to skip)."""

    def __init__(self, url: str, names: Names, items: list[tuple[int, bytes]], seconds: float) -> None:
        super().__init__(daemon=True)
        self.url, self.names, self.items, self.seconds = url, names, items, seconds
        self.sent: list[tuple[int, bytes]] = []

    def run(self) -> None:
        r = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        size = max(1, len(self.items) // max(1, int(self.seconds / 0.05)))
        for i in range(0, len(self.items), size):
            batch = self.items[i:i + size]
            while True:
                try:
                    pipe = r.pipeline(transaction=False)
                    for p, raw in batch:
                        pipe.xadd(self.names.stream(p), {FRAME_FIELD: raw})
                    pipe.execute()
                    break
                except (redis.RedisError, OSError):
                    time.sleep(0.1)
            self.sent.extend(batch)
            time.sleep(0.05)
        r.close()


class Chaos:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.seed = seed
        (root / "redis").mkdir(parents=True)
        self.redis = RedisServer(port=free_port(), dir=root / "redis",
                                 args=["--appendonly", "yes", "--appendfsync", "always"])
        self.redis.start()
        self.worker_proxy = Proxy(self.redis.port)
        self.sdk_proxy = Proxy(self.redis.port)
        self.data_dir = root / "data"
        self.data_dir.mkdir()
        self.names = Names(NS, P)
        self.fleet = WorkerFleet(redis_url=self.worker_proxy.url, namespace=NS, data_dir=self.data_dir,
                                 log_dir=root / "logs", partitions=P, lease_ttl_ms=1000, commit_interval_s=0.2)
        self.slots: list[Any] = [self.fleet.start(f"w{i}", env=WORKER_ENV) for i in range(3)]
        self.restarts = 0
        self.store = MetaStore(sqlite_url(self.data_dir))
        self.faults: Counter[str] = Counter()
        self.total = Violations()

    def close(self) -> None:
        self.fleet.close()
        self.store.close()
        self.worker_proxy.close()
        self.sdk_proxy.close()
        self.redis.stop(kill=True)

    def restart_slot(self, i: int, env: dict[str, str] | None = None) -> None:
        w = self.slots[i]
        if w.alive():
            self.fleet.kill9(w)
        self.restarts += 1
        self.slots[i] = self.fleet.start(f"w{i}-{self.restarts}", env={**WORKER_ENV, **(env or {})})

    def heal(self) -> None:
        for proxy in (self.worker_proxy, self.sdk_proxy):
            proxy.heal()
        if self.redis.proc is None:
            self.redis.start()
        for i, w in enumerate(self.slots):
            if not w.alive():
                self.restart_slot(i)
            else:
                w.proc.send_signal(signal.SIGCONT)

    # --- one fault ------------------------------------------------------------------------------------------

    def inject(self, kind: str, rng: random.Random, feeder: RetryingFeeder) -> None:
        self.faults[kind] += 1
        i = rng.randrange(3)
        proxy = rng.choice((self.worker_proxy, self.sdk_proxy))
        if kind == "kill9":
            self.restart_slot(i)
        elif kind == "crash_at":
            self.restart_slot(i, {"STEPLINE_TEST_CRASH_AT": f"{rng.choice(('read', 'segments', 'committed'))}:2"})
        elif kind == "sigstop":
            w = self.slots[i]
            if w.alive():
                w.proc.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(1.2, 2.0))  # past the 1 s lease: another worker takes over
                w.proc.send_signal(signal.SIGCONT)
        elif kind == "redis_kill":
            self.redis.stop(kill=True)
            time.sleep(rng.uniform(0.1, 0.6))
            self.redis.start()
        elif kind == "net_cut":
            proxy.cut()
        elif kind == "net_stall":
            proxy.stall(rng.uniform(0.2, 1.5))
        elif kind == "net_drop":
            proxy.drop()
            time.sleep(rng.uniform(0.1, 1.0))
            proxy.heal()
        elif kind == "lose_reply":
            proxy.lose_replies(rng.randint(1, 3))
        elif kind == "resend":
            sent = list(feeder.sent)
            if sent:
                k = rng.randint(1, min(10, len(sent)))
                j = rng.randrange(len(sent) - k + 1)
                self._xadd(sent[j:j + k])
        elif kind == "poison":
            self._xadd([(rng.randrange(P), blob) for blob in (
                rng.randbytes(rng.randint(1, 300)), b"\x86\xa1v\x01\xa7project", b"\x93\x01\x02\x03",
                b"\x91" * 5000, b"\x81\xa1v\x02")])
        elif kind == "db_lock":
            db = sqlite3.connect(self.data_dir / "meta.sqlite", isolation_level=None, timeout=30)
            db.execute("BEGIN EXCLUSIVE")
            time.sleep(rng.uniform(0.3, 2.0))
            db.execute("ROLLBACK")
            db.close()

    def _xadd(self, items: list[tuple[int, bytes]]) -> None:
        for _ in range(50):
            try:
                with redis.Redis(port=self.redis.port, socket_timeout=1) as r:
                    pipe = r.pipeline(transaction=False)
                    for p, raw in items:
                        pipe.xadd(self.names.stream(p), {FRAME_FIELD: raw})
                    pipe.execute()
                return
            except (redis.RedisError, OSError):
                time.sleep(0.1)

    # --- one round ------------------------------------------------------------------------------------------

    def round(self, n: int) -> tuple[Violations, list[str], float]:
        t0 = time.monotonic()
        rng = random.Random(self.seed * 100_003 + n)
        scripts: list[RunScript] = [make_run(rng, self.names, "chaos", f"r{n:04d}-{k}", rng.randint(150, 400), 4,
                                             frame_events=rng.choice((5, 10, 20)), t0=1_700_000_000.0 + n)
                                    for k in range(4)]
        feeder = RetryingFeeder(f"redis://127.0.0.1:{self.redis.port}/0", self.names, interleave(scripts, rng), 2.0)
        kinds = [rng.choice(FAULTS) for _ in range(rng.randint(1, 3))]
        moments = sorted(rng.uniform(0.0, 2.0) for _ in kinds)
        sdk_oracle = Oracle()
        settings = ClientSettings(redis_url=self.sdk_proxy.url, namespace=NS, partitions=P,
                                  data_dir=self.root / "client", flush_interval_s=0.02, backoff_initial_s=0.02,
                                  backoff_max_s=0.2, connect_timeout_s=0.5, socket_timeout_s=1.0, spill_after_s=1.0)
        run = ingest.init(project="chaos-sdk", id=f"s{n:04d}", settings=settings)
        sdk_rng = random.Random(rng.random())
        stop = threading.Event()

        def sdk_loop() -> None:
            while not stop.is_set():
                for _ in range(20):
                    data = {"loss": sdk_rng.random(), "phase": sdk_rng.choice(("a", "b"))}
                    step = sdk_oracle.cursor + 1 if sdk_rng.random() < 0.97 else max(0, sdk_oracle.cursor - 1)
                    run.log(data, step=step)
                    sdk_oracle.log(0.0, data, step)
                time.sleep(0.02)

        sdk_thread = threading.Thread(target=sdk_loop, daemon=True)
        feeder.start()
        sdk_thread.start()
        start = time.monotonic()
        for kind, at in zip(kinds, moments, strict=True):
            time.sleep(max(0.0, start + at - time.monotonic()))
            self.inject(kind, rng, feeder)
        feeder.join()
        stop.set()
        sdk_thread.join()
        self.heal()
        res = run.finish(timeout=60)
        sdk_oracle.finish(0.0)
        with redis.Redis(port=self.redis.port) as r:
            deadline = time.monotonic() + 90
            while not caught_up(r, self.names, self.store):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"round {n}: workers did not catch up\n{self.fleet.logs()}")
                self.heal()
                time.sleep(0.1)
        v = check_runs(self.data_dir, self.store, {(s.project, s.run): s.oracle for s in scripts})
        v.add(check_runs(self.data_dir, self.store, {("chaos-sdk", f"s{n:04d}"): sdk_oracle}, exact_time=False))
        if not res.ok:
            v.note("lost", max(1, res.unsent_frames), f"round {n}: the SDK run did not finish cleanly: {res}")
        return v, kinds, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs, data)")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="stepline-chaos-"))
    t0 = time.monotonic()
    chaos = Chaos(root, args.seed)
    failed: list[dict[str, Any]] = []
    done = 0
    try:
        for n in range(args.rounds):
            v, kinds, secs = chaos.round(n)
            chaos.total.add(v)
            done += 1
            status = "ok" if v.ok else "FAIL"
            print(f"round {n:4d} {status} {secs:5.1f}s faults={','.join(kinds)} {v.line()}", flush=True)
            if not v.ok:
                failed.append({"round": n, "faults": kinds, "violations": v.line(), "messages": v.messages[:10]})
    finally:
        chaos.close()
        wall = time.monotonic() - t0
        t = chaos.total
        print(f"rounds={done}, faults={sum(chaos.faults.values())}, lost={t.lost}, duplicated={t.duplicated}, "
              f"reordered={t.reordered}, mismatched={t.mismatched}, rows={t.rows}, rejections={t.rejections}, "
              f"wall={wall:.0f}s")
        print(json.dumps({"rounds": done, "seed": args.seed, "faults": sum(chaos.faults.values()),
                          "by_fault": dict(sorted(chaos.faults.items())), "lost": t.lost,
                          "duplicated": t.duplicated, "reordered": t.reordered, "mismatched": t.mismatched,
                          "runs": t.runs, "rows": t.rows, "rejections": t.rejections, "wall_s": round(wall, 1),
                          "failed_rounds": failed, "dir": str(root) if args.keep else None}))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
