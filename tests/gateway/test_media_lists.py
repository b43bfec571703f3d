"""Images from tensors through the gateway (issue #20 item 2): a list of images under one key, logged as W&B logs
it, reads back through the history route as a list of image references, and every image's blob is served to a
reader of the run; so does an image set in the summary."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

import ingest
from gateway import GatewaySettings

pytestmark = [pytest.mark.integration, pytest.mark.both_backends]  # history on the data directory and a bucket


async def test_a_list_of_images_reads_back_and_each_blob_is_served(
    gw_settings: GatewaySettings, keys: Any, make_client: Callable[..., Awaitable[Any]], worker: Callable[[], Any]
) -> None:
    torch = pytest.importorskip("torch") if __import__("os").environ.get("CI") != "true" else __import__("torch")
    from PIL import Image as PILImage

    s = gw_settings
    worker()
    # numpy, not torch: W&B's tensor rule stretches a tensor by its own min and max (a constant one is black)
    imgs = [ingest.Image(np.full((3, 4, 5), i / 4), caption=f"c{i}") for i in range(3)]
    best = ingest.Image(torch.rand(1, 6, 6))

    def log() -> None:
        run = ingest.init(
            project="pa",
            id="r1",
            redis_url=s.redis_url,
            namespace=s.namespace,
            data_dir=s.data_dir / "client",
            settings={"partitions": s.partitions},
        )
        run.log({"examples": imgs}, step=0)
        run.summary["best"] = best
        assert run.finish(timeout=30).ok

    await asyncio.to_thread(log)
    c = await make_client(s)
    auth = {"Authorization": f"Bearer {keys.tokens['read']}"}
    for _ in range(600):
        r = await c.get("/api/v1/projects/pa/runs/r1", headers=auth)
        if r.status == 200 and (await r.json())["state"] == "finished":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("run not committed")
    r = await c.get("/api/v1/projects/pa/runs/r1/history", params={"keys": "examples", "format": "json"}, headers=auth)
    assert r.status == 200
    (row,) = await r.json()
    value = row["examples"]
    assert [v["_type"] for v in value] == ["image"] * 3
    assert [v["caption"] for v in value] == ["c0", "c1", "c2"]
    assert [v["sha256"] for v in value] == [i.sha256 for i in imgs]
    info = await (await c.get("/api/v1/projects/pa/runs/r1", headers=auth)).json()
    assert info["summary"]["best"]["sha256"] == best.sha256
    for i, img in enumerate([*imgs, best]):
        r = await c.get(f"/api/v1/blobs/{img.sha256}", params={"project": "pa", "run": "r1"}, headers=auth)
        data = await r.read()
        assert r.status == 200, (i, data)
        assert hashlib.sha256(data).hexdigest() == img.sha256
        pixels = np.asarray(PILImage.open(io.BytesIO(data)))
        if i < 3:  # CHW float i/4 everywhere: RGB 5x4 of int(i/4 * 255)
            assert pixels.shape == (4, 5, 3) and (pixels == int(i / 4 * 255)).all()
        else:
            assert pixels.shape == (6, 6)  # 1xHxW: grayscale
