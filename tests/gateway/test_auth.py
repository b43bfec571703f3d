"""Authorization matrix: every endpoint × every kind of caller gives the right status, and nothing is written
where it must not be. Plus open mode (no keys: loopback only) and the operational endpoints.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from support.gateway_frames import FRAMES, body, frames_for, stream_len

from gateway import GatewaySettings, create_app
from ingest.settings import SettingsError

pytestmark = pytest.mark.integration

ROLES = ("none", "wrong", "revoked", "read", "write", "other", "admin")
WRITE_OK = {"write", "admin"}
READ_OK = {"read", "admin"}


def expected(role: str, scope: str, ok: int) -> int:
    if role in ("none", "wrong", "revoked"):
        return 401
    if role == "other":
        return 403
    return ok if role in (WRITE_OK if scope == "write" else READ_OK) else 403


async def wait_committed(client: Any, token: str, path: str, rows: int) -> None:
    for _ in range(300):
        r = await client.get(path, headers={"Authorization": f"Bearer {token}"})
        if r.status == 200 and (await r.json())["rows"] == rows:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} was not committed")


async def test_authorization_matrix(gw_settings: GatewaySettings, keys: Any, make_client: Callable[..., Awaitable[Any]],
                                    worker: Callable[[], Any]) -> None:
    c = await make_client(gw_settings)
    admin = {"Authorization": f"Bearer {keys.tokens['admin']}"}
    r = await c.post("/api/v1/projects/pa/runs/r1/frames", data=body(frames_for("pa", "r1")),
                     headers={**FRAMES, **admin})
    assert r.status == 202, await r.text()
    worker()
    await wait_committed(c, keys.tokens["admin"], "/api/v1/projects/pa/runs/r1", 5)

    names = gw_settings.names
    rc = redis.Redis.from_url(gw_settings.redis_url)
    before = stream_len(rc, names, "pa", "rm")

    def headers(role: str) -> dict[str, str]:
        return {} if role == "none" else {"Authorization": f"Bearer {keys.tokens[role]}"}

    async def post_frames(role: str) -> int:
        fr = frames_for("pa", "rm", producer=f"p-{role}")
        resp = await c.post("/api/v1/projects/pa/runs/rm/frames", data=body(fr), headers={**FRAMES, **headers(role)})
        return int(resp.status)

    async def put_blob(role: str) -> int:
        data = f"blob of {role}".encode()
        sha = hashlib.sha256(data).hexdigest()
        resp = await c.put(f"/api/v1/blobs/{sha}?project=pa&run=rm", data=data,
                           headers={"Content-Type": "application/octet-stream", **headers(role)})
        return int(resp.status)

    def getter(path: str) -> Callable[[str], Awaitable[int]]:
        async def get(role: str) -> int:
            resp = await c.get(path, headers=headers(role))
            await resp.read()  # a streamed reply is read to its end
            return int(resp.status)
        return get

    base = "/api/v1/projects/pa/runs"
    endpoints: list[tuple[str, str, int, Callable[[str], Awaitable[int]]]] = [
        ("POST frames", "write", 202, post_frames),
        ("PUT blob", "write", 201, put_blob),
        ("GET runs", "read", 200, getter(base)),
        ("GET run", "read", 200, getter(f"{base}/r1")),
        ("GET history", "read", 200, getter(f"{base}/r1/history?keys=i")),
        ("GET scan", "read", 200, getter(f"{base}/r1/scan")),
        ("GET sampled", "read", 200, getter(f"{base}/r1/sampled?key=i")),
        ("GET sections", "read", 200, getter(f"{base}/r1/sections")),
    ]
    wrong: list[str] = []
    for name, scope, ok, call in endpoints:
        for role in ROLES:
            got = await call(role)
            want = expected(role, scope, ok)
            if got != want:
                wrong.append(f"{name} as {role}: {got}, want {want}")
    assert not wrong, "\n".join(wrong)

    # Nothing written where it must not be: exactly the frames of the two allowed POSTs, only their blobs.
    n_frames = len(frames_for("pa", "rm"))
    assert stream_len(rc, names, "pa", "rm") - before == n_frames * len(WRITE_OK)
    p = names.partition("pa", "rm")
    for role in ROLES:
        sha = hashlib.sha256(f"blob of {role}".encode()).hexdigest()
        assert bool(rc.exists(names.blob(p, sha))) == (role in WRITE_OK), role
    # Project B's admin key cannot read project A's run list (403 above); it can read its own project.
    r = await c.get("/api/v1/projects/pb/runs", headers=headers("other"))
    assert r.status == 200
    rc.close()


async def test_revoking_a_key_takes_effect(gw_settings: GatewaySettings, keys: Any,
                                           make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)  # key_cache_s=0: every request looks the key up
    h = {"Authorization": f"Bearer {keys.tokens['write']}", **FRAMES}
    r = await c.post("/api/v1/projects/pa/runs/rv/frames", data=body(frames_for("pa", "rv")), headers=h)
    assert r.status == 202
    (kid,) = [k.id for k in keys.store.list("pa") if keys.tokens["write"].startswith(f"slk_{k.id}_")]
    assert keys.store.revoke(kid)
    r = await c.post("/api/v1/projects/pa/runs/rv/frames", data=body(frames_for("pa", "rv", seq=99)), headers=h)
    assert r.status == 401 and (await r.json())["error"] == "revoked_key"


async def test_operational_endpoints_need_no_key(gw_settings: GatewaySettings, keys: Any,
                                                 make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    assert (await c.get("/healthz")).status == 200
    r = await c.get("/readyz")
    assert r.status == 200 and (await r.json())["redis"] == "ok"
    await c.post("/api/v1/projects/pa/runs/x/frames", data=b"", headers=FRAMES)  # 401: counted as a rejection
    r = await c.get("/metrics")
    text = await r.text()
    assert r.status == 200 and 'stepline_gateway_rejections_total{reason="missing_key"} 1' in text
    assert "stepline_stream_backlog_entries" in text and "stepline_gateway_request_seconds_bucket" in text


async def test_open_mode_serves_loopback_without_keys(gw_settings: GatewaySettings,
                                                      make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    r = await c.post("/api/v1/projects/open/runs/r/frames", data=body(frames_for("open", "r")), headers=FRAMES)
    assert r.status == 202, await r.text()
    r = await c.post("/api/v1/projects/open/runs/r/frames", data=body(frames_for("open", "r")),
                     headers={**FRAMES, "Authorization": "Bearer slk_0123456789abcdef_nope"})
    assert r.status == 401  # a key presented in open mode is still checked


async def test_no_keys_and_a_public_address_is_refused(gw_settings: GatewaySettings) -> None:
    from aiohttp.test_utils import TestServer

    server = TestServer(create_app(gw_settings.replace(host="0.0.0.0")))
    with pytest.raises(SettingsError, match="without API keys"):
        await server.start_server()
    await server.close()


def test_cli_refuses_a_public_address_without_keys(gw_settings: GatewaySettings,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import main

    rc = main(["--host", "0.0.0.0", "--port", "0", "--data-dir", str(gw_settings.data_dir),
               "--redis-url", gw_settings.redis_url])
    assert rc == 2 and "without API keys" in capsys.readouterr().err


def test_keys_cli(gw_settings: GatewaySettings, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import keys_main

    d = ["--data-dir", str(gw_settings.data_dir)]
    assert keys_main([*d, "create", "proj", "--scopes", "read,write"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("slk_")
    assert keys_main([*d, "list", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert '"project": "proj"' in out and token.split("_", 2)[2] not in out  # the secret is never listed
    kid = token.split("_")[1]
    assert keys_main([*d, "revoke", kid]) == 0
    assert keys_main([*d, "revoke", kid]) == 1
    assert keys_main([*d, "create", "proj", "--scopes", "root"]) == 2
