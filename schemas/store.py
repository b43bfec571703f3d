"""The storage format of history: SQL metadata tables and Parquet segment files.

Workers write this format and the query library in ``history`` reads it; both build on these definitions, so
neither imports the other.

**Metadata** (SQLAlchemy Core; SQLite by default, PostgreSQL for several hosts):

- ``partitions``: per partition its fencing ``epoch`` and committed stream ``offset``.
- ``runs``: one row per run: state, counters, and ``info`` (msgpack: config, summary, columns, conflicts,
  warnings, rejection counts, metric definitions, group, job_type, tags, notes) plus ``state`` (msgpack: the
  aligner's per-run state). For finding runs in SQL (``history.filters``) the same commit also writes
  ``group_name``, ``job_type``, ``notes``, and ``tags``, ``config``, ``summary`` as JSON (:func:`json_safe`:
  PostgreSQL ``jsonb``, SQLite JSON text for its JSON1 functions), and ``warning_count``/``column_count``
  (:func:`info_counts`) for ordering runs by them; ``info`` stays authoritative.
- ``segments``: immutable Parquet files of a run with their step range and level (0 fresh, 1+ compacted).
- ``rejections``: every rejected call with its reason, tried step and cursor.
- ``garbage``: files no longer referenced, removed after a grace period.
- ``archive`` (defined in :mod:`schemas.archive`): the stream archive's objects, one row per object.
- ``api_keys``: hashed API keys (the gateway's).
- ``schema_version``: the migrations applied (``workers.migrations``), one row per version.
- ``run_values`` (:mod:`schemas.run_values`): the number and string leaves of each run's config and summary as
  plain indexed columns, written by the same commit, for filters and orders on ``config.*``/``summary_metrics.*``.
- ``commits``: optional audit of successful commits (partition, epoch, offset), written in the commit's own
  transaction when the workers run with ``STEPLINE_COMMIT_AUDIT=1`` (tests of ownership under churn).

**Segments**: one Parquet file holds rows of one run ordered by ``_step`` (unique). Columns: ``_step`` int64,
``_timestamp`` float64, ``_runtime`` float64, then one column per (key, kind): number → int64 while every value
in the segment is an int, else float64; string → string; bool → bool; other and media kinds → binary holding the
msgpack value (:func:`schemas.packb`). A number column is named after the key's display spelling; a column of
another kind is named ``"<key>:<kind>"``; field metadata (``key``, ``kind``) is authoritative. A missing value is
null.

A float64 number column some of whose values were logged as ints has an **int companion**: an int64 column named
``"<field>\\x00int"`` (:func:`int_field`; keys never hold NUL, so no key's column can take that name), field
metadata ``key`` and ``kind`` = ``"number:int"``, holding the exact int in the rows whose value was an int and null
elsewhere. The number column keeps every value (the ints as floats), so sampling, plots and pandas read it alone;
readers of rows (``scan_history``, a key's one object column in ``history``) take the companion's int where it is
set, so a logged ``1`` reads back as ``1`` (not ``1.0``) and ints past 2**53 stay exact, as in W&B's rows. A
segment written before companions existed has none and reads as before (its mixed columns as floats). The
companion is not a column of the run (``runs.info`` does not list it).
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB

from .keys import key_ident
from .settings import normalize_db_url
from .values import NUMBER, Media

#: The metadata schema this code writes; ``workers.migrations`` brings an older database up to it.
SCHEMA_VERSION: Final = 9
STEP: Final = "_step"
TIMESTAMP: Final = "_timestamp"
RUNTIME: Final = "_runtime"
SPECIAL_COLUMNS: Final = (STEP, TIMESTAMP, RUNTIME)

metadata = MetaData()
#: JSON in the metadata database: ``jsonb`` on PostgreSQL (indexable, compared as values), JSON text on SQLite.
JSON_TYPE: Final = JSON().with_variant(JSONB(), "postgresql")

partitions = Table(
    "sl_partitions",
    metadata,
    Column("p", Integer, primary_key=True, autoincrement=False),
    Column("epoch", BigInteger, nullable=False),
    Column("offset", String(48), nullable=False),
    Column("owner", String(128)),
    Column("updated_at", Float),
)

runs = Table(
    "sl_runs",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("run", String(128), primary_key=True),
    Column("name", String(256)),
    Column("state", String(16), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("created_at", Float),
    Column("updated_at", Float),
    Column("last_step", BigInteger),
    Column("rows", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    Column("info", LargeBinary, nullable=False),
    Column("state_blob", LargeBinary, nullable=False),
    # Schema version 3: run metadata and JSON copies of config and summary, for filters (workers.migrations).
    Column("group_name", String(256)),
    Column("job_type", String(256)),
    Column("tags", JSON_TYPE),
    Column("notes", Text),
    Column("config", JSON_TYPE),
    Column("summary", JSON_TYPE),
    # Schema version 8: counts of ``info`` that the runs table orders by (:func:`info_counts`), kept by the
    # commit that writes ``info``.
    Column("warning_count", Integer),
    Column("column_count", Integer),
    Index("ix_sl_runs_created", "project", "created_at"),
    Index("ix_sl_runs_group", "project", "group_name"),
)

#: The columns of ``runs`` a reader of one run needs (not the aligner's state or the JSON copies for filters).
RUN_INFO_COLUMNS: Final = ("project", "run", "name", "state", "partition", "created_at", "updated_at", "last_step",
                           "rows", "rejected", "info", "group_name", "job_type", "notes")



def info_counts(info: dict[str, Any]) -> dict[str, int]:
    """``warning_count`` (the run's warnings and the keys logged with several kinds) and ``column_count`` (its
    keys, each counted once whatever its kinds) of a run's ``info``: what the gateway's listing shows and what
    ``sl_runs`` holds for ordering runs by them."""
    return {"warning_count": len(info.get("warnings") or []) + len(info.get("conflicts") or []),
            "column_count": len({key_ident(c["key"]) for c in info.get("columns") or []})}


segments = Table(
    "sl_segments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project", String(128), nullable=False),
    Column("run", String(128), nullable=False),
    Column("level", Integer, nullable=False),
    Column("min_step", BigInteger, nullable=False),
    Column("max_step", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("file", String(512), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Index("ix_sl_segments_run", "project", "run", "min_step"),
)

rejections = Table(
    "sl_rejections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project", String(128), nullable=False),
    Column("run", String(128), nullable=False),
    Column("entry_id", String(48), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("step", BigInteger),
    Column("cursor", BigInteger),
    Column("message", Text, nullable=False),
    Column("ts", Float),
    Index("ix_sl_rejections_run", "project", "run"),
)

garbage = Table(
    "sl_garbage",
    metadata,
    Column("file", String(512), primary_key=True),
    Column("deleted_at", Float, nullable=False),
)

api_keys = Table(
    "sl_api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("project", String(128), nullable=False),
    Column("scopes", String(64), nullable=False),
    Column("hash", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

schema_version = Table(
    "sl_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(256), nullable=False),
    Column("applied_at", Float, nullable=False),
)

commits = Table(
    "sl_commits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("p", Integer, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("offset", String(48), nullable=False),
    Column("committed_at", Float, nullable=False),
    Index("ix_sl_commits_p", "p", "id"),
)

#: What the metadata belongs to: ``namespace`` (the Redis key namespace whose stream offsets ``sl_partitions``
#: holds) and ``partitions`` (the partition count runs were hashed with). Written by the first worker, checked by
#: every later one: offsets of one namespace's streams are meaningless against another's.
deployment = Table(
    "sl_deployment",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)


def json_safe(v: Any, depth: int = 0) -> Any:
    """A stored value as JSON both databases accept, for filtering runs (``info`` keeps the exact value).

    NaN is null, ±inf the strings ``"Infinity"``/``"-Infinity"``; ints past int64 become floats; NUL and lone
    surrogates in text are escaped (PostgreSQL's jsonb refuses them); numpy values and arrays become numbers and
    lists; media become ``{"_type": kind}`` (their payloads are not filtered on); bytes and anything else is null.
    Nesting deeper than 32 levels is cut to null.
    """
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):
        if "\x00" in v:
            v = v.replace("\x00", "\\x00")
        try:
            v.encode()
        except UnicodeEncodeError:
            v = v.encode(errors="backslashreplace").decode()
        return v
    if isinstance(v, int):
        return v if -(1 << 63) <= v < 1 << 63 else float(v)
    if isinstance(v, float):
        return None if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity") if math.isinf(v) else v
    if depth >= 32:
        return None
    if isinstance(v, dict):
        return {json_safe(str(k)): json_safe(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x, depth + 1) for x in v]
    if isinstance(v, Media):
        return {"_type": v.kind}
    tolist = getattr(v, "tolist", None)  # numpy scalars and arrays
    if callable(tolist) and hasattr(v, "dtype") and getattr(v.dtype, "kind", "O") in "biuf":
        return json_safe(tolist(), depth)
    return None


def _regexp(pattern: str | None, value: Any) -> bool | None:
    """SQLite's ``REGEXP`` (Python's ``re.search``; a non-text value never matches): ``$regex`` filters."""
    if pattern is None or not isinstance(value, str):
        return None if value is None else False
    return _compiled(pattern).search(value) is not None


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    p = _REGEX_CACHE.get(pattern)
    if p is None:
        if len(_REGEX_CACHE) > 256:
            _REGEX_CACHE.clear()
        p = _REGEX_CACHE[pattern] = re.compile(pattern)
    return p


def run_dir(project: str, run: str) -> str:
    """The directory of a run's segments, relative to the data directory (hashed: names may hold any text)."""
    h = hashlib.sha256(f"{project}/{run}".encode()).hexdigest()
    return f"segments/{h[:2]}/{h[2:20]}"


