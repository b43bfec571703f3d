"""``stepline export``: Parquet and CSV read back with pandas equal ``history(samples=None)``; JSON Lines holds the
same rows; the segments themselves open with pandas (and DuckDB/polars where installed)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.compat_stack import Stack

import ingest
from history.export import main

pytestmark = pytest.mark.integration


@pytest.fixture
def exported_run(stack: Stack) -> str:
    run = ingest.init(project="exp", id="r1")
    for i in range(50):
        data: dict[str, object] = {"train/loss": 1 / (i + 1), "count": i}
        if i % 5 == 0:
            data.update({"val/acc": i / 50, "phase": "eval" if i % 10 else "warmup", "ok": i % 10 == 0})
        if i == 7:
            data.update({"train/loss": float("inf"), "spike": -1e300})
        if i == 9:
            data["train/loss"] = float("nan")
        run.log(data, step=i * 2)
    run.log({"weights": [1, 2, 3], "h": ingest.Histogram([1.0, 2.0, 3.0], num_bins=4)}, step=200)
    run.finish()
    stack.finished("exp/r1")
    return "exp/r1"


def history(stack: Stack, path: str, keys: list[str] | None = None) -> pd.DataFrame:
    with stack.api() as api:
        return api.run(path).history(keys=keys, samples=None)


@pytest.mark.both_backends
def test_parquet_round_trip_equals_history(stack: Stack, exported_run: str, tmp_path: Path) -> None:
    out = tmp_path / "h.parquet"
    assert main([exported_run, "--format", "parquet", "--out", str(out), "--data-dir", str(stack.data_dir)]) == 0
    got = pd.read_parquet(out)
    want = history(stack, exported_run)
    json_cols = ["weights", "h"]
    pd.testing.assert_frame_equal(got.drop(columns=json_cols), want.drop(columns=json_cols))
    assert json.loads(got["weights"].iloc[-1]) == [1, 2, 3]
    assert json.loads(got["h"].iloc[-1])["_type"] == "histogram"
    assert got["weights"].iloc[:-1].isna().all()


@pytest.mark.both_backends
def test_parquet_with_keys_equals_history_with_keys(stack: Stack, exported_run: str, tmp_path: Path) -> None:
    out = tmp_path / "k.parquet"
    args = [exported_run, "--keys", "val/acc", "phase", "--out", str(out), "--data-dir", str(stack.data_dir)]
    assert main(args) == 0  # format from the suffix
    got = pd.read_parquet(out)
    pd.testing.assert_frame_equal(got, history(stack, exported_run, keys=["val/acc", "phase"]))
    assert len(got) == 10


def plain(col: pd.Series) -> list[object]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in col.tolist()]


@pytest.mark.both_backends
def test_csv_round_trip_equals_history(stack: Stack, exported_run: str, tmp_path: Path) -> None:
    out = tmp_path / "h.csv"
    assert main([exported_run, "--format", "csv", "--out", str(out), "--data-dir", str(stack.data_dir)]) == 0
    got = pd.read_csv(out)
    want = history(stack, exported_run)
    for col in want.columns:
        if col in ("weights", "h"):
            continue
        w, g = want[col], got[col]
        if pd.api.types.is_numeric_dtype(w) and not pd.api.types.is_bool_dtype(w):
            np.testing.assert_array_equal(g.to_numpy(), w.to_numpy(), err_msg=col)  # bit for bit, inf and NaN
            assert g.dtype == w.dtype, col
        else:  # strings and bools: missing is None or NaN depending on the reader
            assert plain(g) == plain(w), col


@pytest.mark.both_backends
def test_jsonl_holds_the_rows(stack: Stack, exported_run: str, tmp_path: Path) -> None:
    out = tmp_path / "h.jsonl"
    assert main([exported_run, "--format", "jsonl", "--out", str(out), "--data-dir", str(stack.data_dir)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    with stack.api() as api:
        scanned = list(api.run(exported_run).scan_history())
    assert [r["_step"] for r in rows] == [r["_step"] for r in scanned]
    assert rows[7]["train/loss"] == "Infinity" and "train/loss" not in rows[9]  # NaN is left out as missing
    assert rows[0]["phase"] == "warmup" and rows[0]["ok"] is True and "phase" not in rows[1]
    assert rows[-1]["weights"] == [1, 2, 3]


def test_export_of_an_unknown_run_fails(stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["exp/nope", "--out", str(tmp_path / "x.csv"), "--data-dir", str(stack.data_dir)]) == 1
    assert "no run 'nope'" in capsys.readouterr().err


def test_segments_open_directly_with_pandas(stack: Stack, exported_run: str) -> None:
    """The README's recipe: the live segment list from ``sl_segments``, then plain Parquet files."""
    db = sqlite3.connect(stack.data_dir / "meta.sqlite")
    try:
        files = [stack.data_dir / f for (f,) in db.execute(
            "SELECT file FROM sl_segments WHERE project=? AND run=? ORDER BY min_step", ("exp", "r1"))]
    finally:
        db.close()
    assert files
    df = pd.concat(map(pd.read_parquet, files), ignore_index=True)
    want = history(stack, exported_run)
    assert df["_step"].tolist() == want["_step"].tolist()
    np.testing.assert_array_equal(df["train/loss"].to_numpy(dtype=float), want["train/loss"].to_numpy(dtype=float))
