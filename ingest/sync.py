"""Resend spill files left behind by runs that finished (or died) while Redis was unreachable.

``sync_path(path, redis_url)`` takes one ``.spill`` file or a directory (searched recursively) and, per file and
in record order, sends each frame (its media blobs first, ``SET NX EX``) with ``XADD`` in ``MULTI``/``EXEC``
batches, then deletes the file. Guarantees: frames are resent in their original order; a file is deleted only
after every one of its frames is acknowledged; a file still locked by a live producer is skipped (its owner
resends it itself); resending a frame twice is harmless (workers skip duplicates by ``(producer, seq)``). A torn
record at the end of a file (the process died mid-write) is ignored with a warning.

``main(argv)`` is the body of ``stepline sync PATH [--redis-url URL]``.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import redis

from schemas.clients import SyncRedis

from .sender import SEND_ERRORS, queue_batch, sync_client
from .settings import ClientSettings
from .spill import Entry, iter_records

logger = logging.getLogger("ingest")


@dataclass
class SyncResult:
    files_done: list[Path] = field(default_factory=list)
    files_skipped: list[Path] = field(default_factory=list)
    files_failed: list[Path] = field(default_factory=list)
    frames_sent: int = 0

    @property
    def ok(self) -> bool:
        return not self.files_failed


def _spill_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.spill") if p.is_file())
    return [path]


def _send_file(client: SyncRedis, path: Path, batch_bytes: int, blob_ttl_s: float) -> int:
    with open(path, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Locked(path) from None
        data = f.read()
        sent = 0
        batch: list[Entry] = []
        size = 0
        for _, entry in iter_records(data):
            batch.append(entry)
            size += entry.nbytes
            if size >= batch_bytes:
                sent += _send_batch(client, batch, blob_ttl_s)
                batch, size = [], 0
        if batch:
            sent += _send_batch(client, batch, blob_ttl_s)
        # Delete while still holding the lock, so no second syncer sends the file again.
        os.unlink(path)
        return sent


def _send_batch(client: SyncRedis, batch: list[Entry], blob_ttl_s: float) -> int:
    pipe = client.pipeline(transaction=True)
    queue_batch(pipe, batch, blob_ttl_s)
    pipe.execute()
    return len(batch)


class _Locked(Exception):
    pass


_FILE_ERRORS: tuple[type[Exception], ...] = (ValueError, *SEND_ERRORS)


def sync_path(
    path: str | os.PathLike[str],
    redis_url: str | None = None,
    *,
    settings: ClientSettings | None = None,
    client: SyncRedis | None = None,
) -> SyncResult:
    """Resend the spill file ``path`` (or every ``*.spill`` under a directory) to Redis; delete what was sent.

    A connection error stops at the failing file, which is kept whole (its already-sent frames will be sent again
    next time: duplicates are skipped by the workers).
    """
    s = settings or ClientSettings.discover(redis_url=redis_url)[0]  # (a running local `stepline up` too)
    if redis_url is not None:
        s = s.replace(redis_url=redis_url)
    own = client is None
    c = client if client is not None else sync_client(s)
    result = SyncResult()
    try:
        for p in _spill_files(Path(path)):
            try:
                n = _send_file(c, p, s.batch_max_bytes, s.blob_ttl_s)
            except _Locked:
                logger.warning("stepline sync: %s is locked by a live producer; skipping it", p)
                result.files_skipped.append(p)
                continue
            except _FILE_ERRORS as e:
                logger.error("stepline sync: %s not sent: %s: %s", p, type(e).__name__, e)
                result.files_failed.append(p)
                if isinstance(e, redis.ConnectionError | redis.TimeoutError):
                    break
                continue
            result.files_done.append(p)
            result.frames_sent += n
            logger.info("stepline sync: sent %d frames from %s", n, p)
    finally:
        if own:
            c.close()
    return result


def main(argv: list[str] | None = None) -> int:
    """``stepline sync PATH [--redis-url URL]``: 0 when every file was sent (or skipped as in use), else 1."""
    ap = argparse.ArgumentParser(prog="stepline sync", description="Resend spill files to Redis.")
    ap.add_argument("path", help="a .spill file or a directory (e.g. ./stepline-data/spill)")
    ap.add_argument("--redis-url", default=None, help="default: $STEPLINE_REDIS_URL or redis://127.0.0.1:6379/0")
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args.path).exists():
        print(f"stepline sync: error: {args.path} does not exist (give a .spill file or a directory)",
              file=sys.stderr)
        return 1
    res = sync_path(args.path, args.redis_url)
    print(f"sent {res.frames_sent} frames from {len(res.files_done)} files; "
          f"{len(res.files_skipped)} in use, {len(res.files_failed)} failed")
    if not res.ok:
        print(f"stepline sync: error: {len(res.files_failed)} spill files were not sent (kept; run sync again)",
              file=sys.stderr)
    return 0 if res.ok else 1
