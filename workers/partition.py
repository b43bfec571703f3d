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

from redis.exceptions import ResponseError

from schemas import FRAME_FIELD, BadEvent, Finish, Frame, Limits, Names, SchemaError, decode_frame
from schemas.clients import AsyncRedis
from schemas.media import blob_shas
from schemas.store import blob_path
from schemas.values import MEDIA_KINDS

from ._faults import crash_point
from .align import Row, RowBatch, RunAligner
from .metastore import Commit, MetaStore, RejectionRow, RunUpdate, SegmentRef
from .segments import rows_to_table, write_table

log = logging.getLogger("stepline.worker")

RunKey = tuple[str, str]
#: Dead letters of one stream entry get ids ``<ms>-<seq * DLQ_PER_ENTRY + k>``; more than this many share the last.
DLQ_PER_ENTRY = 1 << 16
Entry = tuple[bytes, dict[bytes, bytes]]


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class PreparedCommit:
    """A snapshot of a partition's work, made durable by :meth:`PartitionProcessor.write`."""

    read_id: str
    work: list[tuple[RunKey, RunAligner, list[Row | RowBatch]]]
    updates: list[RunUpdate]
    rejections: list[RejectionRow]
    dlq: list[tuple[str, dict[bytes, bytes]]]


@dataclass
class PartitionProcessor:
    p: int
    epoch: int
    offset: str  # committed: the last stream id whose effects are durable
    names: Names
    store: MetaStore
    data_dir: Path
    redis: AsyncRedis
    limits: Limits
    dead_letters: bool = True
    run_filter: Callable[[str, str], bool] | None = None
    read_id: str = ""
    runs: dict[RunKey, RunAligner] = field(default_factory=dict)
    dirty: set[RunKey] = field(default_factory=set)
    rejections: list[RejectionRow] = field(default_factory=list)
    dlq: list[tuple[str, dict[bytes, bytes]]] = field(default_factory=list)  # (dead-letter id, fields)
    entries_since_commit: int = 0
    prepared_id: str = ""  # the read offset of the last prepared commit (durable once its write succeeds)
    last_commit: float = field(default_factory=time.monotonic)
    last_read: float = field(default_factory=time.monotonic)  # when entries were last read
    touched: set[RunKey] = field(default_factory=set)  # runs with new segments since the last compaction pass
    gaps: int = 0  # stream gaps detected (entries deleted before they were read): see check_stream
    finished_run: bool = False  # a run finished since the last prepared commit

    def __post_init__(self) -> None:
        if not self.read_id:
            self.read_id = self.offset
        if not self.prepared_id:
            self.prepared_id = self.offset

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
            except Exception as e:
                # A decoder bug must not become a poison pill: raising here would make the worker drop its
                # work and re-read the same entry forever. Dead-letter it, loudly.
                log.exception("partition %d entry %s: the decoder crashed; dead-lettered", self.p, entry_id)
                self._dead_letter(entry_id, "decode_error", f"{type(e).__name__}: {e}", raw)
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
        self.last_read = time.monotonic()
        crash_point("read")

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
                if isinstance(ev, Finish):
                    self.finished_run = True  # the run is over: show its final state now, not at the next interval
                try:
                    r.apply(ev)
                except Exception as e:
                    # Same reasoning as a decoder crash: reject the event (deterministically, so a replay
                    # converges) rather than stall the partition on it forever.
                    log.exception("partition %d entry %s: applying an event crashed; rejected", self.p, entry_id)
                    r.reject("internal_error", None, r.cursor, None, f"{type(e).__name__}: {e}"[:500])
        if r.out_rejections:
            for rej in r.out_rejections:
                self.rejections.append(RejectionRow(
                    frame.project, frame.run, entry_id, rej.reason, rej.step, rej.cursor, rej.message, rej.ts,
                ))
                self._dead_letter(entry_id, rej.reason, rej.message, project=frame.project, run=frame.run,
                                  step=rej.step, cursor=rej.cursor)
            r.out_rejections = []

    async def check_stream(self) -> str | None:
        """Detect entries deleted from the stream before this worker read them (trimmed past the committed
        offset by someone else, or lost by Redis). Returns the problem, after logging it at ERROR and writing a
        ``stream_gap`` dead letter; ``None`` when the stream holds everything after ``read_id``.

        Workers trim with ``XTRIM MINID <= committed offset``, which keeps the entry at the offset, so: the
        entry at ``read_id`` gone (the stream starts after it, or is empty though ids after it were issued),
        a deletion after it (``max-deleted-entry-id``, set by XDEL), entries deleted before any commit
        (``entries-added`` > ``length`` at ``0-0``), or a last id before ``read_id`` (Redis went back in time:
        a restart without fsync, a failover) all mean events were lost.
        """
        try:
            info: dict[str, Any] = await self.redis.xinfo_stream(self.names.stream(self.p))
        except ResponseError:  # no such key: nothing written yet
            return None
        pos = id_tuple(self.read_id)
        first = info.get("first-entry")
        first_id = _sid(first[0]) if first else None
        last_id = _sid(info.get("last-generated-id")) or "0-0"
        max_deleted = _sid(info.get("max-deleted-entry-id")) or "0-0"
        added = info.get("entries-added")
        problem = None
        if id_tuple(last_id) < pos:
            problem = (f"the stream ends at {last_id}, before the position read {self.read_id}: Redis lost "
                       f"acknowledged entries (restart without fsync, or failover)")
        elif id_tuple(max_deleted) > pos:
            problem = (f"entries up to {max_deleted} were deleted from the stream before they were read "
                       f"(read up to {self.read_id}, committed {self.offset}); their events are lost")
        elif pos == (0, 0):
            if added is not None and int(added) > int(info.get("length", 0)):
                problem = (f"{int(added) - int(info.get('length', 0))} entries were deleted from the stream "
                           f"before anything was committed; their events are lost")
        elif (first_id is None and id_tuple(last_id) > pos) or (first_id is not None and id_tuple(first_id) > pos):
            problem = (f"the stream was trimmed past the position read {self.read_id} (it now starts at "
                       f"{first_id or 'nothing'}, its last id is {last_id}); the events in between are lost")
        if problem is None:
            return None
        log.error("partition %d: DATA LOSS: %s", self.p, problem)
        self.gaps += 1
        # The last dead-letter slot of the entry at read_id: every later entry's dead letters sort after it, and
        # reporting the same gap again (another take before a commit) is refused by Redis as a duplicate.
        ms, seq = id_tuple(self.read_id)
        gap = (f"{ms}-{seq * DLQ_PER_ENTRY + DLQ_PER_ENTRY - 1}", {
            b"id": self.read_id.encode(), b"reason": b"stream_gap", b"message": problem.encode(),
            b"offset": self.offset.encode()})
        if self.uncommitted or self.dlq or self.read_id != self.prepared_id:
            self.dlq.append(gap)  # written in order with the next commit (earlier dead letters are pending)
            return problem
        try:
            await self.redis.xadd(self.names.dlq(self.p), gap[1], id=gap[0])  # type: ignore[arg-type]
        except ResponseError as e:
            if "equal or smaller" not in str(e):
                raise
        return problem

    def commit_due(self, interval_s: float, max_entries: int, idle_s: float | None = None) -> bool:
        """Whether to commit now: a run finished, or ``max_entries`` read, or the batch ``interval_s`` old, or
        nothing new read for ``idle_s`` seconds (the end of a burst: visible at once, while a busy stream still
        commits in batches)."""
        if self.read_id == self.prepared_id and not self.dirty:
            return False
        now = time.monotonic()
        return (self.finished_run or self.entries_since_commit >= max_entries or now - self.last_commit >= interval_s
                or (idle_s is not None and now - self.last_read >= idle_s))

    def prepare(self) -> PreparedCommit | None:
        """Snapshot everything processed since the last prepared commit (rows, per-run state, rejections, dead
        letters, the read offset); processing may go on while :meth:`write` makes the snapshot durable."""
        if self.read_id == self.prepared_id and not self.dirty:
            return None
        work: list[tuple[RunKey, RunAligner, list[Row | RowBatch]]] = []
        updates = []
        for key in sorted(self.dirty):
            r = self.runs[key]
            rows, _ = r.take_columnar()
            work.append((key, r, rows))
            updates.append(RunUpdate(
                project=key[0], run=key[1], partition=self.p, name=r.name, state=r.state,
                created_at=r.created_at, updated_at=r.updated_at, last_step=r.last_step, rows=r.rows,
                rejected=sum(r.rejected.values()), info=r.info(), state_blob=r.dump(),
            ))
        prep = PreparedCommit(self.read_id, work, updates, self.rejections, self.dlq)
        self.prepared_id = self.read_id
        self.dirty.clear()
        self.rejections = []
        self.dlq = []
        self.entries_since_commit = 0
        self.finished_run = False
        self.last_commit = time.monotonic()
        return prep

    async def write(self, prep: PreparedCommit) -> None:
        """Segments first, then dead letters, then the one fenced metadata transaction (raises FencedError)."""
        await self._copy_blobs([row for _, _, rows in prep.work for row in rows])
        segments = await asyncio.to_thread(self._write_segments, prep.work)
        crash_point("segments")
        if prep.dlq:
            pipe = self.redis.pipeline(transaction=False)
            # Ascending ids (malformed frames are dead-lettered while decoding, rejections while applying).
            for dlq_id, fields in sorted(prep.dlq, key=lambda d: id_tuple(d[0])):
                pipe.xadd(self.names.dlq(self.p), fields, id=dlq_id)  # type: ignore[arg-type]
            for res in await pipe.execute(raise_on_error=False):
                # "equal or smaller than the target stream top item": written by an earlier attempt.
                if isinstance(res, ResponseError) and "equal or smaller" not in str(res):
                    raise res
        c = Commit(self.p, self.epoch, prep.read_id, prep.updates, segments, prep.rejections)
        await asyncio.to_thread(self.store.commit, c)
        crash_point("committed")
        self.offset = prep.read_id
        self.touched.update(key for key, _, rows in prep.work if rows)

    async def commit(self) -> bool:
        """Prepare and write in one go (replay, drain, tests); False when there was nothing to commit."""
        prep = self.prepare()
        if prep is None:
            return False
        await self.write(prep)
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
                    shas.update(blob_shas(v))
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


def _sid(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _write_blob(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
