"""The app factory: ``create_app(settings) -> web.Application``, resources opened and closed in cleanup_ctx.

Guarantees:

- Every reply of the API is JSON or the requested format; every refusal is a JSON error with a stable ``code``
  (:class:`.errors.Refused`). An unexpected exception is logged and answered with a 500 JSON error, never with a
  traceback; Redis trouble anywhere is 503 with ``Retry-After``, metadata trouble 503.
- Without an active API key the gateway serves loopback addresses only: start-up fails (``SettingsError``) when
  ``settings.host`` is another address, and says so in the log when it is loopback. It then also answers only
  requests whose ``Host`` is a loopback name (``localhost``, ``127.x.y.z``, ``[::1]``, any port): any other →
  421 ``bad_host``, so a DNS-rebinding page cannot read it.
- The event loop never blocks on SQL, Parquet or large frame decoding: those run in threads.
- Request bodies are read with a size cap and a deadline (``body_timeout_s``); idle keep-alive connections are
  closed after ``keepalive_timeout_s``. (A client that trickles its *headers* is left to a reverse proxy.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from history import Api
from schemas import SettingsError
from schemas.clients import async_redis
from schemas.objects import open_store
from schemas.store import reader_engine

from . import commits, live, page, panels, read, write
from .auth import KeyAuth, RateLimiter
from .backlog import Backlog
from .errors import Refused
from .keys import KeyStore
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .settings import GatewaySettings, is_loopback_host_header
from .state import GW

log = logging.getLogger("stepline.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API = "/api/v1"


def _json_error(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


@web.middleware
async def _errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = request.app[GW.KEY]
    t0 = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except Refused as e:
        status = e.status
        gw.metrics.reject(e.code)
        return _json_error(e.status, e.body(), e.headers())
    except web.HTTPException as e:  # aiohttp's own (404 route, 405 method, 413 from its reader)
        status = e.status
        if e.status >= 400:
            gw.metrics.reject(f"http_{e.status}")
            return _json_error(e.status, {"error": f"http_{e.status}", "message": e.reason})
        raise
    except (RedisError, ConnectionError) as e:
        status = 503
        gw.metrics.reject("redis_unavailable")
        return _json_error(503, {"error": "redis_unavailable", "message": type(e).__name__},
                           {"Retry-After": str(max(1, round(gw.settings.retry_after_s)))})
    except SQLAlchemyError as e:
        status = 503
        gw.metrics.reject("metadata_unavailable")
        log.warning("gateway: metadata store error: %r", e)
        return _json_error(503, {"error": "metadata_unavailable", "message": type(e).__name__},
                           {"Retry-After": str(max(1, round(gw.settings.retry_after_s)))})
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    except Exception:
        log.exception("gateway: unexpected error in %s %s", request.method, request.path)
        gw.metrics.reject("internal")
        return _json_error(500, {"error": "internal", "message": "unexpected error; see the gateway's log"})
    finally:
        gw.metrics.observe(route, request.method, status, time.perf_counter() - t0)


@web.middleware
async def _open_mode_hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """In open mode (no key required) only loopback ``Host`` names are served: a page of another site whose name
    was made to resolve to 127.0.0.1 (DNS rebinding) sends its own name, and gets 421 ``bad_host``."""
    gw = request.app[GW.KEY]
    if gw.auth_obj is not None and not gw.auth.required:
        hosts = request.headers.getall("Host", [])
        if len(hosts) > 1 or (hosts and not is_loopback_host_header(hosts[0])):
            raise Refused(421, "bad_host", "without API keys this gateway only answers requests for localhost, "
                          "127.0.0.1 or [::1]; create a key (`stepline keys create PROJECT`) to serve other names")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GW.KEY]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2.0):
            await gw.redis.ping()
        checks["redis"] = "ok"
    except (RedisError, OSError, TimeoutError) as e:
        checks["redis"] = f"unreachable: {type(e).__name__}"

    def ping_db() -> None:
        assert gw.engine is not None
        url = gw.engine.url
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
            if not Path(url.database).parent.is_dir():
                raise OSError(f"no directory for {url.database}")
            return  # no worker has committed yet; a reader must not create the file
        with gw.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(asyncio.to_thread(ping_db), 5.0)
        checks["metadata"] = "ok"
    except (SQLAlchemyError, OSError, TimeoutError) as e:
        checks["metadata"] = f"unreachable: {type(e).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"ok": ok, **checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GW.KEY]
    return web.Response(body=gw.metrics.render().encode(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST, "X-Prometheus-Format": "0.0.4"})


async def _resources(app: web.Application) -> AsyncIterator[None]:
    gw = app[GW.KEY]
    s = gw.settings
    gw.redis_client = async_redis(
        s.redis_url, socket_timeout=s.redis_timeout_s, socket_connect_timeout=min(s.redis_timeout_s, 2.0),
        retry=Retry(NoBackoff(), 0), max_connections=256,
    )
    gw.engine = reader_engine(s.metadata_url)
    gw.api_obj = Api(s.data_dir, s.metadata_url, engine=gw.engine, objects=open_store(s.storage))
    store = KeyStore(gw.engine)
    gw.auth_obj = KeyAuth(store, cache_s=s.key_cache_s, limiter=RateLimiter(s.rate_per_s, s.rate_burst),
                          failures=RateLimiter(s.auth_fail_per_s, s.auth_fail_burst),
                          bad_key_cache_s=s.bad_key_cache_s)
    task: asyncio.Task[None] | None = None
    try:
        if not await gw.auth.refresh_mode():
            if not s.loopback:
                raise SettingsError(
                    f"refusing to serve {s.host} without API keys: create one with `stepline keys create PROJECT`"
                    " or bind a loopback address")
            log.warning("gateway: no API keys configured: listening on loopback (%s) only and accepting requests"
                        " without a key", s.host)
        gw.backlog = Backlog(s.names, gw.redis, gw.engine, gw.metrics, s.backlog_high_water)
        task = asyncio.create_task(_background(gw), name="stepline-gateway-backlog")
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await gw.redis.aclose()
        gw.api.close()
        gw.engine.dispose()


async def _background(gw: GW) -> None:
    assert gw.backlog is not None
    backlog_task = asyncio.create_task(gw.backlog.run(gw.settings.backlog_refresh_s))
    try:
        while True:
            await asyncio.sleep(max(gw.settings.key_cache_s, 1.0))
            try:
                await gw.auth.refresh_mode()
            except SQLAlchemyError as e:
                log.warning("gateway: key table check failed: %r", e)
    finally:
        backlog_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await backlog_task


def create_app(settings: GatewaySettings) -> web.Application:
    """The gateway as an aiohttp application (serve it with ``web.run_app`` or an ``AppRunner``)."""
    app = web.Application(
        middlewares=[_errors_and_metrics, _open_mode_hosts],
        # Our handlers read bodies themselves, with their own caps; aiohttp's must not cut them first.
        client_max_size=max(settings.max_body_bytes, settings.max_blob_bytes) + 1,
        # We decode Content-Encoding ourselves, with a cap on the decoded size (aiohttp's would not know ours).
        handler_args={"auto_decompress": False, "keepalive_timeout": settings.keepalive_timeout_s},
    )
    app[GW.KEY] = GW(settings=settings, metrics=Metrics())
    app.cleanup_ctx.append(_resources)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_post(API + "/projects/{project}/runs/{run}/frames", write.post_frames)
    r.add_put(API + "/blobs/{sha256}", write.put_blob)
    r.add_get(API + "/blobs/{sha256}", read.get_blob)
    r.add_get(API + "/projects", read.list_projects)
    r.add_get(API + "/projects/{project}/runs", read.list_runs)
    r.add_get(API + "/projects/{project}/runs/{run}", read.get_run)
    r.add_get(API + "/projects/{project}/runs/{run}/history", read.history)
    r.add_get(API + "/projects/{project}/runs/{run}/scan", read.scan)
    r.add_get(API + "/projects/{project}/runs/{run}/sampled", read.sampled)
    r.add_get(API + "/projects/{project}/runs/{run}/sections", read.sections)
    r.add_get(API + "/projects/{project}/runs/{run}/committed", commits.get_committed)
    live.setup(app, API)
    panels.setup(app, API)
    r.add_get("/", page.index)
    r.add_get("/static/{path:.+}", page.static)
    return app
