"""The stream archive: committed stream entries kept, byte for byte, in the storage location, so that Redis may trim
its partition streams to minutes while ``stepline replay`` still rebuilds history from the first event ever logged.

**Objects** (one per archived range of one partition, written once, never modified)::

    archive/p<NN>/<first id>_<last id>_<8 hex>.msgpack

``first id`` and ``last id`` are the stream ids of the first and last entry inside, ``-`` replaced by ``.``; the
8 hex digits are random, so the object of a commit that never happened (a worker killed between the write and its
SQL row, a fenced zombie) never shares a name with a later object of the same range. The content is one msgpack
array, a small envelope around the compressed entries::

    ["stepline-archive", 1, <partition>, "zstd", <body size>, <body: bin>]

where ``body`` is a standard zstd frame (``zstd -d`` reads it) of the msgpack array
``[[<entry id: str>, [[<field: bin>, <value: bin>], ...]], ...]`` and ``body size`` its decompressed size. The
entries are in stream order, contiguous (every entry of the stream between the first and last id, none left out),
each with its fields in the order Redis returned them and their bytes exactly as stored: replaying them through the
same processing gives the same history. Version ``1`` is the only one; a reader refuses any other version or codec
(:class:`ArchiveFormatError`).

Why zstd, through pyarrow (already a dependency of the workers): on the SDK's frames it compresses as well as
gzip (``bench/archive.py``: 0.81 of the raw size, gzip 0.82) 25 to 35 times faster (417-840 against 16-23 MB/s at
level 1, two runs on a loaded machine), so archiving stays a small share of a worker's time. pyarrow's codec needs
the decompressed size, hence the envelope.

**Metadata**: ``sl_archive`` (:data:`archive`) names the objects a replay reads, one row per object, inserted in
the partition owner's fenced transaction after the object is complete (``workers.archive``). Objects under
``archive/`` that no row names are orphans, deleted after the orphan grace period.
"""

from __future__ import annotations

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
#: The body's codec and level: zstd 1 compresses frames within 1 % of level 3, several times faster.
CODEC: Final = "zstd"
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
    return f"{archive_dir(p)}/{first_id.replace('-', '.')}_{last_id.replace('-', '.')}_{uuid.uuid4().hex[:8]}.msgpack"


def encode_archive(p: int, entries: Iterable[ArchiveEntry]) -> bytes:
    """The object's bytes for ``entries`` (in stream order) of partition ``p``."""
    import pyarrow as pa  # the workers' dependency; the SDK, which imports schemas, never loads this module's codec

    body = msgpack.packb([[eid, [[k, v] for k, v in fields]] for eid, fields in entries], use_bin_type=True)
    packed = pa.Codec(CODEC, LEVEL).compress(body, asbytes=True)
    out: bytes = msgpack.packb([FORMAT, VERSION, p, CODEC, len(body), packed], use_bin_type=True)
    return out


def decode_archive(data: bytes, p: int | None = None) -> list[ArchiveEntry]:
    """The entries of an archive object (of partition ``p`` when given); :class:`ArchiveFormatError` otherwise."""
    import pyarrow as pa

    try:
        env = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as e:  # msgpack raises several types for damaged input
        raise ArchiveFormatError(f"not a readable archive object: {type(e).__name__}: {e}") from e
    if not (isinstance(env, list) and len(env) == 6 and env[0] == FORMAT):
        raise ArchiveFormatError("not a stepline archive object")
    if env[1] != VERSION or env[3] != CODEC:
        raise ArchiveFormatError(f"archive format version {env[1]!r} with codec {env[3]!r}; this stepline reads "
                                 f"version {VERSION} with {CODEC}")
    if p is not None and env[2] != p:
        raise ArchiveFormatError(f"an archive object of partition {env[2]!r} found among partition {p}'s")
    try:
        body = pa.Codec(CODEC).decompress(env[5], decompressed_size=int(env[4]), asbytes=True)
        entries = msgpack.unpackb(body, raw=False, use_list=True)
        return [(str(eid), [(bytes(k), bytes(v)) for k, v in fields]) for eid, fields in entries]
    except Exception as e:  # a damaged body: pyarrow, msgpack and the shapes above raise several types
        raise ArchiveFormatError(f"malformed archive entries: {type(e).__name__}: {e}") from e
