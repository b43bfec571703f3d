"""The embedded all-in-one mode: a private Redis (a ``redis-server`` child with AOF under ``<data-dir>/redis``
when the binary is on PATH, else fakeredis's in-process TCP server), worker child processes, and everything
stopped and reaped on the way out. Used by ``stepline up`` and ``stepline demo``.

``stepline up`` also writes the record of its stack (:mod:`schemas.local`: a temporary file in the same folder,
fsync'd, renamed over the record, so a reader sees the old record or the new one, never half of one) and removes it
on exit, unless another ``up`` has replaced it since.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import SettingsError
from schemas.local import LocalStack, encode_stack, parse_stack, stack_path
from workers.settings import WorkerSettings


def write_stack_record(stack: LocalStack) -> Path:
    """Write the record of this user's running stack, atomically; returns its path."""
    path = stack_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(encode_stack(stack))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def remove_stack_record(path: Path, pid: int) -> None:
    """Remove the record at ``path`` if it is still the one process ``pid`` wrote."""
    with contextlib.suppress(OSError, ValueError):
        if parse_stack(path.read_bytes()).pid == pid:
            path.unlink()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A Redis for the embedded mode: a ``redis-server`` child, or fakeredis's TCP server in a thread."""

    url: str
    kind: str
    proc: subprocess.Popen[bytes] | None = None
    server: Any = None
    thread: threading.Thread | None = None
    lock: int | None = None  # the data directory's lock (:func:`lock_data_dir`), released on close

    def close(self) -> None:
        try:
            self._stop()
        finally:
            if self.lock is not None:
                os.close(self.lock)  # closing the descriptor releases the flock
                self.lock = None

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(5)


def lock_data_dir(data_dir: Path) -> int:
    """Take the data directory for one embedded stack; returns the descriptor holding the lock.

    An embedded stack's worker commits stream offsets of its private Redis into the data directory's metadata:
    a second stack on the same directory (``stepline demo`` while ``stepline up`` runs in the same folder) would
    fence the first one's worker and make it read its offsets against the wrong stream (seen: "DATA LOSS"), and
    both Redis servers would write one AOF folder. So the second one is refused, with what to do instead.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "embedded.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SettingsError(
            f"{data_dir} is in use by another embedded stack (a running stepline up or demo, pid {holder}); "
            "stop it, or pass --data-dir to use another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def start_embedded_redis(data_dir: Path, *, prefer_fake: bool = False) -> EmbeddedRedis:

    lock = lock_data_dir(data_dir)
    try:
        emb = _start_embedded_redis(data_dir, prefer_fake)
    except BaseException:
        os.close(lock)
        raise
    emb.lock = lock
    return emb


def _start_embedded_redis(data_dir: Path, prefer_fake: bool) -> EmbeddedRedis:
    import redis

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    binary = shutil.which("redis-server")
    if binary and not prefer_fake:
        rdir = data_dir / "redis"
        rdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir.resolve()),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--logfile", str((rdir / "redis.log").resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        emb = EmbeddedRedis(url=url, kind="redis-server", proc=proc)
    else:
        from fakeredis import TcpFakeServer

        server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
        thread.start()
        emb = EmbeddedRedis(url=url, kind="fakeredis", server=server, thread=thread)
    deadline = time.monotonic() + 20
    while True:
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=0.5) as c:
                c.ping()
            return emb
        except redis.RedisError:
            if time.monotonic() > deadline or (emb.proc is not None and emb.proc.poll() is not None):
                emb.close()
                raise RuntimeError(f"the embedded Redis ({emb.kind}) did not start on port {port}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def worker_processes(settings: WorkerSettings, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker child processes (real parallelism on several cores); SIGTERM and wait on exit."""
    procs = []
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "workers", "--redis-url", settings.redis_url, "--namespace", settings.namespace,
           "--partitions", str(settings.partitions), "--data-dir", str(settings.data_dir),
           "--commit-interval", str(settings.commit_interval_s)]
    if settings.db_url:
        cmd += ["--db-url", settings.db_url]
    for flag, value in (("--storage-url", settings.storage_url), ("--s3-endpoint-url", settings.s3_endpoint_url),
                        ("--s3-region", settings.s3_region)):
        if value:
            cmd += [flag, value]
    log_path = settings.data_dir / "workers.log"
    with open(log_path, "ab") as logf:
        try:
            for _ in range(count):
                procs.append(subprocess.Popen(cmd, env=env, stdout=logf, stderr=logf))
            yield procs
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(settings.drain_timeout_s + 5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
