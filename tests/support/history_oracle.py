"""An independent model of docs/DESIGN.md §2 (the oracle) and a reader of what workers wrote, shared by the test suites.

The oracle is written straight from the §2 table, with plain dicts keyed by field name, and knows nothing of
``workers.align``. Rows come out as ``(step, ts, runtime, {field: value})`` where ``field`` is the segment column
name (``key`` for numbers, ``"key:kind"`` otherwise); a rejection is ``(reason, step, cursor)``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.objects import ObjectStore, open_store, parse_storage_url
from schemas.store import RUNTIME, STEP, TIMESTAMP, field_name, int_field, is_int_field
from schemas.values import kind_of

OracleRow = tuple[int, float, float, dict[str, Any]]
OracleRejection = tuple[str, int, int]


@dataclass
class Oracle:
    """One run: a step cursor, one pending row, the rows written and the calls rejected (docs/DESIGN.md §2)."""

    cursor: int = 0
    start_ts: float | None = None
    pending: dict[str, tuple[str, Any]] = field(default_factory=dict)  # key identity -> (kind, value)
    spellings: dict[str, str] = field(default_factory=dict)  # key identity -> first spelling
    columns: set[tuple[str, str]] = field(default_factory=set)  # (identity, kind) of every column merged
    pending_ts: float | None = None
    rows: list[OracleRow] = field(default_factory=list)
    rejections: list[OracleRejection] = field(default_factory=list)

    def start(self, ts: float) -> None:
        if self.start_ts is None:
            self.start_ts = ts

    def _merge(self, ts: float, data: dict[str, Any]) -> None:
        for key, value in data.items():
            kind = kind_of(value)
            if kind is None:  # None logs nothing
                continue
            ident = key.casefold()  # keys are one column case-insensitively; the first spelling is kept
            self.spellings.setdefault(ident, key)
            self.columns.add((ident, kind))
            self.pending[ident] = (kind, value)  # per leaf, last write wins (whatever the kind)
        self.pending_ts = ts

    def _write(self, step: int) -> None:
        assert self.pending_ts is not None
        start = self.start_ts if self.start_ts is not None else self.pending_ts
        values = {field_name(self.spellings[i], kind): v for i, (kind, v) in self.pending.items()}
        self.rows.append((step, self.pending_ts, self.pending_ts - start, values))
        self.pending, self.pending_ts = {}, None

    def log(self, ts: float, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        c = self.cursor
        if step is not None and step < c:  # reject the whole call
            self.rejections.append(("non_monotonic_step", step, c))
            return
        self.start(ts)
        if step is None:  # log(d) / log(d, commit=False)
            self._merge(ts, data)
            if commit is not False:
                self._write(c)
                self.cursor = c + 1
            return
        if step > c:  # write pending at c if non-empty; c = s
            if self.pending:
                self._write(c)
            self.cursor = step
        self._merge(ts, data)  # s == c (or now equal): merge
        if commit is True:
            self._write(step)
            self.cursor = step + 1

    def finish(self, ts: float) -> None:
        self.start(ts)
        if self.pending:
            self._write(self.cursor)
            self.cursor += 1


def values_same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def rows_same(got: list[OracleRow], want: list[OracleRow]) -> bool:
    if len(got) != len(want):
        return False
    for (gs, gt, gr, gv), (ws, wt, wr, wv) in zip(got, want, strict=True):
        if gs != ws or gt != wt or not math.isclose(gr, wr, abs_tol=1e-9) or gv.keys() != wv.keys():
            return False
        if not all(values_same(gv[k], wv[k]) for k in gv):
            return False
    return True


def segment_rows(data_dir: Path | ObjectStore, store: Any, project: str, run: str) -> list[OracleRow]:
    """Every row of a run as stored: segments in ``sl_segments`` order (``min_step``), rows in file order.
    ``data_dir`` is the local data directory or the object store (a bucket) the workers write to."""
    out: list[OracleRow] = []
    # A data directory means wherever this test's workers write: STEPLINE_STORAGE_URL when the test set it.
    objects = data_dir if isinstance(data_dir, ObjectStore) else open_store(
        parse_storage_url(os.environ.get("STEPLINE_STORAGE_URL"), data_dir))
    files = [seg["file"] for seg in store.segments_of(project, run)]
    # On a bucket, each segment costs a few round trips (size, footer, columns): fetched 8 at a time, in order.
    with ThreadPoolExecutor(objects.read_concurrency) as pool:
        tables = list(pool.map(lambda f: objects.parquet(f).read(), files))
    for table in tables:
        cols = exact_columns(table)
        for i in range(table.num_rows):
            values = {name: col[i] for name, col in cols.items()
                      if name not in (STEP, TIMESTAMP, RUNTIME) and col[i] is not None}
            out.append((cols[STEP][i], cols[TIMESTAMP][i], cols[RUNTIME][i], values))
    return out


def exact_columns(table: Any) -> dict[str, list[Any]]:
    """A segment's columns as Python lists, a float64 number column's logged ints taken from its int companion
    (``schemas.store.int_field``), which is not a column of its own."""
    cols = {name: table.column(name).to_pylist() for name in table.column_names if not is_int_field(name)}
    for name in table.column_names:
        if is_int_field(name):
            field = name.removesuffix(int_field(""))
            cols[field] = [v if i is None else i for v, i in zip(cols[field], table.column(name).to_pylist(),
                                                                 strict=True)]
    return cols


def read_history(data_dir: Path | ObjectStore, store: Any, project: str, run: str) -> list[OracleRow]:
    """Every row of a run as the workers committed it, in storage order (:func:`segment_rows`), never re-sorted:
    the product promises rows in ascending step order, so a comparison with the oracle's rows (written in call
    order, which is ascending step order) catches rows reordered inside a segment. Segments come in ``min_step``
    order, the order readers take them in; ``worker_harness.check_history`` also checks that they do not overlap.
    """
    return segment_rows(data_dir, store, project, run)
