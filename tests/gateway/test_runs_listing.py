"""The runs listing as the web page's runs table reads it: ``values=tagged`` sends NaN, ±inf and ints past 2**53
in config and summary exactly (as ``page_info`` does), the default JSON stays as it was, and a bad ``values`` is
refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway import GatewaySettings
from workers.metastore import Commit, MetaStore, RunUpdate


def commit_run(s: GatewaySettings, project: str, run: str, config: dict[str, Any], summary: dict[str, Any]) -> None:
    store = MetaStore(s.metadata_url)
    try:
        epoch, _ = store.take_partition(0, "test")
        info = {"config": config, "summary": summary, "columns": [], "warnings": [], "conflicts": [],
                "rejected": {}, "metrics": []}
        c = Commit(0, epoch, "1-0")
        c.runs.append(RunUpdate(project=project, run=run, partition=0, name=run, state="finished",
                                created_at=1000.0, updated_at=1001.0, last_step=None, rows=0, rejected=0,
                                info=info, state_blob=b""))
        store.commit(c)
    finally:
        store.close()


async def test_tagged_values_in_the_runs_listing(gw_settings: GatewaySettings,
                                                 make_client: Callable[..., Awaitable[Any]]) -> None:
    nan, inf = float("nan"), float("inf")
    commit_run(gw_settings, "tg", "r1", {"lr": inf, "opt": {"eps": nan, "lo": -inf, "n": 2**60}, "s": "Infinity"},
               {"loss": nan, "hist": [1.0, nan]})
    c = await make_client(gw_settings)
    r = await c.get("/api/v1/projects/tg/runs", params={"values": "tagged"})
    assert r.status == 200, await r.text()
    (run,) = (await r.json())["runs"]
    assert run["config"] == {"lr": {"_type": "nonfinite", "value": "Infinity"},
                             "opt": {"eps": {"_type": "nonfinite", "value": "NaN"},
                                     "lo": {"_type": "nonfinite", "value": "-Infinity"},
                                     "n": {"_type": "bigint", "value": str(2**60)}},
                             "s": "Infinity"}  # a string stays a string
    assert run["summary"] == {"loss": {"_type": "nonfinite", "value": "NaN"},
                              "hist": [1.0, {"_type": "nonfinite", "value": "NaN"}]}
    # Without it the JSON convention of every read route: NaN null, ±inf the strings.
    (plain,) = (await (await c.get("/api/v1/projects/tg/runs")).json())["runs"]
    assert plain["config"]["lr"] == "Infinity" and plain["config"]["opt"]["eps"] is None
    for params, says in (({"values": "exact"}, "values must be plain or tagged"),
                         ({"values": "tagged", "format": "msgpack"}, "values=tagged is for format=json")):
        r = await c.get("/api/v1/projects/tg/runs", params=params)
        assert r.status == 400
        body = await r.json()
        assert body["error"] == "bad_param" and says in body["message"]
