"""The worker process: owns partitions by lease, consumes their streams, commits, compacts and trims.

Guarantees:

- A partition is processed by one worker at a time: its lease (``SET NX PX``, renewed by the owner) says who
  may read it, and its epoch in the metadata store, bumped on every take, refuses the commits of a worker that
  lost it without noticing (a paused or partitioned zombie): see :meth:`MetaStore.commit`.
- Partitions are spread over the live workers by rendezvous hashing; on join/leave the old owner commits its
  batch, then releases, then the new owner takes over from the committed offset.
- Consumption restarts from the committed offset, so a crash at any point loses nothing and duplicates nothing.
- The stream is trimmed (``XTRIM MINID``) only behind the committed offset and the retention window and, with the
  stream archive on (the default), only behind what is archived (:mod:`workers.archive`).
- SIGTERM: stop reading, commit, release leases, exit within ``drain_timeout_s`` whatever the work waits on (one
  deadline for the whole shutdown; what is still blocked then is abandoned, and fencing makes it harmless).
  kill -9: the leases expire and other workers resume from the committed offsets.
- A stream entry that crashes the worker or fails its commit every time cannot stall its partition: it is found
  and dead-lettered (:mod:`workers.attempts`). A commit that fails for a reason other than an outage restarts only
  its partition from the committed offset, not every partition of the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from redis.exceptions import RedisError

from schemas import FencedError
from schemas.clients import REDIS_ERRORS, AsyncRedis, async_redis
from schemas.objects import open_store

from .archive import StreamKeeper, collect_archive_orphans
from .attempts import AttemptGuard, transient
from .metastore import MetaStore, SegmentRef
from .metrics import WorkerMetrics
from .metrics import serve as serve_metrics
from .partition import Entry, PartitionProcessor, PreparedCommit
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
#: A partition whose processing or commit failed (not an outage) is taken again after this pause.
_RETRY_S = 0.5
#: Of the drain timeout, kept for what follows the drain (leases, connections): at most this many seconds.
_CLEANUP_S = 2.0
#: The shutdown's last step ends this long before the deadline; the watchdog (:func:`workers.service.serve`) fires
#: at the deadline itself.
_EXIT_MARGIN_S = 0.25

T = TypeVar("T")


def _consume(task: asyncio.Task[None]) -> None:
    """Retrieve an abandoned task's outcome so asyncio does not warn about it (fencing already voided it)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("abandoned commit ended with %r", task.exception())


