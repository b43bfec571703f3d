"""Workers with PostgreSQL metadata (the several-hosts backend): two worker processes, SDK in, Api out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.pg import fresh_database
from support.s3 import Storage
from support.worker_harness import WorkerFleet

import ingest
from history.query import Api

pytestmark = pytest.mark.integration


def test_workers_on_postgres(redis_url: str, namespace: str, data_dir: Path, tmp_path: Path, storage: Storage) -> None:
    """On both storage backends: the ``storage`` fixture points the worker processes and ``Api`` at a bucket through
    ``STEPLINE_STORAGE_URL`` for its ``s3`` case."""
    with fresh_database() as db_url:
        fleet = WorkerFleet(redis_url=redis_url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "logs",
                            db_url=db_url)
        try:
            fleet.start()
            fleet.start()
            for i in range(6):
                run = ingest.init(project="pg", id=f"r{i}", redis_url=redis_url, namespace=namespace,
                                  data_dir=str(data_dir))
                for s in range(500):
                    run.log({"loss": 1.0 / (s + 1), "i": s, "tag": "x"}, step=s)
                run.log({"loss": 9.0}, step=3)  # rejected
                assert run.finish(timeout=30).ok
            with Api(data_dir=data_dir, db_url=db_url) as api:
                deadline = time.monotonic() + 60
                while not (len(api.runs("pg")) == 6 and all(r.rows == 500 for r in api.runs("pg"))):
                    assert time.monotonic() < deadline, fleet.logs()
                    time.sleep(0.1)
                for r in api.runs("pg"):
                    h = r.history(samples=None, pandas=False)
                    assert h["_step"].tolist() == list(range(500))
                    assert h["i"].tolist() == list(range(500))
                    assert r.rejected == {"non_monotonic_step": 1}
                    assert [x["step"] for x in r.rejections()] == [3]
            assert not (data_dir / "meta.sqlite").exists()  # everything went to PostgreSQL
            if storage.kind == "s3":  # and the segments to the bucket
                assert storage.objects.list("segments") and not (data_dir / "segments").exists()
        finally:
            fleet.close()
