"""Read-your-writes for the SDK over HTTP: ``GET /api/v1/projects/{p}/runs/{r}/committed?id=<stream id>``.

The SDK's HTTP transport learns the stream id of each frame it sent from the append's 202 (``ids``); at
``finish()`` it asks here whether a worker has committed its last one. The gateway waits on the partition's
commit announcements (:mod:`schemas.commits`, as the SDK does over Redis) for at most ``timeout`` seconds (the
query parameter, default and ceiling :data:`MAX_WAIT_S`), so a client polls with long requests, not many.

- 200 ``{"committed": true, "rows": n|null, "rejected": n|null}`` once a commit at or past ``id`` is announced;
- 200 ``{"committed": false, "reason": "..."}`` when the time is up, or at once when no worker of the deployment
  has a recent heartbeat (waiting longer would not help);
- 400 ``bad_param`` for a missing or malformed ``id``/``timeout``; the key needs ``write`` on the project (the
  scope the SDK's key has).
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

from aiohttp import web

from schemas.commits import id_tuple, live_workers, reached

from .errors import Refused
from .state import GW
from .write import path_ids

#: Longest a request waits (seconds); the client asks again until its own timeout.
MAX_WAIT_S = 10.0
#: One blocking read lasts at most this long, so worker liveness is looked at again now and then.
_BLOCK_S = 2.0


def _target(request: web.Request) -> str:
    raw = request.query.get("id", "")
    try:
        ms, seq = id_tuple(raw)
    except ValueError:
        raise Refused(400, "bad_param", f"id must be a stream id like 1700000000000-0, got {raw[:60]!r}") from None
    if not raw or ms < 0 or seq < 0 or ms >= 1 << 64 or seq >= 1 << 64:
        raise Refused(400, "bad_param", f"id must be a stream id like 1700000000000-0, got {raw[:60]!r}")
    return f"{ms}-{seq}"


def _timeout(request: web.Request) -> float:
    raw = request.query.get("timeout")
    if raw is None:
        return MAX_WAIT_S
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not 0 <= v < math.inf:
        raise Refused(400, "bad_param", f"timeout must be a number of seconds >= 0, got {raw[:60]!r}")
    return min(v, MAX_WAIT_S)


async def get_committed(request: web.Request) -> web.Response:
    gw = request.app[GW.KEY]
    project, run = path_ids(request)
    assert run is not None  # (the route names the run)
    await gw.auth.authorize(request.headers.get("Authorization"), project, "write", request.remote or "?")
    target, timeout = _target(request), _timeout(request)
    names = gw.settings.names
    key = names.committed(names.partition(project, run))
    deadline = time.monotonic() + timeout
    redis = gw.redis
    entries = cast("list[Any]", await redis.xrange(key, min=target, max="+"))
    while True:
        done = reached(entries, target, project, run)
        if done is not None:
            return web.json_response({"committed": True, "rows": done.rows, "rejected": done.rejected})
        beats = cast("dict[bytes, bytes]", await redis.hgetall(names.workers))
        if not live_workers(beats, time.time() * 1000):
            return web.json_response({"committed": False, "reason": "no worker is running for this deployment"})
        left = deadline - time.monotonic()
        if left <= 0:
            return web.json_response({"committed": False, "reason": f"not committed within {timeout:g} s"})
        top = cast("list[Any]", await redis.xrevrange(key, count=1))
        after = top[0][0] if top else b"0-0"
        if top and id_tuple(after) >= id_tuple(target):
            entries = cast("list[Any]", await redis.xrange(key, min=target, max="+"))
            continue
        reply: Any = await redis.xread({key: after}, block=max(1, int(min(left, _BLOCK_S) * 1000)))
        entries = [e for _k, es in (reply or []) for e in es]
