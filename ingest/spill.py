"""The outbox of one producer: encoded frames not yet acknowledged by Redis, in order, memory-capped.

Guarantees:

- Frames leave the outbox only when Redis has acknowledged them (``ack``), oldest first; a frame whose reply was
  lost is sent again (the workers skip duplicates by ``(producer, seq)``), so nothing produced is ever dropped.
- At most ``memory_cap`` bytes of frames and blobs are held in memory. Past the cap, or when asked (Redis has
  been failing for a while, or the run finishes with frames unsent), every frame held in memory is appended to
  the spill file ``<data_dir>/spill/<project>/<run>-<producer>.spill`` (names escaped by :func:`file_name`, so
  no project or run name can lead outside ``<data_dir>/spill``). The file's frames are always older than
  the ones in memory, so sending the file first and memory second keeps the producer's order.
- The spill file is append-only, holds length-prefixed, CRC-checked records (stream key, frame bytes, media
  blobs), is locked (``flock``) by its owner while open, fsync'd when closed and deleted once every frame in it
  is acknowledged. A file left behind (crash, or Redis still down at ``finish``) is resent later with
  :func:`ingest.sync.sync_path`.

Record layout: the file starts with :data:`MAGIC`; each record is ``u32 length | u32 crc32 | payload`` (big
endian) where ``payload`` is msgpack ``[stream key, frame bytes, [[blob key, blob bytes], ...]]``. A torn record
at the tail (the process died mid-write) ends the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import msgpack

logger = logging.getLogger("ingest")

MAGIC = b"STEPLINE-SPILL-1\n"
_HEAD = struct.Struct(">II")


def file_name(name: str) -> str:
    """``name`` as one path component that stays inside its folder: every character but ASCII letters, digits,
    ``_``, ``-`` and non-leading ``.`` is percent-escaped (so ``..``, ``/``, NUL and case-folding file systems'
    surprises cannot name another place), and it is never empty."""
    escaped = quote(name, safe="") or "%00"
    return "%2E" + escaped[1:] if escaped.startswith(".") else escaped


def spill_path(data_dir: Path, project: str, run: str, producer: str) -> Path:
    """Where the producer's frames spill: ``<data_dir>/spill/<project>/<run>-<producer>.spill``, names escaped."""
    return data_dir / "spill" / file_name(project) / f"{file_name(run)}-{file_name(producer)}.spill"


@dataclass(slots=True)
class Entry:
    """One stream entry to write: the frame, the stream it goes to, and the blobs it references."""

    stream: str
    frame: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    #: Position in the producer's outbox order (assigned by :meth:`Outbox.put`).
    idx: int = -1

    @property
    def nbytes(self) -> int:
        return len(self.frame) + sum(len(b) for b in self.blobs.values())


def encode_record(entry: Entry) -> bytes:
    payload: bytes = msgpack.packb(
        [entry.stream, entry.frame, [[k, v] for k, v in entry.blobs.items()]], use_bin_type=True
    )
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_payload(payload: bytes) -> Entry:
    stream, frame, blobs = msgpack.unpackb(payload, raw=False)
    if not isinstance(stream, str) or not isinstance(frame, bytes) or not isinstance(blobs, list):
        raise ValueError("bad spill record")
    return Entry(stream=stream, frame=frame, blobs={str(k): bytes(v) for k, v in blobs})


def iter_records(data: bytes, offset: int = 0) -> Iterator[tuple[int, Entry]]:
    """Yield ``(end offset, entry)`` for each intact record of spill-file bytes from ``offset``.

    Stops quietly at a torn or corrupt record: everything before it was written whole (records are appended in
    order, so a bad record can only be the last one a dying process started).
    """
    if offset == 0:
        if not data.startswith(MAGIC):
            raise ValueError("not a stepline spill file")
        offset = len(MAGIC)
    n = len(data)
    while offset + _HEAD.size <= n:
        length, crc = _HEAD.unpack_from(data, offset)
        start = offset + _HEAD.size
        end = start + length
        if end > n:
            logger.warning("spill file ends in a torn record at offset %d; ignoring it", offset)
            return
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            logger.warning("spill record at offset %d fails its checksum; ignoring it and the rest", offset)
            return
        try:
            entry = _decode_payload(payload)
        except (ValueError, TypeError, msgpack.UnpackException):
            logger.warning("spill record at offset %d does not decode; ignoring it and the rest", offset)
            return
        yield end, entry
        offset = end


