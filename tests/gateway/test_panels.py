"""``GET .../runs/{run}/sampled_batch``: the web page's batched panel read equals ``.../sampled`` key by key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_live import start_run, wait_run

from gateway import GatewaySettings

pytestmark = pytest.mark.integration


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
