"""Stream archive overhead: what archiving the committed entries costs, next to writing them into Redis.

In one run, on the same Redis and the same machine:

- reference: pipelined XADD of the SDK's frames (1,000-call ``logs`` blocks of 20 keys) into a stream;
- archiving those entries (``StreamKeeper.archive_range``: XRANGE, msgpack, zstd, PUT into a local data
  directory, the fenced SQL row): points/s, and its time against the XADD's;
- bytes per point: in Redis (``MEMORY USAGE``) and in the archive; the codecs side by side on the same body
  (gzip 1 and 6 from the standard library, zstd 1 and 3 from pyarrow): ratio and MB/s;
- reading the archive back as replay does (fetch, gunzip, msgpack): points/s;
- end to end, SDK → Redis → 1 worker process → history: 1 run × ``--steps`` × 20 keys with archiving on and off
  (retention 0 and a 1 s trim interval, so the worker archives and trims all along), points/s, the median of
  ``--repeat`` runs each way, alternating.

Prints one JSON line and a table. Run it under the bench lock:

    flock /work/helpers/bench.lock python bench/archive.py --frames 100 --steps 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import KEYS, log_runs, make_row, wait_rows  # the e2e bench's workload

from history.query import Api
from schemas import Names, encode_frame_raw
from schemas.clients import async_redis
from schemas.frame import LogBlock, encode_event
from schemas.objects import local_store
from workers.archive import StreamKeeper, read_archive
from workers.metastore import MetaStore, sqlite_url


def frames(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for f in range(n):
        rows = [make_row(rng, f * 1000 + i) for i in range(1000)]
        cols: list[Any] = [np.array([r[k] for r in rows]) for k in KEYS[:18]]
        cols += [np.array([r["epoch"] for r in rows], dtype=np.int64), [r["phase"] for r in rows]]
        block = LogBlock(keys=KEYS, ts=np.full(1000, time.time()), step=list(range(f * 1000, f * 1000 + 1000)),
                         commit=[None] * 1000, cols=cols)
        out.append(encode_frame_raw("bench", "arch", "p0", f, [encode_event(block)]))
    return out


def codecs(body: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    def zstd(level: int) -> Callable[[bytes], bytes]:
        return lambda b: bytes(pa.Codec("zstd", level).compress(b, asbytes=True))

    comps: list[tuple[str, Callable[[bytes], bytes]]] = [
        ("gzip1", lambda b: gzip.compress(b, 1, mtime=0)), ("gzip6", lambda b: gzip.compress(b, 6)),
        ("zstd1", zstd(1)), ("zstd3", zstd(3))]
    for name, comp in comps:
        t = time.perf_counter()
        c = comp(body)
        dt = time.perf_counter() - t
        out[f"{name}_ratio"] = len(c) / len(body)
        out[f"{name}_mb_per_s"] = len(body) / dt / 1e6
    return out


async def archive_phase(url: str, n_frames: int) -> dict[str, Any]:
    ns = f"bench{uuid.uuid4().hex[:8]}"
    names = Names(ns, 1)
    d = Path(tempfile.mkdtemp(prefix="stepline-bench-archive-"))
    r = async_redis(url)
    store = MetaStore(sqlite_url(d))
    out: dict[str, Any] = {}
    try:
        fs = frames(n_frames)
        points = n_frames * 1000 * 20
        t = time.perf_counter()
        ids: list[bytes] = []
        for i in range(0, len(fs), 50):
            pipe = r.pipeline(transaction=False)
            for raw in fs[i:i + 50]:
                pipe.xadd(names.stream(0), {b"f": raw})
            ids += await pipe.execute()
        out["xadd_s"] = time.perf_counter() - t
        out["points"] = points
        out["redis_bytes_per_point"] = (await r.memory_usage(names.stream(0), samples=0) or 0) / points
        epoch, _ = store.take_partition(0, "bench")
        keeper = StreamKeeper(r, names, store.engine, local_store(d))
        t = time.perf_counter()
        await keeper.archive_range(0, epoch, ids[-1].decode())
        out["archive_s"] = time.perf_counter() - t
        out["archive_points_per_s"] = points / out["archive_s"]
        out["ratio_archive_to_xadd_time"] = out["archive_s"] / out["xadd_s"]
        files = list((d / "archive").rglob("*.msgpack"))
        out["archive_objects"] = len(files)
        out["archive_bytes_per_point"] = sum(p.stat().st_size for p in files) / points
        body = msgpack.packb([[b"0-0", [[b"f", raw]]] for raw in fs[:20]], use_bin_type=True)
        out.update(codecs(body))
        t = time.perf_counter()
        n = 0
        async for entries in read_archive(store.engine, local_store(d), 0):
            n += len(entries)
        out["read_points_per_s"] = points / (time.perf_counter() - t)
        assert n == n_frames
    finally:
        store.close()
        for key in [k async for k in r.scan_iter(match=f"{ns}:*")]:
            await r.delete(key)
        await r.aclose()
        shutil.rmtree(d, ignore_errors=True)
    return out


def e2e_phase(url: str, steps: int, archive: bool) -> float:
    ns = f"bench{uuid.uuid4().hex[:8]}"
    d = Path(tempfile.mkdtemp(prefix="stepline-bench-archive-e2e-"))
    env = {**os.environ, "STEPLINE_RETENTION_S": "0", "STEPLINE_TRIM_INTERVAL_S": "1",
           "STEPLINE_ARCHIVE": "1" if archive else "0"}
    with open(d / "worker.log", "ab") as log:
        worker = subprocess.Popen([sys.executable, "-m", "workers", "--redis-url", url, "--namespace", ns,
                                   "--data-dir", str(d), "--commit-interval", "0.25"], stdout=log, stderr=log, env=env)
    api = Api(data_dir=d)
    try:
        with redis.Redis.from_url(url) as rr:  # the clock starts once the worker has joined, not while it starts
            deadline = time.monotonic() + 120
            while not rr.hlen(f"{ns}:workers") and time.monotonic() < deadline:
                time.sleep(0.05)
        t0, _ = log_runs(url, ns, d, "e2e", 1, steps)
        wait_rows(api, "e2e", steps)
        return steps * 20 / (time.perf_counter() - t0)
    finally:
        api.close()
        worker.terminate()
        worker.wait(30)
        with redis.Redis.from_url(url) as rr:
            for key in rr.scan_iter(match=f"{ns}:*", count=1000):
                rr.delete(key)
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default=os.environ.get("STEPLINE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--frames", type=int, default=100, help="frames of 1,000 calls x 20 keys to archive")
    ap.add_argument("--steps", type=int, default=100_000, help="steps of the end-to-end run (0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs each way (the median is reported)")
    args = ap.parse_args()
    out = asyncio.run(archive_phase(args.redis_url, args.frames))
    if args.steps > 0:
        runs: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):  # alternating, so the machine's drifting load hits both alike
            for archive in (False, True):
                runs[archive].append(e2e_phase(args.redis_url, args.steps, archive=archive))
        out["e2e_points_per_s_archive_off"] = statistics.median(runs[False])
        out["e2e_points_per_s_archive_on"] = statistics.median(runs[True])
        out["ratio_e2e_on_to_off"] = out["e2e_points_per_s_archive_on"] / out["e2e_points_per_s_archive_off"]
    print(json.dumps({"bench": "archive", "frames": args.frames, "steps": args.steps, "result": out}))
    print(f"\n{'figure':<34} {'value':>16}")
    for k, v in out.items():
        print(f"{k:<34} {v:>16,.3f}" if isinstance(v, float) else f"{k:<34} {v:>16,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
