"""Authentication (API keys), authorization (project + scope) and per-key rate limits.

Guarantees:

- With at least one active key in ``sl_api_keys`` (at start-up, or any time later: the check is sticky), every
  API request needs ``Authorization: Bearer <key>``: none → 401 ``missing_key``, unknown or malformed → 401
  ``invalid_key``, revoked → 401 ``revoked_key``, another project's key or a missing scope → 403 ``forbidden``.
  Without any key the gateway is in open mode, which :func:`gateway.app.create_app` allows on loopback
  addresses only; a key presented in open mode is still checked.
- Verified keys are cached for ``key_cache_s`` seconds (by the SHA-256 of the token, never the token), so a
  revocation takes effect within that time; the secret is compared in constant time (:mod:`.keys`).
- Each key (open mode: each client address) has a token bucket of ``rate_per_s`` requests per second with a
  burst of ``rate_burst``; past it → 429 ``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from .errors import Refused
from .keys import ApiKey, KeyStore

_CACHE_MAX = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets by name; ``take`` returns 0 when allowed, else the seconds until a token is there."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, name: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        b = self._buckets.get(name)
        if b is None:
            b = self._buckets[name] = _Bucket(self.burst, now)
            if len(self._buckets) > _CACHE_MAX:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(name)
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate


class KeyAuth:
    """Key verification with a short cache, the open/required mode, and rate limits."""

    def __init__(self, store: KeyStore, *, cache_s: float, limiter: RateLimiter) -> None:
        self.store = store
        self.cache_s = cache_s
        self.limiter = limiter
        self.required = False
        self._cache: OrderedDict[str, tuple[ApiKey | None, float]] = OrderedDict()

    async def refresh_mode(self) -> bool:
        """Look for active keys; once any exists, keys stay required for the life of the process."""
        if not self.required and await asyncio.to_thread(self.store.active_count) > 0:
            self.required = True
        return self.required

    async def _verify(self, token: str) -> ApiKey | None:
        h = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[1] > now:
            return hit[0]
        key = await asyncio.to_thread(self.store.verify, token)
        if self.cache_s > 0:
            self._cache[h] = (key, now + self.cache_s)
            self._cache.move_to_end(h)
            if len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return key

    async def authorize(self, authorization: str | None, project: str, scope: str, client: str) -> ApiKey | None:
        """The key allowed to do ``scope`` on ``project`` (None in open mode without a key); raises Refused."""
        if authorization is None:
            if self.required:
                raise Refused(401, "missing_key", "this gateway needs an API key: Authorization: Bearer <key>")
            self._rate(f"addr:{client}")
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(401, "invalid_key", "the Authorization header must be 'Bearer <key>'")
        key = await self._verify(token.strip())
        if key is None:
            raise Refused(401, "invalid_key", "unknown API key")
        if key.revoked_at is not None:
            raise Refused(401, "revoked_key", f"API key {key.id} was revoked")
        if not key.allows(project, scope):
            raise Refused(403, "forbidden", f"API key {key.id} may not {scope} project {project!r}")
        self._rate(f"key:{key.id}")
        return key

    async def identify(self, authorization: str | None, scope: str, client: str) -> ApiKey | None:
        """The key presented, checked for ``scope`` on its own project (None in open mode without a key).

        For requests that name no project (``GET /api/v1/projects``): the key then decides which project is seen.
        """
        if authorization is None:
            return await self.authorize(None, "", scope, client)
        scheme, _, token = authorization.partition(" ")
        key = await self._verify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        # Unknown, malformed, revoked or out of scope: authorize() raises the same refusals as everywhere else.
        return await self.authorize(authorization, key.project if key is not None else "", scope, client)

    def _rate(self, name: str) -> None:
        wait = self.limiter.take(name)
        if wait > 0:
            raise Refused(429, "rate_limited", "too many requests for this key; retry later", retry_after=wait)
