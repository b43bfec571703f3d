"""Read history back: a W&B-shaped public API over the history store (:mod:`schemas.store`).

::

    with Api() as api:                       # STEPLINE_DATA_DIR, STEPLINE_DB_URL, read once
        run = api.run("project/run")         # or "entity/project/run" (the entity is ignored)
        run.summary, run.config, run.warnings, run.rejected, run.rejections()
        df = run.history(keys=["val/loss"])  # deterministic downsample to about 500 rows
        for row in run.scan_history(keys=["val/loss"], min_step=100):
            ...
        line = run.sampled("val/loss", buckets=1000)   # M4: never hides a spike

Guarantees:

- Read-only. SQLite is opened with ``query_only`` and reads in WAL snapshots, so readers never block the writer
  (and wait on a busy timeout in the rare cases where SQLite makes them); PostgreSQL reads use REPEATABLE READ.
- Every read takes the run's metadata and its segment list in ONE snapshot, so it sees a consistent set of
  segments: compaction swaps references in one transaction and keeps the old files for a grace period. Should a
  file be gone anyway (a reader slower than the grace), the read lists the segments again and resumes.
- Only the segments overlapping the requested steps are opened, and only the columns needed are decoded.
  Decoded columns are kept in a bounded LRU cache keyed by file (segment files never change), so repeated
  reads of a run skip decoding.
  :meth:`RunView.scan_history` streams batch by batch and never holds more than one segment's row group.
- Columns are found through the run's column list: keys match case-insensitively (:func:`schemas.key_ident`).
  Rows have W&B's shape: one column per key. A key logged with values of several kinds (``m = 1``, then
  ``"best"``, then ``True``) holds in each row the value logged there, numbers as numbers, strings as strings,
  bools as bools (the store keeps one column per kind; a row holds a value of one of them at most). The kind split
  stays available: ``split_kinds=True`` names each kind's column by its field, ``key`` (number) or
  ``key:<kind>`` (others), and asking for a field name (``"m:string"``) gives that column alone, under that name;
  :attr:`RunView.columns` lists the stored columns. Rows hold each value as it was logged, as W&B's do: an int
  as an int (exactly, also past 2**53), a float as a float, even where the key's number column also holds floats
  (the segment's int companion, :mod:`schemas.store`). A number column as an array (``history()``, pandas) is
  float64 when it holds both, as W&B's pandas gives it.
- Downsampling is deterministic: same history, same arguments → same rows. :meth:`RunView.history` keeps evenly
  spaced rows (first and last included); :meth:`RunView.sampled` keeps M4 points (docs/DESIGN.md §8).

Errors (all :class:`schemas.SteplineError`): :class:`RunNotFound` (also a ``LookupError``) for an unknown run,
:class:`QueryError` (also a ``ValueError``) for a malformed path or argument.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, TypedDict, overload

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, func, inspect, select
from sqlalchemy.exc import DataError

from schemas import SteplineError, key_ident, section_of
from schemas.local import READ_SIDE_ENV, local_stack
from schemas.media import blob_shas
from schemas.objects import ObjectStore, open_store, parse_storage_url
from schemas.settings import normalize_db_url
from schemas.store import (
    RUN_INFO_COLUMNS,
    RUNTIME,
    SPECIAL_COLUMNS,
    STEP,
    TIMESTAMP,
    concat_segments,
    int_field,
    reader_engine,
    rejections,
    runs,
    segments,
)
from schemas.values import BOOL, NUMBER, STRING

from .filters import (
    Candidates,
    FilterError,
    Section,
    compile_candidates,
    compile_filters,
    compile_order,
    resolve_candidates,
)
from .sampling import m4
from .stored import unpack_stored

__all__ = ["Api", "HistoryColumn", "QueryError", "QuerySettings", "RunNotFound", "RunView", "Runs", "Sampled",
           "columns_of"]

Array = npt.NDArray[Any]
DEFAULT_DATA_DIR = "./stepline-data"
DEFAULT_CACHE_BYTES = 256 << 20
#: Column kinds whose values never hold a media blob reference (everything else may: images, HTML, tables, lists,
#: and plots, whose table may hold image cells).
_NO_MEDIA_KINDS = frozenset({NUMBER, STRING, BOOL, "histogram"})
# How often a read lists the segments again when a file it listed was garbage-collected under it.
_RETRIES = 3


class RunNotFound(SteplineError, LookupError):
    """No run with that project and id exists (yet)."""


class QueryError(SteplineError, ValueError):
    """A malformed run path or argument."""


#: The states a run has: 'running' until it finishes, then 'finished' (exit code 0) or 'crashed'.
RUN_STATES = ("running", "finished", "crashed")


def history_keys(keys: Sequence[str] | None) -> list[str] | None:
    """``keys`` of a history read as a list, or QueryError: a bare string would be read as its characters (one key
    per letter, so no row holds them all: an empty result instead of the key's rows). W&B refuses it too."""
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)) or not all(isinstance(k, str) for k in keys):
        raise QueryError(f"keys must be a list of key names, got {type(keys).__name__} {keys!r:.60}")
    return list(keys)


