"""The one place :mod:`workers` turns a Redis URL into a client: a single server or a Redis Cluster.

``redis+cluster://host:port`` (one seed node) gives redis-py's asyncio cluster client, which follows MOVED/ASK
and re-reads the slot map after a failover; anything else the ordinary client. The worker only issues
single-key commands, single-key Lua scripts (lease renew/release) and per-partition reads, so each stays in one
slot. (:mod:`ingest` has its own twin: the two packages never import each other.)
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis.asyncio

from schemas.names import redis_target, with_driver_info

AsyncRedis: TypeAlias = "redis.asyncio.Redis | redis.asyncio.RedisCluster"


def async_redis(url: str, **kwargs: Any) -> AsyncRedis:
    """An asyncio client for ``url`` (``kwargs`` are connection options: timeouts, ``retry``, ...)."""
    plain, cluster = redis_target(url)
    kwargs = with_driver_info(kwargs)
    if cluster:
        return redis.asyncio.RedisCluster.from_url(plain, **kwargs)
    return redis.asyncio.Redis.from_url(plain, **kwargs)
