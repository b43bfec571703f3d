"""The gateway's promises when Redis fails or the workers fall behind (issue 21, item 6; gateway/write.py):

- Redis unreachable → 503 with ``Retry-After`` (nothing appended), and the gateway recovers when Redis is back;
- a partition's backlog past ``backlog_high_water`` → 429 ``backlog`` with ``Retry-After`` (nothing appended),
  until the workers catch up;
- a request is appended whole or not at all, even when the connection to Redis is cut in the middle of the
  append's command or its reply is lost: afterwards the stream holds all of the request's frames or none.

Every wait is on a condition, with a deadline that only catches a hang.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from support.gateway_frames import FRAMES, body
from support.netproxy import Proxy
from support.servers import RedisServer

from gateway import GatewaySettings
from schemas import FRAME_FIELD, Log, Names, encode_event, encode_frame_raw

pytestmark = pytest.mark.integration

PROJECT, RUN = "p", "r"
URL = f"/api/v1/projects/{PROJECT}/runs/{RUN}/frames"


def frames(first: int, n: int, producer: str = "prod", width: int = 1) -> list[bytes]:
    """``n`` frames of one event each, seq ``first``.., each call with ``width`` keys."""
    return [encode_frame_raw(PROJECT, RUN, producer, first + k,
                             [encode_event(Log(ts=1.0 + first + k, data={f"k{j}": float(first + k + j)
                                                                           for j in range(width)}))])
            for k in range(n)]


def stream_frames(r: redis.Redis, names: Names) -> list[bytes]:
    return [f[FRAME_FIELD] for _, f in r.xrange(names.stream(names.partition(PROJECT, RUN)))]


async def until(cond: Callable[[], Awaitable[Any]], what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60.0
    while True:
        got = await cond()
        if got:
            return got
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# --- 503 when Redis is down --------------------------------------------------------------------------------------


async def test_redis_down_is_503_with_retry_after_and_nothing_appended(
        gw_settings: GatewaySettings, redis_server_factory: Callable[..., RedisServer],
        make_client: Callable[..., Awaitable[Any]]) -> None:
    srv = redis_server_factory()
    s = gw_settings.replace(redis_url=srv.url, retry_after_s=3.0)
    names = s.names
    c = await make_client(s)
    first = frames(0, 3)
    resp = await c.post(URL, data=body(first), headers=FRAMES)
    assert resp.status == 202, await resp.text()

    srv.stop()
    for batch in (frames(3, 3), frames(6, 1)):  # the pooled connection, then a new one: refused
        resp = await c.post(URL, data=body(batch), headers=FRAMES)
        assert resp.status == 503, await resp.text()
        assert resp.headers.get("Retry-After") == "3", dict(resp.headers)
        assert (await resp.json())["error"] == "redis_unavailable"
    blob = b"x" * 100
    sha = hashlib.sha256(blob).hexdigest()
    resp = await c.put(f"/api/v1/blobs/{sha}?project={PROJECT}&run={RUN}", data=blob,
                       headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 503 and resp.headers.get("Retry-After") == "3", await resp.text()

    srv.start()  # the same port, empty (no persistence)
    again = frames(3, 3)
    statuses: list[int] = []

    async def accepted() -> bool:
        resp = await c.post(URL, data=body(again), headers=FRAMES)
        statuses.append(resp.status)
        assert resp.status in (202, 503), await resp.text()
        assert resp.status == 202 or resp.headers.get("Retry-After") == "3"
        return resp.status == 202

    await until(accepted, "the gateway to accept frames again")
    with redis.Redis(port=srv.port) as r:
        assert stream_frames(r, names) == again, statuses  # the refused requests left nothing behind


# --- 429 at the backlog high-water mark ----------------------------------------------------------------------


async def test_backlog_past_the_high_water_mark_is_429_with_retry_after_until_workers_catch_up(
        gw_settings: GatewaySettings, redis_url: str, make_client: Callable[..., Awaitable[Any]],
        worker: Callable[[], Any]) -> None:
    high = 5
    s = gw_settings.replace(backlog_high_water=high, retry_after_s=2.0, backlog_refresh_s=0.1)
    names = s.names
    c = await make_client(s)
    sent: list[bytes] = []
    seq = 0
    refused: dict[str, Any] | None = None
    for _ in range(10 * high):  # no worker runs: the backlog only grows
        f = frames(seq, 1)
        resp = await c.post(URL, data=body(f), headers=FRAMES)
        if resp.status == 429:
            assert resp.headers.get("Retry-After") == "2", dict(resp.headers)
            refused = await resp.json()
            break
        assert resp.status == 202, await resp.text()
        sent += f
        seq += 1
    assert refused is not None, f"{len(sent)} frames accepted over a high-water mark of {high}"
    assert refused["error"] == "backlog", refused
    # 429 only once the backlog passed the mark. (Not exactly at high + 1: a frame appended while a backlog
    # sample reads the committed offsets is missing from the estimate until the next sample.)
    print(f"{len(sent)} frames accepted before the first 429 (high-water mark {high})")
    assert len(sent) > high, len(sent)
    with redis.Redis.from_url(redis_url) as r:
        assert stream_frames(r, names) == sent  # the refused request appended nothing
        resp = await c.post(URL, data=body(frames(seq, 1)), headers=FRAMES)
        assert resp.status == 429, await resp.text()  # still behind

        worker()  # the backlog is committed: accepted again

        async def accepted() -> bool:
            resp = await c.post(URL, data=body(frames(seq, 1)), headers=FRAMES)
            assert resp.status in (202, 429), await resp.text()
            return resp.status == 202

        await until(accepted, "the gateway to accept frames once a worker committed the backlog")
        sent += frames(seq, 1)
        assert stream_frames(r, names) == sent


# --- all or nothing when Redis fails mid-request ------------------------------------------------------------------


class FaultyProxy(Proxy):
    """A TCP proxy in front of Redis that fails the gateway's append (the ``EVAL`` of its Lua script) on purpose:

    - ``measure()``: count the bytes of the next ``EVAL`` command (``request_bytes``), forwarding everything;
    - ``cut_after(n)``: forward the first ``n`` bytes of the next ``EVAL`` command, then cut every connection
      (Redis holds a partial command, which it discards);
    - ``lose_reply()``: forward the next ``EVAL`` whole, then cut every connection when its reply arrives (the
      script ran; the gateway never hears of it).

    ``fired`` is set when a cut happened. Only the gateway talks to Redis through it (its backlog sampler is idle)."""

    MARK = b"\r\nEVAL\r\n"
    #: The append script's first line (the backlog sampler's EVALs are not the append).
    APPEND = b"local n = (#KEYS - 1) / 2"

    def __init__(self, target_port: int) -> None:
        self.mode: str | None = None
        self.limit = 0
        self.request_bytes = 0
        self.in_eval = False
        self.fired = threading.Event()
        super().__init__(target_port)

    def _arm(self, mode: str, limit: int = 0) -> None:
        self.mode, self.limit, self.request_bytes, self.in_eval = mode, limit, 0, False
        self.fired.clear()

    def measure(self) -> None:
        self._arm("measure")

    def cut_after(self, n: int) -> None:
        self._arm("cut", n)

    def lose_reply(self) -> None:
        self._arm("lose_reply")

    def disarm(self) -> None:
        self.mode = None

    async def _chunk(self, data: bytes, dst: asyncio.StreamWriter, reply: bool) -> bool:
        if self.mode is not None and not reply:
            start = 0
            if not self.in_eval:
                k = data.find(self.APPEND)
                if k >= 0:
                    self.in_eval, start = True, max(0, data.rfind(self.MARK, 0, k))
            if self.in_eval:
                n = len(data) - start
                if self.mode == "cut" and self.request_bytes + n >= self.limit:
                    keep = start + self.limit - self.request_bytes
                    dst.write(data[:keep])
                    self.request_bytes = self.limit
                    self.mode = None
                    self._close_all()
                    self.fired.set()
                    return False
                self.request_bytes += n
        elif reply and self.in_eval and self.mode == "measure":
            self.mode = None  # the append's reply: its command is over
        elif reply and self.in_eval and self.mode == "lose_reply":
            self.mode = None
            self._close_all()
            self.fired.set()
            return False
        return True


async def test_an_append_cut_mid_request_is_all_or_nothing(
        gw_settings: GatewaySettings, redis_server_factory: Callable[..., RedisServer],
        make_client: Callable[..., Awaitable[Any]]) -> None:
    """300 frames in one request; the gateway's connection to Redis is cut after 1 byte, half, and all but one
    byte of the append's command (the stream then holds none of them; 503 + ``Retry-After``), and once after the
    command ran, before its reply (all of them, in order; 503 too: the client resends, workers skip the
    duplicates). A request afterwards is appended whole."""
    srv = redis_server_factory()
    proxy = FaultyProxy(srv.port)
    try:
        s = gw_settings.replace(redis_url=proxy.url, retry_after_s=1.0, backlog_refresh_s=3600.0)
        names = s.names
        c = await make_client(s)
        batch = frames(0, 300, width=8)
        with redis.Redis(port=srv.port) as r:
            proxy.measure()
            resp = await c.post(URL, data=body(batch), headers=FRAMES)
            assert resp.status == 202, await resp.text()
            total = proxy.request_bytes
            assert proxy.mode is None, "the append's reply was not seen"
            assert total > len(b"".join(batch)), total  # the whole command was seen
            assert stream_frames(r, names) == batch
            r.delete(names.stream(names.partition(PROJECT, RUN)))
            print(f"the append's command is {total} bytes")

            for cut in (1, total // 2, total - 1):
                proxy.cut_after(cut)
                resp = await c.post(URL, data=body(batch), headers=FRAMES)
                assert proxy.fired.is_set(), f"the cut after {cut} bytes did not happen"
                assert resp.status == 503, (cut, resp.status, await resp.text())
                assert resp.headers.get("Retry-After") == "1"
                assert stream_frames(r, names) == [], f"cut after {cut} of {total} bytes: a partial append"

            proxy.lose_reply()
            resp = await c.post(URL, data=body(batch), headers=FRAMES)
            assert proxy.fired.is_set(), "the reply was not lost"
            assert resp.status == 503 and resp.headers.get("Retry-After") == "1", await resp.text()
            assert stream_frames(r, names) == batch  # the script ran whole

            proxy.disarm()
            resp = await c.post(URL, data=body(batch), headers=FRAMES)
            assert resp.status == 202, await resp.text()
            assert stream_frames(r, names) == batch + batch
    finally:
        proxy.close()
