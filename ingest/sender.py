"""Transports: move a run's frames from its outbox into Redis (or the HTTP gateway), in order, surviving outages.

Two transports share one core (:class:`Core`: batcher → outbox → pipelined send):

- :class:`ThreadSender` — a daemon thread per run with the synchronous redis-py client, for ordinary
  (synchronous) training loops. ``log()`` never waits for it and never does network I/O.
- :class:`AsyncSender` — an asyncio task with ``redis.asyncio``; file I/O (packing under memory pressure, the
  spill file) runs in worker threads so the event loop never blocks on disk.

Delivery: each round trip is one ``MULTI``/``EXEC`` holding, per frame, ``SET blob NX EX ttl`` for every media
blob it references and then ``XADD stream * f <frame>``. All keys of a run share the partition's hash tag, so the
transaction stays in one Cluster slot. Frames leave the outbox only after ``EXEC`` succeeded; on any error the
whole batch is sent again later (at-least-once; workers skip duplicates by ``(producer, seq)``), oldest first,
so a producer's frames enter the stream in order. While Redis fails, sends are retried with exponential backoff
(``backoff_initial_s`` doubling up to ``backoff_max_s``); after ``spill_after_s`` of failure, or past the
memory cap, frames go to the spill file (see :mod:`ingest.spill`).

With ``settings.url`` the same core posts each batch to the HTTP gateway instead (:mod:`ingest.http`): one
request per batch, accepted whole or refused whole, so the outbox, ordering, backoff and spill guarantees are the
same; a ``Retry-After`` from the gateway (429, 503) pushes the next attempt at least that far out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas import FRAME_FIELD
from schemas.clients import REDIS_ERRORS, AsyncRedis, SyncRedis, async_redis, sync_redis

from .batch import Batcher
from .http import HttpTransport, wait_hint
from .settings import ClientSettings
from .spill import Entry, Outbox

logger = logging.getLogger("ingest")

#: An idle sender still looks around this often (seconds), as a safety net.
_IDLE_WAIT_S = 1.0

#: What a failed round trip can raise: Redis errors (connection, timeout, error replies) and socket errors.
SEND_ERRORS: tuple[type[Exception], ...] = REDIS_ERRORS


def _fail_fast(settings: ClientSettings) -> dict[str, Any]:
    """Client options without hidden retries: the sender owns retrying and ordering."""
    return {"socket_connect_timeout": settings.connect_timeout_s, "socket_timeout": settings.socket_timeout_s}


def sync_client(settings: ClientSettings) -> SyncRedis:
    """A sync client that fails fast (no hidden retries: the sender owns retrying and ordering)."""
    return sync_redis(settings.redis_url, retry=Retry(NoBackoff(), 0), **_fail_fast(settings))


def sync_transport(settings: ClientSettings, batcher: Batcher) -> SyncRedis | HttpTransport:
    """The run's synchronous transport: the gateway when ``settings.url`` is set, else Redis."""
    if settings.url is not None:
        return HttpTransport(settings, batcher.project, batcher.run)
    return sync_client(settings)


def async_client(settings: ClientSettings) -> AsyncRedis:
    from redis.asyncio.retry import Retry as AsyncRetry

    return async_redis(settings.redis_url, retry=AsyncRetry(NoBackoff(), 0), **_fail_fast(settings))


def needs_transaction(batch: list[Entry]) -> bool:
    """A lone frame without blobs is one XADD, atomic by itself: MULTI/EXEC would only add two commands and
    their replies to the round trip. Anything more goes all-or-nothing, so frames never land out of order."""
    return len(batch) > 1 or bool(batch[0].blobs)


def queue_batch(pipe: Any, batch: list[Entry], blob_ttl_s: float) -> None:
    """Queue one batch on a (sync or async) pipeline: blobs before the frame that references them."""
    ttl = max(1, int(blob_ttl_s))  # Redis's EX takes whole seconds
    for e in batch:
        for key, data in e.blobs.items():
            pipe.set(key, data, nx=True, ex=ttl)
        pipe.xadd(e.stream, {FRAME_FIELD: e.frame})


