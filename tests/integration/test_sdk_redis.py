"""The SDK against a real Redis: what is logged arrives in the partition streams, exactly, in order.

Every test uses its own namespace on the shared server (fixture ``redis_url``), removed afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from support.worker_harness import wait_until

import ingest
from schemas import (
    FRAME_FIELD,
    Config,
    DefineMetric,
    Finish,
    Frame,
    Log,
    LogBlock,
    Names,
    Start,
    Summary,
    decode_frame,
    values_equal,
)

pytestmark = pytest.mark.integration


def read_frames(client: Any, names: Names) -> dict[str, list[Frame]]:
    """Every frame of every partition stream, per producer, in stream order."""
    out: dict[str, list[Frame]] = defaultdict(list)
    for p in range(names.partitions):
        start = "-"
        while True:
            page = client.xrange(names.stream(p), min=start, count=2000)
            if not page:
                break
            for _id, fields in page:
                f = decode_frame(fields[FRAME_FIELD], strict=True)
                assert names.partition(f.project, f.run) == p
                out[f.producer].append(f)
            start = "(" + page[-1][0].decode()  # redis-py returns bytes without decode_responses
    return out


def events_in_order(frames: list[Frame], dedupe: bool = False) -> list[Any]:
    """The producer's events in seq order; asserts contiguity (and, unless ``dedupe``, no duplicates)."""
    out: list[Any] = []
    expected = 0
    for f in frames:
        if dedupe and f.seq < expected:
            assert f.seq + len(f.events) <= expected, "a resent frame overlaps differently"
            continue
        assert f.seq == expected, f"seq gap or duplicate: got {f.seq}, expected {expected}"
        out.extend(f.events)
        expected += len(f.events)
    return out


def calls_of(events: list[Any]) -> list[Log]:
    out: list[Log] = []
    for e in events:
        if isinstance(e, LogBlock):
            out.extend(e.calls())
        elif isinstance(e, Log):
            out.append(e)
    return out


def value(r: int, step: int, j: int) -> Any:
    if j == 0:
        return step // 100  # an int column ("epoch")
    if j == 1:
        return step % 3 == 0  # a bool column
    return r * 1e6 + step + j / 100


KEYS = ["epoch", "flag"] + [f"train/metric_{j:02d}" for j in range(2, 20)]


def one_producer_frames(redis_url: str, namespace: str) -> list[Frame]:
    """The frames of the one producer that wrote to the namespace (asserts there is exactly one)."""
    with redis.Redis.from_url(redis_url) as client:
        (frames,) = read_frames(client, Names(namespace, 16)).values()
    return frames


