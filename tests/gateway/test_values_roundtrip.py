"""Every value that can be stored is served by every HTTP read path (issue 15, item 5, gateway side).

A run logged through the SDK into real Redis and committed by a real worker process holds NaN, ±inf, -0.0, the
int64 extremes, unicode keys and strings, lists and arrays holding the same floats, in history, config and
summary. Each read route (run info, history, scan, sampled) answers it in each format:

- msgpack carries every float bit for bit (NaN, ±inf, the sign of -0.0) and every int exactly;
- JSON has no NaN or infinity: NaN is ``null`` (left out of history and scan rows, as missing), ±inf are the
  strings ``"Infinity"``/``"-Infinity"`` (:func:`history.formatting.plain`); -0.0 keeps its sign;
- CSV writes floats so they read back exactly (``repr``), ±inf as ``Infinity``/``-Infinity``, NaN as empty.

Before the fix a single NaN made ``/sampled`` answer 500 in JSON, and an array holding NaN did the same to history,
scan and run info.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import numpy as np
import pytest

import ingest
from gateway import GatewaySettings

pytestmark = pytest.mark.integration

NAN, INF = float("nan"), float("inf")
I64_MAX, I64_MIN = (1 << 63) - 1, -(1 << 63)
UKEY = "ünï/κλειδί 🎉"  # a unicode key, with a section
F = [0.5, NAN, INF, -INF, -0.0, 1e308, 5e-324, 0.1, 2.5, -1.5]
INTS = [I64_MAX, I64_MIN, 0, -1, 1, (1 << 53) + 1, -(1 << 53) - 1, 7, 8, 9]
U = [i * 1.25 for i in range(10)]
S = "naïve ☃ 🎉 ω"
ARR = [1.0, NAN, INF, -INF, -0.0]
NP = np.array([NAN, -0.0, INF, 2.0])
CONFIG = {"lr": NAN, "top": INF, "bottom": -INF, "zero": -0.0, "big": I64_MAX, "small": I64_MIN, "ключ": "ω"}


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and the sign of zero significant."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def as_json(v: Any) -> Any:
    """The documented JSON form of a value (NaN null, ±inf strings)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, list):
        return [as_json(x) for x in v]
    if isinstance(v, dict):
        return {k: as_json(x) for k, x in v.items()}
    return v


def as_csv(v: Any) -> str:
    """The documented CSV cell of a number."""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return "Infinity" if v == INF else "-Infinity" if v == -INF else repr(v)
    return str(v)


def from_csv_float(cell: str) -> float:
    return NAN if cell == "" else float(cell)


async def wait_finished(c: Any, base: str, fleet: Any) -> None:
    """Until the run's info says finished (committed by the worker); 30 s only catch a hang."""
    for _ in range(600):
        r = await c.get(base)
        if r.status == 200 and (await r.json())["state"] == "finished":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the run was not committed: {r.status} {await r.text()}\n{fleet.logs()}")


