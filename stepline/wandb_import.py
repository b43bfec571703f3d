"""Import W&B offline runs (``run-*.wandb`` files) as stepline runs, through the normal pipeline.

``stepline import-wandb PATH...`` (:func:`main`): each PATH is a ``.wandb`` file or a directory searched for
``run-*.wandb`` files (a ``wandb/`` folder of offline runs, say).

The file format (W&B's ``datastore``): a 7-byte header (``b":W&B"``, magic ``0xBEE1`` as a little-endian uint16,
version byte 0), then LevelDB's log format in 32 KiB blocks counted from the start of the file: each chunk has a
header (CRC-32 IEEE of the type byte + payload as uint32, payload length as uint16, type byte: 1 FULL, 2 FIRST,
3 MIDDLE, 4 LAST), and a block tail shorter than a chunk header is zero padding. Each record is a protobuf
``Record`` (``wandb.proto.wandb_internal_pb2``; the ``wandb`` package is needed only for these classes: install
``stepline[wandb]``).

What is imported, in record order, as the events of one producer:

- the ``run`` record → ``Start`` (W&B's start time, display name, config); ``config`` records → ``Config``;
- each ``history`` record → one ``log(row, step=_step, commit=True)`` at W&B's ``_timestamp``: the row W&B wrote,
  items named by ``key`` or by ``nested_key`` joined with ``.``, values from ``value_json``. Histograms become
  :class:`schemas.Histogram`; images, HTML and tables are read from the run's ``files/`` folder when present;
  other media and values that cannot be logged are skipped and counted (:attr:`WandbRun.skipped`);
- ``metric`` records (``define_metric``) → ``DefineMetric`` with ``step_sync`` off, since W&B already wrote the
  synced step values into its rows;
- ``summary`` records → ``Summary`` for the values that differ from the key's last history value (explicit
  ``run.summary[...]`` values and W&B's min/max/mean summaries), so the run's summary is W&B's;
- the ``exit`` record → ``Finish`` with W&B's exit code. A run without one (still running, or the file was cut)
  stays ``running``.

Guarantees: importing a file twice changes nothing. The producer id is derived from the W&B project, run id, run
folder and file name, and the events are numbered in record order, so the workers skip what they already applied
by ``(producer, seq)``; a file that grew since the last import (a live offline run) adds only its new records.
A truncated last block (a run killed mid-write) is tolerated: the records before it are imported; corruption
anywhere else raises :class:`WandbFormatError`. The calls W&B dropped (a lower ``step``) are not in the file:
W&B only logged a warning for them, so there is nothing to import.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import math
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ingest.batch import Batcher
from ingest.sender import Core, sync_client
from ingest.settings import ClientSettings
from ingest.spill import Outbox
from ingest.spill import spill_path as spill_file_of
from schemas import (
    AnyEvent,
    Config,
    DefineMetric,
    Finish,
    Histogram,
    Html,
    Image,
    Log,
    SchemaError,
    Start,
    SteplineError,
    Summary,
    Table,
    capture,
    check_key,
    decode_event,
    encode_event,
)
from schemas.frame import check_run_id
from schemas.media import collect_blobs
from schemas.settings import positive_float, positive_int

__all__ = ["WandbFormatError", "WandbRun", "import_file", "main", "parse_file", "read_records"]

logger = logging.getLogger("ingest")

HEADER = b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"
BLOCK_SIZE = 32 * 1024
_CHUNK = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
#: Columns the pipeline writes itself: W&B's values go to the event's step and timestamp instead.
_SPECIAL = ("_step", "_timestamp", "_runtime")
_GOALS = {1: "minimize", 2: "maximize"}
#: Events handed to the packer at a time (bounds memory for big files).
_PUMP_EVERY = 2000


class WandbFormatError(SteplineError, ValueError):
    """Not a W&B datastore file, or corrupted before its last block."""


# --- the LevelDB log format --------------------------------------------------------------------------------------


@dataclass
class RecordReader:
    """Records of a ``.wandb`` file's bytes; after iterating, :attr:`truncated` tells if the tail was cut."""

    data: bytes
    truncated: bool = False

    def __iter__(self) -> Iterator[bytes]:
        data = self.data
        if len(data) < len(HEADER) or data[:4] != HEADER[:4]:
            raise WandbFormatError("not a W&B datastore file (no ':W&B' header)")
        if data[: len(HEADER)] != HEADER:
            raise WandbFormatError(f"unsupported W&B datastore header {data[:len(HEADER)]!r}")
        n = len(data)
        last_block = (n - 1) // BLOCK_SIZE
        pos = len(HEADER)
        parts: list[bytes] | None = None  # chunks of a record in progress (FIRST, MIDDLE...)
        while pos < n:
            left = BLOCK_SIZE - pos % BLOCK_SIZE
            if left < _CHUNK.size:  # the block's tail: zero padding
                pos += left
                continue
            if pos + _CHUNK.size > n:
                self.truncated = True
                return
            crc, length, kind = _CHUNK.unpack_from(data, pos)
            if kind == 0 and length == 0:  # zero-filled (preallocated) rest of a block
                pos += left
                continue
            end = pos + _CHUNK.size + length
            if end > n or length > left - _CHUNK.size:
                if pos // BLOCK_SIZE == last_block and end > n:
                    self.truncated = True
                    return
                raise WandbFormatError(f"chunk at offset {pos} runs past its block")
            payload = data[pos + _CHUNK.size:end]
            if zlib.crc32(bytes([kind]) + payload) != crc or kind not in (FULL, FIRST, MIDDLE, LAST):
                if pos // BLOCK_SIZE == last_block:  # a torn write at the end of the file
                    self.truncated = True
                    return
                raise WandbFormatError(f"bad checksum or chunk type at offset {pos}")
            pos = end
            if kind == FULL:
                if parts is not None:
                    raise WandbFormatError(f"record at offset {pos} starts inside another record")
                yield payload
            elif kind == FIRST:
                if parts is not None:
                    raise WandbFormatError(f"record at offset {pos} starts inside another record")
                parts = [payload]
            else:
                if parts is None:
                    raise WandbFormatError(f"chunk at offset {pos} continues no record")
                parts.append(payload)
                if kind == LAST:
                    yield b"".join(parts)
                    parts = None
        if parts is not None:
            self.truncated = True


