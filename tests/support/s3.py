"""A real S3-compatible server for tests: moto's standalone server (``moto[server]``, the ``test`` extra) started as
its own process on a free loopback port, so faults are real (``kill -9``, ``SIGSTOP``), plus the storage fixture
that runs history tests on both backends.

- :class:`MotoServer`: start/stop/pause/resume one server process; :func:`make_bucket` / :func:`drop_bucket`.
- ``s3_server`` (session): one shared server; each test uses a bucket of its own, dropped after.
- ``storage``: a :class:`Storage` with the :class:`~schemas.objects.ObjectStore`, the ``STEPLINE_STORAGE_URL``
  value and the environment worker processes need to reach it; ``local`` unless the test runs on both backends
  (:func:`parametrize_storage`: marked ``both_backends``, or naming ``storage`` itself).

Without moto the S3 cases skip with the reason, except under ``CI=true`` where they fail (:func:`need`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from schemas.objects import ObjectStore, open_store, parse_storage_url
from support.netproxy import Proxy
from support.servers import free_port, need

#: moto accepts any credentials; workers and readers get these through the usual AWS variables.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@dataclass
class MotoServer:
    """moto's S3 server in a child process on ``127.0.0.1:port``."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        out = open(self.log, "ab") if self.log else None  # noqa: SIM115 - the child keeps its own copy
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-p", str(self.port), "-H", "127.0.0.1"],
                stdout=out or subprocess.DEVNULL,
                stderr=out or subprocess.DEVNULL,
                env={**os.environ, **CREDENTIALS},
            )
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server on port {self.port} did not answer in {timeout:.0f} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a bucket that hangs)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The AWS variables a process needs to reach this server (or ``endpoint``, e.g. a proxy in front)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint or self.endpoint}

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region="us-east-1",
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )


def start_moto(log: Path | None = None) -> MotoServer:
    """A started server, or skip (fail under CI) with the reason it cannot start."""
    try:
        import moto.server  # noqa: F401 - only to say why when it is missing
    except ImportError as e:
        need(f"moto[server] is not installed (the test extra): {e}")
    srv = MotoServer(log=log)
    try:
        srv.start()
    except (RuntimeError, OSError) as e:
        need(f"the moto S3 server cannot start: {e}")
    return srv


def make_bucket(srv: MotoServer) -> str:
    name = "t-" + uuid.uuid4().hex[:12]
    srv.filesystem().create_dir(name)
    return name


def drop_bucket(srv: MotoServer, name: str) -> None:
    with contextlib.suppress(OSError):
        srv.filesystem().delete_dir(name)


@dataclass
class Storage:
    """Where a test's workers and readers keep segments and blobs."""

    kind: str  # "local" or "s3"
    objects: ObjectStore
    url: str | None  # STEPLINE_STORAGE_URL (None: the data directory)
    env: dict[str, str]  # for worker and gateway processes (empty for local)
    server: MotoServer | None = None

    def settings(self) -> dict[str, str | None]:
        """Settings overrides (``WorkerSettings.from_env(**storage.settings(), ...)``)."""
        return {"storage_url": self.url, "s3_endpoint_url": self.server.endpoint if self.server else None}

    def elsewhere(self, data_dir: Path, prefix: str) -> Storage:
        """Another, empty storage location of the same kind, for a second deployment (a replay): the data
        directory ``data_dir``, or the prefix ``prefix`` of the same bucket. A replay refuses a location that holds
        segments already (the live deployment's orphan sweep would delete its segments)."""
        if self.server is None or self.url is None:
            return Storage("local", open_store(parse_storage_url(None, data_dir)), None, {})
        return s3_storage(self.server, self.url.removeprefix("s3://").split("/", 1)[0], prefix=prefix, quick=False)


def s3_storage(srv: MotoServer, bucket: str, prefix: str = "hist", endpoint: str | None = None,
               quick: bool = True) -> Storage:
    """A bucket's storage. ``quick``: the test's own client gives up on a request after 5 s (a fault test that
    stops the server sees the outage in seconds); otherwise it waits as long as the workers' do (the product's
    defaults), so a moto server slowed by a loaded machine is not mistaken for an outage."""
    url = f"s3://{bucket}/{prefix}"
    env = srv.env(endpoint)
    target = parse_storage_url(url, Path("."), environ=env)
    timeouts = {"connect_timeout_s": 2.0, "request_timeout_s": 5.0} if quick else {}
    objects = open_store(target, environ=env, **timeouts)
    return Storage("s3", objects, url, {**env, "STEPLINE_STORAGE_URL": url}, srv)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    srv = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield srv
    srv.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> Iterator[str]:
    name = make_bucket(s3_server)
    yield name
    drop_bucket(s3_server, name)


