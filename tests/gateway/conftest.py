"""Gateway fixtures: settings under the test's namespace, API keys, an in-process server, real gateway processes,
real worker processes. Everything is stopped and cleaned up after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.gateway_server import GatewayTestServer
from support.s3 import Storage
from support.worker_harness import WorkerFleet

from gateway import GatewaySettings, create_app
from gateway.keys import KeyStore, writer_engine
from gateway.serve import GatewayRunner

PARTITIONS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gw_settings(redis_url: str, namespace: str, data_dir: Path, storage: Storage) -> GatewaySettings:
    """Settings under the test's namespace; history where ``storage`` keeps it (a bucket in the ``s3`` case of a
    test marked ``both_backends``, whose variables the worker and gateway processes also inherit)."""
    return GatewaySettings(redis_url=redis_url, namespace=namespace, partitions=PARTITIONS, data_dir=data_dir,
                           key_cache_s=0.0, backlog_refresh_s=0.1, storage_url=storage.url,
                           s3_endpoint_url=storage.server.endpoint if storage.server else None)


@dataclass
class Keys:
    """Tokens by role: keys of project ``pa`` with each scope, one revoked, and an admin key of ``pb``."""

    store: KeyStore
    tokens: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def keys(gw_settings: GatewaySettings) -> Iterator[Keys]:
    engine = writer_engine(gw_settings.metadata_url)
    store = KeyStore(engine)
    k = Keys(store)
    for role, project, scopes in (("read", "pa", {"read"}), ("write", "pa", {"write"}), ("admin", "pa", {"admin"}),
                                  ("revoked", "pa", {"admin"}), ("other", "pb", {"admin", "read", "write"})):
        key, token = store.create(project, frozenset(scopes))
        k.tokens[role] = token
        if role == "revoked":
            assert store.revoke(key.id)
    k.tokens["wrong"] = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    yield k
    engine.dispose()


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[[GatewaySettings], Awaitable[Client]]]:
    """``await make_client(settings)`` → a started aiohttp TestClient of ``create_app(settings)``, served as
    ``stepline gateway`` serves it (:class:`gateway.serve.GatewayRunner`)."""
    clients: list[Client] = []

    async def make(settings: GatewaySettings) -> Client:
        c: Client = TestClient(GatewayTestServer(create_app(settings)))
        await c.start_server()
        clients.append(c)
        return c

    yield make
    for c in clients:
        try:
            await asyncio.wait_for(asyncio.shield(c.close()), 5)
        except TimeoutError:
            for t in asyncio.all_tasks():
                t.print_stack()
            raise


class ThreadGateway:
    """The app served by the gateway's runner on a free port in a thread with its own loop (for sync clients)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.port = free_port()
        self.settings = settings.replace(port=self.port)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "gateway thread did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        runner = GatewayRunner(create_app(self.settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def thread_gateway(gw_settings: GatewaySettings) -> Iterator[Callable[..., ThreadGateway]]:
    made: list[ThreadGateway] = []

    def make(settings: GatewaySettings | None = None) -> ThreadGateway:
        g = ThreadGateway(settings or gw_settings)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


@dataclass
class GatewayProc:
    """A real ``python -m gateway`` process on a fixed port (so it can be killed and started again)."""

    settings: GatewaySettings
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        s = self.settings
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(self.port),
                 "--redis-url", s.redis_url, "--namespace", s.namespace, "--partitions", str(s.partitions),
                 "--data-dir", str(s.data_dir), *self.extra],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    return
            time.sleep(0.05)
        raise AssertionError(f"gateway did not start:\n{self.log.read_text(errors='replace')}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def gateway_proc(gw_settings: GatewaySettings, tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    made: list[GatewayProc] = []

    def make(*extra: str) -> GatewayProc:
        g = GatewayProc(gw_settings, tmp_path / f"gateway-{len(made)}.log", extra=list(extra))
        g.start()
        made.append(g)
        return g

    yield make
    for g in made:
        g.kill9()


@pytest.fixture
def worker(gw_settings: GatewaySettings, tmp_path: Path, storage: Storage) -> Iterator[Callable[[], WorkerFleet]]:
    """``worker()`` starts one real worker process (``python -m workers``) on the test's namespace; killed after."""
    s = gw_settings
    fleet = WorkerFleet(redis_url=s.redis_url, namespace=s.namespace, data_dir=s.data_dir,
                        log_dir=tmp_path / "worker-logs", partitions=s.partitions, commit_interval_s=0.1,
                        objects=storage.objects)

    def make() -> WorkerFleet:
        fleet.start()
        return fleet

    try:
        yield make
    finally:
        fleet.close()
