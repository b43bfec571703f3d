"""Archiving and trimming a partition's stream (the owner's housekeeping), and reading the archive back (replay).

Guarantees:

- An entry leaves the stream only once it is committed and, with archiving on (the default), archived: the trim's
  ``MINID`` is never past ``min(committed offset, archived offset)``, and ``XTRIM MINID`` keeps the entry at that
  id, so the stream always holds the entry at the committed offset (what ``check_stream`` relies on).
- An archive object is complete in the storage location before the SQL transaction that names it commits; that
  transaction is fenced by the partition's epoch (a worker that lost the partition writes nothing) and refuses a
  range that does not start after the last archived entry, so the rows of ``sl_archive`` of one partition cover
  disjoint, ascending ranges with no entry left out between them. An object whose row never committed (a crash
  between the two steps, a fenced zombie) is an orphan: no row names it, replay never reads it, and the orphan
  sweep deletes it after the grace period (a row is never written for an object older than half of it).
- The archive holds the entries byte for byte (:mod:`schemas.archive`): replay through the same processing gives
  the same history as the live workers made.
- Retention: entries older than ``retention_s``, and (``retention_bytes``) the oldest entries of a stream past its
  share of the byte budget (``retention_bytes / partitions``, as ``MEMORY USAGE`` estimates the stream), are
  trimmed, within the limit above. The byte cut is an estimate (a ``MINID`` interpolated over the stream's id range,
  repeated a few times): about the budget, never past what is committed and archived.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, delete, insert, select

from schemas import FencedError, Names
from schemas.archive import ArchiveEntry, archive, archive_name, decode_archive, encode_archive
from schemas.clients import AsyncRedis
from schemas.objects import ObjectStore
from schemas.store import partitions

from ._faults import crash_point
from .partition import Entry, StaleObjects, id_tuple

log = logging.getLogger("stepline.worker")

#: Raw bytes of entries per archive object, at most (one more entry may pass it): bounds the worker's memory (the
#: entries, their msgpack and its zstd frame are held at once while an object is written).
OBJECT_BYTES = 16 << 20
#: Entries fetched per XRANGE while archiving.
PAGE = 500
#: Rounds of the byte-retention estimate per trim (each measures the stream again).
BYTE_ROUNDS = 4

IdTuple = tuple[int, int]


def _sid(t: IdTuple) -> str:
    return f"{t[0]}-{t[1]}"


@dataclass(slots=True)
class ArchiveRef:
    p: int
    first_id: str
    last_id: str
    entries: int
    bytes: int
    file: str


# --- metadata (synchronous: callers run these in a thread) ----------------------------------------------------


def archived_offset(engine: Engine, p: int) -> str:
    """The id of partition ``p``'s last archived entry (``"0-0"``: nothing archived yet)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(archive.c.last_id).where(archive.c.p == p).order_by(archive.c.id.desc()).limit(1)
        ).first()
    return "0-0" if row is None else str(row.last_id)


def record_archive(engine: Engine, epoch: int, ref: ArchiveRef) -> None:
    """Name a complete archive object in ``sl_archive``, in one transaction fenced by the partition's epoch; raise
    :class:`FencedError` (nothing written) when the epoch moved or the range does not follow the last one."""
    with engine.begin() as conn:
        cur = conn.execute(select(partitions.c.epoch).where(partitions.c.p == ref.p).with_for_update()).first()
        if cur is None or int(cur.epoch) != epoch:
            raise FencedError(f"partition {ref.p}: epoch {epoch} is no longer current")
        last = conn.execute(
            select(archive.c.last_id).where(archive.c.p == ref.p).order_by(archive.c.id.desc()).limit(1)
        ).first()
        if last is not None and id_tuple(ref.first_id) <= id_tuple(str(last.last_id)):
            raise FencedError(f"partition {ref.p}: archive range {ref.first_id}..{ref.last_id} overlaps the "
                              f"archive's end {last.last_id}")
        conn.execute(insert(archive).values(
            p=ref.p, first_id=ref.first_id, last_id=ref.last_id, entries=ref.entries, bytes=ref.bytes,
            file=ref.file, created_at=time.time()))