@dataclass(frozen=True, slots=True)
class QuerySettings:
    data_dir: Path
    db_url: str

    @classmethod
    def from_env(
        cls, data_dir: str | os.PathLike[str] | None = None, db_url: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> QuerySettings:
        """Explicit arguments win over ``STEPLINE_DATA_DIR`` / ``STEPLINE_DB_URL``, which win over a running local
        ``stepline up`` (:func:`schemas.local.local_stack`, used only when neither came from an argument or a
        variable), which wins over the default ``./stepline-data``."""
        given = data_dir is not None or db_url or any(environ.get(v) for v in READ_SIDE_ENV)
        stack = None if given else local_stack(environ)
        if stack is not None:
            d = Path(stack.data_dir)
            url = stack.db_url or f"sqlite:///{d / 'meta.sqlite'}"
            return cls(data_dir=d, db_url=normalize_db_url(url))
        d = Path(data_dir if data_dir is not None else environ.get("STEPLINE_DATA_DIR") or DEFAULT_DATA_DIR)
        url = db_url or environ.get("STEPLINE_DB_URL") or f"sqlite:///{d / 'meta.sqlite'}"
        return cls(data_dir=d, db_url=normalize_db_url(url))


def split_project_path(path: str) -> str:
    parts = path.strip("/").split("/")
    if len(parts) == 2:  # W&B's entity/project: stepline has no entities
        parts = parts[1:]
    if len(parts) != 1 or not parts[0]:
        raise QueryError(f"a project path is 'project' or 'entity/project', got {path!r}")
    return parts[0]


def split_run_path(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    if len(parts) == 3:  # W&B's entity/project/run: stepline has no entities
        parts = parts[1:]
    if len(parts) != 2 or not all(parts):
        raise QueryError(f"a run path is 'project/run' or 'entity/project/run', got {path!r}")
    return parts[0], parts[1]


class Api:
    """Entry point of the query library: lists runs and opens them. Synchronous; safe to share among threads.

    ``Api(url="http://host:8080", api_key=...)`` (or ``STEPLINE_URL`` / ``STEPLINE_API_KEY`` set, with no data
    directory or database given) reads through a gateway instead, with the same surface and results
    (:class:`history.remote.RemoteApi`).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Api:
        if cls is Api:
            from .remote import RemoteApi, wants_remote

            if wants_remote(args, kwargs):
                return super().__new__(RemoteApi)
        return super().__new__(cls)

    def __init__(
        self, data_dir: str | os.PathLike[str] | None = None, db_url: str | None = None, *,
        engine: Engine | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES, storage_url: str | None = None,
        objects: ObjectStore | None = None,
    ) -> None:
        """``cache_bytes`` bounds the decoded columns kept for repeated reads (0 disables the cache).
        ``storage_url`` (else ``STEPLINE_STORAGE_URL``, else the data directory) is where segments and media live
        (:mod:`schemas.objects`: ``s3://bucket/prefix`` with the AWS variables); ``objects`` passes an open store."""
        self.settings = QuerySettings.from_env(data_dir, db_url)
        self.data_dir = self.settings.data_dir
        #: Where segment and blob objects are read: files are opened lazily (footer, then only the column chunks
        #: needed: range requests on a bucket) and decoded columns cached (``cache_bytes``).
        try:
            self.objects = objects or open_store(
                parse_storage_url(storage_url or os.environ.get("STEPLINE_STORAGE_URL"), self.data_dir))
        except ValueError as e:  # a malformed storage URL: say why, as for any other bad argument
            raise QueryError(str(e)) from None
        # An engine passed in belongs to the caller, who closes it; one we create is ours.
        self._engine = engine or reader_engine(self.settings.db_url)
        self._owns_engine = engine is None
        self._has_tables = False
        self._cache = _ColumnCache(cache_bytes)

    def close(self) -> None:
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ready(self) -> bool:
        """Whether the store exists; no worker may have run yet (and a reader must not create the file)."""
        if self._has_tables:
            return True
        url = self._engine.url
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
            return False
        self._has_tables = inspect(self._engine).has_table(runs.name)
        return self._has_tables

    def _connect(self) -> Connection:
        conn = self._engine.connect()
        if self._engine.url.get_backend_name() == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return conn

    def runs(
        self, path: str, filters: Mapping[str, Any] | None = None, order: str = "-created_at",
        per_page: int = 50, *, state: str | Sequence[str] | None = None,
    ) -> Runs:
        """Runs of the project ``path`` (``"project"`` or W&B's ``"entity/project"``) matching ``filters`` (W&B's
        filter language, :mod:`history.filters`), sorted by ``order`` (a field, ``-`` for descending; default
        newest first), fetched ``per_page`` at a time as they are iterated. ``state`` keeps only 'running',
        'finished' and/or 'crashed'. A malformed filter or order raises :class:`QueryError` naming the operator
        or field."""
        if per_page < 1:
            raise QueryError(f"per_page must be >= 1, got {per_page}")
        project = split_project_path(path)
        dialect = self._engine.url.get_backend_name()
        try:
            where = [runs.c.project == project, compile_filters(filters, dialect, project)]
            sections = compile_order(order, dialect)
            candidates = compile_candidates(filters, project, dialect)
        except FilterError as e:
            raise QueryError(str(e)) from None
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            unknown = [s for s in states if s not in RUN_STATES]
            if unknown:
                # A misspelt state would match no run: an empty list that looks like an answer.
                raise QueryError(f"unknown run state {unknown[0]!r} (known: {', '.join(RUN_STATES)})")
            where.append(runs.c.state.in_(states))
        return Runs(self, where, sections, per_page, candidates)

    def run(self, path: str) -> RunView:
        """Open ``"project/run"`` (or W&B's ``"entity/project/run"``); raises :class:`RunNotFound`."""
        project, run_id = split_run_path(path)
        if self._ready():
            with self._connect() as conn, conn.begin():
                row = conn.execute(select(*_RUN_COLUMNS).where(runs.c.project == project,
                                                               runs.c.run == run_id)).first()
            if row is not None:
                return RunView(self, dict(row._mapping))
        raise RunNotFound(f"no run {run_id!r} in project {project!r}")


#: PostgreSQL's SQLSTATE for a regular expression it cannot compile (invalid_regular_expression).
_PG_INVALID_REGEX = "2201B"

#: What a RunView needs of a run's row (not the aligner's state blob nor the JSON copies for filters).
_RUN_COLUMNS = [runs.c[name] for name in RUN_INFO_COLUMNS]


class Runs(Sequence["RunView"]):
    """Runs matching a query, read from the metadata database ``per_page`` at a time (W&B's ``Runs``): iterate,
    index, slice or ``len()`` it. Each page is one query, so runs added meanwhile may shift later pages; ``len()``
    is a COUNT of the matches when first asked. Compares equal to a list of the same runs."""

    #: A filter whose index reads name at most this many runs is answered from that list (looked up by key,
    #: sorted) instead of walking the order's index and testing each run it meets (history.filters).
    CANDIDATES = 1000

    def __init__(self, api: Api, where: list[Any], order: list[Section], per_page: int,
                 candidates: Candidates | None = None) -> None:
        self._api, self._where, self._order, self.per_page = api, where, order, per_page
        self._candidates = candidates
        self._driven = False
        self._pages: dict[int, list[RunView]] = {}
        self._count: int | None = None

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for the query's reads. PostgreSQL's regular expressions are not Python's, which checked
        the pattern when the filter compiled: one it refuses (a named group ``(?P<x>..)``, ...) is a QueryError
        naming $regex, not a database error (over HTTP a 503, which clients retry)."""
        try:
            with self._api._connect() as conn, conn.begin():
                yield conn
        except DataError as e:
            if getattr(e.orig, "sqlstate", None) != _PG_INVALID_REGEX:
                raise
            reason = str(e.orig).splitlines()[0] if str(e.orig) else "invalid regular expression"
            raise QueryError(f"$regex: PostgreSQL refused the pattern ({reason})") from None

    def _narrow(self, conn: Connection) -> None:
        """Once, at the first read: when the filter's candidates are few, the query reads only them. The runs
        are still tested against the whole filter; the candidates only spare the reads of the others."""
        if self._candidates is None:
            return
        ids = resolve_candidates(conn, self._candidates, self.CANDIDATES)
        self._candidates = None
        if ids is not None:
            self._where = [*self._where, runs.c.run.in_(sorted(ids))]
            self._driven = True

    def page(self, n: int) -> list[RunView]:
        """The ``n``-th page (from 0) of ``per_page`` runs; empty past the last."""
        return self._page(n)

    def _page(self, n: int) -> list[RunView]:
        page = self._pages.get(n)
        if page is None:
            page = []
            if self._api._ready():
                with self._reading() as conn:
                    page = [RunView(self._api, dict(r._mapping)) for r in self._query(conn, n * self.per_page)]
            self._pages[n] = page
        return page

    def _query(self, conn: Connection, offset: int) -> list[Any]:
        """``per_page`` rows from ``offset`` on: the order's sections (history.filters.Section) one after the
        other. A section that ends within the page hands on to the next at its start; a page that lies past a
        section counts that section's matches to know where in the next one it starts."""
        self._narrow(conn)
        got: list[Any] = []
        for sec in self._order:
            where = [*self._where, *([] if sec.where is None else [sec.where])]
            source = sec.driven if self._driven and sec.driven is not None else sec.source
            q = (select(*_RUN_COLUMNS).select_from(source).where(*where).order_by(*sec.order_by)
                 .limit(self.per_page - len(got)).offset(offset))
            rows = list(conn.execute(q))
            got += rows
            if len(got) == self.per_page or sec is self._order[-1]:
                break
            if rows:
                offset = 0
            else:
                offset -= int(conn.execute(select(func.count()).select_from(source).where(*where)).scalar_one())
        return got

    def __len__(self) -> int:
        if self._count is None:
            self._count = 0
            if self._api._ready():
                with self._reading() as conn:
                    self._narrow(conn)
                    self._count = int(conn.execute(
                        select(func.count()).select_from(runs).where(*self._where)).scalar_one())
        return self._count

    def __iter__(self) -> Iterator[RunView]:
        n = 0
        while True:
            page = self._page(n)
            yield from page
            if len(page) < self.per_page:
                return
            n += 1

    @overload
    def __getitem__(self, i: int) -> RunView: ...

    @overload
    def __getitem__(self, i: slice) -> list[RunView]: ...

    def __getitem__(self, i: int | slice) -> RunView | list[RunView]:
        if isinstance(i, slice):
            return list(self)[i]
        if i < 0:
            i += len(self)
        page = self._page(i // self.per_page) if i >= 0 else []
        if not 0 <= i % self.per_page < len(page):
            raise IndexError("run index out of range")
        return page[i % self.per_page]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Runs | list | tuple):
            return [r.path for r in self] == [r.path for r in other]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Runs {[r.path for r in self][:10]}{'...' if len(self) > 10 else ''}>"


# --- reading segments ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Seg:
    file: str
    min_step: int
    max_step: int


@dataclass(frozen=True, slots=True)
class HistoryColumn:
    field: str  # the column's name in the segment files
    key: str  # display spelling
    kind: str
    name: str = ""  # what readers see; set by columns_of()

    @property
    def label(self) -> str:
        return self.name or self.field


def columns_of(info: Mapping[str, Any], split_kinds: bool = False) -> list[HistoryColumn]:
    """The run's stored columns, each named by its key (W&B's rows: the kinds of one key share the name, and a
    row holds the value logged there), or with ``split_kinds`` by its field name where the key was logged with
    several kinds (``key`` for numbers, ``key:<kind>`` for the others).
    """
    raw = [(c["field"], c["key"], c["kind"]) for c in info.get("columns") or []]
    if not split_kinds:
        return [HistoryColumn(f, k, kind, k) for f, k, kind in raw]
    per_key: dict[str, int] = {}
    for _f, k, _kind in raw:
        per_key[key_ident(k)] = per_key.get(key_ident(k), 0) + 1
    return [HistoryColumn(f, k, kind, k if per_key[key_ident(k)] == 1 else f) for f, k, kind in raw]


class _ColumnCache:
    """Decoded columns of segment files, least recently used out first, within a byte budget.

    Sound because a segment file never changes once it has its name (workers write a new file and swap
    references), so ``(file, field)`` always denotes the same data. Repeated reads of a run (a chart zooming and
    panning) then skip Parquet decoding, which is most of a read's cost.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._cols: OrderedDict[tuple[str, str], pa.ChunkedArray] = OrderedDict()
        self._schemas: dict[str, pa.Schema] = {}
        # Parquet footers: a file opened again for a column not cached skips fetching its footer (a round trip to
        # the bucket); kept and dropped with the file's schema.
        self._footers: dict[str, pq.FileMetaData] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def schema(self, file: str) -> pa.Schema | None:
        with self._lock:
            return self._schemas.get(file)

    def footer(self, file: str) -> pq.FileMetaData | None:
        with self._lock:
            return self._footers.get(file)

    def get(self, file: str, field: str) -> pa.ChunkedArray | None:
        with self._lock:
            arr = self._cols.get((file, field))
            if arr is not None:
                self._cols.move_to_end((file, field))
            return arr

    def put(self, file: str, schema: pa.Schema, table: pa.Table, footer: pq.FileMetaData | None = None) -> None:
        if self.budget <= 0:
            return
        with self._lock:
            self._schemas[file] = schema
            if footer is not None:
                self._footers[file] = footer
            for name in table.column_names:
                arr = table.column(name)
                if (file, name) in self._cols or arr.nbytes > self.budget:
                    continue
                self._cols[(file, name)] = arr
                self._bytes += arr.nbytes
            while self._bytes > self.budget and self._cols:
                (f, _), old = self._cols.popitem(last=False)
                self._bytes -= old.nbytes
                if not any(k[0] == f for k in self._cols):
                    self._schemas.pop(f, None)
                    self._footers.pop(f, None)


class _SegmentGone(Exception):
    """A listed file was garbage-collected before we opened it."""


def _open(objects: ObjectStore, rel: str, footer: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """A segment opened lazily through the store (the data directory or a bucket)."""
    try:
        return objects.parquet(rel, metadata=footer)
    except FileNotFoundError as e:
        raise _SegmentGone(rel) from e


def _gone_or(objects: ObjectStore, rel: str, e: OSError) -> Exception:
    """A read of an opened segment failed: the file was collected under us (retry from a new listing), or the
    store failed (raise that)."""
    try:
        gone = not objects.exists(rel)
    except OSError:
        gone = False
    return _SegmentGone(rel) if gone else e


def _batches(
    objects: ObjectStore, rel: str, pf: pq.ParquetFile, size: int, columns: list[str],
) -> Iterator[pa.RecordBatch]:
    it = pf.iter_batches(batch_size=size, columns=columns, use_threads=True)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except OSError as e:
            raise _gone_or(objects, rel, e) from e
        yield batch


def _slice_steps(t: pa.Table, lo: int | None, hi: int | None) -> pa.Table:
    """Rows with ``lo <= _step < hi`` of a table sorted by step: two binary searches and a zero-copy slice."""
    if lo is None and hi is None:
        return t
    steps = t.column(STEP).to_numpy()
    a = 0 if lo is None else int(np.searchsorted(steps, lo, side="left"))
    b = len(steps) if hi is None else int(np.searchsorted(steps, hi, side="left"))
    return t.slice(a, max(b - a, 0))


class RunView:
    """One run as of when it was opened (summary, config, counters); history reads always see the latest commit."""

    def __init__(self, api: Api, row: dict[str, Any]) -> None:
        self._api = api
        self.project: str = row["project"]
        self.id: str = row["run"]
        self.name: str = row["name"] or row["run"]
        self.state: str = row["state"]
        self.rows: int = int(row["rows"])
        self.last_step: int | None = None if row["last_step"] is None else int(row["last_step"])
        self.created_at: float | None = row["created_at"]
        self.updated_at: float | None = row["updated_at"]
        self.info: dict[str, Any] = unpack_stored(bytes(row["info"]))

    def __repr__(self) -> str:
        return f"<RunView {self.project}/{self.id} ({self.state})>"

    @property
    def path(self) -> str:
        return f"{self.project}/{self.id}"

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.info.get("summary") or {})

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.info.get("config") or {})

    @property
    def group(self) -> str | None:
        return self.info.get("group")

    @property
    def job_type(self) -> str | None:
        return self.info.get("job_type")

    @property
    def tags(self) -> list[str]:
        return list(self.info.get("tags") or [])

    @property
    def notes(self) -> str | None:
        return self.info.get("notes")

    @property
    def warnings(self) -> list[str]:
        return list(self.info.get("warnings") or [])

    @property
    def conflicts(self) -> list[str]:
        return list(self.info.get("conflicts") or [])

    @property
    def rejected(self) -> dict[str, int]:
        return dict(self.info.get("rejected") or {})

    @property
    def columns(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self.info.get("columns") or []]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self.info.get("metrics") or []]

    @property
    def exit_code(self) -> int | None:
        code = self.info.get("exit_code")
        return None if code is None else int(code)

    def keys(self) -> list[str]:
        """Distinct keys (display spelling), sorted; a key with two kinds is listed once."""
        return sorted({c["key"] for c in self.info.get("columns") or []})

    def sections(self) -> dict[str, list[str]]:
        """Keys grouped by panel section (text before the first ``/``; ``""`` without one), both sorted."""
        out: dict[str, list[str]] = {}
        for k in self.keys():
            out.setdefault(section_of(k), []).append(k)
        return dict(sorted(out.items()))

    def references_blob(self, sha256: str) -> bool:
        """Whether the run's stored values reference the media blob ``sha256`` (an image, HTML, or media inside a
        table or list, in its history, summary or config): the gateway serves a blob only to readers of a run that
        logged it.

        Only the columns of kinds that can hold media are read (through the column cache), one segment at a time;
        cells are searched for the sha's text first and only the cells holding it are decoded, so a string that
        merely contains the text does not count.
        """
        info_values = [self.info.get("summary"), self.info.get("config")]
        if any(sha256 in blob_shas(v) for v in info_values if v):
            return True
        for _ in range(_RETRIES):
            cols, segs = self._snapshot(None, None)
            fields = [c.field for c in cols if c.kind not in _NO_MEDIA_KINDS]
            if not fields:
                return False
            try:
                for seg in segs:
                    table = self._read_segments([seg], [STEP, *fields], None, None)
                    for name in table.column_names:
                        col = table.column(name)
                        if name == STEP or not pa.types.is_binary(col.type) or not col.length():
                            continue
                        hits = pc.match_substring(col, pattern=sha256)
                        if not pc.any(hits).as_py():
                            continue
                        for v in col.filter(hits).to_pylist():
                            if sha256 in blob_shas(unpack_stored(v)):
                                return True
                return False
            except _SegmentGone:
                continue
        raise SteplineError(f"run {self.path}: segments keep disappearing while reading (compaction too fast?)")

    def rejections(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Every rejected call of the run, oldest first: entry_id, reason, step, cursor, message, ts."""
        c = rejections.c
        q = (select(c.entry_id, c.reason, c.step, c.cursor, c.message, c.ts)
             .where(c.project == self.project, c.run == self.id).order_by(c.id))
        if limit is not None:
            q = q.limit(limit)
        with self._api._connect() as conn, conn.begin():
            return [dict(r._mapping) for r in conn.execute(q)]

    # --- snapshot and column resolution ----------------------------------------------------------------------

    def _snapshot(
        self, lo: int | None, hi: int | None, split_kinds: bool = False,
    ) -> tuple[list[HistoryColumn], list[_Seg]]:
        """The run's columns and its segments overlapping ``[lo, hi)``, from one snapshot of the metadata."""
        s = segments.c
        q = select(s.file, s.min_step, s.max_step).where(s.project == self.project, s.run == self.id)
        if lo is not None:
            q = q.where(s.max_step >= lo)
        if hi is not None:
            q = q.where(s.min_step < hi)
        with self._api._connect() as conn, conn.begin():
            blob = conn.execute(
                select(runs.c.info).where(runs.c.project == self.project, runs.c.run == self.id)
            ).scalar()
            segs = [_Seg(r.file, int(r.min_step), int(r.max_step)) for r in conn.execute(q.order_by(s.min_step))]
        if blob is None:
            raise RunNotFound(f"run {self.path} is gone")
        info = unpack_stored(bytes(blob))
        return columns_of(info, split_kinds), segs

    @staticmethod
    def _resolve(cols: list[HistoryColumn], key: str) -> list[HistoryColumn]:
        """Columns of ``key``: every kind of the key, else the column whose field name is ``key``."""
        if key in SPECIAL_COLUMNS:
            return [HistoryColumn(key, key, NUMBER)]
        ident = key_ident(key)
        found = [c for c in cols if key_ident(c.key) == ident]
        if found:
            return found
        # A field name (``m:string``) asks for one kind's column: where the key has several, it keeps that name.
        by_field = [c for c in cols if key_ident(c.field) == ident or key_ident(c.label) == ident]
        kinds = {key_ident(c.key): 0 for c in by_field}
        for c in cols:
            if key_ident(c.key) in kinds:
                kinds[key_ident(c.key)] += 1
        return [replace(c, name=c.field) if kinds[key_ident(c.key)] > 1 else c for c in by_field]

    def _read(
        self, pick: Callable[[list[HistoryColumn]], list[str] | None], lo: int | None, hi: int | None,
        split_kinds: bool = False,
    ) -> tuple[pa.Table, list[HistoryColumn]]:
        """The run's rows in ``[lo, hi)``, sorted by step, with the fields ``pick(columns)`` names (None: all).

        ``pick`` sees the column list of the same snapshot as the segments, so a key is resolved against exactly
        the columns the files can hold.
        """
        for _ in range(_RETRIES):
            cols, segs = self._snapshot(lo, hi, split_kinds)
            try:
                return self._read_segments(segs, pick(cols), lo, hi), cols
            except _SegmentGone:
                continue
        raise SteplineError(f"run {self.path}: segments keep disappearing while reading (compaction too fast?)")

    def _read_segments(self, segs: list[_Seg], fields: list[str] | None, lo: int | None, hi: int | None) -> pa.Table:
        cache = self._api._cache

        def one(seg: _Seg) -> pa.Table:
            schema = cache.schema(seg.file)
            pf = None
            if schema is None:
                pf = _open(self._api.objects, seg.file)
                schema = pf.schema_arrow
            want = schema.names if fields is None else [f for f in fields if f in schema.names]
            got = {f: cache.get(seg.file, f) for f in want}
            missing = [f for f, arr in got.items() if arr is None]
            if missing:
                pf = pf or _open(self._api.objects, seg.file, cache.footer(seg.file))
                try:
                    read = pf.read(columns=missing, use_threads=True)
                except OSError as e:
                    raise _gone_or(self._api.objects, seg.file, e) from e
                cache.put(seg.file, schema, read, pf.metadata)
                got.update({f: read.column(f) for f in missing})
            t = pa.Table.from_arrays([got[f] for f in want], schema=pa.schema([schema.field(f) for f in want]))
            # The range filter on the segment list is by step range; within a file, slice exactly.
            if (lo is not None and seg.min_step < lo) or (hi is not None and seg.max_step >= hi):
                t = _slice_steps(t, lo, hi)
            return t

        # On a bucket each segment costs round trips (footer, column chunks): fetch several at once, in order.
        workers = min(len(segs), self._api.objects.read_concurrency)
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="stepline-read") as pool:
                tables = list(pool.map(one, segs))
        else:
            tables = [one(seg) for seg in segs]
        if not tables:
            return pa.table({STEP: pa.array([], pa.int64())})
        table = tables[0] if len(tables) == 1 else concat_segments(tables)
        # Segments hold disjoint step ranges, so ordered by min_step they are already in step order; sort only if
        # the store ever breaks that (cheap to check on the list, expensive to sort a big table for nothing).
        if any(a.max_step >= b.min_step for a, b in pairwise(segs)):
            table = table.sort_by(STEP)
        return table

    # --- history -----------------------------------------------------------------------------------------------

    @overload
    def history(
        self, keys: Sequence[str] | None = ..., samples: int | None = ..., x_axis: str = ...,
        min_step: int | None = ..., max_step: int | None = ..., *, pandas: Literal[False],
        split_kinds: bool = ...,
    ) -> dict[str, Array]: ...

    @overload
    def history(
        self, keys: Sequence[str] | None = ..., samples: int | None = ..., x_axis: str = ...,
        min_step: int | None = ..., max_step: int | None = ..., pandas: bool = ..., split_kinds: bool = ...,
    ) -> Any: ...

    def history(
        self, keys: Sequence[str] | None = None, samples: int | None = 500, x_axis: str = STEP,
        min_step: int | None = None, max_step: int | None = None, pandas: bool = True, split_kinds: bool = False,
    ) -> Any:
        """Rows of the run, as W&B's ``Run.history``.

        With ``keys``, only rows holding every key (and ``x_axis``) are returned, with columns ``_step``,
        ``x_axis`` and the keys' columns; without, every row and column. ``samples=None`` returns all rows;
        otherwise at most ``samples`` evenly spaced rows (first and last kept). ``min_step`` is inclusive,
        ``max_step`` exclusive. Returns a pandas DataFrame when ``pandas`` and pandas is importable, else a dict
        of numpy arrays: number columns float64 with NaN for missing (int64 when every value is an int and none
        is missing), strings/bools/other as object arrays with None for missing, media decoded. A key logged with
        several kinds is one object column holding each row's value as logged (ints as ints, floats as floats;
        None where missing); ``split_kinds=True``
        gives one column per kind instead, named ``key`` (number) and ``key:<kind>``.
        """
        if samples is not None and samples < 1:
            raise QueryError(f"samples must be >= 1 or None, got {samples}")
        keys = history_keys(keys)
        data = self._history_arrays(keys, samples, x_axis, min_step, max_step, split_kinds)
        if pandas:
            try:
                import pandas as pd
            except ImportError:
                return data
            return pd.DataFrame(data)
        return data

    def _history_arrays(
        self, keys: Sequence[str] | None, samples: int | None, x_axis: str, lo: int | None, hi: int | None,
        split_kinds: bool = False, exact: bool = False,
    ) -> dict[str, Array]:
        """``history()``'s arrays; with ``exact``, a number column that holds an int together with a float or a
        missing value (which float64 cannot tell from a float) is an object column of the values as logged
        (None where missing), as a key of several kinds is: what ``stepline export`` writes to CSV and JSON."""
        # W&B adds the x axis to the keys: rows without an x value cannot be drawn.
        wanted = None if keys is None else list(dict.fromkeys([x_axis, *keys]))

        def plan(cols: list[HistoryColumn]) -> tuple[list[list[HistoryColumn]], list[HistoryColumn]]:
            if wanted is None:
                groups = [] if x_axis == STEP else [self._x_columns(cols, x_axis)]
                return groups, [HistoryColumn(n, n, NUMBER) for n in SPECIAL_COLUMNS] + cols
            groups = [self._resolve(cols, k) for k in wanted]
            out = {c.field: c for g in [[HistoryColumn(STEP, STEP, NUMBER)], *groups] for c in g}
            return groups, list(out.values())

        def fields(cols: list[HistoryColumn]) -> list[str] | None:
            if wanted is None:
                return None
            out = plan(cols)[1]
            return [c.field for c in out] + _int_fields(out)

        table, cols = self._read(fields, lo, hi, split_kinds)
        groups, out_cols = plan(cols)
        mask = _rows_holding(table, groups)
        idx = np.flatnonzero(mask) if mask is not None else None
        n = len(idx) if idx is not None else table.num_rows
        if samples is not None and n > samples:
            # Evenly spaced rows, computed from n alone: deterministic, first and last included.
            pick = np.unique(np.round(np.linspace(0, n - 1, samples)).astype(np.int64))
            idx = pick if idx is None else idx[pick]
        if idx is not None:
            table = table.take(pa.array(idx))
        by_label: dict[str, list[HistoryColumn]] = {}
        for c in out_cols:
            by_label.setdefault(c.label, []).append(c)
        return {name: _to_numpy(table, g[0]) if len(g) == 1 and not (exact and _inexact(table, g[0]))
                else _merged(table, g) for name, g in by_label.items()}

    def _x_columns(self, cols: list[HistoryColumn], x_axis: str) -> list[HistoryColumn]:
        found = [c for c in self._resolve(cols, x_axis) if c.kind == NUMBER]
        if not found:
            raise QueryError(f"x_axis {x_axis!r} is not a number column of run {self.path}")
        return found

    # --- scan_history ------------------------------------------------------------------------------------------

    def scan_history(
        self, keys: Sequence[str] | None = None, page_size: int = 1000, min_step: int | None = 0,
        max_step: int | None = None, split_kinds: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Every row in ``[min_step, max_step)`` as a dict, streamed ``page_size`` rows at a time.

        A row holds ``_step``, ``_timestamp``, ``_runtime`` and its present values (absent keys are absent, NaN
        stays NaN); other and media values are decoded. With ``keys``, only rows holding all of them, with only
        those keys. Each value is as logged: an int as an int, a float as a float, whatever else the key holds
        (W&B's rows). A key logged with several kinds holds each row's value; ``split_kinds=True`` names them
        ``key`` and ``key:<kind>``.
        """
        if page_size < 1:
            raise QueryError(f"page_size must be >= 1, got {page_size}")
        keys = history_keys(keys)
        lo = min_step
        for attempt in range(_RETRIES):
            cols, segs = self._snapshot(lo, max_step, split_kinds)
            try:
                # Resume after the last row yielded if a file disappeared under us (a reader slower than the grace).
                for row in self._scan(cols, segs, keys, page_size, lo, max_step):
                    lo = int(row[STEP]) + 1
                    yield row
                return
            except _SegmentGone:
                if attempt == _RETRIES - 1:
                    raise SteplineError(f"run {self.path}: segments keep disappearing while scanning") from None

    def _scan(
        self, cols: list[HistoryColumn], segs: list[_Seg], keys: Sequence[str] | None, page_size: int, lo: int | None,
        hi: int | None,
    ) -> Iterator[dict[str, Any]]:
        if keys is None:
            groups: list[list[HistoryColumn]] = []
            user = cols
        else:
            groups = [self._resolve(cols, k) for k in dict.fromkeys(keys)]
            if any(not g for g in groups):
                return  # a key the run never logged: no row holds it
            user = [c for c in {c.field: c for g in groups for c in g}.values() if c.field not in SPECIAL_COLUMNS]
        # Each row holds what was logged there, as W&B's rows do: an int as an int (from an int64 column, or from a
        # float64 column's int companion), a float as a float, whatever the column holds in other segments.
        fields = [*SPECIAL_COLUMNS, *(c.field for c in user), *_int_fields(user)]
        objects, cache = self._api.objects, self._api._cache
        for seg in segs:
            # Opened when its turn comes: a file collected since the listing is found missing here.
            pf = _open(objects, seg.file, cache.footer(seg.file))
            names = set(pf.schema_arrow.names)
            present = [f for f in fields if f in names]
            for batch in _batches(objects, seg.file, pf, page_size, present):
                t = _slice_steps(pa.Table.from_batches([batch]), lo, hi)
                mask = _rows_holding(t, groups)
                if mask is not None:
                    t = t.filter(pa.array(mask))
                if t.num_rows:
                    yield from _rows(t, [c for c in user if c.field in names])
                # Files are sorted by step and segments by range: once past max_step, nothing later qualifies.
                if hi is not None and batch.num_rows and batch.column(STEP)[batch.num_rows - 1].as_py() >= hi - 1:
                    return

    # --- sampled lines -----------------------------------------------------------------------------------------

    def sampled(
        self, key: str, x_axis: str = STEP, buckets: int = 1000, x_min: float | None = None,
        x_max: float | None = None,
    ) -> Sampled:
        """One line of ``key`` against ``x_axis`` within ``[x_min, x_max]``, M4-downsampled (docs/DESIGN.md §8).

        Points are rows holding both a number value of ``key`` and an ``x_axis`` value (NaN x skipped; NaN y
        kept, skipped for min/max). At most ``buckets`` points → all of them, unchanged. Otherwise the range is
        split into ``buckets`` equal buckets and each keeps its first, last, min and max point, plus the range's
        first and last point. The band arrays describe each non-empty bucket (x of its first and last point,
        min and max of y) so a chart can draw the envelope. Deterministic.
        """
        if buckets < 1:
            raise QueryError(f"buckets must be >= 1, got {buckets}")
        # On the step axis the x range is a step range: only overlapping segments are opened.
        lo = math.ceil(x_min) if x_axis == STEP and x_min is not None else None
        hi = math.floor(x_max) + 1 if x_axis == STEP and x_max is not None else None
        chosen: list[HistoryColumn] = []

        def pick(cols: list[HistoryColumn]) -> list[str]:
            chosen.clear()
            found = self._resolve(cols, key)
            ys = [c for c in found if c.kind == NUMBER]
            if found and not ys:
                raise QueryError(f"key {key!r} of run {self.path} has no number column")
            x_col = (HistoryColumn(x_axis, x_axis, NUMBER) if x_axis in SPECIAL_COLUMNS
                     else self._x_columns(cols, x_axis)[0])
            # An unknown key has no points; its made-up field is simply absent from every file.
            chosen.extend([x_col, ys[0] if ys else HistoryColumn(key, key, NUMBER)])
            return list(dict.fromkeys([STEP, x_col.field, chosen[1].field]))

        table, _ = self._read(pick, lo, hi)
        x_col, y_col = chosen
        if y_col.field not in table.column_names or x_col.field not in table.column_names:
            return _empty_sampled()
        steps = table.column(STEP).to_numpy()
        xs = table.column(x_col.field)
        y_arr = table.column(y_col.field)
        x = xs.to_numpy(zero_copy_only=False)
        y = y_arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        # Row filter; a column without nulls on the step axis over the whole run needs none (the common case).
        masks = [np.asarray(c.is_valid().to_numpy(zero_copy_only=False), dtype=bool) for c in (y_arr, xs)
                 if c.null_count]
        if x.dtype.kind == "f":
            masks.append(~np.isnan(x))
        if x_min is not None:
            masks.append(x >= x_min)
        if x_max is not None:
            masks.append(x <= x_max)
        if masks:
            ok = np.logical_and.reduce(masks) if len(masks) > 1 else masks[0]
            if not ok.all():
                x, y, steps = x[ok], y[ok], steps[ok]
        if len(x) > 1 and x_axis != STEP and np.any(x[1:] < x[:-1]):
            # A stable sort keeps step order among equal x, so the result stays a function of the history.
            order = np.argsort(x, kind="stable")
            x, y, steps = x[order], y[order], steps[order]
        r = m4(x, y, buckets, x_min, x_max)
        return Sampled(
            x=x[r.keep], y=y[r.keep], step=steps[r.keep],
            bucket_x0=x[r.bucket_first], bucket_x1=x[r.bucket_last],
            bucket_min=r.bucket_min, bucket_max=r.bucket_max,
            count=len(x), sampled=r.sampled,
        )


class Sampled(TypedDict):
    """A sampled line: points (``x``, ``y`` and their ``step``) and, per non-empty bucket, its band."""

    x: Array
    y: npt.NDArray[np.float64]
    step: npt.NDArray[np.int64]
    bucket_x0: Array
    bucket_x1: Array
    bucket_min: npt.NDArray[np.float64]
    bucket_max: npt.NDArray[np.float64]
    count: int  # points in the range before sampling
    sampled: bool  # False: every point of the range is returned


def _empty_sampled() -> Sampled:
    f = np.empty(0, np.float64)
    i = np.empty(0, np.int64)
    return Sampled(x=f, y=f, step=i, bucket_x0=f, bucket_x1=f, bucket_min=f, bucket_max=f, count=0, sampled=False)


# --- arrow → python/numpy ----------------------------------------------------------------------------------------


def _rows_holding(table: pa.Table, groups: list[list[HistoryColumn]]) -> npt.NDArray[np.bool_] | None:
    """Rows holding every group (a group = the columns of one key; any of them present counts); None = all."""
    mask: npt.NDArray[np.bool_] | None = None
    names = set(table.column_names)
    for group in groups:
        g = np.zeros(table.num_rows, dtype=bool)
        for c in group:
            if c.field in names:
                col = table.column(c.field)
                g |= True if col.null_count == 0 else np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
        mask = g if mask is None else mask & g
    return mask


def _to_numpy(table: pa.Table, col: HistoryColumn) -> Array:
    n = table.num_rows
    if col.field not in table.column_names:
        return np.full(n, np.nan) if col.kind == NUMBER else np.full(n, None, dtype=object)
    arr = table.column(col.field)
    if col.kind in (NUMBER, STRING, BOOL) or col.field in SPECIAL_COLUMNS:
        # Nulls become NaN in number columns (int64 with nulls turns float64), None in string and bool ones.
        out: Array = arr.to_numpy(zero_copy_only=False)
        if col.kind == NUMBER and out.dtype == object:  # an all-null column reads as object
            out = np.full(n, np.nan)
        # Zero-copy views of Arrow buffers are read-only and may be shared with the column cache: callers get
        # arrays they own, as from W&B.
        return out if out.flags.writeable else out.copy()
    return np.array([None if v is None else unpack_stored(v) for v in arr.to_pylist()] + [None], dtype=object)[:-1]


def _inexact(table: pa.Table, c: HistoryColumn) -> bool:
    """Whether a number column's float64 array would not give back its logged ints (ints and missing values, or
    ints and floats)."""
    if c.kind != NUMBER or c.field in SPECIAL_COLUMNS or c.field not in table.column_names:
        return False
    col = table.column(c.field)
    if pa.types.is_integer(col.type):
        return bool(col.null_count > 0)
    companion = int_field(c.field)
    return companion in table.column_names and table.column(companion).null_count < table.num_rows


def _merged(table: pa.Table, group: list[HistoryColumn]) -> Array:
    """One object column for the kinds of one key: each row holds the value logged there (None: none)."""
    out = np.full(table.num_rows, None, dtype=object)
    for c in group:
        if c.field not in table.column_names:
            continue
        col = table.column(c.field)
        valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if not valid.any():
            continue
        vals = _values(table, c, pa.array(valid))
        if c.kind not in (NUMBER, STRING, BOOL):
            vals = [unpack_stored(v) for v in vals]
        picked = np.empty(len(vals), dtype=object)
        picked[:] = vals
        out[valid] = picked
    return out


def _int_fields(cols: Sequence[HistoryColumn]) -> list[str]:
    """The int companions (:func:`schemas.store.int_field`) a segment may hold for these columns."""
    return [int_field(c.field) for c in cols if c.kind == NUMBER and c.field not in SPECIAL_COLUMNS]


def _values(table: pa.Table, c: HistoryColumn, rows: pa.Array | None = None) -> list[Any]:
    """The column's values (of the ``rows`` mask's rows) as logged: a number column's ints taken from its int
    companion where it has one."""
    col = table.column(c.field)
    vals: list[Any] = (col if rows is None else col.filter(rows)).to_pylist()
    companion = int_field(c.field)
    if c.kind == NUMBER and companion in table.column_names:
        ints = table.column(companion)
        if ints.null_count < len(ints):
            exact = (ints if rows is None else ints.filter(rows)).to_pylist()
            vals = [v if i is None else i for v, i in zip(vals, exact, strict=True)]
    return vals


def _rows(table: pa.Table, user: list[HistoryColumn]) -> Iterator[dict[str, Any]]:
    steps = table.column(STEP).to_pylist()
    tss = table.column(TIMESTAMP).to_pylist()
    rts = table.column(RUNTIME).to_pylist()
    values: list[tuple[str, list[Any], bool]] = []
    for c in user:
        values.append((c.label, _values(table, c), c.kind not in (NUMBER, STRING, BOOL)))
    for i, step in enumerate(steps):
        row: dict[str, Any] = {STEP: step, TIMESTAMP: tss[i], RUNTIME: rts[i]}
        for name, vals, packed in values:
            v = vals[i]
            if v is not None:
                row[name] = unpack_stored(v) if packed else v
        yield row
