"""One partition's processing: decode frames, align runs, and build the fenced commit.

Guarantees:

- Entries are applied in stream order; a frame already applied (same ``producer``/``seq``) is skipped, so a
  client's resend or a redelivery after a crash is a no-op.
- A malformed frame (undecodable, unknown version, over a limit) goes to the dead-letter stream with its reason
  and the raw bytes; a bad event inside a good frame is dead-lettered alone and counted as a rejected call of its
  run. Processing carries on either way.
- :meth:`PartitionProcessor.commit` writes the segments first, then one metadata transaction with the segments,
  the per-run state and the offset, conditional on the epoch. In memory nothing is trusted after a failed commit:
  the caller drops the processor and a new one resumes from the committed offset.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from schemas import FRAME_FIELD, BadEvent, Frame, Limits, Names, SchemaError, decode_frame
from schemas.store import blob_path
from schemas.values import MEDIA_KINDS

from .align import Row, RowBatch, RunAligner, media_blobs
from .segments import rows_to_table, write_table
from .store import Commit, MetaStore, RejectionRow, RunUpdate, SegmentRef

log = logging.getLogger("stepline.worker")

RunKey = tuple[str, str]
#: Dead letters of one stream entry get ids ``<ms>-<seq * DLQ_PER_ENTRY + k>``; more than this many share the last.
DLQ_PER_ENTRY = 1 << 16
Entry = tuple[bytes, dict[bytes, bytes]]


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class PartitionProcessor:
    p: int
    epoch: int
    offset: str  # committed: the last stream id whose effects are durable
    names: Names
    store: MetaStore
    data_dir: Path
    redis: aioredis.Redis
    limits: Limits
    dead_letters: bool = True
    run_filter: Callable[[str, str], bool] | None = None
    read_id: str = ""
    runs: dict[RunKey, RunAligner] = field(default_factory=dict)
    dirty: set[RunKey] = field(default_factory=set)
    rejections: list[RejectionRow] = field(default_factory=list)
    dlq: list[tuple[str, dict[bytes, bytes]]] = field(default_factory=list)  # (dead-letter id, fields)
    entries_since_commit: int = 0
    last_commit: float = field(default_factory=time.monotonic)
    touched: set[RunKey] = field(default_factory=set)  # runs with new segments since the last compaction pass

    def __post_init__(self) -> None:
        if not self.read_id:
            self.read_id = self.offset

    @property
    def uncommitted(self) -> bool:
        return self.read_id != self.offset

    def _dead_letter(self, entry_id: str, reason: str, message: str, raw: bytes | None = None,
                     **extra: Any) -> None:
        if not self.dead_letters:
            return
        fields: dict[bytes, bytes] = {
            b"id": entry_id.encode(), b"reason": reason.encode(), b"message": message.encode()[:2000],
        }
        if raw is not None:
            fields[b"raw"] = raw
        for k, v in extra.items():
            fields[k.encode()] = b"" if v is None else str(v).encode()
        # The dead letter's id derives from its entry's id (k-th dead letter of the entry), so a replay after a
        # crash, or a fenced zombie's attempt, writes the same ids again and Redis refuses them: no duplicates.
        nth = 0
        for _, f in reversed(self.dlq):  # the dead letters of one entry are consecutive
            if f[b"id"] != fields[b"id"]:
                break
            nth += 1
        ms, seq = id_tuple(entry_id)
        self.dlq.append((f"{ms}-{seq * DLQ_PER_ENTRY + min(nth, DLQ_PER_ENTRY - 1)}", fields))

    async def process(self, entries: list[Entry]) -> None:
        """Apply stream entries (ascending ids, all after ``read_id``)."""
        if not entries:
            return
        decoded: list[tuple[str, Frame]] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            raw = fields.get(FRAME_FIELD)
            if raw is None:
                self._dead_letter(entry_id, "missing_field", "stream entry has no 'f' field")
                continue
            try:
                frame = decode_frame(raw, self.limits)
            except SchemaError as e:
                log.warning("partition %d entry %s dead-lettered: %s", self.p, entry_id, e)
                self._dead_letter(entry_id, e.code, str(e), raw)
                continue
            if self.run_filter is not None and not self.run_filter(frame.project, frame.run):
                continue
            decoded.append((entry_id, frame))
        missing = {(f.project, f.run) for _, f in decoded} - self.runs.keys()
        if missing:
            states = await asyncio.to_thread(self.store.load_states, missing)
            for key in missing:
                blob = states.get(key)
                self.runs[key] = RunAligner.load(blob) if blob is not None else RunAligner()
        for entry_id, frame in decoded:
            self._apply(entry_id, frame)
        self.read_id = entries[-1][0].decode()
        self.entries_since_commit += len(entries)

    def _apply(self, entry_id: str, frame: Frame) -> None:
        key = (frame.project, frame.run)
        r = self.runs[key]
        skip = r.check_seq(frame.producer, frame.seq, len(frame.events))
        if skip == len(frame.events) and frame.events:
            return
        self.dirty.add(key)
        for ev in frame.events[skip:]:
            if isinstance(ev, BadEvent):
                r.reject(ev.error.code, None, r.cursor, None, f"malformed event: {ev.error}")
            else:
                r.apply(ev)
        if r.out_rejections:
            for rej in r.out_rejections:
                self.rejections.append(RejectionRow(
                    frame.project, frame.run, entry_id, rej.reason, rej.step, rej.cursor, rej.message, rej.ts,
                ))
                self._dead_letter(entry_id, rej.reason, rej.message, project=frame.project, run=frame.run,
                                  step=rej.step, cursor=rej.cursor)
            r.out_rejections = []

    def commit_due(self, interval_s: float, max_entries: int) -> bool:
        if not self.uncommitted:
            return False
        return self.entries_since_commit >= max_entries or time.monotonic() - self.last_commit >= interval_s

    async def commit(self) -> bool:
        """Make everything processed so far durable; raise :class:`FencedError` if the partition was taken."""
        if not self.uncommitted and not self.dirty:
            return False
        work: list[tuple[RunKey, RunAligner, list[Row | RowBatch]]] = []
        for key in sorted(self.dirty):
            r = self.runs[key]
            rows, _ = r.take_columnar()
            work.append((key, r, rows))
        await self._copy_blobs([row for _, _, rows in work for row in rows])
        segments = await asyncio.to_thread(self._write_segments, work)
        updates = [
            RunUpdate(
                project=key[0], run=key[1], partition=self.p, name=r.name, state=r.state,
                created_at=r.created_at, updated_at=r.updated_at, last_step=r.last_step, rows=r.rows,
                rejected=sum(r.rejected.values()), info=r.info(), state_blob=r.dump(),
            )
            for key, r, _ in work
        ]
        if self.dlq:
            pipe = self.redis.pipeline(transaction=False)
            # Ascending ids (malformed frames are dead-lettered while decoding, rejections while applying).
            for dlq_id, fields in sorted(self.dlq, key=lambda d: id_tuple(d[0])):
                pipe.xadd(self.names.dlq(self.p), fields, id=dlq_id)  # type: ignore[arg-type]
            for res in await pipe.execute(raise_on_error=False):
                # "equal or smaller than the target stream top item": written by an earlier attempt.
                if isinstance(res, ResponseError) and "equal or smaller" not in str(res):
                    raise res
        c = Commit(self.p, self.epoch, self.read_id, updates, segments, self.rejections)
        await asyncio.to_thread(self.store.commit, c)
        self.offset = self.read_id
        self.touched.update(key for key, _, rows in work if rows)
        self.dirty.clear()
        self.rejections = []
        self.dlq = []
        self.entries_since_commit = 0
        self.last_commit = time.monotonic()
        return True

    def _write_segments(self, work: list[tuple[RunKey, RunAligner, list[Row | RowBatch]]]) -> list[SegmentRef]:
        out = []
        for (project, run), r, rows in work:
            if not rows:
                continue
            table = rows_to_table(rows, r.displays)
            rel, size = write_table(self.data_dir, project, run, table, level=0)
            steps = table.column("_step")
            out.append(SegmentRef(project, run, 0, int(steps[0].as_py()), int(steps[-1].as_py()), table.num_rows,
                                  size, rel))
        return out

    async def _copy_blobs(self, rows: list[Row | RowBatch]) -> None:
        """Move media blobs referenced by new rows from Redis into the data directory (content-addressed)."""
        shas: set[str] = set()
        for row in rows:
            if isinstance(row, RowBatch):
                continue  # the fast path never holds media
            for (_ident, kind), v in row.values.items():
                if kind in MEDIA_KINDS:
                    shas.update(media_blobs(v))
        todo = [s for s in sorted(shas) if not (self.data_dir / blob_path(s)).exists()]
        for sha in todo:
            data = cast("bytes | None", await self.redis.get(self.names.blob(self.p, sha)))
            if data is None:
                log.warning("partition %d: blob %s is referenced but not in Redis (expired or never sent)",
                            self.p, sha)
                continue
            if hashlib.sha256(data).hexdigest() != sha:
                log.warning("partition %d: blob %s does not match its hash; not stored", self.p, sha)
                continue
            await asyncio.to_thread(_write_blob, self.data_dir / blob_path(sha), data)


def _write_blob(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
