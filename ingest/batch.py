"""Caller-side buffer of one run and the packer that turns it into frames (shared by both transports).

``log()`` appends a row (values list, step, commit, timestamp) to the open *block* of calls with the same keys;
other events are encoded at call time and queued as raw bytes. :meth:`Batcher.pack` (run by the sender, or by
the caller under backpressure) seals the open block, encodes every queued item, numbers the events (``seq``,
contiguous per producer, one per event, a block being one event) and cuts them into frames of about
``frame_target_bytes``. Packing is serialised by ``pack_lock``, so frames reach the outbox in ``seq`` order even
when two threads pack.

A block that fails to encode (a value ``log()`` should have refused: a bug, or an object changed under a fast
path) is never dropped whole: its calls are encoded again one by one, the calls that cannot be encoded are dropped
and counted (``dropped_calls``, reported by ``finish()``), and a ``warning`` event in their place tells the
worker, which adds it to the run's warnings. Every other call of the batch is sent.

Block columns are float64 arrays when every value of the column is a ``float``, int64 arrays when every value is
an ``int`` (never ``bool``), else lists; ``ts`` is a float64 array (the wire contract of ``schemas.LogBlock``).
A block remembers the value types of its rows (its *signature*) while they all agree, so the packer converts
each column once with a known dtype instead of scanning the types of every value again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from schemas import ClientWarning, LimitError, Limits, LogBlock, encode_event, encode_frame_raw, packb

from .spill import Entry

logger = logging.getLogger("ingest")

#: One log call in a block: (values in key order, step, commit, client timestamp).
Row = tuple[tuple[Any, ...], int | None, bool | None, float]
#: The types of one call's values, in key order.
Sig = tuple[type, ...]
#: A queued item: ("e", event bytes, blobs, None) or ("b", keys, rows, the rows' common signature or None).
Item = tuple[str, Any, Any, "Sig | None"]

_F64 = np.float64
_I64 = np.int64


def _column(col: tuple[Any, ...]) -> Any:
    types = set(map(type, col))
    if len(types) == 1:
        t = types.pop()
        if t is float:
            return np.array(col, dtype=_F64)
        if t is int:  # capture() / the fast path already checked the int64 range
            return np.array(col, dtype=_I64)
    return list(col)


def encode_block(keys: tuple[str, ...], rows: list[Row], limits: Limits, sig: Sig | None = None) -> list[bytes]:
    """Encode rows as one ``logs`` event, split in halves while an event would pass the event size limit.

    ``sig``: the value types every row shares (``log()`` saw them), or None when the rows differ.
    """
    vals = [r[0] for r in rows]
    if not keys:
        cols: list[Any] = []
    elif sig is not None and all(t is float for t in sig):
        # The common case (every value a float): one C-level conversion, then contiguous column views.
        cols = list(np.ascontiguousarray(np.array(vals, dtype=_F64).T))
    elif sig is not None:
        cols = [np.array(c, dtype=_F64) if t is float else np.array(c, dtype=_I64) if t is int else list(c)
                for t, c in zip(sig, zip(*vals, strict=True), strict=True)]
    else:  # the rows' types differ (so they are not all floats): look at each column
        cols = [_column(c) for c in zip(*vals, strict=True)]
    ev = LogBlock(
        keys=list(keys),
        ts=np.array([r[3] for r in rows], dtype=_F64),
        step=[r[1] for r in rows],
        commit=[r[2] for r in rows],
        cols=cols,
    )
    try:
        return [encode_event(ev, limits)]
    except LimitError:
        if len(rows) == 1:
            raise
        half = len(rows) // 2
        return encode_block(keys, rows[:half], limits, sig) + encode_block(keys, rows[half:], limits, sig)


def _reason(keys: tuple[str, ...], row: Row, err: Exception) -> str:
    """Why a call does not encode, naming the first key whose value does not encode alone when there is one."""
    for key, v in zip(keys, row[0], strict=False):
        try:
            packb(v)
        except Exception as e:  # only looking for the culprit, whatever it raises
            return f"key {key!r:.80}: {type(e).__name__}: {e}"[:400]
    return f"{type(err).__name__}: {err}"[:400]


class Batcher:
    """Pending log calls and events of one producer. ``lock`` guards the buffers; hold it briefly."""

    def __init__(
        self,
        *,
        project: str,
        run: str,
        producer: str,
        stream: str,
        blob_key: Any,
        limits: Limits,
        frame_target_bytes: int,
        max_block_rows: int,
    ) -> None:
        self.project = project
        self.run = run
        self.producer = producer
        self.stream = stream
        self._blob_key = blob_key
        self.limits = limits
        self.frame_target_bytes = frame_target_bytes
        self.max_block_rows = max_block_rows
        self.lock = threading.Lock()
        self.pack_lock = threading.Lock()
        #: Keys of the open block (validated); a plain dict with exactly these keys may take the fast path.
        self.block_keys: tuple[str, ...] | None = None
        self.rows: list[Row] = []
        #: The value types every row of the open block shares; None once two rows differ.
        self.block_sig: Sig | None = None
        self.items: list[Item] = []
        #: Rows sealed into ``items`` and not yet packed (the backpressure measure).
        self.sealed_rows = 0
        #: The next event's sequence number.
        self.seq = 0
        #: Log calls dropped because they could not be encoded (each is also in a ``warning`` event).
        self.dropped_calls = 0
        #: Called (under ``lock``) when a call or event arrives while nothing is pending: an idle sender sleeps
        #: until then instead of waking every flush interval.
        self.on_first: Callable[[], None] | None = None

    # -- caller side (hold ``lock``) ------------------------------------------------------------------------

    def seal_locked(self) -> None:
        if self.rows:
            self.items.append(("b", self.block_keys, self.rows, self.block_sig))
            self.sealed_rows += len(self.rows)
            self.rows = []

    def add_event_locked(self, raw: bytes, blobs: dict[str, bytes]) -> None:
        if not self.rows and not self.items and self.on_first is not None:
            self.on_first()
        self.seal_locked()  # keep the order of calls: the open block comes before this event
        self.items.append(("e", raw, blobs, None))
        self.sealed_rows += 1  # an event is a call waiting to be packed too (the backpressure measure)

    def add_row_locked(self, keys: tuple[str, ...], row: Row, sig: Sig) -> bool:
        """Append a row whose values have the types ``sig``; return True when a block was sealed (the caller may
        want to wake the sender, and checks the backpressure measure)."""
        sealed = False
        if keys is not self.block_keys and keys != self.block_keys:
            sealed = bool(self.rows)  # calls alternating their keys seal a block each: they count too
            self.seal_locked()
            self.block_keys = keys
        if not self.rows:
            self.block_sig = sig
            if not self.items and self.on_first is not None:
                self.on_first()
        elif sig is not self.block_sig and sig != self.block_sig:
            self.block_sig = None
        self.rows.append(row)
        if len(self.rows) >= self.max_block_rows:
            self.seal_locked()
            return True
        return sealed

    # -- packer side ------------------------------------------------------------------------------------------

    def pack(self) -> list[Entry]:
        """Seal and encode everything pending into frames, in ``seq`` order. Call with ``pack_lock`` held."""
        with self.lock:
            self.seal_locked()
            items = self.items
            self.items = []
            self.sealed_rows = 0
        if not items:
            return []
        events: list[tuple[bytes, dict[str, bytes]]] = []
        for kind, a, b, sig in items:
            if kind == "e":
                events.append((a, b))
                continue
            try:
                events.extend((raw, {}) for raw in encode_block(a, b, self.limits, sig))
            except Exception:  # whatever failed, the block's other calls must still be sent
                events.extend(self._salvage(a, b))
        return self._frames(events)

    def _salvage(self, keys: tuple[str, ...], rows: list[Row]) -> list[tuple[bytes, dict[str, bytes]]]:
        """Encode the calls of a block that failed as a whole: the calls that encode alone, in order, then a
        ``warning`` event naming what was dropped. log() refuses such values up front, so reaching this is a
        bug; the calls lost are counted and reported, never dropped quietly with the rest of the batch."""
        good: list[Row] = []
        bad: list[tuple[Row, str]] = []
        for row in rows:
            try:
                encode_block(keys, [row], self.limits)
            except Exception as e:  # the reason is reported, whatever it is
                bad.append((row, _reason(keys, row, e)))
            else:
                good.append(row)
        out: list[tuple[bytes, dict[str, bytes]]] = []
        if good:
            out.extend((raw, {}) for raw in encode_block(keys, good, self.limits))
        if bad:
            self.dropped_calls += len(bad)
            steps = [r[1] for r, _ in bad if r[1] is not None]
            at = f" (steps {steps[0]}..{steps[-1]})" if steps else ""
            message = (f"{len(bad)} log() call(s) dropped by the client{at}: they could not be encoded: "
                       f"{bad[0][1]}")[:900]
            # The reason may quote the offending text: escape it, so the warning itself always encodes.
            message = message.encode("utf-8", "backslashreplace").decode()
            logger.error("stepline: run %s: %s", self.run, message)
            warning = ClientWarning(ts=bad[0][0][3], message=message)
            out.append((encode_event(warning, self.limits), {}))
        return out

    def _frames(self, events: list[tuple[bytes, dict[str, bytes]]]) -> list[Entry]:
        out: list[Entry] = []
        cur: list[bytes] = []
        blobs: dict[str, bytes] = {}
        size = 0
        first = self.seq
        target = self.frame_target_bytes
        for raw, ev_blobs in events:
            if cur and size + len(raw) > target:
                out.append(self._entry(first, cur, blobs))
                first += len(cur)
                cur, blobs, size = [], {}, 0
            cur.append(raw)
            size += len(raw)
            for sha, data in ev_blobs.items():
                blobs[self._blob_key(sha)] = data
        if cur:
            out.append(self._entry(first, cur, blobs))
            first += len(cur)
        self.seq = first
        return out

    def _entry(self, seq: int, raws: list[bytes], blobs: dict[str, bytes]) -> Entry:
        frame = encode_frame_raw(self.project, self.run, self.producer, seq, raws, self.limits)
        return Entry(stream=self.stream, frame=frame, blobs=blobs)
