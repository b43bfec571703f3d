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
from schemas.objects import ObjectStore, local_store
from schemas.store import rejections as rejections_table
from support.blocks import block_of, must_go_fast
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
    #: Where the workers keep history (what :func:`check_history` reads); None: the data directory. The processes
    #: find a bucket through ``STEPLINE_STORAGE_URL`` in their environment (set by the ``storage`` fixture).
    objects: ObjectStore | None = None

    def __post_init__(self) -> None:
        if self.objects is None:
            self.objects = local_store(self.data_dir)

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

    def __enter__(self) -> WorkerFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
    #: Per frame: (seq of its first event, number of events); a ``logs`` block is one event of many calls.
    frame_seqs: list[tuple[int, int]] = field(default_factory=list)
    #: ``logs`` blocks sent, and how many of them the workers' column-wise fast path must take (tests/support/blocks).
    blocks: int = 0
    fast_blocks: int = 0

    def frame_of_seq(self, seq: int) -> int:
        """The index of the frame holding event ``seq``."""
        for k, (first, n) in enumerate(self.frame_seqs):
            if first <= seq < first + n:
                return k
        raise ValueError(f"{self.run}: no frame holds event {seq}")


#: How a stretch of calls uses step and commit: the old per-call mix, or one of the shapes a training loop has.
STYLES = ("mixed", "steps", "commits", "plain", "plain-commit")


