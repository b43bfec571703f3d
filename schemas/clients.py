"""The one place :mod:`ingest` turns a Redis URL into a client: a single server or a Redis Cluster.

``redis+cluster://host:port`` (one seed node; the client discovers the rest, follows MOVED/ASK and re-reads the
slot map after a failover) gives redis-py's cluster client, anything else the ordinary one. Every multi-key
operation stepline issues (a run's ``MULTI``/``EXEC`` of blob SETs + XADD, the gateway's WATCH) stays within one
partition's hash tag ``{pNN}``, so it is valid on either.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis
import redis.asyncio

from schemas.names import redis_target, with_driver_info

SyncRedis: TypeAlias = "redis.Redis | redis.RedisCluster"
#: What a Redis call raises when the server or cluster is unreachable or answers an error. redis-py's cluster
#: client raises ``RedisClusterException`` (not a ``RedisError``) when no node of its slot map answers, e.g. a
#: client still initialising while its seed node is down: catching ``RedisError`` alone let it kill a worker.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)
AsyncRedis: TypeAlias = "redis.asyncio.Redis | redis.asyncio.RedisCluster"


def sync_redis(url: str, **kwargs: Any) -> SyncRedis:
    """A synchronous client for ``url`` (``kwargs`` are connection options: timeouts, ``retry``, ...)."""
    plain, cluster = redis_target(url)
    kwargs = with_driver_info(kwargs)
    if cluster:
        return redis.RedisCluster.from_url(plain, **kwargs)
    return redis.Redis.from_url(plain, **kwargs)


def async_redis(url: str, **kwargs: Any) -> AsyncRedis:
    """An asyncio client for ``url`` (``kwargs`` as for :func:`sync_redis`)."""
    plain, cluster = redis_target(url)
    kwargs = with_driver_info(kwargs)
    if cluster:
        return redis.asyncio.RedisCluster.from_url(plain, **kwargs)
    return redis.asyncio.Redis.from_url(plain, **kwargs)
