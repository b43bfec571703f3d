"""``GET .../runs/{run}/sampled_batch``: the web page's batched panel read equals ``.../sampled`` key by key."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from test_live import start_run, wait_run

from gateway import GatewaySettings

pytestmark = [pytest.mark.integration, pytest.mark.both_backends]  # history on the data directory and a bucket


async def test_sampled_batch_equals_sampled(gw_settings: GatewaySettings, keys: Any,
                                            make_client: Callable[..., Awaitable[Any]],
                                            worker: Callable[[], Any]) -> None:
    s = gw_settings
    worker()
    run = start_run(s, "pa", "batch")
    run.define_metric("val/*", step_metric="epoch")
    for st in range(3000):
        d: dict[str, Any] = {"a": st * 0.5, "b": float("inf") if st == 7 else -st, "name": "x"}
        if st % 100 == 0:
            d.update({"val/loss": 1 / (st + 1), "epoch": st // 100})
        run.log(d, step=st)
    run.finish()
    c = await make_client(s)
    read = {"Authorization": f"Bearer {keys.tokens['read']}"}
    await wait_run(c, "pa/runs/batch", lambda i: i["state"] == "finished", read)
    base = "/api/v1/projects/pa/runs/batch"
    for x_axis, ks in (("_step", ["a", "b", "val/loss", "missing"]), ("epoch", ["val/loss"])):
        q = "&".join(f"key={k}" for k in ks)
        r = await c.get(f"{base}/sampled_batch?{q}&x_axis={x_axis}&buckets=100", headers=read)
        assert r.status == 200, await r.text()
        got = (await r.json())["sampled"]
        assert list(got) == ks
        for k in ks:
            one = await c.get(f"{base}/sampled", params={"key": k, "x_axis": x_axis, "buckets": "100"}, headers=read)
            assert got[k] == await one.json(), k
    r = await c.get(f"{base}/sampled_batch?key=name", headers=read)
    assert (await r.json())["sampled"]["name"]["error"] == "bad_query"  # a string key: no line, the others unaffected
    for bad in ("", "?" + "&".join(f"key=k{i}" for i in range(65)), "?key=a&buckets=0", "?key=a&buckets=10001"):
        r = await c.get(f"{base}/sampled_batch{bad}", headers=read)
        assert r.status == 400 and (await r.json())["error"] == "bad_param", bad
    assert (await c.get(f"{base}/sampled_batch?key=a")).status == 401
    assert (await c.get("/api/v1/projects/pa/runs/nope/sampled_batch?key=a", headers=read)).status == 404


def unpack(v: Any) -> Any:
    """The page's reading of encoding=f8 (app.js unpackF8), in Python."""
    if isinstance(v, dict) and "f8" in v:
        xs = np.frombuffer(base64.b64decode(v["f8"]), dtype="<f8")
        return [None if np.isnan(x) else ("Infinity" if x > 0 else "-Infinity") if np.isinf(x) else
                (int(x) if x.is_integer() else float(x)) for x in xs.tolist()]
    return v


async def test_sampled_batch_f8_encoding(gw_settings: GatewaySettings, keys: Any,
                                         make_client: Callable[..., Awaitable[Any]],
                                         worker: Callable[[], Any]) -> None:
    """encoding=f8 carries the same numbers (NaN and ±inf included) as the JSON reply."""
    s = gw_settings
    worker()
    run = start_run(s, "pa", "f8")
    for st in range(500):
        v = {3: float("nan"), 4: float("inf"), 5: float("-inf")}.get(st, st * 0.1 - 7.25)
        run.log({"a": v, "_big": 2**60 + st if st == 0 else 1}, step=st)
    run.finish()
    c = await make_client(s)
    read = {"Authorization": f"Bearer {keys.tokens['read']}"}
    await wait_run(c, "pa/runs/f8", lambda i: i["state"] == "finished", read)
    base = "/api/v1/projects/pa/runs/f8/sampled_batch?key=a&key=_big&buckets=50"
    as_json = (await (await c.get(base, headers=read)).json())["sampled"]
    as_f8 = (await (await c.get(base + "&encoding=f8", headers=read)).json())["sampled"]
    for k in ("a", "_big"):
        got = {n: unpack(v) for n, v in as_f8[k].items()}
        assert got.pop("step") == {"same_as": "x"}  # x is _step here: the page copies x
        assert got == {n: v for n, v in as_json[k].items() if n != "step"} and as_json[k]["step"] == got["x"], k
    assert isinstance(as_f8["a"]["y"], dict)
    r = await c.get(base + "&encoding=text", headers=read)
    assert r.status == 400


async def test_sampled_batch_cache_never_serves_an_older_run(gw_settings: GatewaySettings,
                                                            make_client: Callable[..., Awaitable[Any]],
                                                            worker: Callable[[], Any]) -> None:
    """Replies are cached per run state: the same read of an unchanged run answers the same bytes; after a commit
    the new rows are in the reply at once (a live run is never answered from the cache of its earlier commit)."""
    s = gw_settings
    worker()
    run = start_run(s, "pc", "live")
    for st in range(100):
        run.log({"a": float(st)}, step=st)
    run.log({}, commit=True)
    c = await make_client(s)
    await wait_run(c, "pc/runs/live", lambda i: i["rows"] == 100)
    url = "/api/v1/projects/pc/runs/live/sampled_batch?key=a&buckets=10&encoding=f8"
    first = await (await c.get(url)).text()
    assert await (await c.get(url)).text() == first
    for st in range(100, 150):
        run.log({"a": float(st)}, step=st)
    run.log({}, commit=True)
    await wait_run(c, "pc/runs/live", lambda i: i["rows"] == 150)
    got = (await (await c.get(url)).json())["sampled"]["a"]
    assert got["count"] == 150 and unpack(got["x"])[-1] == 149
    run.finish()
    await wait_run(c, "pc/runs/live", lambda i: i["state"] == "finished")
    got = (await (await c.get(url)).json())["sampled"]["a"]
    assert got["count"] == 150
