"""Rebuild history from the streams into a fresh data directory.

Replay runs the same :class:`PartitionProcessor` as a live worker over every entry still in the partition
streams (from the start, up to the end seen when replay began), with dead-lettering switched off so the live
dead-letter streams are not touched. Because processing is deterministic, a replay of untrimmed streams gives
history identical to the live one: same rows, same values, same rejections. Entries the live workers
dead-lettered as ``poison`` (:mod:`workers.attempts`: they crashed a worker or failed its commits every time) are
skipped as they were live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from schemas.clients import AsyncRedis, async_redis
from schemas.objects import open_store

from .metastore import MetaStore
from .partition import Entry, PartitionProcessor, id_tuple
from .settings import WorkerSettings


@dataclass
class ReplayReport:
    partitions: int = 0
    entries: int = 0
    runs: int = 0


async def replay(
    settings: WorkerSettings,
    run_filter: Callable[[str, str], bool] | None = None,
    *,
    chunk: int = 1000,
) -> ReplayReport:
    """Replay every partition stream into ``settings.db_url`` and the storage location (the data directory or
    ``settings.storage_url``); the metadata must be fresh."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    objects = open_store(settings.storage)
    names = settings.names
    report = ReplayReport()
    redis = async_redis(settings.redis_url, socket_timeout=30)
    store = await asyncio.to_thread(MetaStore, settings.metadata_url)
    try:
        await asyncio.to_thread(store.bind_deployment, names.namespace, names.partitions)
        for p in range(names.partitions):
            epoch, offset = await asyncio.to_thread(store.take_partition, p, "replay")
            if offset != "0-0":
                raise RuntimeError(f"replay needs a fresh data directory: partition {p} already has history")
            info = await redis.xinfo_stream(names.stream(p)) if await redis.exists(names.stream(p)) else None
            if info is None:
                continue
            last = info["last-generated-id"]
            end = id_tuple(last.decode() if isinstance(last, bytes) else str(last))
            proc = PartitionProcessor(
                p=p, epoch=epoch, offset=offset, names=names, store=store, data_dir=settings.data_dir,
                redis=redis, limits=settings.limits, dead_letters=False, run_filter=run_filter, objects=objects,
                skip=await _poisoned(redis, names.dlq(p)),
            )
            start = "-"
            while True:
                entries = cast("list[Entry]", await redis.xrange(names.stream(p), min=start, max="+", count=chunk))
                entries = [e for e in entries if id_tuple(e[0].decode()) <= end]
                if not entries:
                    break
                await proc.process(entries)
                await proc.commit()
                report.entries += len(entries)
                start = "(" + entries[-1][0].decode()
            report.partitions += 1
            report.runs += len(proc.runs)
            await asyncio.to_thread(store.release_partition, p, epoch)
    finally:
        await redis.aclose()
        store.close()
    return report


async def _poisoned(redis: AsyncRedis, dlq: str) -> frozenset[str]:
    """Ids of the entries a partition's dead-letter stream holds as ``poison``."""
    out: set[str] = set()
    start = "-"
    while True:
        page = cast("list[Entry]", await redis.xrange(dlq, min=start, max="+", count=1000))
        if not page:
            return frozenset(out)
        out.update(f[b"id"].decode() for _, f in page if f.get(b"reason") == b"poison" and b"id" in f)
        start = "(" + page[-1][0].decode()
