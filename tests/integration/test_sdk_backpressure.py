"""The SDK's backpressure thresholds under a stalled sender (issue 21, item 6; ingest/settings.py, ingest/run.py):

- ``max_pending_rows``: past this many log calls not packed into frames, ``log()`` packs them itself;
- ``memory_cap_bytes``: past this many bytes of unacknowledged frames in memory, they spill to the spill file;

so memory stays bounded while the sender is stuck inside a round trip to Redis (here: a ``redis-server`` stopped
with SIGSTOP, which accepts connections in the kernel and never answers), and everything is delivered, once and in
order, when Redis answers again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from support.servers import RedisServer
from support.worker_harness import wait_until

import ingest
from ingest.settings import ClientSettings
from schemas import DEFAULT_LIMITS, FRAME_FIELD, Finish, Log, LogBlock, Names, Start, decode_frame

pytestmark = pytest.mark.integration

NS = "bp"
MAX_PENDING = 500
BLOCK = 64
CAP = 64 << 10


@dataclass
class Watch:
    """What log() left behind after each call, at its worst, and who packed."""

    max_pending: int = 0
    max_memory: int = 0
    caller_pumps: int = 0
    sender_pumps: int = 0
    caller: threading.Thread = field(default_factory=threading.current_thread)

    def look(self, run: ingest.Run) -> None:
        b = run._b
        queued_calls = sum(len(it[2]) if it[0] == "b" else 1 for it in b.items)  # blocks' calls, single events
        self.max_pending = max(self.max_pending, queued_calls + len(b.rows))
        self.max_memory = max(self.max_memory, run._core.outbox.memory_bytes)


@contextlib.contextmanager
def stalled_run(srv: RedisServer, tmp_path: Path, run_id: str) -> Iterator[tuple[ingest.Run, Watch]]:
    """A run whose sender is stuck in its first round trip (Redis is stopped; a 300 s socket timeout) until the
    block ends, with ``log()``'s packing counted by thread."""
    settings = ClientSettings(redis_url=srv.url, namespace=NS, partitions=1, data_dir=tmp_path / "client",
                              max_pending_rows=MAX_PENDING, max_block_rows=BLOCK, memory_cap_bytes=CAP,
                              frame_target_bytes=16 << 10, socket_timeout_s=300.0, connect_timeout_s=300.0,
                              spill_after_s=3600.0)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGSTOP)
    run: ingest.Run | None = None
    ok = False
    try:
        run = ingest.init(project="bp", id=run_id, settings=settings)
        # The sender packed the start event into a frame and went to send it: from here on it is inside that
        # round trip, which cannot end while Redis is stopped, so it packs nothing more.
        wait_until(lambda: run.pending_frames == 1 and not run._b.items, 30, "the sender to take the start frame")
        watch = Watch()
        real_pump = run._core.pump

        def pump() -> int:
            if threading.current_thread() is watch.caller:
                watch.caller_pumps += 1
            else:
                watch.sender_pumps += 1
            return real_pump()

        run._core.pump = pump  # type: ignore[method-assign]
        yield run, watch
        assert watch.sender_pumps == 0, "the sender was not stalled"
        ok = True
    finally:
        srv.proc.send_signal(signal.SIGCONT)
        if not ok and run is not None:
            run.finish(timeout=0)  # not left to the atexit handler (it would wait for a Redis that is gone)


def delivered(url: str) -> list[Any]:
    """The events in the stream, each once (by seq), checked to be contiguous from 0."""
    with redis.Redis.from_url(url) as r:
        entries = r.xrange(Names(NS, 1).stream(0))
    events: dict[int, Any] = {}
    for _, f in entries:
        frame = decode_frame(f[FRAME_FIELD], DEFAULT_LIMITS)
        for k, ev in enumerate(frame.events):
            events.setdefault(frame.seq + k, ev)
    assert sorted(events) == list(range(len(events))), "a gap in the producer's events"
    return [events[k] for k in range(len(events))]


def calls_of(events: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ev in events:
        if isinstance(ev, LogBlock):
            out += [c.data for c in ev.calls()]
        elif isinstance(ev, Log):
            out.append(ev.data)
    return out


def finish_and_check(run: ingest.Run, srv: RedisServer, want: list[dict[str, Any]]) -> None:
    res = run.finish(timeout=120)
    assert res.ok, res
    assert not run.spill_path.exists()
    events = delivered(srv.url)
    assert isinstance(events[0], Start) and isinstance(events[-1], Finish)
    got = calls_of(events)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.keys() == w.keys() and all(np.array_equal(g[x], w[x]) for x in g), (k, g, w)


def test_a_stalled_sender_keeps_pending_calls_and_memory_bounded_and_everything_is_delivered(
        redis_server_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    srv = redis_server_factory()
    n = 30_000
    want = [{"i": i, "loss": i / 7} for i in range(n)]
    with stalled_run(srv, tmp_path, "steady") as (run, watch):
        for d in want:
            run.log(d)
            watch.look(run)
        outbox = run._core.outbox
        print(f"worst pending calls {watch.max_pending}, worst memory {watch.max_memory} B, "
              f"{watch.caller_pumps} packs by log(), {outbox.spilled_frames} frames spilled")
        assert watch.caller_pumps > 0, "log() never packed: max_pending_rows was never reached"
        assert watch.max_pending < MAX_PENDING + BLOCK, watch
        assert watch.max_memory <= CAP, watch
        assert outbox.file_frames > 0 and run.spill_path.exists(), "nothing spilled past the memory cap"
    finish_and_check(run, srv, want)


@pytest.mark.parametrize("shape", ["alternating-keys", "arrays"])
def test_pending_calls_stay_bounded_whatever_the_calls_look_like(
        redis_server_factory: Callable[..., RedisServer], tmp_path: Path, shape: str) -> None:
    srv = redis_server_factory()
    n = 5_000
    if shape == "alternating-keys":
        want: list[dict[str, Any]] = [{"a": float(i)} if i % 2 else {"b": float(i)} for i in range(n)]
    else:
        want = [{"x": np.full(8, float(i))} for i in range(n)]
    with stalled_run(srv, tmp_path, shape) as (run, watch):
        for d in want:
            run.log(d)
            watch.look(run)
        print(f"{shape}: worst pending calls {watch.max_pending}, {watch.caller_pumps} packs by log()")
        assert watch.max_pending < MAX_PENDING + BLOCK, watch
        assert watch.max_memory <= CAP, watch
    finish_and_check(run, srv, want)

