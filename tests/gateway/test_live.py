"""``GET .../runs/{run}/events``: the web page's live stream (Server-Sent Events) over a real worker and Redis.

A run's rows arrive as ``rows`` events in step order without gaps or repeats and the stream ends with ``end`` when
the run finishes; an unknown run is a 404 before any event; a read key is needed like every read; streams per
client are bounded (429); and a gateway shutting down ends open streams at once (no handler left waiting).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import ingest
from gateway import GatewaySettings, create_app, live

pytestmark = pytest.mark.integration


async def events(resp: Any) -> AsyncIterator[tuple[str, Any]]:
    """The (name, data) pairs of an SSE response, as the page's reader parses them."""
    buf = ""
    async for chunk in resp.content.iter_any():
        buf += chunk.decode()
        while "\n\n" in buf:
            block, buf = buf.split("\n\n", 1)
            name, data = "message", []
            for line in block.split("\n"):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
            if data:
                yield name, json.loads("\n".join(data))


def start_run(s: GatewaySettings, project: str, run_id: str) -> Any:
    return ingest.init(project=project, id=run_id, redis_url=s.redis_url, namespace=s.namespace,
                       data_dir=s.data_dir / "client", settings={"partitions": s.partitions})


async def wait_run(c: Any, path: str, cond: Callable[[dict[str, Any]], bool], headers: Any = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = await c.get(f"/api/v1/projects/{path}", headers=headers)
        if r.status == 200 and cond(await r.json()):
            return
        await r.read()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never met the condition")


@pytest.mark.both_backends
async def test_rows_stream_in_order_and_end(gw_settings: GatewaySettings,
                                            make_client: Callable[..., Awaitable[Any]],
                                            worker: Callable[[], Any]) -> None:
    s = gw_settings
    worker()
    run = start_run(s, "lp", "r1")
    run.log({"loss": 1.0}, step=0)
    run.log({}, commit=True)
    c = await make_client(s)
    await wait_run(c, "lp/runs/r1", lambda i: i["rows"] >= 1)
    resp = await c.get("/api/v1/projects/lp/runs/r1/events?interval=0.2")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    steps: list[int] = []
    names: list[str] = []

    async def log() -> None:
        for st in range(1, 400):
            run.log({"loss": 1.0 / (st + 1), "bad": float("nan") if st == 5 else float("inf")}, step=st)
            if st % 40 == 0:
                run.log({}, commit=True)
                await asyncio.sleep(0.05)
        await asyncio.to_thread(run.finish)

    logger = asyncio.create_task(log())
    async with asyncio.timeout(60):
        async for name, data in events(resp):
            names.append(name)
            if name == "rows":
                steps.extend(r["_step"] for r in data["rows"])
                assert all(r["bad"] == "Infinity" for r in data["rows"] if "bad" in r)
            if name == "end":
                break
    await logger
    assert names[0] == "run" and names[-1] == "end"
    assert steps == list(range(1, 400))  # each row once, in order, none missed (step 0 was there before)


async def test_unknown_run_auth_and_bound(gw_settings: GatewaySettings, keys: Any,
                                          make_client: Callable[..., Awaitable[Any]],
                                          worker: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    s = gw_settings
    worker()
    run = start_run(s, "pa", "r1")
    run.log({"x": 1.0}, step=0)
    run.log({}, commit=True)
    c = await make_client(s)
    read = {"Authorization": f"Bearer {keys.tokens['read']}"}
    await wait_run(c, "pa/runs/r1", lambda i: i["rows"] >= 1, read)
    r = await c.get("/api/v1/projects/pa/runs/nope/events", headers=read)
    assert r.status == 404 and (await r.json())["error"] == "not_found"
    r = await c.get("/api/v1/projects/pa/runs/r1/events")
    assert r.status == 401
    monkeypatch.setattr(live, "MAX_PER_CLIENT", 2)
    open_ = [await c.get("/api/v1/projects/pa/runs/r1/events", headers=read) for _ in range(2)]
    assert [o.status for o in open_] == [200, 200]
    r = await c.get("/api/v1/projects/pa/runs/r1/events", headers=read)
    assert r.status == 429 and (await r.json())["error"] == "too_many_streams"
    for o in open_:
        o.close()
    run.finish()


async def test_shutdown_ends_open_streams(gw_settings: GatewaySettings, worker: Callable[[], Any]) -> None:
    s = gw_settings
    worker()
    run = start_run(s, "sd", "r1")
    run.log({"x": 1.0}, step=0)
    run.log({}, commit=True)
    server = TestServer(create_app(s))
    c: TestClient[web.Request, web.Application] = TestClient(server)
    await c.start_server()
    try:
        await wait_run(c, "sd/runs/r1", lambda i: i["rows"] >= 1)
        resp = await c.get("/api/v1/projects/sd/runs/r1/events?interval=10")
        first = await anext(events(resp))
        assert first[0] == "run"
        assert server.app is not None
        t0 = time.monotonic()
        async with asyncio.timeout(20):  # a handler left waiting would hold shutdown for its whole timeout
            await c.close()
        took = time.monotonic() - t0
        print(f"\nshutdown with an open live stream took {took:.2f} s")
        assert server.app[live.LIVE_KEY].open == 0
    finally:
        await c.close()
        run.finish()


@pytest.mark.both_backends
async def test_since_sends_rows_committed_before_connecting(gw_settings: GatewaySettings,
                                                           make_client: Callable[..., Awaitable[Any]],
                                                           worker: Callable[[], Any]) -> None:
    """The page reads its charts, then opens the stream: ?since=<the step it read> gets what came in between."""
    s = gw_settings
    worker()
    run = start_run(s, "ls", "r1")
    for st in range(50):
        run.log({"loss": float(st)}, step=st)
    run.finish()
    c = await make_client(s)
    await wait_run(c, "ls/runs/r1", lambda i: i["state"] == "finished")
    resp = await c.get("/api/v1/projects/ls/runs/r1/events?since=19")
    got: list[tuple[str, Any]] = []
    async with asyncio.timeout(30):
        async for name, data in events(resp):
            got.append((name, data))
            if name == "end":
                break
    rows = [r["_step"] for n, d in got if n == "rows" for r in d["rows"]]
    assert rows == list(range(20, 50)) and [n for n, _ in got] == ["run", "rows", "end"]
    r = await c.get("/api/v1/projects/ls/runs/r1/events?since=-2")
    assert r.status == 400


async def test_run_changes_are_sent_as_deltas(gw_settings: GatewaySettings,
                                              make_client: Callable[..., Awaitable[Any]],
                                              worker: Callable[[], Any]) -> None:
    """After the first ``run`` event only what changed is sent (``run_delta``): the summary's changed keys, the
    counters; never the config, columns or rejections again when they did not change. Applying every delta to the
    first ``run`` gives the run as ``page_info`` serves it at the end."""
    s = gw_settings
    worker()
    run = start_run(s, "ld", "r1")
    run.config.update({"lr": 0.1, "eps": float("nan"), "big": float("inf")})
    run.log({"loss": 1.0, "acc": 0.0}, step=0)
    run.log({}, commit=True)
    c = await make_client(s)
    await wait_run(c, "ld/runs/r1", lambda i: i["rows"] >= 1)
    resp = await c.get("/api/v1/projects/ld/runs/r1/events?interval=0.2")

    async def log() -> None:
        for st in range(1, 30):
            run.log({"loss": 1.0 / (st + 1)}, step=st)  # acc is not logged again: its summary stays
            run.log({}, commit=True)
            await asyncio.sleep(0.05)
        await asyncio.to_thread(run.finish)

    logger = asyncio.create_task(log())
    got: list[tuple[str, Any]] = []
    async with asyncio.timeout(60):
        async for name, data in events(resp):
            got.append((name, data))
            if name == "end":
                break
    await logger
    assert got[0][0] == "run"
    info = got[0][1]
    assert info["config"]["eps"] == {"_type": "nonfinite", "value": "NaN"}
    assert info["config"]["big"] == {"_type": "nonfinite", "value": "Infinity"}
    deltas = [d for n, d in got if n == "run_delta"]
    assert deltas, [n for n, _ in got]
    for d in deltas:
        assert set(d) <= {"set", "del", "keys"}
        assert not {"config", "summary", "columns", "metrics", "rejections"} & set(d.get("set", {}))
        assert "config" not in d.get("keys", {})
        assert "acc" not in d.get("keys", {}).get("summary", {}).get("set", {})
    assert any("loss" in d.get("keys", {}).get("summary", {}).get("set", {}) for d in deltas)
    assert any("last_step" in d.get("set", {}) for d in deltas)
    for d in deltas:  # the page's applyDelta
        info = {**info, **d.get("set", {})}
        for k in d.get("del", []):
            info.pop(k)
        for name, ch in d.get("keys", {}).items():
            info[name] = {**{k: v for k, v in info[name].items() if k not in ch["del"]}, **ch["set"]}
    final = await (await c.get("/api/v1/projects/ld/runs/r1/page_info")).json()
    assert {k: v for k, v in info.items() if k != "updated_at"} == {k: v for k, v in final.items() if k != "updated_at"}


async def test_one_stream_follows_several_runs(gw_settings: GatewaySettings,
                                               make_client: Callable[..., Awaitable[Any]],
                                               worker: Callable[[], Any]) -> None:
    """The compare page's stream: ``.../projects/{p}/events?run=a&run=b`` names the run in every event, sends each
    run's rows after its own ``since``, ends each run once, and ends when all have."""
    s = gw_settings
    worker()
    a, b = start_run(s, "lm", "a"), start_run(s, "lm", "b")
    for st in range(10):
        a.log({"loss": float(st)}, step=st)
        b.log({"loss": -float(st)}, step=st)
    a.log({}, commit=True)
    b.log({}, commit=True)
    c = await make_client(s)
    await wait_run(c, "lm/runs/a", lambda i: i["last_step"] == 9)
    await wait_run(c, "lm/runs/b", lambda i: i["last_step"] == 9)
    r = await c.get("/api/v1/projects/lm/events?run=a&run=nope")
    assert r.status == 404
    r = await c.get("/api/v1/projects/lm/events")
    assert r.status == 400
    resp = await c.get("/api/v1/projects/lm/events?run=a&run=b&since=4&since=9&interval=0.2")

    async def log() -> None:
        for st in range(10, 40):
            a.log({"loss": float(st)}, step=st)
            b.log({"loss": -float(st)}, step=st)
            if st % 5 == 0:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(a.finish)
        await asyncio.to_thread(b.finish)

    logger = asyncio.create_task(log())
    got: list[tuple[str, Any]] = []
    async with asyncio.timeout(60):
        async for name, data in events(resp):
            got.append((name, data))
    await logger
    assert all((d["id"] if n == "run" else d["run"]) in ("a", "b") for n, d in got)
    rows = {r: [x["_step"] for n, d in got if n == "rows" and d["run"] == r for x in d["rows"]] for r in "ab"}
    assert rows == {"a": list(range(5, 40)), "b": list(range(10, 40))}
    ys = {x["loss"] for n, d in got if n == "rows" and d["run"] == "b" for x in d["rows"]}
    assert all(y <= 0 for y in ys)
    assert sorted(d["run"] for n, d in got if n == "end") == ["a", "b"] and got[-1][0] == "end"
