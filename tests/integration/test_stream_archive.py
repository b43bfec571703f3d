"""The stream archive against real Redis, real workers and both storage backends: workers archive the committed
entries and trim their streams to nothing, and a replay into fresh metadata rebuilds the history the live workers
made (equal to the oracle), also after compaction; a worker killed between an archive object's write and its SQL
row leaves an unreferenced orphan, no referenced object missing and no entry archived twice; byte retention trims
about to its budget and never past what is committed and archived."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from support.s3 import Storage
from support.worker_harness import (
    RunScript,
    WorkerFleet,
    check_history,
    interleave,
    make_run,
    stream_ends,
    wait_until,
    xadd_frames,
)

from schemas import Names
from schemas.archive import decode_archive
from schemas.objects import ObjectStore, local_store
from workers.archive import StreamKeeper, archived_offset, archives_of, collect_archive_orphans, read_archive
from workers.metastore import MetaStore, sqlite_url
from workers.partition import id_tuple
from workers.replay import ArchiveSource, replay
from workers.settings import WorkerSettings
from workers.worker import Worker

pytestmark = pytest.mark.integration

PARTITIONS = 4
#: Generous: the suite runs under load (CI=true on a shared machine); these only catch hangs.
DEADLINE_S = 240.0


def scripts_for(names: Names, seed: int, runs: int = 6, steps: int = 500) -> list[RunScript]:
    rng = random.Random(seed)
    return [make_run(rng, names, "arch", f"r{seed}-{i}", steps, 4) for i in range(runs)]


def archived_everything(r: redis.Redis, names: Names, store: MetaStore) -> bool:
    """Every partition: committed up to its stream's end, archived up to that too, and the stream trimmed to the
    one entry a trim keeps (the one at the committed offset)."""
    ends = stream_ends(r, names)
    offsets = {int(row["p"]): str(row["offset"]) for row in store.partitions()}
    for p, end in ends.items():
        if offsets.get(p) != end or archived_offset(store.engine, p) != end or r.xlen(names.stream(p)) > 1:
            return False
    return True


def check_archive(r: redis.Redis, names: Names, store: MetaStore, storage: Storage) -> int:
    """``sl_archive`` covers each stream from its first entry ever, in disjoint ascending ranges, every object it
    names exists and holds exactly its range; returns the entries archived."""
    total = 0
    for p in range(names.partitions):
        rows = archives_of(store.engine, p)
        added = int(r.xinfo_stream(names.stream(p))["entries-added"]) if r.exists(names.stream(p)) else 0
        ids: list[str] = []
        for row in rows:
            entries = decode_archive(storage.objects.get(str(row["file"])), p)  # FileNotFoundError: missing
            assert len(entries) == int(row["entries"])
            assert (entries[0][0], entries[-1][0]) == (row["first_id"], row["last_id"])
            ids += [e[0] for e in entries]
        tuples = [id_tuple(i) for i in ids]
        assert tuples == sorted(set(tuples)), f"partition {p}: archived entries repeat or go back"
        assert len(ids) == added, f"partition {p}: {len(ids)} entries archived of {added} ever added"
        total += len(ids)
    return total


async def wait_for(cond: Any, what: str, limit_s: float = DEADLINE_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not await asyncio.to_thread(cond):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(600)
async def test_replay_from_archive_after_trimming_to_nothing(redis_url: str, namespace: str, data_dir: Path,
                                                             tmp_path: Path, storage: Storage) -> None:
    """Each run logged in two waves; after each the worker has archived everything and trimmed the streams to their last
    entry; compaction merged segments. A replay that reads the archive gives the oracle's history; one that
    cannot (no archive given) reports the gap instead of a partial history in silence."""
    names = Names(namespace, PARTITIONS)
    live_dir = data_dir
    where = storage.settings()
    settings = WorkerSettings(redis_url=redis_url, namespace=namespace, partitions=PARTITIONS, data_dir=live_dir,
                              lease_ttl_s=3.0, commit_interval_s=0.1, compaction_interval_s=0.2, compaction_fanin=2,
                              retention_s=0.0, trim_interval_s=0.2, **where)
    scripts = scripts_for(names, 1)
    # Each run's frames in two waves, so each run gets several segments and compaction (fan-in 2) merges them.
    waves = [[(sc.partition, f) for sc in scripts for f in sc.frames[:len(sc.frames) // 2]],
             [(sc.partition, f) for sc in scripts for f in sc.frames[len(sc.frames) // 2:]]]
    worker = Worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    r = redis.Redis.from_url(redis_url)
    try:
        await wait_for(lambda: (live_dir / "meta.sqlite").exists(), "the metadata file")
        store = MetaStore(sqlite_url(live_dir))
        for wave in waves:
            await asyncio.to_thread(xadd_frames, r, names, wave)
            await wait_for(lambda: archived_everything(r, names, store), "archiving and trimming to the stream ends")

        def compacted() -> bool:
            return all(any(int(s["level"]) > 0 for s in store.segments_of(sc.project, sc.run)) for sc in scripts)
        await wait_for(compacted, "compaction")
    finally:
        worker.stop()
        await task
        # The worker abandons closing its Redis client past its shutdown deadline (a loaded machine); closing again
        # is harmless and keeps its sockets from being collected, as unclosed, in a later test.
        await worker.redis.aclose()
    try:
        check_history(storage.objects, store, scripts)  # the live history is the oracle's
        assert worker.archived_entries == sum(len(sc.frames) for sc in scripts) and worker.archive_objects >= 2
        archived = check_archive(r, names, store, storage)
        assert sum(len(sc.frames) for sc in scripts) == archived
        # `stepline status` shows each stream's archived position (its last archived entry).
        status = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "stepline.cli", "status", "--format", "json", "--redis-url", redis_url,
             "--namespace", namespace, "--partitions", str(PARTITIONS), "--data-dir", str(live_dir)],
            capture_output=True, text=True, timeout=DEADLINE_S, env={**os.environ, **storage.env})
        assert status.returncode == 0, status.stderr
        shown = {row["partition"]: row["archived"] for row in json.loads(status.stdout)["partitions"]}
        assert shown == {p: archived_offset(store.engine, p) for p in range(PARTITIONS)}
        assert any(v != "0-0" for v in shown.values())

        source = ArchiveSource(sqlite_url(live_dir), settings.storage)
        fresh_dir = tmp_path / "fresh"
        fresh_at = storage.elsewhere(fresh_dir, "fresh")  # a replay writes into a location of its own
        report = await replay(WorkerSettings(redis_url=redis_url, namespace=namespace, partitions=PARTITIONS,
                                             data_dir=fresh_dir, **fresh_at.settings()), archive_from=source)
        assert report.gaps == []
        assert report.archived == archived == report.entries  # the streams hold nothing after the archive
        with _open(fresh_dir) as fresh:
            check_history(fresh_at.objects, fresh, scripts)

        # Without the archive the trimmed entries are gone: reported, per partition.
        bare_dir = tmp_path / "bare"
        bare = await replay(WorkerSettings(redis_url=redis_url, namespace=namespace, partitions=PARTITIONS,
                                           data_dir=bare_dir, **storage.elsewhere(bare_dir, "bare").settings()))
        assert len(bare.gaps) == len(stream_ends(r, names)) and "not in the archive" in bare.gaps[0]

        # The command: `stepline replay --from-data-dir <live> --from-storage-url <live's>` reads the same archive.
        cli_dir = tmp_path / "cli"
        cli_at = storage.elsewhere(cli_dir, "cli")
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "stepline.cli", "replay", "--redis-url", redis_url, "--namespace", namespace,
             "--partitions", str(PARTITIONS), "--data-dir", str(cli_dir), "--from-data-dir", str(live_dir),
             *(["--from-storage-url", storage.url, "--storage-url", str(cli_at.url)] if storage.url else [])],
            capture_output=True, text=True, timeout=DEADLINE_S, env={**os.environ, **storage.env})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"({archived} from the archive)" in proc.stdout and "not in the archive" not in proc.stderr
        with _open(cli_dir) as replayed:
            check_history(cli_at.objects, replayed, scripts)
    finally:
        store.close()
        r.close()


class _open:
    """A MetaStore as a context manager (closed after)."""

    def __init__(self, data_dir: Path) -> None:
        self.store = MetaStore(sqlite_url(data_dir))

    def __enter__(self) -> MetaStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


@pytest.mark.timeout(600)
def test_kill_between_archive_write_and_commit(redis_url: str, namespace: str, data_dir: Path, tmp_path: Path,
                                               storage: Storage) -> None:
    """A worker SIGKILLed right after its first archive object is complete, before the SQL row: the object is an
    orphan nothing references; the next owner archives the same entries again under another name, every object
    ``sl_archive`` names exists, no entry is archived twice, the orphan sweep deletes exactly the orphan, and a
    replay from the archive equals the oracle."""
    names = Names(namespace, PARTITIONS)
    scripts = scripts_for(names, 3, runs=4, steps=400)
    env = {"STEPLINE_TRIM_INTERVAL_S": "0.2", "STEPLINE_COMPACTION_INTERVAL_S": "0.2", **storage.env}
    r = redis.Redis.from_url(redis_url)
    with WorkerFleet(redis_url=redis_url, namespace=namespace, data_dir=data_dir, log_dir=tmp_path / "logs",
                     partitions=PARTITIONS, extra_args=["--retention", "0"]) as fleet:
        xadd_frames(r, names, interleave(scripts, random.Random(3)))
        doomed = fleet.start("doomed", env={**env, "STEPLINE_TEST_CRASH_AT": "archived"})
        wait_until(lambda: not doomed.alive(), DEADLINE_S, f"the crash after the archive write\n{fleet.logs()}")
        assert doomed.proc.returncode == -9
        store = MetaStore(sqlite_url(data_dir))
        try:
            written = {rel for rel, _, _ in storage.objects.list("archive")}
            assert len(written) == 1, written  # the object is complete...
            assert all(archives_of(store.engine, p) == [] for p in range(PARTITIONS))  # ...and never recorded
            fleet.start("heir", env=env)
            try:
                wait_until(lambda: archived_everything(r, names, store), DEADLINE_S,
                           "the next owner to archive and trim everything")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{fleet.logs()}") from None
            archived = check_archive(r, names, store, storage)  # every named object exists, no entry twice
            assert archived == sum(len(sc.frames) for sc in scripts)
            named = {str(row["file"]) for p in range(PARTITIONS) for row in archives_of(store.engine, p)}
            orphans = {rel for rel, _, _ in storage.objects.list("archive")} - named
            assert orphans == written
            assert collect_archive_orphans(store.engine, storage.objects, grace_s=0.0) == 1
            assert {rel for rel, _, _ in storage.objects.list("archive")} == named
            check_history(storage.objects, store, scripts)
        finally:
            store.close()
    fresh = tmp_path / "fresh"
    fresh_at = storage.elsewhere(fresh, "fresh")
    report = asyncio.run(replay(
        WorkerSettings(redis_url=redis_url, namespace=namespace, partitions=PARTITIONS, data_dir=fresh,
                       **fresh_at.settings()),
        archive_from=ArchiveSource(sqlite_url(data_dir),
                                   WorkerSettings(data_dir=data_dir, **storage.settings()).storage)))
    assert report.gaps == [] and report.archived == archived
    with _open(fresh) as replayed:
        check_history(fresh_at.objects, replayed, scripts)
    r.close()


async def test_byte_retention_trims_to_budget_never_past_the_floor(redis_url: str, namespace: str,
                                                                   data_dir: Path) -> None:
    """``retention_bytes`` trims a stream to about its share of the budget; with the committed offset in the
    middle, nothing at or after it is trimmed however small the budget; with archiving on, nothing unarchived."""
    names = Names(namespace, 2)
    stream = names.stream(0)
    r = AsyncRedis.from_url(redis_url)
    store = MetaStore(sqlite_url(data_dir))
    try:
        payload = os.urandom(2000)
        # One entry per millisecond, an hour ago: the byte cut interpolates over ids, so evenly spaced ids make its
        # estimate exact whatever the machine's load did to the timing of the writes.
        base = int(time.time() * 1000) - 3_600_000
        ids = []
        for i in range(0, 4000, 500):
            pipe = r.pipeline(transaction=False)
            for k in range(i, i + 500):
                pipe.xadd(stream, {b"f": payload}, id=f"{base + k}-0")
            ids += [x.decode() for x in await pipe.execute()]
        full = await r.memory_usage(stream)
        assert full is not None and full > 7_000_000
        epoch, _ = store.take_partition(0, "test")
        keeper = StreamKeeper(r, names, store.engine, _objects(data_dir), archive=False, retention_s=1e9,
                              retention_bytes=2 * 2_000_000)  # 2 MB per stream
        await keeper.keep(0, epoch, ids[-1])
        left = await r.memory_usage(stream)
        assert left is not None and 1_000_000 < left < 3_000_000, left
        # The floor: committed up to the middle of what is left; a tiny budget trims up to it, keeping the entry at it.
        floor = ids[3500]
        small = StreamKeeper(r, names, store.engine, _objects(data_dir), archive=False, retention_s=1e9,
                             retention_bytes=2 * 1000)
        await small.keep(0, epoch, floor)
        assert await _first_id(r, stream) == floor
        # Archiving on: the committed entries are archived first, then trimmed up to the committed offset.
        archiving = StreamKeeper(r, names, store.engine, _objects(data_dir), archive=True, retention_s=1e9,
                                 retention_bytes=2 * 1000, archive_interval_s=1e9)
        await archiving.keep(0, epoch, ids[-10])
        assert archived_offset(store.engine, 0) == ids[-10]
        assert await _first_id(r, stream) == ids[-10]
        rows = archives_of(store.engine, 0)
        assert rows[0]["first_id"] == floor and sum(int(x["entries"]) for x in rows) == len(ids) - 9 - ids.index(floor)
    finally:
        store.close()
        await r.aclose()


async def _first_id(r: AsyncRedis, stream: str) -> str:
    first = cast("list[tuple[bytes, dict[bytes, bytes]]]", await r.xrange(stream, count=1))
    return first[0][0].decode()


def _objects(data_dir: Path) -> ObjectStore:
    return local_store(data_dir)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_archive_rows_are_fenced_and_never_overlap(db: str, data_dir: Path) -> None:
    """``record_archive`` writes only for the partition's current epoch and only a range after the last one, on
    both metadata databases; the format refuses what is not its version."""
    from contextlib import ExitStack

    from support.pg import fresh_database

    from schemas import FencedError
    from schemas.archive import ArchiveFormatError, encode_archive
    from workers.archive import ArchiveRef, record_archive

    with ExitStack() as stack:
        url = stack.enter_context(fresh_database()) if db == "postgresql" else sqlite_url(data_dir)
        store = MetaStore(url)
        stack.callback(store.close)
        epoch, _ = store.take_partition(3, "a")
        record_archive(store.engine, epoch, ArchiveRef(3, "1-0", "5-2", 7, 100, "archive/p03/a"))
        with pytest.raises(FencedError, match="overlaps"):
            record_archive(store.engine, epoch, ArchiveRef(3, "5-2", "9-0", 3, 100, "archive/p03/b"))
        newer, _ = store.take_partition(3, "b")  # another owner: the old epoch writes nothing
        with pytest.raises(FencedError, match="no longer current"):
            record_archive(store.engine, epoch, ArchiveRef(3, "6-0", "9-0", 3, 100, "archive/p03/c"))
        record_archive(store.engine, newer, ArchiveRef(3, "5-3", "9-0", 3, 100, "archive/p03/d"))
        assert [(r["first_id"], r["last_id"], r["file"]) for r in archives_of(store.engine, 3)] == [
            ("1-0", "5-2", "archive/p03/a"), ("5-3", "9-0", "archive/p03/d")]
        assert archived_offset(store.engine, 3) == "9-0" and archived_offset(store.engine, 0) == "0-0"

    entries = [("1-0", [(b"f", b"\x00frame")]), ("1-1", [(b"f", b"x"), (b"g", b"y")])]
    assert decode_archive(encode_archive(3, entries), 3) == entries
    with pytest.raises(ArchiveFormatError, match="partition 3"):
        decode_archive(encode_archive(3, entries), 4)
    import msgpack

    with pytest.raises(ArchiveFormatError, match="version 2"):
        decode_archive(msgpack.packb(["stepline-archive", 2, 3, "zstd", 0, b""]))
    with pytest.raises(ArchiveFormatError):
        decode_archive(b"\x00garbage")


async def test_replay_reads_archive_rows_recorded_while_it_runs(redis_url: str, namespace: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A live owner archives and trims past the replay's position while the replay reads the stream (placed
    exactly by a hook on the replay's archive listing): the replay takes those entries from the archive, and its
    history still equals the oracle."""
    import workers.replay as replay_module
    from schemas.clients import async_redis
    from schemas.objects import parse_storage_url

    names = Names(namespace, 1)
    live = tmp_path / "live"
    live.mkdir()
    scripts = scripts_for(names, 5, runs=2, steps=300)
    r = redis.Redis.from_url(redis_url)
    xadd_frames(r, names, interleave(scripts, random.Random(5)))
    ids = [e[0].decode() for e in cast("list[tuple[bytes, Any]]", r.xrange(names.stream(0)))]
    r.close()
    store = MetaStore(sqlite_url(live))
    owner = async_redis(redis_url)
    try:
        epoch, _ = store.take_partition(0, "live")
        keeper = StreamKeeper(owner, names, store.engine, local_store(live), retention_s=0.0)
        await keeper.keep(0, epoch, ids[len(ids) // 3])  # archived and trimmed up to a third
        real = read_archive
        calls = 0

        async def racing(engine: Any, objects: ObjectStore, p: int, after: int = 0) -> Any:
            nonlocal calls
            calls += 1
            if calls == 3:  # the replay is reading the stream: the owner archives and trims up to two thirds
                await keeper.keep(0, epoch, ids[2 * len(ids) // 3])
            async for got in real(engine, objects, p, after):
                yield got

        monkeypatch.setattr(replay_module, "read_archive", racing)
        fresh = tmp_path / "fresh"
        report = await replay(
            WorkerSettings(redis_url=redis_url, namespace=namespace, partitions=1, data_dir=fresh),
            archive_from=ArchiveSource(sqlite_url(live), parse_storage_url(None, live)), chunk=7)
        assert calls > 3 and keeper.objects_written == 2
        assert report.gaps == [] and report.entries == len(ids)
        with _open(fresh) as replayed:
            check_history(local_store(fresh), replayed, scripts)
    finally:
        store.close()
        await owner.aclose()
