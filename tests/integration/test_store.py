"""The history store end to end: workers write (aligner → Parquet segments → fenced SQL commit), ``history.query``
reads back. Every test runs against SQLite (in the test's data directory) and PostgreSQL (a fresh database per
test, dropped after; skipped without a server), each with segments in the data directory and in a bucket of the
moto S3 server (``storage``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from support.pg import fresh_database
from support.run_writer import PROJECT, RunWriter
from support.s3 import Storage

from history import Api, QueryError, RunNotFound, format_history
from schemas import Config, DefineMetric, FencedError, Histogram, Media, SteplineError
from schemas.objects import ObjectStore
from schemas.store import segments as segments_table
from workers.metastore import MetaStore, SegmentRef, sqlite_url
from workers.segments import merge_tables, read_table, write_table

pytestmark = pytest.mark.both_backends  # every test: the data directory and a bucket (objects -> storage)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(data_dir)
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[MetaStore]:
    s = MetaStore(db_url)
    yield s
    s.close()


@pytest.fixture
def objects(storage: Storage) -> ObjectStore:
    """Segments go to the data directory or to a bucket on the moto server (the ``storage`` parameter)."""
    return storage.objects


@pytest.fixture
def api(db_url: str, data_dir: Path, objects: ObjectStore) -> Iterator[Api]:
    with Api(data_dir=data_dir, db_url=db_url, objects=objects) as a:
        yield a


def writer(store: MetaStore, objects: ObjectStore, run: str = "r1", partition: int = 0) -> RunWriter:
    return RunWriter(store, objects, run, partition)


# --- runs, metadata ---------------------------------------------------------------------------------------------


def test_unknown_run_and_bad_paths(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    with pytest.raises(RunNotFound) as e:
        api.run("proj/nope")
    assert isinstance(e.value, LookupError)
    assert isinstance(e.value, SteplineError)
    for bad in ("nope", "a/b/c/d", "proj/"):
        with pytest.raises(QueryError):
            api.run(bad)
    assert api.runs(PROJECT) == []


def test_api_before_any_worker_ran(tmp_path: Path) -> None:
    """A fresh data directory: no runs, and the reader does not create the database file."""
    with Api(data_dir=tmp_path) as api:
        assert api.runs(PROJECT) == []
        with pytest.raises(RunNotFound):
            api.run("proj/r1")
    assert not (tmp_path / "meta.sqlite").exists()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEPLINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("STEPLINE_DB_URL", "postgresql://u@h/db")
    from history.query import QuerySettings

    s = QuerySettings.from_env()
    assert s.data_dir == tmp_path
    assert s.db_url == "postgresql+psycopg://u@h/db"
    monkeypatch.delenv("STEPLINE_DB_URL")
    assert QuerySettings.from_env().db_url == f"sqlite:///{tmp_path / 'meta.sqlite'}"


def test_metadata_read_back(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    w = writer(store, objects).start(lr=0.1, arch={"depth": 4})
    w.aligner.apply(Config(data={"seed": 7}))
    w.aligner.apply(DefineMetric(name="val/*", summary="min,max"))
    w.log({"val/loss": 3.0, "train/loss": 1.0}).log({"val/loss": 1.0, "train/loss": 0.5})
    w.log({"x": 1}, step=10).log({"x": 2}, step=5)  # step 5 < cursor 10: rejected whole
    w.log({"Loss": 1.0}).log({"loss": 2.0})  # case-only collision: one column, a warning
    w.commit()
    w2 = writer(store, objects, "r2", partition=1)
    w2.ts = 5000.0  # created later than r1
    w2.start().log({"a": 1}).finish(exit_code=1).commit()

    run = api.run("proj/r1")
    assert api.run("some-entity/proj/r1").id == "r1"
    assert (run.project, run.id, run.name, run.state) == (PROJECT, "r1", "name-r1", "running")
    assert run.config == {"lr": 0.1, "arch": {"depth": 4}, "seed": 7}
    assert run.summary["val/loss"] == {"min": 1.0, "max": 3.0}
    assert run.summary["train/loss"] == 0.5
    assert run.summary["Loss"] == 2.0
    assert any("differs from 'Loss' only by case" in m for m in run.warnings)
    assert run.rejected == {"non_monotonic_step": 1}
    [rej] = run.rejections()
    assert (rej["reason"], rej["step"], rej["cursor"], rej["entry_id"]) == ("non_monotonic_step", 5, 10, "1-0")
    assert "lower than" in rej["message"]
    assert rej["ts"] is not None
    assert run.metrics[0]["name"] == "val/*"
    assert run.metrics[0]["summary"] == "min,max"
    assert run.rows == 4
    assert run.last_step == 11
    assert {c["key"] for c in run.columns} == {"val/loss", "train/loss", "x", "Loss"}
    assert run.sections() == {"": ["Loss", "x"], "train": ["train/loss"], "val": ["val/loss"]}

    assert [r.id for r in api.runs(PROJECT)] == ["r2", "r1"]  # newest first
    assert [r.id for r in api.runs(PROJECT, state="crashed")] == ["r2"]
    assert [r.id for r in api.runs(PROJECT, state=["running", "finished"])] == ["r1"]
    assert api.run("proj/r2").exit_code == 1


# --- fencing and compaction -------------------------------------------------------------------------------------


def test_stale_epoch_commit_writes_nothing(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    zombie = writer(store, objects).start().log({"a": 1}).commit()
    taker_epoch, offset = store.take_partition(0, "taker")
    assert taker_epoch == zombie.epoch + 1
    assert offset == "1-0"
    zombie.log({"a": 2}).log({"a": 3}, step=0)  # a row and a rejection the zombie must not get in
    c = zombie.prepare()
    with pytest.raises(FencedError):
        store.commit(c)
    run = api.run("proj/r1")
    assert run.rows == 1
    assert run.rejections() == []
    assert run.history(samples=None, pandas=False)["a"].tolist() == [1]
    assert len(store.segments_of(PROJECT, "r1")) == 1
    assert store.partitions()[0]["offset"] == "1-0"


def test_compaction_keeps_history_and_old_files_until_gc(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    w = writer(store, objects).start()
    for i in range(5):
        w.log({"a": i, "b": f"s{i}"}).log({"a": i + 0.5}).commit()
    before = api.run("proj/r1").history(samples=None, pandas=False)
    old = store.segments_of(PROJECT, "r1")
    assert len(old) == 5
    merged = merge_tables([read_table(objects, s["file"]) for s in old])
    rel, size = write_table(objects, PROJECT, "r1", merged, level=1)
    store.swap_segments(0, w.epoch, [s["id"] for s in old],
                        SegmentRef(PROJECT, "r1", 1, old[0]["min_step"], old[-1]["max_step"], merged.num_rows,
                                   size, rel))
    [new] = store.segments_of(PROJECT, "r1")
    assert new["level"] == 1
    after = api.run("proj/r1").history(samples=None, pandas=False)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    # A reader that listed the old segments still finds their files within the grace period.
    assert all(objects.exists(s["file"]) for s in old)
    assert store.collect_garbage(objects, grace_s=3600) == 0
    assert store.collect_garbage(objects, grace_s=-1) == 5
    assert not any(objects.exists(s["file"]) for s in old)
    assert objects.exists(rel)
    # A compaction by a fenced worker is refused.
    store.take_partition(0, "other")
    with pytest.raises(FencedError):
        store.swap_segments(0, w.epoch, [new["id"]], SegmentRef(PROJECT, "r1", 2, 0, 9, 10, size, "x.parquet"))


def test_scan_survives_compaction_and_gc_midway(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    """A scan paused past the grace period lists the segments again and resumes after the last row it gave."""
    w = writer(store, objects).start()
    for i in range(4):
        for j in range(5):
            w.log({"a": i * 5 + j})
        w.commit()
    it = api.run("proj/r1").scan_history(page_size=2)
    first = [next(it) for _ in range(3)]
    old = store.segments_of(PROJECT, "r1")
    merged = merge_tables([read_table(objects, s["file"]) for s in old])
    rel, size = write_table(objects, PROJECT, "r1", merged, level=1)
    store.swap_segments(0, w.epoch, [s["id"] for s in old], SegmentRef(PROJECT, "r1", 1, 0, 19, 20, size, rel))
    store.collect_garbage(objects, grace_s=-1)
    rest = list(it)
    assert [r["a"] for r in first + rest] == list(range(20))


# --- history and scan semantics ---------------------------------------------------------------------------------


def _three_segment_run(store: MetaStore, objects: ObjectStore) -> RunWriter:
    w = writer(store, objects).start()
    for s in range(0, 30):
        d: dict[str, Any] = {"loss": float(s)}
        if s % 3 == 0:
            d["acc"] = s  # int
        if s % 5 == 0:
            d["val/loss"] = s / 10
        w.log(d, step=s * 2)
        if s in (9, 19):
            w.commit()
    return w.finish().commit()


def test_history_and_scan_filters(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    _three_segment_run(store, objects)
    run = api.run("proj/r1")
    assert len(store.segments_of(PROJECT, "r1")) == 3
    full = run.history(samples=None, pandas=False)
    assert list(full)[:3] == ["_step", "_timestamp", "_runtime"]
    assert full["_step"].tolist() == [s * 2 for s in range(30)]
    assert full["_step"].dtype == np.int64
    assert full["loss"].dtype == np.float64
    assert np.isnan(full["acc"][1])
    assert full["acc"][3] == 3
    assert full["_runtime"][0] == pytest.approx(full["_timestamp"][0] - 1000.0)

    h = run.history(keys=["acc", "val/loss"], samples=None, pandas=False)
    assert list(h) == ["_step", "acc", "val/loss"]
    assert h["_step"].tolist() == [0, 30]  # rows holding ALL keys
    assert h["acc"].dtype == np.int64  # no gaps left: stays int
    h = run.history(keys=["acc"], samples=None, min_step=6, max_step=30, pandas=False)
    assert h["_step"].tolist() == [6, 12, 18, 24]  # min inclusive, max exclusive
    assert run.history(keys=["nope"], samples=None, pandas=False)["_step"].tolist() == []

    rows = list(run.scan_history(keys=["acc"], page_size=3, min_step=6, max_step=30))
    assert [r["_step"] for r in rows] == [6, 12, 18, 24]
    assert set(rows[0]) == {"_step", "_timestamp", "_runtime", "acc"}
    assert rows[0]["acc"] == 3
    assert type(rows[0]["acc"]) is int
    rows = list(run.scan_history())
    assert len(rows) == 30
    assert "acc" not in rows[1]
    assert rows[1]["loss"] == 1.0
    assert list(run.scan_history(min_step=58)) == [rows[-1]]
    assert list(run.scan_history(max_step=0)) == []
    assert [r["_step"] for r in run.scan_history(keys=["val/loss"], min_step=19, max_step=41)] == [20, 30, 40]
    assert list(run.scan_history(keys=["acc", "nope"])) == []

    df = run.history(keys=["loss"], samples=None)
    assert list(df.columns) == ["_step", "loss"]
    assert len(df) == 30


def test_history_samples_deterministic(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    w = writer(store, objects).start()
    for s in range(1000):
        w.log({"y": math.sin(s / 10)})
    w.commit()
    run = api.run("proj/r1")
    a = run.history(samples=100, pandas=False)
    b = run.history(samples=100, pandas=False)
    full = run.history(samples=None, pandas=False)
    full["y"][:] = 0.0  # the caller owns the arrays: writing them must not reach the next read
    assert run.history(samples=None, pandas=False)["y"][1] == math.sin(0.1)
    assert len(a["_step"]) == 100
    assert a["_step"][0] == 0
    assert a["_step"][-1] == 999
    np.testing.assert_array_equal(a["_step"], b["_step"])
    assert len(run.history(samples=5000, pandas=False)["_step"]) == 1000


def test_int_and_float_segments_promote(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    w = writer(store, objects).start()
    w.log({"m": 1}).log({"m": 2}).commit()  # int64 segment
    w.log({"m": 2.5}).commit()  # float64 segment
    w.log({"m": 4}).commit()  # int64 again
    run = api.run("proj/r1")
    h = run.history(samples=None, pandas=False)
    assert h["m"].dtype == np.float64
    assert h["m"].tolist() == [1.0, 2.0, 2.5, 4.0]
    # Rows hold each value as logged (W&B's rows), whatever the column holds in other segments; also once merged.
    assert [(type(r["m"]), r["m"]) for r in run.scan_history()] == [(int, 1), (int, 2), (float, 2.5), (int, 4)]
    w.compact()
    assert [(type(r["m"]), r["m"]) for r in run.scan_history()] == [(int, 1), (int, 2), (float, 2.5), (int, 4)]
    assert run.history(samples=None, pandas=False)["m"].tolist() == [1.0, 2.0, 2.5, 4.0]


def test_two_kinds_case_insensitive_and_media(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    hist = Histogram([1, 2, 2, 3], num_bins=3).to_media()
    w = writer(store, objects).start()
    w.log({"Acc": 0.5, "h": hist, "arr": [1, 2, 3], "flag": True})
    w.log({"acc": "high", "ARR": np.arange(3, dtype=np.int32)})
    w.log({"ACC": 0.75})
    w.commit()
    run = api.run("proj/r1")
    assert run.conflicts == ["Acc"]
    h = run.history(keys=["acc"], samples=None, pandas=False)  # any spelling, both kinds, W&B's one column
    assert list(h) == ["_step", "Acc"]
    assert h["Acc"].tolist() == [0.5, "high", 0.75]
    split = run.history(keys=["acc"], samples=None, pandas=False, split_kinds=True)
    assert list(split) == ["_step", "Acc", "Acc:string"]
    assert np.isnan(split["Acc"][1])
    assert split["Acc"][2] == 0.75
    assert split["Acc:string"].tolist() == [None, "high", None]
    one = run.history(keys=["ACC:STRING"], samples=None, pandas=False)  # a field name: that kind alone
    assert one["_step"].tolist() == [1] and one["Acc:string"].tolist() == ["high"]

    rows = list(run.scan_history())
    assert rows[0]["h"] == hist
    assert isinstance(rows[0]["h"], Media)
    assert rows[0]["arr"] == [1, 2, 3]
    assert rows[0]["flag"] is True
    np.testing.assert_array_equal(rows[1]["arr"], np.arange(3, dtype=np.int32))
    assert rows[1]["Acc"] == "high" and [r["Acc"] for r in rows] == [0.5, "high", 0.75]
    split_rows = list(run.scan_history(split_kinds=True))
    assert split_rows[1]["Acc:string"] == "high"
    assert "Acc" not in split_rows[1]
    full = run.history(samples=None, pandas=False)
    assert full["h"][0] == hist
    assert full["h"][1] is None
    assert full["flag"].tolist() == [True, None, None]

    out = format_history(full, "json")
    assert '"_type": "histogram"' in out
    assert format_history(full, "csv").splitlines()[0].count("Acc") == 1
    assert "Acc:string" in format_history(run.history(samples=None, pandas=False, split_kinds=True), "csv")
    assert "high" in format_history(full, "table")


def test_sampled_reads(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    w = writer(store, objects).start()
    for s in range(5000):
        y = 100.0 if s == 2345 else (math.nan if s == 17 else math.sin(s / 50))
        w.log({"y": y, "epoch": s // 1000, "t": s * 0.5})
        if s % 1500 == 0:
            w.commit()
    w.commit()
    run = api.run("proj/r1")
    a = run.sampled("Y", buckets=100)
    b = run.sampled("y", buckets=100)
    for k in ("x", "y", "step", "bucket_min", "bucket_max"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["sampled"]
    assert a["count"] == 5000
    assert len(a["x"]) <= 4 * 100 + 2
    assert 100.0 in a["y"].tolist()
    assert a["x"][0] == 0
    assert a["x"][-1] == 4999
    assert np.all(np.diff(a["x"]) > 0)
    assert a["bucket_max"].max() == 100.0
    raw = run.sampled("y", buckets=100, x_min=10, x_max=60)
    assert not raw["sampled"]
    assert raw["x"].tolist() == list(range(10, 61))
    assert math.isnan(raw["y"][7])
    t = run.sampled("y", x_axis="t", buckets=10, x_min=100.0, x_max=200.0)
    assert t["x"][0] == 100.0
    assert t["x"][-1] == 200.0
    assert t["step"][0] == 200
    assert run.sampled("nope")["count"] == 0
    with pytest.raises(QueryError):
        run.sampled("y", x_axis="nope")


def test_reads_use_one_snapshot_of_segments(api: Api, store: MetaStore, objects: ObjectStore) -> None:
    """Segments referenced in SQL are exactly the files read; stray files under the run's directory are ignored."""
    w = writer(store, objects).start().log({"a": 1}).commit()
    c = w.log({"a": 2}).prepare()  # written but never committed (a worker that died before its commit)
    assert c.segments
    run = api.run("proj/r1")
    assert run.history(samples=None, pandas=False)["a"].tolist() == [1]
    with store.engine.connect() as conn:
        assert len(conn.execute(select(segments_table)).all()) == 1
