"""Read-your-writes: wait until a worker has committed everything a run sent (``run.finish()``).

The SDK does not import the read side. It waits on what the workers publish instead: after every fenced commit
the partition's owner adds an entry to ``<ns>:{pNN}:committed`` (:meth:`schemas.Names.committed`) whose id is the
committed offset, with ``"<rows> <rejected>"`` under ``<project>/<run>`` for each run finished in that commit. Once
an entry's id reaches the stream id of the run's last frame (its ``Finish``), that frame and everything before it
is in the metadata database and the segment files: rows, summary and rejections are readable through ``Api``.

The wait is a blocking ``XREAD`` (no polling), bounded by ``ClientSettings.commit_timeout_s``; it gives up at once,
with the reason, when no worker of the namespace has a recent heartbeat. It never raises for a missing commit: the
caller reports a warning (the data is safe in Redis and is committed when a worker comes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from schemas.clients import REDIS_ERRORS, AsyncRedis, SyncRedis
from schemas.commits import id_tuple, live_workers, reached

from .settings import ClientSettings

#: One blocking read lasts at most this long, so worker liveness is looked at again now and then.
_BLOCK_S = 2.0


@dataclass(frozen=True, slots=True)
class Committed:
    """The outcome of a wait: committed or not (``reason`` says why not), and the run's counts when known."""

    ok: bool
    reason: str = ""
    rows: int | None = None
    rejected: int | None = None


class _Wait:
    """What both the sync and the async wait share: keys, the target id, and reading the replies."""

    def __init__(self, settings: ClientSettings, partition: int, project: str, run: str, last_id: str) -> None:
        names = settings.names
        self.key = names.committed(partition)
        self.workers = names.workers
        self.project, self.run = project, run
        self.target = id_tuple(last_id)
        self.last_id = last_id
        self.settings = settings

    def reached(self, entries: Sequence[Any]) -> Committed | None:
        done = reached(entries, self.last_id, self.project, self.run)
        return None if done is None else Committed(True, rows=done.rows, rejected=done.rejected)

    def no_worker(self, beats: dict[bytes, bytes]) -> Committed | None:
        # Heartbeats are the workers' wall clocks in ms (as the workers compare them among themselves).
        if live_workers(beats, time.time() * 1000):
            return None
        return Committed(False, f"no worker is running for namespace {self.settings.namespace!r} on "
                                f"{self.settings.redis_url}")

    def timeout(self, timeout: float) -> Committed:
        return Committed(False, f"no worker committed it within {timeout:g} s")


def wait_sync(client: SyncRedis, settings: ClientSettings, partition: int, project: str, run: str, last_id: str,
              timeout: float) -> Committed:
    """Block until the partition's committed offset reaches ``last_id`` (or give up, with the reason)."""
    w = _Wait(settings, partition, project, run, last_id)
    deadline = time.monotonic() + timeout
    try:
        entries = cast("list[Any]", client.xrange(w.key, min=last_id, max="+"))
        while True:
            done = w.reached(entries)
            if done is not None:
                return done
            gone = w.no_worker(cast("dict[bytes, bytes]", client.hgetall(w.workers)))
            if gone is not None:
                return gone
            left = deadline - time.monotonic()
            if left <= 0:
                return w.timeout(timeout)
            top = cast("list[Any]", client.xrevrange(w.key, count=1))
            after = top[0][0] if top else b"0-0"
            if top and id_tuple(after) >= w.target:
                entries = cast("list[Any]", client.xrange(w.key, min=last_id, max="+"))
                continue
            reply: Any = client.xread({w.key: after}, block=max(1, int(min(left, _BLOCK_S) * 1000)))
            entries = [e for _k, es in (reply or []) for e in es] if reply else []
            entries = [e for e in entries if id_tuple(e[0]) >= w.target]
    except REDIS_ERRORS as e:
        return Committed(False, f"cannot read the commit announcements ({type(e).__name__}: {e})")


async def wait_async(client: AsyncRedis, settings: ClientSettings, partition: int, project: str, run: str,
                     last_id: str, timeout: float) -> Committed:  # noqa: ASYNC109
    """:func:`wait_sync` for asyncio programs."""
    w = _Wait(settings, partition, project, run, last_id)
    deadline = time.monotonic() + timeout
    try:
        entries = cast("list[Any]", await client.xrange(w.key, min=last_id, max="+"))
        while True:
            done = w.reached(entries)
            if done is not None:
                return done
            gone = w.no_worker(cast("dict[bytes, bytes]", await client.hgetall(w.workers)))
            if gone is not None:
                return gone
            left = deadline - time.monotonic()
            if left <= 0:
                return w.timeout(timeout)
            top = cast("list[Any]", await client.xrevrange(w.key, count=1))
            after = top[0][0] if top else b"0-0"
            if top and id_tuple(after) >= w.target:
                entries = cast("list[Any]", await client.xrange(w.key, min=last_id, max="+"))
                continue
            reply: Any = await client.xread({w.key: after}, block=max(1, int(min(left, _BLOCK_S) * 1000)))
            entries = [e for _k, es in (reply or []) for e in es] if reply else []
            entries = [e for e in entries if id_tuple(e[0]) >= w.target]
    except REDIS_ERRORS as e:
        return Committed(False, f"cannot read the commit announcements ({type(e).__name__}: {e})")
