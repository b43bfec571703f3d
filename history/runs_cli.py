"""``stepline runs PROJECT``: list and find runs, with W&B's filter language (:mod:`history.filters`).

::

    stepline runs mnist
    stepline runs mnist --filter '{"config.lr": {"$gt": 0.01}, "tags": "baseline"}' --order -summary_metrics.val_loss
    stepline runs mnist --columns config.lr,summary_metrics.val_loss --format csv
    stepline runs team/mnist --url http://gateway:8080 --api-key slk_...     # through a gateway

Reads locally (``--data-dir``/``--db-url``, else ``STEPLINE_*``, else a running ``stepline up``) or through a gateway
(``--url``/``--api-key`` or ``STEPLINE_URL``). Prints one line per run: id, name, state, group, job type, tags,
rows, last step, created time, then the ``--columns`` asked for (``config.x``, ``summary_metrics.y``, ``notes``);
``--format json`` prints every field of each run, config and summary included. A malformed filter or order is one
line ``stepline runs: error: ...`` naming the operator or field, and exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from schemas import SteplineError

from .formatting import plain
from .query import Api, RunView

__all__ = ["main"]

_BASE = ("id", "name", "state", "group", "job_type", "tags", "rows", "last_step", "created")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stepline runs", description="List a project's runs, filtered and ordered "
                                 "with W&B's filter language.")
    ap.add_argument("project", metavar="PROJECT", help="the project ('entity/project' is accepted too)")
    ap.add_argument("--filter", dest="filters", metavar="JSON",
                    help='W&B filters, e.g. \'{"config.lr": {"$gt": 0.01}, "state": "finished"}\'')
    ap.add_argument("--order", default="-created_at",
                    help="a field, '-' for descending (default: -created_at; e.g. -summary_metrics.val_loss)")
    ap.add_argument("--state", help="only these states (comma-separated: running,finished,crashed)")
    ap.add_argument("--limit", type=int, default=None, help="at most N runs (default: all)")
    ap.add_argument("--columns", default="", help="extra columns: config.x, summary_metrics.y, notes (comma-separated)")
    ap.add_argument("--format", choices=("table", "csv", "json"), default="table")
    ap.add_argument("--url", help="read through this gateway (default: STEPLINE_URL when set)")
    ap.add_argument("--api-key", help="the gateway's API key (default: STEPLINE_API_KEY)")
    ap.add_argument("--data-dir", help="default: STEPLINE_DATA_DIR, a running `stepline up`, ./stepline-data")
    ap.add_argument("--db-url", help="default: STEPLINE_DB_URL or SQLite in the data directory")
    return ap


def _value(r: RunView, column: str) -> Any:
    head, _, rest = column.partition(".")
    if head in ("config", "summary_metrics", "summary") and rest:
        v: Any = r.config if head == "config" else r.summary
        for part in rest.split("."):
            if not isinstance(v, dict) or part not in v:
                return None
            v = v[part]
        return v
    if column == "created":
        return None if r.created_at is None else dt.datetime.fromtimestamp(r.created_at, dt.UTC).strftime(
            "%Y-%m-%d %H:%M:%S")
    if column == "tags":
        return ",".join(r.tags)
    return getattr(r, column, None)


def _cell(v: Any) -> str:
    p = plain(v)
    if p is None:
        return ""
    if isinstance(p, str):
        return p
    if isinstance(p, float):
        return repr(p)
    return json.dumps(p, separators=(",", ":")) if isinstance(p, dict | list) else str(p)


def _record(r: RunView) -> dict[str, Any]:
    return {"project": r.project, "id": r.id, "name": r.name, "state": r.state, "group": r.group,
            "job_type": r.job_type, "tags": r.tags, "notes": r.notes, "rows": r.rows, "last_step": r.last_step,
            "created_at": r.created_at, "updated_at": r.updated_at, "config": r.config, "summary": r.summary}


def main(argv: Sequence[str] | None = None) -> int:
    """``stepline runs``: 0 on success, 1 on a bad filter, order or argument, or an unreachable store."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv[:-1]):  # "--order -summary_metrics.loss": a value argparse would take for a flag
        if a == "--order" and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"--order={argv[i + 1]}"]
            break
    args = build_parser().parse_args(argv)
    try:
        filters = None
        if args.filters:
            try:
                filters = json.loads(args.filters)
            except ValueError as e:
                raise SteplineError(f"--filter is not JSON: {e}") from None
            if not isinstance(filters, dict):
                raise SteplineError(f"--filter must be a JSON object, got {type(filters).__name__}")
        if args.limit is not None and args.limit < 1:
            raise SteplineError(f"--limit must be >= 1, got {args.limit}")
        extra = [c.strip() for c in args.columns.split(",") if c.strip()]
        remote = {"url": args.url, "api_key": args.api_key} if args.url or args.api_key else {}
        local = {"data_dir": args.data_dir, "db_url": args.db_url} if args.data_dir or args.db_url else {}
        with Api(**remote, **local) as api:
            found = api.runs(args.project, filters=filters, order=args.order,
                             per_page=min(args.limit or 500, 500),
                             state=args.state.split(",") if args.state else None)
            chosen: list[RunView] = []
            for r in found:
                chosen.append(r)
                if args.limit is not None and len(chosen) >= args.limit:
                    break
            if args.format == "json":
                for r in chosen:
                    print(json.dumps(plain(_record(r)), allow_nan=False))
                return 0
            header = [*_BASE, *extra]
            rows = [[_cell(_value(r, c)) for c in header] for r in chosen]
    except (SteplineError, OSError) as e:
        print(f"stepline runs: error: {e}", file=sys.stderr)
        return 1
    if args.format == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return 0
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} run{'s' if len(rows) != 1 else ''}", file=sys.stderr)
    return 0
