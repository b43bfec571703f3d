"""Guarantees that had no test (issue 21, item 6): each test injects the fault and observes the promised outcome.

- Stream gaps (docs/DESIGN.md §6 "Stream gaps", README Guarantees "Redis crash ... detected when the run logs
  again"): a Redis that comes back with fewer entries than a worker read (restarted from an older snapshot, or
  empty) → ERROR log ``DATA LOSS``, a ``stream_gap`` dead letter, and the run's warning "events … are missing".
- A decoder or aligner crash (not a ``SchemaError``) becomes a ``decode_error`` / ``internal_error`` dead letter and
  the entries after it are applied (§6 dead letters; §9 "decoder/aligner crashes dead-lettered too").
- Retention other than 0 (§6 "Trimming"): ``XTRIM MINID min(committed offset, now - retention)``.
- The worker's probes: ``/healthz`` on the metrics port and ``python -m workers.health live|ready``.
- SIGINT drains like SIGTERM (§6 "SIGTERM / SIGINT").
- A cursor past int64 (§6 "Processing"): a call without a step once the cursor is 2**63 is rejected ``bad_step``.

Nothing here asserts a duration: every wait is on a condition, with a deadline that only catches a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from support.history_oracle import read_history
from support.netproxy import Proxy
from support.servers import RedisServer, free_port
from support.worker_harness import (
    WorkerFleet,
    WorkerProc,
    rejections_of,
    stream_ends,
    wait_until,
    xadd_frames,
)

import ingest
from ingest.settings import ClientSettings
from schemas import (
    DEFAULT_LIMITS,
    FRAME_FIELD,
    Finish,
    Log,
    LogBlock,
    Names,
    Start,
    decode_frame,
    encode_event,
    encode_frame_raw,
    unpackb,
)
from schemas.frame import MAX_STEP
from schemas.store import runs as runs_table
from workers import partition as partition_module
from workers.align import RunAligner
from workers.metastore import MetaStore, sqlite_url
from workers.partition import PartitionProcessor
from workers.settings import WorkerSettings
from workers.worker import Worker

pytestmark = pytest.mark.faults

T0 = 1_700_000_000.0


# --- helpers -----------------------------------------------------------------------------------------------------


def run_info(store: MetaStore, project: str, run: str) -> dict[str, Any] | None:
    with store.engine.connect() as conn:
        row = conn.execute(runs_table.select().where(runs_table.c.project == project, runs_table.c.run == run)).first()
    if row is None:
        return None
    info: dict[str, Any] = unpackb(bytes(row.info))
    return {**info, "state": row.state}


def committed_offset(store: MetaStore, p: int = 0) -> str | None:
    return next((str(x["offset"]) for x in store.partitions() if int(x["p"]) == p), None)


def epoch_of(store: MetaStore, p: int = 0) -> int:
    return next((int(x["epoch"]) for x in store.partitions() if int(x["p"]) == p), 0)


def dead_letters(r: redis.Redis, names: Names, p: int = 0) -> list[dict[bytes, bytes]]:
    return [f for _, f in cast("list[tuple[bytes, dict[bytes, bytes]]]", r.xrange(names.dlq(p)))]


def stream_ids(r: redis.Redis, names: Names, p: int = 0) -> list[str]:
    return [i.decode() for i, _ in cast("list[tuple[bytes, Any]]", r.xrange(names.stream(p)))]


def flushed(run: ingest.Run) -> bool:
    """Every call logged so far is packed into frames and acknowledged by Redis."""
    b = run._b
    return run.pending_frames == 0 and not b.items and not b.rows


def log_values(run: ingest.Run, values: range) -> None:
    for v in values:
        run.log({"v": float(v)})
    wait_until(lambda: flushed(run), 60, f"calls {values.start}..{values.stop - 1} acknowledged by Redis")


def frame_seqs(r: redis.Redis, stream: str, after: str) -> list[tuple[int, int]]:
    """(first seq, event count) of every frame in ``stream`` after entry ``after``."""
    out = []
    for _, f in cast("list[tuple[bytes, dict[bytes, bytes]]]", r.xrange(stream, min=f"({after}", max="+")):
        frame = decode_frame(f[FRAME_FIELD], DEFAULT_LIMITS)
        out.append((frame.seq, len(frame.events)))
    return out


def missing_ranges(warnings: list[str]) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for w in warnings for a, b in re.findall(r"events (\d+)\.\.(\d+) are missing", w)]


def read_log(w: WorkerProc) -> str:
    return w.log.read_text(errors="replace")


# --- 1. a Redis that comes back with less than the worker read: DATA LOSS ---------------------------------------

#: (how Redis comes back, when the producer logs again).
_GAP_CASES = [
    pytest.param("older_snapshot", "after_retake", id="older-snapshot-then-log"),
    pytest.param("empty", "before_retake", id="empty-log-first"),
    # Found by this test: a producer's new entry landing first pushed the last id past the read position, and a
    # stream that no longer existed read as "nothing written yet"; check_stream now looks for the entry itself.
    pytest.param("older_snapshot", "before_retake", id="older-snapshot-log-first"),
    pytest.param("empty", "after_retake", id="empty-then-log"),
]


@pytest.mark.parametrize(("restart", "when"), _GAP_CASES)
def test_redis_losing_what_a_worker_read_is_reported_as_data_loss(
        redis_server_factory: Callable[..., RedisServer], namespace: str, data_dir: Path, tmp_path: Path,
        restart: str, when: str) -> None:
    """A private redis-server without persistence under a live worker (through a proxy the test can drop). The
    producer's calls A are committed, then (``older_snapshot``) Redis SAVEs, calls B are committed, the worker is cut
    off, calls C are acknowledged by Redis and never read, and Redis is killed and restarted: from the snapshot
    (its stream ends at A, before the worker's position after B) or empty. The producer logs D, before or after the
    worker took the partition again. Promised: ERROR ``DATA LOSS``, one ``stream_gap`` dead letter naming the
    position read, and the run's warning that C's events are missing; history holds A, B and D, never C."""
    srv = redis_server_factory()
    names = Names(namespace, 1)
    proxy = Proxy(srv.port)
    fleet = WorkerFleet(redis_url=proxy.url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "logs",
                        partitions=1, lease_ttl_ms=1000, commit_interval_s=0.1)
    store = MetaStore(sqlite_url(data_dir))
    r = redis.Redis(port=srv.port)
    settings = ClientSettings(redis_url=srv.url, namespace=namespace, partitions=1, data_dir=tmp_path / "client",
                              backoff_max_s=0.2)
    run = ingest.init(project="loss", id="run", settings=settings)
    try:
        w = fleet.start(env={"STEPLINE_TRIM_INTERVAL_S": "0.5", "STEPLINE_COMPACTION_INTERVAL_S": "0.2"})

        def committed_to_end() -> bool:
            ends = stream_ends(r, names)
            return 0 in ends and committed_offset(store) == ends[0]

        log_values(run, range(0, 10))  # A
        wait_until(committed_to_end, 60, f"calls A committed\n{fleet.logs()}")
        if restart == "older_snapshot":
            r.save()  # dump.rdb in the server's dir: loaded when it starts again
        log_values(run, range(10, 20))  # B
        wait_until(committed_to_end, 60, f"calls B committed\n{fleet.logs()}")
        read_pos = stream_ends(r, names)[0]
        proxy.drop()  # the worker can no longer read anything
        log_values(run, range(20, 30))  # C: acknowledged by Redis, never read by a worker
        lost = frame_seqs(r, names.stream(0), read_pos)
        assert lost, "C's frames are not in the stream"
        lost_range = (lost[0][0], lost[-1][0] + lost[-1][1] - 1)
        epoch = epoch_of(store)
        print(f"restart={restart} when={when}: read position {read_pos}, C's events {lost_range}")

        srv.stop(kill=True)
        r.close()
        srv.start()
        r = redis.Redis(port=srv.port)
        ends = stream_ends(r, names)
        if restart == "older_snapshot":
            assert ends.get(0) is not None and ends[0] < read_pos, (ends, read_pos)
        else:
            assert ends == {}, ends
        if when == "before_retake":
            log_values(run, range(30, 40))  # D, while the worker is still cut off
            proxy.heal()
        else:
            proxy.heal()
            wait_until(lambda: epoch_of(store) > epoch, 60, f"the worker to take the partition again\n{fleet.logs()}")
            log_values(run, range(30, 40))
        assert run.finish(timeout=60).ok

        def finished() -> bool:
            info = run_info(store, "loss", "run")
            return info is not None and info["state"] == "finished"

        wait_until(finished, 60, f"the run's finish committed\n{fleet.logs()}")
        info = run_info(store, "loss", "run")
        assert info is not None
        assert lost_range in missing_ranges(info["warnings"]), info["warnings"]
        got = [row[3]["v"] for row in read_history(data_dir, store, "loss", "run")]
        assert got == [float(v) for v in [*range(20), *range(30, 40)]], got
        # The worker's own report of the loss: an ERROR log and a dead letter naming the position it had read.
        wait_until(lambda: "DATA LOSS" in read_log(w), 15, f"a DATA LOSS log\n{fleet.logs()}")
        assert re.search(r" ERROR .*DATA LOSS", read_log(w)), w.tail()
        gaps = [f for f in dead_letters(r, names) if f[b"reason"] == b"stream_gap"]
        assert len(gaps) == 1, gaps
        assert gaps[0][b"id"].decode() == read_pos and gaps[0][b"offset"].decode() == read_pos, gaps
    finally:
        with contextlib.suppress(Exception):
            run.finish(timeout=0)
        fleet.close()
        proxy.close()
        store.close()
        r.close()


# --- 2. a decoder or aligner crash is a dead letter, and the partition goes on ----------------------------------


async def test_decoder_and_aligner_crashes_are_dead_lettered_and_later_entries_applied(
        redis_url: str, namespace: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder raising something other than ``SchemaError`` on one entry → ``decode_error`` (raw bytes kept);
    the aligner raising on one call, and on one block → ``internal_error`` rejections of those calls only. Every
    other event, before and after them, in the same frames too, is applied and the offset moves past them all."""
    names = Names(namespace, 1)
    project, run = "crash", "r"
    crash_frame = encode_frame_raw(project, run, "other", 0, [encode_event(Log(ts=T0 + 1, data={"x": 100.0}))])
    ev = [encode_event(e) for e in (
        Start(ts=T0, name=run),
        Log(ts=T0 + 1, data={"x": 0.0}),
        Log(ts=T0 + 2, data={"boom": 1.0, "x": 1.0}),  # the aligner crashes on this call
        Log(ts=T0 + 3, data={"x": 2.0}),
        LogBlock(keys=["boom"], ts=np.array([T0 + 4] * 4), step=[None] * 4, commit=[None] * 4,
                 cols=[np.arange(4, dtype=np.float64)]),  # ... and on this block
        Log(ts=T0 + 5, data={"x": 3.0}),
        Finish(ts=T0 + 6),
    )]
    frames = [encode_frame_raw(project, run, "prod", 0, ev[:2]), crash_frame,
              encode_frame_raw(project, run, "prod", 2, ev[2:4]), encode_frame_raw(project, run, "prod", 4, ev[4:])]

    real_decode = partition_module.decode_frame
    real_apply = RunAligner.apply

    def decode(raw: bytes, *a: Any, **kw: Any) -> Any:
        if raw == crash_frame:
            raise RuntimeError("injected decoder bug")
        return real_decode(raw, *a, **kw)

    def apply(self: RunAligner, event: Any) -> None:
        if (isinstance(event, Log) and "boom" in event.data) or (isinstance(event, LogBlock) and "boom" in event.keys):
            raise KeyError("injected aligner bug")
        real_apply(self, event)

    monkeypatch.setattr(partition_module, "decode_frame", decode)
    monkeypatch.setattr(RunAligner, "apply", apply)
    r = aioredis.Redis.from_url(redis_url)
    store = MetaStore(sqlite_url(data_dir))
    try:
        ids = [cast("bytes", await r.xadd(names.stream(0), {FRAME_FIELD: f})).decode() for f in frames]
        epoch, offset = store.take_partition(0, "t")
        proc = PartitionProcessor(p=0, epoch=epoch, offset=offset, names=names, store=store, data_dir=data_dir,
                                  redis=r, limits=DEFAULT_LIMITS)
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await r.xrange(names.stream(0)))
        await proc.process(entries)
        assert await proc.commit()
        assert committed_offset(store) == ids[-1]
        letters = [f for _, f in cast("list[tuple[bytes, dict[bytes, bytes]]]", await r.xrange(names.dlq(0)))]
        by_reason = {f[b"reason"].decode(): f for f in letters}
        assert sorted(f[b"reason"].decode() for f in letters) == ["decode_error", "internal_error",
                                                                   "internal_error"], letters
        d = by_reason["decode_error"]
        assert d[b"id"].decode() == ids[1] and d[b"raw"] == crash_frame, d
        assert b"RuntimeError" in d[b"message"] and b"injected decoder bug" in d[b"message"], d
        internal = [f for f in letters if f[b"reason"] == b"internal_error"]
        assert [f[b"id"].decode() for f in internal] == [ids[2], ids[3]], internal
        assert all(f[b"project"] == b"crash" and f[b"run"] == b"r" and b"KeyError" in f[b"message"]
                   for f in internal), internal
        # Rows: x=0 at 0; the crashed call and block change nothing (cursor stays 1); x=2 at 1, x=3 at 2.
        got = [(row[0], row[3]) for row in read_history(data_dir, store, project, run)]
        assert got == [(0, {"x": 0.0}), (1, {"x": 2.0}), (2, {"x": 3.0})], got
        assert rejections_of(store, project, run) == [("internal_error", None, 1), ("internal_error", None, 2)]
        info = run_info(store, project, run)
        assert info is not None and info["state"] == "finished", info
    finally:
        store.close()
        await r.aclose()


