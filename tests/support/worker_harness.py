"""Real worker processes, workloads of frames with their oracle, and checks of what the workers committed.

Used by ``tests/integration`` and ``tests/faults``. Frames are built with :mod:`schemas` exactly as the SDK's sender
does (``encode_event`` + ``encode_frame_raw``) and XADDed into the partition streams; history is read back from the
metadata store and the Parquet segments it lists.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from schemas import FRAME_FIELD, Finish, Log, Names, Start, encode_event, encode_frame_raw
from schemas.store import rejections as rejections_table
from support.history_oracle import Oracle, OracleRow, read_history, rows_same
from workers.metastore import MetaStore, sqlite_url


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- worker processes ------------------------------------------------------------------------------------------


@dataclass
class WorkerProc:
    wid: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stacks(self) -> str:
        """Every thread's Python stack, for a worker that hangs: SIGUSR1 makes its main thread print them to its
        log; if the main thread does not answer within 5 s (stuck in C code), SIGUSR2 makes faulthandler do it."""
        before = self.log.stat().st_size

        def dumped() -> bytes:
            return self.log.read_bytes()[before:]

        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while b"--- end of stacks ---" not in dumped():
            if time.monotonic() >= deadline:
                self.proc.send_signal(signal.SIGUSR2)
                time.sleep(2)
                break
            time.sleep(0.1)
        return dumped().decode(errors="replace") or "(no stack dump: the process did not answer)"

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class WorkerFleet:
    """Start ``python -m workers`` processes for one test; :meth:`close` kills every one still running."""

    redis_url: str
    namespace: str
    data_dir: Path
    log_dir: Path
    partitions: int = 16
    lease_ttl_ms: int = 2000
    commit_interval_s: float = 0.3
    db_url: str | None = None
    extra_args: list[str] = field(default_factory=list)
    procs: list[WorkerProc] = field(default_factory=list)

    def start(self, wid: str | None = None, env: dict[str, str] | None = None) -> WorkerProc:
        wid = wid or f"w{len(self.procs)}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{wid}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers", "--redis-url", self.redis_url, "--namespace", self.namespace,
                 "--partitions", str(self.partitions), "--data-dir", str(self.data_dir), "--worker-id", wid,
                 "--lease-ttl-ms", str(self.lease_ttl_ms), "--commit-interval", str(self.commit_interval_s),
                 *(["--db-url", self.db_url] if self.db_url else []), *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        w = WorkerProc(wid, proc, log)
        self.procs.append(w)
        return w

    def live(self) -> list[WorkerProc]:
        return [w for w in self.procs if w.alive()]

    def kill9(self, w: WorkerProc) -> None:
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {w.wid} (rc={w.proc.poll()}) ---\n{w.tail()}" for w in self.procs)

    def close(self) -> None:
        for w in self.procs:
            if w.proc.poll() is None:
                w.proc.kill()  # SIGKILL also ends a SIGSTOPped process
        for w in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(10)


# --- workloads -------------------------------------------------------------------------------------------------


@dataclass
class RunScript:
    project: str
    run: str
    partition: int
    frames: list[bytes]
    oracle: Oracle


def make_run(rng: random.Random, names: Names, project: str, run: str, n_steps: int, n_float: int,
             frame_events: int = 50, t0: float = 1_700_000_000.0, reject_rate: float = 0.003) -> RunScript:
    """A run of ``n_steps`` log calls of ``n_float`` float keys, one int and one string key, with explicit steps,
    ``commit=False`` chains and a few deliberately non-monotonic calls; its oracle is built call by call."""
    keys = [f"train/m{j:02d}" for j in range(n_float)]
    o = Oracle()
    o.start(t0)
    events: list[Any] = [Start(ts=t0, name=run)]
    for i in range(n_steps):
        ts = t0 + (i + 1) * 0.001
        data: dict[str, Any] = {k: rng.random() for k in keys}
        data["count"] = i
        data["phase"] = rng.choice(("warmup", "train", "eval"))
        step: int | None = None
        commit: bool | None = None
        u = rng.random()
        if u < reject_rate and o.cursor > 0:
            step = max(0, o.cursor - rng.randint(1, 5))  # lower than the cursor: the whole call is rejected
        elif u < 0.08:
            commit = False
            data = {k: data[k] for k in rng.sample(sorted(data), 3)}
        elif u < 0.14:
            step, commit = o.cursor + rng.randint(0, 3), rng.choice((None, True, False))
        elif u < 0.16:
            step = o.cursor
        o.log(ts, data, step, commit)
        events.append(Log(ts=ts, data=data, step=step, commit=commit))
    t_end = t0 + (n_steps + 1) * 0.001
    events.append(Finish(ts=t_end))
    o.finish(t_end)
    producer = f"prod-{run}"
    raws = [encode_event(e) for e in events]
    frames = [encode_frame_raw(project, run, producer, s, raws[s:s + frame_events])
              for s in range(0, len(raws), frame_events)]
    return RunScript(project, run, names.partition(project, run), frames, o)


def interleave(scripts: list[RunScript], rng: random.Random) -> list[tuple[int, bytes]]:
    """All frames in one random order that keeps each run's frames in order."""
    cursors = [0] * len(scripts)
    todo = [i for i, s in enumerate(scripts) if s.frames]
    out: list[tuple[int, bytes]] = []
    while todo:
        j = rng.randrange(len(todo))
        i = todo[j]
        s = scripts[i]
        out.append((s.partition, s.frames[cursors[i]]))
        cursors[i] += 1
        if cursors[i] == len(s.frames):
            todo.pop(j)
    return out