def read_records(path: str | Path) -> RecordReader:
    """The records of a ``.wandb`` file (iterate the result; then check ``.truncated``)."""
    return RecordReader(Path(path).read_bytes())


# --- records → events --------------------------------------------------------------------------------------------


@dataclass
class WandbRun:
    """One W&B run as stepline events, plus what the file held (for reports and tests)."""

    path: Path
    project: str = ""
    run_id: str = ""
    name: str | None = None
    start_ts: float | None = None
    exit_code: int | None = None
    truncated: bool = False
    #: (event, media blobs) in record order.
    events: list[tuple[AnyEvent, dict[str, bytes]]] = field(default_factory=list)
    #: The history rows W&B wrote, as logged: ``_step``, ``_timestamp`` and the values.
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: Why values or records were not imported, with counts.
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def producer(self) -> str:
        """Stable per W&B run file: the same file (or a longer version of it) is the same producer."""
        ident = f"{self.project}\0{self.run_id}\0{self.path.parent.name}\0{self.path.name}"
        return "wandb-" + hashlib.blake2b(ident.encode(), digest_size=12).hexdigest()


def _item_key(item: Any) -> str:
    return str(item.key) if item.key else ".".join(item.nested_key)


def _item_path(item: Any) -> tuple[str, ...]:
    return (str(item.key),) if item.key else tuple(item.nested_key)


