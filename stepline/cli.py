"""The ``stepline`` console script: one subcommand per job, composed from the SDK, the workers, the read side
and the gateway.

Subcommands: ``up`` (embedded all-in-one), ``demo`` (the main job end to end), ``worker``, ``replay``,
``status``, ``history``, ``sync``, ``gateway``, ``keys``, ``import-wandb``, ``export``. Settings come from flags
and ``STEPLINE_*`` environment variables, read here once and passed down. A user's mistake (a bad flag value, an
unknown run, an unreachable server, an unwritable path) ends with one line ``stepline: error: ...`` and a non-zero
exit; a traceback means a bug.

Discovery: ``up`` writes the record of its stack (:mod:`schemas.local`) and removes it on exit; every other command
that needs a Redis or a data directory and was given neither by a flag nor a ``STEPLINE_*`` variable uses a running
local ``up`` (explicit flag > variable > local ``up`` > default). ``stepline`` alone prints the commands to start with.

Embedded mode: without ``--redis-url`` a private ``redis-server`` child process is started with its files (AOF on)
under ``<data-dir>/redis`` when the binary is on PATH, else fakeredis's in-process TCP server (fine for a laptop,
far slower than real Redis). Metadata is SQLite and segments are files under the data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from schemas import SettingsError
from schemas.local import LocalStack, local_stack
from schemas.names import Names
from schemas.objects import parse_storage_url
from schemas.settings import add_storage_arguments, port, positive_int, storage_overrides
from workers.service import add_arguments as add_worker_arguments
from workers.service import exit_now, settings_from_args
from workers.service import serve as serve_worker
from workers.settings import WorkerSettings
from workers.worker import Worker, run_abandoning

from . import console
from .embedded import remove_stack_record, start_embedded_redis, write_stack_record

DEFAULT_DATA_DIR = Path("stepline-data")


# --- up ------------------------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway import GatewaySettings, create_app
    from gateway.serve import GatewayRunner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data_dir: Path = args.data_dir or Path(os.environ.get("STEPLINE_DATA_DIR", DEFAULT_DATA_DIR))
    running = local_stack()
    if running is not None:
        raise SettingsError(f"a stepline up is already running (pid {running.pid}, data in {running.data_dir}"
                            + (f", page {running.gateway_url}" if running.gateway_url else "")
                            + "); stop it first, or set STEPLINE_HOME to another folder to run a second one")
    data_dir.mkdir(parents=True, exist_ok=True)
    redis_url = args.redis_url or os.environ.get("STEPLINE_REDIS_URL")
    emb = None
    if not redis_url:
        emb = start_embedded_redis(data_dir, prefer_fake=args.fakeredis)
        redis_url = emb.url
    settings = WorkerSettings.from_env(redis_url=redis_url, data_dir=data_dir, namespace=args.namespace,
                                       partitions=args.partitions, db_url=args.db_url, **storage_overrides(args))
    abs_data_dir = data_dir.resolve()

    async def main() -> None:
        ws = [Worker(WorkerSettings.from_env(redis_url=redis_url, data_dir=data_dir, namespace=settings.namespace,
                                             partitions=settings.partitions, db_url=settings.db_url,
                                             worker_id=f"{settings.worker_id}-{i}", **storage_overrides(args)),
                     handle_signals=False) for i in range(args.workers)]
        # The gateway binds loopback: `up` is the laptop mode (use `stepline gateway` with keys to serve others).
        gw = GatewaySettings.from_env(host="127.0.0.1", port=8080 if args.gateway_port is None else args.gateway_port,
                                      redis_url=redis_url,
                                      data_dir=data_dir, db_url=settings.db_url, namespace=settings.namespace,
                                      partitions=settings.partitions, **storage_overrides(args))
        # Requests still open at shutdown get 2 s: the whole shutdown stays within the workers' drain timeout.
        runner = GatewayRunner(create_app(gw), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        record: Path | None = None
        try:
            try:
                site = web.TCPSite(runner, gw.host, gw.port)
                await site.start()
            except OSError:
                if args.gateway_port is not None:
                    raise
                # The default port is taken (another server): any free one will do, the record names it.
                site = web.TCPSite(runner, gw.host, 0)
                await site.start()
            host, port = runner.addresses[0][:2]
            page = f"http://{host}:{port}"
            loop = asyncio.get_running_loop()

            def stop_all() -> None:
                for w in ws:
                    w.stop()

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop_all)
            tasks = [asyncio.ensure_future(w.async_run()) for w in ws]
            # The record goes out once the workers beat and own the partitions: a script started at once then finds
            # a live worker, and the banner below comes after the workers' start-up lines.
            await _workers_ready(redis_url, settings.names, len(ws), tasks)
            record = write_stack_record(LocalStack(
                pid=os.getpid(), redis_url=redis_url, data_dir=str(abs_data_dir), db_url=settings.db_url,
                gateway_url=page, namespace=settings.namespace, partitions=settings.partitions,
                started_at=time.time()))
            kind = emb.kind if emb else "external Redis"
            print(f"stepline is up ({kind}, {args.workers} worker(s), data in {abs_data_dir}).")
            print(f"Web page: {page}/  (loopback only; the HTTP API is served there too)")
            print(f"Scripts and `stepline` commands on this machine find it with nothing to configure ({record}).")
            print("To pin it (another user, a container, a shell with other STEPLINE_* variables):")
            print(f"  export STEPLINE_REDIS_URL={redis_url}")
            print(f"  export STEPLINE_DATA_DIR={abs_data_dir}")
            if settings.namespace != "sl":
                print(f"  export STEPLINE_NAMESPACE={settings.namespace}")
            print(f"  export STEPLINE_URL={page}")
            print("(STEPLINE_URL sends over HTTP; without it the SDK XADDs to Redis directly.)")
            print("Try: python examples/quickstart.py   Ctrl-C stops.")
            sys.stdout.flush()
            await asyncio.gather(*tasks)
        finally:
            if record is not None:
                remove_stack_record(record, os.getpid())
            await runner.cleanup()

    try:
        # Not asyncio.run: it waits for every executor thread, and a commit still blocked past the workers' drain
        # timeout (a locked SQLite file) would hold the process that long.
        run_abandoning(main())
    finally:
        if emb:
            emb.close()
    if any(t.is_alive() and not t.daemon and t is not threading.main_thread() for t in threading.enumerate()):
        exit_now(0)  # abandoned executor threads: a normal interpreter exit would join them
    return 0


async def _workers_ready(redis_url: str, names: Names, count: int, tasks: Sequence[asyncio.Future[None]],
                         timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """Return once ``count`` workers beat and every partition has an owner, or a worker task ended, or ``timeout``
    passed (then ``up`` goes on: the workers keep trying, and a script waits for them)."""
    from schemas.clients import async_redis

    client = async_redis(redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        deadline = time.monotonic() + timeout
        leases = [names.lease(p) for p in range(names.partitions)]
        while time.monotonic() < deadline and not any(t.done() for t in tasks):
            if await client.hlen(names.workers) >= count and all([await client.exists(k) for k in leases]):
                return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


# --- status / history / replay -------------------------------------------------------------------------------------


def with_local_stack(args: argparse.Namespace, *, read_side: bool = True) -> argparse.Namespace:
    """``args`` with what a running local ``up`` knows filled in where neither a flag nor a variable said where to
    go (the Redis URL decides: given one, nothing of the stack is mixed in). ``read_side=False`` keeps the data
    directory and database (replay writes a new one)."""
    if args.redis_url or os.environ.get("STEPLINE_REDIS_URL"):
        return args
    stack = local_stack()
    if stack is None:
        return args
    fill: list[tuple[str, str, object]] = [
        ("redis_url", "STEPLINE_REDIS_URL", stack.redis_url),
        ("namespace", "STEPLINE_NAMESPACE", stack.namespace),
        ("partitions", "STEPLINE_PARTITIONS", stack.partitions),
    ]
    if read_side:
        fill += [("data_dir", "STEPLINE_DATA_DIR", Path(stack.data_dir)), ("db_url", "STEPLINE_DB_URL", stack.db_url)]
    for attr, env, value in fill:
        if getattr(args, attr, None) is None and not os.environ.get(env) and value is not None:
            setattr(args, attr, value)
    return args


def cmd_status(args: argparse.Namespace) -> int:
    from workers.archive import archived_offset
    from workers.metastore import MetaStore

    settings = settings_from_args(with_local_stack(args))
    store = MetaStore(settings.metadata_url)
    try:
        parts = {int(p["p"]): p for p in store.partitions()}
        # the last entry of each stream's archive: everything up to it can be trimmed from Redis and replayed
        archived = {p: archived_offset(store.engine, p) for p in range(settings.names.partitions)}
    finally:
        store.close()
    names = settings.names
    rows = []
    from schemas.clients import sync_redis

    with sync_redis(settings.redis_url, socket_connect_timeout=3) as r:
        owners = {p: r.get(names.lease(p)) for p in range(names.partitions)}
        for p in range(names.partitions):
            meta = parts.get(p, {})
            offset = str(meta.get("offset", "0-0"))
            start = offset if offset == "0-0" else "(" + offset
            lag = len(r.xrange(names.stream(p), min=start if start != "0-0" else "-", max="+", count=10001))
            owner = owners[p]
            rows.append({
                "partition": p, "owner": owner.decode() if owner else None, "epoch": meta.get("epoch", 0),
                "offset": offset, "archived": archived[p], "lag": lag, "stream_len": r.xlen(names.stream(p)),
                "dead_letters": r.xlen(names.dlq(p)),
            })
        workers = {k.decode(): int(v) for k, v in r.hgetall(names.workers).items()}
    if args.format == "json":
        print(json.dumps({"partitions": rows, "workers": workers}))
        return 0
    now = int(time.time() * 1000)
    print(f"workers: {len(workers)} live")
    for w, hb in workers.items():
        print(f"  {w} (heartbeat {now - hb} ms ago)")
    console.print_table(
        [("part", "right"), ("owner", "left"), ("epoch", "right"), ("offset", "left"), ("archived", "left"),
         ("lag", "right"), ("stream", "right"), ("dlq", "right")],
        [[row["partition"], row["owner"] or "-", row["epoch"], row["offset"], row["archived"],
          ">10000" if int(row["lag"]) > 10000 else row["lag"], row["stream_len"], row["dead_letters"]]
         for row in rows])
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from history import Api, format_history

    with Api(data_dir=args.data_dir, db_url=args.db_url,  # flags > variables > local `up` > default
             storage_url=args.storage_url) as api:
        run = api.run(args.path)
        keys = args.keys.split(",") if args.keys else None
        data = run.history(keys=keys, samples=args.samples, pandas=False)
        print(format_history(data, args.format))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from schemas.settings import normalize_db_url
    from workers.replay import ArchiveSource, replay

    settings = settings_from_args(with_local_stack(args, read_side=False))
    project, run = args.project, args.run
    if args.path:
        parts = args.path.split("/")
        if len(parts) > 2 or not all(parts):
            raise SettingsError(f"replay takes PROJECT or PROJECT/RUN, got {args.path!r}")
        project, run = parts[0], (parts[1] if len(parts) == 2 else None)

    def keep(p: str, r: str) -> bool:
        return (project is None or p == project) and (run is None or r == run)

    source = None
    if args.from_data_dir is not None or args.from_db_url is not None:
        # The live deployment's archive: its metadata names the objects; they are in its storage location, which is
        # the bucket this replay writes to unless told otherwise (a bucket is shared), else its data directory.
        from_dir = args.from_data_dir or settings.data_dir
        if args.from_db_url is None and not (Path(from_dir) / "meta.sqlite").exists():
            raise SettingsError(f"--from-data-dir {from_dir}: no meta.sqlite there (give the live deployment's data "
                                "directory, or --from-db-url for its database)")
        from_db = normalize_db_url(args.from_db_url or f"sqlite:///{Path(from_dir).absolute() / 'meta.sqlite'}")
        try:
            where = parse_storage_url(args.from_storage_url or settings.storage_url, Path(from_dir),
                                      endpoint=settings.s3_endpoint_url, region=settings.s3_region)
        except ValueError as e:
            raise SettingsError(str(e)) from None
        source = ArchiveSource(from_db, where)
    t0 = time.perf_counter()
    report = asyncio.run(replay(settings, keep if (project or run) else None, archive_from=source))
    print(f"replayed {report.entries} entries ({report.archived} from the archive) of {report.partitions} partitions "
          f"({report.runs} runs) into {settings.data_dir} in {time.perf_counter() - t0:.1f} s")
    for gap in report.gaps:
        print(f"WARNING: {gap}" + ("" if source else " (give --from-data-dir or --from-db-url to read the archive)"),
              file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    serve_worker(settings_from_args(with_local_stack(args)))
    return 0


#: Subcommands whose module parses its own arguments (``stepline sync --help`` shows that module's help):
#: name -> (module, its entry point taking argv, one line of help). Imported only when used.
_PASSTHROUGH: dict[str, tuple[str, str, str]] = {
    "sync": ("ingest.sync", "main", "resend frames spilled to disk while Redis was unreachable"),
    "gateway": ("gateway", "main", "the HTTP gateway: authenticated ingest and read API"),
    "keys": ("gateway", "keys_main", "create, list and revoke API keys (create|list|revoke)"),
    "import-wandb": ("stepline.wandb_import", "main", "import W&B offline runs (run-*.wandb files)"),
    "export": ("history.export", "main", "export a run's history to Parquet, CSV or JSON Lines"),
    "migrate-storage": ("stepline.migrate", "main", "copy segments and media to another storage location (a bucket)"),
    "runs": ("history.runs_cli", "main", "list and find a project's runs (--filter JSON --order KEY)"),
}


def cmd_passthrough(args: argparse.Namespace) -> int:
    module, entry, _help = _PASSTHROUGH[args.command]
    rc: int = getattr(importlib.import_module(module), entry)(args.rest)
    return rc


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stepline", description="Streaming ingestion of ML experiment history.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="embedded all-in-one: Redis (child process or fakeredis), workers, SQLite")
    p.add_argument("--redis-url", help="use this Redis instead of an embedded one")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--db-url")
    p.add_argument("--namespace")
    p.add_argument("--partitions", type=positive_int)
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--gateway-port", type=port, default=None,
                   help="the web page's and HTTP gateway's port on 127.0.0.1 (default 8080, or any free one when "
                        "8080 is taken; 0: any free)")
    p.add_argument("--fakeredis", action="store_true", help="use fakeredis even when redis-server is on PATH")
    add_storage_arguments(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("demo", help="the main job end to end on the embedded default")
    p.add_argument("--runs", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--redis-url", help="use this Redis instead of an embedded one")
    p.add_argument("--fakeredis", action="store_true", help="use fakeredis even when redis-server is on PATH")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("worker", help="run one worker process")
    add_worker_arguments(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("replay", help="rebuild history from the stream archive and the streams into a fresh data "
                       "directory")
    add_worker_arguments(p)
    p.add_argument("path", nargs="?", help="PROJECT or PROJECT/RUN (default: everything)")
    p.add_argument("--project")
    p.add_argument("--run")
    p.add_argument("--from-data-dir", type=Path, help="the live deployment's data directory: its stream archive is "
                   "read first (its meta.sqlite names the objects, unless --from-db-url)")
    p.add_argument("--from-db-url", help="the live deployment's metadata database (names the archive objects)")
    p.add_argument("--from-storage-url", help="where the live deployment's archive objects are (default: this "
                   "replay's --storage-url when it is a bucket, else --from-data-dir)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("status", help="partitions, owners, epochs, committed offsets, lag, dead letters")
    add_worker_arguments(p)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("history", help="print a run's history")
    p.add_argument("path", help="PROJECT/RUN")
    p.add_argument("--keys", help="comma-separated keys")
    p.add_argument("--samples", type=positive_int, default=None, help="downsample to about N rows (default: all rows)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--db-url")
    p.add_argument("--storage-url", help="segments and media: s3://bucket/prefix (STEPLINE_STORAGE_URL; default the "
                   "data directory; endpoint, region and credentials from the AWS variables)")
    p.set_defaults(func=cmd_history)

    for name, (_module, _entry, help_) in _PASSTHROUGH.items():
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=cmd_passthrough)
    return ap


OVERVIEW = """\
stepline: streaming ingestion of ML experiment history (`import ingest as wandb`).

  stepline up                   start Redis, a worker and the web page here; scripts find it by themselves
  python examples/quickstart.py log a run (any W&B-style script with `import ingest as wandb`)
  stepline history PROJECT/RUN  print a run's history (--keys, --samples, --format csv|json)
  stepline status               partitions, workers, lag and dead letters
  stepline demo                 8 simulated runs end to end on a private stack, checked against what was logged

