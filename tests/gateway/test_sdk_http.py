"""The SDK over HTTP: ``ingest.init(url=...)`` through a real gateway process, killed and restarted mid-run, and
a smaller load test; history committed by a worker equals what was logged, every event exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.worker_harness import wait_until

import ingest
from gateway import GatewaySettings
from history.query import Api, RunNotFound
from ingest.http import HttpTransport
from ingest.sender import ThreadSender
from ingest.settings import ClientSettings

pytestmark = pytest.mark.integration


def client_settings(url: str, data_dir: Path, **kw: Any) -> ClientSettings:
    base: dict[str, Any] = {"url": url, "data_dir": data_dir / "client", "flush_interval_s": 0.02,
                            "backoff_initial_s": 0.02, "backoff_max_s": 0.2, "connect_timeout_s": 0.5,
                            "socket_timeout_s": 2.0}
    base.update(kw)
    return ClientSettings(**base)


def log_for(run: ingest.Run, start: int, seconds: float, per_burst: int = 200) -> int:
    n = start
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(per_burst):
            run.log({"i": float(n), "loss": 1.0 / (n + 1), "tag": "x"})
            n += 1
        time.sleep(0.005)
    return n


def finished_rows(api: Api, path: str, rows: int) -> bool:
    try:
        r = api.run(path)
    except RunNotFound:
        return False
    return r.state == "finished" and r.rows == rows


def get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read()


def test_gateway_killed_and_restarted_mid_run(gateway_proc: Callable[..., Any], worker: Callable[[], Any],
                                              gw_settings: GatewaySettings, data_dir: Path) -> None:
    g = gateway_proc()
    run = ingest.init(project="p", id="restart", settings=client_settings(g.url, data_dir, spill_after_s=0.3,
                                                                           http_encoding="gzip"))
    n = log_for(run, 0, 0.5)
    g.kill9()
    n = log_for(run, n, 1.0)  # the gateway is gone: log() must not notice
    assert run.pending_frames > 0
    g.start()
    n = log_for(run, n, 0.5)
    res = run.finish(timeout=30)
    assert res.ok, res
    assert run._core.failures > 0 and run._core.outbox.spilled_frames > 0  # the outage was seen and spilled
    assert not run.spill_path.exists()

    worker()
    with Api(data_dir) as api:
        wait_until(lambda: finished_rows(api, "p/restart", n), 60, f"{n} committed rows")
        h = api.run("p/restart").history(keys=["i"], samples=None, pandas=False)
    assert h["i"].tolist() == [float(i) for i in range(n)]  # every event once, in order
    assert h["_step"].tolist() == list(range(n))

    # The same history through the read API, in each format.
    base = f"{g.url}/api/v1/projects/p/runs/restart"
    ctype, raw = get(f"{base}/history?keys=i&samples=all&format=json")
    assert ctype.startswith("application/json") and [r["i"] for r in json.loads(raw)] == h["i"].tolist()
    _, raw = get(f"{base}/history?keys=i&samples=all&format=csv")
    assert [float(r["i"]) for r in csv.DictReader(io.StringIO(raw.decode()))] == h["i"].tolist()
    _, raw = get(f"{base}/history?keys=i&samples=all&format=msgpack")
    assert msgpack.unpackb(raw)["data"]["i"] == h["i"].tolist()
    ctype, raw = get(f"{base}/scan?keys=i&page_size=777")
    rows = [json.loads(line) for line in raw.decode().splitlines()]
    assert ctype.startswith("application/x-ndjson") and [r["i"] for r in rows] == h["i"].tolist()
    _, raw = get(f"{base}/scan?format=msgpack&min_step=10&max_step=20")
    assert [r["_step"] for r in msgpack.Unpacker(io.BytesIO(raw))] == list(range(10, 20))
    _, raw = get(f"{base}/scan?format=csv&max_step=5")
    assert raw.decode().splitlines()[0].startswith("_step,_timestamp,_runtime") and len(raw.decode().splitlines()) == 6
    _, raw = get(f"{base}/sampled?key=loss&buckets=10")
    s = json.loads(raw)
    assert s["count"] == n and s["sampled"] is True and s["step"][0] == 0 and s["step"][-1] == n - 1
    _, raw = get(f"{base}/sections")
    assert json.loads(raw)["sections"] == {"": ["i", "loss", "tag"]}
    _, raw = get(f"{base}")
    info = json.loads(raw)
    assert (info["state"], info["rows"], info["rejected"]) == ("finished", n, 0)
    _, raw = get(f"{g.url}/api/v1/projects/p/runs?format=csv")
    assert raw.decode().splitlines()[1].startswith("p,restart,")


def test_load_50_runs_only_429s_and_exactly_once(gateway_proc: Callable[..., Any], worker: Callable[[], Any],
                                                 data_dir: Path) -> None:
    # A tight per-key rate (one key for all runs, as a team would share one) so the SDK meets many 429s.
    g = gateway_proc("--rate", "200", "--burst", "50")
    runs = [ingest.init(project="load", id=f"r{i:02d}", settings=client_settings(g.url, data_dir))
            for i in range(50)]
    counts = [0] * len(runs)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for j, r in enumerate(runs):
            for _ in range(20):
                r.log({"i": float(counts[j]), "loss": 0.5, "acc": 0.25})
                counts[j] += 1
        time.sleep(0.01)
    transports = [r._sender._client for r in runs if isinstance(r._sender, ThreadSender)]
    assert all(isinstance(t, HttpTransport) for t in transports) and len(transports) == len(runs)
    results: list[Any] = [None] * len(runs)

    def finish(j: int) -> None:
        results[j] = runs[j].finish(timeout=60)

    threads = [threading.Thread(target=finish, args=(j,)) for j in range(len(runs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
    assert all(r is not None and r.ok for r in results), results
    statuses: dict[int, int] = {}
    for t in transports:
        assert isinstance(t, HttpTransport)
        for k, v in t.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
        assert t.missing_retry_after == 0 and t.refused_frames == 0
    assert set(statuses) <= {200, 201, 202, 429}, statuses
    assert statuses.get(429, 0) > 0, f"the rate limit was never hit: {statuses}"

    worker()
    with Api(data_dir) as api:
        for j, r in enumerate(runs):
            wait_until(lambda r=r, j=j: finished_rows(api, f"load/{r.id}", counts[j]), 60, f"{r.id} committed")
            h = api.run(f"load/{r.id}").history(keys=["i"], samples=None, pandas=False)
            assert h["i"].tolist() == [float(i) for i in range(counts[j])], r.id


def test_a_blob_gone_from_the_gateway_is_uploaded_again(thread_gateway: Callable[..., Any],
                                                         gw_settings: GatewaySettings, data_dir: Path) -> None:
    """The transport remembers which blobs it uploaded; when one has expired from the gateway's buffer, the next
    frame referencing it gets 422 missing_blob, and the transport uploads it again instead of dropping the frame."""
    import numpy as np
    import redis

    from schemas import FRAME_FIELD, Names, decode_frame

    g = thread_gateway()
    names = Names(gw_settings.namespace, gw_settings.partitions)
    image = ingest.Image(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    run = ingest.init(project="p", id="blobs", settings=client_settings(f"http://127.0.0.1:{g.port}", data_dir,
                                                                        namespace=gw_settings.namespace))
    p = names.partition("p", "blobs")
    with redis.Redis.from_url(gw_settings.redis_url) as r:
        run.log({"img": image}, step=0)
        run.log({"x": 1.0}, step=1)  # a later step closes step 0's row... and flushes it with its frame
        wait_until(lambda: r.exists(names.blob(p, image.sha256)), 30, "the first upload")
        wait_until(lambda: r.xlen(names.stream(p)) >= 1, 30, "the first frame")
        r.delete(names.blob(p, image.sha256))  # expired from the gateway's buffer
        run.log({"img": image}, step=2)
        res = run.finish(timeout=30)
        assert res.ok, res
        assert r.exists(names.blob(p, image.sha256)), "the blob was not uploaded again"
        events = [ev for _id, f in r.xrange(names.stream(p)) for ev in decode_frame(f[FRAME_FIELD]).events]
    logged = [ev for ev in events if type(ev).__name__ in ("Log", "LogBlock")]
    steps = sorted(s for ev in logged for s in ([ev.step] if type(ev).__name__ == "Log" else ev.step))
    assert steps == [0, 1, 2], steps


def test_frames_the_gateway_refuses_are_counted_in_finish(thread_gateway: Callable[..., Any],
                                                          gw_settings: GatewaySettings, data_dir: Path) -> None:
    """A gateway with stricter limits than the client refuses a frame for good: it is logged as an error and
    counted in finish()'s result (not ok), while the frames around it are delivered."""
    from schemas import Limits

    g = thread_gateway(gw_settings.replace(limits=Limits(max_value_bytes=1000)))
    run = ingest.init(project="p", id="refused", settings=client_settings(f"http://127.0.0.1:{g.port}", data_dir,
                                                                          namespace=gw_settings.namespace))
    import redis

    from schemas import FRAME_FIELD, Names, decode_frame

    names = Names(gw_settings.namespace, gw_settings.partitions)
    stream = names.stream(names.partition("p", "refused"))
    with redis.Redis.from_url(gw_settings.redis_url) as r:
        def calls_in_stream() -> int:
            evs = [ev for _id, f in r.xrange(stream) for ev in decode_frame(f[FRAME_FIELD]).events]
            return sum(len(ev.calls()) if type(ev).__name__ == "LogBlock" else type(ev).__name__ == "Log"
                       for ev in evs)

        run.log({"x": 1.0}, step=0)
        # Until the first call is in the stream (not only the Start event's frame), so the next travels alone.
        wait_until(lambda: calls_in_stream() >= 1, 30, "the first call's frame")
        run.log({"s": "y" * 5000}, step=1)  # within the client's limit, past the gateway's
        wait_until(lambda: run._sender is not None and run._sender.refused_frames == 1, 30, "the refusal")
        run.log({"x": 2.0}, step=2)
        res = run.finish(timeout=30)
        events = [ev for _id, f in r.xrange(stream) for ev in decode_frame(f[FRAME_FIELD]).events]
    assert res.refused_frames == 1 and not res.ok, res
    assert res.unsent_frames == 0, res
    kinds = [type(ev).__name__ for ev in events]
    assert kinds[0] == "Start" and kinds[-1] == "Finish", kinds
    calls = [c for ev in events for c in (ev.calls() if type(ev).__name__ == "LogBlock"
                                          else [ev] if type(ev).__name__ == "Log" else [])]
    assert [c.data for c in calls] == [{"x": 1.0}, {"x": 2.0}], calls
