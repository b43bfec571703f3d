"""Redis goes away mid-run and comes back: nothing logged is lost, order per producer holds, and log() never
touches the network (checked on the caller's thread, not timed).

Each test owns a private ``redis-server`` (``redis_server_factory``) with an fsync'd append-only file, so what
was acknowledged before the stop is still there after the restart on the same port. Duplicates are allowed (a
frame whose reply was lost is resent), so the checks dedupe by ``(producer, seq)`` as a worker does.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import ingest
from ingest.run import Run
from ingest.settings import ClientSettings
from ingest.sync import main as sync_main
from ingest.sync import sync_path
from schemas import FRAME_FIELD, Finish, Frame, Log, LogBlock, Names, Start, decode_frame

pytestmark = pytest.mark.integration

NS = "out"


def read_frames(url: str, names: Names) -> dict[str, list[Frame]]:
    out: dict[str, list[Frame]] = defaultdict(list)
    with redis.Redis.from_url(url) as client:
        for p in range(names.partitions):
            for _id, fields in client.xrange(names.stream(p)):
                f = decode_frame(fields[FRAME_FIELD], strict=True)
                out[f.producer].append(f)
    return out


def deduped_events(frames: list[Frame]) -> list[Any]:
    """Events in seq order, skipping frames already seen (a worker's dedupe); asserts no gap."""
    out: list[Any] = []
    expected = 0
    for f in frames:
        if f.seq < expected:
            assert f.seq + len(f.events) <= expected, "resent frame overlaps differently"
            continue
        assert f.seq == expected, f"gap: frame seq {f.seq}, expected {expected}"
        out.extend(f.events)
        expected += len(f.events)
    return out


def logged_values(events: list[Any]) -> list[float]:
    vals: list[float] = []
    for e in events:
        calls = e.calls() if isinstance(e, LogBlock) else [e] if isinstance(e, Log) else []
        vals.extend(c.data["i"] for c in calls)
    return vals


def settings_for(url: str, data_dir: Path, **kw: Any) -> ClientSettings:
    base: dict[str, Any] = {"redis_url": url, "namespace": NS, "data_dir": data_dir, "flush_interval_s": 0.02,
                            "backoff_initial_s": 0.02, "backoff_max_s": 0.2, "connect_timeout_s": 0.5,
                            "socket_timeout_s": 1.0}
    base.update(kw)
    return ClientSettings(**base)


class NetworkWatch:
    """Records socket calls made by the test's own thread while ``log()`` runs: the promise is that ``log()``
    never touches the network (the sender thread does), checked directly instead of timing the calls."""

    def __init__(self) -> None:
        self.main = threading.get_ident()
        self.logging = False
        self.calls: list[str] = []


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> NetworkWatch:
    watch = NetworkWatch()
    for name in ("connect", "connect_ex", "send", "sendall", "sendmsg", "recv", "recv_into", "recvfrom"):
        original = getattr(socket.socket, name)

        def wrapper(self: socket.socket, *args: Any, _name: str = name, _orig: Any = original) -> Any:
            if watch.logging and threading.get_ident() == watch.main:
                watch.calls.append(_name)
            return _orig(self, *args)

        monkeypatch.setattr(socket.socket, name, wrapper)
    return watch


def log_calls(run: ingest.Run, start: int, count: int, net: NetworkWatch) -> int:
    """Log ``count`` calls ``{"i": n, ...}`` from ``start``; returns the next n."""
    net.logging = True
    try:
        for n in range(start, start + count):
            run.log({"i": float(n), "loss": 1.0 / (n + 1), "tag": "x"})
    finally:
        net.logging = False
    return start + count


def log_until(run: ingest.Run, start: int, cond: Callable[[], bool], net: NetworkWatch, what: str) -> int:
    """Log bursts of calls until ``cond()`` holds (a generous deadline only catches a hang)."""
    n = start
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        n = log_calls(run, n, 200, net)
        time.sleep(0.01)
    return n


def test_outage_mid_run_loses_nothing(redis_server_factory: Callable[..., Any], data_dir: Path,
                                      net: NetworkWatch) -> None:
    srv = redis_server_factory("--appendonly", "yes", "--appendfsync", "always")
    run = ingest.init(project="p", id="outage", settings=settings_for(srv.url, data_dir))
    n = log_until(run, 0, lambda: run._core.sent_frames >= 3, net, "frames sent before the outage")
    srv.stop()
    n = log_until(run, n, lambda: run._core.failures >= 3, net, "the sender to meet the outage")
    n = log_calls(run, n, 2000, net)  # Redis is down: log() must not notice
    assert run.pending_frames > 0
    srv.start()
    sent = run._core.sent_frames
    n = log_until(run, n, lambda: run._core.sent_frames > sent, net, "frames sent after the restart")
    res = run.finish(timeout=30)
    assert res.ok, res
    assert net.calls == [], f"log() did network I/O on the caller's thread: {net.calls[:10]}"

    (frames,) = read_frames(srv.url, Names(NS, 16)).values()
    evs = deduped_events(frames)
    assert isinstance(evs[0], Start) and isinstance(evs[-1], Finish)
    assert logged_values(evs) == [float(i) for i in range(n)]
    assert run._core.failures > 0  # the outage was seen, not dodged


def test_outage_spills_to_disk_then_resends(redis_server_factory: Callable[..., Any], data_dir: Path,
                                            net: NetworkWatch) -> None:
    srv = redis_server_factory("--appendonly", "yes", "--appendfsync", "always")
    run = ingest.init(project="p", id="spill", settings=settings_for(srv.url, data_dir, spill_after_s=0.2))
    n = log_until(run, 0, lambda: run._core.sent_frames >= 3, net, "frames sent before the outage")
    srv.stop()
    n = log_until(run, n, run.spill_path.exists, net, "frames spilled during the outage")
    assert run.spill_path.parent == data_dir / "spill" / "p"
    srv.start()
    n = log_calls(run, n, 2000, net)
    res = run.finish(timeout=30)
    assert res.ok, res
    assert not run.spill_path.exists()  # every spilled frame acknowledged: the file is deleted
    assert run._core.outbox.spilled_frames > 0
    assert net.calls == [], f"log() did network I/O on the caller's thread: {net.calls[:10]}"
    (frames,) = read_frames(srv.url, Names(NS, 16)).values()
    evs = deduped_events(frames)
    assert logged_values(evs) == [float(i) for i in range(n)] and isinstance(evs[-1], Finish)


def test_finish_while_down_leaves_a_spill_file_that_sync_resends(
    redis_server_factory: Callable[..., Any], data_dir: Path
) -> None:
    srv = redis_server_factory()
    srv.stop()
    runs = []
    for rid in ("a", "b"):
        run = ingest.init(project="late", id=rid, settings=settings_for(srv.url, data_dir))
        for i in range(3000):
            run.log({"i": float(i), "loss": 0.5, "tag": "x"})
        run.log({"i": 3000.0, "loss": 0.5, "tag": "y"})  # new keys: one more block
        res = run.finish(timeout=0.3)
        assert not res.ok and res.unsent_frames > 0 and res.spill_path is not None
        assert res.spill_path.exists()
        runs.append(run)

    srv.start()
    # One file by path, the rest through the CLI entry point on the directory.
    res0 = runs[0].result
    assert res0 is not None and res0.spill_path is not None
    r1 = sync_path(res0.spill_path, srv.url)
    assert r1.ok and r1.frames_sent == res0.unsent_frames and not res0.spill_path.exists()
    assert sync_main([str(data_dir / "spill"), "--redis-url", srv.url]) == 0
    assert not list((data_dir / "spill").rglob("*.spill"))

    by_producer = read_frames(srv.url, Names(NS, 16))
    for run in runs:
        evs = deduped_events(by_producer[run.producer])
        assert isinstance(evs[0], Start) and isinstance(evs[-1], Finish)
        assert logged_values(evs) == [float(i) for i in range(3001)]


def test_sync_skips_a_file_its_producer_still_holds(redis_server_factory: Callable[..., Any],
                                                    data_dir: Path) -> None:
    srv = redis_server_factory()
    # A run without a sender thread, so nothing but sync_path can send its frames.
    run = Run(settings=settings_for(srv.url, data_dir, memory_cap_bytes=1000), project="held", run_id="h")
    for i in range(2000):
        run.log({"i": float(i), "loss": 0.1, "tag": "z"})
    run._core.pump()  # past the tiny memory cap: spilled, and the file is locked by this live producer
    assert run.spill_path.exists()
    res = sync_path(run.spill_path.parent, srv.url)
    assert res.files_skipped == [run.spill_path] and res.frames_sent == 0 and res.ok
    fin = run.finish(timeout=0)  # closes (fsync, unlock) the file with every frame still in it
    assert fin.spill_path == run.spill_path
    res = sync_path(run.spill_path.parent, srv.url)
    assert res.frames_sent == fin.unsent_frames and not run.spill_path.exists()
    (frames,) = read_frames(srv.url, Names(NS, 16)).values()
    evs = deduped_events(frames)
    assert logged_values(evs) == [float(i) for i in range(2000)] and isinstance(evs[-1], Finish)


@pytest.mark.parametrize("project", ["..", ".", "a%2Fb", "ünï cödé", ".hidden"])
def test_spill_files_of_any_project_name_stay_in_the_spill_folder_and_sync_finds_them(
    redis_server_factory: Callable[..., Any], data_dir: Path, project: str
) -> None:
    """A project named ``..`` used to spill to ``<data-dir>/..-<id>.spill``, where ``stepline sync`` never looked."""
    srv = redis_server_factory()
    srv.stop()
    run = ingest.init(project=project, id="r", settings=settings_for(srv.url, data_dir))
    for i in range(10):
        run.log({"i": float(i)})
    res = run.finish(timeout=0.3)
    assert not res.ok and res.spill_path is not None and res.spill_path.exists()
    spill_root = (data_dir / "spill").resolve()
    assert res.spill_path.resolve().parent.parent == spill_root
    srv.start()
    assert sync_main([str(data_dir / "spill"), "--redis-url", srv.url]) == 0
    assert not res.spill_path.exists()
    (frames,) = read_frames(srv.url, Names(NS, 16)).values()
    assert logged_values(deduped_events(frames)) == [float(i) for i in range(10)]