# --- 3. retention other than 0 ----------------------------------------------------------------------------------


async def test_retention_keeps_recent_entries_and_never_trims_past_the_committed_offset(
        redis_url: str, namespace: str, data_dir: Path) -> None:
    """Retention 600 s, a trim every 50 ms, one in-process worker whose commits the test can hold back.

    Entries are added with explicit ids: ``old`` ones an hour ago (past the retention), ``new`` ones now. Promised
    (§6 Trimming): an entry goes only when it is older than the retention *and* behind the committed offset (the
    entry at the offset itself stays); so old entries after the offset stay while commits are held back, and new
    entries stay after they are committed."""
    names = Names(namespace, 1)
    stream = names.stream(0)
    project, run = "ret", "r"
    settings = WorkerSettings(redis_url=redis_url, namespace=namespace, partitions=1, data_dir=data_dir,
                              worker_id="ret", lease_ttl_s=5.0, retention_s=600.0, trim_interval_s=0.05,
                              compaction_interval_s=0.05, commit_interval_s=0.05)
    store = MetaStore(settings.metadata_url)
    gate = threading.Event()
    gate.set()
    held = threading.Event()
    real_commit = store.commit

    def commit(c: Any) -> None:  # the database stalls while the gate is closed
        if not gate.is_set():
            held.set()
            assert gate.wait(120), "the test never reopened the gate"
        real_commit(c)

    store.commit = commit  # type: ignore[method-assign]
    worker = Worker(settings, store=store, handle_signals=False)
    trims: list[str] = []  # the committed offset at each trim pass that completed
    real_trim = worker._trim

    async def trim(proc: PartitionProcessor) -> None:
        await real_trim(proc)
        trims.append(proc.offset)

    worker._trim = trim  # type: ignore[method-assign]
    r = aioredis.Redis.from_url(redis_url)
    seq = 0

    async def add(ids: list[str | None]) -> list[str]:
        nonlocal seq
        out = []
        for i in ids:
            f = encode_frame_raw(project, run, "prod", seq, [encode_event(Log(ts=T0 + seq, data={"x": float(seq)}))])
            seq += 1
            got = await r.xadd(stream, {FRAME_FIELD: f}, id=i or "*")
            out.append(got.decode() if isinstance(got, bytes) else str(got))
        return out

    async def until(cond: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + 60
        while not cond():
            assert not task.done(), task
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def ids_now() -> list[str]:
        return [i.decode() for i, _ in cast("list[tuple[bytes, Any]]", await r.xrange(stream))]

    old_ms = int(time.time() * 1000) - 3_600_000
    task = asyncio.create_task(worker.async_run())
    try:
        old_a = await add([f"{old_ms}-{k}" for k in range(10)])
        await until(lambda: old_a[-1] in trims, "a trim after the old entries were committed")
        assert await ids_now() == old_a[-1:], "old entries behind the offset are trimmed; the offset's entry stays"

        gate.clear()
        old_b = await add([f"{old_ms + 1}-{k}" for k in range(10)])
        proc = worker.owned[0]
        await until(lambda: held.is_set() and proc.read_id == old_b[-1], "the old entries read, their commit held")
        n = len(trims)
        await until(lambda: len(trims) >= n + 3, "three trim passes while the commit is held")
        assert committed_offset(store) == old_a[-1]
        assert await ids_now() == [old_a[-1], *old_b], "an entry after the committed offset was trimmed"

        new = await add([None] * 10)
        gate.set()
        await until(lambda: new[-1] in trims, "a trim after the new entries were committed")
        assert committed_offset(store) == new[-1]
        assert await ids_now() == new, "entries within the retention window were trimmed (or old ones kept)"
        got = [row[3]["x"] for row in read_history(data_dir, store, project, run)]
        assert got == [float(k) for k in range(30)], got
    finally:
        gate.set()
        worker.stop()
        await asyncio.wait_for(task, 60)
        store.close()
        await r.aclose()


# --- 5. the worker's probes --------------------------------------------------------------------------------------


def probe(kind: str, env: dict[str, str]) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "workers.health", kind], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stderr.strip()


