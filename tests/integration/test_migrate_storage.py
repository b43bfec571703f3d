"""``stepline migrate-storage``: a data directory's segments and media copied to a bucket (moto's S3 server) and back,
resumable, with a dry run; history read from the destination equals history read from the source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from support.s3 import MotoServer

from history.query import Api
from schemas.objects import local_store
from schemas.store import RUNTIME, STEP, TIMESTAMP, blob_path, column_info
from stepline.migrate import main
from workers.metastore import Commit, MetaStore, RunUpdate, SegmentRef, sqlite_url
from workers.segments import write_table


def _history(data_dir: Path) -> None:
    """A run of three segments and a media blob, committed into ``data_dir`` as a worker would."""
    data_dir.mkdir()
    store = MetaStore(sqlite_url(data_dir))
    objects = local_store(data_dir)
    epoch, _ = store.take_partition(0, "test")
    c = Commit(partition=0, epoch=epoch, offset="1-0")
    for a in (0, 100, 200):
        steps = np.arange(a, a + 100, dtype=np.int64)
        table = pa.Table.from_arrays(
            [pa.array(steps), pa.array(steps * 0.5), pa.array(steps * 0.5), pa.array(np.sqrt(steps))],
            schema=pa.schema(
                [
                    pa.field(STEP, pa.int64()),
                    pa.field(TIMESTAMP, pa.float64()),
                    pa.field(RUNTIME, pa.float64()),
                    pa.field("loss", pa.float64(), metadata={"key": "loss", "kind": "number"}),
                ]
            ),
        )
        rel, size = write_table(objects, "mig", "r1", table, level=0)
        c.segments.append(SegmentRef("mig", "r1", 0, a, a + 99, 100, size, rel))
    info = {
        "config": {},
        "summary": {},
        "columns": [column_info("loss", "number")],
        "conflicts": [],
        "warnings": [],
        "rejected": {},
        "metrics": [],
        "start_ts": 0.0,
        "exit_code": 0,
        "cursor": 300,
    }
    c.runs.append(RunUpdate("mig", "r1", 0, "r1", "finished", 0.0, 0.0, 299, 300, 0, info, b""))
    store.commit(c)
    store.close()
    objects.put(blob_path("ab" * 32), b"\x89PNG fake image")


def test_migrate_to_a_bucket_and_back(
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("STEPLINE_STORAGE_URL", raising=False)
    data = tmp_path / "data"
    _history(data)
    url = f"s3://{s3_bucket}/moved"
    with Api(data_dir=data) as api:
        want = api.run("mig/r1").history(samples=None, pandas=False)
    assert len(want["loss"]) == 300

    assert main(["--to", url, "--data-dir", str(data), "--dry-run"]) == 0
    assert "would copy 4 objects" in capsys.readouterr().err
    with Api(data_dir=data, storage_url=url) as api:
        assert not api.objects.list("")  # the dry run wrote nothing

    assert main(["--to", url, "--data-dir", str(data)]) == 0
    assert "copying 4 objects" in capsys.readouterr().err
    with Api(data_dir=data, storage_url=url) as api:
        got = api.run("mig/r1").history(samples=None, pandas=False)
        assert api.objects.get(blob_path("ab" * 32)) == b"\x89PNG fake image"
    assert all(np.array_equal(got[k], want[k]) for k in want) and got.keys() == want.keys()

    assert main(["--to", url, "--data-dir", str(data)]) == 0  # resumable: nothing left to copy
    err = capsys.readouterr().err
    assert "copying 0 objects" in err and "4 already there" in err

    back = tmp_path / "back"
    assert main(["--from", url, "--to", f"file://{back}", "--data-dir", str(data)]) == 0
    assert sorted(r for r, _s, _m in local_store(back).list("")) == sorted(
        r
        for r, _s, _m in local_store(data).list("")
        if not r.endswith("meta.sqlite") and r.startswith(("segments/", "blobs/"))
    )

    capsys.readouterr()
    assert main(["--to", f"file://{data.absolute()}", "--data-dir", str(data)]) == 1
    (line,) = capsys.readouterr().err.splitlines()  # one line, no traceback
    assert line.startswith("stepline migrate-storage: error: the source and the destination")
