"""Worker settings: one frozen dataclass, built once at the entry point from flags and ``STEPLINE_*`` variables."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from schemas import DEFAULT_LIMITS, Limits, Names
from schemas.names import DEFAULT_NAMESPACE, DEFAULT_PARTITIONS


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = DEFAULT_NAMESPACE
    partitions: int = DEFAULT_PARTITIONS
    data_dir: Path = Path("stepline-data")
    #: SQLAlchemy URL of the metadata store; ``None`` = SQLite file in the data directory.
    db_url: str | None = None
    worker_id: str = field(default_factory=_default_worker_id)
    #: Lease time to live: a crashed worker's partitions are taken over within about this long.
    lease_ttl_ms: int = 10_000
    #: Most stream entries read from one partition per round.
    read_count: int = 200
    #: A partition's batch is committed when it is this old (seconds) or holds ``commit_entries`` entries.
    commit_interval_s: float = 0.5
    commit_entries: int = 2_000
    #: Stream entries older than this stay in Redis for replay (never trimmed past the committed offset).
    retention_s: float = 24 * 3600.0
    trim_interval_s: float = 10.0
    #: SIGTERM: stop reading, commit and release within this many seconds.
    drain_timeout_s: float = 20.0
    #: Merge a run's segments of one level once it has this many.
    compaction_fanin: int = 8
    compaction_interval_s: float = 5.0
    #: Files dropped by compaction are deleted after this grace period, so readers can finish.
    gc_grace_s: float = 300.0
    limits: Limits = DEFAULT_LIMITS
    #: Record every commit (partition, epoch, offset) in ``sl_commits``: for tests and audits, it grows forever.
    commit_audit: bool = False
    #: Touched by the membership loop every ``lease_ttl/3`` s: the liveness probe (``python -m workers.health``).
    health_file: Path | None = None
    #: Serve ``/metrics`` (Prometheus text) and ``/healthz`` on this port (``None``: off; 0: any free port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @property
    def names(self) -> Names:
        return Names(self.namespace, self.partitions)

    @property
    def metadata_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'meta.sqlite'}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        env = os.environ if env is None else env
        s = cls()
        values: dict[str, Any] = {}
        if "STEPLINE_REDIS_URL" in env:
            values["redis_url"] = env["STEPLINE_REDIS_URL"]
        if "STEPLINE_NAMESPACE" in env:
            values["namespace"] = env["STEPLINE_NAMESPACE"]
        if "STEPLINE_PARTITIONS" in env:
            values["partitions"] = int(env["STEPLINE_PARTITIONS"])
        if "STEPLINE_DATA_DIR" in env:
            values["data_dir"] = Path(env["STEPLINE_DATA_DIR"])
        if "STEPLINE_DB_URL" in env:
            values["db_url"] = env["STEPLINE_DB_URL"]
        if "STEPLINE_WORKER_ID" in env:
            values["worker_id"] = env["STEPLINE_WORKER_ID"]
        if "STEPLINE_LEASE_TTL_MS" in env:
            values["lease_ttl_ms"] = int(env["STEPLINE_LEASE_TTL_MS"])
        if "STEPLINE_RETENTION_S" in env:
            values["retention_s"] = float(env["STEPLINE_RETENTION_S"])
        # Housekeeping cadence (seconds): tests and the chaos runner shorten it to see trimming within a round.
        if "STEPLINE_DRAIN_TIMEOUT_S" in env:
            values["drain_timeout_s"] = float(env["STEPLINE_DRAIN_TIMEOUT_S"])
        if "STEPLINE_TRIM_INTERVAL_S" in env:
            values["trim_interval_s"] = float(env["STEPLINE_TRIM_INTERVAL_S"])
        if "STEPLINE_COMPACTION_INTERVAL_S" in env:
            values["compaction_interval_s"] = float(env["STEPLINE_COMPACTION_INTERVAL_S"])
        if "STEPLINE_HEALTH_FILE" in env:
            values["health_file"] = Path(env["STEPLINE_HEALTH_FILE"])
        if "STEPLINE_WORKER_METRICS_PORT" in env:
            values["metrics_port"] = int(env["STEPLINE_WORKER_METRICS_PORT"])
        if "STEPLINE_WORKER_METRICS_HOST" in env:
            values["metrics_host"] = env["STEPLINE_WORKER_METRICS_HOST"]
        if "STEPLINE_COMMIT_AUDIT" in env:
            values["commit_audit"] = env["STEPLINE_COMMIT_AUDIT"].lower() in ("1", "true", "yes")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(s, **values)
