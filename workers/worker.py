"""The worker process: owns partitions by lease, consumes their streams, commits, compacts and trims.

Guarantees:

- A partition is processed by one worker at a time: its lease (``SET NX PX``, renewed by the owner) says who
  may read it, and its epoch in the metadata store, bumped on every take, refuses the commits of a worker that
  lost it without noticing (a paused or partitioned zombie): see :meth:`MetaStore.commit`.
- Partitions are spread over the live workers by rendezvous hashing; on join/leave the old owner commits its
  batch, then releases, then the new owner takes over from the committed offset.
- Consumption restarts from the committed offset, so a crash at any point loses nothing and duplicates nothing.
- The stream is trimmed (``XTRIM MINID``) only behind the committed offset and the retention window.
- SIGTERM: stop reading, commit, release leases, exit within ``drain_timeout_s``. kill -9: the leases expire and
  other workers resume from the committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from typing import Any, cast

from redis.exceptions import RedisError

from schemas import FencedError
from schemas.clients import AsyncRedis, async_redis

from ._faults import crash_point
from .metastore import MetaStore, SegmentRef
from .metrics import WorkerMetrics
from .metrics import serve as serve_metrics
from .partition import Entry, PartitionProcessor, PreparedCommit, id_tuple
from .segments import merge_tables, read_table, warm_up, write_table
from .settings import WorkerSettings

log = logging.getLogger("stepline.worker")

# Renew only while we still own the lease; release only our own lease.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
#: Pause after a read round that found nothing, doubling while idle (the read itself never blocks).
_IDLE_MIN_S, _IDLE_MAX_S = 0.002, 0.02
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def _consume(task: asyncio.Task[None]) -> None:
    """Retrieve an abandoned task's outcome so asyncio does not warn about it (fencing already voided it)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("abandoned commit ended with %r", task.exception())


def rendezvous_owner(workers: list[str], p: int) -> str | None:
    """The worker a partition belongs to: highest hash of (worker, partition); stable as workers come and go."""
    best: tuple[bytes, str] | None = None
    for w in workers:
        score = hashlib.blake2b(f"{w}|{p}".encode(), digest_size=8).digest()
        if best is None or score > best[0]:
            best = (score, w)
    return best[1] if best else None


