"""Backpressure: how many entries of each partition stream the workers have not committed yet.

Streams keep committed entries for the replay window (``XTRIM MINID`` behind the committed offset and the
retention), so ``XLEN`` counts history, not backlog. The backlog is *entries after the committed offset*,
estimated without reading entries: every ``backlog_refresh_s`` the sampler reads, per partition, the stream's
``entries-added`` counter and ``last-generated-id`` (``XINFO STREAM`` inside a script, so no entry crosses the
network) and the committed offset (``sl_partitions``). With samples ``(last id, entries added)`` over time,

    backlog = entries_added(now) - entries_added(newest sample whose last id <= committed offset)

which over-estimates by at most the entries added during one refresh interval. Before such a sample exists
(just after start-up, with the workers far behind), the estimate is ``XLEN``, also an over-estimate. Frames the
gateway appends between samples are added to the estimate at once, so a burst cannot slip through one interval.
Over-estimating errs towards 429, which is the safe side for Redis memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from schemas import Names
from schemas.clients import REDIS_ERRORS, AsyncRedis
from schemas.store import partitions

from .metrics import Metrics

log = logging.getLogger("stepline.gateway")

_INFO = """
local ok, t = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return {0, '0-0', 0} end
local o = {0, '0-0', 0}
for i = 1, #t, 2 do
  if t[i] == 'length' then o[1] = t[i + 1]
  elseif t[i] == 'last-generated-id' then o[2] = t[i + 1]
  elseif t[i] == 'entries-added' then o[3] = t[i + 1] end
end
return o
"""
_MAX_SAMPLES = 4096


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class _Part:
    samples: deque[tuple[tuple[int, int], int]] = field(default_factory=deque)
    added: int = 0
    estimate: int = 0


class Backlog:
    """Per-partition backlog estimates, refreshed by :meth:`run`; :meth:`over` answers a request in O(1)."""

    def __init__(self, names: Names, redis: AsyncRedis, engine: Engine, metrics: Metrics,
                 high_water: int) -> None:
        self.names = names
        self.redis = redis
        self.engine = engine
        self.metrics = metrics
        self.high_water = high_water
        self._parts = [_Part() for _ in range(names.partitions)]

    def over(self, p: int) -> bool:
        return self._parts[p].estimate > self.high_water

    def added(self, p: int, n: int) -> None:
        self._parts[p].estimate += n
        self.metrics.backlog[p] = self._parts[p].estimate

    def _offsets(self) -> dict[int, tuple[str, float | None]]:
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database:
            from pathlib import Path

            if not Path(url.database).exists():
                return {}
        if not inspect(self.engine).has_table(partitions.name):
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(partitions.c.p, partitions.c.offset, partitions.c.updated_at)).all()
        return {int(r.p): (str(r.offset), r.updated_at) for r in rows}

    async def sample(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.names.partitions):
            pipe.eval(_INFO, 1, self.names.stream(p))
        infos = await pipe.execute()
        offsets = await asyncio.to_thread(self._offsets)
        now = time.time()
        for p, (length, last, added) in enumerate(infos):
            last_id = id_tuple(last.decode() if isinstance(last, bytes) else str(last))
            off_raw, updated = offsets.get(p, ("0-0", None))
            off = id_tuple(off_raw)
            part = self._parts[p]
            if int(added) < part.added:  # the stream was deleted and made again
                part.samples.clear()
            part.added = int(added)
            part.samples.append((last_id, part.added))
            if len(part.samples) > _MAX_SAMPLES:
                part.samples.popleft()
            # Keep only the newest sample at or before the offset (and everything after it).
            while len(part.samples) > 1 and part.samples[1][0] <= off:
                part.samples.popleft()
            if off >= last_id:
                est = 0
            elif part.samples[0][0] <= off:
                est = part.added - part.samples[0][1]
            else:
                est = int(length)
            part.estimate = est
            self.metrics.backlog[p] = est
            self.metrics.lag_ms[p] = max(0, last_id[0] - off[0]) if est else 0
            if updated is not None:
                self.metrics.commit_age_s[p] = max(0.0, now - float(updated))

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.sample()
                self.metrics.redis_up = 1
            except REDIS_ERRORS as e:
                self.metrics.redis_up = 0
                log.warning("gateway: backlog sample failed: %r", e)
            except SQLAlchemyError as e:
                log.warning("gateway: reading committed offsets failed: %r", e)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py may turn a cancellation mid-read into a ConnectionError: never swallow it.
                raise asyncio.CancelledError
            await asyncio.sleep(interval)
