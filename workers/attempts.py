"""Poison entries: a stream entry that kills its worker, or fails its commit, every time it is processed is found
and dead-lettered, so it can never stall its partition (docs/DESIGN.md §6, "Poison entries").

Nothing in memory survives a crash (a C library's SIGSEGV, an out-of-memory kill), so each attempt at a partition
is recorded in Redis before its entries are processed: one hash per partition, ``<ns>:{pNN}:attempts`` (in the
partition's Redis Cluster slot):

- ``first``: the first entry after the committed offset when the attempt began; ``last``: the last entry it read;
- ``open``: the attempt's token while it may fail, ``""`` once it ended cleanly (committed past ``first``,
  released, drained, fenced, or dropped for a Redis or database outage);
- ``fails``: earlier attempts from ``first`` that ended neither with a commit past it nor cleanly (the worker
  died, or an error that is not an outage), and ``error``, the last such error (empty when the worker died);
- ``alone`` and ``until``: set while suspect entries are isolated (below).

A new owner (a new :class:`PartitionProcessor`) reads the hash once, before its first batch. When the first entry
after the committed offset is still ``first`` and the attempt recorded is still open, that attempt failed.

After :data:`RANGE_FAILS` failed attempts from the same entry, the entries up to the ``last`` any of them read are
*isolated*: processed one at a time, each in a window where nothing else of the worker runs (every other commit
has landed, no other partition is processed, housekeeping waits) and committed before the window closes. A crash
or an error inside such a window is that entry's, certainly: an entry whose window failed :data:`ALONE_FAILS`
times is dead-lettered (reason ``poison``, its raw bytes kept) instead of processed, and the partition moves on.
Past the suspect range, entries are batched again.

A crash also ends the attempts of the worker's other partitions that held uncommitted entries, so they may be
isolated too (slower for a while, never dead-lettered: their windows do not fail). Random kills of healthy
workers are not mistaken for poison either: that takes :data:`ALONE_FAILS` kills inside the same entry's window.

Cost on the normal path: one ``HSET`` per read batch, pipelined for all partitions of a round (one round trip),
and one ``HGETALL`` per new owner.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import RedisError
from sqlalchemy import exc as sa_exc

from schemas import Names
from schemas.clients import AsyncRedis

if TYPE_CHECKING:
    from .partition import Entry, PartitionProcessor

log = logging.getLogger("stepline.worker")

#: Failed attempts from the same entry before the entries they read are isolated.
RANGE_FAILS = 2
#: Failed windows of one isolated entry before it is dead-lettered as ``poison``.
ALONE_FAILS = 2
#: Tokens of attempts this process ended cleanly (kept for when Redis could not be told, e.g. during an outage).
_CLEAN_TOKENS = 4096

# Mark the attempt ended cleanly, if it is still the one recorded (another owner may have started one since).
_CLOSE = "if redis.call('hget', KEYS[1], 'open') == ARGV[1] then redis.call('hset', KEYS[1], 'open', '') end return 0"
# Record the error an attempt failed with, if it is still the one recorded.
_FAILED = ("if redis.call('hget', KEYS[1], 'open') == ARGV[1] then redis.call('hset', KEYS[1], 'error', ARGV[2]) "
           "end return 0")


def attempts_key(names: Names, p: int) -> str:
    """The partition's attempt record (a hash in the partition's Redis Cluster slot)."""
    return f"{names.namespace}:{names.tag(p)}:attempts"


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


def transient(exc: BaseException) -> bool:
    """An outage (Redis, the network, the file system, the metadata database unreachable or locked), as opposed to
    an error the entries being processed may have caused."""
    return isinstance(exc, RedisError | OSError | TimeoutError | sa_exc.OperationalError | sa_exc.InterfaceError
                      | sa_exc.DisconnectionError | sa_exc.TimeoutError)


@dataclass(slots=True)
class Marker:
    """The attempt record as Redis holds it."""

    first: str = ""
    last: str = ""
    open: str = ""
    fails: int = 0
    error: str = ""
    alone: bool = False
    until: str = ""

    @classmethod
    def parse(cls, h: dict[bytes, bytes]) -> Marker:
        def s(k: str) -> str:
            return h.get(k.encode(), b"").decode(errors="replace")

        try:
            fails = int(s("fails") or 0)
        except ValueError:
            fails = 0
        return cls(first=s("first"), last=s("last"), open=s("open"), fails=fails, error=s("error"),
                   alone=s("alone") == "1", until=s("until"))

    def fields(self) -> dict[str, str]:
        return {"first": self.first, "last": self.last, "open": self.open, "fails": str(self.fails),
                "error": self.error, "alone": "1" if self.alone else "0", "until": self.until}


@dataclass(slots=True)
class Attempt:
    """One owner's attempt at a partition: lives as long as its :class:`PartitionProcessor`."""

    token: str
    #: The record was read and this attempt written to it (the first batch was seen).
    started: bool = False
    #: The last entry id recorded as read.
    last: str = ""
    #: While isolating: entries up to this id are processed one at a time, each in its own window.
    until: str | None = None
    #: The isolated entry the recorded failures (``alone_fails``, ``alone_error``) belong to.
    alone_first: str | None = None
    alone_fails: int = 0
    alone_error: str = ""

    @property
    def isolating(self) -> bool:
        return self.until is not None


