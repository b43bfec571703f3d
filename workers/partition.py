"""One partition's processing: decode frames, align runs, and build the fenced commit.

Guarantees:

- Entries are applied in stream order; a frame already applied (same ``producer``/``seq``) is skipped, so a
  client's resend or a redelivery after a crash is a no-op.
- A malformed frame (undecodable, unknown version, over a limit, or of a run that belongs to another partition)
  goes to the dead-letter stream with its reason and the raw bytes; a bad event inside a good frame is
  dead-lettered alone and counted as a rejected call of its run. Processing carries on either way.
- One run's data cannot stop its partition: a frame whose ``seq`` is more than :data:`SEQ_WINDOW` past its
  producer's next expected number is refused (``seq_out_of_window``), so it cannot make the producer's later frames
  look like duplicates; a call with a number the segment format cannot hold (an int outside int64) is rejected
  (``int_range``). An entry that crashes the worker or fails its commit whatever the reason is isolated and
  dead-lettered by :mod:`workers.attempts`.
- :meth:`PartitionProcessor.commit` writes the segments first, then one metadata transaction with the segments,
  the per-run state and the offset, conditional on the epoch. In memory nothing is trusted after a failed commit:
  the caller drops the processor and a new one resumes from the committed offset.
- After each commit that moved the offset, a live worker (``announce``) adds an entry with the committed offset
  as its id to ``<ns>:{pNN}:committed`` (:meth:`schemas.Names.committed`), naming the rows and rejected calls of
  each run finished in it: clients wait on it for read-your-writes. The announcement is best effort (the commit
  is already durable): a failure is logged and the next commit announces a later offset; an id not above the
  stream's last (a stale owner, a commit that did not move the offset) is refused by Redis and ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from redis.exceptions import ResponseError

from schemas import FRAME_FIELD, BadEvent, Finish, Frame, Limits, Log, LogBlock, Names, SchemaError, decode_frame
from schemas.clients import REDIS_ERRORS, AsyncRedis
from schemas.commits import KEEP as ANNOUNCE_KEEP
from schemas.commits import announcement
from schemas.frame import MAX_STEP
from schemas.media import blob_shas
from schemas.objects import ObjectStore, as_store
from schemas.store import blob_path
from schemas.values import MEDIA_KINDS, OTHER

from ._faults import crash_point, poison_point
from .align import Row, RowBatch, RunAligner
from .attempts import Attempt, Poison
from .metastore import Commit, MetaStore, RejectionRow, RunUpdate, SegmentRef
from .segments import rows_to_table, write_table

log = logging.getLogger("stepline.worker")

RunKey = tuple[str, str]
#: Dead letters of one stream entry get ids ``<ms>-<seq * DLQ_PER_ENTRY + k>``; more than this many share the last.
DLQ_PER_ENTRY = 1 << 16
Entry = tuple[bytes, dict[bytes, bytes]]
#: A frame whose ``seq`` is more than this past its producer's next expected number (or, for a producer not seen
#: yet, more than this) is refused (``seq_out_of_window``): applying it would make every later frame of the
#: producer look like a duplicate. The SDK numbers events contiguously from 0, so a real gap is events lost in
#: Redis; 2**32 events of one producer is far more than any retention window holds.
SEQ_WINDOW = 1 << 32
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_T = TypeVar("_T")
_R = TypeVar("_R")


class StaleObjects(OSError):
    """A commit took so long that its segment objects could be collected as orphans; it is redone (an outage-like
    error: the partition restarts from the committed offset)."""


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
    #: Entry ids not to apply: entries dead-lettered as ``poison`` (replay skips them as the live worker did).
    skip: frozenset[str] = frozenset()
    #: The owner's attempt record (:mod:`workers.attempts`); None outside a worker (replay, tests).
    attempt: Attempt | None = None
    #: Where segments and blobs go (:mod:`schemas.objects`); None: the local ``data_dir``.
    objects: ObjectStore | None = None
    #: A commit whose segment objects were written longer ago than this (seconds) is refused and redone from the
    #: committed offset: orphan collection deletes unreferenced objects older than twice this
    #: (``WorkerSettings.orphan_grace_s``), so a commit stalled that long must not reference its objects any more.
    max_object_age_s: float = 1800.0
    #: Announce each commit on ``<ns>:{pNN}:committed`` (the live worker; replay and tests do not).
    announce: bool = False
    #: Run state kept in memory (None: every run seen, as replay wants). Past ``run_cache_max`` runs, or for a
    #: run finished or not seen for ``run_cache_idle_s`` seconds, state whose every change is committed is
    #: dropped, and loaded from the metadata store again if its run logs again (:meth:`evict_idle`).
    run_cache_max: int | None = None
    run_cache_idle_s: float = 300.0
    read_id: str = ""
    runs: dict[RunKey, RunAligner] = field(default_factory=dict)
    seen: dict[RunKey, float] = field(default_factory=dict)  # run -> when a frame of it was last read
    evicted: int = 0  # run states dropped from memory (reloaded on their next frame)
    last_evict: float = 0.0
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
        if self.objects is None:
            self.objects = as_store(self.data_dir)

    @property
    def uncommitted(self) -> bool:
        return self.read_id != self.offset

    def _dead_letter(self, entry_id: str, reason: str, message: str, raw: bytes | None = None,
                     **extra: Any) -> None:
        if not self.dead_letters:
            return
        fields: dict[bytes, bytes] = {
            b"id": entry_id.encode(), b"reason": reason.encode(),
            b"message": message.encode(errors="backslashreplace")[:2000],  # (it may quote client input)
        }
        if raw is not None:
            fields[b"raw"] = raw
        for k, v in extra.items():
            fields[k.encode()] = b"" if v is None else str(v).encode(errors="backslashreplace")
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
            if entry_id in self.skip:
                self._dead_letter(entry_id, "poison", "dead-lettered as poison by the live worker", raw)
                continue
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
            home = self.names.partition(frame.project, frame.run)
            if home != self.p:
                # Applied here, the frame would race the run's real partition (another owner, another cursor).
                log.warning("partition %d entry %s dead-lettered: run %s/%s belongs to partition %d", self.p,
                            entry_id, frame.project, frame.run, home)
                self._dead_letter(entry_id, "wrong_partition",
                                  f"run {frame.project!r}/{frame.run!r} belongs to partition {home}, not {self.p}",
                                  raw, project=frame.project, run=frame.run)
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
        now = time.monotonic()
        seen = self.seen
        for entry_id, frame in decoded:
            self._apply(entry_id, frame)
            seen[(frame.project, frame.run)] = now
        self.read_id = entries[-1][0].decode()
        self.entries_since_commit += len(entries)
        self.last_read = now
        crash_point("read")

    def poison(self, poison: Poison) -> None:
        """Dead-letter an entry that failed :data:`workers.attempts.ALONE_FAILS` attempts alone, unapplied, and
        move past it (the caller commits at once)."""
        raw_id, fields = poison.entry
        entry_id = raw_id.decode()
        log.error("partition %d entry %s dead-lettered as poison: %s", self.p, entry_id, poison.message())
        self._dead_letter(entry_id, "poison", poison.message(), fields.get(FRAME_FIELD), attempts=poison.fails)
        self.read_id = entry_id
        self.entries_since_commit += 1
        self.last_read = time.monotonic()

    def _apply(self, entry_id: str, frame: Frame) -> None:
        key = (frame.project, frame.run)
        r = self.runs[key]
        poison_point("apply", frame.run)
        nxt = r.producers.get(frame.producer)
        if frame.seq > (nxt or 0) + SEQ_WINDOW:
            self.dirty.add(key)
            expected = "its first frame" if nxt is None else f"the next expected seq {nxt}"
            r.reject("seq_out_of_window", None, r.cursor, None,
                     f"producer {frame.producer!r:.80}: frame seq {frame.seq} is more than {SEQ_WINDOW} past "
                     f"{expected}; its {len(frame.events)} event(s) were not applied")
            self._emit_rejections(entry_id, frame, r)
            return
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
                    if isinstance(ev, Log | LogBlock) and (_has_wide_int(ev) or _past_last_step(r.cursor, ev)):
                        self._apply_calls(r, ev)
                    else:
                        r.apply(ev)
                except Exception as e:
                    # Same reasoning as a decoder crash: reject the event (deterministically, so a replay
                    # converges) rather than stall the partition on it forever.
                    log.exception("partition %d entry %s: applying an event crashed; rejected", self.p, entry_id)
                    r.reject("internal_error", None, r.cursor, None, f"{type(e).__name__}: {e}"[:500])
        self._emit_rejections(entry_id, frame, r)

    @staticmethod
    def _apply_calls(r: RunAligner, ev: Log | LogBlock) -> None:
        """Apply a call, or a block call by call, rejecting each call with an int outside int64 (a number column is
        int64: the segment writer would refuse the whole commit). A call without a step past the last step a
        segment holds is the aligner's to refuse (``bad_step``, :meth:`RunAligner.apply_log`)."""
        for call in ev.calls() if isinstance(ev, LogBlock) else [ev]:
            bad = next((k for k, v in call.data.items() if type(v) is int and not _INT64_MIN <= v <= _INT64_MAX),
                       None)
            if bad is not None:
                r.reject("int_range", call.step, r.cursor, call.ts,
                         f"value of {bad!r:.80} is an int outside int64: {call.data[bad]}")
            else:
                r.apply(call)

    def _emit_rejections(self, entry_id: str, frame: Frame, r: RunAligner) -> None:
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
        pos = id_tuple(self.read_id)
        try:
            info: dict[str, Any] = await self.redis.xinfo_stream(self.names.stream(self.p))
        except ResponseError:  # no such key: nothing written yet, unless this worker read entries of it
            if pos == (0, 0):
                return None
            info = {}
        first = info.get("first-entry")
        first_id = _sid(first[0]) if first else None
        last_id = _sid(info.get("last-generated-id")) or "0-0"
        max_deleted = _sid(info.get("max-deleted-entry-id")) or "0-0"
        added = info.get("entries-added")
        problem = None
        if not info:
            problem = (f"the stream is gone although entries up to {self.read_id} were read from it: Redis lost "
                       f"acknowledged entries (a restart without persistence)")
        elif id_tuple(last_id) < pos:
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
        if problem is None and pos != (0, 0):
            # The entry at the position read is never trimmed (trims keep the committed offset's entry, and the
            # position is at or past it): gone means Redis came back from an older state, even when new entries
            # have since pushed the last id past the position again.
            stream = self.names.stream(self.p)
            if not await self.redis.xrange(stream, min=self.read_id, max=self.read_id, count=1):
                problem = (f"the entry at the position read {self.read_id} is gone from the stream (its last id "
                           f"is {last_id}): Redis came back without acknowledged entries (an older snapshot, or "
                           f"a failover)")
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
        t_written = time.monotonic()  # before the first object: the oldest object's age is at most the elapsed time
        await self._copy_blobs([row for _, _, rows in prep.work for row in rows], [u.info for u in prep.updates])
        segments = await asyncio.to_thread(self._write_segments, prep.work)
        crash_point("segments")
        if prep.dlq:
            pipe = self.redis.pipeline(transaction=False)
            # Ascending ids (malformed frames are dead-lettered while decoding, rejections while applying).
            letters = sorted(prep.dlq, key=lambda d: id_tuple(d[0]))
            for dlq_id, fields in letters:
                pipe.xadd(self.names.dlq(self.p), fields, id=dlq_id)  # type: ignore[arg-type]
            for (dlq_id, fields), res in zip(letters, await pipe.execute(raise_on_error=False), strict=True):
                # "equal or smaller than the target stream top item": written by an earlier attempt.
                if isinstance(res, ResponseError) and "equal or smaller" not in str(res):
                    raise res
                if isinstance(res, ResponseError) and fields.get(b"reason") == b"poison":
                    await self._late_letter(dlq_id, fields)
        c = Commit(self.p, self.epoch, prep.read_id, prep.updates, segments, prep.rejections)
        if segments and time.monotonic() - t_written > self.max_object_age_s:
            raise StaleObjects(f"partition {self.p}: segment objects written {time.monotonic() - t_written:.0f} s "
                               f"ago (past {self.max_object_age_s:.0f} s) may be collected as orphans; redoing the "
                               "commit from the committed offset")
        await asyncio.to_thread(self.store.commit, c)
        crash_point("committed")
        moved = prep.read_id != self.offset
        self.offset = prep.read_id
        if self.announce and moved:
            await self._announce(prep)
        self.touched.update(key for key, _, rows in prep.work if rows)
        self.evict_idle()

    def evict_idle(self, now: float | None = None) -> int:
        """Drop from memory the state of runs that are finished, idle for ``run_cache_idle_s``, or the least
        recently seen past ``run_cache_max``, as long as every change to them is committed (not dirty: a commit
        is written in order, one at a time, so a clean run's last prepared state is durable once ``write``
        returned). A dropped run's next frame loads its state from the store, with the same results. At most one
        pass a second: the pass looks at every run. Returns how many were dropped."""
        if self.run_cache_max is None:
            return 0
        now = time.monotonic() if now is None else now
        if now - self.last_evict < 1.0 and len(self.runs) <= self.run_cache_max:
            return 0
        self.last_evict = now
        dirty, seen, idle = self.dirty, self.seen, self.run_cache_idle_s
        clean = [k for k in self.runs if k not in dirty]
        victims = [k for k in clean if self.runs[k].state != "running" or now - seen.get(k, 0.0) >= idle]
        over = len(self.runs) - len(victims) - self.run_cache_max
        if over > 0:
            chosen = set(victims)
            victims += sorted((k for k in clean if k not in chosen), key=lambda k: seen.get(k, 0.0))[:over]
        for k in victims:
            del self.runs[k]
            seen.pop(k, None)
        self.evicted += len(victims)
        return len(victims)

    async def _announce(self, prep: PreparedCommit) -> None:
        fields = announcement(prep.read_id, [(u.project, u.run, u.rows, u.rejected) for u in prep.updates
                                             if u.state != "running"])
        try:
            await self.redis.xadd(self.names.committed(self.p), fields,  # type: ignore[arg-type]
                                  id=prep.read_id, maxlen=ANNOUNCE_KEEP, approximate=True)
        except ResponseError as e:
            if "equal or smaller" not in str(e):
                log.warning("partition %d: announcing commit %s failed: %s", self.p, prep.read_id, e)
        except REDIS_ERRORS as e:
            log.warning("partition %d: announcing commit %s failed: %r", self.p, prep.read_id, e)

    async def _late_letter(self, dlq_id: str, fields: dict[bytes, bytes]) -> None:
        """A poison letter refused as "smaller than the top": unlike every other dead letter, it did not exist when
        an earlier, failed attempt wrote the letters of later entries. Unless it is there already (under its id,
        or among the last letters: a retry of this commit), it is added under a new id (its ``id`` field names
        the entry)."""
        dlq = self.names.dlq(self.p)
        if await self.redis.xrange(dlq, min=dlq_id, max=dlq_id):
            return
        recent = cast("list[Entry]", await self.redis.xrevrange(dlq, count=1000))
        if not any(f.get(b"id") == fields[b"id"] and f.get(b"reason") == b"poison" for _, f in recent):
            await self.redis.xadd(dlq, fields)  # type: ignore[arg-type]

    async def commit(self) -> bool:
        """Prepare and write in one go (replay, drain, tests); False when there was nothing to commit."""
        prep = self.prepare()
        if prep is None:
            return False
        await self.write(prep)
        return True

    def _write_segments(self, work: list[tuple[RunKey, RunAligner, list[Row | RowBatch]]]) -> list[SegmentRef]:
        """One segment object per run with new rows, each complete before this returns. On a bucket the runs'
        objects are encoded and PUT concurrently (``ObjectStore.write_concurrency`` at a time): each PUT waits a
        round trip, and a commit of a partition holding many runs would otherwise wait for them one by one."""
        objects = self.objects
        assert objects is not None
        todo = [(key, r, rows) for key, r, rows in work if rows]

        def one(item: tuple[RunKey, RunAligner, list[Row | RowBatch]]) -> SegmentRef:
            (project, run), r, rows = item
            poison_point("segments", run)
            table = rows_to_table(rows, r.displays)
            rel, size = write_table(objects, project, run, table, level=0)
            steps = table.column("_step")
            return SegmentRef(project, run, 0, int(steps[0].as_py()), int(steps[-1].as_py()), table.num_rows,
                              size, rel)

        return _concurrently(objects.write_concurrency, one, todo)

    async def _copy_blobs(self, rows: list[Row | RowBatch], infos: list[dict[str, Any]]) -> None:
        """Copy media blobs referenced by new rows, and by the summaries and configs of the runs in the commit
        (``run.summary["best"] = wandb.Image(...)``), from Redis into the storage location (content-addressed: a
        blob stored already, by any run, is not copied again)."""
        shas: set[str] = set()
        for info in infos:
            for part in ("summary", "config"):
                if info.get(part):
                    shas.update(blob_shas(info[part]))
        for row in rows:
            if isinstance(row, RowBatch):
                continue  # the fast path never holds media
            for (_ident, kind), v in row.values.items():
                if kind in MEDIA_KINDS or kind == OTHER:  # OTHER: a list of images under one key (W&B's form)
                    shas.update(blob_shas(v))
        objects = self.objects
        assert objects is not None
        if not shas:
            return
        n = objects.write_concurrency  # on a bucket: the HEADs, and then the PUTs, of several blobs at once
        stored = await asyncio.to_thread(_concurrently, n, lambda s: objects.exists(blob_path(s)), sorted(shas))
        todo = [s for s, there in zip(sorted(shas), stored, strict=True) if not there]
        for i in range(0, len(todo), n):  # n blobs in memory at a time
            chunk = todo[i:i + n]
            pipe = self.redis.pipeline(transaction=False)
            for sha in chunk:
                pipe.get(self.names.blob(self.p, sha))
            puts: list[tuple[str, bytes]] = []
            for sha, data in zip(chunk, cast("list[bytes | None]", await pipe.execute()), strict=True):
                if data is None:
                    log.warning("partition %d: blob %s is referenced but not in Redis (expired or never sent)",
                                self.p, sha)
                elif hashlib.sha256(data).hexdigest() != sha:
                    log.warning("partition %d: blob %s does not match its hash; not stored", self.p, sha)
                else:
                    puts.append((blob_path(sha), data))
            await asyncio.to_thread(_concurrently, n, lambda item: objects.put(*item), puts)


