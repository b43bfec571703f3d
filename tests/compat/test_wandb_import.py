"""W&B offline runs imported through the pipeline equal what W&B wrote; the same calls logged through stepline give
the same rows, and the calls W&B dropped are stepline's rejections.

The ``.wandb`` files are written by the real ``wandb`` SDK (``WANDB_MODE=offline``, everything under tmp, no
network) in a child process, from one scripted list of log calls that the test also replays through
``import ingest as wandb``. Tests needing ``wandb`` skip without it (``pip install 'stepline[wandb]'``), except
under ``CI=true`` where they fail. The reader of the file format is also tested on synthetic files, without wandb.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from support.compat_stack import Stack

import ingest as wandb
from schemas import Media
from stepline.wandb_import import BLOCK_SIZE, HEADER, WandbFormatError, WandbRun, main, parse_file, read_records

IN_CI = os.environ.get("CI", "").lower() == "true"
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def need_wandb() -> None:
    if HAS_WANDB:
        return
    if IN_CI:
        pytest.fail("required in CI: the wandb package (pip install 'stepline[wandb]')")
    pytest.skip("the wandb package is not installed (pip install 'stepline[wandb]')")


# --- the LevelDB log format, on synthetic files -----------------------------------------------------------------


def write_log(records: list[bytes]) -> bytes:
    """LevelDB's log writer, as W&B's datastore uses it after its 7-byte header."""
    out = bytearray(HEADER)
    for rec in records:
        first, left = True, rec
        while True:
            room = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if room < 7:
                out += b"\0" * room
                continue
            chunk, left = left[: room - 7], left[room - 7:]
            kind = (1 if first else 4) if not left else (2 if first else 3)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + chunk), len(chunk), kind) + chunk
            first = False
            if not left:
                break
    return bytes(out)


def test_reader_spans_blocks_pads_tails_and_tolerates_a_cut_last_block(tmp_path: Path) -> None:
    records = [bytes([i % 251]) * n for i, n in enumerate([10, 32_740, 70_000, 5, 0, 1234, 40_000])]
    data = write_log(records)
    p = tmp_path / "run-x.wandb"
    p.write_bytes(data)
    reader = read_records(p)
    assert list(reader) == records and not reader.truncated
    for cut in (len(data) - 1, len(data) - 20_000, len(data) - 39_990, BLOCK_SIZE * 3 + 3):
        p.write_bytes(data[:cut])
        reader = read_records(p)
        got = list(reader)
        assert reader.truncated and got == records[: len(got)], cut
    bad = bytearray(data)
    bad[100] ^= 0xFF  # inside the first block: corruption, not a cut
    p.write_bytes(bytes(bad))
    with pytest.raises(WandbFormatError, match="checksum"):
        list(read_records(p))
    p.write_bytes(b"PK\x03\x04 not a datastore")
    with pytest.raises(WandbFormatError, match="header"):
        list(read_records(p))


# --- real W&B offline runs ---------------------------------------------------------------------------------------

# (data, step, commit): W&B's semantics decide which rows they make; "__hist__" marks a Histogram of the list.
CALLS: list[tuple[dict[str, Any], int | None, bool | None]] = [
    ({"train/loss": 1.0, "train/acc": 0.1}, None, None),
    ({"train/loss": 0.5}, None, None),
    ({"a": 1}, None, False),
    ({"b": 2.5, "nan": float("nan")}, None, None),
    ({"x": 1.25}, 10, None),
    ({"y": 2.0}, 10, None),
    ({"dropped": 3.0}, 7, None),  # W&B: "Tried to log to step 7 that is less than the current step 10"
    ({"s": "str", "flag": True, "nested": {"q": 0.25}, "lst": [1, 2, 3]}, 12, None),
    ({"h": {"__hist__": [1.0, 2.0, 2.0, 3.5]}}, 13, True),
    ({"dropped_too": 1.0}, 13, None),  # commit=True moved the step past 13
    ({"epoch": 1, "val/loss": 0.75}, 14, None),
    *[({"train/loss": 1 / (i + 2), "i": i}, 20 + i, None) for i in range(300)],  # > 2 blocks of file
]
DROPPED = [(7, 10), (13, 14)]  # (step tried, cursor) of the calls W&B drops

WANDB_SCRIPT = """
import json, sys
import wandb

calls = json.loads(open(sys.argv[1]).read(), parse_constant=float)

def value(v):
    if isinstance(v, dict):
        return wandb.Histogram(v["__hist__"]) if "__hist__" in v else {k: value(x) for k, x in v.items()}
    return v

run = wandb.init(project="wb", id=sys.argv[2], name="imported run", config={"lr": 0.001, "arch": {"depth": 4}})
run.define_metric("val/*", step_metric="epoch")
for data, step, commit in calls:
    run.log({k: value(v) for k, v in data.items()}, step=step, commit=commit)