@pytest.mark.both_backends
async def test_every_value_kind_is_served_by_every_read_path(
        gw_settings: GatewaySettings, make_client: Callable[..., Awaitable[Any]], worker: Callable[[], Any]) -> None:
    s = gw_settings
    fleet = worker()
    run = ingest.init(project="pv", id="r1", config=CONFIG, redis_url=s.redis_url, namespace=s.namespace,
                      data_dir=s.data_dir / "client", settings={"partitions": s.partitions})
    for step in range(10):
        run.log({"f": F[step], "i": INTS[step], UKEY: U[step], "s": S, "arr": ARR, "np": NP, "b": step % 2 == 0},
                step=step)
    run.summary["best"] = -INF
    assert run.finish(timeout=30).ok
    c = await make_client(s)
    base = "/api/v1/projects/pv/runs/r1"
    await wait_finished(c, base, fleet)

    async def get(path: str, fmt: str, **params: str) -> bytes:
        resp = await c.get(path, params={**params, "format": fmt})
        body = await resp.read()
        assert resp.status == 200, (path, fmt, params, resp.status, body[:500])
        return body

    # --- run info ---------------------------------------------------------------------------------------------
    info = msgpack.unpackb(await get(base, "msgpack"), raw=False)
    assert same(info["config"], CONFIG), info["config"]
    assert same(info["summary"]["f"], F[-1]) and info["summary"]["i"] == INTS[-1]
    assert same(info["summary"]["best"], -INF) and same(info["summary"]["arr"], ARR)
    assert same(info["summary"]["np"], NP.tolist()) and info["summary"][UKEY] == U[-1]
    info_j = json.loads(await get(base, "json"))
    assert info_j["config"] == as_json(CONFIG) and math.copysign(1, info_j["config"]["zero"]) == -1
    assert info_j["summary"]["best"] == "-Infinity" and info_j["summary"]["arr"] == as_json(ARR)
    assert info_j["summary"]["np"] == as_json(NP.tolist())
    rows = list(csv.reader(io.StringIO((await get(base, "csv")).decode())))
    fields = {r[0]: json.loads(r[1]) for r in rows[1:]}
    assert fields["config"] == as_json(CONFIG) and fields["summary"]["best"] == "-Infinity"

    # --- history ----------------------------------------------------------------------------------------------
    h = msgpack.unpackb(await get(base + "/history", "msgpack", samples="all"), raw=False)
    d = h["data"]
    assert same(d["f"], F) and d["i"] == INTS and same(d[UKEY], U) and d["s"] == [S] * 10
    assert all(same(a, ARR) for a in d["arr"]) and all(same(a, NP.tolist()) for a in d["np"])
    hj = json.loads(await get(base + "/history", "json", samples="all"))
    assert [row.get("f") for row in hj] == [as_json(x) for x in F]
    assert math.copysign(1, hj[4]["f"]) == -1 and "f" not in hj[1]  # NaN: left out, as missing
    assert [row["i"] for row in hj] == INTS and [row[UKEY] for row in hj] == U
    assert all(row["arr"] == as_json(ARR) and row["np"] == as_json(NP.tolist()) and row["s"] == S for row in hj)
    hc = list(csv.reader(io.StringIO((await get(base + "/history", "csv", samples="all")).decode())))
    col = {name: [r[j] for r in hc[1:]] for j, name in enumerate(hc[0])}
    assert col["f"] == [as_csv(x) for x in F] and same([from_csv_float(x) for x in col["f"]], F)
    assert [int(x) for x in col["i"]] == INTS and [float(x) for x in col[UKEY]] == U and col["s"] == [S] * 10
    assert [json.loads(x) for x in col["arr"]] == [as_json(ARR)] * 10

    # --- scan -------------------------------------------------------------------------------------------------
    up = msgpack.Unpacker(raw=False)
    up.feed(await get(base + "/scan", "msgpack", page_size="3"))
    srows = list(up)
    assert [r["_step"] for r in srows] == list(range(10))
    assert same([r["f"] for r in srows], F) and [r["i"] for r in srows] == INTS
    assert same([r[UKEY] for r in srows], U) and all(same(r["arr"], ARR) for r in srows)
    assert all(same(r["np"], NP.tolist()) for r in srows)
    sj = [json.loads(line) for line in (await get(base + "/scan", "json", page_size="3")).decode().splitlines()]
    assert [r.get("f") for r in sj] == [as_json(x) for x in F] and "f" not in sj[1]
    assert [r["i"] for r in sj] == INTS and all(r["arr"] == as_json(ARR) for r in sj)
    sc = list(csv.reader(io.StringIO((await get(base + "/scan", "csv")).decode())))
    col = {name: [r[j] for r in sc[1:]] for j, name in enumerate(sc[0])}
    assert col["f"] == [as_csv(x) for x in F] and [int(x) for x in col["i"]] == INTS
    assert [float(x) for x in col[UKEY]] == U and col["s"] == [S] * 10

    # --- sampled (every point: 10 <= buckets) ----------------------------------------------------------------
    for key, ys in (("f", F), ("i", [float(v) for v in INTS]), (UKEY, U)):
        m = msgpack.unpackb(await get(base + "/sampled", "msgpack", key=key), raw=False)
        assert m["step"] == list(range(10)) and same(m["y"], ys), (key, m)
        j = json.loads(await get(base + "/sampled", "json", key=key))
        assert j["y"] == [as_json(y) for y in ys] and j["x"] == list(range(10)), (key, j)
        sc = list(csv.reader(io.StringIO((await get(base + "/sampled", "csv", key=key)).decode())))
        assert sc[0] == ["x", "y", "step"] and [r[1] for r in sc[1:]] == [as_csv(y) for y in ys], (key, sc)
    # Sampled with buckets (M4 over NaN and ±inf): answered, and the envelope is in the documented forms.
    j = json.loads(await get(base + "/sampled", "json", key="f", buckets="2"))
    assert j["sampled"] is True and "Infinity" in j["bucket_max"] and "-Infinity" in j["bucket_min"], j


