"""Failed authentication is throttled per client address and costs no metadata lookup after the first for the same
key id; in open mode only loopback ``Host`` names are served (issue 15, item 6).

Before: 1,000 requests with a bad key were 1,000 lookups of ``sl_api_keys`` and never throttled; in open mode any
``Host`` was served, so a page whose name was rebound to 127.0.0.1 could read everything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.gateway_frames import FRAMES, body, frames_for

from gateway import GatewaySettings
from gateway.state import GW

pytestmark = pytest.mark.integration

UNKNOWN = "slk_0123456789abcdef_" + "A" * 43  # well formed, no such key id


def counting(c: Any) -> list[str]:
    """Count the key-row lookups the gateway of client ``c`` makes (by key id)."""
    store = c.server.app[GW.KEY].auth.store
    seen: list[str] = []
    real = store.lookup

    def lookup(kid: str) -> Any:
        seen.append(kid)
        return real(kid)

    store.lookup = lookup
    return seen


async def test_bad_keys_cost_one_lookup_per_key_id(gw_settings: GatewaySettings, keys: Any,
                                                   make_client: Callable[..., Awaitable[Any]]) -> None:
    # No throttle here: the negative cache alone must keep the metadata store out of a flood of bad keys.
    c = await make_client(gw_settings.replace(auth_fail_per_s=0.0))
    seen = counting(c)
    statuses: dict[int, int] = {}
    for i in range(1000):
        token = UNKNOWN if i % 2 else keys.tokens["wrong"]  # an unknown id; a known id with a wrong secret
        r = await c.get("/api/v1/projects/pa/runs", headers={"Authorization": f"Bearer {token}"})
        await r.read()
        statuses[r.status] = statuses.get(r.status, 0) + 1
    assert statuses == {401: 1000}
    assert sorted(seen) == sorted({UNKNOWN.split("_")[1], keys.tokens["wrong"].split("_")[1]}), len(seen)
    # A good key still works (key_cache_s=0: looked up again, as a revocation must be seen), and so does a
    # malformed one cost nothing.
    r = await c.get("/api/v1/projects/pa/runs", headers={"Authorization": f"Bearer {keys.tokens['read']}"})
    assert r.status == 200
    n = len(seen)
    r = await c.get("/api/v1/projects/pa/runs", headers={"Authorization": "Bearer nonsense"})
    assert r.status == 401 and len(seen) == n


async def test_failed_authentication_is_throttled_per_address(gw_settings: GatewaySettings, keys: Any,
                                                              make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings.replace(auth_fail_burst=20.0, auth_fail_per_s=0.5))
    seen = counting(c)
    statuses: dict[int, int] = {}
    retry_after: set[str] = set()
    for i in range(1000):
        # A new unknown key id every time: without the throttle each would be a lookup.
        token = f"slk_{i:016x}_secret"
        r = await c.get("/api/v1/projects/pa/runs", headers={"Authorization": f"Bearer {token}"})
        body_ = await r.json()
        statuses[r.status] = statuses.get(r.status, 0) + 1
        if r.status == 429:
            assert body_["error"] == "auth_throttled"
            retry_after.add(r.headers["Retry-After"])
    assert statuses.get(401, 0) <= 22 and statuses.get(429, 0) >= 978, statuses
    assert len(seen) <= 22, len(seen)
    assert retry_after and all(1 <= int(v) <= 2 for v in retry_after), retry_after
    # While throttled, even a good key from that address waits (it is checked before any lookup) ...
    r = await c.get("/api/v1/projects/pa/runs", headers={"Authorization": f"Bearer {keys.tokens['read']}"})
    assert r.status == 429 and "Retry-After" in r.headers
    # ... and another address is not affected.
    auth = c.server.app[GW.KEY].auth
    assert (await auth.authorize(f"Bearer {keys.tokens['read']}", "pa", "read", "10.1.2.3")).project == "pa"
    m = await (await c.get("/metrics")).text()
    assert 'stepline_gateway_rejections_total{reason="auth_throttled"}' in m


async def test_open_mode_answers_loopback_host_names_only(gw_settings: GatewaySettings,
                                                          make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    port = c.server.port
    for host in ("localhost", f"localhost:{port}", "LocalHost", "127.0.0.1", f"127.0.0.1:{port}", "127.8.9.10",
                 "[::1]", f"[::1]:{port}"):
        r = await c.get("/api/v1/projects", headers={"Host": host})
        assert r.status == 200, (host, r.status, await r.text())
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io", "0.0.0.0",
                 "192.168.1.10", "[::ffff:127.0.0.1]", "[fe80::1]:80", "localhost:http"):
        for path in ("/api/v1/projects", "/", "/static/app.js", "/metrics", "/api/v1/projects/p/runs/r"):
            r = await c.get(path, headers={"Host": host})
            assert r.status == 421, (host, path, r.status)
            assert (await r.json())["error"] == "bad_host"
        r = await c.post("/api/v1/projects/open/runs/r/frames", data=body(frames_for("open", "r")),
                         headers={**FRAMES, "Host": host})
        assert r.status == 421, host


async def test_with_keys_any_host_is_served(gw_settings: GatewaySettings, keys: Any,
                                            make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    r = await c.get("/api/v1/projects", headers={"Host": "stepline.example.org",
                                                 "Authorization": f"Bearer {keys.tokens['read']}"})
    assert r.status == 200, await r.text()
