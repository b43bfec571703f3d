"""Export a run's history to Parquet, CSV or JSON Lines: ``stepline export PROJECT/RUN --format F --out PATH``.

What is written is ``Api().run(path).history(keys, samples=None)``: every row (or, with ``--keys``, the rows
holding all of them), columns ``_step``, ``_timestamp``, ``_runtime`` and the keys in the run's order, so
``pandas.read_parquet(out)`` equals ``history(samples=None)``.

Rows have W&B's shape: a key logged with values of several kinds is one column holding each row's value. CSV and
JSON Lines write every value as it was logged, an int as an int (``1``, not ``1.0``; exactly, also past 2**53),
even in a number column that also holds floats or misses rows, as ``scan_history()`` gives it.

- **Parquet**: number columns int64 or float64 (NaN where a row lacks the key, as ``history`` gives), strings and
  bools as nullable columns; lists, arrays and media as JSON text (media as W&B-style ``{"_type": ...}`` dicts).
  A key with values of several kinds (Parquet columns have one type) is a string column of JSON text
  (``1``, ``"high"``, ``true``).
- **CSV**: a header row, then one line per row; missing values (and NaN) are empty, floats are written with
  ``repr`` so they read back bit for bit (``inf`` and ``-inf`` for the infinite ones), lists, arrays and media as
  JSON text; in a column of several kinds each cell is written as its own kind is.
- **JSON Lines**: one object per row; missing keys are left out, ±inf are the strings ``"Infinity"`` and
  ``"-Infinity"`` (JSON has no such numbers), NaN values are left out as missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import SteplineError
from schemas.store import STEP

from .formatting import plain
from .query import Api, Array
from .remote import RemoteApi

__all__ = ["FORMATS", "export_history", "main"]

FORMATS = ("parquet", "csv", "jsonl")


def _scalar_kind(arr: Array) -> str:
    """``number``, ``string``, ``bool``, ``mixed`` (numbers, strings and bools of one key) or ``json`` (lists,
    arrays, media, anything else) for one history column."""
    if arr.dtype.kind in "iuf":
        return "number"
    if arr.dtype.kind == "b":
        return "bool"
    types = {type(v) for v in arr if v is not None}
    if types <= {str}:
        return "string"
    if types <= {bool, np.bool_}:
        return "bool"
    if types <= {str, bool, int, float}:
        return "mixed"
    return "json"


def _json_text(v: Any) -> str | None:
    return None if v is None else json.dumps(plain(v), separators=(",", ":"), allow_nan=False)


def to_arrow(data: Mapping[str, Array]) -> pa.Table:
    """History arrays as an Arrow table (JSON text for lists, arrays and media)."""
    cols: dict[str, pa.Array] = {}
    for name, arr in data.items():
        kind = _scalar_kind(arr)
        if kind == "number":
            cols[name] = pa.array(arr)
        elif kind == "string":
            cols[name] = pa.array(list(arr), type=pa.string())
        elif kind == "bool":
            cols[name] = pa.array([None if v is None else bool(v) for v in arr], type=pa.bool_())
        else:
            cols[name] = pa.array([_json_text(v) for v in arr], type=pa.string())
    return pa.table(cols)


def _csv_cell(v: Any, kind: str) -> str:
    if v is None:
        return ""
    if kind == "number":
        f = v.item() if isinstance(v, np.generic) else v
        if isinstance(f, float):
            return "" if math.isnan(f) else repr(f)  # NaN is also what history gives for a missing value
        return str(f)
    if kind == "string":
        return str(v)
    if kind == "bool":
        return "True" if v else "False"
    if kind == "mixed":
        return _csv_cell(v, "bool" if isinstance(v, bool) else "string" if isinstance(v, str) else "number")
    return _json_text(v) or ""


def _json_value(v: Any) -> Any:
    p = plain(v)
    return None if isinstance(p, float) and math.isnan(p) else p


def export_history(data: Mapping[str, Array], fmt: str, out: Path | TextIO) -> int:
    """Write history arrays to ``out`` (a path, or a text stream for csv/jsonl) in ``fmt``; returns the row count."""
    if fmt not in FORMATS:
        raise SteplineError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    n = len(next(iter(data.values()))) if data else 0
    if isinstance(out, Path):
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            pq.write_table(to_arrow(data), out)
            return n
        with open(out, "w", newline="", encoding="utf-8") as f:
            return export_history(data, fmt, f)
    if fmt == "parquet":
        raise SteplineError("Parquet goes to a file, not a stream")
    if fmt == "csv":
        kinds = {k: _scalar_kind(a) for k, a in data.items()}
        w = csv.writer(out, lineterminator="\n")
        w.writerow(list(data))
        for i in range(n):
            w.writerow([_csv_cell(a[i], kinds[k]) for k, a in data.items()])
    else:
        for i in range(n):
            row = {k: _json_value(a[i]) for k, a in data.items()}
            out.write(json.dumps({k: v for k, v in row.items() if v is not None}, allow_nan=False) + "\n")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="stepline export",
        description="Write a run's full history (every row, no sampling) to Parquet, CSV or JSON Lines.",
    )
    ap.add_argument("path", metavar="PROJECT/RUN", help="the run ('entity/project/run' is accepted too)")
    ap.add_argument("--keys", nargs="+", help="only these keys (and only the rows holding all of them)")
    ap.add_argument("--format", choices=FORMATS, help="default: from the --out suffix, else parquet")
    ap.add_argument("--out", required=True, help="file to write ('-' for stdout with csv or jsonl)")
    ap.add_argument("--min-step", type=int, help="first step (inclusive)")
    ap.add_argument("--max-step", type=int, help="last step (exclusive)")
    ap.add_argument("--data-dir", help="default: STEPLINE_DATA_DIR or ./stepline-data")
    ap.add_argument("--db-url", help="default: STEPLINE_DB_URL or SQLite in the data directory")
    ap.add_argument("--storage-url", help="segments and media: s3://bucket/prefix (default: STEPLINE_STORAGE_URL or "
                    "the data directory; endpoint, region and credentials from the AWS variables)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``stepline export``: 0 on success, 1 on an unknown run or a bad argument."""
    args = build_parser().parse_args(argv)
    fmt = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lstrip(".").lower()
        fmt = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}.get(
            suffix, "parquet")
    try:
        with Api(data_dir=args.data_dir, db_url=args.db_url, storage_url=args.storage_url) as api:
            if isinstance(api, RemoteApi):  # STEPLINE_URL set and no store named: Api() went to the gateway
                raise SteplineError(
                    "export reads the store itself: run it where the data directory or database is (--data-dir, "
                    "--db-url); through the gateway (STEPLINE_URL), read Api().run(path).history(samples=None)")
            # CSV and JSON write each value as logged (an int as an int); Parquet's number columns are history()'s.
            data = api.run(args.path)._history_arrays(
                args.keys, None, STEP, args.min_step, args.max_step, exact=fmt != "parquet")
        n = export_history(data, fmt, sys.stdout if args.out == "-" else Path(args.out))
    except SteplineError as e:
        print(f"stepline export: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.path}: {n} rows, {len(data)} columns -> {args.out} ({fmt})", file=sys.stderr)
    return 0
