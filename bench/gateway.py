"""Gateway load benchmark: N simulated runs posting frames through the HTTP gateway for S seconds, next to the
same N runs XADDing straight into Redis in the same session; then every accepted event is checked in history.

Each simulated run sends, one request at a time, frames of one ``logs`` block (``--rows`` calls × ``--keys``
float keys, explicit steps) and finishes with a ``Finish`` event. Through the gateway: one aiohttp session, keep-alive,
429/503 honoured (``Retry-After``). Direct: ``redis.asyncio`` MULTI/EXEC per frame batch, as the SDK's sender does.
The gateway runs as its own process (``python -m gateway``, open mode on loopback, no rate limit), with
``--workers`` worker processes committing behind both phases; afterwards every run must be ``finished`` with
exactly the rows it had accepted and no rejection (exactly once).

Prints one JSON line, then a table.

    python bench/gateway.py                      # 200 runs × 30 s
    python bench/gateway.py --runs 20 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
import redis
import redis.asyncio as aioredis
import sqlalchemy

from schemas import FRAME_FIELD, Finish, LogBlock, Names, Start, encode_event, encode_frame_raw
from schemas.store import runs as runs_table
from stepline.embedded import free_port


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    events: int = 0
    rows: int = 0
    frames: int = 0
    status: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    accepted_rows: dict[str, int] = field(default_factory=dict)


class Producer:
    """One simulated run: frames of ``rows`` log calls × ``keys`` floats, explicit steps, contiguous seq."""

    def __init__(self, project: str, run: str, rows: int, keys: int) -> None:
        self.project, self.run = project, run
        self.keys = [f"train/k{j:02d}" for j in range(keys)]
        self.rows = rows
        self.seq = 0
        self.step = 0
        self.rng = np.random.default_rng(abs(hash(run)) % 2**32)

    def _frame(self, events: list[bytes]) -> bytes:
        raw = encode_frame_raw(self.project, self.run, "bench-" + self.run, self.seq, events)
        return raw

    def start(self) -> bytes:
        return self._frame([encode_event(Start(ts=time.time(), name=self.run))])

    def block(self) -> bytes:
        n = self.rows
        ev = LogBlock(keys=self.keys, ts=np.full(n, time.time()), step=list(range(self.step, self.step + n)),
                      commit=[None] * n, cols=list(self.rng.random((len(self.keys), n))))
        return self._frame([encode_event(ev)])

    def finish(self) -> bytes:
        return self._frame([encode_event(Finish(ts=time.time()))])

    def acked(self, frame_kind: str) -> None:
        self.seq += 1
        if frame_kind == "block":
            self.step += self.rows


async def _send_http(session: aiohttp.ClientSession, url: str, p: Producer, frame: bytes, st: Stats) -> bool:
    path = f"{url}/api/v1/projects/{p.project}/runs/{p.run}/frames"
    body = msgpack.packb([frame], use_bin_type=True)
    while True:
        t0 = time.perf_counter()
        try:
            async with session.post(path, data=body,
                                    headers={"Content-Type": "application/x-stepline-frames"}) as resp:
                await resp.read()
                st.latencies.append(time.perf_counter() - t0)
                st.status[resp.status] = st.status.get(resp.status, 0) + 1
                if resp.status == 202:
                    return True
                if resp.status in (429, 503):
                    ra = resp.headers.get("Retry-After")
                    if ra is None:
                        st.errors.append(f"{resp.status} without Retry-After")
                    await asyncio.sleep(float(ra or 1))
                    continue
                st.errors.append(f"{resp.status}: {(await resp.text())[:200]}")
                return False
        except aiohttp.ClientError as e:
            st.errors.append(repr(e))
            await asyncio.sleep(0.1)


async def _send_redis(r: aioredis.Redis, names: Names, p: Producer, frame: bytes, st: Stats) -> bool:
    stream = names.stream(names.partition(p.project, p.run))
    t0 = time.perf_counter()
    pipe = r.pipeline(transaction=True)
    pipe.xadd(stream, {FRAME_FIELD: frame})
    await pipe.execute()
    st.latencies.append(time.perf_counter() - t0)
    return True


async def phase(kind: str, runs: int, seconds: float, rows: int, keys: int, url: str, redis_url: str,
                names: Names) -> tuple[Stats, float]:
    st = Stats()
    producers = [Producer(f"bench-{kind}", f"r{i:03d}", rows, keys) for i in range(runs)]
    conn = aiohttp.TCPConnector(limit=runs + 8)
    session = aiohttp.ClientSession(connector=conn)
    r = aioredis.Redis.from_url(redis_url, max_connections=runs + 8)

    async def send(p: Producer, frame: bytes) -> bool:
        if kind == "gateway":
            return await _send_http(session, url, p, frame, st)
        return await _send_redis(r, names, p, frame, st)

    async def one(p: Producer) -> None:
        if not await send(p, p.start()):
            return
        p.acked("start")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not await send(p, p.block()):
                return
            p.acked("block")
            st.frames += 1
            st.events += 1
            st.rows += rows
        if await send(p, p.finish()):
            p.acked("finish")
        st.accepted_rows[p.run] = p.step

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in producers))
    elapsed = time.perf_counter() - t0
    await session.close()
    await r.aclose()
    return st, elapsed


def wait_http(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gateway exited")
        with contextlib.suppress(OSError):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("gateway did not start")


def check_history(db_url: str, project: str, expected: dict[str, int], timeout: float) -> tuple[bool, float, str]:
    """Wait until every run is finished with exactly its accepted rows; returns (ok, seconds waited, detail)."""
    engine = sqlalchemy.create_engine(db_url)
    t0 = time.monotonic()
    detail = ""
    try:
        while time.monotonic() - t0 < timeout:
            try:
                with engine.connect() as c:
                    got = {r.run: (r.state, int(r.rows), int(r.rejected)) for r in c.execute(
                        sqlalchemy.select(runs_table.c.run, runs_table.c.state, runs_table.c.rows,
                                          runs_table.c.rejected).where(runs_table.c.project == project))}
            except sqlalchemy.exc.OperationalError:
                got = {}
            bad = {k: got.get(k) for k, v in expected.items() if got.get(k) != ("finished", v, 0)}
            if not bad:
                return True, time.monotonic() - t0, ""
            detail = f"{len(bad)} runs not (yet) exact, e.g. {next(iter(bad.items()))}"
            time.sleep(0.5)
        return False, time.monotonic() - t0, detail
    finally:
        engine.dispose()


def summary(st: Stats, elapsed: float) -> dict[str, Any]:
    lat = sorted(st.latencies)
    return {
        "rows_per_s": st.rows / elapsed, "requests_per_s": len(lat) / elapsed, "frames": st.frames,
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "status": {str(k): v for k, v in sorted(st.status.items())}, "errors": len(st.errors),
        "first_errors": st.errors[:3], "seconds": elapsed,
    }


def _cell(v: Any) -> str:
    return f"{v:>14,.1f}" if isinstance(v, float) else f"{v!s:>14}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rows", type=int, default=50, help="log calls per frame")
    ap.add_argument("--keys", type=int, default=10, help="float keys per log call")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--redis-url", default=os.environ.get("STEPLINE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()
    ns = "bench" + uuid.uuid4().hex[:8]
    names = Names(ns, 16)
    data = Path(tempfile.mkdtemp(prefix="stepline-gw-bench-"))
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = data / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        gw = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(port), "--redis-url",
                               args.redis_url, "--namespace", ns, "--data-dir", str(data), "--rate", "0"],
                              stdout=(logs / "gateway.log").open("wb"), stderr=subprocess.STDOUT, env=env)
        procs.append(gw)
        for w in range(args.workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "workers", "--redis-url", args.redis_url, "--namespace", ns, "--data-dir",
                 str(data), "--worker-id", f"w{w}"],
                stdout=(logs / f"w{w}.log").open("wb"), stderr=subprocess.STDOUT, env=env))
        wait_http(port, gw)
        url = f"http://127.0.0.1:{port}"
        out: dict[str, Any] = {"bench": "gateway", "runs": args.runs, "seconds": args.seconds,
                               "rows_per_frame": args.rows, "keys": args.keys, "workers": args.workers}
        db = f"sqlite:///{data / 'meta.sqlite'}"
        for kind in ("gateway", "direct"):
            st, elapsed = asyncio.run(phase(kind, args.runs, args.seconds, args.rows, args.keys, url, args.redis_url,
                                            names))
            res = summary(st, elapsed)
            res["points_per_s"] = res["rows_per_s"] * args.keys
            ok, waited, detail = check_history(db, f"bench-{kind}", st.accepted_rows, 600)
            res.update({"exactly_once": ok, "drain_s": waited, "detail": detail})
            out[kind] = res
        print(json.dumps(out))
        print(f"\n{'figure':<28} {'gateway':>14} {'direct XADD':>14}")
        for k in ("rows_per_s", "points_per_s", "requests_per_s", "p50_ms", "p99_ms", "frames", "errors",
                  "exactly_once", "drain_s"):
            g, d = out["gateway"][k], out["direct"][k]
            print(f"{k:<28} {_cell(g)} {_cell(d)}")
        print(f"{'status':<28} {json.dumps(out['gateway']['status']):>14}")
        return 0 if out["gateway"]["exactly_once"] and out["direct"]["exactly_once"] and not \
            out["gateway"]["errors"] else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
        with redis.Redis.from_url(args.redis_url) as r:
            for key in r.scan_iter(match=f"{ns}:*", count=1000):
                r.delete(key)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
