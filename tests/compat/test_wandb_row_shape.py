"""W&B's row shape: a key logged with values of several kinds (a number, then a string, then a bool, then a float)
comes back from ``history()`` and ``scan_history()`` as ONE column holding each row's value, as the real W&B SDK
writes it.

The oracle is W&B's own file: the real ``wandb`` SDK runs the calls offline in a child process, and its history
records are read back with W&B's protobuf classes and each item's ``value_json`` parsed as W&B wrote it (not
through stepline's importer). The same calls go through ``import ingest as wandb``; the rows must be equal, key
for key and value for value, with the value's kind (a number, a bool, a str; 1 may come back as 1.0 where the
key's number column also holds floats, which compares equal).
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.compat_stack import Stack
from test_wandb_import import need_wandb

import ingest as wandb
from stepline.wandb_import import read_records

CALLS: list[dict[str, Any]] = [
    {"m": 1, "n": "a"},
    {"m": "str", "n": 2},
    {"m": True},
    {"m": 2.5, "n": False},
    {"m": -3, "other": 7},
    {"m": "last", "n": 0.5},
]

SCRIPT = """
import json, sys
import wandb
calls = json.loads(open(sys.argv[1]).read())
run = wandb.init(project="shape", id=sys.argv[2])
for data in calls:
    run.log(data)
run.finish()
"""


def wandb_rows(tmp_path: Path, run_id: str) -> list[dict[str, Any]]:
    """The history rows of the calls as the real W&B SDK writes them (values without ``_``-keys)."""
    (tmp_path / "s.py").write_text(SCRIPT)
    (tmp_path / "calls.json").write_text(json.dumps(CALLS))
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
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def kind(v: Any) -> str:
    """The value's kind as W&B keeps it apart: number (int or float: a number column that holds a float anywhere
    reads as float64 everywhere, so 1 comes back as 1.0, equal), string, bool."""
    return "bool" if isinstance(v, bool) else "number" if isinstance(v, int | float) else type(v).__name__


def typed(row: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    return {k: (kind(v), v) for k, v in row.items() if not k.startswith("_")}


@pytest.mark.integration
def test_rows_of_a_key_with_several_kinds_equal_wandbs(stack: Stack, tmp_path: Path) -> None:
    need_wandb()
    want = wandb_rows(tmp_path, "shape1")
    assert [r["_step"] for r in want] == list(range(len(CALLS)))

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
    assert sorted(k for k in h if not k.startswith("_")) == ["m", "n", "other"]
    for i, w in enumerate(want):
        for key in ("m", "n"):
            v = h[key][i]
            if key in w:
                assert (kind(v), v) == (kind(w[key]), w[key]), (i, key)
            else:
                assert v is None, (i, key)
    df = view.history(samples=None)  # pandas: the same values in one object column
    assert [kind(v) for v in df["m"]] == [kind(w["m"]) for w in want]
    assert list(df["m"]) == [w["m"] for w in want]

    # The kind split stays available on request.
    split = list(view.scan_history(split_kinds=True))
    assert split[1]["m:string"] == "str" and split[2]["m:bool"] is True and "m" not in split[1]
    assert set(view.history(samples=None, pandas=False, split_kinds=True)) >= {"m", "m:string", "m:bool"}
    assert {(c["key"], c["kind"]) for c in view.columns if c["key"] == "m"} == {
        ("m", "number"), ("m", "string"), ("m", "bool")}