More: stepline --help (all commands), stepline COMMAND --help."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(OVERVIEW)
        running = local_stack()
        if running is not None:
            print(f"\nA stepline up is running here (pid {running.pid})"
                  + (f": {running.gateway_url}/" if running.gateway_url else "."))
        return 0
    try:
        if argv and argv[0] in _PASSTHROUGH:
            return cmd_passthrough(argparse.Namespace(command=argv[0], rest=argv[1:]))
        args = build_parser().parse_args(argv)
        rc: int = args.func(args)
        return rc
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        message = user_error(e)
        if message is None:
            raise  # a bug: its traceback is the report
        console.error(message)
        return 1


def user_error(e: BaseException) -> str | None:
    """One line for an error a user can fix (bad input, a server that cannot be reached, a path that cannot be
    used), or None for anything else."""
    import redis
    import sqlalchemy.exc

    from schemas import SteplineError

    if isinstance(e, SteplineError | LookupError):
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # str(KeyError) adds quotes
        return str(text) or type(e).__name__
    if isinstance(e, redis.ConnectionError | redis.TimeoutError):
        return f"cannot reach Redis: {e} (check --redis-url / STEPLINE_REDIS_URL)"
    if isinstance(e, redis.RedisError):
        return f"Redis refused the request: {e}"
    if isinstance(e, sqlalchemy.exc.OperationalError | sqlalchemy.exc.ArgumentError):
        first = str(e.orig if isinstance(e, sqlalchemy.exc.DBAPIError) else e).strip().splitlines()[0]
        return f"cannot use the metadata database: {first} (check --db-url / STEPLINE_DB_URL and --data-dir)"
    if isinstance(e, OSError):
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or e}{where}"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
