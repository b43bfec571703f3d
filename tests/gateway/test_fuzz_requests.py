"""Requests into the gateway never get a 5xx or hang; every refusal is a 4xx JSON error; every accepted write is
stored exactly and committed by the worker; every read is well formed (``tests/support/request_fuzz.py`` says
what is generated and checked; ``bench/fuzz.py --target requests`` runs the same for longer).

The seed is fixed and printed (``pytest -s``); a failure reproduces with
``python bench/fuzz.py --target requests --seed SEED --count N``. Failures matching a product bug already known
(``support.fuzz_report.KNOWN``) are counted, not failed; each has a strict-xfail reproducer (below for the
gateway's, ``tests/unit/test_fuzz_found.py`` for the rest).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from support.fuzz_report import Findings
from support.gateway_frames import FRAMES
from support.request_fuzz import Committer, drive_requests

from gateway import GatewaySettings
from schemas import Log, encode_event, encode_frame_raw

pytestmark = pytest.mark.integration
SEED = 11


def test_fuzzed_requests(redis_url: str, namespace: str, tmp_path: Path) -> None:
    print(f"request fuzz: seed={SEED}, 2500 requests")
    res = drive_requests(SEED, 2_500, tmp_path, redis_url, namespace)
    print(res.line())
    assert not res.crashes.unknown(), res.crashes.report()
    # The sample reaches every outcome: writes accepted and committed, refusals of many kinds, reads answered.
    assert res.frames_accepted > 300 and res.worker_entries >= res.frames_accepted, res.line()
    assert res.by_status[200] > 250 and res.seeded_scans_checked >= 5 and res.blobs_stored > 10, res.line()
    codes = {k.split()[-1] for k in res.refusals}
    assert {"bad_body", "bad_encoding", "decoded_too_large", "unsupported_media_type", "run_mismatch", "malformed",
            "invalid_key", "forbidden", "bad_param", "not_found", "bad_host", "missing_blob",
            "line_too_long", "bad_http"} <= codes, codes  # the last two: raw requests aiohttp's parser refuses


async def _run_with_data(s: GatewaySettings, c: Any) -> str:
    """A committed run ``pa/r`` with a number column, for the read routes."""
    frame = encode_frame_raw("pa", "r", "x", 0, [encode_event(Log(ts=1.0 + i, data={"f": i * 0.5}))
                                                 for i in range(3)])
    r = await c.post("/api/v1/projects/pa/runs/r/frames", data=msgpack.packb([frame]), headers=FRAMES)
    assert r.status == 202
    rc = aioredis.Redis.from_url(s.redis_url)
    committer = Committer(s.replace(partitions=s.partitions), rc, Findings())
    await committer.step()
    committer.close()
    await rc.aclose()
    return "/api/v1/projects/pa/runs/r"


async def test_static_paths_that_are_not_files_are_404(gw_settings: GatewaySettings,
                                                       make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    for path in ("/static/%00", "/static/" + "a" * 300):
        r = await c.get(path)
        assert r.status == 404, (path, r.status, await r.text())


async def test_numbers_past_int64_in_parameters_are_400(gw_settings: GatewaySettings,
                                                        make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings.replace(partitions=4))
    base = await _run_with_data(gw_settings.replace(partitions=4), c)
    big = str(2**63)
    bad = []
    for path, params in ((base + "/history", {"min_step": big}), (base + "/history", {"max_step": big}),
                         (base, {"rejections": "9" * 30}), (base + "/sampled", {"key": "f", "x_min": "inf"}),
                         (base + "/sampled", {"key": "f", "x_min": str(2**63 - 1), "x_max": str(2**63 - 1)}),
                         (base + "/scan", {"min_step": big})):
        r = await c.get(path, params=params)
        try:
            await r.read()
        except Exception as e:  # a scan cut mid-stream
            bad.append((path, params, type(e).__name__))
            continue
        body = await r.text()
        if r.status != 400 or "bad_param" not in body or not any(name in body for name in params if name != "key"):
            bad.append((path, params, r.status, body[:200]))
    assert not bad, bad