#: The marker that runs a test on both storage backends (``local`` and ``s3``) through the ``storage`` fixture, even
#: when the test does not name ``storage`` itself (the ``fleet`` and ``worker`` fixtures and the gateway's settings
#: depend on it). A test that names ``storage`` among its arguments runs on both without it.
BOTH_BACKENDS = "both_backends"
BACKENDS = ("local", "s3")


def parametrize_storage(metafunc: pytest.Metafunc) -> None:
    """``pytest_generate_tests``: the ``storage`` parameter for tests marked :data:`BOTH_BACKENDS` or asking for
    ``storage`` by name; every other test that reaches ``storage`` through a fixture gets the data directory."""
    if "storage" not in metafunc.fixturenames:
        return
    named = "storage" in inspect.signature(metafunc.function).parameters
    if named or metafunc.definition.get_closest_marker(BOTH_BACKENDS) is not None:
        metafunc.parametrize("storage", BACKENDS, indirect=True)


@pytest.fixture
def storage(request: pytest.FixtureRequest, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Storage:
    """History storage: the data directory, or (parameter ``s3``, :func:`parametrize_storage`) a bucket of its own
    on the session's moto server. For the bucket, ``STEPLINE_STORAGE_URL`` and the AWS variables are set for the
    test, so every part it starts (worker processes, in-process workers, gateways, ``Api``) uses the bucket without
    being told."""
    if getattr(request, "param", "local") == "local":
        monkeypatch.delenv("STEPLINE_STORAGE_URL", raising=False)
        return Storage("local", open_store(parse_storage_url(None, data_dir)), None, {})
    srv: MotoServer = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    st = s3_storage(srv, bucket, quick=False)
    for k, v in st.env.items():
        monkeypatch.setenv(k, v)
    return st


class S3FaultProxy(Proxy):
    """A TCP proxy in front of the S3 server (:class:`support.netproxy.Proxy`: cut, stall, drop) that also speaks
    just enough HTTP to fail requests the way a bucket does:

    - :meth:`slow_down` answers the next ``n`` PUTs with ``503 SlowDown`` (S3's throttling reply), unforwarded;
    - :meth:`cut_puts` forwards the next ``n`` PUTs only half-way and then closes both sides (a PUT failing
      half-way: the server never gets the whole object).

    A request starts with its method in a fresh write of the client; a Parquet body starts with ``PAR1``, so a chunk
    beginning with ``PUT /`` is a request head.
    """

    _BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )
    SLOWDOWN = (
        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
    )

    def __init__(self, target_port: int) -> None:
        self._slowdowns = 0
        self._cuts = 0
        self.injected = 0
        self._clients: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}  # upstream writer -> client writer
        super().__init__(target_port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def slow_down(self, n: int) -> None:
        self._slowdowns = n

    def cut_puts(self, n: int) -> None:
        self._cuts = n

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
        self._clients[up_w] = writer
        await asyncio.gather(
            self._pipe(reader, up_w, reply=False), self._pipe(up_r, writer, reply=True), return_exceptions=True
        )
        self._clients.pop(up_w, None)
        for w in (writer, up_w):
            self._conns.discard(w)
            w.transport.abort()

    async def _chunk(self, data: bytes, dst: asyncio.StreamWriter, reply: bool) -> bool:
        if not await super()._chunk(data, dst, reply):
            return False
        if reply or not data.startswith(b"PUT /"):
            return True
        client = self._clients.get(dst)
        if self._slowdowns > 0 and client is not None:
            self._slowdowns -= 1
            self.injected += 1
            client.write(self.SLOWDOWN)
            await client.drain()
            return False
        if self._cuts > 0:
            self._cuts -= 1
            self.injected += 1
            dst.write(data[: max(1, len(data) // 2)])  # the head and at most half of what came with it
            await dst.drain()
            return False
        return True