def run_abandoning(main: Coroutine[Any, Any, T], threads: int | None = None) -> T:
    """Run ``main`` in a new event loop and close the loop as soon as it returns, without waiting for executor
    threads or pending tasks (``asyncio.run`` waits for both, so a commit thread still blocked past the drain
    timeout, say on a SQLite file another process holds locked, would hold the process past its grace period).
    The caller then ends the process with :func:`workers.service.exit_now`, which does not join those threads
    either. Fencing makes an abandoned commit harmless: it lands before the next owner's take or is refused.

    ``threads`` sizes the loop's default executor. A worker commits every partition in a thread of it (one commit
    in flight per partition); with the default pool (CPU count + 4), commits waiting on a slow bucket could hold
    every thread, and the loop's other uses of the pool (resolving a new Redis connection's address) would queue
    behind them."""
    loop = asyncio.new_event_loop()
    if threads is not None:
        loop.set_default_executor(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stepline-worker"))
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


def rendezvous_owner(workers: list[str], p: int) -> str | None:
    """The worker a partition belongs to: highest hash of (worker, partition); stable as workers come and go."""
    best: tuple[bytes, str] | None = None
    for w in workers:
        score = hashlib.blake2b(f"{w}|{p}".encode(), digest_size=8).digest()
        if best is None or score > best[0]:
            best = (score, w)
    return best[1] if best else None



def _end_if_cancelled() -> None:
    """End the running task if it was asked to: a cancel that arrives while a Redis command is in flight can come
    out of the client as a connection error (caught and logged by the loops), or not at all, and the loop would go
    on. Seen in the browser tests: at shutdown the membership loop outlived its cancel, kept heartbeating on new
    connections after the client was closed, and its event loop closed under them (ResourceWarning: loop is
    closed)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

class Worker:
    """Consume and commit partitions until stopped. ``run()`` for processes, ``async_run()`` inside a loop."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        redis: AsyncRedis | None = None,
        store: MetaStore | None = None,
        handle_signals: bool = True,
        on_stop: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.names = settings.names
        self.id = settings.worker_id
        self._redis = redis
        self._owns_redis = redis is None
        self._store = store
        self._owns_store = store is None
        self.handle_signals = handle_signals
        #: Called once, with the deadline (``time.monotonic()``), when the worker is asked to stop.
        self.on_stop = on_stop
        self.guard: AttemptGuard | None = None
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
        #: The whole shutdown ends by this ``time.monotonic()`` (set by the first :meth:`stop`).
        self._deadline: float | None = None
        #: Partitions being drained whose lease may still be held.
        self._draining: dict[int, PartitionProcessor] = {}
        #: Partitions dropped after a failure, and when they may be taken again.
        self._retry_at: dict[int, float] = {}
        #: Held by housekeeping steps and by an isolated entry's window (:meth:`_alone`): they never overlap.
        self._quiet = asyncio.Lock()
        #: Where segments and blobs go: the data directory or a bucket (no request made until used).
        self.objects = open_store(settings.storage)
        #: Archives and trims the owned streams (made once Redis and the metadata store are open).
        self._keeper: StreamKeeper | None = None

    @property
    def redis(self) -> AsyncRedis:
        assert self._redis is not None
        return self._redis

    @property
    def store(self) -> MetaStore:
        assert self._store is not None
        return self._store

    @property
    def archive_objects(self) -> int:
        """Stream archive objects this worker wrote and recorded."""
        return 0 if self._keeper is None else self._keeper.objects_written

    @property
    def archived_entries(self) -> int:
        return 0 if self._keeper is None else self._keeper.entries_archived

    @property
    def keeper(self) -> StreamKeeper:
        if self._keeper is None:
            s = self.settings
            self._keeper = StreamKeeper(
                self.redis, self.names, self.store.engine, self.objects, archive=s.archive,
                retention_s=s.retention_s, retention_bytes=s.retention_bytes,
                archive_interval_s=s.archive_interval_s, max_object_age_s=s.orphan_grace_s / 2)
        return self._keeper

    def stop(self) -> None:
        """Ask the worker to drain and exit within ``drain_timeout_s`` from now (safe from a signal handler)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.settings.drain_timeout_s
            if self.on_stop is not None:
                self.on_stop(self._deadline)
        self._stopping.set()

    def _left(self, reserve: float = 0.0) -> float:
        """Seconds left until the shutdown's deadline, minus ``reserve``, never negative."""
        assert self._deadline is not None
        return max(0.0, self._deadline - reserve - time.monotonic())

    async def _bounded(self, what: str, aw: Awaitable[Any], reserve: float = _EXIT_MARGIN_S) -> None:
        """Await a shutdown step until the deadline (minus ``reserve``); log and abandon it past that or on error."""
        try:
            await asyncio.wait_for(aw, timeout=self._left(reserve))
        except TimeoutError:
            log.error("worker %s: %s did not finish before the shutdown deadline; abandoned", self.id, what)
        except Exception as e:  # the rest of the shutdown must run whatever this step raised
            log.error("worker %s: %s failed: %r", self.id, what, e)

    def run(self) -> None:
        """Run until stopped; return as soon as the shutdown is over, without waiting for abandoned executor
        threads (:func:`run_abandoning`)."""
        run_abandoning(self.async_run(), threads=self.settings.partitions + 8)

    async def async_run(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if self._store is None:
            store = await asyncio.to_thread(lambda: MetaStore(s.metadata_url, audit=s.commit_audit))
            try:
                await asyncio.to_thread(store.bind_deployment, s.namespace, s.partitions)
            except BaseException:
                store.close()
                raise
            self._store = store
        else:
            await asyncio.to_thread(self._store.bind_deployment, s.namespace, s.partitions)
        if self._redis is None:
            self._redis = async_redis(
                s.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
            )
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
        self.guard = AttemptGuard(self.redis, self.names, self.id)
        membership = asyncio.create_task(self._membership_loop(), name="stepline-membership")
        housekeeping = asyncio.create_task(self._housekeeping_loop(), name="stepline-housekeeping")
        try:
            await self._first_heartbeat()
            await self._run_until_stopped()
        finally:
            await self._shut_down(loop, [membership, housekeeping], metrics_runner)

    async def _shut_down(self, loop: asyncio.AbstractEventLoop, loops: list[asyncio.Task[None]],
                         metrics_runner: Any) -> None:
        """Everything after the main loop, within one deadline (``drain_timeout_s`` after :meth:`stop`): commit and
        release each partition (in parallel), then let go of what the drain could not finish (leases, the
        heartbeat), then close connections. Each step is bounded by what is left, and no step's error skips the
        others: a commit settled here can raise anything (SQLite's "database is locked" after its 30 s busy
        timeout, a dropped connection). What is still blocked at the deadline is abandoned (fencing makes a late
        commit harmless); :func:`workers.service.serve` ends the process at the deadline in any case."""
        if self._deadline is None:  # the main loop ended without stop() (it died): same budget from now
            self._deadline = time.monotonic() + self.settings.drain_timeout_s
        for t in loops:
            t.cancel()
        await asyncio.wait(loops, timeout=self._left(_EXIT_MARGIN_S))
        reserve = min(_CLEANUP_S, self.settings.drain_timeout_s / 4)
        try:
            await asyncio.wait_for(self._drain(), timeout=self._left(reserve))
        except TimeoutError:
            log.error("worker %s: the drain did not finish within its time; abandoning what is still blocked "
                      "(partitions %s)", self.id, sorted(self._draining))
        except Exception as e:
            log.error("worker %s: the drain did not finish cleanly: %r", self.id, e)
        await self._abandon_inflight()
        await self._bounded("releasing the leases", self._let_go())
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if metrics_runner is not None:
            await self._bounded("stopping the metrics server", metrics_runner.cleanup())
        if self._owns_redis and self._redis is not None:
            await self._bounded("closing the Redis connections", self._redis.aclose())
        if self._owns_store and self._store is not None:
            await self._bounded("closing the metadata store", asyncio.to_thread(self._store.close))

    async def _run_until_stopped(self) -> None:
        """The main loop, cut short on stop: a round stuck on the metadata store (a locked SQLite file, a
        PostgreSQL that does not answer) must not keep SIGTERM from draining within the grace period."""
        main = asyncio.create_task(self._main_loop(), name="stepline-main")
        stop = asyncio.create_task(self._stopping.wait(), name="stepline-stop")
        try:
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                # The loop checks the stop flag between rounds; give the round in flight a moment to end.
                await asyncio.wait({main}, timeout=min(1.0, self.settings.drain_timeout_s / 4, self._left()))
        finally:
            stop.cancel()
            if not main.done():
                main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main  # re-raises what the loop died of, if it died

    async def _drain(self) -> None:
        """Commit and release every partition, all at once: one partition's commit blocked on the database does
        not keep the others from handing over."""
        self._draining = dict(self.owned)
        await asyncio.gather(*(self._release(p, commit=p not in self.lost) for p in list(self.owned)))

    async def _let_go(self) -> None:
        """Release the leases the drain did not (its time ran out) and leave the membership, in one round trip;
        the next owners then need not wait for the leases to expire. Their attempts ended cleanly (a drain cut
        short is no reason to suspect the entries)."""
        assert self.guard is not None
        left = {**self._draining, **self.owned}
        pipe = self.redis.pipeline(transaction=False)
        for p, proc in sorted(left.items()):
            pipe.eval(_RELEASE, 1, self.names.lease(p), self.id)
            self.guard.close_in(pipe, proc)
        pipe.hdel(self.names.workers, self.id)
        await pipe.execute()
        self._draining.clear()

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
            except REDIS_ERRORS as e:
                log.warning("worker %s: Redis unreachable at start (%r); retrying", self.id, e)
                await self._sleep(0.5)

    async def _membership_loop(self) -> None:
        interval = self.settings.lease_ttl_s / 3
        while True:
            _end_if_cancelled()
            await asyncio.sleep(interval)
            if self.settings.health_file is not None:  # liveness: this loop runs, whatever Redis does
                with contextlib.suppress(OSError):
                    self.settings.health_file.touch()
            try:
                await self._heartbeat()
            except REDIS_ERRORS as e:
                log.warning("worker %s: heartbeat failed: %r", self.id, e)

    async def _acquire(self, p: int) -> None:
        ok = await self.redis.set(self.names.lease(p), self.id, nx=True, px=self.settings.lease_ttl_ms)
        if not ok:
            return
        epoch, offset = await asyncio.to_thread(self.store.take_partition, p, self.id)
        assert self.guard is not None
        self.owned[p] = PartitionProcessor(
            p=p, epoch=epoch, offset=offset, names=self.names, store=self.store,
            data_dir=self.settings.data_dir, redis=self.redis, limits=self.settings.limits,
            attempt=self.guard.new_attempt(), announce=True, objects=self.objects,
            max_object_age_s=self.settings.orphan_grace_s / 2,
            run_cache_max=max(64, self.settings.run_cache_max // self.settings.partitions),
            run_cache_idle_s=self.settings.run_cache_idle_s,
        )
        self.lost.discard(p)
        log.info("worker %s took partition %d (epoch %d, offset %s)", self.id, p, epoch, offset)
        await self._check_stream(self.owned[p])

    async def _check_stream(self, proc: PartitionProcessor) -> None:
        """Entries deleted before they were read are lost: count them and say so loudly (never skip silently)."""
        if await proc.check_stream() is not None:
            self.stream_gaps += 1

    async def _release(self, p: int, *, commit: bool) -> None:
        """Commit (when asked) and hand the partition over: the lease first, so the next owner can start, then
        the owner column in SQL (informational; conditional on the epoch). A failed commit is logged and its
        work dropped: the next owner resumes from the committed offset."""
        proc = self.owned.pop(p, None)
        if proc is None:
            return
        assert self.guard is not None
        clean = True
        if commit:
            try:
                await self._settle(proc)
                await self._commit(proc)
            except FencedError:
                pass
            except Exception as e:
                log.warning("worker %s: the last commit of partition %d failed: %r; the next owner resumes from "
                            "offset %s", self.id, p, e, proc.offset)
                if not transient(e):
                    clean = False
                    await self.guard.failed(proc, f"{type(e).__name__}: {e}")
        if clean:
            await self.guard.close(proc)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_RELEASE, 1, self.names.lease(p), self.id)
        self._draining.pop(p, None)
        self.lost.discard(p)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.release_partition, p, proc.epoch)
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
        """Collect finished background commits. A failed one drops its partition (fenced, or an error the data may
        have caused: the partition restarts alone) or, for an outage, everything."""
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
                if transient(exc):
                    raise exc
                await self._partition_failed(proc, exc)

    async def _partition_failed(self, proc: PartitionProcessor, exc: BaseException) -> None:
        """Processing or committing a partition failed with an error that is not an outage (the data may be the
        cause): drop its uncommitted work and take it again shortly, from the committed offset. The attempt is
        recorded as failed, so an entry that fails every time is isolated and dead-lettered
        (:mod:`workers.attempts`); the worker's other partitions go on."""
        p = proc.p
        log.error("worker %s: partition %d failed; restarting it from offset %s", self.id, p, proc.offset,
                  exc_info=exc)
        assert self.guard is not None
        await self.guard.failed(proc, f"{type(exc).__name__}: {exc}")
        if self.owned.get(p) is proc:
            del self.owned[p]
        entry = self.inflight.get(p)
        if entry is not None and entry[0] is proc:
            del self.inflight[p]
            entry[1].add_done_callback(_consume)  # the next take fences it
        self._retry_at[p] = time.monotonic() + _RETRY_S
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_RELEASE, 1, self.names.lease(p), self.id)

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
            except REDIS_ERRORS as e:
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
        """Drop every partition (an outage, or an error of no partition in particular); their attempts ended
        cleanly: this is no reason to suspect their entries."""
        await self._abandon_inflight()
        for p in list(self.owned):
            proc = self.owned.pop(p)
            if self.guard is not None:
                self.guard.ended_clean(proc)
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
        now = time.monotonic()
        for p in sorted(self.desired - set(self.owned)):
            if self._retry_at.get(p, 0.0) <= now:
                self._retry_at.pop(p, None)
                await self._acquire(p)
        if not self.owned:
            await self._sleep(0.2)
            return
        # One single-stream XREAD per owned partition (a Redis Cluster refuses a multi-stream XREAD whose keys
        # span slots), all in one non-transactional pipeline: one round trip per Redis node, the same code path
        # for a single server and a cluster. Non-blocking; after a round where every partition was empty, wait
        # (2 ms doubling to 20 ms) so an idle worker costs little and a busy one never waits. A partition that
        # isolates suspect entries reads one entry once the previous one is committed.
        alone = False
        for proc in [pr for pr in self.owned.values() if pr.attempt is not None and pr.attempt.isolating]:
            alone = await self._alone(proc) or alone
        owned = [(p, proc) for p, proc in self.owned.items() if proc.attempt is None or not proc.attempt.isolating]
        replies: list[list[tuple[bytes, list[Entry]]] | None] = []
        if owned:
            pipe = self.redis.pipeline(transaction=False)
            for p, proc in owned:
                pipe.xread({self.names.stream(p): proc.read_id}, count=s.read_count)
            replies = cast("list[list[tuple[bytes, list[Entry]]] | None]", await pipe.execute())
        batches: list[tuple[PartitionProcessor, list[Entry]]] = []
        for (p, proc), reply in zip(owned, replies, strict=True):
            for _stream, entries in reply or []:
                if entries and self.owned.get(p) is proc:
                    batches.append((proc, entries))
        if batches:
            assert self.guard is not None
            held = await self.guard.before(batches)  # the attempts are recorded before anything is processed
            for proc, entries in batches:
                if self.owned.get(proc.p) is not proc or proc in held:
                    continue
                try:
                    await proc.process(entries)
                except Exception as e:
                    if transient(e):
                        raise
                    await self._partition_failed(proc, e)
                    continue
                self.metrics.entries += len(entries)
        for p, proc in list(self.owned.items()):
            if p not in self.inflight and proc.commit_due(s.commit_interval_s, s.commit_entries, s.commit_idle_s):
                self._start_commit(proc)
        if batches or alone:
            self._idle_s = _IDLE_MIN_S
        else:
            await self._sleep(self._idle_s)
            self._idle_s = min(self._idle_s * 2, _IDLE_MAX_S)

    async def _alone(self, proc: PartitionProcessor) -> bool:
        """Process the next suspect entry of an isolating partition in a window where nothing else of this worker
        runs: every other commit has landed first, no other partition is processed and housekeeping waits until
        the entry is committed. A crash or an error in the window is the entry's (:mod:`workers.attempts`).
        Returns whether an entry was handled."""
        assert self.guard is not None
        if self.inflight:
            await asyncio.wait([task for _, task in self.inflight.values()])
            await self._reap()
        if self.owned.get(proc.p) is not proc:
            return False
        async with self._quiet:
            reply = cast("list[tuple[bytes, list[Entry]]] | None",
                         await self.redis.xread({self.names.stream(proc.p): proc.read_id}, count=1))
            entries = [e for _stream, got in reply or [] for e in got]
            if not entries:  # nothing more to isolate
                self.guard.leave_isolation(proc)
                return False
            entry_id = entries[0][0].decode()
            poison = await self.guard.alone(proc, entries[0])
            try:
                if poison is not None:
                    proc.poison(poison)
                    self.guard.poisoned += 1
                else:
                    await proc.process(entries)
                await self._commit(proc)
            except FencedError:
                return False
            except Exception as e:
                if transient(e):
                    raise
                await self._partition_failed(proc, e)
                return False
            self.metrics.entries += 1
            self.guard.alone_done(proc, entry_id)
            return True

    # --- housekeeping: trimming, compaction, garbage ---------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        s = self.settings
        last_trim = last_gc = last_orphans = time.monotonic()
        while True:
            _end_if_cancelled()
            await asyncio.sleep(s.compaction_interval_s)
            try:
                for proc in list(self.owned.values()):
                    async with self._quiet:
                        await self._compact(proc)
                if time.monotonic() - last_trim >= s.trim_interval_s:
                    last_trim = time.monotonic()
                    for proc in list(self.owned.values()):
                        async with self._quiet:
                            await self._check_stream(proc)
                            await self._trim(proc)
                if time.monotonic() - last_gc >= s.gc_grace_s / 4:
                    last_gc = time.monotonic()
                    async with self._quiet:
                        await asyncio.to_thread(self.store.collect_garbage, self.objects, s.gc_grace_s)
                # One sweeper for the whole deployment (the owner of partition 0): orphans are rare and a listing of
                # every segment object is the costly part.
                if 0 in self.owned and time.monotonic() - last_orphans >= s.orphan_grace_s / 4:
                    last_orphans = time.monotonic()
                    async with self._quiet:
                        n = await asyncio.to_thread(self.store.collect_orphans, self.objects, s.orphan_grace_s)
                        n += await asyncio.to_thread(collect_archive_orphans, self.store.engine, self.objects,
                                                     s.orphan_grace_s)
                    if n:
                        log.info("worker %s: deleted %d orphan segment or archive object(s) of commits that never "
                                 "happened", self.id, n)
            except FencedError:
                continue
            except REDIS_ERRORS as e:
                log.warning("worker %s: housekeeping failed: %r", self.id, e)
            except Exception:
                log.exception("worker %s: housekeeping failed", self.id)

    async def _trim(self, proc: PartitionProcessor) -> None:
        """Archive (when on) and trim the stream behind the committed offset, within the retention."""
        if self.owned.get(proc.p) is proc:
            await self.keeper.keep(proc.p, proc.epoch, proc.offset)

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
            t_written = time.monotonic()
            table = merge_tables([read_table(self.objects, g["file"]) for g in group])
            rel, size = write_table(self.objects, project, run, table, level=level + 1)
            steps = table.column("_step")
            new = SegmentRef(project, run, level + 1, int(steps[0].as_py()), int(steps[-1].as_py()),
                             table.num_rows, size, rel)
            try:
                if time.monotonic() - t_written > self.settings.orphan_grace_s / 2:
                    raise FencedError(f"partition {p}: compaction of {project}/{run} took too long; not swapped")
                self.store.swap_segments(p, epoch, [int(g["id"]) for g in group], new)
            except FencedError:
                self.objects.delete(rel)
                raise
            return
