"""``stepline gateway``: serve :func:`~gateway.app.create_app` until SIGINT/SIGTERM (``main(argv)``), through
:func:`gateway.serve.run_app` (protocol-level refusals answered in JSON too)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from schemas import SettingsError
from schemas.settings import add_storage_arguments, non_negative_float, port, positive_int, storage_overrides

from .app import create_app
from .keys import KeyStore, writer_engine
from .serve import run_app
from .settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stepline gateway", description="The HTTP gateway: ingest and read API.")
    ap.add_argument("--host", help="address to bind (STEPLINE_GATEWAY_HOST, default 127.0.0.1)")
    ap.add_argument("--port", type=port, help="port (STEPLINE_GATEWAY_PORT, default 8080)")
    ap.add_argument("--redis-url", help="Redis URL (STEPLINE_REDIS_URL)")
    ap.add_argument("--data-dir", type=Path, help="data directory (STEPLINE_DATA_DIR, default ./stepline-data)")
    ap.add_argument("--db-url", help="metadata SQLAlchemy URL (STEPLINE_DB_URL; default SQLite in the data dir)")
    ap.add_argument("--namespace", help="key namespace (STEPLINE_NAMESPACE, default sl)")
    ap.add_argument("--partitions", type=positive_int, help="partition count (STEPLINE_PARTITIONS, default 16)")
    ap.add_argument("--backlog-high-water", type=positive_int,
                    help="429 past this many uncommitted entries per partition")
    ap.add_argument("--rate", type=non_negative_float, dest="rate_per_s",
                    help="requests per second per key (0: no limit)")
    ap.add_argument("--burst", type=non_negative_float, dest="rate_burst",
                    help="requests a key may send at once (token bucket)")
    ap.add_argument("--access-log", action="store_true", help="log every request")
    add_storage_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        s = GatewaySettings.from_env(
            host=args.host, port=args.port, redis_url=args.redis_url, data_dir=args.data_dir, db_url=args.db_url,
            namespace=args.namespace, partitions=args.partitions, backlog_high_water=args.backlog_high_water,
            rate_per_s=args.rate_per_s, rate_burst=args.rate_burst, **storage_overrides(args),
        )
        engine = writer_engine(s.metadata_url)
        try:
            keys = KeyStore(engine).active_count()
        finally:
            engine.dispose()
    except (SettingsError, ValueError) as e:
        print(f"stepline gateway: error: {e}", file=sys.stderr)
        return 2
    if keys == 0 and not s.loopback:
        print(f"stepline gateway: error: refusing to listen on {s.host} without API keys; create one with "
              "`stepline keys create PROJECT --scopes write` or bind 127.0.0.1", file=sys.stderr)
        return 2
    if keys == 0:
        print(f"stepline gateway: no API keys configured: listening on loopback only ({s.host}:{s.port}); "
              "requests need no key", file=sys.stderr)
    else:
        print(f"stepline gateway: {keys} active API keys; listening on {s.host}:{s.port}", file=sys.stderr)
    run_app(create_app(s), host=s.host, port=s.port, shutdown_timeout=10.0,
            access_log=logging.getLogger("aiohttp.access") if args.access_log else None)
    return 0
