"""The metadata store: partition epochs and offsets, runs, segments and rejections in SQL.

One code path for SQLite (default, WAL, file in the data directory) and PostgreSQL (several hosts), through
SQLAlchemy Core with synchronous drivers; async callers run these methods in a thread (``asyncio.to_thread``)
so the event loop never blocks.

Guarantees:

- :meth:`MetaStore.bind_deployment` ties the metadata to one Redis namespace and partition count: a worker of
  another namespace (whose stream ids the committed offsets do not describe) is refused before it takes a
  partition, instead of fencing the rightful owners and reading its streams from their offsets.
- :meth:`MetaStore.take_partition` bumps the partition's epoch in a transaction and returns it with the offset.
- :meth:`MetaStore.commit` writes segments, per-run state, rejections and the partition offset in ONE
  transaction, conditional on the epoch still being the caller's; otherwise it raises :class:`FencedError` and
  writes nothing. The work of a commit grows with the runs it names, not with all runs.
- :meth:`MetaStore.swap_segments` (compaction) replaces segments of a run in one transaction, also fenced, and
  queues the old files for deletion after a grace period, so a reader that listed them can still read them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from schemas import FencedError, SettingsError, packb
from schemas.objects import ObjectStore, as_store
from schemas.run_values import value_rows, write_values_many
from schemas.store import (
    commits,
    deployment,
    garbage,
    info_counts,
    json_safe,
    partitions,
    rejections,
    runs,
    segments,
    writer_engine,
)

from ._faults import poison_point
from .migrations import migrate


def _text(s: str) -> str:
    """Free text for a text column (a rejection's message quotes client input): NUL, which PostgreSQL text cannot
    hold, and lone surrogates, which neither database can encode, are replaced, so the text cannot fail a commit."""
    if "\x00" in s:
        s = s.replace("\x00", "\\x00")
    try:
        s.encode()
    except UnicodeEncodeError:
        s = s.encode(errors="backslashreplace").decode()
    return s


def _int64(v: int | None) -> int | None:
    """A step or cursor for an int64 column: a run's cursor reaches 2**63 after a call at the last step
    (2**63 - 1, ``commit=True``); stored as 2**63 - 1 (the message and the run's info keep the exact value)."""
    return v if v is None or v < 1 << 63 else (1 << 63) - 1


def run_columns(info: dict[str, Any]) -> dict[str, Any]:
    """The columns of ``sl_runs`` that copy ``info`` for filtering runs in SQL (``history.filters``)."""
    def text_or_none(v: Any) -> str | None:
        return None if v is None else _text(str(v))

    return {"group_name": text_or_none(info.get("group")), "job_type": text_or_none(info.get("job_type")),
            "notes": text_or_none(info.get("notes")), "tags": json_safe(list(info.get("tags") or [])),
            "config": json_safe(info.get("config") or {}), "summary": json_safe(info.get("summary") or {}),
            **info_counts(info)}


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'meta.sqlite'}"


@dataclass(slots=True)
class RunUpdate:
    project: str
    run: str
    partition: int
    name: str | None
    state: str
    created_at: float | None
    updated_at: float | None
    last_step: int | None
    rows: int
    rejected: int
    info: dict[str, Any]
    state_blob: bytes


@dataclass(slots=True)
class SegmentRef:
    project: str
    run: str
    level: int
    min_step: int
    max_step: int
    rows: int
    bytes: int
    file: str


@dataclass(slots=True)
class RejectionRow:
    project: str
    run: str
    entry_id: str
    reason: str
    step: int | None
    cursor: int | None
    message: str
    ts: float | None


@dataclass(slots=True)
class Commit:
    partition: int
    epoch: int
    offset: str
    runs: list[RunUpdate] = field(default_factory=list)
    segments: list[SegmentRef] = field(default_factory=list)
    rejections: list[RejectionRow] = field(default_factory=list)


class MetaStore:
    """Synchronous metadata access; one instance per process, safe to use from worker threads."""

    def __init__(self, url: str, *, engine: Engine | None = None, audit: bool = False) -> None:
        self.url = url
        self.engine = engine or writer_engine(url)
        self._owns_engine = engine is None
        #: Record every successful commit in ``sl_commits`` (same transaction): who committed what, when.
        self.audit = audit
        try:
            self.schema_version = migrate(self.engine)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # --- partitions --------------------------------------------------------------------------------------------

    def bind_deployment(self, namespace: str, partitions: int) -> None:
        """Record the namespace and partition count this metadata belongs to, or check them against the recorded
        ones; a mismatch raises :class:`SettingsError` naming both. ``sl_partitions`` is keyed by partition number
        only, so two namespaces sharing a database would take each other's partitions (bumping the epoch fences
        the other's worker) and read their own streams from the other's offsets, skipping or re-reading events.
        """
        want = {"namespace": namespace, "partitions": str(partitions)}
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # two first workers must not both record their own binding
                conn.exec_driver_sql("LOCK TABLE sl_deployment IN SHARE ROW EXCLUSIVE MODE")
            have = {str(r.key): str(r.value) for r in conn.execute(select(deployment))}
            for key, value in want.items():
                if key not in have:
                    conn.execute(insert(deployment).values(key=key, value=value))
                elif have[key] != value:
                    raise SettingsError(
                        f"the metadata database {self.url_for_humans} belongs to {key} {have[key]!r}, not "
                        f"{value!r}: give each deployment its own database (--db-url / --data-dir), or start "
                        f"this one with --{key} {have[key]}")

    @property
    def url_for_humans(self) -> str:
        """The database's URL without a password."""
        return self.engine.url.render_as_string(hide_password=True)

    def take_partition(self, p: int, owner: str) -> tuple[int, str]:
        """Bump the partition's epoch (fencing out any previous owner); return ``(epoch, committed offset)``."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(partitions.c.epoch, partitions.c.offset).where(partitions.c.p == p).with_for_update()
            ).first()
            now = time.time()
            if row is None:
                conn.execute(insert(partitions).values(p=p, epoch=1, offset="0-0", owner=owner, updated_at=now))
                return 1, "0-0"
            epoch = int(row.epoch) + 1
            conn.execute(
                update(partitions).where(partitions.c.p == p).values(epoch=epoch, owner=owner, updated_at=now)
            )
            return epoch, str(row.offset)

    def release_partition(self, p: int, epoch: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(partitions).where(partitions.c.p == p, partitions.c.epoch == epoch).values(owner=None)
            )

    def partitions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(partitions).order_by(partitions.c.p))]

    # --- runs --------------------------------------------------------------------------------------------------

    def load_states(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        keys = list(keys)
        out: dict[tuple[str, str], bytes] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(keys), 200):
                chunk = keys[i:i + 200]
                projects = {k[0] for k in chunk}
                names = {k[1] for k in chunk}
                q = select(runs.c.project, runs.c.run, runs.c.state_blob).where(
                    runs.c.project.in_(projects), runs.c.run.in_(names)
                )
                wanted = set(chunk)
                for r in conn.execute(q):
                    if (r.project, r.run) in wanted:
                        out[(r.project, r.run)] = bytes(r.state_blob)
        return out

    # --- the commit --------------------------------------------------------------------------------------------

    def commit(self, c: Commit) -> None:
        """Apply one commit atomically, or raise :class:`FencedError` (nothing written) if the epoch moved."""
        now = time.time()
        with self.engine.begin() as conn:
            res = conn.execute(
                update(partitions)
                .where(partitions.c.p == c.partition, partitions.c.epoch == c.epoch)
                .values(offset=c.offset, updated_at=now)
            )
            if res.rowcount != 1:
                raise FencedError(f"partition {c.partition}: epoch {c.epoch} is no longer current")
            if self.audit:
                conn.execute(insert(commits).values(p=c.partition, epoch=c.epoch, offset=c.offset, committed_at=now))
            if c.segments:
                conn.execute(insert(segments), [
                    {"project": s.project, "run": s.run, "level": s.level, "min_step": s.min_step,
                     "max_step": s.max_step, "rows": s.rows, "bytes": s.bytes, "file": s.file, "created_at": now}
                    for s in c.segments
                ])
            if c.rejections:
                conn.execute(insert(rejections), [
                    {"project": r.project, "run": r.run, "entry_id": r.entry_id, "reason": r.reason,
                     "step": _int64(r.step), "cursor": _int64(r.cursor), "message": _text(r.message), "ts": r.ts}
                    for r in c.rejections
                ])
            indexed: list[tuple[str, str, dict[Any, Any], bool]] = []
            for u in c.runs:
                poison_point("sql", u.run)
                values = {
                    "name": None if u.name is None else _text(u.name), "state": u.state, "partition": u.partition,
                    "created_at": u.created_at, "updated_at": u.updated_at, "last_step": u.last_step, "rows": u.rows,
                    "rejected": u.rejected, "info": packb(u.info), "state_blob": u.state_blob,
                    **run_columns(u.info),
                }
                res = conn.execute(
                    update(runs).where(runs.c.project == u.project, runs.c.run == u.run).values(**values)
                )
                if res.rowcount == 0:
                    conn.execute(insert(runs).values(project=u.project, run=u.run, **values))
                # The run's indexed config/summary values (schemas.run_values), from the same JSON copies; the
                # exact values tell a float ±inf (a number there) from the text "Infinity".
                exact = (u.info.get("config"), u.info.get("summary"))
                indexed.append((u.project, u.run, value_rows(values["config"], values["summary"], values["tags"],
                                                             exact=exact), res.rowcount == 0))
            # All runs' index changes at once: a few round trips per commit, not a few per run.
            write_values_many(conn, indexed)

    # --- segments and compaction -------------------------------------------------------------------------------

    def segments_of(self, project: str, run: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = select(segments).where(segments.c.project == project, segments.c.run == run)
            return [dict(r._mapping) for r in conn.execute(q.order_by(segments.c.min_step))]

    def swap_segments(self, p: int, epoch: int, old_ids: list[int], new: SegmentRef) -> None:
        """Replace ``old_ids`` by ``new`` in one transaction, fenced by the partition epoch."""
        now = time.time()
        with self.engine.begin() as conn:
            cur = conn.execute(select(partitions.c.epoch).where(partitions.c.p == p).with_for_update()).first()
            if cur is None or int(cur.epoch) != epoch:
                raise FencedError(f"partition {p}: epoch {epoch} is no longer current")
            old_files = [
                r.file for r in conn.execute(select(segments.c.file).where(segments.c.id.in_(old_ids)))
            ]
            if len(old_files) != len(old_ids):
                raise FencedError(f"partition {p}: segments changed under compaction")
            conn.execute(delete(segments).where(segments.c.id.in_(old_ids)))
            conn.execute(insert(segments).values(
                project=new.project, run=new.run, level=new.level, min_step=new.min_step, max_step=new.max_step,
                rows=new.rows, bytes=new.bytes, file=new.file, created_at=now,
            ))
            for f in old_files:
                conn.execute(insert(garbage).values(file=f, deleted_at=now))

    def collect_garbage(self, where: ObjectStore | Path, grace_s: float) -> int:
        """Delete objects dropped more than ``grace_s`` ago from the store (or local data directory); return how
        many. A row leaves ``sl_garbage`` only after its object is deleted, so a failed delete is retried."""
        objects = as_store(where)
        cutoff = time.time() - grace_s
        with self.engine.begin() as conn:
            files = [r.file for r in conn.execute(select(garbage.c.file).where(garbage.c.deleted_at < cutoff))]
            for f in files:
                objects.delete(f)
            if files:
                conn.execute(delete(garbage).where(garbage.c.file.in_(files)))
        return len(files)

    def collect_orphans(self, where: ObjectStore | Path, grace_s: float) -> int:
        """Delete segment objects that no metadata references (``sl_segments`` or ``sl_garbage``) and that are older
        than ``grace_s``: objects of commits that never happened (a worker killed between the object write and the
        SQL commit, a fenced zombie, a failed transaction). Sound because a commit never references an object older
        than half the grace (``PartitionProcessor.max_object_age_s``), so an object this old that nothing
        references now never will be. Returns how many were deleted."""
        objects = as_store(where)
        listed = [(rel, mtime) for rel, _size, mtime in objects.list("segments")]
        cutoff = time.time() - grace_s
        old = [rel for rel, mtime in listed if mtime < cutoff]
        if not old:
            return 0
        with self.engine.connect() as conn:
            known = {r.file for r in conn.execute(select(segments.c.file))}
            known.update(r.file for r in conn.execute(select(garbage.c.file)))
        orphans = [rel for rel in old if rel not in known]
        for rel in orphans:
            objects.delete(rel)
        return len(orphans)
