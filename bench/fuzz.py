"""Fuzz campaigns (issue 15, item 10): frames into the worker, requests into the gateway, values into ``log()``.

    python bench/fuzz.py --minutes 10                       # all three targets, the time split between them
    python bench/fuzz.py --target frames --count 1000000    # until that many inputs (or --minutes, if given)
    python bench/fuzz.py --target requests --minutes 5 --seed 7

Targets (generators and checks in ``tests/support/{frame,request,log}_fuzz.py``):

- ``frames``: stream entries through ``decode_frame`` → ``PartitionProcessor.process`` → a real commit (Parquet,
  SQLite) in process, every segment read back; chunks of 20,000 frames, each in a fresh data directory.
- ``requests``: HTTP requests into two in-process gateways (API keys; open mode) over the Redis at ``--redis-url``,
  an in-process worker committing what they accept; chunks of 5,000 requests, each in a fresh namespace.
- ``log``: ``log()`` calls through real Redis and a ``python -m workers`` process, every run read back with
  ``history.Api``; chunks of 5,000 calls, each in a fresh namespace.

Chunk ``k`` uses seed ``--seed + k`` (printed), so any failure reproduces with ``--seed`` and ``--count`` of that
chunk. Prints a human table and then ONE JSON line (the last line of stdout): per target the inputs, how many
were accepted, how many were refused and why, the checks done, and the failures by signature, each marked known
(a product bug already pinned by ``tests/unit/test_fuzz_found.py``) or new. Exit status 1 when a new failure was
found (``--strict``: any failure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.frame_fuzz import FuzzResult, drive, scratch_dir
from support.fuzz_report import Findings

TARGETS = ("frames", "requests", "log")
CHUNK = {"frames": 20_000, "requests": 5_000, "log": 5_000}
REDIS_URL = os.environ.get("STEPLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _findings(*fs: Findings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fs:
        for sig, d in f.as_json().items():
            if sig in out:
                out[sig]["count"] += d["count"]
            else:
                out[sig] = dict(d)
    return out


def _print_new(target: str, *fs: Findings) -> None:
    """The first example of every failure not known yet (the table and the JSON line only count them)."""
    for f in fs:
        for sig in f.unknown():
            print(f"--- {target}: NEW failure {sig}, first example:\n{f.examples[sig][0]}", flush=True)


def _cleanup(namespace: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    try:
        for key in r.scan_iter(match=f"{namespace}*", count=1000):
            r.delete(key)
    finally:
        r.close()


def run_frames(seed: int, count: int | None, deadline: float, pg: bool = False) -> dict[str, Any]:
    total = FuzzResult(seed=seed)
    k = 0
    while (count is None or total.frames < count) and time.monotonic() < deadline:
        n = CHUNK["frames"] if count is None else min(CHUNK["frames"], count - total.frames)
        with scratch_dir() as tmp, (_pg_database() if pg else contextlib.nullcontext()) as db_url:
            res = drive(seed + k, n, tmp, db_url=db_url)
        print(f"  frames chunk seed={seed + k}: {res.line()} ({res.wall_s:.0f} s)", flush=True)
        total.merge(res)
        k += 1
    _print_new("frames", total.crashes, total.poisoned)
    failures = _findings(total.crashes, total.poisoned)
    return {
        "inputs": total.frames, "chunks": k, "seeds": [seed, seed + k - 1],
        "by_source": dict(total.by_source),
        # Frames applied (events in them may still be rejected, below) and frames dead-lettered whole.
        "accepted": total.decoded - total.entry_reasons.get("wrong_partition", 0),
        "refused": total.dead_lettered,
        "dead_lettered_entries": dict(total.entry_reasons.most_common()),
        "rejected_events_and_calls": dict(total.rejections.most_common()),
        "dead_letters": total.dead_letters, "commits": total.commits, "segments_checked": total.segments_checked,
        "values_checked": total.values_checked, "clean_runs_checked": total.clean_runs_checked,
        "clean_rows_checked": total.clean_rows_checked,
        "commit_failures": _findings(total.commit_failures), "failures": failures,
        "crashes": sum(d["count"] for d in failures.values()),
        "new_failures": sum(d["count"] for d in failures.values() if not d["known"]),
        "wall_s": round(total.wall_s, 1),
    }


def _pg_database() -> Any:
    """A fresh PostgreSQL database (``STEPLINE_TEST_PG_URL``), dropped afterwards."""
    from support.pg import fresh_database

    return fresh_database()


def run_requests(seed: int, count: int | None, deadline: float, pg: bool = False) -> dict[str, Any]:
    from support.request_fuzz import RequestResult, drive_requests

    total = RequestResult(seed=seed)
    k = 0
    while (count is None or total.requests < count) and time.monotonic() < deadline:
        n = CHUNK["requests"] if count is None else min(CHUNK["requests"], count - total.requests)
        namespace = f"fzr{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="stepline-fuzz-") as tmp:
            try:
                res = drive_requests(seed + k, n, Path(tmp), REDIS_URL, namespace)
            finally:
                _cleanup(namespace)
        print(f"  requests chunk seed={seed + k}: {res.line()} ({res.wall_s:.0f} s)", flush=True)
        total.merge(res)
        k += 1
    _print_new("requests", total.crashes)
    failures = _findings(total.crashes)
    ok = sum(n for s, n in total.by_status.items() if 200 <= s < 300)
    return {
        "inputs": total.requests, "chunks": k, "seeds": [seed, seed + k - 1],
        "by_route": dict(total.by_route.most_common()),
        "by_status": {str(s): n for s, n in sorted(total.by_status.items())},
        "accepted": ok, "refused": sum(n for s, n in total.by_status.items() if 400 <= s < 500),
        "refused_by_reason": dict(total.refusals.most_common()),
        "frames_accepted": total.frames_accepted, "blobs_stored": total.blobs_stored,
        "seeded_scans_checked": total.seeded_scans_checked, "worker_commits": total.worker_commits,
        "worker_entries": total.worker_entries, "worker_rejections": dict(total.worker_rejections),
        "failures": failures, "crashes": sum(d["count"] for d in failures.values()),
        "new_failures": sum(d["count"] for d in failures.values() if not d["known"]),
        "wall_s": round(total.wall_s, 1),
    }


def run_log(seed: int, count: int | None, deadline: float, pg: bool = False) -> dict[str, Any]:
    from support.log_fuzz import LogResult, drive_log

    total = LogResult(seed=seed)
    k = 0
    while (count is None or total.calls < count) and time.monotonic() < deadline:
        n = CHUNK["log"] if count is None else min(CHUNK["log"], count - total.calls)
        namespace = f"fzl{uuid.uuid4().hex[:8]}"
        with scratch_dir() as tmp:
            try:
                res = drive_log(seed + k, n, tmp, REDIS_URL, namespace)
            finally:
                _cleanup(namespace)
        print(f"  log chunk seed={seed + k}: {res.line()} ({res.wall_s:.0f} s)", flush=True)
        total.merge(res)
        k += 1
    _print_new("log", total.crashes)
    failures = _findings(total.crashes)
    return {
        "inputs": total.calls, "chunks": k, "seeds": [seed, seed + k - 1], "accepted": total.accepted,
        "refused": sum(total.refused.values()), "refused_by_reason": dict(total.refused.most_common()),
        "refused_by_code": dict(total.refused_codes.most_common()), "runs": total.runs,
        "runs_checked": total.runs_checked, "runs_checked_in_segments": total.runs_checked_in_segments,
        "rows_checked": total.rows_checked, "values_checked": total.values_checked,
        "worker_rejections": dict(total.rejections), "failures": failures,
        "crashes": sum(d["count"] for d in failures.values()),
        "new_failures": sum(d["count"] for d in failures.values() if not d["known"]),
        "wall_s": round(total.wall_s, 1),
    }


RUNNERS = {"frames": run_frames, "requests": run_requests, "log": run_log}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'target':<10}{'inputs':>11}{'accepted':>11}{'refused':>11}{'failures':>10}{'new':>6}{'wall s':>9}"
             f"{'per s':>9}"]
    for t, r in results.items():
        rate = r["inputs"] / r["wall_s"] if r["wall_s"] else 0.0
        lines.append(f"{t:<10}{r['inputs']:>11,}{r['accepted']:>11,}{r['refused']:>11,}{r['crashes']:>10,}"
                     f"{r['new_failures']:>6,}{r['wall_s']:>9.0f}{rate:>9.0f}")
    for t, r in results.items():
        for sig, d in sorted(r["failures"].items(), key=lambda kv: -kv[1]["count"]):
            lines.append(f"  {t}: {d['count']:>7,}  {'known' if d['known'] else 'NEW  '}  {sig}")
            if d["known"]:
                lines.append(f"  {'':>{len(t) + 19}}{str(d['known'])[:150]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    ap.add_argument("--minutes", type=float, default=None,
                    help="time budget (with --target all, split evenly); default: no limit when --count is given, "
                         "else 1")
    ap.add_argument("--count", type=int, default=None, help="stop each target after this many inputs")
    ap.add_argument("--frames", type=int, default=None, help="(kept for old command lines) = --target frames --count")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strict", action="store_true", help="exit 1 on any failure, known or new")
    ap.add_argument("--pg", action="store_true", help="frames: commit to PostgreSQL (a fresh database per chunk, "
                    "STEPLINE_TEST_PG_URL) instead of SQLite")
    args = ap.parse_args(argv)
    if args.frames is not None:
        args.target, args.count = "frames", args.frames
    if args.count is not None and args.count <= 0:
        ap.error("--count must be positive")
    minutes = args.minutes if args.minutes is not None else (None if args.count is not None else 1.0)
    targets = TARGETS if args.target == "all" else (args.target,)
    results: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    print(f"fuzz: targets={','.join(targets)} seed={args.seed} minutes={minutes} count={args.count}", flush=True)
    for i, t in enumerate(targets):
        if minutes is None:
            deadline = float("inf")
        else:  # what is left, split between the targets still to run
            left = minutes * 60 - (time.monotonic() - t0)
            deadline = time.monotonic() + max(left / (len(targets) - i), 1.0)
        results[t] = RUNNERS[t](args.seed, args.count, deadline, args.pg)
    print(table(results))
    new = sum(r["new_failures"] for r in results.values())
    failures = sum(r["crashes"] for r in results.values())
    summary = {"targets": list(targets), "seed": args.seed, "pg": args.pg, "minutes": minutes, "count": args.count,
               "wall_s": round(time.monotonic() - t0, 1), "inputs": {t: r["inputs"] for t, r in results.items()},
               "failures": failures, "new_failures": new, **results}
    print(json.dumps(summary, default=str))
    return 1 if new or (args.strict and failures) else 0


if __name__ == "__main__":
    raise SystemExit(main())