def field_name(display: str, kind: str) -> str:
    return display if kind == NUMBER else f"{display}:{kind}"


def blob_path(sha256: str) -> str:
    """Where a media blob lives, relative to the data directory."""
    return f"blobs/{sha256[:2]}/{sha256}"


def column_info(display: str, kind: str) -> dict[str, Any]:
    return {"key": display, "kind": kind, "field": field_name(display, kind)}


#: The field metadata ``kind`` of a number column's int companion (see the module docstring).
INT_PART: Final = "number:int"
# Keys never hold NUL (schemas.keys), so no key's column can be named like a companion.
_INT_SUFFIX: Final = "\x00int"


def int_field(field: str) -> str:
    """The name of the int companion of the float64 number column ``field``: ``field + "\\x00int"``."""
    return field + _INT_SUFFIX


def is_int_field(name: str) -> bool:
    return name.endswith(_INT_SUFFIX)


def concat_segments(tables: list[Any]) -> Any:
    """Concatenate segment tables (``pyarrow.Table``) of one run, promoting permissively. A number column that
    is int64 in one table and float64 in another becomes float64 in all (ints past 2**53 round to the nearest
    float, as they would in a float64 column written at once; Arrow's own promotion refuses them), and the int64
    table's values become its rows of the column's int companion (:func:`int_field`), so every logged int is still
    known exactly. A float64 table without a companion contributes nulls to it (its values were all floats)."""
    import pyarrow as pa  # only the workers and the read side need it, not the SDK

    floats = {f.name for t in tables for f in t.schema if f.type == pa.float64()}
    companions: dict[str, Any] = {}  # the companion's field, the same in every table (concat wants one schema)
    out = []
    for t in tables:
        for f in t.schema:
            if is_int_field(f.name):
                companions.setdefault(f.name, f)
        for i, f in enumerate(t.schema):
            if f.name in floats and pa.types.is_integer(f.type) and not is_int_field(f.name):
                ints = t.column(i)
                t = t.set_column(i, f.with_type(pa.float64()), ints.cast(pa.float64(), safe=False))
                name = int_field(f.name)
                meta = dict(f.metadata or {})
                meta[b"kind"] = INT_PART.encode()
                companions.setdefault(name, pa.field(name, pa.int64(), metadata=meta))
                t = t.append_column(companions[name], ints.cast(pa.int64()))
        out.append(t)
    if companions:  # one field (metadata included) per companion, whichever table it came from
        out = [pa.Table.from_arrays(t.columns, schema=pa.schema(
            [companions.get(f.name, f) for f in t.schema], metadata=t.schema.metadata)) for t in out]
    return pa.concat_tables(out, promote_options="permissive")


