"""Benchmark of the client SDK against a real Redis.

Measures, in one process:

(a) the caller-side cost of ``run.log()`` with 20 scalar keys: ``time.perf_counter_ns`` around every call,
    median / p99 / max in µs (the sender thread runs meanwhile, as in training);
(b) how fast log calls get into Redis: end to end, wall time from the first ``log()`` to ``finish()`` returning
    (everything acknowledged; one thread logging while the sender runs, so both share the GIL), and the sender
    alone (calls logged first, then timed from starting the sender to ``finish()``), as calls/s, frames/s, MB/s;
(c) for comparison, raw pipelined ``XADD`` of the very same frame bytes (read back from the stream of (b)), in
    batches of the sender's size: the ceiling the sender is working against.

Everything lives under a namespace ``bench-<random>`` that is deleted afterwards. Prints ONE JSON line, then a
human-readable table::

    python bench/client.py [--redis-url redis://127.0.0.1:6379/0] [--calls 200000] [--keys 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from typing import Any

import redis

import ingest
from ingest.run import Run
from schemas import FRAME_FIELD, LogBlock, Names, decode_frame


def _keys(n: int) -> list[str]:
    return [f"train/metric_{j:02d}" for j in range(n)]


def caller_cost(url: str, ns: str, data_dir: str, calls: int, nkeys: int) -> dict[str, float]:
    keys = _keys(nkeys)
    run = ingest.init(project="bench", id="caller", redis_url=url, namespace=ns, data_dir=data_dir)
    lg = run.log
    pc = time.perf_counter_ns
    samples = [0] * calls
    base = [0.001 * j for j in range(nkeys)]
    for i in range(calls):
        d = dict(zip(keys, [b + i for b in base], strict=True))  # fresh floats, as a training loop makes
        t0 = pc()
        lg(d)
        samples[i] = pc() - t0
    res = run.finish(timeout=120)
    assert res.ok, res
    samples.sort()
    return {
        "median_us": samples[calls // 2] / 1e3,
        "p99_us": samples[int(calls * 0.99)] / 1e3,
        "max_us": samples[-1] / 1e3,
        "mean_us": statistics.fmean(samples) / 1e3,
    }


def sender_throughput(url: str, ns: str, data_dir: str, calls: int, nkeys: int) -> dict[str, Any]:
    keys = _keys(nkeys)
    rows = [dict(zip(keys, [0.001 * j + i for j in range(nkeys)], strict=True)) for i in range(calls)]
    run = ingest.init(project="bench", id="sender", redis_url=url, namespace=ns, data_dir=data_dir)
    t0 = time.perf_counter()
    for d in rows:
        run.log(d)
    t_logged = time.perf_counter()
    res = run.finish(timeout=300)
    t1 = time.perf_counter()
    assert res.ok, res
    names = Names(ns, 16)
    return {
        "seconds": t1 - t0,
        "log_seconds": t_logged - t0,
        "calls_per_s": calls / (t1 - t0),
        "frames": res.sent_frames,
        "frames_per_s": res.sent_frames / (t1 - t0),
        "mb_per_s": run.sent_bytes / (t1 - t0) / 1e6,
        "stream": names.stream(names.partition("bench", "sender")),
    }


def sender_alone(url: str, ns: str, data_dir: str, calls: int, nkeys: int) -> dict[str, float]:
    """Pack + encode + XADD only: the calls are logged before the sender starts, then timed to ``finish()``."""
    keys = _keys(nkeys)
    settings = ingest.ClientSettings.from_env(redis_url=url, namespace=ns, data_dir=data_dir,
                                              max_pending_rows=calls + 1)
    run = Run(settings=settings, project="bench", run_id="alone")  # no sender yet
    for i in range(calls):
        run.log(dict(zip(keys, [0.001 * j + i for j in range(nkeys)], strict=True)))
    t0 = time.perf_counter()
    run._start_thread_sender()
    res = run.finish(timeout=300)
    dt = time.perf_counter() - t0
    assert res.ok, res
    return {"seconds": dt, "calls_per_s": calls / dt, "frames_per_s": res.sent_frames / dt,
            "mb_per_s": run.sent_bytes / dt / 1e6}


def raw_xadd(client: Any, stream: str, ns: str, batch_bytes: int) -> dict[str, float]:
    entries = client.xrange(stream)
    frames = [fields[FRAME_FIELD] for _id, fields in entries]
    calls = 0
    for f in frames:
        for e in decode_frame(f).events:
            calls += len(e) if isinstance(e, LogBlock) else 1
    target = f"{ns}:{{p00}}:raw"
    total = sum(len(f) for f in frames)
    t0 = time.perf_counter()
    i = 0
    while i < len(frames):
        pipe = client.pipeline(transaction=True)  # as the sender does: MULTI/EXEC per batch
        size = 0
        while i < len(frames) and (size == 0 or size + len(frames[i]) <= batch_bytes):
            pipe.xadd(target, {FRAME_FIELD: frames[i]})
            size += len(frames[i])
            i += 1
        pipe.execute()
    dt = time.perf_counter() - t0
    return {
        "seconds": dt,
        "frames_per_s": len(frames) / dt,
        "calls_per_s": calls / dt,
        "mb_per_s": total / dt / 1e6,
        "mean_frame_kib": total / max(len(frames), 1) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=20)
    args = ap.parse_args(argv)
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url)
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            a = caller_cost(args.redis_url, ns, data_dir, args.calls, args.keys)
            b = sender_throughput(args.redis_url, ns, data_dir, args.calls, args.keys)
            b2 = sender_alone(args.redis_url, ns, data_dir, args.calls, args.keys)
            c = raw_xadd(client, b.pop("stream"), ns, ingest.ClientSettings().batch_max_bytes)
    finally:
        for key in client.scan_iter(match=f"{ns}:*", count=1000):
            client.delete(key)
        client.close()
    out = {"bench": "client", "calls": args.calls, "keys": args.keys, "log": a, "sender": b, "sender_alone": b2,
           "raw_xadd": c}
    print(json.dumps(out, sort_keys=True))
    rows = [
        ("log() median", f"{a['median_us']:.2f} µs"),
        ("log() p99", f"{a['p99_us']:.2f} µs"),
        ("log() max", f"{a['max_us']:.0f} µs"),
        ("end to end (1 thread logging + sender): calls/s", f"{b['calls_per_s']:,.0f}"),
        ("end to end: frames/s, MB/s", f"{b['frames_per_s']:,.0f}, {b['mb_per_s']:.1f}"),
        ("sender alone (pack+encode+XADD): calls/s", f"{b2['calls_per_s']:,.0f}"),
        ("sender alone: frames/s, MB/s", f"{b2['frames_per_s']:,.0f}, {b2['mb_per_s']:.1f}"),
        ("raw XADD same frames: calls/s", f"{c['calls_per_s']:,.0f}"),
        ("raw XADD: frames/s, MB/s", f"{c['frames_per_s']:,.0f}, {c['mb_per_s']:.1f}"),
        ("mean frame size", f"{c['mean_frame_kib']:.0f} KiB"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, val in rows:
        print(f"{name:<{width}}  {val}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
