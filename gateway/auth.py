"""Authentication (API keys), authorization (project + scope), per-key rate limits and failed-authentication throttling.

Guarantees:

- With at least one active key in ``sl_api_keys`` (at start-up, or any time later: the check is sticky), every
  API request needs ``Authorization: Bearer <key>``: none → 401 ``missing_key``, unknown or malformed → 401
  ``invalid_key``, revoked → 401 ``revoked_key``, another project's key or a missing scope → 403 ``forbidden``.
  Without any key the gateway is in open mode, which :func:`gateway.app.create_app` allows on loopback
  addresses only (and only for loopback ``Host`` names); a key presented in open mode is still checked.
- Key rows are cached by key id. A verified key is trusted for ``key_cache_s`` seconds, so a revocation takes
  effect within that time. A key id that is not in the table, and the row of a key presented with a wrong secret,
  are remembered for ``bad_key_cache_s``: a flood of bad keys costs one metadata lookup per key id, not one per
  request (a malformed token costs none). Secrets are compared in constant time (:mod:`.keys`); the token itself
  is never kept.
- Failed authentication is throttled per client address: every presented key that is refused (401
  ``invalid_key``/``revoked_key``) takes a token from the address's bucket (``auth_fail_burst`` failures,
  refilled at ``auth_fail_per_s``); while it is empty, every request of that address that presents a key gets 429
  ``auth_throttled`` with ``Retry-After``, before any lookup or hashing. Requests without a key cost no lookup; they
  take from the address's ordinary bucket below (so a page that polls before its user entered a key is not locked
  out). Behind a reverse proxy every client has the proxy's address: the throttle then applies to all of them.
- Each key (no key: each client address) has a token bucket of ``rate_per_s`` requests per second with a
  burst of ``rate_burst``; past it → 429 ``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

from .errors import Refused
from .keys import ApiKey, KeyStore, hash_secret, parse_token

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

    def wait(self, name: str) -> float:
        """Seconds until ``name`` has a token (0: it has one now); takes nothing."""
        if self.rate <= 0:
            return 0.0
        b = self._buckets.get(name)
        if b is None:
            return 0.0
        tokens = min(self.burst, b.tokens + (time.monotonic() - b.at) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

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
    """Key verification with a per-id cache, the open/required mode, rate limits and failure throttling."""

    def __init__(self, store: KeyStore, *, cache_s: float, limiter: RateLimiter,
                 failures: RateLimiter | None = None, bad_key_cache_s: float = 300.0) -> None:
        self.store = store
        self.cache_s = cache_s
        self.bad_key_cache_s = bad_key_cache_s
        self.limiter = limiter
        self.failures = failures if failures is not None else RateLimiter(0.0, 1.0)
        self.required = False
        #: key id → (its row and stored hash, or None when there is no such id; monotonic time of the lookup)
        self._rows: OrderedDict[str, tuple[tuple[ApiKey, str] | None, float]] = OrderedDict()
        #: Metadata lookups of key rows made so far (tests and metrics read it).
        self.lookups = 0

    async def refresh_mode(self) -> bool:
        """Look for active keys; once any exists, keys stay required for the life of the process."""
        if not self.required and await asyncio.to_thread(self.store.active_count) > 0:
            self.required = True
        return self.required

    async def _verify(self, token: str) -> ApiKey | None:
        """The key a token names when its secret matches, else None; at most one lookup per id per cache time."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        kid, secret = parsed
        digest = hash_secret(secret)
        now = time.monotonic()
        hit = self._rows.get(kid)
        if hit is not None:
            row, at = hit
            if now - at < self.bad_key_cache_s:
                if row is None:
                    hmac.compare_digest(digest, "0" * 64)  # same work as for a known id
                    return None
                if not hmac.compare_digest(digest, row[1]):
                    return None  # a row's hash never changes: a wrong secret stays wrong
                if now - at < self.cache_s:
                    return row[0]
        self.lookups += 1
        row = await asyncio.to_thread(self.store.lookup, kid)
        self._rows[kid] = (row, time.monotonic())
        self._rows.move_to_end(kid)
        if len(self._rows) > _CACHE_MAX:
            self._rows.popitem(last=False)
        if row is None:
            hmac.compare_digest(digest, "0" * 64)
            return None
        return row[0] if hmac.compare_digest(digest, row[1]) else None

    async def _authenticate(self, authorization: str | None, client: str) -> ApiKey | None:
        """The verified key presented (None: none presented, in open mode); raises the 401/429 refusals."""
        addr = f"addr:{client}"
        if authorization is None:
            self._rate(addr)
            if self.required:
                raise Refused(401, "missing_key", "this gateway needs an API key: Authorization: Bearer <key>")
            return None
        wait = self.failures.wait(addr)
        if wait > 0:
            raise Refused(429, "auth_throttled", "too many failed authentications from this address; retry later",
                          retry_after=wait)
        try:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Refused(401, "invalid_key", "the Authorization header must be 'Bearer <key>'")
            key = await self._verify(token.strip())
            if key is None:
                raise Refused(401, "invalid_key", "unknown API key")
            if key.revoked_at is not None:
                raise Refused(401, "revoked_key", f"API key {key.id} was revoked")
        except Refused:
            self.failures.take(addr)
            raise
        return key

    async def authorize(self, authorization: str | None, project: str, scope: str, client: str) -> ApiKey | None:
        """The key allowed to do ``scope`` on ``project`` (None in open mode without a key); raises Refused."""
        key = await self._authenticate(authorization, client)
        if key is None:
            return None
        if not key.allows(project, scope):
            raise Refused(403, "forbidden", f"API key {key.id} may not {scope} project {project!r}")
        self._rate(f"key:{key.id}")
        return key

    async def identify(self, authorization: str | None, scope: str, client: str) -> ApiKey | None:
        """The key presented, checked for ``scope`` on its own project (None in open mode without a key).

        For requests that name no project (``GET /api/v1/projects``): the key then decides which project is seen.
        """
        key = await self._authenticate(authorization, client)
        if key is None:
            return None
        if not key.allows(key.project, scope):
            raise Refused(403, "forbidden", f"API key {key.id} may not {scope} project {key.project!r}")
        self._rate(f"key:{key.id}")
        return key

    def _rate(self, name: str) -> None:
        wait = self.limiter.take(name)
        if wait > 0:
            raise Refused(429, "rate_limited", "too many requests for this key; retry later", retry_after=wait)
