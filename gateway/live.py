"""Live updates of one run for the web page: ``GET /api/v1/projects/{project}/runs/{run}/events`` as Server-Sent
Events (``text/event-stream``), so an open page holds one connection instead of polling.

Events (each ``data:`` is one line of strict JSON, ±inf as ``"Infinity"``/``"-Infinity"`` as elsewhere):

- ``run``: the run as ``GET .../runs/{run}`` serves it (state, counters, columns, config, summary, the latest
  100 rejections), first on connect and again whenever it changes;
- ``rows``: ``{"from_step", "last_step", "rows": [...]}``, the committed rows after the last step sent (at first:
  after ``?since=STEP``, the last step the page had read, so nothing committed in between is missed; without it,
  after the run's last step at connect), as
  ``history`` serves them in JSON (missing and NaN omitted); at most :data:`MAX_ROWS` rows per event;
- ``reset``: ``{"last_step"}`` instead of ``rows`` when more than :data:`MAX_ROWS` rows arrived at once (the
  page re-reads its charts' sampled lines once rather than being sent every row);
- ``end``: the run finished or crashed and everything was sent; the server closes the stream;
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
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from history.formatting import format_history, plain
from history.query import RunNotFound, RunView

from .errors import Refused
from .read import authorized, call, float_param, int_param, run_brief
from .state import GW

MAX_ROWS = 5000
MAX_STREAMS = 256
MAX_PER_CLIENT = 16
HEARTBEAT_S = 15.0


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


async def events(request: web.Request) -> web.StreamResponse:
    gw, project, run = await authorized(request)
    live = request.app[LIVE_KEY]
    interval = float_param(request, "interval")
    interval = 1.0 if interval is None else min(max(interval, 0.2), 10.0)
    client = request.remote or "?"
    if live.open >= MAX_STREAMS or live.clients[client] >= MAX_PER_CLIENT:
        raise Refused(429, "too_many_streams", f"at most {MAX_PER_CLIENT} live streams per client and "
                      f"{MAX_STREAMS} per gateway are open at once", retry_after=5.0)
    since = int_param(request, "since", None, lo=-1)
    path = f"{project}/{run}"
    first = await call(gw, lambda: run_payload(gw.api.run(path), 100))  # 404 before any event
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    live.clients[client] += 1
    try:
        await resp.prepare(request)
        await _stream(gw, live, resp, path, first, interval, since)
    except (ConnectionResetError, ConnectionError):
        pass  # the page went away
    finally:
        live.clients[client] -= 1
        if live.clients[client] <= 0:
            del live.clients[client]
    return resp


def _sig(info: dict[str, Any]) -> str:
    return json.dumps(plain([info[k] for k in ("state", "rows", "last_step", "updated_at", "rejected",
                                               "warning_count", "column_count", "exit_code")]))


async def _stream(gw: GW, live: Live, resp: web.StreamResponse, path: str, info: dict[str, Any],
                  interval: float, since: int | None) -> None:
    sent_sig = ""
    last = -1 if info["last_step"] is None else int(info["last_step"])
    sent_step = last if since is None else min(since, last)  # rows after it are sent; the page has the rest
    since_write = 0.0
    while True:
        sig = _sig(info)
        if sig != sent_sig:
            sent_sig = sig
            await resp.write(_event("run", info))
            since_write = 0.0
        last = info["last_step"]
        if last is not None and last > sent_step:
            lo, hi = sent_step + 1, int(last)

            def rows(lo: int = lo, hi: int = hi) -> str | None:
                r = gw.api.run(path)
                data = r.history(keys=None, samples=None, min_step=lo, max_step=hi + 1, pandas=False)
                n = len(next(iter(data.values()), ()))
                return None if n > MAX_ROWS else format_history(data, "json")

            try:
                got = await asyncio.to_thread(rows)
            except RunNotFound:
                await resp.write(_event("gone", {"run": path}))
                return
            if got is None:
                await resp.write(_event("reset", {"last_step": hi}))
            else:
                await resp.write(_event("rows", f'{{"from_step":{lo},"last_step":{hi},"rows":{got}}}'))
            sent_step = hi
            since_write = 0.0
        if info["state"] in ("finished", "crashed"):
            await resp.write(_event("end", {"state": info["state"]}))
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
        try:
            info = await asyncio.to_thread(lambda: run_payload(gw.api.run(path), 100))
        except RunNotFound:
            await resp.write(_event("gone", {"run": path}))
            return


def run_payload(r: RunView, limit: int) -> dict[str, Any]:
    """The run as ``GET .../runs/{run}`` serves it."""
    return {**run_brief(r), "config": r.config, "summary": r.summary, "warnings": r.warnings,
            "conflicts": r.conflicts, "rejections_by_reason": r.rejected, "exit_code": r.exit_code,
            "columns": r.columns, "metrics": r.metrics, "rejections": r.rejections(limit)}


async def _on_shutdown(app: web.Application) -> None:
    app[LIVE_KEY].closing.set()


def setup(app: web.Application, prefix: str) -> None:
    """Register the events route and the shutdown hook that ends every stream."""
    app[LIVE_KEY] = Live()
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get(prefix + "/projects/{project}/runs/{run}/events", events)