def xadd_frames(r: redis.Redis, names: Names, items: list[tuple[int, bytes]], batch: int = 100) -> None:
    for i in range(0, len(items), batch):
        pipe = r.pipeline(transaction=False)
        for p, raw in items[i:i + batch]:
            pipe.xadd(names.stream(p), {FRAME_FIELD: raw})
        pipe.execute()


class Feeder(threading.Thread):
    """XADD frames in the background at a steady pace, so data keeps flowing while the test injects faults."""

    def __init__(self, redis_url: str, names: Names, items: list[tuple[int, bytes]], seconds: float) -> None:
        super().__init__(daemon=True)
        self.redis_url, self.names, self.items, self.seconds = redis_url, names, items, seconds
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with redis.Redis.from_url(self.redis_url) as r:
                chunks = max(1, int(self.seconds / 0.05))
                size = max(1, -(-len(self.items) // chunks))
                t = time.monotonic()
                for i in range(0, len(self.items), size):
                    xadd_frames(r, self.names, self.items[i:i + size])
                    t += 0.05
                    time.sleep(max(0.0, t - time.monotonic()))
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.done.set()


# --- checks ----------------------------------------------------------------------------------------------------


def open_store(data_dir: Path) -> MetaStore:
    return MetaStore(sqlite_url(data_dir))


def stream_ends(r: redis.Redis, names: Names) -> dict[int, str]:
    out: dict[int, str] = {}
    for p in range(names.partitions):
        last = r.xrevrange(names.stream(p), count=1)
        if last:
            out[p] = last[0][0].decode()
    return out


def caught_up(r: redis.Redis, names: Names, store: MetaStore) -> bool:
    """Every partition's committed offset has reached the last entry of its stream."""
    ends = stream_ends(r, names)
    offsets = {int(row["p"]): row["offset"] for row in store.partitions()}
    return all(offsets.get(p) == end for p, end in ends.items())


def wait_caught_up(r: redis.Redis, names: Names, store: MetaStore, fleet: WorkerFleet, timeout: float) -> None:
    try:
        wait_until(lambda: caught_up(r, names, store), timeout, "committed offsets to reach the stream ends", 0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{fleet.logs()}") from None


def rejections_of(store: MetaStore, project: str, run: str) -> list[tuple[str, int | None, int | None]]:
    t = rejections_table
    with store.engine.connect() as conn:
        q = select(t.c.reason, t.c.step, t.c.cursor).where(t.c.project == project, t.c.run == run).order_by(t.c.id)
        return [(x.reason, x.step, x.cursor) for x in conn.execute(q)]


def check_history(data_dir: Path, store: MetaStore, scripts: list[RunScript]) -> None:
    """Each run's committed rows and rejections equal its oracle's exactly (no loss, no duplicate, in order)."""
    for s in scripts:
        segs = store.segments_of(s.project, s.run)
        ranges = sorted((int(g["min_step"]), int(g["max_step"])) for g in segs)
        for (_, hi), (lo, _) in itertools.pairwise(ranges):
            assert hi < lo, f"{s.run}: segments overlap: {ranges}"
        got: list[OracleRow] = read_history(data_dir, store, s.project, s.run)
        steps = [row[0] for row in got]
        assert len(steps) == len(set(steps)), f"{s.run}: duplicate steps"
        if not rows_same(got, s.oracle.rows):
            first = next((i for i, (a, b) in enumerate(zip(got, s.oracle.rows, strict=False)) if not
                          rows_same([a], [b])), min(len(got), len(s.oracle.rows)))
            raise AssertionError(
                f"{s.run}: history differs from the oracle: {len(got)} rows vs {len(s.oracle.rows)}; first difference"
                f" at row {first}: got {got[first] if first < len(got) else None!r:.300},"
                f" want {s.oracle.rows[first] if first < len(s.oracle.rows) else None!r:.300}"
            )
        assert rejections_of(store, s.project, s.run) == s.oracle.rejections, f"{s.run}: rejections differ"
