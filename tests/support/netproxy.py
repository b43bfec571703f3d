"""A small asyncio TCP proxy for network faults between a client (SDK or worker) and Redis.

Runs its own event loop in a daemon thread; the test drives it from outside:

- :meth:`Proxy.cut` closes every open connection (both directions, mid-command or mid-reply);
- :meth:`Proxy.stall` stops forwarding for a while (bytes wait in the kernel; clients time out or not);
- :meth:`Proxy.drop` refuses new connections and closes open ones until :meth:`Proxy.heal`;
- :meth:`Proxy.lose_replies` forwards requests but cuts each connection when the server's reply arrives, so the
  command ran and the client never heard of it (a resend follows: the duplicate-frame case).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._conns: set[asyncio.StreamWriter] = set()
        self._stalled_until = 0.0
        self._dropping = False
        self._lose_replies = 0  # how many replies still to lose
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"proxy-{self.port}")
        self._thread.start()
        self._ready.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # --- faults (called from the test's thread) ------------------------------------------------------------

    def cut(self) -> None:
        self._call(self._close_all)

    def stall(self, seconds: float) -> None:
        self._stalled_until = time.monotonic() + seconds

    def drop(self) -> None:
        self._dropping = True
        self._call(self._close_all)

    def lose_replies(self, n: int) -> None:
        self._lose_replies = n

    def heal(self) -> None:
        self._dropping = False
        self._stalled_until = 0.0
        self._lose_replies = 0

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._close_all()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self._thread.join(5)

    # --- the loop ----------------------------------------------------------------------------------------------

    def _call(self, fn: Any) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(5)

    def _close_all(self) -> None:
        for w in list(self._conns):
            w.transport.abort()
        self.cuts += bool(self._conns)
        self._conns.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._dropping:
            writer.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update((writer, up_w))
        await asyncio.gather(self._pipe(reader, up_w, reply=False), self._pipe(up_r, writer, reply=True),
                             return_exceptions=True)
        for w in (writer, up_w):
            self._conns.discard(w)
            w.transport.abort()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, reply: bool) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data or not await self._chunk(data, dst, reply):
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()

    async def _chunk(self, data: bytes, dst: asyncio.StreamWriter, reply: bool) -> bool:
        """Whether to forward ``data`` (False ends this direction of the connection): where faults are injected.
        ``reply``: the data comes from the server."""
        wait = self._stalled_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self._dropping:
            return False
        if reply and self._lose_replies > 0:
            self._lose_replies -= 1
            self.cuts += 1
            return False  # the server did the work; the client never hears of it
        return True
