"""The browser tests' stack: one in-process worker and the gateway (AppRunner on a free port), each in a thread
with its own event loop, on the test's Redis namespace and data directory; plus SDK runs logged into it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

import ingest
from gateway import GatewaySettings, create_app
from history.query import Api, RunNotFound
from workers.settings import WorkerSettings
from workers.worker import Worker

PARTITIONS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _LoopThread:
    """Runs ``main(stop_event)`` in a thread with its own event loop; ``close()`` sets the event and joins."""

    def __init__(self, name: str, main: Callable[[asyncio.Event, threading.Event], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.errors: list[BaseException] = []
        self._stop: asyncio.Event | None = None
        self._main = main
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), f"{name} did not start within 30 s: {self.errors}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def go() -> None:
            self._stop = asyncio.Event()
            await self._main(self._stop, self.ready)

        try:
            self.loop.run_until_complete(go())
        except BaseException as e:  # reported by close(), not lost in a thread
            self.errors.append(e)
            self.ready.set()
        # Nothing may outlive the server it belongs to: a task still pending here would hold its connections past
        # the loop's close (they surface later as ResourceWarnings in whichever test the garbage collector runs in).
        left = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        if left:
            self.errors.append(AssertionError(f"{self.thread.name} left tasks running: {left}"))

    def close(self) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop"
        self.loop.close()
        assert not self.errors, self.errors


@dataclass
class Stack:
    redis_url: str
    namespace: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    threads: list[_LoopThread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Stack:
        ws = WorkerSettings(redis_url=self.redis_url, namespace=self.namespace, partitions=PARTITIONS,
                            data_dir=self.data_dir, worker_id="browser", commit_interval_s=0.1, lease_ttl_s=3.0,
                            commit_entries=20_000, read_count=1000)
        worker = Worker(ws, handle_signals=False)

        async def run_worker(stop: asyncio.Event, ready: threading.Event) -> None:
            task = asyncio.create_task(worker.async_run())
            ready.set()
            await stop.wait()
            worker.stop()
            await task

        gs = GatewaySettings(redis_url=self.redis_url, namespace=self.namespace, partitions=PARTITIONS,
                             data_dir=self.data_dir, port=self.port, key_cache_s=0.0, rate_per_s=0)

        async def run_gateway(stop: asyncio.Event, ready: threading.Event) -> None:
            runner = web.AppRunner(create_app(gs), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", self.port).start()
                ready.set()
                await stop.wait()
            finally:
                await runner.cleanup()

        self.threads.append(_LoopThread("browser-worker", run_worker))
        self.threads.append(_LoopThread("browser-gateway", run_gateway))
        return self

    def close(self) -> None:
        for t in reversed(self.threads):
            t.close()

    def init(self, project: str, run_id: str, **kw: Any) -> ingest.Run:
        return ingest.init(project=project, id=run_id, redis_url=self.redis_url, namespace=self.namespace,
                           data_dir=self.data_dir / "client", settings={"partitions": PARTITIONS}, **kw)

    def wait(self, path: str, cond: Callable[[Any], bool], timeout: float = 30.0, what: str = "") -> Any:
        """Wait until the committed run satisfies ``cond(RunView)``."""
        deadline = time.monotonic() + timeout
        with Api(self.data_dir) as api:
            while True:
                try:
                    view = api.run(path)
                    if cond(view):
                        return view
                except RunNotFound:
                    pass
                assert time.monotonic() < deadline, f"{path}: {what or 'condition'} not met after {timeout:.0f} s"
                time.sleep(0.05)

    def get_json(self, path: str, api_key: str | None = None, **params: Any) -> Any:
        """A read API call as the page makes it (for comparing what the page drew with what the API says)."""
        q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        req = urllib.request.Request(f"{self.url}api/v1/{path}" + (f"?{q}" if q else ""))
        if api_key:
            req.add_header("Authorization", f"Bearer {api_key}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"GET {req.full_url}: {e.code} {e.read()!r}") from None