def healthz(port: int) -> dict[str, Any] | None:
    """``GET /healthz`` as an HTTP probe does it (2 s timeout): the JSON body on 200, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return cast("dict[str, Any]", json.loads(resp.read())) if resp.status == 200 else None
    except OSError:  # refused, reset, or timed out (a stopped process accepts in the kernel, never answers)
        return None


def test_worker_probes_are_healthy_while_it_runs_and_unhealthy_while_it_is_stopped(
        redis_url: str, namespace: str, fleet: WorkerFleet, tmp_path: Path) -> None:
    """``/healthz`` (metrics port), ``workers.health live`` (the heartbeat file) and ``workers.health ready`` (the
    heartbeat in Redis): 0 / 200 while the worker runs, with the heartbeat file refreshed; non-zero / no answer
    once it has been SIGSTOPped past each limit (live: lease TTL + 5 s of a stale file; ready: the lease TTL, 3 s);
    healthy again after SIGCONT."""
    health_file = tmp_path / "alive"
    port = free_port()
    fleet.lease_ttl_ms = 3000
    w = fleet.start("hw", env={"STEPLINE_HEALTH_FILE": str(health_file), "STEPLINE_WORKER_METRICS_PORT": str(port)})
    env = {"STEPLINE_HEALTH_FILE": str(health_file), "STEPLINE_REDIS_URL": redis_url,
           "STEPLINE_NAMESPACE": namespace, "STEPLINE_WORKER_ID": "hw", "STEPLINE_LEASE_TTL_MS": "3000"}
    wait_until(health_file.exists, 60, f"the heartbeat file\n{fleet.logs()}")
    first = health_file.stat().st_mtime_ns
    wait_until(lambda: health_file.stat().st_mtime_ns > first, 60, "the heartbeat file touched again")
    body = wait_until(lambda: healthz(port), 60, f"/healthz to answer\n{fleet.logs()}")
    assert body["ok"] is True and body["worker"] == "hw", body
    assert probe("live", env) == (0, "")
    assert probe("ready", env) == (0, "")
    # The probes fail for a worker that is not this one, or whose heartbeat file is missing.
    assert probe("ready", {**env, "STEPLINE_WORKER_ID": "nobody"})[0] == 1
    assert probe("live", {**env, "STEPLINE_HEALTH_FILE": str(tmp_path / "nothing")})[0] == 1

    w.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: healthz(port) is None, 60, "/healthz to stop answering")  # its event loop is stopped
        wait_until(lambda: probe("ready", env)[0] == 1, 60, "the ready probe to fail", interval=0.2)
        wait_until(lambda: probe("live", env)[0] == 1, 60, "the live probe to fail", interval=0.2)
        code, why = probe("live", env)
        assert code == 1 and "old" in why, (code, why)
    finally:
        w.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: probe("live", env)[0] == 0, 60, f"the live probe to pass again\n{fleet.logs()}", interval=0.2)
    wait_until(lambda: probe("ready", env)[0] == 0, 60, "the ready probe to pass again", interval=0.2)
    wait_until(lambda: healthz(port), 60, "/healthz to answer again")
    assert w.alive()


# --- 6. SIGINT drains like SIGTERM ------------------------------------------------------------------------------


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return cast("str", resp.read().decode())
    except OSError:
        return None


def metric(text: str | None, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text or "", re.M)
    return float(m.group(1)) if m else None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_drains_commits_what_was_read_and_releases_the_leases(
        redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet, sig: signal.Signals) -> None:
    """A worker that committed nothing of what it read (commit interval and idle time 60 s, no run finished) gets
    the signal: it exits 0 with every partition's offset at the end of its stream, every lease key and its
    membership entry gone, the owner column cleared, and history holding every call."""
    parts = 4
    names = Names(namespace, parts)
    fleet.partitions = parts
    fleet.commit_interval_s = 60.0
    fleet.lease_ttl_ms = 15_000  # no lease may lapse on a loaded machine: a lost partition is not drained
    port = free_port()
    w = fleet.start("drain", env={"STEPLINE_COMMIT_IDLE_S": "60", "STEPLINE_WORKER_METRICS_PORT": str(port)})
    runs = [(f"d{i}", 30) for i in range(8)]
    items: list[tuple[int, bytes]] = []
    for run, n in runs:
        p = names.partition("drain", run)
        events = [encode_event(Start(ts=T0, name=run))]
        events += [encode_event(Log(ts=T0 + k, data={"x": float(k)})) for k in range(n)]
        items += [(p, encode_frame_raw("drain", run, "prod", s, events[s:s + 5])) for s in range(0, len(events), 5)]
    with redis.Redis.from_url(redis_url) as r:
        wait_until(lambda: metric(scrape(port), "stepline_worker_owned_partitions") == parts, 60,
                   f"the worker to own every partition\n{fleet.logs()}")
        xadd_frames(r, names, items)
        wait_until(lambda: metric(scrape(port), "stepline_worker_entries_total") == len(items), 60,
                   f"the worker to read every entry\n{fleet.logs()}")
        store = MetaStore(sqlite_url(data_dir))
        try:
            ends = stream_ends(r, names)
            offsets = {int(x["p"]): str(x["offset"]) for x in store.partitions()}
            assert all(offsets.get(p) != end for p, end in ends.items()), "committed before the signal"
            w.proc.send_signal(sig)
            rc = w.proc.wait(60)
            assert rc == 0, w.tail()
            offsets = {int(x["p"]): str(x["offset"]) for x in store.partitions()}
            assert offsets == ends, (offsets, ends, fleet.logs())
            assert [p for p in range(parts) if r.exists(names.lease(p))] == [], "lease keys left behind"
            assert not r.hexists(names.workers, "drain")
            assert all(x["owner"] is None for x in store.partitions()), store.partitions()
            for run, n in runs:
                got = [row[3]["x"] for row in read_history(data_dir, store, "drain", run)]
                assert got == [float(k) for k in range(n)], (run, got)
        finally:
            store.close()


# --- 8. a cursor past int64 -------------------------------------------------------------------------------------


def _past_int64_calls() -> dict[str, tuple[list[Log], list[tuple[int, dict[str, float]]], int]]:
    """Per run: its calls, the rows they must give, and how many of them must be rejected ``bad_step``.

    ``committed``: ``log(d, step=2**63-1, commit=True)`` then plain calls: the cursor is 2**63, every plain call is
    rejected. ``pending``: ``log(d, step=2**63-1)`` then plain calls: the first merges into the row at 2**63-1 and
    writes it (cursor 2**63), the next ones are rejected, ``commit=False`` too (it would merge into a row at
    2**63)."""
    return {
        "committed": ([Log(ts=T0 + 1, data={"a": 1.0}, step=MAX_STEP, commit=True), Log(ts=T0 + 2, data={"a": 2.0}),
                       Log(ts=T0 + 3, data={"a": 3.0})], [(MAX_STEP, {"a": 1.0})], 2),
        "pending": ([Log(ts=T0 + 1, data={"a": 1.0}, step=MAX_STEP), Log(ts=T0 + 2, data={"a": 2.0}),
                     Log(ts=T0 + 3, data={"a": 3.0}), Log(ts=T0 + 4, data={"a": 4.0}, commit=False)],
                    [(MAX_STEP, {"a": 2.0})], 2),
    }


def _check_past_int64(r: redis.Redis, names: Names, data_dir: Path, store: MetaStore, fleet: WorkerFleet,
                      project: str, after: int) -> None:
    for run, (_, rows, n_bad) in _past_int64_calls().items():
        assert [(row[0], row[3]) for row in read_history(data_dir, store, project, run)] == rows, run
        assert rejections_of(store, project, run) == [("bad_step", None, MAX_STEP)] * n_bad, run
        info = run_info(store, project, run)
        assert info is not None and info["state"] == "finished", info
    got = [row[3]["x"] for row in read_history(data_dir, store, project, "after")]
    assert got == [float(k) for k in range(after)]
    letters = [f for f in dead_letters(r, names) if f[b"reason"] == b"bad_step"]
    assert len(letters) == 4 and {f[b"run"] for f in letters} == {b"committed", b"pending"}, letters
    assert not [f for f in dead_letters(r, names) if f[b"reason"] != b"bad_step"], dead_letters(r, names)
    logs = fleet.logs()
    assert "internal_error" not in logs and "partition 0 failed" not in logs, logs


def _wait_all_committed(r: redis.Redis, names: Names, store: MetaStore, fleet: WorkerFleet, project: str) -> None:
    def done() -> bool:
        info = run_info(store, project, "after")
        return (committed_offset(store) == stream_ends(r, names).get(0) and info is not None
                and info["state"] == "finished")

    wait_until(done, 60, f"everything committed\n{fleet.logs()}")


def test_calls_past_the_last_step_are_rejected_bad_step_and_the_partition_goes_on(
        redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet) -> None:
    """Each call its own ``log`` event (as the SDK sends a call whose keys differ from its neighbours'): the worker
    rejects exactly the calls past the last step with ``bad_step`` (the stored cursor clamped to 2**63-1), keeps
    the rows at 2**63-1, and the partition goes on committing: a normal run logged after them is committed whole."""
    fleet.partitions = 1
    names = Names(namespace, 1)
    items = []
    for run, (calls, _, _) in _past_int64_calls().items():
        events = [encode_event(Start(ts=T0, name=run)), *map(encode_event, calls), encode_event(Finish(ts=T0 + 9))]
        items += [(0, encode_frame_raw("big", run, "prod", s, events[s:s + 2])) for s in range(0, len(events), 2)]
    events = [encode_event(Start(ts=T0, name="after"))]
    events += [encode_event(Log(ts=T0 + k, data={"x": float(k)})) for k in range(200)] + [encode_event(Finish(ts=T0))]
    items += [(0, encode_frame_raw("big", "after", "prod", s, events[s:s + 20])) for s in range(0, len(events), 20)]
    fleet.start()
    store = MetaStore(sqlite_url(data_dir))
    with redis.Redis.from_url(redis_url) as r:
        try:
            xadd_frames(r, names, items)
            _wait_all_committed(r, names, store, fleet, "big")
            _check_past_int64(r, names, data_dir, store, fleet, "big", 200)
        finally:
            store.close()


async def test_a_block_that_passes_the_last_step_rejects_only_the_calls_past_it(redis_url: str, namespace: str,
                                                                                data_dir: Path) -> None:
    """The minimal reproducer: the calls of each run above as ONE ``logs`` block (what the SDK sends for calls with
    the same keys), applied and committed by an in-process partition."""
    names = Names(namespace, 1)
    r = aioredis.Redis.from_url(redis_url)
    store = MetaStore(sqlite_url(data_dir))
    try:
        for run, (calls, _, _) in _past_int64_calls().items():
            block = LogBlock(keys=["a"], ts=np.array([c.ts for c in calls]), step=[c.step for c in calls],
                             commit=[c.commit for c in calls], cols=[np.array([c.data["a"] for c in calls])])
            events = [encode_event(Start(ts=T0, name=run)), encode_event(block), encode_event(Finish(ts=T0 + 9))]
            await r.xadd(names.stream(0), {FRAME_FIELD: encode_frame_raw("big", run, "prod", 0, events)})
        events = [encode_event(Start(ts=T0, name="after")), encode_event(Log(ts=T0, data={"x": 0.0})),
                  encode_event(Finish(ts=T0))]
        await r.xadd(names.stream(0), {FRAME_FIELD: encode_frame_raw("big", "after", "prod", 0, events)})
        epoch, offset = store.take_partition(0, "t")
        proc = PartitionProcessor(p=0, epoch=epoch, offset=offset, names=names, store=store, data_dir=data_dir,
                                  redis=r, limits=DEFAULT_LIMITS)
        await proc.process(cast("list[tuple[bytes, dict[bytes, bytes]]]", await r.xrange(names.stream(0))))
        await proc.commit()  # raised OverflowError (the row at 2**63) before the fix
        for run, (_, rows, n_bad) in _past_int64_calls().items():
            assert [(row[0], row[3]) for row in read_history(data_dir, store, "big", run)] == rows, run
            assert rejections_of(store, "big", run) == [("bad_step", None, MAX_STEP)] * n_bad, run
    finally:
        store.close()
        await r.aclose()


def test_sdk_calls_past_the_last_step_are_rejected_bad_step_and_the_partition_goes_on(
        redis_url: str, namespace: str, data_dir: Path, fleet: WorkerFleet, tmp_path: Path) -> None:
    """The same calls through the SDK and a worker process: the SDK packs each run's calls (same keys) into one
    block, with the run's ``start`` in the same frame."""
    fleet.partitions = 1
    names = Names(namespace, 1)
    settings = ClientSettings(redis_url=redis_url, namespace=namespace, partitions=1, data_dir=tmp_path / "client")
    fleet.start()
    for run, (calls, _, _) in _past_int64_calls().items():
        sdk = ingest.init(project="big", id=run, settings=settings)
        for c in calls:
            sdk.log(c.data, step=c.step, commit=c.commit)
        assert sdk.finish(timeout=60).ok
    after = ingest.init(project="big", id="after", settings=settings)
    for k in range(200):
        after.log({"x": float(k)})
    assert after.finish(timeout=60).ok
    store = MetaStore(sqlite_url(data_dir))
    with redis.Redis.from_url(redis_url) as r:
        try:
            _wait_all_committed(r, names, store, fleet, "big")
            _check_past_int64(r, names, data_dir, store, fleet, "big", 200)
        finally:
            store.close()
