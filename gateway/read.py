"""The read API: thin HTTP over :class:`history.query.Api` (same semantics; every call runs in a thread).

``GET /api/v1/projects/{project}/runs`` (``?state=running,finished``) · ``.../runs/{run}`` (state, config,
summary, counters, warnings, conflicts, rejection counts and the latest rejections) · ``.../runs/{run}/history``
(``keys=a,b&samples=500|all&x_axis=&min_step=&max_step=``) · ``.../runs/{run}/scan`` (``keys&page_size&min_step&
max_step``, streamed; both take ``split_kinds=1`` for one column per kind of a key, ``key`` and ``key:<kind>``,
instead of W&B's one column per key; ``key=<one key>``, repeated, asks for keys holding commas) ·
``.../runs/{run}/sampled`` (``key&x_axis&buckets&x_min&x_max``) ·
``.../runs/{run}/sections`` · ``GET /api/v1/projects`` (the projects the caller may read: every project in open
mode, the key's own project otherwise, with run counts) · ``GET /api/v1/blobs/{sha256}?project=&run=`` (a stored
media blob that run references, 404 otherwise: images with their type, HTML as ``text/html`` under a ``sandbox``
CSP so it can never run as the page's origin; immutable, so cacheable for good).

``format=json`` (default) | ``msgpack`` | ``csv`` | ``exact``, or by ``Accept`` (``application/msgpack``,
``text/csv``, ``application/x-stepline-msgpack`` for ``exact``) when ``format`` is absent; every stored value is
served in each (README, "HTTP gateway"). ``exact`` is msgpack in the store's own codec (numpy arrays with their
dtype, media as media), what the remote ``history.Api`` reads; its ``scan`` is a stream of pages, each a 4-byte
big-endian length and a msgpack array of rows.
JSON has no NaN: missing and NaN are omitted from rows (as :func:`history.formatting.format_history`) or ``null``
elsewhere (inside lists, arrays, config, summary, sampled arrays); ±inf are ``"Infinity"``/``"-Infinity"``
(:func:`history.formatting.plain`, all the way down). msgpack keeps floats bit for bit (NaN, ±inf, -0.0) and
media as W&B-style maps. CSV writes floats with ``repr`` (exact), ±inf as ``Infinity``/``-Infinity``, NaN and
missing as empty cells, anything else as JSON text. Complex numbers (stored before they were refused) are
``{"_type": "complex", "real", "imag"}`` in every format. ``scan`` streams: JSON lines
(``application/x-ndjson``), a msgpack stream of maps, or CSV with the run's columns as the header.
Unknown run → 404 ``not_found``; a malformed parameter → 400.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from itertools import islice
from typing import Any, TypeVar

import msgpack
import numpy as np
import pyarrow as pa
from aiohttp import web
from sqlalchemy import func, select

from history.formatting import format_history, plain
from history.query import QueryError, RunNotFound, RunView, columns_of
from schemas import Media, key_ident, packb
from schemas.store import STEP, blob_path, info_counts, runs

from .errors import Refused
from .state import GW
from .write import blob_target, path_ids

log = logging.getLogger("stepline.gateway")
FORMATS = ("json", "msgpack", "csv", "exact")
#: The ``exact`` format's media type: msgpack in the store's codec (``schemas.packb``), which the remote
#: ``history.Api`` decodes into the very values the local one returns (numpy arrays with their dtype, media).
EXACT_TYPE = "application/x-stepline-msgpack"
#: ``history`` in the ``exact`` format: columns as raw array bytes after a msgpack head (:func:`_columns_body`).
COLUMNS_TYPE = "application/x-stepline-columns"
T = TypeVar("T")


def _wire(v: Any) -> Any:
    """A msgpack-friendly value: arrays as lists, numpy scalars unwrapped, media as W&B dicts; floats kept."""
    if isinstance(v, np.ndarray):
        return [_wire(x) for x in v.tolist()] if v.dtype.kind in "Oc" else v.tolist()
    if isinstance(v, np.generic):
        return _wire(v.item())
    if isinstance(v, Media):
        return _wire(v.to_dict())
    if isinstance(v, dict):
        return {str(k): _wire(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_wire(x) for x in v]
    if isinstance(v, complex):  # msgpack has no complex type: the map JSON has (plain), floats kept
        return {"_type": "complex", "real": v.real, "imag": v.imag}
    return v


#: Accept header media types -> format (``format=`` wins over Accept).
_ACCEPT = {EXACT_TYPE: "exact", "application/msgpack": "msgpack", "application/x-msgpack": "msgpack",
           "text/csv": "csv", "application/json": "json"}


def _fmt(request: web.Request) -> str:
    f = request.query.get("format")
    if f is None:
        accept = [t.split(";")[0].strip().lower() for t in request.headers.get("Accept", "").split(",")]
        return next((_ACCEPT[t] for t in accept if t in _ACCEPT), "json")
    if f not in FORMATS:
        raise Refused(400, "bad_param", f"format must be one of {list(FORMATS)}, got {f!r:.40}")
    return f


_PLAIN = frozenset({float, int, str, bool, type(None), bytes})


def _exact_row(row: dict[str, Any]) -> dict[str, Any]:
    """A scan row for the ``exact`` format; most rows hold only plain values and go as they are."""
    for v in row.values():
        if type(v) not in _PLAIN:
            return {k: x if type(x) in _PLAIN else _exact(x) for k, x in row.items()}
    return row


def _exact(v: Any) -> Any:
    """A value for the ``exact`` format (:func:`schemas.packb`, the store's own codec): numeric arrays and media
    travel as they are (dtype and shape kept), object arrays as lists of their values, complex numbers (only in
    data stored before they were refused) in their map form."""
    if type(v) in _PLAIN:
        return v
    if isinstance(v, np.ndarray):
        return [_exact(x) for x in v.tolist()] if v.dtype.kind in "OcUS" else v
    if isinstance(v, dict):
        return {str(k): _exact(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_exact(x) for x in v]
    if isinstance(v, complex):
        return {"_type": "complex", "real": v.real, "imag": v.imag}
    if isinstance(v, Media):
        return Media(v.kind, _exact(v.payload))
    return v


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _param(request: web.Request, name: str, parse: Callable[[str], Any], what: str) -> Any:
    """The query parameter ``name`` parsed, None when absent or empty; 400 naming it when it does not parse."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse(raw)
    except ValueError:
        raise Refused(400, "bad_param", f"{name} must be {what}, got {raw!r:.40}") from None


def int_param(request: web.Request, name: str, default: int | None, lo: int | None = None) -> int | None:
    v: int | None = _param(request, name, int, "an integer")
    if v is None:
        return default
    if lo is not None and v < lo:
        raise Refused(400, "bad_param", f"{name} must be >= {lo}, got {v}")
    if not _INT64_MIN <= v <= _INT64_MAX:  # steps and counts are int64 in the store and in SQLite
        raise Refused(400, "bad_param", f"{name} must fit in a signed 64-bit integer, got {v}")
    return v


def float_param(request: web.Request, name: str) -> float | None:
    v: float | None = _param(request, name, float, "a number")
    if v is not None and not math.isfinite(v):
        raise Refused(400, "bad_param", f"{name} must be a finite number, got {v}")
    return v


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: ``1``/``true`` or ``0``/``false`` (absent: false); 400 naming it otherwise."""
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise Refused(400, "bad_param", f"{name} must be 1, 0, true or false, got {raw!r:.40}")


def _keys(request: web.Request) -> list[str] | None:
    """The keys asked for: each ``key=`` parameter is one key as it is (commas, spaces, any text), each ``keys=``
    a comma-separated list (the first form, kept for keys without commas); both may be given, in that order."""
    one = [k for k in request.query.getall("key", []) if k]
    listed = [k for part in request.query.getall("keys", []) for k in part.split(",") if k]
    return [*one, *listed] or None


def _encode(obj: Any, fmt: str, table: Callable[[], tuple[list[str], list[list[Any]]]] | None = None) -> web.Response:
    if fmt == "exact":
        return web.Response(body=packb(_exact(obj)), content_type=EXACT_TYPE)
    if fmt == "msgpack":
        return web.Response(body=msgpack.packb(_wire(obj), use_bin_type=True), content_type="application/msgpack")
    if fmt == "csv":
        if table is None:
            raise Refused(400, "bad_param", "format=csv is not available here")
        header, rows = table()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return web.Response(text=buf.getvalue(), content_type="text/csv")
    return web.Response(text=json.dumps(plain(obj), allow_nan=False), content_type="application/json")


async def call(gw: GW, fn: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(fn)
    except RunNotFound as e:
        raise Refused(404, "not_found", str(e)) from None
    except QueryError as e:
        raise Refused(400, "bad_query", str(e)) from None


async def authorized(request: web.Request) -> tuple[GW, str, str | None]:
    gw = request.app[GW.KEY]
    project, run = path_ids(request)
    await gw.auth.authorize(request.headers.get("Authorization"), project, "read", request.remote or "?")
    return gw, project, run


def run_brief(r: RunView) -> dict[str, Any]:
    return {"project": r.project, "id": r.id, "name": r.name, "state": r.state, "rows": r.rows,
            "last_step": r.last_step, "rejected": sum(r.rejected.values()), "created_at": r.created_at,
            # The counts sl_runs holds for ordering runs by them (schemas.store.info_counts).
            "updated_at": r.updated_at, **info_counts(r.info), "group": r.group, "job_type": r.job_type,
            "tags": r.tags, "notes": r.notes}


_BRIEF = ("project", "id", "name", "state", "rows", "last_step", "rejected", "created_at", "updated_at",
          "column_count", "warning_count", "group", "job_type", "tags", "notes")
_LISTED = (*_BRIEF, "config", "summary")


def _run_listed(r: RunView) -> dict[str, Any]:
    return {**run_brief(r), "config": r.config, "summary": r.summary}


def _run_tagged(r: RunView) -> dict[str, Any]:
    from .live import tagged  # live imports this module (run_brief)

    return {**run_brief(r), "config": tagged(r.config), "summary": tagged(r.summary)}


async def list_projects(request: web.Request) -> web.Response:
    gw = request.app[GW.KEY]
    key = await gw.auth.identify(request.headers.get("Authorization"), "read", request.remote or "?")
    fmt = _fmt(request)

    def load() -> list[dict[str, Any]]:
        if not gw.api._ready():
            return []
        q = (select(runs.c.project, func.count().label("runs"), func.max(runs.c.updated_at).label("updated_at"))
             .group_by(runs.c.project).order_by(runs.c.project))
        if key is not None:  # a key opens its own project only
            q = q.where(runs.c.project == key.project)
        with gw.api._connect() as conn, conn.begin():
            found = [{"name": r.project, "runs": int(r.runs), "updated_at": r.updated_at} for r in conn.execute(q)]
        if key is not None and not found:
            found = [{"name": key.project, "runs": 0, "updated_at": None}]
        return found

    projects = await call(gw, load)
    return _encode({"projects": projects}, fmt, lambda: (["name", "runs", "updated_at"],
                                                         [[p["name"], p["runs"], p["updated_at"]] for p in projects]))


def _sniff(head: bytes) -> str:
    """A media blob's content type from its first bytes (blobs are stored without one)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"BM"):
        return "image/bmp"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not merely a character cut at the end of the sniffed prefix
            return "application/octet-stream"
    return "text/html; charset=utf-8"


#: How many (project, run, sha256) grants of the blob route are remembered (a run's references never go away).
#: Blobs are streamed in pieces of this size (the first one also decides the Content-Type).
_BLOB_CHUNK = 1 << 20
_GRANTS_MAX = 100_000


async def get_blob(request: web.Request) -> web.StreamResponse:
    """A media blob, to a reader of a run that references it (a read key of project A never gets project B's blob
    by naming one of A's runs: the run's stored values must hold the sha). 404 ``not_found`` alike for an unknown
    run, a run that does not reference the blob and a blob not stored (yet), so the answer says nothing of other
    projects' blobs."""
    gw = request.app[GW.KEY]
    sha, project, run = blob_target(request)
    await gw.auth.authorize(request.headers.get("Authorization"), project, "read", request.remote or "?")
    rel = blob_path(sha)
    grant = (project, run, sha)
    granted = grant in gw.blob_grants

    def head() -> tuple[pa.NativeFile, bytes] | None:
        r = gw.api.run(f"{project}/{run}")  # the run must exist in the project the key opens (404 otherwise)
        if not granted and not r.references_blob(sha):
            raise RunNotFound(f"run {project}/{run} has no media blob {sha}")
        try:  # through the store (data directory or bucket): a random-access file knows its size
            f = gw.api.objects.open(rel)
        except FileNotFoundError:
            return None
        return f, bytes(f.read(_BLOB_CHUNK))

    opened = await call(gw, head)
    if opened is None:
        raise Refused(404, "not_found", f"no stored blob {sha} (not committed yet, or never logged)")
    f, first = opened
    gw.blob_grants[grant] = None
    gw.blob_grants.move_to_end(grant)
    if len(gw.blob_grants) > _GRANTS_MAX:
        gw.blob_grants.popitem(last=False)
    # Content-addressed: the bytes behind a name never change. The sandbox CSP gives HTML an opaque origin, so a
    # logged page cannot reach this origin's storage (the API key) or its API.
    resp = web.StreamResponse(headers={
        "Content-Type": _sniff(first[:512]), "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"})
    try:
        resp.content_length = f.size()
        await resp.prepare(request)
        piece = first
        while piece:  # one chunk in memory at a time; reads off the event loop
            await resp.write(piece)
            piece = bytes(await asyncio.to_thread(f.read, _BLOB_CHUNK))
        await resp.write_eof()
    finally:
        f.close()
    return resp


async def list_runs(request: web.Request) -> web.Response:
    """Runs of a project: ``?filters=<W&B filter JSON>&order=-summary_metrics.loss&per_page=50&page=0&state=``.
    Without ``per_page`` every match is listed. Each run: the brief fields, group, job_type, tags, notes, config
    and summary; ``total`` counts all matches. A malformed filter is 400 ``bad_query`` naming the operator or
    field. ``values=tagged`` (JSON only; the web page's runs table) sends config and summary as ``page_info`` does
    (:func:`gateway.live.tagged`: NaN and ±inf as ``{"_type": "nonfinite", ...}``, ints past 2**53 as
    ``{"_type": "bigint", ...}``) instead of JSON's ``null``/``"Infinity"``, which read as a missing value and a
    string."""
    gw, project, _ = await authorized(request)
    fmt = _fmt(request)
    raw_state = request.query.get("state")
    state = raw_state.split(",") if raw_state else None
    raw_filters = request.query.get("filters")
    filters = None
    if raw_filters:
        try:
            filters = json.loads(raw_filters)
        except ValueError as e:
            raise Refused(400, "bad_query", f"filters must be JSON: {e}") from None
        if not isinstance(filters, dict):
            raise Refused(400, "bad_query", f"filters must be a JSON object, got {type(filters).__name__}")
    # An empty order= is refused as the Api refuses order="" (not taken for the default).
    order = request.query.get("order", "-created_at")
    per_page = int_param(request, "per_page", None, lo=1)
    page = int_param(request, "page", 0, lo=0)
    assert page is not None
    values = request.query.get("values", "plain")
    if values not in ("plain", "tagged"):
        raise Refused(400, "bad_param", f"values must be plain or tagged, got {values!r:.40}")
    if values == "tagged" and fmt != "json":
        raise Refused(400, "bad_param", "values=tagged is for format=json (msgpack and exact keep every value)")
    listed = _run_tagged if values == "tagged" else _run_listed

    def load() -> tuple[list[dict[str, Any]], int]:
        found = gw.api.runs(project, filters=filters, order=order, per_page=per_page or 1000, state=state)
        if per_page is None:
            chosen = list(found)
            return [listed(r) for r in chosen], len(chosen)
        return [listed(r) for r in found.page(page)], len(found)

    briefs, total = await call(gw, load)
    body = {"runs": briefs, "total": total, "page": page, "per_page": per_page}
    return _encode(body, fmt, lambda: (list(_LISTED), [[_csv_cell(b[k]) for k in _LISTED] for b in briefs]))


async def get_run(request: web.Request) -> web.Response:
    gw, project, run = await authorized(request)
    fmt = _fmt(request)
    limit = None if request.query.get("rejections") == "all" else int_param(request, "rejections", 100, lo=0)

    def load() -> dict[str, Any]:
        r = gw.api.run(f"{project}/{run}")
        return {**run_brief(r), "config": r.config, "summary": r.summary, "warnings": r.warnings,
                "conflicts": r.conflicts, "rejections_by_reason": r.rejected, "exit_code": r.exit_code,
                "columns": r.columns, "metrics": r.metrics, "rejections": r.rejections(limit)}

    info = await call(gw, load)
    return _encode(info, fmt, lambda: (["field", "value"], [[k, json.dumps(plain(v), allow_nan=False)]
                                                          for k, v in info.items()]))


async def sections(request: web.Request) -> web.Response:
    gw, project, run = await authorized(request)
    fmt = _fmt(request)
    secs = await call(gw, lambda: gw.api.run(f"{project}/{run}").sections())
    return _encode({"sections": secs}, fmt,
                   lambda: (["section", "key"], [[s, k] for s, ks in secs.items() for k in ks]))


async def history(request: web.Request) -> web.StreamResponse:
    gw, project, run = await authorized(request)
    fmt = _fmt(request)
    keys = _keys(request)
    raw_samples = request.query.get("samples")
    samples = None if raw_samples in ("all", "none") else int_param(request, "samples", 500, lo=1)
    x_axis = request.query.get("x_axis", "_step")
    lo, hi = int_param(request, "min_step", None), int_param(request, "max_step", None)
    split = _flag(request, "split_kinds")

    def load() -> Any:
        data = gw.api.run(f"{project}/{run}").history(keys=keys, samples=samples, x_axis=x_axis, min_step=lo,
                                                      max_step=hi, pandas=False, split_kinds=split)
        if fmt == "json":
            return format_history(data, "json")
        if fmt == "exact":
            return _columns_body(data)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(list(data))
            w.writerows([_csv_cell(a[i]) for a in data.values()] for i in range(len(next(iter(data.values()), ()))))
            return buf.getvalue()
        return msgpack.packb({"columns": list(data), "data": {k: _wire(v) for k, v in data.items()}},
                             use_bin_type=True)

    out = await call(gw, load)
    if fmt == "json":
        return web.Response(text=out, content_type="application/json")
    if fmt == "csv":
        return web.Response(text=out, content_type="text/csv")
    if fmt == "exact":
        head, buffers = out
        resp = web.StreamResponse(headers={"Content-Type": COLUMNS_TYPE})
        resp.content_length = len(head) + sum(b.nbytes + _pad(b.nbytes) for b in buffers)
        await resp.prepare(request)
        await resp.write(head)
        for b in buffers:  # the arrays' own memory: no copy on the way out
            await resp.write(b)
            if _pad(b.nbytes):
                await resp.write(bytes(_pad(b.nbytes)))
        await resp.write_eof()
        return resp
    return web.Response(body=out, content_type="application/msgpack")


def _columns_body(data: dict[str, Any]) -> tuple[bytes, list[memoryview]]:
    """History columns in the ``exact`` format's columnar form (``COLUMNS_TYPE``): a 4-byte big-endian length, a
    msgpack map ``{"columns": [names], "arrays": {name: [dtype, shape, nbytes]}, "data": {name: [values]}}``
    (numeric arrays are listed under ``arrays``, object columns under ``data``), then each numeric array's raw bytes
    in ``arrays`` order, each starting at a multiple of 8 bytes from the start (zero padding), so the client's views
    are aligned."""
    arrays: dict[str, list[Any]] = {}
    values: dict[str, Any] = {}
    buffers: list[memoryview] = []
    for name, arr in data.items():
        if isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf":
            c = np.ascontiguousarray(arr)
            arrays[name] = [c.dtype.str, list(c.shape), c.nbytes]
            buffers.append(c.data.cast("B"))
        else:
            values[name] = _exact(arr)
    head = packb({"columns": list(data), "arrays": arrays, "data": values})
    return len(head).to_bytes(4, "big") + head + bytes(_pad(4 + len(head))), buffers


def _pad(n: int) -> int:
    return -n % 8

async def sampled(request: web.Request) -> web.Response:
    gw, project, run = await authorized(request)
    fmt = _fmt(request)
    key = request.query.get("key")
    if not key:
        raise Refused(400, "bad_param", "sampled needs ?key=")
    x_axis = request.query.get("x_axis", "_step")
    buckets = int_param(request, "buckets", 1000, lo=1)
    assert buckets is not None
    x_min, x_max = float_param(request, "x_min"), float_param(request, "x_max")
    if x_axis == STEP:  # on the step axis the bounds become an int64 step range
        for name, v in (("x_min", x_min), ("x_max", x_max)):
            if v is not None and not -(2.0**63) < v < 2.0**63:
                raise Refused(400, "bad_param", f"{name} on the step axis must be within the int64 range, got {v!r}")
    s = await call(gw, lambda: gw.api.run(f"{project}/{run}").sampled(key, x_axis=x_axis, buckets=buckets,
                                                                        x_min=x_min, x_max=x_max))
    obj = dict(s)
    return _encode(obj, fmt, lambda: (["x", "y", "step"], [[plain(a), plain(b), int(c)] for a, b, c in
                                                          zip(s["x"], s["y"], s["step"], strict=True)]))


def _header(r: RunView, keys: Sequence[str] | None, split: bool) -> list[str]:
    cols = columns_of(r.info, split)
    if keys is not None:
        want = {key_ident(k) for k in keys}
        cols = [c for c in cols if key_ident(c.key) in want or key_ident(c.label) in want
                or key_ident(c.field) in want]
        if not split:  # a field name of a key with several kinds names its own column (RunView._resolve)
            multi = {k for k in (key_ident(c.key) for c in columns_of(r.info))
                     if sum(key_ident(c.key) == k for c in columns_of(r.info)) > 1}
            cols = [replace(c, name=c.field) if key_ident(c.key) not in want and key_ident(c.key) in multi else c
                    for c in cols]
    return list(dict.fromkeys(["_step", "_timestamp", "_runtime", *(c.label for c in cols)]))


async def scan(request: web.Request) -> web.StreamResponse:
    gw, project, run = await authorized(request)
    fmt = _fmt(request)
    keys = _keys(request)
    page = int_param(request, "page_size", 1000, lo=1)
    assert page is not None
    page = min(page, 10_000)
    lo, hi = int_param(request, "min_step", 0), int_param(request, "max_step", None)
    split = _flag(request, "split_kinds")

    def open_scan() -> tuple[list[str], Iterator[dict[str, Any]]]:
        r = gw.api.run(f"{project}/{run}")
        return _header(r, keys, split), r.scan_history(keys=keys, page_size=page, min_step=lo, max_step=hi,
                                                       split_kinds=split)

    header, rows = await call(gw, open_scan)
    ctype = {"json": "application/x-ndjson", "msgpack": "application/msgpack", "csv": "text/csv",
             "exact": EXACT_TYPE}[fmt]
    resp = web.StreamResponse(headers={"Content-Type": ctype})
    await resp.prepare(request)
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(header)
        await resp.write(buf.getvalue().encode())
    try:
        while True:
            batch = await asyncio.to_thread(lambda: list(islice(rows, page)))
            if not batch:
                break
            await resp.write(_encode_rows(batch, fmt, header))
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        # The status line is gone already: log, and cut the stream short so the client sees it is incomplete.
        log.exception("gateway: scan of %s/%s failed mid-stream", project, run)
        request.transport and request.transport.close()  # type: ignore[func-returns-value]
        return resp
    await resp.write_eof()
    return resp


def _encode_rows(batch: list[dict[str, Any]], fmt: str, header: list[str]) -> bytes:
    if fmt == "json":
        return "".join(json.dumps({k: v for k, v in ((k, plain(v)) for k, v in row.items()) if v is not None},
                                  allow_nan=False) + "\n" for row in batch).encode()
    if fmt == "msgpack":
        return b"".join(msgpack.packb(_wire(row), use_bin_type=True) for row in batch)
    if fmt == "exact":  # one page: its length (4 bytes, big-endian), then the rows as one msgpack array
        page = packb([_exact_row(row) for row in batch])
        return len(page).to_bytes(4, "big") + page
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in batch:
        w.writerow(["" if row.get(h) is None else _csv_cell(row[h]) for h in header])
    return buf.getvalue().encode()


def _csv_cell(v: Any) -> str:
    p = plain(v)
    if p is None:
        return ""
    if isinstance(p, str | int | float | bool):
        return str(p)
    return json.dumps(p, separators=(",", ":"))
