"""Property: whatever sequence of ints, floats, strings and bools a key is logged with, however the rows fall into
segments (call by call or column-wise through the block fast path) and whether or not the segments are then
compacted, ``scan_history()`` gives back every value exactly as logged: its type (``1`` is not ``1.0``, ``True``
is not ``1``) and its value (ints bit for bit across the whole int64 range, floats bit for bit, -0.0 and ±inf
included; NaN as NaN). A key holding several kinds is one object column in ``history()`` with the same values.

Written through the real aligner, segment writer (``workers.segments.rows_to_table``), merge
(``workers.segments.merge_tables``) and fenced commit (``support.run_writer``); read by ``history.Api``.
"""

from __future__ import annotations

import math
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.run_writer import RunWriter

from history import Api
from schemas import LogBlock
from schemas.objects import as_store
from workers.metastore import MetaStore, sqlite_url

INT64 = st.integers(-(2**63), 2**63 - 1)
INTS = st.one_of(INT64, st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63)]),
                 st.integers(-5, 5))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1.0, 2.5, float(2**53), math.inf, -math.inf, math.nan]))
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=4)
#: None: the call logs another key only, so the row lacks this one.
VALUES = st.one_of(INTS, FLOATS, TEXT, st.booleans(), st.none())


def same(got: Any, want: Any) -> bool:
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        return math.isnan(got) if math.isnan(want) else struct.pack("<d", got) == struct.pack("<d", want)
    return bool(got == want)


def _block_column(values: list[Any]) -> Any:
    """A block column as the SDK sends it (ingest.batch): an int64 or float64 array when every value has that
    type, else a list."""
    types = {type(v) for v in values}
    if types == {int}:
        return np.array(values, dtype=np.int64)
    if types == {float}:
        return np.array(values, dtype=np.float64)
    return list(values)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(VALUES, min_size=1, max_size=24), cuts=st.lists(st.booleans(), min_size=24, max_size=24),
       blocks=st.lists(st.booleans(), min_size=24, max_size=24), compact=st.booleans())
def test_scan_history_gives_back_every_value_as_logged(
    values: list[Any], cuts: list[bool], blocks: list[bool], compact: bool,
) -> None:
    # Segments: a commit after call i where cuts[i]; each segment's calls go as one block where blocks[i] says so
    # (column-wise when they share one kind, as the fast path needs), else call by call.
    segments: list[list[Any]] = [[]]
    for i, v in enumerate(values):
        segments[-1].append(v)
        if cuts[i] and i < len(values) - 1:
            segments.append([])
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        store = MetaStore(sqlite_url(data_dir))
        try:
            w = RunWriter(store, as_store(data_dir), "r").start()
            for j, seg in enumerate(segments):
                if blocks[j] and None not in seg:
                    w.ts += 1.0
                    w.aligner.apply(LogBlock(keys=["k"], ts=np.full(len(seg), w.ts), step=[None] * len(seg),
                                             commit=[None] * len(seg), cols=[_block_column(seg)]))
                else:
                    for v in seg:
                        w.log({"k": v} if v is not None else {"other": 0})
                w.commit()
            if compact and len(segments) > 1:
                w.compact()
            with Api(data_dir=data_dir) as api:
                view = api.run("proj/r")
                rows = list(view.scan_history())
                h = view.history(samples=None, pandas=False)
        finally:
            store.close()
    assert [r["_step"] for r in rows] == list(range(len(values)))
    for i, (row, want) in enumerate(zip(rows, values, strict=True)):
        if want is None:
            assert "k" not in row, i
        else:
            assert same(row.get("k"), want), (i, row.get("k"), want)
    kinds = {type(v) for v in values if v is not None}
    if len(kinds - {int, float}) + bool(kinds & {int, float}) > 1:  # several kinds: one object column
        assert h["k"].dtype == object
        for i, want in enumerate(values):
            assert h["k"][i] is None if want is None else same(h["k"][i], want), (i, h["k"][i], want)


def test_an_int_companion_only_where_a_float64_column_holds_ints() -> None:
    """The format (schemas.store): all ints → int64 alone; all floats → float64 alone (nothing added to the common
    case); both → float64 plus an int64 companion holding the ints, null elsewhere; a merge keeps it right."""
    from schemas.store import INT_PART, int_field
    from workers.align import Row, RowBatch
    from workers.segments import merge_tables, rows_to_table

    cols = {("i", "number"): "i", ("f", "number"): "f", ("m", "number"): "m"}
    rows: list[Row | RowBatch] = [
        Row(0, 1.0, 0.0, {("i", "number"): 1, ("f", "number"): 0.5, ("m", "number"): 2**53 + 1}),
        Row(1, 2.0, 1.0, {("i", "number"): 2, ("f", "number"): 1.5, ("m", "number"): 2.5}),
        Row(2, 3.0, 2.0, {("i", "number"): 3})]
    t = rows_to_table(rows, cols)
    assert t.schema.field("i").type == "int64" and t.schema.field("f").type == "double"
    assert t.schema.field("m").type == "double"
    assert set(t.column_names) == {"_step", "_timestamp", "_runtime", "i", "f", "m", int_field("m")}
    companion = t.schema.field(int_field("m"))
    assert companion.metadata == {b"key": b"m", b"kind": INT_PART.encode()}
    assert t.column(int_field("m")).to_pylist() == [2**53 + 1, None, None]

    # A later segment where "i" holds a float: the merge makes "i" float64 and keeps its ints in a companion.
    later = rows_to_table([Row(3, 4.0, 3.0, {("i", "number"): 4.5, ("m", "number"): 7})], cols)
    assert later.schema.field("m").type == "int64" and int_field("m") not in later.column_names
    merged = merge_tables([later, t])
    assert merged.column("i").to_pylist() == [1.0, 2.0, 3.0, 4.5]
    assert merged.column(int_field("i")).to_pylist() == [1, 2, 3, None]
    assert merged.column(int_field("m")).to_pylist() == [2**53 + 1, None, None, 7]
    assert int_field("f") not in merged.column_names
