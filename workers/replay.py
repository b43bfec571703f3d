"""Rebuild history from the stream archive and the streams into a fresh data directory.

Replay runs the same :class:`PartitionProcessor` as a live worker over every entry of each partition: first the
entries of its stream archive (``archive_from``: the live deployment's ``sl_archive`` rows and objects, in stream
order; :mod:`workers.archive`), then the entries still in the stream after the archive's last one, up to the end
seen when replay began; archive objects recorded while replay runs (live workers archive and trim meanwhile) are
read before the stream entries after them. Dead-lettering is switched off so the live dead-letter streams are not
touched. Because processing is deterministic and the archive holds the entries byte for byte, the replay gives
history identical to the live one: same rows, same values, same rejections, even when Redis kept only minutes of
stream. Entries the live workers dead-lettered as ``poison`` (:mod:`workers.attempts`: they crashed a worker or
failed its commits every time) are skipped as they were live.

Entries trimmed from a stream that the archive does not hold (archiving off, or switched on later) cannot be
replayed: each such partition is reported (``ReplayReport.gaps``), never skipped silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, inspect

from schemas.archive import archive
from schemas.clients import AsyncRedis, async_redis
from schemas.errors import SettingsError
from schemas.objects import ObjectStore, StorageTarget, open_store
from schemas.store import reader_engine

from .archive import archives_of, read_archive
from .metastore import MetaStore
from .partition import Entry, PartitionProcessor, id_tuple
from .settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class ArchiveSource:
    """Where the live deployment's stream archive is: its metadata database and its storage location."""

    metadata_url: str
    storage: StorageTarget


@dataclass
class ReplayReport:
    partitions: int = 0
    entries: int = 0
    runs: int = 0
    #: Of ``entries``, how many came from the archive.
    archived: int = 0
    #: One line per partition whose stream lost entries the archive does not hold (they could not be replayed).
    gaps: list[str] = field(default_factory=list)


async def replay(
    settings: WorkerSettings,
    run_filter: Callable[[str, str], bool] | None = None,
    *,
    chunk: int = 1000,
    archive_from: ArchiveSource | None = None,
) -> ReplayReport:
    """Replay every partition (its archive in ``archive_from``, then its stream) into ``settings.db_url`` and the
    storage location (the data directory or ``settings.storage_url``); the metadata must be fresh."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    objects = open_store(settings.storage)
    names = settings.names
    report = ReplayReport()
    redis = async_redis(settings.redis_url, socket_timeout=30)
    store = await asyncio.to_thread(MetaStore, settings.metadata_url)
    source: tuple[Engine, ObjectStore] | None = None
    if archive_from is not None:
        source = (reader_engine(archive_from.metadata_url), open_store(archive_from.storage))
        if not await asyncio.to_thread(_has_archive, source[0]):
            source[0].dispose()
            source = None  # a database from before the archive: nothing archived
    try:
        await asyncio.to_thread(store.bind_deployment, names.namespace, names.partitions)
        # Segments already there belong to another history: on a bucket shared with the live deployment (the same
        # STEPLINE_STORAGE_URL), its orphan sweep would delete every segment this replay writes, as no row of its
        # metadata names them.
        if await asyncio.to_thread(objects.holds_any, "segments"):
            where = settings.data_dir if objects.url == "local" else objects.url  # "local": the data directory
            raise SettingsError(f"replay needs an empty storage location: {where} already holds segments "
                                "(a live deployment's?); give --storage-url a new bucket or prefix")
        for p in range(names.partitions):
            epoch, offset = await asyncio.to_thread(store.take_partition, p, "replay")
            if offset != "0-0":
                raise SettingsError(f"replay needs a fresh data directory: partition {p} already has history")
            stream = names.stream(p)
            info: dict[str, Any] = await redis.xinfo_stream(stream) if await redis.exists(stream) else {}
            rows = await asyncio.to_thread(archives_of, source[0], p) if source is not None else []
            if not info and not rows:
                continue
            proc = PartitionProcessor(
                p=p, epoch=epoch, offset=offset, names=names, store=store, data_dir=settings.data_dir,
                redis=redis, limits=settings.limits, dead_letters=False, run_filter=run_filter, objects=objects,
                skip=await _poisoned(redis, names.dlq(p)),
            )
            gap = _gap(p, info, sum(int(r["entries"]) for r in rows))
            if gap is not None:
                report.gaps.append(gap)
            end = (0, 0)
            if info:
                last = info["last-generated-id"]
                end = id_tuple(last.decode() if isinstance(last, bytes) else str(last))
            pos, row_id = (0, 0), 0
            while True:
                # The stream after what was replayed; then, if live workers archived more meanwhile, those objects
                # first (they may have trimmed entries after ``pos`` from the stream once archived: a trim never
                # passes a recorded archive row, so every entry missing before the read is in a row visible now).
                start = "-" if pos == (0, 0) else f"({pos[0]}-{pos[1]}"
                entries = cast("list[Entry]", await redis.xrange(stream, min=start, max="+", count=chunk)) \
                    if info else []
                entries = [e for e in entries if id_tuple(e[0].decode()) <= end]
                newer = False
                if source is not None:
                    seen = row_id
                    async for rid, got in read_archive(source[0], source[1], p, seen):
                        row_id = rid
                        got = [e for e in got if id_tuple(e[0].decode()) > pos]
                        for i in range(0, len(got), chunk):
                            await proc.process(got[i:i + chunk])
                            await proc.commit()
                        report.entries += len(got)
                        report.archived += len(got)
                        if got:
                            pos = id_tuple(got[-1][0].decode())
                        newer = True
                if newer:
                    continue  # read the stream again from after the archive
                if not entries:
                    break
                await proc.process(entries)
                await proc.commit()
                report.entries += len(entries)
                pos = id_tuple(entries[-1][0].decode())
            report.partitions += 1
            report.runs += len(proc.runs)
            await asyncio.to_thread(store.release_partition, p, epoch)
    finally:
        await redis.aclose()
        store.close()
        if source is not None:
            source[0].dispose()
    return report


def _has_archive(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(inspect(conn).has_table(archive.name))


def _gap(p: int, info: dict[str, Any], archived: int) -> str | None:
    """Entries the stream no longer holds (``entries-added`` minus ``length``: trimmed, or deleted) that the
    archive, which holds the stream's first entries, does not cover."""
    if not info:
        return None
    gone = int(info.get("entries-added", 0)) - int(info.get("length", 0))
    if gone <= archived:
        return None
    return (f"partition {p}: {gone - archived} entries were trimmed from the stream and are not in the archive "
            f"(archived: {archived}); they could not be replayed")


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