class Worker:
    """Consume and commit partitions until stopped. ``run()`` for processes, ``async_run()`` inside a loop."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        redis: AsyncRedis | None = None,
        store: MetaStore | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.settings = settings
        self.names = settings.names
        self.id = settings.worker_id
        self._redis = redis
        self._owns_redis = redis is None
        self._store = store
        self._owns_store = store is None
        self.handle_signals = handle_signals
        self.owned: dict[int, PartitionProcessor] = {}
        self.desired: set[int] = set()
        self.lost: set[int] = set()
        self.inflight: dict[int, tuple[PartitionProcessor, asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        self.commits = 0
        self.fenced = 0
        self.metrics = WorkerMetrics()
        self.metrics_url: str | None = None
        self.stream_gaps = 0
        self._idle_s = _IDLE_MIN_S

    @property
    def redis(self) -> AsyncRedis:
        assert self._redis is not None
        return self._redis

    @property
    def store(self) -> MetaStore:
        assert self._store is not None
        return self._store

    def stop(self) -> None:
        """Ask the worker to drain and exit (safe from a signal handler)."""
        self._stopping.set()

    def run(self) -> None:
        """Run until stopped; return as soon as the drain is over.

        ``asyncio.run`` would then wait for every executor thread, so a commit thread still blocked past the drain
        timeout (say on a SQLite file another process holds locked) would hold the process past its grace
        period. The loop is closed without waiting for them; :func:`workers.service.main` then exits the process
        at once. Fencing makes such an abandoned commit harmless: it lands before the next owner's take or is
        refused.
        """
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.async_run())
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def async_run(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if self._redis is None:
            self._redis = async_redis(
                s.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
            )
        if self._store is None:
            self._store = await asyncio.to_thread(lambda: MetaStore(s.metadata_url, audit=s.commit_audit))
        await asyncio.to_thread(warm_up)
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        metrics_runner = None
        if s.metrics_port is not None:
            metrics_runner = await serve_metrics(self, s.metrics_host, s.metrics_port)
            host, port = metrics_runner.addresses[0][:2]
            self.metrics_url = f"http://{host}:{port}/metrics"
            log.info("worker %s: metrics at %s", self.id, self.metrics_url)
        membership = asyncio.create_task(self._membership_loop(), name="stepline-membership")
        housekeeping = asyncio.create_task(self._housekeeping_loop(), name="stepline-housekeeping")
        try:
            await self._first_heartbeat()
            await self._run_until_stopped()
        finally:
            membership.cancel()
            housekeeping.cancel()
            for t in (membership, housekeeping):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            try:
                await asyncio.wait_for(self._drain(), timeout=s.drain_timeout_s)
            except (TimeoutError, RedisError, OSError) as e:
                log.error("worker %s: drain did not finish cleanly: %r", self.id, e)
            await self._abandon_inflight()
            if self.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            if self._owns_redis and self._redis is not None:
                await self._redis.aclose()
            if self._owns_store and self._store is not None:
                self._store.close()

    async def _run_until_stopped(self) -> None:
        """The main loop, cut short on stop: a round stuck on the metadata store (a locked SQLite file, a
        PostgreSQL that does not answer) must not keep SIGTERM from draining within the grace period."""
        main = asyncio.create_task(self._main_loop(), name="stepline-main")
        stop = asyncio.create_task(self._stopping.wait(), name="stepline-stop")
        try:
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                # The loop checks the stop flag between rounds; give the round in flight a moment to end.
                await asyncio.wait({main}, timeout=min(1.0, self.settings.drain_timeout_s / 4))
        finally:
            stop.cancel()
            if not main.done():
                main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main  # re-raises what the loop died of, if it died

    async def _drain(self) -> None:
        for p in list(self.owned):
            await self._release(p, commit=p not in self.lost)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.hdel(self.names.workers, self.id)

    # --- membership and leases -------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        ttl = self.settings.lease_ttl_ms
        now = int(time.time() * 1000)
        await self.redis.hset(self.names.workers, self.id, str(now))
        beats = cast("dict[bytes, bytes]", await self.redis.hgetall(self.names.workers))
        live = []
        for w, hb in beats.items():
            if now - int(hb) <= ttl:
                live.append(w.decode())
            else:
                await self.redis.hdel(self.names.workers, w)
        self.desired = {p for p in range(self.names.partitions) if rendezvous_owner(live, p) == self.id}
        for p in list(self.owned):
            ok = await self.redis.eval(_RENEW, 1, self.names.lease(p), self.id, str(ttl))
            if not ok:
                log.warning("worker %s lost the lease of partition %d", self.id, p)
                self.lost.add(p)

    async def _first_heartbeat(self) -> None:
        """Join the membership; a worker started while Redis is down or restarting waits for it (never exits)."""
        while not self._stopping.is_set():
            try:
                await self._heartbeat()
                return
            except (RedisError, OSError) as e:
                log.warning("worker %s: Redis unreachable at start (%r); retrying", self.id, e)
                await self._sleep(0.5)

    async def _membership_loop(self) -> None:
        interval = self.settings.lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            if self.settings.health_file is not None:  # liveness: this loop runs, whatever Redis does
                with contextlib.suppress(OSError):
                    self.settings.health_file.touch()
            try:
                await self._heartbeat()
            except (RedisError, OSError) as e:
                log.warning("worker %s: heartbeat failed: %r", self.id, e)

    async def _acquire(self, p: int) -> None:
        ok = await self.redis.set(self.names.lease(p), self.id, nx=True, px=self.settings.lease_ttl_ms)
        if not ok:
            return
        epoch, offset = await asyncio.to_thread(self.store.take_partition, p, self.id)
        self.owned[p] = PartitionProcessor(
            p=p, epoch=epoch, offset=offset, names=self.names, store=self.store,
            data_dir=self.settings.data_dir, redis=self.redis, limits=self.settings.limits,
        )
        self.lost.discard(p)
        log.info("worker %s took partition %d (epoch %d, offset %s)", self.id, p, epoch, offset)
        await self._check_stream(self.owned[p])

    async def _check_stream(self, proc: PartitionProcessor) -> None:
        """Entries deleted before they were read are lost: count them and say so loudly (never skip silently)."""
        if await proc.check_stream() is not None:
            self.stream_gaps += 1

    async def _release(self, p: int, *, commit: bool) -> None:
        proc = self.owned.pop(p, None)
        if proc is None:
            return
        if commit:
            with contextlib.suppress(FencedError):
                await self._settle(proc)
                await self._commit(proc)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.release_partition, p, proc.epoch)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_RELEASE, 1, self.names.lease(p), self.id)
        self.lost.discard(p)
        log.info("worker %s released partition %d", self.id, p)

    async def _commit(self, proc: PartitionProcessor) -> None:
        """Commit now and wait for it (hand-over, drain)."""
        prep = proc.prepare()
        if prep is None:
            return
        try:
            await self._timed_write(proc, prep)
        except FencedError:
            self._fenced(proc)
            raise

    async def _timed_write(self, proc: PartitionProcessor, prep: PreparedCommit) -> None:
        t0 = time.monotonic()
        await proc.write(prep)
        self.commits += 1
        self.metrics.observe_commit(proc.p, time.monotonic() - t0, [r.reason for r in prep.rejections],
                                    len(prep.dlq))

    def _fenced(self, proc: PartitionProcessor) -> None:
        self.fenced += 1
        log.warning("worker %s fenced on partition %d (epoch %d): dropping it", self.id, proc.p, proc.epoch)
        if self.owned.get(proc.p) is proc:
            self.owned.pop(proc.p, None)

    def _start_commit(self, proc: PartitionProcessor) -> None:
        """Commit in the background while the loop goes on reading and aligning (one commit in flight per
        partition; the next waits for it, so commits land in offset order)."""
        prep = proc.prepare()
        if prep is not None:
            task = asyncio.create_task(self._timed_write(proc, prep), name=f"commit-p{proc.p}")
            self.inflight[proc.p] = (proc, task)

    async def _settle(self, proc: PartitionProcessor) -> None:
        """Wait for the partition's commit in flight, if any; raise what it raised."""
        entry = self.inflight.get(proc.p)
        if entry is None or entry[0] is not proc:
            return
        del self.inflight[proc.p]
        try:
            await entry[1]
        except FencedError:
            self._fenced(proc)
            raise

    async def _reap(self) -> None:
        """Collect finished background commits; a failed one drops its partition (fenced) or everything."""
        for p, (proc, task) in list(self.inflight.items()):
            if not task.done():
                continue
            del self.inflight[p]
            exc = task.exception()
            if exc is None:
                continue
            if isinstance(exc, FencedError):
                self._fenced(proc)
            elif self.owned.get(p) is proc:
                raise exc

    async def _abandon_inflight(self) -> None:
        """Forget commits of partitions we no longer trust; fencing makes a late one harmless."""
        for _proc, task in self.inflight.values():
            task.add_done_callback(_consume)
        self.inflight.clear()

    # --- the main loop ---------------------------------------------------------------------------------------

    async def _main_loop(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            try:
                await self._round()
            except (RedisError, OSError) as e:
                log.warning("worker %s: Redis error %r; dropping uncommitted work and retrying", self.id, e)
                await self._reset_all()
                await self._sleep(0.5)
            except FencedError:
                continue
            except Exception:
                # Metadata store or file system trouble: nothing uncommitted can be trusted; start over from
                # the committed offsets after a pause.
                log.exception("worker %s: unexpected error; dropping uncommitted work", self.id)
                await self._reset_all()
                await self._sleep(1.0)
        del s

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _reset_all(self) -> None:
        await self._abandon_inflight()
        for p in list(self.owned):
            self.owned.pop(p, None)
            with contextlib.suppress(RedisError, OSError):
                await self.redis.eval(_RELEASE, 1, self.names.lease(p), self.id)

    async def _round(self) -> None:
        s = self.settings
        for p in list(self.lost):
            self.owned.pop(p, None)
            self.lost.discard(p)
        await self._reap()
        for p in sorted(set(self.owned) - self.desired):
            await self._release(p, commit=True)
        for p in sorted(self.desired - set(self.owned)):
            await self._acquire(p)
        if not self.owned:
            await self._sleep(0.2)
            return
        # One single-stream XREAD per owned partition (a Redis Cluster refuses a multi-stream XREAD whose keys
        # span slots), all in one non-transactional pipeline: one round trip per Redis node, the same code path
        # for a single server and a cluster. Non-blocking; after a round where every partition was empty, wait
        # (2 ms doubling to 20 ms) so an idle worker costs little and a busy one never waits.
        owned = list(self.owned.items())
        pipe = self.redis.pipeline(transaction=False)
        for p, proc in owned:
            pipe.xread({self.names.stream(p): proc.read_id}, count=s.read_count)
        replies = cast("list[list[tuple[bytes, list[Entry]]] | None]", await pipe.execute())
        got = False
        for (p, proc), reply in zip(owned, replies, strict=True):
            for _stream, entries in reply or []:
                if entries and self.owned.get(p) is proc:
                    got = True
                    await proc.process(entries)
                    self.metrics.entries += len(entries)
        for p, proc in list(self.owned.items()):
            if p not in self.inflight and proc.commit_due(s.commit_interval_s, s.commit_entries, s.commit_idle_s):
                self._start_commit(proc)
        if got:
            self._idle_s = _IDLE_MIN_S
        else:
            await self._sleep(self._idle_s)
            self._idle_s = min(self._idle_s * 2, _IDLE_MAX_S)

    # --- housekeeping: trimming, compaction, garbage ---------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        s = self.settings
        last_trim = last_gc = time.monotonic()
        while True:
            await asyncio.sleep(s.compaction_interval_s)
            try:
                for proc in list(self.owned.values()):
                    await self._compact(proc)
                if time.monotonic() - last_trim >= s.trim_interval_s:
                    last_trim = time.monotonic()
                    for proc in list(self.owned.values()):
                        await self._check_stream(proc)
                        await self._trim(proc)
                if time.monotonic() - last_gc >= s.gc_grace_s / 4:
                    last_gc = time.monotonic()
                    await asyncio.to_thread(self.store.collect_garbage, s.data_dir, s.gc_grace_s)
            except FencedError:
                continue
            except (RedisError, OSError) as e:
                log.warning("worker %s: housekeeping failed: %r", self.id, e)
            except Exception:
                log.exception("worker %s: housekeeping failed", self.id)

    async def _trim(self, proc: PartitionProcessor) -> None:
        if proc.offset == "0-0":
            return
        horizon = (int((time.time() - self.settings.retention_s) * 1000), 0)
        minid = min(id_tuple(proc.offset), horizon)
        if minid > (0, 0):
            await self.redis.xtrim(self.names.stream(proc.p), minid=f"{minid[0]}-{minid[1]}", approximate=False)
            crash_point("trimmed")

    async def _compact(self, proc: PartitionProcessor) -> None:
        runs = sorted(proc.touched)
        proc.touched.clear()
        for project, run in runs:
            if self.owned.get(proc.p) is not proc:
                return
            await asyncio.to_thread(self._compact_run, proc.p, proc.epoch, project, run)

    def _compact_run(self, p: int, epoch: int, project: str, run: str) -> None:
        """Tiered compaction: ``fanin`` segments of one level become one segment of the next level."""
        fanin = self.settings.compaction_fanin
        segs = self.store.segments_of(project, run)
        by_level: dict[int, list[dict[str, Any]]] = {}
        for seg in segs:
            by_level.setdefault(int(seg["level"]), []).append(seg)
        for level in sorted(by_level):
            group = by_level[level]
            if len(group) < fanin:
                continue
            data_dir = self.settings.data_dir
            table = merge_tables([read_table(data_dir, g["file"]) for g in group])
            rel, size = write_table(data_dir, project, run, table, level=level + 1)
            steps = table.column("_step")
            new = SegmentRef(project, run, level + 1, int(steps[0].as_py()), int(steps[-1].as_py()),
                             table.num_rows, size, rel)
            try:
                self.store.swap_segments(p, epoch, [int(g["id"]) for g in group], new)
            except FencedError:
                (data_dir / rel).unlink(missing_ok=True)
                raise
            return