async def test_complex_values_stored_before_they_were_refused_are_served(
        gw_settings: GatewaySettings, make_client: Callable[..., Awaitable[Any]], worker: Callable[[], Any]) -> None:
    """Complex arrays were accepted before issue 15 (item 3) and have no wire form now: a run that holds them (made
    here by rewriting a float array's stored dtype to complex, in its segment and in the run's summary) is still
    served by every read path, each complex number as ``{"_type": "complex", "real": r, "imag": i}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sqlalchemy import create_engine, select, update

    from schemas.store import runs, segments

    s = gw_settings
    fleet = worker()
    run = ingest.init(project="pv", id="cx", redis_url=s.redis_url, namespace=s.namespace,
                      data_dir=s.data_dir / "client", settings={"partitions": s.partitions})
    floats = np.array([1.5, -2.0, NAN, INF])
    for step in range(3):
        run.log({"z": floats, "x": float(step)}, step=step)
    assert run.finish(timeout=30).ok
    c = await make_client(s)
    base = "/api/v1/projects/pv/runs/cx"
    await wait_finished(c, base, fleet)

    # Rewrite what older workers would have stored for a complex64 array with the same bytes.
    engine = create_engine(s.metadata_url)
    with engine.begin() as conn:
        files = [r.file for r in conn.execute(select(segments.c.file).where(segments.c.run == "cx"))]
        info = conn.execute(select(runs.c.info).where(runs.c.run == "cx")).scalar_one()
        assert b"<f8" in info
        conn.execute(update(runs).where(runs.c.run == "cx").values(info=bytes(info).replace(b"<f8", b"<c8")))
    engine.dispose()
    for f in files:
        t = pq.read_table(s.data_dir / f)
        i = t.schema.get_field_index("z:other")
        cells = [None if v is None else v.replace(b"<f8", b"<c8") for v in t.column(i).to_pylist()]
        pq.write_table(t.set_column(i, t.schema.field(i), pa.array(cells, pa.binary())), s.data_dir / f)
    zs = np.frombuffer(floats.tobytes(), "<c8").tolist()
    want = [{"_type": "complex", "real": z.real, "imag": z.imag} for z in zs]
    want_j = as_json(want)

    c2 = await make_client(s)  # a fresh gateway: nothing of the run cached

    async def get(path: str, fmt: str, **params: str) -> bytes:
        resp = await c2.get(path, params={**params, "format": fmt})
        body = await resp.read()
        assert resp.status == 200, (path, fmt, resp.status, body[:500])
        return body

    assert same(msgpack.unpackb(await get(base, "msgpack"), raw=False)["summary"]["z"], want)
    assert json.loads(await get(base, "json"))["summary"]["z"] == want_j
    await get(base, "csv")
    h = msgpack.unpackb(await get(base + "/history", "msgpack"), raw=False)["data"]["z"]
    assert len(h) == 3 and all(same(v, want) for v in h)
    assert [row["z"] for row in json.loads(await get(base + "/history", "json"))] == [want_j] * 3
    hc = list(csv.reader(io.StringIO((await get(base + "/history", "csv")).decode())))
    assert [json.loads(r[hc[0].index("z")]) for r in hc[1:]] == [want_j] * 3
    up = msgpack.Unpacker(raw=False)
    up.feed(await get(base + "/scan", "msgpack"))
    assert all(same(r["z"], want) for r in up)
    assert [json.loads(x)["z"] for x in (await get(base + "/scan", "json")).decode().splitlines()] == [want_j] * 3
    await get(base + "/scan", "csv")
