"""Live updates for the web page as Server-Sent Events (``text/event-stream``), so an open page holds one connection
instead of polling:

- ``GET /api/v1/projects/{project}/runs/{run}/events``: one run (the run page);
- ``GET /api/v1/projects/{project}/events?run=a&run=b&since=12&since=-1``: up to :data:`MAX_RUNS` runs of a project
  in one stream (the compare page), ``since`` values paired with the ``run`` values in order.

Events (each ``data:`` is one line of strict JSON; every event of the project-wide stream names its ``"run"``):

- ``run``: the run as the page reads it (``.../page_info``: state, counters, columns, config, summary, the latest
  100 rejections; a non-finite float in config or summary as ``{"_type": "nonfinite", "value": "NaN"}``), once,
  first on connect;
- ``run_delta``: afterwards, only what changed since the last ``run``/``run_delta`` of that run:
  ``{"set": {field: value}, "del": [field], "keys": {"config"|"summary"|"rejections_by_reason": {"set": {k: v},
  "del": [k]}}}`` (those three dicts are diffed key by key; any other field is sent whole when it changed);
- ``rows``: ``{"from_step", "last_step", "rows": [...]}``, the committed rows after the last step sent (at first:
  after ``?since=STEP``, the last step the page had read, so nothing committed in between is missed; without it,
  after the run's last step at connect), as
  ``history`` serves them in JSON (missing and NaN omitted); at most :data:`MAX_ROWS` rows per event;
- ``reset``: ``{"last_step"}`` instead of ``rows`` when more than :data:`MAX_ROWS` rows arrived at once (the
  page re-reads its charts' sampled lines once rather than being sent every row);
- ``end``: the run finished or crashed and everything was sent (the stream ends when every run it follows has);
- ``gone``: the run no longer exists.

A run that does not exist is a plain 404 ``not_found`` JSON error before any event. Guarantees: the store is
checked every ``interval`` seconds (``?interval=``, 0.2 to 10, default 1) in a thread; a comment line is sent at
least every :data:`HEARTBEAT_S` so a vanished client is noticed; at most :data:`MAX_STREAMS` streams are open
per gateway and :data:`MAX_PER_CLIENT` per client address (429 ``too_many_streams`` beyond); nothing is queued
per client (each write waits for the socket), so a slow reader costs one event's bytes. On gateway shutdown
every stream ends at once (``on_shutdown``), leaving no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from history.formatting import format_history, plain
from history.query import RunNotFound, RunView

from .errors import Refused
from .read import authorized, call, float_param, int_param, run_brief
from .state import GW

MAX_ROWS = 5000
MAX_STREAMS = 256
MAX_PER_CLIENT = 16
MAX_RUNS = 32
HEARTBEAT_S = 15.0
#: Dict fields of the run diffed key by key in ``run_delta`` (a live run's summary changes a few keys per step).
KEYED = ("config", "summary", "rejections_by_reason")


@dataclass
class Live:
    """The open streams of one app: a count per client and the event that ends them all on shutdown."""

    closing: asyncio.Event = field(default_factory=asyncio.Event)
    clients: Counter[str] = field(default_factory=Counter)

    @property
    def open(self) -> int:
        return sum(self.clients.values())


LIVE_KEY = web.AppKey("stepline_live", Live)


def _event(name: str, data: Any) -> bytes:
    body = data if isinstance(data, str) else json.dumps(plain(data), allow_nan=False)
    return f"event: {name}\ndata: {body}\n\n".encode()


@dataclass
class _Follow:
    """One run a stream follows: what was last sent of it."""

    path: str
    info: dict[str, Any]
    sent_step: int
    run: str | None = None  # named in every event (the project-wide stream)
    sent: dict[str, Any] | None = None
    done: bool = False

    def tag(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"run": self.run, **data} if self.run is not None else data


def _follow(path: str, info: dict[str, Any], since: int | None, run: str | None) -> _Follow:
    last = -1 if info["last_step"] is None else int(info["last_step"])
    # rows after sent_step are sent; the page has the rest
    return _Follow(path, info, last if since is None else min(since, last), run)


async def _open(request: web.Request, live: Live) -> tuple[float, str]:
    interval = float_param(request, "interval")
    interval = 1.0 if interval is None else min(max(interval, 0.2), 10.0)
    client = request.remote or "?"
    if live.open >= MAX_STREAMS or live.clients[client] >= MAX_PER_CLIENT:
        raise Refused(429, "too_many_streams", f"at most {MAX_PER_CLIENT} live streams per client and "
                      f"{MAX_STREAMS} per gateway are open at once", retry_after=5.0)
    return interval, client


async def _serve(request: web.Request, gw: GW, live: Live, client: str, follows: list[_Follow],
                 interval: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    live.clients[client] += 1
    try:
        await resp.prepare(request)
        await _stream(gw, live, resp, follows, interval)
    except (ConnectionResetError, ConnectionError):
        pass  # the page went away
    finally:
        live.clients[client] -= 1
        if live.clients[client] <= 0:
            del live.clients[client]
    return resp


async def events(request: web.Request) -> web.StreamResponse:
    gw, project, run = await authorized(request)
    live = request.app[LIVE_KEY]
    interval, client = await _open(request, live)
    since = int_param(request, "since", None, lo=-1)
    path = f"{project}/{run}"
    first = await call(gw, lambda: run_payload(gw.api.run(path), 100))  # 404 before any event
    return await _serve(request, gw, live, client, [_follow(path, first, since, None)], interval)


async def project_events(request: web.Request) -> web.StreamResponse:
    gw, project, _ = await authorized(request)
    live = request.app[LIVE_KEY]
    runs = list(dict.fromkeys(r for r in request.query.getall("run", []) if r))
    if not runs:
        raise Refused(400, "bad_param", "events needs at least one ?run=")
    if len(runs) > MAX_RUNS:
        raise Refused(400, "bad_param", f"at most {MAX_RUNS} runs per stream, got {len(runs)}")
    raw_since = request.query.getall("since", [])
    try:
        since = [int(x) for x in raw_since]
    except ValueError:
        raise Refused(400, "bad_param", "since must be integers (one per run)") from None
    interval, client = await _open(request, live)
    paths = [f"{project}/{r}" for r in runs]
    firsts = await call(gw, lambda: [run_payload(gw.api.run(p), 100) for p in paths])  # 404 before any event
    follows = [_follow(p, info, since[i] if i < len(since) else None, info["id"])
               for i, (p, info) in enumerate(zip(paths, firsts, strict=True))]
    return await _serve(request, gw, live, client, follows, interval)


def run_delta(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed from ``old`` to ``new`` (two run payloads): ``{}`` when nothing did."""
    out: dict[str, Any] = {}
    changed = {k: v for k, v in new.items() if k not in KEYED and (k not in old or old[k] != v)}
    gone = [k for k in old if k not in new and k not in KEYED]
    keyed: dict[str, Any] = {}
    for name in KEYED:
        a, b = old.get(name) or {}, new.get(name) or {}
        put = {k: v for k, v in b.items() if k not in a or a[k] != v}
        dropped = [k for k in a if k not in b]
        if put or dropped:
            keyed[name] = {"set": put, "del": dropped}
    if changed:
        out["set"] = changed
    if gone:
        out["del"] = gone
    if keyed:
        out["keys"] = keyed
    return out


