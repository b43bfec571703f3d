"""The storage location (schemas/objects.py): URL parsing and settings, and one contract for both backends (the
data directory, and a bucket of the moto S3 server the tests start)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.s3 import Storage

from schemas import SettingsError
from schemas.objects import parse_storage_url
from workers.settings import WorkerSettings


def test_parse_local_file_and_s3() -> None:
    t = parse_storage_url(None, Path("d"))
    assert t.local_dir == Path("d").absolute() and t.url == "local"
    assert parse_storage_url("file:///srv/hist", Path("d")).local_dir == Path("/srv/hist")
    s = parse_storage_url("s3://bkt/a/b?endpoint=http://minio:9000&region=eu-west-1", Path("d"), environ={})
    assert (s.bucket, s.prefix, s.endpoint, s.region, s.local_dir) == (
        "bkt",
        "a/b",
        "http://minio:9000",
        "eu-west-1",
        None,
    )
    env = {"AWS_ENDPOINT_URL": "https://r2.example", "AWS_REGION": "auto"}
    s = parse_storage_url("s3://bkt", Path("d"), environ=env)
    assert (s.prefix, s.endpoint, s.region) == ("", "https://r2.example", "auto")
    # a flag wins over the variables
    s = parse_storage_url("s3://bkt", Path("d"), endpoint="http://127.0.0.1:9", environ=env)
    assert s.endpoint == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://x/y", "scheme"),
        ("s3://", "bucket"),
        ("s3://user:pw@bkt/p", "credentials never go in the URL"),
        ("s3://bkt/a/../b", "'..'"),
        ("s3://bkt/p?secret=1", "unknown parameter"),
        ("file://host/p", "file:///"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="storage URL") as e:
        parse_storage_url(url, Path("d"), environ={})
    assert why in str(e.value)
    with pytest.raises(SettingsError) as se:
        WorkerSettings.from_env(env={"STEPLINE_STORAGE_URL": url})
    assert why in str(se.value)


def test_settings_take_the_variable_and_flags() -> None:
    s = WorkerSettings.from_env(env={"STEPLINE_STORAGE_URL": "s3://b/p"}, s3_region="eu-central-1")
    assert s.storage.bucket == "b" and s.storage.region == "eu-central-1"
    assert WorkerSettings.from_env(env={}).storage.local_dir is not None


def test_the_store_contract_on_both_backends(storage: Storage) -> None:
    o = storage.objects
    assert not o.exists("blobs/ab/x") and o.list("segments") == []
    with pytest.raises(FileNotFoundError):
        o.get("blobs/ab/x")
    with pytest.raises(FileNotFoundError):
        o.parquet("segments/none.parquet")
    assert o.put("blobs/ab/x", b"hello") == 5
    assert o.exists("blobs/ab/x") and o.get("blobs/ab/x") == b"hello"
    assert b"".join(o.chunks("blobs/ab/x", size=2)) == b"hello"
    table = pa.table(
        {
            "_step": pa.array(range(1000), pa.int64()),
            "a": [float(i) for i in range(1000)],
            "b": [str(i) for i in range(1000)],
        }
    )
    size = o.put_parquet("segments/aa/bb/L0-1.parquet", table, compression="zstd")
    pf = o.parquet("segments/aa/bb/L0-1.parquet")
    assert pf.metadata.num_rows == 1000
    assert pf.read(columns=["a"]).column("a").to_pylist() == table.column("a").to_pylist()
    again = o.parquet("segments/aa/bb/L0-1.parquet", metadata=pf.metadata)  # a cached footer: not fetched again
    assert again.read(columns=["b"]).column("b").to_pylist()[-1] == "999"
    f = o.open("segments/aa/bb/L0-1.parquet")
    assert f.size() == size and f.read_at(4, 0) == b"PAR1"
    f.close()
    listed = {rel: n for rel, n, _mtime in o.list("segments")}
    assert listed == {"segments/aa/bb/L0-1.parquet": size}  # complete objects only: no temporary names left
    assert pq.read_table(o.open("segments/aa/bb/L0-1.parquet")).num_rows == 1000
    o.delete("segments/aa/bb/L0-1.parquet")
    o.delete("segments/aa/bb/L0-1.parquet")  # gone already: nothing happens
    assert o.list("segments") == [] and not o.exists("segments/aa/bb/L0-1.parquet")


def test_a_reader_refuses_a_bad_storage_url_with_the_reason(tmp_path: Path) -> None:
    from history.query import Api, QueryError

    with pytest.raises(QueryError, match="needs a bucket name"):
        Api(data_dir=tmp_path, storage_url="s3://")
