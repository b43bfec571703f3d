"""Every Redis key stepline uses, built in one place (docs/DESIGN.md §5).

All keys of one partition share the hash tag ``{pNN}`` so that they live in one Redis Cluster slot and
per-partition operations (XADD of a frame with its blobs, lease checks) never cross slots. The partition of a run
is a stable hash (CRC-32 of ``project/run``) so every process, on any host and Python version, agrees on it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_NAMESPACE = "sl"
DEFAULT_PARTITIONS = 16
#: The Redis every part of stepline talks to unless told otherwise.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


#: URL schemes of a Redis Cluster (one seed node is enough; the client discovers the others).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def redis_target(url: str) -> tuple[str, bool]:
    """``(plain redis URL, is_cluster)``: ``redis+cluster://host:port`` (or ``rediss+cluster://``) names a Redis
    Cluster by one of its nodes; anything else is a single server. A cluster has only database 0."""
    parts = urlsplit(url)
    plain = CLUSTER_SCHEMES.get(parts.scheme)
    if plain is None:
        return url, False
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster URL has no database number other than 0: {url!r}")
    return urlunsplit((plain, parts.netloc, "", parts.query, parts.fragment)), True


def partition_of(project: str, run: str, partitions: int) -> int:
    """The partition of a run: stable across processes, hosts and versions (not Python's salted ``hash``)."""
    return zlib.crc32(f"{project}/{run}".encode()) % partitions


@dataclass(frozen=True, slots=True)
class Names:
    """Key builder for one deployment (namespace + partition count)."""

    namespace: str = DEFAULT_NAMESPACE
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        if not self.namespace or any(c in self.namespace for c in "{}: "):
            raise ValueError(f"namespace {self.namespace!r} must be non-empty without '{{', '}}', ':' or spaces")
        if not 1 <= self.partitions <= 4096:
            raise ValueError(f"partitions must be within 1..4096, got {self.partitions}")

    def tag(self, p: int) -> str:
        return f"{{p{p:02d}}}"

    def stream(self, p: int) -> str:
        """The partition stream of frames."""
        return f"{self.namespace}:{self.tag(p)}:ev"

    def dlq(self, p: int) -> str:
        """Dead letters of a partition: original id, reason code, message, raw frame or event."""
        return f"{self.namespace}:{self.tag(p)}:dlq"

    def lease(self, p: int) -> str:
        """The owning worker's id, ``SET NX PX ttl``, renewed by the owner."""
        return f"{self.namespace}:{self.tag(p)}:lease"

    def blob(self, p: int, sha256: str) -> str:
        """A media blob waiting for a worker to move it into the data directory (buffer, like the stream)."""
        return f"{self.namespace}:{self.tag(p)}:blob:{sha256}"

    def committed(self, p: int) -> str:
        """Commit announcements of a partition (a stream, a few entries long): after each fenced commit the owner
        adds an entry whose id IS the committed offset (so ids only grow: a stale writer's entry is refused),
        with ``o`` = the offset and ``<project>/<run>`` = ``"<rows> <rejected>"`` for each run finished in that
        commit. A client waits on it for read-your-writes (``run.finish()``)."""
        return f"{self.namespace}:{self.tag(p)}:committed"

    @property
    def workers(self) -> str:
        """Hash of live workers: worker id → heartbeat (epoch milliseconds)."""
        return f"{self.namespace}:workers"

    def partition(self, project: str, run: str) -> int:
        return partition_of(project, run, self.partitions)


def with_driver_info(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Client options for redis-py with its version given up front: redis-py 7+ otherwise reads it from the
    installed package's metadata (a file-system search) for every new connection, which was 28 % of the SDK
    senders' time with 100 runs starting at once. Older redis-py computed it once, at import."""
    try:
        import redis
        from redis.driver_info import DriverInfo
    except ImportError:
        return kwargs
    kwargs.setdefault("driver_info", DriverInfo(lib_version=redis.__version__))
    return kwargs