def test_ten_runs_from_ten_threads_arrive_exactly(redis_url: str, namespace: str, data_dir: Path) -> None:
    runs_n, steps = 10, 10_000
    runs: list[ingest.Run] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(runs_n)

    def work(r: int) -> None:
        try:
            run = ingest.init(project="bulk", id=f"run{r}", config={"r": r}, redis_url=redis_url,
                              namespace=namespace, data_dir=data_dir)
            runs.append(run)
            barrier.wait()
            for step in range(steps):
                run.log({k: value(r, step, j) for j, k in enumerate(KEYS)})
            res = run.finish(timeout=30)
            assert res.ok, res
        except BaseException as e:
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(r,)) for r in range(runs_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    elapsed = time.monotonic() - t0

    client = redis.Redis.from_url(redis_url)
    try:
        by_producer = read_frames(client, Names(namespace, 16))
    finally:
        client.close()
    assert set(by_producer) == {run.producer for run in runs}
    for run in runs:
        r = int(run.id.removeprefix("run"))
        evs = events_in_order(by_producer[run.producer])
        assert isinstance(evs[0], Start) and evs[0].config == {"r": r}
        assert isinstance(evs[-1], Finish) and evs[-1].exit_code == 0
        calls = calls_of(evs)
        assert len(calls) == steps
        for step, call in enumerate(calls):
            assert call.step is None and call.commit is None
            expected = {k: value(r, step, j) for j, k in enumerate(KEYS)}
            assert values_equal(call.data, expected), (run.id, step)
        blocks = [e for e in evs if isinstance(e, LogBlock)]
        epoch, _flag, metric = blocks[0].cols[:3]
        assert isinstance(epoch, np.ndarray) and epoch.dtype == np.int64
        assert isinstance(metric, np.ndarray) and metric.dtype == np.float64
    assert elapsed < 30


def test_wandb_style_script(redis_url: str, namespace: str, data_dir: Path) -> None:
    import ingest as wandb

    wandb.init(project="mnist", name="first", config={"lr": 1e-3, "layers": [64, 32]}, redis_url=redis_url,
               namespace=namespace, data_dir=data_dir, entity="ignored", tags=["a"])
    run = wandb.run
    assert isinstance(run, ingest.Run) and run.name == "first" and len(run.id) == 8
    assert wandb.config.lr == 1e-3
    wandb.config.update({"bs": 64})
    wandb.define_metric("val/*", step_metric="epoch")
    for epoch in range(3):
        for i in range(10):
            wandb.log({"train/loss": 1.0 / (i + 1), "epoch": epoch})
        wandb.log({"val/acc": 0.5 + epoch / 10, "epoch": epoch, "hist": wandb.Histogram([1, 2, 3])})
    wandb.summary["best_acc"] = 0.7
    assert run.step == 33
    res = wandb.finish()
    assert res is not None and res.ok
    assert wandb.run is None

    frames = one_producer_frames(redis_url, namespace)
    evs = events_in_order(frames)
    kinds = [type(e) for e in evs]
    assert kinds[0] is Start and kinds[-1] is Finish
    assert Config in kinds and DefineMetric in kinds and Summary in kinds
    assert len(calls_of(evs)) == 33


def test_context_manager_reports_failure(redis_url: str, namespace: str, data_dir: Path) -> None:
    run = ingest.init(project="p", id="crash", redis_url=redis_url, namespace=namespace, data_dir=data_dir)

    def train() -> None:
        with run:
            run.log({"a": 1.0})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        train()
    assert run.result is not None and run.result.ok
    frames = one_producer_frames(redis_url, namespace)
    last = events_in_order(frames)[-1]
    assert isinstance(last, Finish) and last.exit_code == 1


class CommandLog(threading.Thread):
    """Every command the Redis server executes on keys of one namespace, in execution order (MONITOR lists the
    commands of a MULTI/EXEC in the order EXEC runs them): ``(command name, key)``."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(daemon=True)
        self.url, self.namespace = url, namespace
        self.commands: list[tuple[str, str]] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.end = f"{namespace}:end-of-monitor"

    def run(self) -> None:
        try:
            with redis.Redis.from_url(self.url).monitor() as m:
                self.ready.set()
                for c in m.listen():
                    args = c["command"].split(" ")
                    if len(args) > 1 and args[1].startswith(self.namespace + ":"):
                        if args[1] == self.end:
                            return
                        self.commands.append((args[0].upper(), args[1]))
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.ready.set()

    def stop(self) -> list[tuple[str, str]]:
        with redis.Redis.from_url(self.url) as r:
            r.echo(self.end)
        self.join(10)
        assert not self.is_alive() and self.error is None, self.error
        return self.commands


def test_media_blobs_are_stored_before_their_frame(redis_url: str, namespace: str, data_dir: Path) -> None:
    names = Names(namespace, 16)
    p = names.partition("media", "m1")
    monitor = CommandLog(redis_url, namespace)
    monitor.start()
    assert monitor.ready.wait(10) and monitor.error is None, monitor.error
    run = ingest.init(project="media", id="m1", redis_url=redis_url, namespace=namespace, data_dir=data_dir)
    for i in range(20):  # frames before the media one: it is not the first thing sent
        run.log({"loss": float(i)})
    wait_until(lambda: run.sent_frames >= 1 and run.pending_frames == 0, 30, "the first frames to be sent")
    table = ingest.Table(columns=["x", "page"], data=[[1, ingest.Html("<b>t</b>")]])
    img = ingest.Image(np.zeros((4, 5, 3), dtype=np.uint8))
    run.log({"img": img, "table": table})
    assert run.finish(timeout=10).ok
    commands = monitor.stop()
    html_sha = table.data[0][1].payload["sha256"]
    blob_keys = {names.blob(p, img.sha256), names.blob(p, html_sha)}
    client = redis.Redis.from_url(redis_url)
    try:
        for sha, data in [(img.sha256, None), (html_sha, b"<b>t</b>")]:
            key = names.blob(p, sha)
            stored = client.get(key)
            assert stored is not None and (data is None or stored == data)
            assert 0 < client.ttl(key) <= 7 * 86400
        entries = client.xrange(names.stream(p))
    finally:
        client.close()
    # The stream entry whose frame carries the media call, and the XADD that appended it: the XADDs to the
    # stream ran in entry order, so the k-th XADD wrote the k-th entry.
    frames = [decode_frame(fields[FRAME_FIELD], strict=True) for _id, fields in entries]
    k = next(i for i, f in enumerate(frames) if any("img" in c.data for c in calls_of(f.events)))
    (call,) = [c for c in calls_of(frames[k].events) if "img" in c.data]
    assert call.data["img"].payload["sha256"] == img.sha256
    xadds = [i for i, (cmd, key) in enumerate(commands) if cmd == "XADD" and key == names.stream(p)]
    assert len(xadds) == len(entries) and k > 0, (len(xadds), len(entries), k)
    frame_at = xadds[k]
    for key in blob_keys:
        sets = [i for i, (cmd, k2) in enumerate(commands) if cmd == "SET" and k2 == key]
        assert sets, f"no SET of {key} seen"
        assert sets[0] < frame_at, f"blob {key} was stored after the frame that references it: {commands}"


async def test_async_run(redis_url: str, namespace: str, data_dir: Path) -> None:
    run = await ingest.async_init(project="aio", id="a1", redis_url=redis_url, namespace=namespace,
                                  data_dir=data_dir)
    async with run:
        for i in range(2000):
            run.log({"loss": float(i), "i": i})
        assert await run.aflush(timeout=10)
        assert run.pending_frames == 0
        run.log({"loss": -1.0, "i": -1}, step=5000)
    assert run.result is not None and run.result.ok
    frames = one_producer_frames(redis_url, namespace)
    evs = events_in_order(frames)
    calls = calls_of(evs)
    assert [c.data["i"] for c in calls] == [*range(2000), -1]
    assert isinstance(evs[-1], Finish)


def test_atexit_finishes_an_unfinished_run(redis_url: str, namespace: str, data_dir: Path) -> None:
    script = (
        "import ingest\n"
        f"run = ingest.init(project='exit', id='e1', redis_url={redis_url!r}, namespace={namespace!r}, "
        f"data_dir={str(data_dir)!r})\n"
        "for i in range(100):\n"
        "    ingest.log({'a': float(i)})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    frames = one_producer_frames(redis_url, namespace)
    evs = events_in_order(frames)
    assert len(calls_of(evs)) == 100 and isinstance(evs[-1], Finish)