async def _stream(gw: GW, live: Live, resp: web.StreamResponse, follows: list[_Follow], interval: float) -> None:
    since_write = 0.0
    while True:
        for f in follows:
            if f.done:
                continue
            if await _send(gw, resp, f):
                since_write = 0.0
        if all(f.done for f in follows):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await live.closing.wait()
        if live.closing.is_set():
            return
        since_write += interval
        if since_write >= HEARTBEAT_S:
            await resp.write(b": ping\n\n")
            since_write = 0.0
        todo = [f for f in follows if not f.done]

        def infos(todo: list[_Follow] = todo) -> list[dict[str, Any] | None]:
            out: list[dict[str, Any] | None] = []
            for f in todo:
                try:
                    out.append(run_payload(gw.api.run(f.path), 100))
                except RunNotFound:
                    out.append(None)
            return out

        for f, info in zip(todo, await asyncio.to_thread(infos), strict=True):
            if info is None:
                await resp.write(_event("gone", f.tag({"path": f.path})))
                f.done = True
            else:
                f.info = info


async def _send(gw: GW, resp: web.StreamResponse, f: _Follow) -> bool:
    """Send what is new of one run (its info's changes, its rows, its end); whether anything was written."""
    info = f.info
    wrote = False
    if f.sent is None:
        await resp.write(_event("run", info))
        wrote = True
    else:
        delta = run_delta(f.sent, info)
        if delta:
            await resp.write(_event("run_delta", f.tag(delta)))
            wrote = True
    f.sent = info
    last = info["last_step"]
    if last is not None and last > f.sent_step:
        lo, hi = f.sent_step + 1, int(last)

        def rows(lo: int = lo, hi: int = hi) -> str | None:
            r = gw.api.run(f.path)
            data = r.history(keys=None, samples=None, min_step=lo, max_step=hi + 1, pandas=False)
            n = len(next(iter(data.values()), ()))
            return None if n > MAX_ROWS else format_history(data, "json")

        try:
            got = await asyncio.to_thread(rows)
        except RunNotFound:
            await resp.write(_event("gone", f.tag({"path": f.path})))
            f.done = True
            return True
        if got is None:
            await resp.write(_event("reset", f.tag({"last_step": hi})))
        else:
            head = "" if f.run is None else f'"run":{json.dumps(f.run)},'
            await resp.write(_event("rows", f'{{{head}"from_step":{lo},"last_step":{hi},"rows":{got}}}'))
        f.sent_step = hi
        wrote = True
    if info["state"] in ("finished", "crashed"):
        await resp.write(_event("end", f.tag({"state": info["state"]})))
        f.done = True
        wrote = True
    return wrote


