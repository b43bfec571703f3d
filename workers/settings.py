"""Worker settings: one frozen dataclass, built once at the entry point from flags and ``STEPLINE_*`` variables."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import settings as _settings
from schemas.settings import DB_ENV, DEPLOYMENT_ENV, STORAGE_ENV, EnvVar, StoreDeployment, flag, ms_to_s


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


#: The variables a worker reads. Housekeeping cadences are here so tests and the chaos runner can shorten them to
#: see trimming within a round. ``STEPLINE_LEASE_TTL_MS`` keeps its documented unit (milliseconds).
ENV: tuple[EnvVar, ...] = (
    *DEPLOYMENT_ENV,
    DB_ENV,
    STORAGE_ENV,
    EnvVar("STEPLINE_WORKER_ID", "worker_id"),
    EnvVar("STEPLINE_LEASE_TTL_MS", "lease_ttl_s", ms_to_s),
    EnvVar("STEPLINE_RETENTION_S", "retention_s", float),
    EnvVar("STEPLINE_RETENTION_BYTES", "retention_bytes", int),
    EnvVar("STEPLINE_ARCHIVE", "archive", flag),
    EnvVar("STEPLINE_ARCHIVE_INTERVAL_S", "archive_interval_s", float),
    EnvVar("STEPLINE_DRAIN_TIMEOUT_S", "drain_timeout_s", float),
    EnvVar("STEPLINE_TRIM_INTERVAL_S", "trim_interval_s", float),
    EnvVar("STEPLINE_COMPACTION_INTERVAL_S", "compaction_interval_s", float),
    EnvVar("STEPLINE_COMMIT_IDLE_S", "commit_idle_s", float),
    EnvVar("STEPLINE_HEALTH_FILE", "health_file", Path),
    EnvVar("STEPLINE_WORKER_METRICS_PORT", "metrics_port", int),
    EnvVar("STEPLINE_WORKER_METRICS_HOST", "metrics_host"),
    EnvVar("STEPLINE_COMMIT_AUDIT", "commit_audit", flag),
    EnvVar("STEPLINE_RUN_CACHE_MAX", "run_cache_max", int),
    EnvVar("STEPLINE_RUN_CACHE_IDLE_S", "run_cache_idle_s", float),
    EnvVar("STEPLINE_ORPHAN_GRACE_S", "orphan_grace_s", float),
)


@dataclass(frozen=True, slots=True)
class WorkerSettings(StoreDeployment):
    worker_id: str = field(default_factory=_default_worker_id)
    #: Lease time to live (seconds): a crashed worker's partitions are taken over within about this long.
    lease_ttl_s: float = 10.0
    #: Most stream entries read from one partition per round.
    read_count: int = 200
    #: A partition's batch is committed when it is this old (seconds) or holds ``commit_entries`` entries.
    commit_interval_s: float = 0.5
    commit_entries: int = 2_000
    #: A partition whose stream has been quiet this long (seconds) commits at once: the end of a burst is visible
    #: without waiting for the interval, while a busy stream still commits in batches.
    commit_idle_s: float = 0.05
    #: Stream entries younger than this stay in Redis (never trimmed past the committed offset, nor, with
    #: ``archive``, past the archived one).
    retention_s: float = 24 * 3600.0
    #: With it, the oldest entries of the streams are also trimmed past about this many bytes of Redis memory for
    #: all partition streams together (each stream gets ``retention_bytes / partitions``), within the same limits.
    retention_bytes: int | None = None
    #: Before trimming, write the committed entries to the stream archive in the storage location
    #: (:mod:`workers.archive`), so ``stepline replay`` rebuilds history from the first event whatever the
    #: retention. On by default: without it, a trimmed entry can never be replayed.
    archive: bool = True
    #: The committed entries are archived once the oldest of them is this old, even when no trim needs it yet.
    archive_interval_s: float = 300.0
    trim_interval_s: float = 10.0
    #: SIGTERM: stop reading, commit and release within this many seconds.
    drain_timeout_s: float = 20.0
    #: Run state held in memory, over all partitions: past this many runs (or for a run finished, or not seen
    #: for ``run_cache_idle_s``), the state of runs whose changes are all committed is dropped from memory and
    #: reloaded from the metadata store when the run logs again (same results; the reload costs one query).
    run_cache_max: int = 4096
    run_cache_idle_s: float = 300.0
    #: Merge a run's segments of one level once it has this many.
    compaction_fanin: int = 8
    compaction_interval_s: float = 5.0
    #: Files dropped by compaction are deleted after this grace period, so readers can finish.
    gc_grace_s: float = 300.0
    #: Segment objects that no metadata references (commits that never happened) are deleted once this old; a
    #: commit whose objects are older than half of it is redone instead (:meth:`MetaStore.collect_orphans`).
    orphan_grace_s: float = 3600.0
    #: Record every commit (partition, epoch, offset) in ``sl_commits``: for tests and audits, it grows forever.
    commit_audit: bool = False
    #: Touched by the membership loop every ``lease_ttl/3`` s: the liveness probe (``python -m workers.health``).
    health_file: Path | None = None
    #: Serve ``/metrics`` (Prometheus text) and ``/healthz`` on this port (``None``: off; 0: any free port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @property
    def lease_ttl_ms(self) -> int:
        """The lease TTL as Redis takes it (``SET ... PX``), at least 1 ms."""
        return max(1, round(self.lease_ttl_s * 1000))

    def __post_init__(self) -> None:
        StoreDeployment.__post_init__(self)  # (a slots dataclass has no zero-argument super())
        for name in ("lease_ttl_s", "commit_interval_s", "drain_timeout_s", "trim_interval_s",
                     "compaction_interval_s", "gc_grace_s", "orphan_grace_s", "archive_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.retention_s < 0 or self.commit_idle_s < 0:
            raise ValueError("retention_s and commit_idle_s must not be negative")
        if self.retention_bytes is not None and self.retention_bytes <= 0:
            raise ValueError(f"retention_bytes must be positive, got {self.retention_bytes!r}")
        if self.run_cache_max <= 0 or not self.run_cache_idle_s > 0:
            raise ValueError("run_cache_max and run_cache_idle_s must be positive")
        if self.read_count <= 0 or self.commit_entries <= 0 or self.compaction_fanin < 2:
            raise ValueError("read_count and commit_entries must be positive, compaction_fanin at least 2")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        """Build settings from ``STEPLINE_*`` variables (``env`` defaults to ``os.environ``) and overrides."""
        return _settings.from_env(cls, ENV, env, overrides)