@dataclass(slots=True)
class Poison:
    """An entry to dead-letter instead of processing."""

    entry: Entry
    fails: int
    error: str

    def message(self) -> str:
        if self.error:
            return (f"processing or committing this entry alone failed {self.fails} times (last error: "
                    f"{self.error}); it was not applied")[:2000]
        return (f"the worker died {self.fails} times while it processed this entry alone (killed, out of memory, "
                f"or a crash in native code); it was not applied")


class AttemptGuard:
    """Records attempts in Redis and decides what to process (see the module docstring)."""

    def __init__(self, redis: AsyncRedis, names: Names, worker_id: str) -> None:
        self.redis = redis
        self.names = names
        self._prefix = f"{worker_id}/{uuid.uuid4().hex[:8]}/"
        self._count = itertools.count()
        self._clean: set[str] = set()
        self._clean_order: deque[str] = deque()
        #: Entries dead-lettered as poison by this worker.
        self.poisoned = 0

    def new_attempt(self) -> Attempt:
        return Attempt(token=f"{self._prefix}{next(self._count)}")

    def _remember_clean(self, token: str) -> None:
        if token in self._clean:
            return
        self._clean.add(token)
        self._clean_order.append(token)
        if len(self._clean_order) > _CLEAN_TOKENS:
            self._clean.discard(self._clean_order.popleft())

    async def before(self, batches: list[tuple[PartitionProcessor, list[Entry]]]) -> list[PartitionProcessor]:
        """Record the attempt of each batch before it is processed: one pipelined round trip (plus one to read
        the records of new owners). Returns the processors whose batch must not be processed because their
        entries are to be isolated (:meth:`alone` takes them one at a time)."""
        starting = [proc for proc, _ in batches if proc.attempt is not None and not proc.attempt.started]
        prev: dict[int, Marker] = {}
        if starting:
            pipe = self.redis.pipeline(transaction=False)
            for proc in starting:
                pipe.hgetall(attempts_key(self.names, proc.p))
            for proc, h in zip(starting, await pipe.execute(), strict=True):
                prev[proc.p] = Marker.parse(cast("dict[bytes, bytes]", h or {}))
        pipe = self.redis.pipeline(transaction=False)
        held: list[PartitionProcessor] = []
        for proc, entries in batches:
            a = proc.attempt
            if a is None:
                continue
            key = attempts_key(self.names, proc.p)
            first, last = entries[0][0].decode(), entries[-1][0].decode()
            if a.started:
                if _id(last) > _id(a.last or "0-0"):
                    pipe.hset(key, "last", last)
                    a.last = last
                continue
            a.started = True
            marker = self._start(proc.p, a, prev[proc.p], first, last)
            pipe.hset(key, mapping=marker.fields())  # type: ignore[arg-type]
            a.last = marker.last
            if a.isolating:
                held.append(proc)
        if len(pipe):
            await pipe.execute()
        return held

    def _start(self, p: int, a: Attempt, prev: Marker, first: str, last: str) -> Marker:
        """A new owner's first batch starts at ``first``, the first entry after the committed offset."""
        failed = bool(prev.open) and prev.open != a.token and prev.open not in self._clean
        if prev.first == first:
            fails = prev.fails + (1 if failed else 0)
            error = prev.error if failed else ""
            alone, until = prev.alone, prev.until
            if _id(prev.last or "0-0") > _id(last):
                last = prev.last
        elif prev.until and _id(prev.first or "0-0") < _id(first) <= _id(prev.until):
            # Isolating, and the entries before ``first`` were committed since: go on, one at a time.
            fails, error, alone, until = 0, "", True, prev.until
        else:
            fails, error, alone, until = 0, "", False, ""
        if failed and prev.first == first:
            log.warning("partition %d: the attempt from entry %s%s ended without its commit (%d time(s)): %s", p,
                        first, " alone" if alone else "", fails, error or "the worker died")
        if not alone and fails >= RANGE_FAILS:
            log.warning("partition %d: %d attempts from entry %s ended without a commit; processing the entries up "
                        "to %s one at a time to find the culprit", p, fails, first, last)
            alone, until, fails = True, last, 0
        if not alone:
            return Marker(first=first, last=last, open=a.token, fails=fails, error=error)
        a.until = until or first
        a.alone_first, a.alone_fails, a.alone_error = first, fails, error
        # Not open: a crash before the entry's window (:meth:`alone`) is no failure of it.
        return Marker(first=first, last=first, fails=fails, error=error, alone=True, until=a.until)

    async def alone(self, proc: PartitionProcessor, entry: Entry) -> Poison | None:
        """Open the window of an isolated entry (the caller has made sure nothing else of the worker runs): record
        it, and return a :class:`Poison` when its earlier windows failed :data:`ALONE_FAILS` times."""
        a = proc.attempt
        assert a is not None and a.until is not None
        x = entry[0].decode()
        fails, error = (a.alone_fails, a.alone_error) if a.alone_first == x else (0, "")
        marker = Marker(first=x, last=x, open=a.token, fails=fails, error=error, alone=True, until=a.until)
        await self.redis.hset(attempts_key(self.names, proc.p), mapping=marker.fields())  # type: ignore[arg-type]
        a.last = x
        if fails >= ALONE_FAILS:
            return Poison(entry=entry, fails=fails, error=error)
        return None

    def alone_done(self, proc: PartitionProcessor, entry_id: str) -> None:
        """The isolated entry is committed (or dead-lettered). Past the suspect range, batch again: the next
        batch starts a fresh record."""
        a = proc.attempt
        assert a is not None and a.until is not None
        a.alone_first = None
        if _id(entry_id) >= _id(a.until):
            log.info("partition %d: the entries up to %s were processed one at a time; batching again", proc.p,
                     a.until)
            a.until = None
            a.started = False

    def leave_isolation(self, proc: PartitionProcessor) -> None:
        """Nothing left to isolate (the stream holds no more entries)."""
        a = proc.attempt
        if a is not None:
            a.until, a.alone_first, a.started = None, None, False

    def ended_clean(self, proc: PartitionProcessor) -> None:
        """The attempt of ``proc`` ended cleanly (an outage, a hand-over): remembered in this process, so it does
        not count as a failure even when Redis could not be told."""
        a = proc.attempt
        if a is not None:
            self._remember_clean(a.token)

    async def close(self, proc: PartitionProcessor) -> None:
        """The attempt of ``proc`` ended cleanly: remembered, and recorded in Redis (best effort) for the next
        owner, whichever worker that is."""
        self.ended_clean(proc)
        a = proc.attempt
        if a is None or not a.started:
            return
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_CLOSE, 1, attempts_key(self.names, proc.p), a.token)

    def close_in(self, pipe: Any, proc: PartitionProcessor) -> None:
        """:meth:`close`, as one command of the caller's pipeline."""
        self.ended_clean(proc)
        a = proc.attempt
        if a is not None and a.started:
            pipe.eval(_CLOSE, 1, attempts_key(self.names, proc.p), a.token)

    async def failed(self, proc: PartitionProcessor, error: str) -> None:
        """The attempt of ``proc`` failed with ``error``: it counts (as a crash counts, without this call); the
        error is recorded for the dead letter's message (best effort)."""
        a = proc.attempt
        if a is None or not a.started:
            return
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_FAILED, 1, attempts_key(self.names, proc.p), a.token, error[:1000])


__all__ = ["ALONE_FAILS", "RANGE_FAILS", "Attempt", "AttemptGuard", "Marker", "Poison", "attempts_key", "transient"]
