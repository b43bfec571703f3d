"""Gateway settings: one frozen dataclass, built once at the entry point from flags and ``STEPLINE_*`` variables.

============================  ==========================  ==============================================
variable                      default                     meaning
============================  ==========================  ==============================================
``STEPLINE_GATEWAY_HOST``     ``127.0.0.1``               address to bind (non-loopback needs API keys)
``STEPLINE_GATEWAY_PORT``     ``8080``                    port to bind
``STEPLINE_REDIS_URL``        ``redis://127.0.0.1:6379/0`` where frames are XADDed
``STEPLINE_NAMESPACE``        ``sl``                      key prefix (docs/DESIGN.md §5)
``STEPLINE_PARTITIONS``       ``16``                      partition count, fixed per deployment
``STEPLINE_DATA_DIR``         ``./stepline-data``         history store (segments, SQLite metadata)
``STEPLINE_DB_URL``           SQLite in the data dir      metadata SQLAlchemy URL
``STEPLINE_STORAGE_URL``      the data dir                segments and media: ``s3://bucket/prefix``
============================  ==========================  ==============================================

The tuning fields (limits, rates, high-water mark, timeouts) have no variables: pass them to
:class:`GatewaySettings` (tests and ``bench/gateway.py`` do).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas import SettingsError
from schemas import settings as _settings
from schemas.settings import DB_ENV, DEPLOYMENT_ENV, STORAGE_ENV, EnvVar, StoreDeployment

#: The variables the gateway reads.
ENV: tuple[EnvVar, ...] = (
    EnvVar("STEPLINE_GATEWAY_HOST", "host"),
    EnvVar("STEPLINE_GATEWAY_PORT", "port", int),
    *DEPLOYMENT_ENV,
    DB_ENV,
    STORAGE_ENV,
)


@dataclass(frozen=True, slots=True)
class GatewaySettings(StoreDeployment):
    host: str = "127.0.0.1"
    port: int = 8080

    #: Largest request body as sent (compressed or not), bytes: 413 past it.
    max_body_bytes: int = 16 << 20
    #: Largest request body once decompressed (a gzip/zstd bomb stops here), bytes: 413 past it.
    max_decoded_bytes: int = 32 << 20
    #: Most frames in one POST: 413 past it.
    max_frames_per_request: int = 1024
    #: Largest media blob (PUT /api/v1/blobs), bytes.
    max_blob_bytes: int = 64 << 20
    #: A client must deliver its whole body within this many seconds (slow clients get 408).
    body_timeout_s: float = 30.0
    #: Idle keep-alive connections are closed after this many seconds.
    keepalive_timeout_s: float = 30.0

    #: Per-key token bucket: sustained requests per second and burst (requests). ``0`` disables rate limiting.
    rate_per_s: float = 2000.0
    rate_burst: float = 4000.0
    #: 429 once a partition's backlog (entries not yet committed by a worker) passes this many entries.
    backlog_high_water: int = 20_000
    #: How often the backlog and committed offsets are sampled (seconds).
    backlog_refresh_s: float = 0.5
    #: ``Retry-After`` sent with a backlog 429 or a 503 (seconds, an integer on the wire, at least 1).
    retry_after_s: float = 1.0
    #: How long a key lookup is cached: a revoked key stops working within this many seconds.
    key_cache_s: float = 2.0
    #: How long a key id that is not in the key table (or a key's row, for wrong secrets) is remembered: a flood of
    #: bad keys costs one metadata lookup per key id in this time, not one per request.
    bad_key_cache_s: float = 300.0
    #: Failed authentications (a presented key refused with 401) per client address: a bucket of
    #: ``auth_fail_burst`` failures refilled at ``auth_fail_per_s``; while empty, the address's requests with a
    #: key get 429 ``auth_throttled`` + ``Retry-After`` before any lookup. ``auth_fail_per_s=0`` disables it.
    auth_fail_per_s: float = 0.5
    auth_fail_burst: float = 20.0
    #: Media blobs are buffered in Redis with this expiry (as the SDK's ``blob_ttl_s``), counted from the append
    #: of a frame that references them.
    blob_ttl_s: float = 7 * 86400.0
    #: An uploaded blob that no frame has referenced yet expires after this many seconds.
    blob_pending_ttl_s: float = 3600.0
    #: Per project, the most bytes of uploads (``PUT /api/v1/blobs``) held in Redis at once: each upload counts
    #: until its key expires (``blob_pending_ttl_s``, or ``blob_ttl_s`` once referenced). Past it → 429
    #: ``blob_quota``. ``0`` disables the quota.
    blob_quota_bytes: int = 2 << 30
    #: Socket timeout of the gateway's Redis client (seconds): past it the request gets 503.
    redis_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        StoreDeployment.__post_init__(self)  # (a slots dataclass has no zero-argument super())
        if not 0 < self.port < 65536 and self.port != 0:
            raise SettingsError(f"port must be within 0..65535, got {self.port}")
        if self.max_body_bytes <= 0 or self.max_decoded_bytes <= 0 or self.max_frames_per_request <= 0:
            raise SettingsError("body and frame limits must be positive")
        if self.blob_ttl_s < 1 or self.blob_pending_ttl_s <= 0 or self.blob_quota_bytes < 0:
            raise SettingsError("blob_ttl_s must be >= 1, blob_pending_ttl_s > 0 and blob_quota_bytes >= 0")

    @property
    def loopback(self) -> bool:
        """Whether ``host`` only accepts connections from this machine."""
        return is_loopback(self.host)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        """Build settings from ``STEPLINE_*`` variables (``environ`` defaults to ``os.environ``) and overrides."""
        return _settings.from_env(cls, ENV, environ, overrides)

    def replace(self, **changes: Any) -> GatewaySettings:
        return _settings.replace(self, **changes)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def is_loopback_host_header(value: str) -> bool:
    """Whether an HTTP ``Host`` value names this machine by a loopback name: ``localhost``, an IPv4 loopback address
    (``127.x.y.z``) or ``[::1]``, each with or without a port. Any other name, even one that resolves to a loopback
    address (which is what a DNS-rebinding page uses), is not."""
    h = value.strip().lower()
    if h.startswith("["):
        name, sep, rest = h[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and _port(rest[1:]))):
            return False
        try:
            return ipaddress.IPv6Address(name).is_loopback
        except ValueError:
            return False
    name, sep, port = h.partition(":")
    if sep and not _port(port):
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def _port(s: str) -> bool:
    return s == "" or (s.isascii() and s.isdigit() and len(s) <= 5)