def make_run(rng: random.Random, names: Names, project: str, run: str, n_steps: int, n_float: int,
             frame_events: int = 50, t0: float = 1_700_000_000.0, reject_rate: float = 0.003,
             blocks: float = 0.75) -> RunScript:
    """A run of ``n_steps`` log calls of ``n_float`` float keys, an int, a string and a bool key; its oracle is
    built call by call.

    The calls come in stretches (10..120 calls) of one style: ``mixed`` (explicit steps now and then,
    ``commit=False`` chains of other keys, a step repeated), ``steps`` (rising explicit steps, some repeated),
    ``commits`` (``step`` + ``commit=True``), ``plain`` (``log(d)``), ``plain-commit`` (``log(d, commit=True)``);
    about ``reject_rate`` of the calls go below the cursor (rejected whole).

    On the wire the calls are sent as the SDK sends them: stretches (4..60 calls) of consecutive calls with the same
    keys packed as ``logs`` blocks (a fraction ``blocks`` of the stretches; at most ``frame_events`` calls, at least
    4 when the frame allows), the other calls as single ``log`` events. ``blocks=0`` sends every call alone. So the
    workers apply the steady stretches through their column-wise fast path and the rest call by call. A frame holds
    at most ``frame_events`` log calls (a block counts as its calls)."""
    keys = [f"train/m{j:02d}" for j in range(n_float)]
    o = Oracle()
    o.start(t0)
    calls: list[Log] = []
    style, left = "mixed", 0
    for i in range(n_steps):
        if left == 0:
            style, left = rng.choice(STYLES), rng.randint(10, 120)
        left -= 1
        ts = t0 + (i + 1) * 0.001
        data: dict[str, Any] = {k: rng.random() for k in keys}
        data["count"] = i
        data["phase"] = rng.choice(("warmup", "train", "eval"))
        data["ok"] = i % 7 != 3
        step: int | None = None
        commit: bool | None = None
        u = rng.random()
        if u < reject_rate and o.cursor > 0:
            step = max(0, o.cursor - rng.randint(1, 5))  # lower than the cursor: the whole call is rejected
            commit = True if style == "commits" else None
        elif style == "steps":
            step = o.cursor + rng.choice((0, 1, 1, 1, 2))
        elif style == "commits":
            step, commit = o.cursor + rng.choice((0, 1, 1, 3)), True
        elif style == "plain-commit":
            commit = True
        elif style == "plain":
            pass
        elif u < 0.08:
            commit = False
            data = {k: data[k] for k in rng.sample(sorted(data), 3)}
        elif u < 0.14:
            step, commit = o.cursor + rng.randint(0, 3), rng.choice((None, True, False))
        elif u < 0.16:
            step = o.cursor
        o.log(ts, data, step, commit)
        calls.append(Log(ts=ts, data=data, step=step, commit=commit))
    t_end = t0 + (n_steps + 1) * 0.001
    o.finish(t_end)

    # The wire: (event bytes, log calls in it), blocks as the SDK packs them; each block's fast-path fate is
    # judged against the oracle of the calls before it.
    events: list[tuple[bytes, int]] = [(encode_event(Start(ts=t0, name=run)), 1)]
    before = Oracle()
    before.start(t0)
    n_blocks = n_fast = 0
    i = 0
    while i < len(calls):
        n = rng.randint(4, 60)
        if rng.random() >= blocks:
            for c in calls[i:i + n]:
                events.append((encode_event(c), 1))
                before.log(c.ts, c.data, c.step, c.commit)
            i += n
            continue
        end = min(len(calls), i + n)
        while i < end:
            cap = min(frame_events, rng.randint(4, max(4, frame_events)))
            j = i + 1
            while j < end and j - i < cap and list(calls[j].data) == list(calls[i].data):
                j += 1
            block = block_of(calls[i:j])
            n_blocks += 1
            n_fast += must_go_fast(block, before)
            events.append((encode_event(block), j - i))
            for c in calls[i:j]:
                before.log(c.ts, c.data, c.step, c.commit)
            i = j
    events.append((encode_event(Finish(ts=t_end)), 1))
    before.finish(t_end)
    assert before.rows == o.rows and before.rejections == o.rejections

    producer = f"prod-{run}"
    frames: list[bytes] = []
    frame_seqs: list[tuple[int, int]] = []
    seq = 0
    cur: list[bytes] = []
    cur_calls = 0
    for raw, n in [*events, (b"", frame_events + 1)]:  # the sentinel closes the last frame
        if cur and cur_calls + n > frame_events:
            frames.append(encode_frame_raw(project, run, producer, seq, cur))
            frame_seqs.append((seq, len(cur)))
            seq += len(cur)
            cur, cur_calls = [], 0
        cur.append(raw)
        cur_calls += n
    return RunScript(project, run, names.partition(project, run), frames, o, frame_seqs, n_blocks, n_fast)


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
    """XADD frames in the background, so data keeps flowing while the test injects faults.

    Without ``hold``: the items are paced over ``seconds``. With ``hold``: the first 80 % are paced over
    ``seconds``, the rest trickle in (one frame per 0.1 s) until :meth:`release` is called (the faults are done),
    then go at once, so frames arrive during every fault however long the faults take."""

    def __init__(self, redis_url: str, names: Names, items: list[tuple[int, bytes]], seconds: float,
                 hold: bool = False) -> None:
        super().__init__(daemon=True)
        self.redis_url, self.names, self.items, self.seconds = redis_url, names, items, seconds
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.held = 0  # frames sent while held back (a test can check that some arrived during its faults)

    def release(self) -> None:
        self.released.set()

    def run(self) -> None:
        try:
            with redis.Redis.from_url(self.redis_url) as r:
                paced = self.items if self.released.is_set() else self.items[: len(self.items) * 4 // 5]
                chunks = max(1, int(self.seconds / 0.05))
                size = max(1, -(-len(paced) // chunks))
                t = time.monotonic()
                for i in range(0, len(paced), size):
                    xadd_frames(r, self.names, paced[i:i + size])
                    t += 0.05
                    time.sleep(max(0.0, t - time.monotonic()))
                rest = self.items[len(paced):]
                while rest and not self.released.wait(0.1):
                    xadd_frames(r, self.names, rest[:1])
                    rest = rest[1:]
                    self.held += 1
                xadd_frames(r, self.names, rest)
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


def check_history(data_dir: Path | ObjectStore, store: MetaStore, scripts: list[RunScript]) -> None:
    """Each run's committed rows, in storage order, and its rejections equal its oracle's exactly (no loss, no
    duplicate, ascending steps)."""
    for s in scripts:
        segs = store.segments_of(s.project, s.run)
        ranges = sorted((int(g["min_step"]), int(g["max_step"])) for g in segs)
        for (_, hi), (lo, _) in itertools.pairwise(ranges):
            assert hi < lo, f"{s.run}: segments overlap: {ranges}"
        got: list[OracleRow] = read_history(data_dir, store, s.project, s.run)  # storage order, not re-sorted
        steps = [row[0] for row in got]
        assert len(steps) == len(set(steps)), f"{s.run}: duplicate steps"
        back = [i for i in range(1, len(steps)) if steps[i] < steps[i - 1]]
        assert not back, f"{s.run}: stored rows go back in step at positions {back[:10]}"
        if not rows_same(got, s.oracle.rows):
            first = next((i for i, (a, b) in enumerate(zip(got, s.oracle.rows, strict=False)) if not
                          rows_same([a], [b])), min(len(got), len(s.oracle.rows)))
            raise AssertionError(
                f"{s.run}: history differs from the oracle: {len(got)} rows vs {len(s.oracle.rows)}; first difference"
                f" at row {first}: got {got[first] if first < len(got) else None!r:.300},"
                f" want {s.oracle.rows[first] if first < len(s.oracle.rows) else None!r:.300}"
            )
        assert rejections_of(store, s.project, s.run) == s.oracle.rejections, f"{s.run}: rejections differ"
