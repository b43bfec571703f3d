"""Schema migrations (``workers.migrations``): a database of an older schema is upgraded in place when a
MetaStore starts, exactly once even when several start together, keeping its data; a newer one is refused.
Run on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, select
from support.pg import fresh_database

from schemas.store import (
    SCHEMA_VERSION,
    api_keys,
    commits,
    garbage,
    partitions,
    rejections,
    runs,
    schema_version,
    segments,
    writer_engine,
)
from workers.metastore import Commit, MetaStore
from workers.migrations import MIGRATIONS, SchemaTooNew

V1_TABLES = (partitions, runs, segments, rejections, garbage, api_keys)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.sqlite'}"
    else:
        with fresh_database() as url:
            yield url


def make_v1_database(url: str, *, stamped: bool) -> None:
    """The schema as released before migrations (no version table), or stamped at version 1."""
    engine = writer_engine(url)
    try:
        with engine.begin() as conn:
            for t in V1_TABLES:
                t.create(conn)
            conn.execute(insert(partitions).values(p=3, epoch=7, offset="1700000000000-5", owner=None))
            if stamped:
                schema_version.create(conn)
                conn.execute(insert(schema_version).values(version=1, description="initial", applied_at=0.0))
    finally:
        engine.dispose()


@pytest.mark.parametrize("stamped", [False, True], ids=["pre-migrations", "stamped-v1"])
def test_an_older_schema_is_upgraded_and_keeps_its_data(db_url: str, stamped: bool) -> None:
    make_v1_database(db_url, stamped=stamped)
    store = MetaStore(db_url, audit=True)
    try:
        assert store.schema_version == SCHEMA_VERSION == MIGRATIONS[-1][0]
        assert inspect(store.engine).has_table(commits.name)
        with store.engine.connect() as conn:
            versions = [r.version for r in conn.execute(select(schema_version).order_by(schema_version.c.version))]
        assert versions == [v for v, _, _ in MIGRATIONS]
        # The old data is there, and the new table is used by the commit path.
        epoch, offset = store.take_partition(3, "w")
        assert (epoch, offset) == (8, "1700000000000-5")
        store.commit(Commit(3, epoch, "1700000000001-0"))
        with store.engine.connect() as conn:
            assert [(r.p, r.epoch, r.offset) for r in conn.execute(select(commits))] == [(3, 8, "1700000000001-0")]
    finally:
        store.close()
    again = MetaStore(db_url)  # a restart applies nothing twice
    try:
        with again.engine.connect() as conn:
            assert len(conn.execute(select(schema_version)).all()) == len(MIGRATIONS)
    finally:
        again.close()


def test_workers_starting_together_migrate_once(db_url: str) -> None:
    make_v1_database(db_url, stamped=False)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            MetaStore(db_url).close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    engine = writer_engine(db_url)
    try:
        with engine.connect() as conn:
            assert sorted(r.version for r in conn.execute(select(schema_version))) == [v for v, _, _ in MIGRATIONS]
    finally:
        engine.dispose()


def test_a_newer_schema_is_refused(db_url: str) -> None:
    MetaStore(db_url).close()
    engine = writer_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(schema_version).values(version=SCHEMA_VERSION + 1, description="future",
                                                       applied_at=0.0))
    finally:
        engine.dispose()
    with pytest.raises(SchemaTooNew, match="upgrade stepline"):
        MetaStore(db_url)