def archives_of(engine: Engine, p: int, after: int = 0) -> list[dict[str, Any]]:
    """Partition ``p``'s archive objects (those whose row id is above ``after``), in stream order."""
    with engine.connect() as conn:
        q = select(archive).where(archive.c.p == p, archive.c.id > after).order_by(archive.c.id)
        return [dict(r._mapping) for r in conn.execute(q)]


def collect_archive_orphans(engine: Engine, objects: ObjectStore, grace_s: float) -> int:
    """Delete archive objects no ``sl_archive`` row names that are older than ``grace_s`` (objects of archive
    commits that never happened; sound because no row is written for an object older than half the grace).
    Returns how many were deleted."""
    cutoff = time.time() - grace_s
    old = [rel for rel, _size, mtime in objects.list("archive") if mtime < cutoff]
    if not old:
        return 0
    with engine.connect() as conn:
        known = {str(r.file) for r in conn.execute(select(archive.c.file))}
    orphans = [rel for rel in old if rel not in known]
    for rel in orphans:
        objects.delete(rel)
    return len(orphans)


def forget_archive(engine: Engine, p: int) -> None:
    """Drop partition ``p``'s archive rows (tests and a deliberate reset only; the objects become orphans)."""
    with engine.begin() as conn:
        conn.execute(delete(archive).where(archive.c.p == p))


# --- the owner's housekeeping -----------------------------------------------------------------------------------


