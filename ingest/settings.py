"""Client settings: one frozen value object, built once at :func:`ingest.init` from ``STEPLINE_*`` variables.

Nothing in :mod:`ingest` reads ``os.environ`` except :meth:`ClientSettings.from_env`; everything else receives the
settings object. Environment variables:

============================  ==========================  ==============================================
variable                      default                     meaning
============================  ==========================  ==============================================
``STEPLINE_REDIS_URL``        ``redis://127.0.0.1:6379/0`` where frames are XADDed
``STEPLINE_NAMESPACE``        ``sl``                      key prefix (docs/DESIGN.md §5)
``STEPLINE_PARTITIONS``       ``16``                      partition count, fixed per deployment
``STEPLINE_DATA_DIR``         ``./stepline-data``         spill files go to ``<data_dir>/spill/``
``STEPLINE_URL``              (none)                      the HTTP gateway; when set, frames go there, not
                                                          to Redis
``STEPLINE_API_KEY``          (none)                      the gateway API key (``Authorization: Bearer``)
``STEPLINE_SILENT``           (unset)                     ``1``: ``init``/``finish`` print nothing
============================  ==========================  ==============================================

With neither ``STEPLINE_REDIS_URL``/``STEPLINE_URL`` nor an explicit ``redis_url``/``url``, a running local
``stepline up`` (:func:`schemas.local.local_stack`) supplies the Redis URL, namespace, partition count and data
directory (each unless given by a variable or an argument): :meth:`ClientSettings.discover`.

The tuning fields (flush interval, memory cap, ...) have no variables: pass ``settings=`` to ``init`` to change
them. A malformed variable fails at ``init`` with its name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import SettingsError
from schemas import settings as _settings
from schemas.local import WRITE_SIDE_ENV, LocalStack, local_stack
from schemas.names import DEFAULT_REDIS_URL
from schemas.settings import DEPLOYMENT_ENV, Deployment, EnvVar

__all__ = ["DEFAULT_REDIS_URL", "ClientSettings", "SettingsError"]

#: The variables a client reads (``STEPLINE_PARTITIONS`` must be an integer).
ENV: tuple[EnvVar, ...] = (
    *DEPLOYMENT_ENV,
    EnvVar("STEPLINE_URL", "url"),
    EnvVar("STEPLINE_API_KEY", "api_key"),
    EnvVar("STEPLINE_SILENT", "silent", _settings.flag),
)


@dataclass(frozen=True, slots=True)
class ClientSettings(Deployment):
    """Everything the SDK needs, fixed for the life of a run."""

    #: The HTTP gateway (``http://host:port``); when set, frames are posted there instead of XADDed to Redis.
    url: str | None = None
    #: The gateway API key (a ``write`` key of the run's project).
    api_key: str | None = None
    #: ``identity`` or ``gzip`` (level 1): what the HTTP transport does to request bodies.
    http_encoding: str = "identity"

    #: The sender wakes this often to pack pending log calls into frames and send them (seconds).
    flush_interval_s: float = 0.05
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
    spill_after_s: float = 10.0
    #: Most bytes of frames sent in one pipelined round trip.
    batch_max_bytes: int = 4 << 20
    #: Retry backoff while Redis is unreachable: first delay and ceiling (seconds), doubled per failure.
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    connect_timeout_s: float = 1.0
    socket_timeout_s: float = 5.0
    #: Media blobs are buffered in Redis with this expiry (the workers move them to the data directory).
    blob_ttl_s: float = 7 * 86400.0
    #: ``finish()`` and the ``atexit`` handler wait at most this long for unsent frames (seconds).
    finish_timeout_s: float = 60.0
    #: ``finish()`` then waits at most this long for a worker to commit the run (read-your-writes), seconds.
    commit_timeout_s: float = 30.0
    #: No line from ``init``/``finish`` on stdout (``STEPLINE_SILENT=1``).
    silent: bool = False
    #: The web page's base URL (``http://host:port``) when known: ``run.url`` links there.
    page_url: str | None = None

    def __post_init__(self) -> None:
        Deployment.__post_init__(self)  # (a slots dataclass has no zero-argument super())
        if self.flush_interval_s <= 0 or self.frame_target_bytes <= 0 or self.max_block_rows <= 0:
            raise ValueError("flush_interval_s, frame_target_bytes and max_block_rows must be positive")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise SettingsError(f"url must start with http:// or https://, got {self.url!r}")
        if self.http_encoding not in ("identity", "gzip"):
            raise SettingsError(f"http_encoding must be identity or gzip, got {self.http_encoding!r}")
        if self.frame_target_bytes >= self.limits.max_frame_bytes:
            raise ValueError("frame_target_bytes must be below limits.max_frame_bytes")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
        """Build settings from ``STEPLINE_*`` variables (``environ`` defaults to ``os.environ``) and overrides."""
        return _settings.from_env(cls, ENV, environ, overrides)

    @classmethod
    def discover(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any,
    ) -> tuple[ClientSettings, LocalStack | None]:
        """:meth:`from_env`, then, when neither an override nor a variable says where frames go, a running local
        ``stepline up`` fills the fields it knows that nothing else set. Returns the settings and that stack."""
        env = os.environ if environ is None else environ
        given = {k for k, v in overrides.items() if v is not None} | set(_settings.env_values(ENV, env))
        settings = cls.from_env(env, **overrides)
        if given & {"redis_url", "url"} or any(env.get(v) for v in WRITE_SIDE_ENV):
            return settings, None
        stack = local_stack(env)
        if stack is None:
            return settings, None
        found = {"redis_url": stack.redis_url, "namespace": stack.namespace, "partitions": stack.partitions,
                 "data_dir": Path(stack.data_dir), "page_url": stack.gateway_url}
        return settings.replace(**{k: v for k, v in found.items() if k not in given}), stack

    def replace(self, **changes: Any) -> ClientSettings:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return _settings.replace(self, **changes)
