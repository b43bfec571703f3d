"""The metadata belongs to one namespace and partition count (``sl_deployment``, ``MetaStore.bind_deployment``).

``sl_partitions`` is keyed by partition number only: before the binding, a worker of a second namespace pointed at
the same database took the first namespace's partitions (fencing its worker) and read its own streams from the
other's offsets, skipping events (the same failure a second ``stepline demo`` on ``stepline up``'s data directory
showed). Now the second worker is refused in one line and the first is never disturbed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.pg import fresh_database
from support.worker_harness import WorkerFleet, wait_until

from schemas import SettingsError
from workers.metastore import MetaStore, sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        with fresh_database() as url:
            yield url


def test_first_binding_sticks_and_a_mismatch_names_both(db_url: str) -> None:
    store = MetaStore(db_url)
    try:
        store.bind_deployment("teamA", 16)
        store.bind_deployment("teamA", 16)  # the same deployment again: no error, nothing changes
        with pytest.raises(SettingsError) as e:
            store.bind_deployment("teamB", 16)
        assert "namespace 'teamA', not 'teamB'" in str(e.value)
        with pytest.raises(SettingsError) as e:
            store.bind_deployment("teamA", 8)
        assert "partitions '16', not '8'" in str(e.value)
    finally:
        store.close()
    # Bound for good: a new store (a restarted worker) sees the same binding.
    again = MetaStore(db_url)
    try:
        with pytest.raises(SettingsError):
            again.bind_deployment("teamB", 16)
        again.bind_deployment("teamA", 16)
    finally:
        again.close()


def test_a_worker_of_another_namespace_is_refused_and_takes_no_partition(
        redis_url: str, namespace: str, data_dir: Path, tmp_path: Path) -> None:
    other = f"{namespace}x"
    r = redis.Redis.from_url(redis_url)
    with WorkerFleet(redis_url=redis_url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "a",
                     partitions=4) as first, \
            WorkerFleet(redis_url=redis_url, namespace=other, data_dir=data_dir, log_dir=tmp_path / "b",
                        partitions=4) as second:
        try:
            w1 = first.start("w1")
            store = MetaStore(sqlite_url(data_dir))
            try:
                wait_until(lambda: len([p for p in store.partitions() if p["owner"] == "w1"]) == 4, 120,
                           "the first worker to take its 4 partitions")
                epochs = {int(p["p"]): int(p["epoch"]) for p in store.partitions()}
                w2 = second.start("w2")
                rc = w2.proc.wait(120)
                assert rc == 2, second.logs()
                lines = [ln for ln in w2.log.read_text().splitlines() if ln.strip()]
                assert lines[-1].startswith("stepline worker: error: the metadata database "), lines
                assert f"belongs to namespace '{namespace}', not '{other}'" in lines[-1]
                assert "Traceback" not in w2.log.read_text()
                # The first worker's partitions were never taken: same epochs, still its own.
                assert {int(p["p"]): int(p["epoch"]) for p in store.partitions()} == epochs
                assert all(p["owner"] == "w1" for p in store.partitions())
                assert w1.alive()
                assert not r.exists(f"{other}:workers")
            finally:
                store.close()
        finally:
            r.close()