class Core:
    """Batcher + outbox + health of one run; the part both transports share."""

    def __init__(self, batcher: Batcher, outbox: Outbox, settings: ClientSettings) -> None:
        self.batcher = batcher
        self.outbox = outbox
        self.settings = settings
        self.sent_frames = 0
        self.sent_bytes = 0
        self.failures = 0
        self.down_since: float | None = None
        self.next_attempt = 0.0
        self._delay = settings.backoff_initial_s
        #: The stream id of the last frame Redis (or the gateway) acknowledged (``run.finish()`` waits until a
        #: worker's commit reaches it); None before the first acknowledgement, or from a gateway that names none.
        self.last_id: str | None = None

    def pump(self) -> int:
        """Pack pending calls into frames and move them to the outbox; returns the number of frames."""
        with self.batcher.pack_lock:
            entries = self.batcher.pack()
            self.outbox.put(entries)
        return len(entries)

    def peek(self) -> list[Entry]:
        return self.outbox.peek(self.settings.batch_max_bytes)

    def on_success(self, batch: list[Entry], replies: list[Any] | None = None) -> None:
        """``batch`` is acknowledged; ``replies`` are the pipeline's (the last one is the last frame's XADD id)."""
        if replies:
            last = replies[-1]
            self.last_id = last.decode() if isinstance(last, bytes) else str(last)
        self.outbox.ack(batch[-1].idx)
        self.sent_frames += len(batch)
        self.sent_bytes += sum(len(e.frame) for e in batch)
        if self.down_since is not None:
            logger.warning("stepline: Redis is reachable again after %.1f s; resending in order",
                        time.monotonic() - self.down_since)
        self.down_since = None
        self._delay = self.settings.backoff_initial_s
        self.next_attempt = 0.0

    def on_failure(self, err: BaseException) -> None:
        now = time.monotonic()
        self.failures += 1
        if self.down_since is None:
            self.down_since = now
            logger.warning("stepline: cannot send to Redis (%s: %s); retrying with backoff",
                        type(err).__name__, err)
        # Jitter keeps many clients of one dead server from reconnecting in lockstep.
        self.next_attempt = now + self._delay * (0.5 + random.random() / 2)
        hint = wait_hint(err)
        if hint is not None:  # the gateway said when to come back (429/503 Retry-After)
            self.next_attempt = max(self.next_attempt, now + hint)
        self._delay = min(self._delay * 2, self.settings.backoff_max_s)

    def should_spill(self) -> bool:
        return (
            self.down_since is not None
            and time.monotonic() - self.down_since >= self.settings.spill_after_s
            and self.outbox.memory_frames > 0
        )

    def send_sync(self, client: SyncRedis | HttpTransport) -> int:
        """One round trip; returns frames acknowledged (0 if nothing to send). Raises on failure."""
        batch = self.peek()
        if not batch:
            return 0
        if isinstance(client, HttpTransport):
            n = client.send(batch)
            self.last_id = client.last_id or self.last_id
            self.on_success(batch[:n])
            return n
        pipe = client.pipeline(transaction=needs_transaction(batch))
        queue_batch(pipe, batch, self.settings.blob_ttl_s)
        replies = pipe.execute()
        self.on_success(batch, replies)
        return len(batch)

    def drain_sync(self, client: SyncRedis | HttpTransport, deadline: float | None) -> None:
        """Send until the outbox is empty, or a failure, or the backoff says wait."""
        while time.monotonic() >= self.next_attempt:
            if deadline is not None and time.monotonic() >= deadline:
                return
            try:
                if self.send_sync(client) == 0:
                    return
            except SEND_ERRORS as e:
                self.on_failure(e)
                if self.should_spill():
                    self.outbox.spill()
                return


