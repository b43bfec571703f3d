"""The stream archive: committed stream entries kept, byte for byte, in the storage location, so that Redis may trim
its partition streams to minutes while ``stepline replay`` still rebuilds history from the first event ever logged.

**Objects** (one per archived range of one partition, written once, never modified)::

    archive/p<NN>/<first id>_<last id>_<8 hex>.msgpack.gz

``first id`` and ``last id`` are the stream ids of the first and last entry inside, ``-`` replaced by ``.``; the
8 hex digits are random, so the object of a commit that never happened (a worker killed between the write and its
SQL row, a fenced zombie) never shares a name with a later object of the same range. The content is a standard
gzip member (RFC 1952; ``zcat`` reads it) of one msgpack array::

    ["stepline-archive", 1, <partition>, [[<entry id: str>, [[<field: bin>, <value: bin>], ...]], ...]]

The entries are in stream order, contiguous (every entry of the stream between the first and last id, none left
out), each with its fields in the order Redis returned them and their bytes exactly as stored: replaying them
through the same processing gives the same history. Version ``1`` is the only one; a reader refuses any other
(:class:`ArchiveFormatError`).

Why gzip: it is in the standard library and every tool reads it, and an archive is written in the background once
per range and read only by a replay, so its speed is not on any path that waits. At level 1 it compresses frames
about as well as a zstd frame would here (their float arrays are mostly entropy) at tens of MB/s, far above the
ingest rate of one partition.

**Metadata**: ``sl_archive`` (:data:`archive`) names the objects a replay reads, one row per object, inserted in
the partition owner's fenced transaction after the object is complete (``workers.archive``). Objects under
``archive/`` that no row names are orphans, deleted after the orphan grace period.
"""

from __future__ import annotations

import gzip
import re
import uuid
from collections.abc import Iterable
from typing import Final

import msgpack
from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table

from .errors import SchemaError
from .store import metadata

#: The archive format's name and version, the first two items of every object.
FORMAT: Final = "stepline-archive"
VERSION: Final = 1
PREFIX: Final = "archive"
#: gzip level: 1 is within a few per cent of 9 on frames and several times faster.
LEVEL: Final = 1

#: One stream entry: its id and its fields (name, value) as Redis returned them.
ArchiveEntry = tuple[str, list[tuple[bytes, bytes]]]

archive = Table(
    "sl_archive",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("p", Integer, nullable=False),
    Column("first_id", String(48), nullable=False),
    Column("last_id", String(48), nullable=False),
    Column("entries", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("file", String(512), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Index("ix_sl_archive_p", "p", "id"),
)


class ArchiveFormatError(SchemaError):
    """An archive object that is not version 1 of the format (or is damaged)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad_archive")


def archive_dir(p: int) -> str:
    return f"{PREFIX}/p{p:02d}"


def archive_name(p: int, first_id: str, last_id: str) -> str:
    """A fresh object name for the entries ``first_id``..``last_id`` of partition ``p``."""
    return f"{archive_dir(p)}/{first_id.replace('-', '.')}_{last_id.replace('-', '.')}_{uuid.uuid4().hex[:8]}" \
           ".msgpack.gz"


_NAME = re.compile(r"(\d+)\.(\d+)_(\d+)\.(\d+)_[0-9a-f]{8}\.msgpack\.gz$")


def name_range(rel: str) -> tuple[str, str] | None:
    """The (first, last) entry ids an object name says it holds, or None for a name not of this format."""
    m = _NAME.search(rel)
    return None if m is None else (f"{m[1]}-{m[2]}", f"{m[3]}-{m[4]}")


def encode_archive(p: int, entries: Iterable[ArchiveEntry]) -> bytes:
    """The object's bytes for ``entries`` (in stream order) of partition ``p``."""
    body = msgpack.packb([FORMAT, VERSION, p, [[eid, [[k, v] for k, v in fields]] for eid, fields in entries]],
                         use_bin_type=True)
    return gzip.compress(body, compresslevel=LEVEL, mtime=0)


def decode_archive(data: bytes, p: int | None = None) -> list[ArchiveEntry]:
    """The entries of an archive object (of partition ``p`` when given); :class:`ArchiveFormatError` otherwise."""
    try:
        obj = msgpack.unpackb(gzip.decompress(data), raw=False, use_list=True)
    except Exception as e:  # gzip, zlib and msgpack raise several types for damaged input
        raise ArchiveFormatError(f"not a readable archive object: {type(e).__name__}: {e}") from e
    if not (isinstance(obj, list) and len(obj) == 4 and obj[0] == FORMAT):
        raise ArchiveFormatError("not a stepline archive object")
    if obj[1] != VERSION:
        raise ArchiveFormatError(f"archive format version {obj[1]!r}; this stepline reads version {VERSION}")
    if p is not None and obj[2] != p:
        raise ArchiveFormatError(f"an archive object of partition {obj[2]!r} found among partition {p}'s")
    try:
        return [(str(eid), [(bytes(k), bytes(v)) for k, v in fields]) for eid, fields in obj[3]]
    except (TypeError, ValueError) as e:
        raise ArchiveFormatError(f"malformed archive entries: {e}") from e
