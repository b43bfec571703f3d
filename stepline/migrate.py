"""``stepline migrate-storage``: move a deployment's segments and media from one storage location to another (the
data directory to a bucket, a bucket back to a directory, or bucket to bucket).

::

    stepline migrate-storage --to s3://bucket/prefix [--from file:///srv/stepline-data] [--dry-run]

Guarantees:

- Copies every object under ``segments/``, ``blobs/`` and ``archive/`` (the stream archive) of the source; an
  object the destination holds already with the same size is skipped, so an interrupted migration is resumed by
  running the command again, and a second pass after the workers stopped picks up what they committed meanwhile.
- Each object is written complete under its name (:meth:`schemas.objects.ObjectStore.put`) and read back by size
  before it counts as copied; nothing in the source is modified or deleted, and the metadata (which names objects
  relative to the location) needs no change.
- ``--dry-run`` lists what would be copied (counts and bytes) and writes nothing.

To switch: stop the workers and gateways (or accept a second pass), run the command, set
``STEPLINE_STORAGE_URL`` to the destination everywhere, start them again; delete the source when satisfied.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from schemas.objects import ObjectStore, open_store, parse_storage_url
from schemas.settings import DEFAULT_DATA_DIR

PREFIXES = ("segments", "blobs", "archive")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="stepline migrate-storage", description="Copy segments and media from one storage location to another."
    )
    ap.add_argument("--to", required=True, dest="dest", help="destination: s3://bucket/prefix or file:///path")
    ap.add_argument("--from", dest="source", help="source (default: STEPLINE_STORAGE_URL, else the data directory)")
    ap.add_argument("--data-dir", type=Path, help="the data directory (STEPLINE_DATA_DIR, default ./stepline-data)")
    ap.add_argument("--s3-endpoint-url", help="S3 endpoint for both ends (default AWS_ENDPOINT_URL)")
    ap.add_argument("--s3-region", help="S3 region (default AWS_REGION, else us-east-1)")
    ap.add_argument("--dry-run", action="store_true", help="say what would be copied; write nothing")
    return ap


def plan(src: ObjectStore, dst: ObjectStore) -> tuple[list[tuple[str, int]], int]:
    """Objects of ``src`` to copy (name, size), and how many ``dst`` holds already (same name and size)."""
    have = {rel: size for prefix in PREFIXES for rel, size, _m in dst.list(prefix)}
    todo, done = [], 0
    for prefix in PREFIXES:
        for rel, size, _mtime in src.list(prefix):
            if rel.rsplit("/", 1)[-1].startswith("."):  # a temporary name of an unfinished local write
                continue
            if have.get(rel) == size:
                done += 1
            else:
                todo.append((rel, size))
    return todo, done


def migrate(src: ObjectStore, dst: ObjectStore, *, dry_run: bool = False, out: TextIO | None = None) -> tuple[int, int]:
    """Copy what :func:`plan` finds, saying so on ``out`` (default stderr); (objects copied or to copy, bytes)."""
    out = out or sys.stderr
    todo, done = plan(src, dst)
    total = sum(size for _rel, size in todo)
    verb = "would copy" if dry_run else "copying"
    print(
        f"{verb} {len(todo)} objects ({total / 1e6:.1f} MB) from {src.url} to {dst.url}; {done} already there", file=out
    )
    if dry_run:
        return len(todo), total
    for i, (rel, size) in enumerate(todo, 1):
        data = src.get(rel)
        if len(data) != size:
            raise OSError(f"{rel} changed while being copied ({size} then {len(data)} bytes)")
        dst.put(rel, data)
        if not dst.exists(rel):
            raise OSError(f"{rel} is not in {dst.url} after its write")
        if i % 500 == 0:
            print(f"  {i}/{len(todo)} objects", file=out)
    return len(todo), total


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success; 1 with one ``stepline migrate-storage: error: ...`` line otherwise."""
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir or Path(os.environ.get("STEPLINE_DATA_DIR") or DEFAULT_DATA_DIR)
    try:
        source = args.source or os.environ.get("STEPLINE_STORAGE_URL") or None
        kw = {"endpoint": args.s3_endpoint_url, "region": args.s3_region}
        src = open_store(parse_storage_url(source, data_dir, **kw))
        dst = open_store(parse_storage_url(args.dest, data_dir, **kw))
        if src.url == dst.url or (src.local and dst.local and src.base == dst.base):
            raise ValueError("the source and the destination are the same location")
        if src.local and not Path(src.base).is_dir():
            raise ValueError(f"the source {src.base} is not a directory (give --data-dir or --from)")
        n, size = migrate(src, dst, dry_run=args.dry_run)
    except (OSError, ValueError) as e:
        print(f"stepline migrate-storage: error: {e}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(
            f"done: {n} objects ({size / 1e6:.1f} MB) copied; now set STEPLINE_STORAGE_URL={args.dest} for the "
            "workers, gateways and readers",
            file=sys.stderr,
        )
    return 0
