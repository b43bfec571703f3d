"""Media blobs through the gateway (issue 15, item 6): a blob is served only to readers of a run that logged it,
a frame may only reference blobs its project uploaded, uploads never referenced expire quickly, and each project's
uploads held in Redis have a quota.

Before: a read key of project A fetched project B's blob by naming one of A's runs; a frame of A could reference
B's blob (same partition) without ever sending its bytes; every upload was kept 7 days, with no quota.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import redis
from support.gateway_frames import FRAMES, body

import ingest
from gateway import GatewaySettings
from gateway.write import blob_owners_key, quota_keys
from schemas import Log, Media, encode_event, encode_frame_raw

#: Both storage backends (issue #18): blobs in the data directory, and in a bucket of the moto S3 server (the
#: ``storage`` fixture sets the gateway's settings and the variables the test's worker processes read).
pytestmark = [pytest.mark.integration, pytest.mark.both_backends]

OCTET = {"Content-Type": "application/octet-stream"}


def image_frame(project: str, run: str, sha: str, size: int, producer: str = "m", seq: int = 0) -> bytes:
    ref = Media("image", {"sha256": sha, "size": size, "format": "png", "width": 1, "height": 1})
    return encode_frame_raw(project, run, producer, seq, [encode_event(Log(ts=1.0, data={"img": ref}))])


async def wait_finished(c: Any, path: str, token: str) -> None:
    for _ in range(600):
        r = await c.get(path, headers={"Authorization": f"Bearer {token}"})
        if r.status == 200 and (await r.json())["state"] == "finished":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} was not committed")


async def test_a_blob_is_served_only_through_a_run_that_references_it(
        gw_settings: GatewaySettings, keys: Any, make_client: Callable[..., Awaitable[Any]],
        worker: Callable[[], Any]) -> None:
    s = gw_settings
    worker()
    img_a = ingest.Image(np.full((4, 4, 3), 10, dtype=np.uint8))
    img_b = ingest.Image(np.full((4, 4, 3), 200, dtype=np.uint8))
    in_table = ingest.Image(np.full((2, 2, 3), 99, dtype=np.uint8))
    assert len({img_a.sha256, img_b.sha256, in_table.sha256}) == 3

    def log(project: str, data: dict[str, Any]) -> None:
        run = ingest.init(project=project, id="r1", redis_url=s.redis_url, namespace=s.namespace,
                          data_dir=s.data_dir / "client", settings={"partitions": s.partitions})
        run.log(data, step=0)
        assert run.finish(timeout=30).ok

    # A's run holds B's sha as text (a string and a list of strings): text is not a reference.
    log("pa", {"img": img_a, "t": ingest.Table(columns=["im"], data=[[in_table]]), "note": img_b.sha256,
               "notes": [img_b.sha256, f"see {img_b.sha256}"]})
    log("pb", {"img": img_b})
    c = await make_client(s)
    await wait_finished(c, "/api/v1/projects/pa/runs/r1", keys.tokens["admin"])
    await wait_finished(c, "/api/v1/projects/pb/runs/r1", keys.tokens["other"])
    read_a = {"Authorization": f"Bearer {keys.tokens['read']}"}
    key_b = {"Authorization": f"Bearer {keys.tokens['other']}"}

    async def fetch(sha: str, project: str, headers: dict[str, str]) -> tuple[int, bytes]:
        r = await c.get(f"/api/v1/blobs/{sha}?project={project}&run=r1", headers=headers)
        return r.status, await r.read()

    # A's key, A's run: its own image, and the image inside its table.
    for sha in (img_a.sha256, in_table.sha256):
        status, data = await fetch(sha, "pa", read_a)
        assert status == 200 and hashlib.sha256(data).hexdigest() == sha
    # A's key naming A's run for B's blob: refused as unknown (the answer tells nothing of other projects).
    r = await c.get(f"/api/v1/blobs/{img_b.sha256}?project=pa&run=r1", headers=read_a)
    assert r.status == 404 and (await r.json())["error"] == "not_found"
    # B's key: its own blob through its run; not A's through B's run.
    status, data = await fetch(img_b.sha256, "pb", key_b)
    assert status == 200 and hashlib.sha256(data).hexdigest() == img_b.sha256
    assert (await fetch(img_a.sha256, "pb", key_b))[0] == 404
    # A second read (remembered grant) answers the same.
    assert (await fetch(img_a.sha256, "pa", read_a))[0] == 200
    assert (await fetch(img_b.sha256, "pa", read_a))[0] == 404


def same_partition_runs(s: GatewaySettings) -> tuple[str, str]:
    """A run of ``pa`` and a run of ``pb`` in one partition."""
    target = s.names.partition("pa", "ra")
    for i in range(1000):
        if s.names.partition("pb", f"rb{i}") == target:
            return "ra", f"rb{i}"
    raise AssertionError("no run in the same partition")


async def test_a_frame_references_only_blobs_its_project_uploaded(
        gw_settings: GatewaySettings, keys: Any, make_client: Callable[..., Awaitable[Any]]) -> None:
    s = gw_settings
    c = await make_client(s)
    ra, rb = same_partition_runs(s)
    write_a = {"Authorization": f"Bearer {keys.tokens['write']}"}
    key_b = {"Authorization": f"Bearer {keys.tokens['other']}"}
    data = b"\x89PNG image of project b"
    sha = hashlib.sha256(data).hexdigest()
    r = await c.put(f"/api/v1/blobs/{sha}?project=pb&run={rb}", data=data, headers={**OCTET, **key_b})
    assert r.status == 201
    # B's blob sits in A's partition, but A never sent its bytes: A cannot make it its own.
    r = await c.post(f"/api/v1/projects/pa/runs/{ra}/frames", data=body([image_frame("pa", ra, sha, len(data))]),
                     headers={**FRAMES, **write_a})
    got = await r.json()
    assert (r.status, got["error"], got["missing"]) == (422, "missing_blob", [sha])
    # Once A uploads the same bytes (stored once: 200), it may.
    r = await c.put(f"/api/v1/blobs/{sha}?project=pa&run={ra}", data=data, headers={**OCTET, **write_a})
    assert r.status == 200 and (await r.json())["stored"] is False
    r = await c.post(f"/api/v1/projects/pa/runs/{ra}/frames", data=body([image_frame("pa", ra, sha, len(data))]),
                     headers={**FRAMES, **write_a})
    assert r.status == 202, await r.text()
    r = await c.post(f"/api/v1/projects/pb/runs/{rb}/frames", data=body([image_frame("pb", rb, sha, len(data))]),
                     headers={**FRAMES, **key_b})
    assert r.status == 202, await r.text()


async def test_unreferenced_uploads_expire_quickly(gw_settings: GatewaySettings,
                                                   make_client: Callable[..., Awaitable[Any]]) -> None:
    s = gw_settings.replace(blob_pending_ttl_s=1.0, blob_ttl_s=3600.0)
    c = await make_client(s)
    rc = redis.Redis.from_url(s.redis_url)
    p = s.names.partition("p", "r")
    blobs = {name: (name.encode() * 50, hashlib.sha256(name.encode() * 50).hexdigest()) for name in ("kept", "gone")}
    for data, sha in blobs.values():
        r = await c.put(f"/api/v1/blobs/{sha}?project=p&run=r", data=data, headers=OCTET)
        assert r.status == 201
        assert 0 < rc.pttl(s.names.blob(p, sha)) <= 1000 and 0 < rc.pttl(blob_owners_key(s, p, sha)) <= 1000
    # A frame referencing "kept" extends it (and its owner set) to the blob TTL.
    data, sha = blobs["kept"]
    r = await c.post("/api/v1/projects/p/runs/r/frames", data=body([image_frame("p", "r", sha, len(data))]),
                     headers=FRAMES)
    assert r.status == 202, await r.text()
    assert 3_590_000 < rc.pttl(s.names.blob(p, sha)) <= 3_600_000
    assert 3_590_000 < rc.pttl(blob_owners_key(s, p, sha)) <= 3_600_000
    await asyncio.sleep(1.3)
    data, sha = blobs["gone"]
    assert not rc.exists(s.names.blob(p, sha)) and not rc.exists(blob_owners_key(s, p, sha))
    assert rc.exists(s.names.blob(p, blobs["kept"][1]))
    r = await c.post("/api/v1/projects/p/runs/r/frames",
                     data=body([image_frame("p", "r", sha, len(data), seq=1)]), headers=FRAMES)
    assert r.status == 422 and (await r.json())["error"] == "missing_blob"
    rc.close()


async def test_uploads_have_a_per_project_quota(gw_settings: GatewaySettings,
                                                make_client: Callable[..., Awaitable[Any]]) -> None:
    s = gw_settings.replace(blob_quota_bytes=1000, blob_pending_ttl_s=1.0, blob_ttl_s=3600.0)
    c = await make_client(s)

    def blob(tag: str, size: int) -> tuple[bytes, str]:
        data = (tag.encode() * size)[:size]
        return data, hashlib.sha256(data).hexdigest()

    async def put(project: str, data: bytes, sha: str, run: str = "r") -> Any:
        r = await c.put(f"/api/v1/blobs/{sha}?project={project}&run={run}", data=data, headers=OCTET)
        return r.status, await r.json(), r.headers.get("Retry-After")

    a, b, small = blob("a", 600), blob("b", 600), blob("s", 300)
    assert (await put("p", *a))[0] == 201
    status, got, retry = await put("p", *b)
    assert (status, got["error"]) == (429, "blob_quota") and retry == "1", (status, got, retry)
    assert (await put("p", *a))[0] == 200  # stored already: costs nothing, refused nothing
    p = s.names.partition("p", "r")
    same = next(f"r{i}" for i in range(1000) if s.names.partition("p", f"r{i}") == p)
    other = next(f"r{i}" for i in range(1000) if s.names.partition("p", f"r{i}") != p)
    assert (await put("p", *a, run=same))[0] == 200  # the same key: nothing added
    assert (await put("p", *a, run=other))[0] == 429  # another partition: another copy, over the quota
    assert (await put("q", *b))[0] == 201  # another project has its own quota
    q_run = next(f"r{i}" for i in range(1000) if s.names.partition("q", f"r{i}") == p)
    assert (await put("q", *a, run=q_run))[0] == 200  # p's bytes, stored already: no charge for q ...
    r = await c.post(f"/api/v1/projects/q/runs/{q_run}/frames", data=body([image_frame("q", q_run, a[1], 600)]),
                     headers=FRAMES)
    assert r.status == 202, await r.text()
    assert (await put("q", *blob("e", 300)))[0] == 429  # ... until q's frame keeps them: then q holds 1200
    # Referencing "a" keeps it (and its charge) for the blob TTL; the charge of the other upload expires.
    assert (await put("p", *small))[0] == 201
    r = await c.post("/api/v1/projects/p/runs/r/frames", data=body([image_frame("p", "r", a[1], 600)]),
                     headers=FRAMES)
    assert r.status == 202, await r.text()
    await asyncio.sleep(1.2)
    status, got, _ = await put("p", *blob("c", 300))
    assert status == 201, got  # 600 (a, referenced) + 300: "small" expired
    assert (await put("p", *blob("d", 200)))[0] == 429
    rc = redis.Redis.from_url(s.redis_url)
    zset, sizes = quota_keys(s, "p")
    assert int(rc.hget(sizes, "_total") or 0) == 900 and rc.pttl(zset) > 0 and rc.pttl(sizes) > 0
    rc.close()