class ThreadSender:
    """A daemon thread that packs every ``flush_interval_s`` and sends; one per run."""

    def __init__(self, core: Core, client: SyncRedis | HttpTransport | None = None) -> None:
        self.core = core
        self._owns_client = client is None
        self._client = client if client is not None else sync_transport(core.settings, core.batcher)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._deadline: float | None = None
        core.batcher.on_first = self.wake
        self._thread = threading.Thread(
            target=self._run, name=f"stepline-sender-{core.batcher.run}", daemon=True
        )
        self._thread.start()

    @property
    def refused_frames(self) -> int:
        """Frames the gateway refused for good (HTTP transport only; Redis never refuses a well-formed XADD)."""
        return int(getattr(self._client, "refused_frames", 0))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        core = self.core
        interval = core.settings.flush_interval_s
        while True:
            closing = self._closing.is_set()
            try:
                core.pump()
                core.drain_sync(self._client, self._deadline if closing else None)
                if core.should_spill():
                    core.outbox.spill()
            except Exception:  # the sender must outlive any bug in one batch; it retries after backoff
                logger.exception("stepline: sender error")
                core.on_failure(RuntimeError("sender error"))
            if closing:
                left = len(core.outbox) + core.batcher.sealed_rows + len(core.batcher.rows)
                if left == 0 or (self._deadline is not None and time.monotonic() >= self._deadline):
                    return
            wait = interval
            if core.next_attempt:
                wait = max(0.0, min(interval, core.next_attempt - time.monotonic()))
            elif closing:
                wait = 0.0
            elif self._idle():
                # Nothing to do: sleep until the first call is logged (Batcher.on_first), a block is sealed or
                # close(); then let calls gather for one interval. A hundred idle runs cost nothing this way.
                self._wake.wait(_IDLE_WAIT_S)
                self._wake.clear()
                if self._closing.is_set():
                    continue
            self._wake.wait(wait)
            self._wake.clear()

    def _idle(self) -> bool:
        b = self.core.batcher
        return len(self.core.outbox) == 0 and not b.items and not b.rows

    def close(self, timeout: float) -> None:
        """Flush and stop: returns when everything is acknowledged or ``timeout`` seconds have passed."""
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout + self.core.settings.socket_timeout_s + 1.0)
        if self._thread.is_alive():  # stuck in a network call past its socket timeout: leave it, it is a daemon
            logger.warning("stepline: sender thread of run %s did not stop in time", self.core.batcher.run)
        if self._owns_client:
            self._client.close()


class AsyncSender:
    """An asyncio task that packs every ``flush_interval_s`` and sends with ``redis.asyncio``."""

    def __init__(self, core: Core, client: AsyncRedis | None = None) -> None:
        self.core = core
        self._owns_client = client is None
        self._http: HttpTransport | None = None
        if client is None and core.settings.url is not None:
            # http.client in a worker thread: the loop never blocks, and one transport serves both senders.
            self._http = HttpTransport(core.settings, core.batcher.project, core.batcher.run)
        self._client = client if client is not None else async_client(core.settings)
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._run())

    @property
    def refused_frames(self) -> int:
        """Frames the gateway refused for good (HTTP transport only)."""
        return self._http.refused_frames if self._http is not None else 0

    def wake(self) -> None:
        # log() may run outside the loop's thread; only touch the event from inside the loop.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._task is not None and self._task.get_loop() is loop:
            self._wake.set()

    async def _pump(self) -> None:
        # Packing may spill to disk past the memory cap: keep it off the event loop.
        await asyncio.to_thread(self.core.pump)

    async def _send_some(self, deadline: float | None) -> None:
        core = self.core
        async with self._send_lock:
            while time.monotonic() >= core.next_attempt:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                batch = await asyncio.to_thread(core.peek)
                if not batch:
                    return
                replies: list[Any] | None = None
                try:
                    if self._http is not None:
                        n = await asyncio.to_thread(self._http.send, batch)
                        core.last_id = self._http.last_id or core.last_id
                        batch = batch[:n]
                    else:
                        pipe = self._client.pipeline(transaction=needs_transaction(batch))
                        queue_batch(pipe, batch, core.settings.blob_ttl_s)
                        replies = await pipe.execute()
                except SEND_ERRORS as e:
                    core.on_failure(e)
                    if core.should_spill():
                        await asyncio.to_thread(core.outbox.spill)
                    return
                await asyncio.to_thread(core.on_success, batch, replies)

    async def _run(self) -> None:
        interval = self.core.settings.flush_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self._pump()
                await self._send_some(None)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("stepline: async sender error")
                self.core.on_failure(RuntimeError("sender error"))

    # ``timeout`` bounds the wait; it is not a cancellation (what is unsent stays queued).
    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Pack and send until everything is acknowledged (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        core = self.core
        while True:
            await self._pump()
            await self._send_some(deadline)
            if len(core.outbox) == 0 and not core.batcher.items and not core.batcher.rows:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            await asyncio.sleep(max(0.001, min(core.settings.flush_interval_s, core.next_attempt - now)))

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # Re-raise if *we* are being cancelled, not just the task we stopped.
                cur = asyncio.current_task()
                if cur is not None and cur.cancelling():
                    raise
        try:
            await self.flush(timeout)
        finally:
            if self._owns_client:
                await self._client.aclose()
            if self._http is not None:
                await asyncio.to_thread(self._http.close)
