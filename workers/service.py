"""Running a worker as a process: its command-line flags, signal handlers for stack dumps, and an exit that does
not wait for abandoned executor threads and never comes later than the drain timeout after SIGTERM.
``python -m workers`` and ``stepline worker`` both end up in :func:`serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import faulthandler
import importlib.abc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from schemas.errors import SettingsError
from schemas.settings import (
    add_storage_arguments,
    non_negative_float,
    port,
    positive_float,
    positive_int,
    storage_overrides,
)

from .settings import WorkerSettings
from .worker import Worker


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--redis-url", help="Redis URL (STEPLINE_REDIS_URL)")
    ap.add_argument("--namespace", help="key namespace (STEPLINE_NAMESPACE, default sl)")
    ap.add_argument("--partitions", type=positive_int, help="partition count (STEPLINE_PARTITIONS, default 16)")
    ap.add_argument("--data-dir", type=Path, help="data directory (STEPLINE_DATA_DIR, default ./stepline-data)")
    ap.add_argument("--db-url", help="metadata SQLAlchemy URL (STEPLINE_DB_URL; default SQLite in the data dir)")
    add_storage_arguments(ap)
    ap.add_argument("--worker-id", help="worker id (default host-pid-random)")
    ap.add_argument("--lease-ttl-ms", type=positive_int,
                    help="lease time to live in ms (STEPLINE_LEASE_TTL_MS, default 10000)")
    ap.add_argument("--commit-interval", type=positive_float, dest="commit_interval_s", help="seconds between commits")
    ap.add_argument("--retention", type=non_negative_float, dest="retention_s",
                    help="seconds of stream kept in Redis (STEPLINE_RETENTION_S, default 86400)")
    ap.add_argument("--retention-bytes", type=positive_int, dest="retention_bytes",
                    help="also trim the oldest entries past about this many bytes of Redis memory for all partition "
                         "streams together (STEPLINE_RETENTION_BYTES)")
    ap.add_argument("--no-archive", action="store_const", const=False, dest="archive",
                    help="trim without keeping the committed entries in the stream archive first (STEPLINE_ARCHIVE=0): "
                         "trimmed entries can then never be replayed")
    ap.add_argument("--metrics-port", type=port, help="serve /metrics on this port (STEPLINE_WORKER_METRICS_PORT)")


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    return WorkerSettings.from_env(
        redis_url=args.redis_url, namespace=args.namespace, partitions=args.partitions, data_dir=args.data_dir,
        db_url=args.db_url, worker_id=args.worker_id,
        lease_ttl_s=None if args.lease_ttl_ms is None else args.lease_ttl_ms / 1000,
        commit_interval_s=args.commit_interval_s, retention_s=args.retention_s,
        retention_bytes=args.retention_bytes, archive=args.archive,
        metrics_port=args.metrics_port, **storage_overrides(args),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stepline worker", description="Consume partition streams into history.")
    add_arguments(ap)
    serve(settings_from_args(ap.parse_args(argv)))
    return 0


def serve(settings: WorkerSettings) -> None:
    """Run one worker in this process until SIGTERM/SIGINT, then end the process (:func:`exit_now`).

    A worker that does not stop can be looked into where it runs, without a debugger or ptrace:
    ``kill -USR1 <pid>`` prints the Python stack of every thread to stderr from the main thread (consistent, but
    only once the main thread runs Python again); ``kill -USR2 <pid>`` makes faulthandler print them from the
    signal handler itself, which works even when the main thread is stuck in C code but may show a running thread
    half-updated.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGUSR1, _print_stacks)
    if sys.stderr is not None:  # started with stderr closed: nowhere to dump to
        faulthandler.register(signal.SIGUSR2, all_threads=True)
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
    bound_allocators()
    code = 1
    try:
        Worker(settings, on_stop=_exit_at).run()
        code = 0
    except SettingsError as e:  # a deployment mistake (e.g. another namespace's metadata): one line, no traceback
        with contextlib.suppress(OSError):
            os.write(2, f"stepline worker: error: {e}\n".encode(errors="replace"))
        code = 2
    except Exception:
        logging.getLogger("stepline.worker").exception("the worker died")
    finally:
        exit_now(code)  # never a normal interpreter exit: it would join executor threads the shutdown abandoned


#: glibc's M_ARENA_MAX (malloc.h): the most malloc arenas the process may create.
_M_ARENA_MAX = -8


def bound_allocators() -> None:
    """Keep a long-lived worker's native heap from growing with the work it has done (issue 15, item 9).

    Measured with bench/worker_memory.py over 100,000 short runs: Python's own objects stay flat (tracemalloc),
    yet RSS grew ~60 MB, all of it anonymous mappings outside the main heap. Two allocators account for it:
    glibc gives each thread that ever allocated (the commit and I/O executor threads come and go) an arena of
    its own and rarely returns their pages, and pyarrow's default mimalloc pool keeps freed segments per thread.
    Capping glibc at 2 arenas and giving pyarrow the system allocator halved the growth at the same throughput.
    Both are process-wide, so only the worker's process entry point sets them (never the library), and an
    operator's explicit ``MALLOC_ARENA_MAX`` / ``ARROW_DEFAULT_MEMORY_POOL`` wins.
    """
    if "MALLOC_ARENA_MAX" not in os.environ and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt(_M_ARENA_MAX, 2)
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


def _exit_at(deadline: float) -> None:
    """The shutdown's backstop: end the process at ``deadline`` (``time.monotonic()``) if it is still running,
    whatever the event loop or a thread is stuck in. The worker's own shutdown is bounded by the same deadline and
    normally ends first; this only fires when a step overran its bound (a blocking call on the loop thread)."""

    def wait_then_exit() -> None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            os.write(2, b"stepline worker: the shutdown overran its drain timeout; exiting now\n")
        os._exit(0)

    threading.Thread(target=wait_then_exit, name="stepline-shutdown-deadline", daemon=True).start()


def _print_stacks(signum: int, frame: object) -> None:
    # A handler's exception would be raised inside whatever the main thread was doing (the event loop): a dump
    # that cannot be written (stderr's reader gone, disk full) must cost nothing but the dump.
    with contextlib.suppress(Exception):
        _write_stacks(signum)


def _write_stacks(signum: int) -> None:
    names = {t.ident: t.name for t in threading.enumerate()}
    out = [f"--- stacks of every thread (signal {signum}) ---"]
    for ident, top in sys._current_frames().items():
        out.append(f"Thread {ident:#x} ({names.get(ident, '?')}):")
        out.append("".join(traceback.format_stack(top)).rstrip())
    # Straight to the file descriptor: the signal may have interrupted a write to sys.stderr, and its buffered
    # writer refuses a reentrant call.
    data = ("\n".join(out) + "\n--- end of stacks ---\n").encode(errors="replace")
    while data:
        data = data[os.write(2, data):]


class _NoPandas(importlib.abc.MetaPathFinder):
    """Makes ``import pandas`` fail in a worker process: workers never use pandas, but pyarrow imports it, if
    installed, the first time it converts an array (to check whether it is a pandas object). That import costs
    ~41 MB of every worker's memory; pyarrow works as without pandas when the import fails."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(f"pandas is not loaded in a worker process ({fullname})", name=fullname)


def exit_now(code: int) -> None:
    """End the process without joining abandoned executor threads (see :meth:`Worker.run`)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