def _concurrently(n: int, fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    """``fn`` over ``items``, at most ``n`` at a time in threads (storage requests, which wait on the network with
    the GIL released); results in order, the first error raised once every call has ended."""
    if min(n, len(items)) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(n, len(items)), thread_name_prefix="stepline-objects") as pool:
        return list(pool.map(fn, items))


def _has_wide_int(ev: Log | LogBlock) -> bool:
    """Whether a call of the event logs an int outside int64 (msgpack carries up to 2**64 - 1)."""
    if isinstance(ev, Log):
        return any(type(v) is int and not _INT64_MIN <= v <= _INT64_MAX for v in ev.data.values())
    for col in ev.cols:  # array columns are int64 or float64 already; lists are scanned in C first
        if (isinstance(col, list) and int in set(map(type, col))
                and any(type(v) is int and not _INT64_MIN <= v <= _INT64_MAX for v in col)):
            return True
    return False


def _past_last_step(cursor: int, ev: Log | LogBlock) -> bool:
    """Whether a call of the event may meet a cursor past the last step a segment holds (then it goes call by
    call: the block fast path's int64 arrays cannot hold such a cursor either)."""
    if isinstance(ev, Log):
        return ev.step is None and cursor > MAX_STEP
    return cursor + len(ev) > MAX_STEP


def _sid(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else v