def writer_engine(url: str) -> Engine:
    """The workers' engine: SQLite in WAL mode with ``BEGIN IMMEDIATE`` (writers queue on the busy timeout
    instead of failing to upgrade a read lock), or a small PostgreSQL pool.

    SQLite connections are pooled too (commits run in executor threads, hence ``check_same_thread=False``): a
    fresh connection per transaction cost 2.3 ms against 0.2 ms, paid by every commit of every partition."""
    url = normalize_db_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=4, max_overflow=4, pool_pre_ping=True)

    def pragmas(cur: Any) -> None:
        _set_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")

    return _sqlite_engine(url, pragmas, "BEGIN IMMEDIATE", pool_size=4, max_overflow=4)


def _sqlite_engine(url: str, pragmas: Callable[[Any], None], begin: str, **pool: Any) -> Engine:
    """A SQLite engine whose connections wait up to 30 s for a lock, run ``pragmas`` once, and start every
    transaction with ``begin`` (pysqlite's own implicit BEGIN is turned off)."""
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **pool)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        pragmas(cur)
        cur.close()
        dbapi_conn.create_function("REGEXP", 2, _regexp, deterministic=True)
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below emits BEGIN

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


def _set_wal(cur: Any) -> None:
    """Put the database file in WAL mode (persistent: once set, every later connection finds it so).

    Switching the mode needs the file to itself, and SQLite answers "database is locked" at once, without its
    busy handler, when another connection is in the way (several workers starting together on a new file). So
    only switch when the file is not in WAL mode yet, and retry for up to 30 s like the busy timeout would."""
    deadline = time.monotonic() + 30
    delay = 0.01
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def reader_engine(url: str) -> Engine:
    """The readers' engine: never takes SQLite's write lock, and each transaction is one WAL snapshot.

    pysqlite does not BEGIN before a SELECT, so two SELECTs would see two states; a deferred BEGIN makes the whole
    read one snapshot (which never blocks the writer)."""
    url = normalize_db_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=2, max_overflow=4, pool_pre_ping=True)

    def pragmas(cur: Any) -> None:
        cur.execute("PRAGMA query_only=ON")  # the writer already put the database in WAL mode
        # 32 MiB of page cache (SQLite's default is 2 MiB): a filter's candidates are looked up at random in
        # sl_run_values (history.filters), measured 40% faster at 100,000 runs once the index pages stay cached.
        cur.execute("PRAGMA cache_size=-32768")

    return _sqlite_engine(url, pragmas, "BEGIN")
