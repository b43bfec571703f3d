"""``python -m workers.health live|ready``: the worker's probes (Kubernetes exec probes, compose health checks).

- ``live``: the heartbeat file (``STEPLINE_HEALTH_FILE``), touched by the worker's membership loop every
  ``lease_ttl/3`` seconds whether or not Redis answers, is fresh: the event loop is not wedged. Redis or the
  database being down does not fail liveness (a restart would not help; the worker waits and retries).
- ``ready``: the worker's own heartbeat in Redis (``<ns>:workers``, keyed by ``STEPLINE_WORKER_ID``) is younger
  than the lease TTL: it is a live member and takes its share of partitions. Rollouts and the
  PodDisruptionBudget count only ready workers.

Exit status 0 = healthy, 1 = not (the reason on stderr).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from typing import cast

from schemas.clients import async_redis

from .settings import WorkerSettings


def live(s: WorkerSettings) -> str | None:
    if s.health_file is None:
        return "STEPLINE_HEALTH_FILE is not set"
    try:
        age = time.time() - s.health_file.stat().st_mtime
    except OSError as e:
        return f"no heartbeat file: {e}"
    limit = s.lease_ttl_s + 5.0  # three renewal periods of lease_ttl/3, plus slack
    return None if age <= limit else f"heartbeat file is {age:.1f}s old (limit {limit:.1f}s)"


async def ready(s: WorkerSettings, explicit_id: bool) -> str | None:
    """Without ``STEPLINE_WORKER_ID`` the worker's id is ``<hostname>-<pid>-<random>``: look for this host's."""
    r = async_redis(s.redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        if explicit_id:
            raw = await r.hget(s.names.workers, s.worker_id)
            beats = [raw] if raw is not None else []
        else:
            prefix = f"{socket.gethostname()}-".encode()
            everyone = cast("dict[bytes, bytes]", await r.hgetall(s.names.workers))
            beats = [hb for w, hb in everyone.items() if w.startswith(prefix)]
    finally:
        await r.aclose()
    if not beats:
        return f"no heartbeat of this worker in Redis ({s.names.workers})"
    age_ms = time.time() * 1000 - max(int(hb) for hb in beats)
    return None if age_ms <= s.lease_ttl_ms else f"heartbeat in Redis is {age_ms:.0f} ms old"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["live"], ["ready"]):
        print("usage: python -m workers.health live|ready", file=sys.stderr)
        return 2
    s = WorkerSettings.from_env()
    try:
        problem = live(s) if args[0] == "live" else asyncio.run(ready(s, "STEPLINE_WORKER_ID" in os.environ))
    except Exception as e:  # Redis unreachable, bad URL: not ready
        problem = f"{type(e).__name__}: {e}"
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
