"""W&B's row shape: a key logged with values of several kinds (a number, then a string, then a bool, then a float)
comes back from ``history()`` and ``scan_history()`` as ONE column holding each row's value, as the real W&B SDK
writes it; and every value comes back with its own type: an int logged among floats is an int (exactly, also past
2**53), a float is a float, whether they share a segment or were written to different segments and compacted.

The oracle is W&B's own file: the real ``wandb`` SDK runs the calls offline in a child process, and its history
records are read back with W&B's protobuf classes (not through stepline's importer). Each item's value is taken
from W&B's typed form (``x_history_value_encoding="json,typed"``: an ``integer``, a ``number``, a ``text``, a
``boolean``, as the SDK saw the Python value) and checked equal in value to its ``value_json``, W&B's JSON text,
which alone cannot tell the types apart: wandb-core writes a float 5.0 as ``5`` and -0.0 as ``-0``. The same calls
go through ``import ingest as wandb``; the rows must be equal, key for key, value for value and type for type
(``1`` is not ``1.0``). W&B's pandas frame is ``pandas.DataFrame.from_records(rows)`` of those rows
(``wandb.apis.public.Run.history``): a key holding ints and floats only is a float64 column there, and ours is too.
"""

from __future__ import annotations

import glob
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from support.compat_stack import Stack
from support.run_writer import RunWriter
from test_wandb_import import need_wandb

import ingest as wandb
from history import Api
from history.export import main as export_main
from schemas.objects import as_store
from stepline.wandb_import import read_records
from workers.metastore import MetaStore, sqlite_url

BIG = 2**53 + 1  # not a float64: a float column would give 2**53
CALLS: list[dict[str, Any]] = [
    {"m": 1, "n": "a", "x": 1, "big": BIG},
    {"m": "str", "n": 2, "x": 2.5, "big": 0.5},
    {"m": True, "x": 3},
    {"m": 2.5, "n": False, "x": -4, "big": -BIG * 512 - 1},
    {"m": -3, "other": 7, "x": 5.0},
    {"m": "last", "n": 0.5, "x": 6},
]

SCRIPT = """
import json, sys
import wandb
calls = json.loads(open(sys.argv[1]).read())
# "typed": W&B records each value's type too (a float 5.0 stays a float; its JSON text below is "5").
run = wandb.init(project="shape", id=sys.argv[2], settings=wandb.Settings(x_history_value_encoding="json,typed"))
for data in calls:
    run.log(data)
run.finish()
"""