def run_payload(r: RunView, limit: int) -> dict[str, Any]:
    """The run as the page reads it (``GET .../runs/{run}/page_info``): as ``GET .../runs/{run}`` serves it, with
    config and summary values made JSON-safe by :func:`tagged` (JSON-ready: ``plain`` leaves it unchanged)."""
    info = {**run_brief(r), "config": r.config, "summary": r.summary, "warnings": r.warnings,
            "conflicts": r.conflicts, "rejections_by_reason": r.rejected, "exit_code": r.exit_code,
            "columns": r.columns, "metrics": r.metrics, "rejections": r.rejections(limit)}
    info = plain({k: v for k, v in info.items() if k not in ("config", "summary")})
    return {**info, "config": tagged(r.config), "summary": tagged(r.summary)}


def tagged(v: Any) -> Any:
    """``plain(v)``, except that a non-finite float (anywhere inside) is ``{"_type": "nonfinite", "value": "NaN" |
    "Infinity" | "-Infinity"}`` (JSON has no NaN, and ``plain``'s ``null``/``"Infinity"`` would read as a missing
    value and a string), and an int past 2**53 is ``{"_type": "bigint", "value": "<its digits>"}`` (a JavaScript
    number would round it)."""
    if isinstance(v, float | np.floating):
        x = float(v)
        if not math.isfinite(x):
            return {"_type": "nonfinite", "value": "NaN" if math.isnan(x) else "Infinity" if x > 0 else "-Infinity"}
        return x
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53:  # past a JavaScript number's exact range
        return {"_type": "bigint", "value": str(v)}
    if isinstance(v, np.ndarray) and v.dtype.kind in "fciu":
        return [tagged(x) for x in v.tolist()]
    if isinstance(v, complex):
        return {"_type": "complex", "real": tagged(v.real), "imag": tagged(v.imag)}
    if isinstance(v, dict):
        return {k: tagged(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [tagged(x) for x in v]
    if isinstance(v, np.generic):
        return tagged(v.item())
    return plain(v)


async def page_info(request: web.Request) -> web.Response:
    """``GET .../runs/{run}/page_info?rejections=N`` (default 100, at most 1000): the run as the page and the live
    stream's ``run`` event carry it (:func:`run_payload`)."""
    gw, project, run = await authorized(request)
    limit = int_param(request, "rejections", 100, lo=0)
    assert limit is not None
    path = f"{project}/{run}"
    body = await call(gw, lambda: json.dumps(run_payload(gw.api.run(path), min(limit, 1000)), allow_nan=False))
    return web.Response(text=body, content_type="application/json")


async def _on_shutdown(app: web.Application) -> None:
    app[LIVE_KEY].closing.set()


def setup(app: web.Application, prefix: str) -> None:
    """Register the events routes, the page's run read and the shutdown hook that ends every stream."""
    app[LIVE_KEY] = Live()
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get(prefix + "/projects/{project}/runs/{run}/events", events)
    app.router.add_get(prefix + "/projects/{project}/runs/{run}/page_info", page_info)
    app.router.add_get(prefix + "/projects/{project}/events", project_events)