@dataclass
class StreamKeeper:
    """Archives and trims the streams of the partitions one worker owns (called from its housekeeping loop)."""

    redis: AsyncRedis
    names: Names
    engine: Engine
    objects: ObjectStore
    #: Archive before trimming (``STEPLINE_ARCHIVE``); off: trim behind the committed offset only.
    archive: bool = True
    retention_s: float = 24 * 3600.0
    #: Byte budget of all partition streams together (``STEPLINE_RETENTION_BYTES``); None: time only.
    retention_bytes: int | None = None
    #: Archive the committed range once its first entry is this old, even if no trim needs it yet.
    archive_interval_s: float = 300.0
    #: An archive object written longer ago than this is not recorded (the orphan sweep may be deleting it).
    max_object_age_s: float = 1800.0
    object_bytes: int = OBJECT_BYTES
    #: Per partition: (epoch, archived offset) as this worker last knew it.
    archived: dict[int, tuple[int, str]] = field(default_factory=dict)
    objects_written: int = 0
    entries_archived: int = 0

    async def keep(self, p: int, epoch: int, offset: str) -> None:
        """Archive what the trim needs (or what waited long enough), then trim within the retention."""
        if offset == "0-0":
            return
        stream = self.names.stream(p)
        floor = id_tuple(offset)
        target = (int((time.time() - self.retention_s) * 1000), 0)
        budget = None if self.retention_bytes is None else self.retention_bytes / self.names.partitions
        if self.archive:
            done = await self._archived(p, epoch)
            first = await self._first_after(stream, done)
            # Archive all that is committed once its oldest entry is due: the trim would take it, it waited
            # ``archive_interval_s``, or the stream is over its byte budget. So objects come about every
            # min(retention, interval), not every pass.
            if first is not None and first <= floor and (
                    first < target or first[0] < (time.time() - self.archive_interval_s) * 1000
                    or (budget is not None and await self._over(stream, budget))):
                done = await self.archive_range(p, epoch, offset)
            floor = min(floor, id_tuple(done))
        minid = min(target, floor)
        trimmed = minid > (0, 0)
        if trimmed:
            await self.redis.xtrim(stream, minid=_sid(minid), approximate=False)
        if budget is not None:
            trimmed = await self._trim_bytes(stream, budget, floor) or trimmed
        if trimmed:
            crash_point("trimmed")

    async def _over(self, stream: str, budget: float) -> bool:
        usage = await self.redis.memory_usage(stream)
        return usage is not None and usage > budget

    async def _archived(self, p: int, epoch: int) -> str:
        known = self.archived.get(p)
        if known is None or known[0] != epoch:  # a new take: another owner may have archived since
            known = (epoch, await asyncio.to_thread(archived_offset, self.engine, p))
            self.archived[p] = known
        return known[1]

    async def _first_after(self, stream: str, done: str) -> IdTuple | None:
        """The id of the stream's first entry after ``done`` (None: there is none)."""
        start = "-" if done == "0-0" else "(" + done
        first = cast("list[Entry]", await self.redis.xrange(stream, min=start, max="+", count=1))
        return id_tuple(first[0][0].decode()) if first else None

    async def archive_range(self, p: int, epoch: int, offset: str) -> str:
        """Write the entries after the archived offset up to ``offset`` (committed) as archive objects, each
        recorded in its own fenced transaction; return the new archived offset."""
        stream = self.names.stream(p)
        done = await self._archived(p, epoch)
        while id_tuple(done) < id_tuple(offset):
            entries: list[ArchiveEntry] = []
            size = 0
            cursor = "-" if done == "0-0" else "(" + done
            while size < self.object_bytes:
                page = cast("list[Entry]", await self.redis.xrange(stream, min=cursor, max=offset, count=PAGE))
                if not page:
                    break
                for raw_id, fields in page:
                    items = list(fields.items())
                    entries.append((raw_id.decode(), items))
                    size += sum(len(k) + len(v) for k, v in items)
                cursor = "(" + entries[-1][0]
            if not entries:
                break  # nothing left in the stream up to the offset (trimmed before archiving was on)
            data = await asyncio.to_thread(encode_archive, p, entries)
            ref = ArchiveRef(p, entries[0][0], entries[-1][0], len(entries), len(data),
                             archive_name(p, entries[0][0], entries[-1][0]))
            t_written = time.monotonic()
            await asyncio.to_thread(self.objects.put, ref.file, data)
            crash_point("archived")
            if time.monotonic() - t_written > self.max_object_age_s:
                raise StaleObjects(f"partition {p}: archive object {ref.file} written too long ago to be recorded")
            try:
                await asyncio.to_thread(record_archive, self.engine, epoch, ref)
            except FencedError:
                self.archived.pop(p, None)
                await asyncio.to_thread(self.objects.delete, ref.file)
                raise
            done = ref.last_id
            self.archived[p] = (epoch, done)
            self.objects_written += 1
            self.entries_archived += ref.entries
            log.info("partition %d: archived %d entries %s..%s (%d bytes) as %s", p, ref.entries, ref.first_id,
                     ref.last_id, ref.bytes, ref.file)
        return done

    async def _trim_bytes(self, stream: str, budget: float, floor: IdTuple) -> bool:
        """Trim the stream to about ``budget`` bytes, never past ``floor``: the cut is interpolated between the
        stream's first and last ids by the share of bytes to drop, trimmed to (within ``floor``) and the stream
        measured again, a few rounds. Returns whether it trimmed."""
        cut: IdTuple = (0, 0)
        for _ in range(BYTE_ROUNDS):
            usage = await self.redis.memory_usage(stream)
            if usage is None or usage <= budget:
                break
            info: dict[str, Any] = await self.redis.xinfo_stream(stream)
            first, last = info.get("first-entry"), info.get("last-entry")
            if not first or not last:
                break
            lo, hi = id_tuple(_text(first[0])), id_tuple(_text(last[0]))
            share = 1.0 - budget / usage
            guess = min((lo[0] + max(1, int((hi[0] - lo[0]) * share)), 0), hi, floor)
            if guess <= max(cut, lo):
                break  # the floor (or the estimate) allows no more
            cut = guess
            await self.redis.xtrim(stream, minid=_sid(cut), approximate=False)
        return cut > (0, 0)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# --- replay ------------------------------------------------------------------------------------------------------


async def read_archive(engine: Engine, objects: ObjectStore, p: int, after: int = 0,
                       ) -> AsyncIterator[tuple[int, list[Entry]]]:
    """Partition ``p``'s archived entries, object by object in stream order (objects whose row id is above
    ``after``), as (row id, stream entries)."""
    for row in await asyncio.to_thread(archives_of, engine, p, after):
        data = await asyncio.to_thread(objects.get, str(row["file"]))
        entries = await asyncio.to_thread(decode_archive, data, p)
        yield int(row["id"]), [(eid.encode(), dict(fields)) for eid, fields in entries]
