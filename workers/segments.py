"""Segment files: rows of one run as an immutable Parquet file (format in :mod:`schemas.store`).

A segment is written to a temporary name, fsync'd and renamed, so a file that exists under its final name is
complete; the metadata commit that references it comes after. Files are never modified: compaction writes a new
file and swaps the references in one transaction.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import packb
from schemas.store import RUNTIME, STEP, TIMESTAMP, field_name, run_dir
from schemas.values import BOOL, NUMBER, STRING

from .align import ColId, Row, RowBatch

COMPRESSION = "zstd"


def _column(kind: str, values: Any) -> pa.Array:
    if isinstance(values, np.ndarray):  # a number column of the block fast path: no missing values
        return pa.array(values, type=pa.int64() if values.dtype.kind == "i" else pa.float64())
    if kind == NUMBER:
        present = [v for v in values if v is not None]
        if all(type(v) is int for v in present):
            return pa.array(values, type=pa.int64())
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    if kind == STRING:
        return pa.array(values, type=pa.string())
    if kind == BOOL:
        return pa.array(values, type=pa.bool_())
    return pa.array([None if v is None else packb(v) for v in values], type=pa.binary())


def rows_to_table(rows: list[Row | RowBatch], displays: dict[ColId, str]) -> pa.Table:
    """Rows and row batches (ascending, unique steps) → an Arrow table in the segment format.

    Consecutive plain rows become one chunk, each batch another; chunks are concatenated with type promotion, so
    a number column is int64 only while every value in the segment is an int.
    """
    chunks: list[pa.Table] = []
    plain: list[Row] = []
    for r in rows:
        if isinstance(r, RowBatch):
            if plain:
                chunks.append(_plain_table(plain, displays))
                plain = []
            chunks.append(_batch_table(r, displays))
        else:
            plain.append(r)
    if plain:
        chunks.append(_plain_table(plain, displays))
    if len(chunks) == 1:
        return chunks[0]
    return _order_columns(pa.concat_tables(chunks, promote_options="permissive"))


def _order_columns(table: pa.Table) -> pa.Table:
    names = table.column_names
    rest = sorted(n for n in names if n not in (STEP, TIMESTAMP, RUNTIME))
    return table.select([STEP, TIMESTAMP, RUNTIME, *rest])


def _schema_fields() -> list[pa.Field]:
    return [pa.field(STEP, pa.int64()), pa.field(TIMESTAMP, pa.float64()), pa.field(RUNTIME, pa.float64())]


def _user_columns(cols: dict[ColId, Any], displays: dict[ColId, str]) -> tuple[list[pa.Field], list[pa.Array]]:
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    for (ident, kind) in sorted(cols, key=lambda c: field_name(displays[c], c[1])):
        arr = _column(kind, cols[(ident, kind)])
        display = displays[(ident, kind)]
        fields.append(pa.field(field_name(display, kind), arr.type, metadata={"key": display, "kind": kind}))
        arrays.append(arr)
    return fields, arrays


def _plain_table(rows: list[Row], displays: dict[ColId, str]) -> pa.Table:
    cols: dict[ColId, list[Any]] = {}
    n = len(rows)
    for i, row in enumerate(rows):
        for col, v in row.values.items():
            lst = cols.get(col)
            if lst is None:
                lst = cols[col] = [None] * n
            lst[i] = v
    arrays: list[pa.Array] = [
        pa.array([r.step for r in rows], type=pa.int64()),
        pa.array([r.ts for r in rows], type=pa.float64()),
        pa.array([r.runtime for r in rows], type=pa.float64()),
    ]
    fields, user = _user_columns(cols, displays)
    return pa.Table.from_arrays(arrays + user, schema=pa.schema(_schema_fields() + fields))


def _batch_table(b: RowBatch, displays: dict[ColId, str]) -> pa.Table:
    arrays: list[pa.Array] = [
        pa.array(b.steps, type=pa.int64()),
        pa.array(b.ts, type=pa.float64()),
        pa.array(b.runtime, type=pa.float64()),
    ]
    fields, user = _user_columns(b.values, displays)
    return pa.Table.from_arrays(arrays + user, schema=pa.schema(_schema_fields() + fields))


def write_table(data_dir: Path, project: str, run: str, table: pa.Table, level: int) -> tuple[str, int]:
    """Write a segment file durably; return its path relative to ``data_dir`` and its size."""
    rel = f"{run_dir(project, run)}/L{level}-{uuid.uuid4().hex}.parquet"
    path = data_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, **_write_options(table))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return rel, path.stat().st_size


def _write_options(table: pa.Table) -> dict[str, Any]:
    """Encodings measured on 100k rows x 20 keys: byte-stream-split floats and delta-packed ints with zstd
    take 6.2 bytes per point (plain: 7.0) and decode 3-4x faster; statistics on ``_step`` let readers and
    DuckDB skip row groups by step."""
    encodings: dict[str, str] = {}
    dictionary: list[str] = []
    for f in table.schema:
        if pa.types.is_floating(f.type):
            encodings[f.name] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_integer(f.type):
            encodings[f.name] = "DELTA_BINARY_PACKED"
        elif pa.types.is_string(f.type):
            dictionary.append(f.name)
    return {
        "compression": COMPRESSION,
        "use_dictionary": dictionary,
        "column_encoding": encodings,
        "write_statistics": [STEP],
        "row_group_size": 128 * 1024,
    }


def read_table(data_dir: Path, rel: str) -> pa.Table:
    return pq.read_table(data_dir / rel)


def merge_tables(tables: list[pa.Table]) -> pa.Table:
    """Concatenate segments of one run (disjoint step ranges) into one table, sorted by step.

    A number column that is int64 in one segment and float64 in another becomes float64 (int64 only while every
    value is an int).
    """
    merged = pa.concat_tables(tables, promote_options="permissive")
    return merged.sort_by(STEP)
