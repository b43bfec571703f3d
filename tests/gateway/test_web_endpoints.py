"""The endpoints the web page needs: ``GET /api/v1/projects`` and ``GET /api/v1/blobs/{sha256}`` (read-scoped, in the
authorization matrix's style), and the page's static files (no key: they hold no data)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

import ingest
from gateway import GatewaySettings

pytestmark = pytest.mark.integration

ROLES = ("none", "wrong", "revoked", "read", "write", "other", "admin")


def expected(role: str, ok: int) -> int:
    if role in ("none", "wrong", "revoked"):
        return 401
    return ok if role in ("read", "admin") else 403


@pytest.mark.both_backends
async def test_projects_and_blobs_authorization(gw_settings: GatewaySettings, keys: Any,
                                                make_client: Callable[..., Awaitable[Any]],
                                                worker: Callable[[], Any]) -> None:
    s = gw_settings
    worker()
    image = ingest.Image(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    html = ingest.Html("<p>hello</p><script>alert(1)</script>")
    for project in ("pa", "pb"):
        run = ingest.init(project=project, id="r1", redis_url=s.redis_url, namespace=s.namespace,
                          data_dir=s.data_dir / "client", settings={"partitions": s.partitions})
        run.log({"img": image, "page": html, "x": 1.0}, step=0)
        run.finish()
    c = await make_client(s)
    admin = {"Authorization": f"Bearer {keys.tokens['admin']}"}
    # The two runs may sit in different partitions, committed at different times: wait for both.
    for project, auth in (("pa", admin), ("pb", {"Authorization": f"Bearer {keys.tokens['other']}"})):
        for _ in range(300):
            r = await c.get(f"/api/v1/projects/{project}/runs/r1", headers=auth)
            if r.status == 200 and (await r.json())["state"] == "finished":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"run {project}/r1 was not committed")

    def headers(role: str) -> dict[str, str]:
        return {} if role == "none" else {"Authorization": f"Bearer {keys.tokens[role]}"}

    blob = f"/api/v1/blobs/{image.sha256}?project=pa&run=r1"
    wrong: list[str] = []
    for name, path in (("GET projects", "/api/v1/projects"), ("GET blob", blob)):
        for role in ROLES:
            resp = await c.get(path, headers=headers(role))
            await resp.read()
            want = 200 if role == "other" and path.endswith("projects") else expected(role, 200)
            if resp.status != want:
                wrong.append(f"{name} as {role}: {resp.status}, want {want}")
    assert not wrong, "\n".join(wrong)

    # A key sees its own project only (pb's admin key: pb; pa's read key: pa).
    r = await c.get("/api/v1/projects", headers=headers("read"))
    assert [p["name"] for p in (await r.json())["projects"]] == ["pa"]
    r = await c.get("/api/v1/projects", headers=headers("other"))
    (pb,) = (await r.json())["projects"]
    assert pb["name"] == "pb" and pb["runs"] == 1 and pb["updated_at"] > 0

    # The blob: its bytes, its type, immutable; HTML sandboxed so it never runs as the page's origin.
    r = await c.get(blob, headers=headers("read"))
    data = await r.read()
    assert hashlib.sha256(data).hexdigest() == image.sha256 and data.startswith(b"\x89PNG")
    assert r.headers["Content-Type"] == "image/png" and "immutable" in r.headers["Cache-Control"]
    r = await c.get(f"/api/v1/blobs/{html.sha256}?project=pa&run=r1", headers=headers("read"))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.headers["Content-Security-Policy"] == "sandbox" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert (await r.text()).startswith("<p>hello</p>")

    # Refusals: unknown blob, unknown run, malformed names; another project's key never reads pa's blob.
    for path, status in ((f"/api/v1/blobs/{'0' * 64}?project=pa&run=r1", 404),
                         (f"/api/v1/blobs/{image.sha256}?project=pa&run=nope", 404),
                         (f"/api/v1/blobs/{image.sha256[:10]}?project=pa&run=r1", 400),
                         (f"/api/v1/blobs/{image.sha256}", 400)):
        r = await c.get(path, headers=headers("read"))
        assert r.status == status, (path, await r.text())
        assert "error" in await r.json()
    r = await c.get(f"/api/v1/blobs/{image.sha256}?project=pb&run=r1", headers=headers("read"))
    assert r.status == 403


async def test_open_mode_lists_every_project(gw_settings: GatewaySettings,
                                             make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    r = await c.get("/api/v1/projects")
    assert r.status == 200 and (await r.json()) == {"projects": []}  # no worker has committed anything yet


async def test_the_page_is_served_without_a_key(gw_settings: GatewaySettings, keys: Any,
                                                make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    r = await c.get("/")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert 'src="static/app.js"' in await r.text() and r.headers["Cache-Control"] == "no-cache"
    for path, ctype in (("/static/app.js", "text/javascript"), ("/static/charts.js", "text/javascript"),
                        ("/static/vendor/uPlot.iife.min.js", "text/javascript"), ("/static/style.css", "text/css")):
        r = await c.get(path)
        assert r.status == 200 and r.headers["Content-Type"].startswith(ctype), path
        await r.read()
    r = await c.get("/static/vendor/uPlot.LICENSE")
    assert r.status == 200 and "MIT License" in await r.text()
    for path in ("/static/nope.js", "/static/../gateway/app.py", "/static/%2e%2e/gateway/app.py"):
        r = await c.get(path)
        assert r.status == 404, path
        assert (await r.json())["error"] in ("not_found", "http_404")