def wandb_rows(tmp_path: Path, run_id: str, calls: list[dict[str, Any]] = CALLS) -> list[dict[str, Any]]:
    """The history rows of the calls as the real W&B SDK writes them (values without ``_``-keys)."""
    (tmp_path / "s.py").write_text(SCRIPT)
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    home = tmp_path / "wandb-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "STEPLINE_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(home), WANDB_CONFIG_DIR=str(home / "config"),
               WANDB_CACHE_DIR=str(home / "cache"), WANDB_DATA_DIR=str(home / "data"), WANDB_SILENT="true",
               WANDB_CONSOLE="off", WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true")
    proc = subprocess.run([sys.executable, str(tmp_path / "s.py"), str(tmp_path / "calls.json"), run_id], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = glob.glob(str(home / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    pb: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")
    rows = []
    for data in read_records(path):
        rec = pb.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            which = item.WhichOneof("value")
            assert which is not None, f"no typed value for {key!r}: is this wandb older than the typed encoding?"
            value = None if which == "none" else json.loads(item.json) if which == "json" else getattr(item, which)
            # The JSON text holds the same value (it spells an integral float like an int: 5.0 as "5").
            text = json.loads(item.value_json)
            assert text == value or (isinstance(value, float) and math.isnan(value) and math.isnan(text)), key
            row[key] = value
        rows.append(row)
    return rows


def typed(row: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """A row's values with their exact types (``1`` and ``1.0`` differ), without ``_``-keys."""
    return {k: (type(v).__name__, v) for k, v in row.items() if not k.startswith("_")}


def typed_cells(values: Any) -> list[tuple[str, Any]]:
    return [(type(v).__name__, v) for v in values]


@pytest.mark.integration
def test_rows_of_a_key_with_several_kinds_equal_wandbs(stack: Stack, tmp_path: Path) -> None:
    need_wandb()
    want = wandb_rows(tmp_path, "shape1")
    assert [r["_step"] for r in want] == list(range(len(CALLS)))
    assert typed(want[0])["x"] == ("int", 1) and typed(want[4])["x"] == ("float", 5.0)  # W&B keeps them apart

    run = wandb.init(project="shape", id="native")
    for data in CALLS:
        run.log(data)
    run.finish()
    view = stack.finished("shape/native")

    # scan_history: each row's value under its key, with its own type.
    got = list(view.scan_history())
    assert [r["_step"] for r in got] == [r["_step"] for r in want]
    assert [typed(g) for g in got] == [typed(w) for w in want]

    # history(): one column per key; each row holds what was logged there (None where nothing was).
    h = view.history(samples=None, pandas=False)
    assert sorted(k for k in h if not k.startswith("_")) == ["big", "m", "n", "other", "x"]
    for i, w in enumerate(want):
        for key in ("m", "n"):
            v = h[key][i]
            if key in w:
                assert typed_cells([v]) == typed_cells([w[key]]), (i, key)
            else:
                assert v is None, (i, key)

    # pandas: as W&B's frame, DataFrame.from_records(rows): ints and floats alone make a float64 column, ints
    # among strings stay ints in an object column.
    df = view.history(samples=None)
    wdf = pd.DataFrame.from_records(want)
    for key in ("x", "big", "other"):
        assert df[key].dtype == wdf[key].dtype == np.float64, key
        np.testing.assert_array_equal(df[key].to_numpy(), wdf[key].to_numpy(), err_msg=key)
    assert df["m"].dtype == wdf["m"].dtype == object
    assert typed_cells(df["m"]) == typed_cells(wdf["m"])

    # export: JSON Lines holds W&B's rows, types included; CSV writes each cell as logged.
    out = tmp_path / "h.jsonl"
    assert export_main(["shape/native", "--out", str(out), "--data-dir", str(stack.data_dir)]) == 0
    assert [typed(json.loads(line)) for line in out.read_text().splitlines()] == [typed(w) for w in want]
    out = tmp_path / "h.csv"
    assert export_main(["shape/native", "--out", str(out), "--data-dir", str(stack.data_dir)]) == 0
    x_cells = [line.split(",")[list(h).index("x")] for line in out.read_text().splitlines()[1:]]
    assert x_cells == ["1", "2.5", "3", "-4", "5.0", "6"]

    # The kind split stays available on request.
    split = list(view.scan_history(split_kinds=True))
    assert split[1]["m:string"] == "str" and split[2]["m:bool"] is True and "m" not in split[1]
    assert set(view.history(samples=None, pandas=False, split_kinds=True)) >= {"m", "m:string", "m:bool"}
    assert {(c["key"], c["kind"]) for c in view.columns if c["key"] == "m"} == {
        ("m", "number"), ("m", "string"), ("m", "bool")}
    # The int companion is not a column of the run.
    assert {c["key"] for c in view.columns} == {"m", "n", "x", "big", "other"}


@pytest.mark.integration
def test_ints_and_floats_in_different_segments_then_compacted_equal_wandbs(tmp_path: Path) -> None:
    """Each call its own segment (int64 columns in some, float64 in others), read as they are, then merged by
    compaction into one segment (float64 columns with their int companions): the rows stay W&B's."""
    need_wandb()
    want = wandb_rows(tmp_path, "shape2")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = MetaStore(sqlite_url(data_dir))
    try:
        writer = RunWriter(store, as_store(data_dir), "r1", project="shape").start()
        for data in CALLS:
            writer.log(data).commit()
        writer.finish().commit()
        with Api(data_dir=data_dir) as api:
            assert len(store.segments_of("shape", "r1")) == len(CALLS)
            assert [typed(r) for r in api.run("shape/r1").scan_history()] == [typed(r) for r in want]
            writer.compact()
            assert len(store.segments_of("shape", "r1")) == 1
            view = api.run("shape/r1")
            assert [typed(r) for r in view.scan_history()] == [typed(r) for r in want]
            h = view.history(samples=None, pandas=False)
            assert typed_cells(h["m"]) == typed_cells(r["m"] for r in want)
            wdf = pd.DataFrame.from_records(want)
            for key in ("x", "big"):
                assert h[key].dtype == np.float64
                np.testing.assert_array_equal(h[key], wdf[key].to_numpy(), err_msg=key)
            assert not any(math.isnan(v) for v in h["x"])
    finally:
        store.close()