class SpillFile:
    """The append-only spill file of one producer, locked by its owner while open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO = open(path, "a+b")  # noqa: SIM115 - owned, closed in close()/discard()
        try:
            # A second process (or `stepline sync`) must not resend frames this producer still owns.
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.close()
            raise
        self._f.seek(0, os.SEEK_END)
        if self._f.tell() == 0:
            self._f.write(MAGIC)
            self._f.flush()
        self.size = self._f.tell()

    def append(self, entries: list[Entry]) -> list[int]:
        """Append records; return each record's end offset. Flushed to the OS (not fsync'd) on return."""
        ends: list[int] = []
        chunks: list[bytes] = []
        off = self.size
        for e in entries:
            rec = encode_record(e)
            chunks.append(rec)
            off += len(rec)
            ends.append(off)
        self._f.write(b"".join(chunks))
        self._f.flush()
        self.size = off
        return ends

    def read(self, start: int, end: int) -> bytes:
        return os.pread(self._f.fileno(), end - start, start)

    def close(self) -> None:
        """Flush, fsync and unlock: what is in the file survives a crash of the machine."""
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def discard(self) -> None:
        """Delete the file (every frame in it is acknowledged), then release the lock."""
        if self._f.closed:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._f.close()


class Outbox:
    """Unacknowledged frames of one producer, oldest first: the spill file's records, then memory.

    Thread-safe: the sender (thread or asyncio task) peeks and acks while the caller's thread may put (under
    backpressure). Entries are numbered in order; :meth:`ack` takes the number of the last acknowledged entry,
    so an entry spilled while it was in flight is still acknowledged correctly.
    """

    def __init__(self, spill_path: Path, memory_cap: int) -> None:
        self.spill_path = spill_path
        self.memory_cap = memory_cap
        self._lock = threading.Lock()
        self._next_idx = 0
        self._mem: deque[Entry] = deque()
        self._mem_bytes = 0
        self._file: SpillFile | None = None
        # (idx, end offset) of every unacknowledged record in the spill file, in order.
        self._file_index: deque[tuple[int, int]] = deque()
        self._file_read_off = 0
        self.spilled_frames = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem) + len(self._file_index)

    @property
    def memory_bytes(self) -> int:
        return self._mem_bytes

    @property
    def file_frames(self) -> int:
        return len(self._file_index)

    @property
    def memory_frames(self) -> int:
        return len(self._mem)

    def put(self, entries: list[Entry]) -> None:
        """Add frames (in order); spills everything in memory if the cap is passed."""
        if not entries:
            return
        with self._lock:
            for e in entries:
                e.idx = self._next_idx
                self._next_idx += 1
                self._mem.append(e)
                self._mem_bytes += e.nbytes
            if self._mem_bytes > self.memory_cap:
                self._spill_locked()

    def spill(self) -> None:
        """Move every frame held in memory to the spill file."""
        with self._lock:
            self._spill_locked()

    def _spill_locked(self, quiet: bool = False) -> None:
        if not self._mem:
            return
        if self._file is None:
            self._file = SpillFile(self.spill_path)
            self._file_read_off = self._file.size
            if not quiet:
                logger.warning("stepline: Redis is unreachable or slow; spilling frames to %s", self.spill_path)
        entries = list(self._mem)
        ends = self._file.append(entries)
        self._file_index.extend((e.idx, end) for e, end in zip(entries, ends, strict=True))
        self.spilled_frames += len(entries)
        self._mem.clear()
        self._mem_bytes = 0

    def peek(self, max_bytes: int, max_frames: int = 512) -> list[Entry]:
        """The oldest unacknowledged frames (at least one if any), up to ``max_bytes``; they stay in the outbox."""
        with self._lock:
            if self._file_index and self._file is not None:
                n = 0
                size = 0
                prev = self._file_read_off
                for _, end in self._file_index:
                    if n and (size + end - prev > max_bytes or n >= max_frames):
                        break
                    size += end - prev
                    prev = end
                    n += 1
                start = self._file_read_off
                data = self._file.read(start, prev)
                out: list[Entry] = []
                for (idx, _), (_, e) in zip(list(self._file_index)[:n], _iter_raw(data), strict=True):
                    e.idx = idx
                    out.append(e)
                return out
            out = []
            size = 0
            for e in self._mem:
                if out and (size + e.nbytes > max_bytes or len(out) >= max_frames):
                    break
                out.append(e)
                size += e.nbytes
            return out

    def ack(self, upto_idx: int) -> None:
        """Every entry numbered ``<= upto_idx`` has been acknowledged by Redis."""
        with self._lock:
            while self._file_index and self._file_index[0][0] <= upto_idx:
                _, end = self._file_index.popleft()
                self._file_read_off = end
            if not self._file_index and self._file is not None:
                self._file.discard()
                self._file = None
                logger.info("stepline: every spilled frame is acknowledged; removed %s", self.spill_path)
            while self._mem and self._mem[0].idx <= upto_idx:
                self._mem_bytes -= self._mem.popleft().nbytes

    def close(self) -> Path | None:
        """Spill what is still in memory, fsync and close the file; return its path if frames are left."""
        with self._lock:
            self._spill_locked(quiet=True)  # finish() reports the file itself
            if self._file is None:
                return None
            self._file.close()
            self._file = None
            return self.spill_path if self._file_index else None


def _iter_raw(data: bytes) -> Iterator[tuple[int, Entry]]:
    """Records of a slice of a spill file that starts at a record boundary (no magic)."""
    off = 0
    while off < len(data):
        length, crc = _HEAD.unpack_from(data, off)
        payload = data[off + _HEAD.size : off + _HEAD.size + length]
        if zlib.crc32(payload) != crc:  # our own file, written by this process: cannot happen short of disk rot
            raise OSError(f"spill record at +{off} fails its checksum")
        off += _HEAD.size + length
        yield off, _decode_payload(payload)


__all__ = ["MAGIC", "Entry", "Outbox", "SpillFile", "encode_record", "iter_records"]
