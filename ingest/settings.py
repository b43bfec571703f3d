"""Client settings: one frozen value object, built once at :func:`ingest.init` from ``STEPLINE_*`` variables.

Nothing in :mod:`ingest` reads ``os.environ`` except :meth:`ClientSettings.from_env`; everything else receives the
settings object. Environment variables:

============================  ==========================  ==============================================
variable                      default                     meaning
============================  ==========================  ==============================================
``STEPLINE_REDIS_URL``        ``redis://127.0.0.1:6379/0`` where frames are XADDed
``STEPLINE_NAMESPACE``        ``sl``                      key prefix (DESIGN §4)
``STEPLINE_PARTITIONS``       ``16``                      partition count, fixed per deployment
``STEPLINE_DATA_DIR``         ``./stepline-data``         spill files go to ``<data_dir>/spill/``
``STEPLINE_URL``              (none)                      the HTTP gateway; when set, frames go there, not
                                                          to Redis
``STEPLINE_API_KEY``          (none)                      the gateway API key (``Authorization: Bearer``)
============================  ==========================  ==============================================

The tuning fields (flush interval, memory cap, ...) have no variables: pass ``settings=`` to ``init`` to change
them. A malformed variable fails at ``init`` with its name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import DEFAULT_LIMITS, Limits, Names, SteplineError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SettingsError(SteplineError, ValueError):
    """A setting or an ``init`` argument that cannot work (bad value, or a transport that does not exist yet)."""


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Everything the SDK needs, fixed for the life of a run."""

    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = "sl"
    partitions: int = 16
    data_dir: Path = Path("./stepline-data")
    #: The HTTP gateway (``http://host:port``); when set, frames are posted there instead of XADDed to Redis.
    url: str | None = None
    #: The gateway API key (a ``write`` key of the run's project).
    api_key: str | None = None
    #: ``identity`` or ``gzip`` (level 1): what the HTTP transport does to request bodies.
    http_encoding: str = "identity"

    #: The sender wakes this often to pack pending log calls into frames and send them (seconds).
    flush_interval: float = 0.05
    #: Frames are cut when they reach about this many bytes (well below ``limits.max_frame_bytes``).
    frame_target_bytes: int = 256 << 10
    #: A block of same-key log calls is cut at this many calls (keeps one event far below the event limit).
    max_block_rows: int = 1024
    #: Log calls not yet packed into frames; past this, ``log()`` packs them itself (backpressure, CPU only
    #: unless the memory cap is also reached, in which case the packed frames are written to the spill file).
    max_pending_rows: int = 262_144
    #: Bytes of encoded frames (and media blobs) held in memory while unacknowledged; the rest spills to disk.
    memory_cap_bytes: int = 64 << 20
    #: After Redis has been failing this long, unacknowledged frames are spilled to disk even below the cap.
    spill_after_seconds: float = 10.0
    #: Most bytes of frames sent in one pipelined round trip.
    batch_max_bytes: int = 4 << 20
    #: Retry backoff while Redis is unreachable: first delay and ceiling (seconds), doubled per failure.
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    connect_timeout: float = 1.0
    socket_timeout: float = 5.0
    #: Media blobs are buffered in Redis with this expiry (the workers move them to the data directory).
    blob_ttl_seconds: int = 7 * 86400
    #: ``finish()`` and the ``atexit`` handler wait at most this long for unsent frames (seconds).
    finish_timeout: float = 60.0
    limits: Limits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):  # a str from a caller: accept it, keep the type honest
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        Names(self.namespace, self.partitions)  # raises ValueError on a bad namespace or partition count
        if self.flush_interval <= 0 or self.frame_target_bytes <= 0 or self.max_block_rows <= 0:
            raise ValueError("flush_interval, frame_target_bytes and max_block_rows must be positive")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise SettingsError(f"url must start with http:// or https://, got {self.url!r}")
        if self.http_encoding not in ("identity", "gzip"):
            raise SettingsError(f"http_encoding must be identity or gzip, got {self.http_encoding!r}")
        if self.frame_target_bytes >= self.limits.max_frame_bytes:
            raise ValueError("frame_target_bytes must be below limits.max_frame_bytes")

    @property
    def names(self) -> Names:
        return Names(self.namespace, self.partitions)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
        """Build settings from ``STEPLINE_*`` variables (``environ`` defaults to ``os.environ``) and overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "redis_url": env.get("STEPLINE_REDIS_URL") or DEFAULT_REDIS_URL,
            "namespace": env.get("STEPLINE_NAMESPACE") or "sl",
            "data_dir": Path(env.get("STEPLINE_DATA_DIR") or "./stepline-data"),
            "url": env.get("STEPLINE_URL") or None,
            "api_key": env.get("STEPLINE_API_KEY") or None,
        }
        raw = env.get("STEPLINE_PARTITIONS")
        if raw:
            try:
                values["partitions"] = int(raw)
            except ValueError:
                raise SettingsError(f"STEPLINE_PARTITIONS must be an integer, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)

    def replace(self, **changes: Any) -> ClientSettings:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