run.summary["best"] = 0.9
run.finish()
"""


def wandb_offline_run(tmp_path: Path, run_id: str) -> Path:
    """Run the scripted calls through the real wandb SDK, offline; return the run's .wandb file."""
    script = tmp_path / "wb_script.py"
    script.write_text(WANDB_SCRIPT)
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps(CALLS))
    wdir = tmp_path / "wandb-home"
    wdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "STEPLINE_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(wdir), WANDB_CONFIG_DIR=str(wdir / "config"),
               WANDB_CACHE_DIR=str(wdir / "cache"), WANDB_DATA_DIR=str(wdir / "data"), WANDB_SILENT="true",
               WANDB_CONSOLE="off", WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true")
    proc = subprocess.run([sys.executable, str(script), str(calls), run_id], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = glob.glob(str(wdir / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    return Path(path)


def native_value(v: Any) -> Any:
    if isinstance(v, dict):
        return wandb.Histogram(v["__hist__"]) if "__hist__" in v else {k: native_value(x) for k, x in v.items()}
    return v


def same(a: Any, b: Any) -> bool:
    if isinstance(a, Media) and isinstance(b, Media):
        return a.kind == b.kind and all(
            [float(x) for x in a.payload[f]] == pytest.approx([float(x) for x in b.payload[f]])
            for f in ("values", "bins"))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return list(a) == list(b)
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


def values_of(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def assert_rows_equal(got: list[dict[str, Any]], want: list[dict[str, Any]], timestamps: bool) -> None:
    assert [g["_step"] for g in got] == [w["_step"] for w in want]
    for g, w in zip(got, want, strict=True):
        gv, wv = values_of(g), values_of(w)
        assert gv.keys() == wv.keys(), (g["_step"], gv.keys(), wv.keys())
        assert all(same(gv[k], wv[k]) for k in gv), (g["_step"], gv, wv)
        if timestamps:
            assert g["_timestamp"] == w["_timestamp"]


@pytest.mark.integration
def test_wandb_offline_run_imports_as_written_and_matches_stepline_semantics(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    need_wandb()
    path = wandb_offline_run(tmp_path, "wbrun1")
    written: WandbRun = parse_file(path)
    assert not written.truncated and written.exit_code == 0 and not written.skipped
    assert [r["_step"] for r in written.rows][:7] == [0, 1, 2, 10, 12, 13, 14]
    assert not any("dropped" in k for r in written.rows for k in r)  # W&B did drop them

    # Import through Redis and the worker: rows are W&B's, bit for bit, steps and timestamps included.
    assert main([str(path.parent.parent)]) == 0
    assert len(written.rows) == 307
    assert "wb/wbrun1 307 rows" in capsys.readouterr().out
    view = stack.finished("wb/wbrun1")
    assert view.name == "imported run" and view.state == "finished" and view.exit_code == 0
    imported = list(view.scan_history(page_size=100))
    assert_rows_equal(imported, written.rows, timestamps=True)
    assert view.rejections() == []
    assert view.config == {"lr": 0.001, "arch": {"depth": 4}}
    assert view.summary["best"] == 0.9
    assert view.summary["train/loss"] == 1 / 301
    assert {m["name"]: m["step_metric"] for m in view.metrics} == {"val/*": "epoch"}

    # Importing again changes nothing: same producer, same sequence numbers, skipped by the workers.
    segments_before = sorted(p.name for p in stack.data_dir.rglob("*.parquet"))
    assert main([str(path)]) == 0
    stack.drained()
    again = stack.finished("wb/wbrun1")
    assert again.rows == view.rows == len(written.rows)
    assert_rows_equal(list(again.scan_history(page_size=100)), imported, timestamps=True)
    assert again.rejections() == [] and again.warnings == view.warnings
    assert sorted(p.name for p in stack.data_dir.rglob("*.parquet")) == segments_before

    # The same calls through stepline's SDK: the same rows, and W&B's dropped calls are recorded rejections.
    run = wandb.init(project="wb", id="native", config={"lr": 0.001})
    run.define_metric("val/*", step_metric="epoch")
    for data, step, commit in CALLS:
        run.log({k: native_value(v) for k, v in data.items()}, step=step, commit=commit)
    run.finish()
    native = stack.finished("wb/native")
    assert_rows_equal(list(native.scan_history(page_size=100)), written.rows, timestamps=False)
    assert [(r["reason"], r["step"], r["cursor"]) for r in native.rejections()] == [
        ("non_monotonic_step", s, c) for s, c in DROPPED
    ]


@pytest.mark.integration
def test_truncated_wandb_file_imports_its_prefix(stack: Stack, tmp_path: Path) -> None:
    need_wandb()
    path = wandb_offline_run(tmp_path, "wbcut")
    full = parse_file(path)
    data = path.read_bytes()
    cut = tmp_path / "cut" / "offline-run-x-wbcut" / "run-wbcut.wandb"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(data[: BLOCK_SIZE + 5000])  # a run killed mid-write, in its second block
    part = parse_file(cut)
    assert part.truncated and part.exit_code is None
    assert 0 < len(part.rows) < len(full.rows)
    assert_rows_equal(part.rows, full.rows[: len(part.rows)], timestamps=True)
    assert main([str(cut), "--project", "cutproj"]) == 0
    stack.drained()
    with stack.api() as api:
        view = api.run("cutproj/wbcut")
        assert view.state == "running"  # no exit record in the file
        assert_rows_equal(list(view.scan_history()), part.rows, timestamps=True)


def test_import_without_a_file_or_with_a_foreign_file_fails_clearly(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    need_wandb()
    assert main([str(tmp_path)]) == 1
    assert "no run-*.wandb files" in capsys.readouterr().err
    bad = tmp_path / "run-bad.wandb"
    bad.write_bytes(b"not a wandb file at all")
    assert main([str(bad), "--dry-run"]) == 1
    assert "header" in capsys.readouterr().err
