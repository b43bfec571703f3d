"""The HTTP gateway and ``stepline status`` on a Redis Cluster: frames of runs on different masters accepted (one
``MULTI``/``EXEC`` per partition slot), the blob check (``WATCH`` + ``MULTI`` on the partition's slot), readiness,
the backlog sampler (a Lua script per partition) and the status command's per-partition view."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support.redis_cluster import plain
from support.worker_harness import WorkerFleet, wait_until

from gateway import GatewaySettings, create_app
from schemas import Log, Media, Names, encode_event, encode_frame_raw
from stepline.cli import main as stepline

pytestmark = pytest.mark.integration

FRAMES = {"Content-Type": "application/x-stepline-frames"}
PARTITIONS = 16

def body(frames: list[bytes]) -> bytes:
    import msgpack

    return bytes(msgpack.packb(frames))

async def test_gateway_and_status_on_a_cluster(cluster_url: str, namespace: str, data_dir: Path,
                                               cluster_fleet: WorkerFleet,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    settings = GatewaySettings(redis_url=cluster_url, namespace=namespace, partitions=PARTITIONS, data_dir=data_dir,
                               key_cache_s=0.0, backlog_refresh_s=0.1)
    names = Names(namespace, PARTITIONS)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        runs = [f"r{i}" for i in range(12)]
        assert len({names.partition("gw", r) for r in runs}) >= 6
        for r in runs:
            frames = [encode_frame_raw("gw", r, "prod", s, [encode_event(Log(ts=1.0 + s, data={"x": s}, step=s))])
                      for s in range(5)]
            resp = await client.post(f"/api/v1/projects/gw/runs/{r}/frames", data=body(frames), headers=FRAMES)
            got: dict[str, Any] = await resp.json()
            assert resp.status == 202 and got["accepted"] == 5, got
        img = b"\x89PNG fake image on a cluster"
        sha = hashlib.sha256(img).hexdigest()
        ref = Media("image", {"sha256": sha, "size": len(img), "format": "png", "width": 1, "height": 1})
        frame = encode_frame_raw("gw", "media", "m", 0, [encode_event(Log(ts=1.0, data={"img": ref}, step=0))])
        resp = await client.post("/api/v1/projects/gw/runs/media/frames", data=body([frame]), headers=FRAMES)
        assert resp.status == 422 and (await resp.json())["error"] == "missing_blob"
        resp = await client.put(f"/api/v1/blobs/{sha}?project=gw&run=media", data=img,
                                headers={"Content-Type": "application/octet-stream"})
        assert resp.status == 201
        resp = await client.post("/api/v1/projects/gw/runs/media/frames", data=body([frame]), headers=FRAMES)
        assert resp.status == 202, await resp.text()
        resp = await client.get("/readyz")
        assert resp.status == 200, await resp.text()
        with redis.RedisCluster.from_url(plain(cluster_url)) as rc:
            assert sum(rc.xlen(names.stream(names.partition("gw", r))) for r in set(runs)) >= 5 * len(runs)
        cluster_fleet.start()

        async def metrics() -> str:
            return await (await client.get("/metrics")).text()

        # The backlog sampler reads every partition (one Lua script per slot) and sees the worker catch up.
        def committed() -> bool:
            code = stepline(["status", "--redis-url", cluster_url, "--namespace", namespace, "--partitions",
                             str(PARTITIONS), "--data-dir", str(data_dir), "--format", "json"])
            assert code == 0
            rows = json.loads(capsys.readouterr().out)["partitions"]
            return all(row["lag"] == 0 for row in rows) and sum(row["stream_len"] for row in rows) == 5 * 12 + 1

        wait_until(committed, 30, "the worker to commit everything (stepline status: lag 0)", 0.3)
        text = await metrics()
        assert "stepline_stream_backlog_entries" in text and "stepline_gateway_redis_up 1" in text
    finally:
        await client.close()