def _tree(items: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """Items by path as a nested dict: W&B writes a media value as one item per field (``h._type``, ...)."""
    root: dict[str, Any] = {}
    for path, value in items:
        node = root
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return root


def _load_json(raw: str) -> Any:
    return json.loads(raw)  # W&B writes NaN and ±Infinity as bare words, which json accepts


class _Converter:
    """``value_json`` → a value ``log()`` accepts (media read from the run folder), or None with a reason."""

    def __init__(self, run: WandbRun) -> None:
        self.run = run
        self.files = run.path.parent / "files"

    def value(self, key: str, raw: Any, out: dict[str, Any]) -> None:
        if isinstance(raw, dict):
            if "_type" in raw:
                media = self.media(key, raw)
                if media is not None:
                    out[key] = media
            else:
                for k, v in raw.items():
                    self.value(f"{key}.{k}", v, out)
            return
        out[key] = raw

    def media(self, key: str, d: dict[str, Any]) -> Any:
        kind = d.get("_type")
        try:
            if kind == "histogram":
                return Histogram(np_histogram=(d["values"], d["bins"]))
            if kind in ("image-file", "html-file", "table-file"):
                p = self.files / str(d.get("path", ""))
                if not d.get("path") or not p.is_file():
                    self.run.skipped[f"{kind} file missing"] += 1
                    return None
                if kind == "image-file":
                    return Image(p)
                if kind == "html-file":
                    return Html(p)
                t = json.loads(p.read_text())
                return Table(columns=t.get("columns"), data=t.get("data"))
        except (SchemaError, KeyError, TypeError, ValueError, OSError) as e:
            self.run.skipped[f"{kind}: {type(e).__name__}"] += 1
            return None
        self.run.skipped[f"unsupported media {kind}"] += 1
        return None

    def captured(self, items: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items.items():
            try:
                check_key(k)
                out[k] = capture(v, k)
            except SchemaError as e:
                self.run.skipped[e.code] += 1
        return out


def _checked(event: AnyEvent) -> bool:
    """Whether the worker will accept the event (the same checks it runs)."""
    try:
        decode_event(encode_event(event))
    except SchemaError:
        return False
    return True


def parse_records(path: Path, records: Iterator[bytes] | RecordReader) -> WandbRun:
    """Turn the records of one W&B run file into stepline events (see the module docstring)."""
    # The optional extra (stepline[wandb]); imported by name so type checking needs no wandb installed.
    pb: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")

    run = WandbRun(path=path)
    conv = _Converter(run)
    last_history: dict[str, str] = {}  # key → value_json of its last history value
    last_ts = 0.0

    def emit(event: AnyEvent, values: dict[str, Any] | None = None) -> None:
        if not _checked(event):
            run.skipped[f"invalid {type(event).__name__} event"] += 1
            return
        blobs: dict[str, bytes] = {}
        if values:
            collect_blobs(values, blobs)
        run.events.append((event, blobs))

    def config_of(rec: Any) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        for item in rec.update:
            k = _item_key(item)
            if k != "_wandb" and not k.startswith("_wandb."):
                raw[k] = _load_json(item.value_json)
        return {k: v for k, v in conv.captured(raw).items() if v is not None}

    pending_summary: list[Any] = []

    def flush_summary() -> None:
        changed: dict[str, tuple[tuple[str, ...], Any]] = {}
        removed: dict[str, Any] = {}
        for summary in pending_summary:
            for item in summary.update:
                k = _item_key(item)
                if k.startswith("_"):
                    continue
                if last_history.get(k) == item.value_json:
                    changed.pop(k, None)
                else:
                    changed[k] = (_item_path(item), _load_json(item.value_json))
                removed.pop(k, None)
            for item in summary.remove:
                k = _item_key(item)
                if not k.startswith("_"):
                    changed.pop(k, None)
                    removed[k] = None
        pending_summary.clear()
        flat: dict[str, Any] = {}
        for k, v in _tree(list(changed.values())).items():
            conv.value(k, v, flat)
        values = {**conv.captured(flat), **removed}
        if values:
            emit(Summary(data=values), values)

    for data in records:
        rec = pb.Record()
        try:
            rec.ParseFromString(data)
        except Exception:  # protobuf's DecodeError is not exported the same way by every runtime
            run.skipped["undecodable record"] += 1
            continue
        which = rec.WhichOneof("record_type")
        if which == "run":
            r = rec.run
            if run.start_ts is None:
                run.run_id = r.run_id
                run.project = r.project or "uncategorized"
                run.name = r.display_name or None
                run.start_ts = r.start_time.seconds + r.start_time.nanos / 1e9 if r.HasField("start_time") else 0.0
                last_ts = run.start_ts
                emit(Start(ts=run.start_ts, name=run.name, config=config_of(r.config)))
            elif r.config.update:
                emit(Config(data=config_of(r.config)))
        elif run.start_ts is None:
            if which not in (None, "header"):
                run.skipped[f"{which} before the run record"] += 1
            continue
        elif which == "config":
            cfg = config_of(rec.config)
            if cfg:
                emit(Config(data=cfg))
        elif which == "history":
            paths: list[tuple[tuple[str, ...], Any]] = []
            specials: dict[str, Any] = {}
            for item in rec.history.item:
                k = _item_key(item)
                if k in _SPECIAL:
                    specials[k] = _load_json(item.value_json)
                    continue
                last_history[k] = item.value_json
                paths.append((_item_path(item), _load_json(item.value_json)))
            items: dict[str, Any] = {}
            for k, v in _tree(paths).items():
                conv.value(k, v, items)
            step = specials.get("_step", rec.history.step.num if rec.history.HasField("step") else None)
            ts = specials.get("_timestamp", last_ts)
            if not isinstance(step, int) or not isinstance(ts, int | float) or not math.isfinite(ts):
                run.skipped["history row without a step"] += 1
                continue
            last_ts = float(ts)
            values = conv.captured(items)
            run.rows.append({"_step": step, "_timestamp": float(ts), **values})
            emit(Log(ts=float(ts), data=values, step=step, commit=True), values)
            flush_summary()
        elif which == "summary":
            # W&B writes the summary of a row just before the row: decide what is explicit once the row is seen.
            pending_summary.append(rec.summary)
            continue
        elif which == "metric":
            m = rec.metric
            name = m.name or m.glob_name
            if name and not name.startswith("_"):
                emit(DefineMetric(
                    name=name, step_metric=m.step_metric or None, hidden=bool(m.options.hidden),
                    goal=_GOALS.get(int(m.goal)), step_sync=False,
                ))
        elif which == "exit":
            flush_summary()
            run.exit_code = int(rec.exit.exit_code)
            end = run.start_ts + rec.exit.runtime if rec.exit.runtime else last_ts
            emit(Finish(ts=max(end, last_ts), exit_code=run.exit_code))
    # A summary still pending at the end of a file without an exit record is left out: the file may grow (a live
    # run), and deciding it now could number the events differently from a later import of the longer file.
    if run.exit_code is not None:
        flush_summary()
    if run.start_ts is None:
        raise WandbFormatError(f"{path}: no run record (not a W&B run file, or cut before its start)")
    check_run_id(run.project, "W&B project")
    check_run_id(run.run_id, "W&B run id")
    return run


def parse_file(path: str | Path) -> WandbRun:
    """Read and convert one ``.wandb`` file. Raises :class:`WandbFormatError` on a corrupted or foreign file."""
    p = Path(path)
    reader = read_records(p)
    run = parse_records(p, reader)
    run.truncated = reader.truncated
    return run


# --- events → Redis, through the SDK's packer and transport ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportResult:
    path: Path
    project: str
    run: str
    producer: str
    events: int
    rows: int
    sent_frames: int
    unsent_frames: int
    spill_path: Path | None
    truncated: bool
    skipped: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.unsent_frames == 0


def import_file(
    path: str | Path, settings: ClientSettings, *, project: str | None = None, timeout: float = 60.0,
) -> ImportResult:
    """Send one W&B run file's events to Redis as stepline frames; ``project`` overrides W&B's project."""
    run = parse_file(path)
    if project is not None:
        run.project = check_run_id(project, "project")
    names = settings.names
    p = names.partition(run.project, run.run_id)
    producer = run.producer
    batcher = Batcher(
        project=run.project, run=run.run_id, producer=producer, stream=names.stream(p),
        blob_key=lambda sha: names.blob(p, sha), limits=settings.limits,
        frame_target_bytes=settings.frame_target_bytes, max_block_rows=settings.max_block_rows,
    )
    spill = spill_file_of(settings.data_dir.absolute(), run.project, run.run_id, producer)
    core = Core(batcher, Outbox(spill, settings.memory_cap_bytes), settings)
    client = sync_client(settings)
    try:
        deadline = time.monotonic() + timeout
        for i, (event, blobs) in enumerate(run.events):
            with batcher.lock:
                batcher.add_event_locked(encode_event(event, settings.limits), blobs)
            if (i + 1) % _PUMP_EVERY == 0:
                core.pump()
                core.drain_sync(client, deadline)
        core.pump()
        while len(core.outbox) and time.monotonic() < deadline:
            core.drain_sync(client, deadline)
            if len(core.outbox):
                time.sleep(max(0.01, min(0.5, core.next_attempt - time.monotonic())))
    finally:
        client.close()
    unsent = len(core.outbox)
    if unsent:
        core.outbox.spill()
    spill_path = core.outbox.close()
    return ImportResult(
        path=run.path, project=run.project, run=run.run_id, producer=producer, events=len(run.events),
        rows=len(run.rows), sent_frames=core.sent_frames, unsent_frames=unsent,
        spill_path=spill_path if unsent else None, truncated=run.truncated, skipped=dict(run.skipped),
    )


def find_run_files(paths: Sequence[str | Path]) -> list[Path]:
    """The ``.wandb`` files named, and the ``run-*.wandb`` files under the directories named, sorted."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(p.rglob("run-*.wandb")))
        else:
            out.append(p)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="stepline import-wandb",
        description="Import W&B offline runs (run-*.wandb files, or directories holding them) as stepline runs. "
                    "Needs the wandb package (pip install 'stepline[wandb]'). Importing twice changes nothing.",
    )
    ap.add_argument("paths", nargs="+", metavar="PATH", help="a .wandb file or a directory to search")
    ap.add_argument("--project", help="import into this project instead of the W&B project")
    ap.add_argument("--redis-url", help="default: STEPLINE_REDIS_URL or redis://127.0.0.1:6379/0")
    ap.add_argument("--namespace", help="default: STEPLINE_NAMESPACE or sl")
    ap.add_argument("--partitions", type=positive_int, help="default: STEPLINE_PARTITIONS or 16")
    ap.add_argument("--data-dir", help="where unsent frames are spilled (default: STEPLINE_DATA_DIR)")
    ap.add_argument("--timeout", type=positive_float, default=60.0,
                    help="seconds to wait for Redis per file (default 60)")
    ap.add_argument("--dry-run", action="store_true", help="read and convert only; print what would be imported")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``stepline import-wandb``: 0 when every file was imported, 1 otherwise, 2 when wandb is missing."""
    args = build_parser().parse_args(argv)
    try:
        importlib.import_module("wandb.proto.wandb_internal_pb2")
    except ImportError:
        print("stepline import-wandb: error: the wandb package is needed: pip install 'stepline[wandb]'",
              file=sys.stderr)
        return 2
    settings, stack = ClientSettings.discover(  # flags > variables > a running local `stepline up` > defaults
        redis_url=args.redis_url, namespace=args.namespace, partitions=args.partitions, data_dir=args.data_dir,
    )
    files = find_run_files(args.paths)
    if not files:
        print(f"stepline import-wandb: error: no run-*.wandb files in {' '.join(map(str, args.paths))}",
              file=sys.stderr)
        return 1
    failed = 0
    last: tuple[str, str] | None = None
    for f in files:
        try:
            if args.dry_run:
                run = parse_file(f)
                print(f"{f}: {run.project}/{run.run_id} {len(run.rows)} rows, {len(run.events)} events"
                      f"{' (truncated)' if run.truncated else ''}{_skipped(dict(run.skipped))}")
                continue
            res = import_file(f, settings, project=args.project, timeout=args.timeout)
        except (OSError, SteplineError) as e:
            failed += 1
            print(f"{f}: error: {e}", file=sys.stderr)
            continue
        if not res.ok:
            failed += 1
            print(f"{f}: {res.unsent_frames} frames not sent (Redis unreachable); kept in {res.spill_path}, "
                  f"resend with `stepline sync {res.spill_path}`", file=sys.stderr)
            continue
        last = (res.project, res.run)
        print(f"{f}: {res.project}/{res.run} {res.rows} rows, {res.events} events, {res.sent_frames} frames"
              f"{' (truncated file: imported up to the cut)' if res.truncated else ''}{_skipped(res.skipped)}")
    if last is not None:  # what to do next with what was imported
        page = settings.page_url or (stack.gateway_url if stack else None)
        print(f"next: stepline history {last[0]}/{last[1]} --samples 10"
              + (f"; the run's page: {page}/#/p/{quote(last[0], safe='')}/r/{quote(last[1], safe='')}"
                 if page else ""))
    if failed:
        print(f"stepline import-wandb: error: {failed} of {len(files)} files were not imported (see above)",
              file=sys.stderr)
    return 1 if failed else 0


def _skipped(skipped: dict[str, int]) -> str:
    if not skipped:
        return ""
    return "; skipped " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
