"""``Api`` over HTTP gives what the local ``Api`` gives: one suite runs against both backends (the ``backend``
fixture parameter) on the same data, logged through the SDK into a real Redis, committed by a worker, and served by
a real gateway on loopback; a second test compares the two backends' answers directly, value for value (dtype,
NaN, -0.0, int64, arrays, media). Then the client's own guarantees: errors as the local ones, 401/403, retries on
503/429 honouring Retry-After, and a scan streamed page by page."""

from __future__ import annotations

import asyncio
import http.server
import math
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from aiohttp import web
from support.compat_stack import Stack

import ingest as wandb
from gateway import create_app
from gateway.settings import GatewaySettings
from history import Api, QueryError, RunNotFound
from history.remote import AccessDenied, GatewayError, RemoteApi
from schemas import Media, packb

pytestmark = pytest.mark.integration

STEPS = 300
ODD_KEY = "a,b c/é"


class Gateway:
    """A real gateway (``create_app``) on a free loopback port, served from a thread with its own loop."""

    def __init__(self, settings: GatewaySettings) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.settings = settings.replace(port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: self._loop.run_until_complete(self._serve()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "gateway did not start"

    async def _serve(self) -> None:
        runner = web.AppRunner(create_app(self.settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


def log_runs() -> None:
    run = wandb.init(project="pp", id="r1", name="first", group="g", job_type="train", tags=["a", "b"],
                     notes="n", config={"lr": 0.1, "arch": {"depth": 4}, "arr": np.arange(3, dtype=np.int16)})
    run.define_metric("val/*", step_metric="epoch")
    for i in range(STEPS):
        data: dict[str, Any] = {"train/loss": 1.0 / (i + 1), "count": i, "big": 2**62 + i}
        data["num"] = 2**53 + i if i % 4 == 0 else i / 4  # exact ints among floats (an int companion)
        if i % 3 == 0:
            data["mixed"] = i + 0.5 if i % 9 == 6 else i
        elif i % 3 == 1:
            data["mixed"] = f"s{i}"
        else:
            data["mixed"] = i % 2 == 0
        if i % 50 == 0:
            data["hist"] = wandb.Histogram(np.linspace(0, 1, 20) * i)
            data["vec"] = np.arange(4, dtype=np.float32) * i
            data["val/loss"], data["epoch"] = 0.5 / (i + 1), i // 50
        if i % 10 == 0:
            data[ODD_KEY] = i / 2  # a comma, a space and unicode: asked for as one key over HTTP too
        if i == 7:
            data["odd"] = math.nan
        if i == 8:
            data["odd"] = -0.0
        if i == 9:
            data["odd"] = math.inf
        run.log(data, step=i)
    run.log({"late": 1.0}, step=5)  # rejected: below the cursor
    run.summary["best"] = 0.9
    run.summary["best_arr"] = np.array([1.5, 2.5])
    run.finish()
    other = wandb.init(project="pp", id="r2", config={"lr": 0.01}, tags=["b"])
    other.log({"train/loss": 3.0})
    other.finish()


@pytest.fixture
def served(stack: Stack) -> Iterator[tuple[Stack, Gateway]]:
    log_runs()
    stack.finished("pp/r1")
    stack.finished("pp/r2")
    gw = Gateway(GatewaySettings(redis_url=stack.redis_url, namespace=stack.namespace, data_dir=stack.data_dir))
    try:
        yield stack, gw
    finally:
        gw.close()


@pytest.fixture(params=["local", "http"])
def api(request: pytest.FixtureRequest, served: tuple[Stack, Gateway]) -> Iterator[Api]:
    stack, gw = served
    a = Api(data_dir=stack.data_dir) if request.param == "local" else Api(url=gw.url)
    assert isinstance(a, RemoteApi) == (request.param == "http")
    with a:
        yield a


# --- one suite, both backends -----------------------------------------------------------------------------------


def test_runs_and_run_info(api: Api) -> None:
    assert [r.id for r in api.runs("pp")] == ["r2", "r1"]
    assert [r.id for r in api.runs("team/pp", {"tags": "a"})] == ["r1"]
    assert [r.id for r in api.runs("pp", {"config.lr": {"$gt": 0.05}})] == ["r1"]
    assert [r.id for r in api.runs("pp", order="config.lr")] == ["r2", "r1"]
    found = api.runs("pp", per_page=1)
    assert len(found) == 2 and [r.id for r in found] == ["r2", "r1"] and found[1].id == "r1"
    listed = api.runs("pp", {"group": "g"})[0]
    assert listed.config["lr"] == 0.1 and listed.tags == ["a", "b"] and listed.columns  # the rest loads lazily
    r = api.run("pp/r1")
    assert (r.name, r.state, r.rows, r.last_step, r.group, r.job_type, r.tags, r.notes) == (
        "first", "finished", STEPS, STEPS - 1, "g", "train", ["a", "b"], "n")
    assert r.config["arch"] == {"depth": 4}
    np.testing.assert_array_equal(r.config["arr"], np.arange(3, dtype=np.int16))
    assert r.config["arr"].dtype == np.int16
    assert r.summary["train/loss"] == 1.0 / STEPS and r.summary["big"] == 2**62 + STEPS - 1
    assert r.rejected == {"non_monotonic_step": 1} and r.exit_code == 0
    assert [(x["reason"], x["step"]) for x in r.rejections()] == [("non_monotonic_step", 5)]
    assert r.rejections(limit=0) == []
    assert {m["name"]: m["step_metric"] for m in r.metrics} == {"val/*": "epoch"}
    assert r.sections()["train"] == ["train/loss"] and "mixed" in list(r.keys())
    assert "mixed" in r.conflicts and any("mixed" in w for w in r.warnings)


def test_history(api: Api) -> None:
    r = api.run("pp/r1")
    h = r.history(samples=None, pandas=False)
    assert len(h["_step"]) == STEPS and h["big"].dtype == np.int64 and h["big"][-1] == 2**62 + STEPS - 1
    assert h["mixed"].tolist()[:4] == [0, "s1", True, 3]
    assert [type(v) for v in h["mixed"][[0, 3, 6]]] == [int, int, float] and h["mixed"][6] == 6.5
    assert h["num"].dtype == np.float64 and h["num"][1] == 0.25  # a number column: float64, as W&B's pandas
    assert isinstance(h["hist"][0], Media) and h["hist"][1] is None
    assert h["vec"][50].dtype == np.float32 and h["vec"][50].tolist() == [0.0, 50.0, 100.0, 150.0]
    assert math.isnan(h["odd"][7]) and math.copysign(1, h["odd"][8]) == -1 and h["odd"][9] == math.inf
    some = r.history(keys=["val/loss"], x_axis="epoch", samples=3, pandas=False)
    assert list(some) == ["_step", "epoch", "val/loss"] and some["_step"].tolist() == [0, 100, 250]
    odd = r.history(keys=[ODD_KEY, "count"], samples=None, pandas=False)
    assert list(odd) == ["_step", ODD_KEY, "count"] and odd[ODD_KEY].tolist() == [i / 2 for i in range(0, STEPS, 10)]
    split = r.history(keys=["mixed"], samples=None, pandas=False, split_kinds=True)
    assert set(split) == {"_step", "mixed", "mixed:string", "mixed:bool"}
    df = r.history(keys=["train/loss"], samples=10, min_step=100, max_step=200)
    assert len(df) == 10 and df["_step"].iloc[0] == 100 and df["_step"].iloc[-1] == 199
    with pytest.raises(QueryError, match="samples"):
        r.history(samples=0)
    with pytest.raises(QueryError, match="x_axis"):
        r.history(x_axis="nope")


def test_scan_history_and_sampled(api: Api) -> None:
    r = api.run("pp/r1")
    rows = list(r.scan_history(page_size=7))
    assert [row["_step"] for row in rows] == list(range(STEPS))
    assert [rows[i]["mixed"] for i in range(4)] == [0, "s1", True, 3]
    # Each value as logged (W&B's rows): ints stay ints, exactly, among the floats of the same key.
    assert [(type(rows[i]["mixed"]), rows[i]["mixed"]) for i in (0, 3, 6, 9)] == [
        (int, 0), (int, 3), (float, 6.5), (int, 9)]
    assert [(type(rows[i]["num"]), rows[i]["num"]) for i in range(5)] == [
        (int, 2**53), (float, 0.25), (float, 0.5), (float, 0.75), (int, 2**53 + 4)]
    assert isinstance(rows[50]["hist"], Media) and rows[50]["vec"].dtype == np.float32
    assert "odd" not in rows[6] and math.isnan(rows[7]["odd"])
    part = list(r.scan_history(keys=["val/loss", "epoch"], min_step=60, max_step=260))
    assert [(x["_step"], x["epoch"]) for x in part] == [(100, 2), (150, 3), (200, 4), (250, 5)]
    assert set(part[0]) == {"_step", "_timestamp", "_runtime", "val/loss", "epoch"}
    odd = list(r.scan_history(keys=[ODD_KEY], page_size=4))
    assert [(x["_step"], x[ODD_KEY]) for x in odd] == [(i, i / 2) for i in range(0, STEPS, 10)]
    s = r.sampled("train/loss", buckets=10)
    assert s["sampled"] and s["count"] == STEPS and s["step"][0] == 0 and s["step"][-1] == STEPS - 1
    assert s["y"].dtype == np.float64 and len(s["bucket_min"]) == 10
    whole = r.sampled("count", buckets=1000, x_min=10, x_max=19)
    assert not whole["sampled"] and whole["y"].tolist() == [float(i) for i in range(10, 20)]
    with pytest.raises(QueryError, match="no number column"):
        r.sampled("hist")


def test_errors_are_the_local_ones(api: Api) -> None:
    with pytest.raises(RunNotFound):
        api.run("pp/nope")
    with pytest.raises(RunNotFound):
        api.run("nope/nope")
    with pytest.raises(QueryError, match=r"unknown operator '\$gtt' on field 'config\.lr'"):
        list(api.runs("pp", {"config.lr": {"$gtt": 1}}))
    with pytest.raises(QueryError, match="unknown filter field 'colour'"):
        list(api.runs("pp", order="-colour"))
    with pytest.raises(QueryError):
        api.run("a/b/c/d")
    with pytest.raises(QueryError, match="page_size"):
        list(api.run("pp/r1").scan_history(page_size=0))
    # Over HTTP an empty order was taken for the default, a bogus state and a bare string of keys (read as its
    # letters) gave empty answers: each is refused, as locally.
    with pytest.raises(QueryError, match="order must be a field name"):
        list(api.runs("pp", order=""))
    with pytest.raises(QueryError, match="order must be a field name"):
        list(api.runs("pp", order="--created_at"))
    with pytest.raises(QueryError, match="unknown run state 'done'"):
        list(api.runs("pp", state=["finished", "done"]))
    with pytest.raises(QueryError, match="keys must be a list"):
        api.run("pp/r1").history(keys="count", samples=None)
    with pytest.raises(QueryError, match="keys must be a list"):
        list(api.run("pp/r1").scan_history(keys="count"))


# --- the two backends compared directly -------------------------------------------------------------------------


def same(a: Any, b: Any, where: str = "") -> None:
    """Equal values of equal types: arrays with their dtype, floats bit for bit, media by kind and payload."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        if a.dtype == object:
            for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
                same(x, y, f"{where}[{i}]")
        else:
            assert a.tobytes() == b.tobytes(), where
        return
    assert type(a) is type(b), (where, a, b)
    if isinstance(a, float):
        assert packb(a) == packb(b), (where, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, Media):
        assert a.kind == b.kind, where
        same(a.payload, b.payload, f"{where}.payload")
    else:
        assert a == b, (where, a, b)


def outcome(fn: Any) -> Any:
    """What a call gives: its value, or its exception's type and message (both backends must fail alike)."""
    try:
        return fn()
    except Exception as e:
        return ("raised", type(e).__name__, str(e))


def test_both_backends_give_the_same_values(served: tuple[Stack, Gateway]) -> None:
    stack, gw = served
    with Api(data_dir=stack.data_dir) as local, Api(url=gw.url) as remote:
        for path in ("pp/r1", "pp/r2"):
            lr, rr = local.run(path), remote.run(path)
            for attr in ("name", "state", "rows", "last_step", "created_at", "updated_at", "summary", "config",
                         "warnings", "conflicts", "rejected", "columns", "metrics", "exit_code", "group",
                         "job_type", "tags", "notes"):
                same(getattr(lr, attr), getattr(rr, attr), f"{path}.{attr}")
            same(lr.rejections(), rr.rejections(), f"{path}.rejections")
            same(lr.sections(), rr.sections(), f"{path}.sections")
            for kw in ({"samples": None}, {"samples": 37}, {"keys": ["mixed", "hist"], "samples": None},
                       {"keys": ["val/loss"], "x_axis": "epoch"}, {"split_kinds": True, "samples": None},
                       {"min_step": 3, "max_step": 77, "samples": None}):
                same(outcome(lambda v=lr, a=kw: v.history(pandas=False, **a)),  # type: ignore[misc]
                     outcome(lambda v=rr, a=kw: v.history(pandas=False, **a)), f"{path}.history{kw}")  # type: ignore[misc]
            for kw2 in ({}, {"keys": ["odd"]}, {"keys": [ODD_KEY, "count"]},
                        {"min_step": 40, "max_step": 120, "page_size": 9}, {"split_kinds": True}):
                same(list(lr.scan_history(**kw2)), list(rr.scan_history(**kw2)), f"{path}.scan{kw2}")
            for key, kw3 in (("train/loss", {"buckets": 13}), ("count", {"x_min": 5.5, "x_max": 99.0}),
                             ("val/loss", {"x_axis": "epoch"}), ("nothing", {})):
                same(outcome(lambda v=lr, k=key, a=kw3: dict(v.sampled(k, **a))),  # type: ignore[misc]
                     outcome(lambda v=rr, k=key, a=kw3: dict(v.sampled(k, **a))), f"{path}.sampled({key})")  # type: ignore[misc]
        same([r.path for r in local.runs("pp")], [r.path for r in remote.runs("pp")])


def test_keys_parameter_forms(served: tuple[Stack, Gateway]) -> None:
    """``key=`` (repeated) carries one key each, whatever it holds; ``keys=a,b`` (the first form) still works, and
    both may be given together."""
    import json
    import urllib.parse
    import urllib.request

    _, gw = served

    def columns(query: str) -> list[str]:
        with urllib.request.urlopen(f"{gw.url}/api/v1/projects/pp/runs/r1/history?samples=all&{query}") as resp:
            return list(json.loads(resp.read())[0])

    assert columns("keys=count,epoch") == ["_step", "count", "epoch"]
    odd = urllib.parse.urlencode({"key": ODD_KEY})
    assert columns(f"{odd}&keys=count") == ["_step", ODD_KEY, "count"]
    assert columns(f"{odd}&key=count") == ["_step", ODD_KEY, "count"]


# --- the HTTP client's own guarantees ---------------------------------------------------------------------------


def test_settings_and_keys(served: tuple[Stack, Gateway], monkeypatch: pytest.MonkeyPatch) -> None:
    stack, gw = served
    monkeypatch.setenv("STEPLINE_URL", gw.url)
    monkeypatch.delenv("STEPLINE_DATA_DIR", raising=False)
    with Api() as a:  # STEPLINE_URL and nothing local named: over HTTP
        assert isinstance(a, RemoteApi) and a.run("pp/r1").rows == STEPS
    assert not isinstance(Api(data_dir=stack.data_dir), RemoteApi)  # a data directory named: local
    with pytest.raises(QueryError, match="http:// or https://"):
        Api(url="ftp://x")
    with pytest.raises(GatewayError, match="unreachable"):
        Api(url="http://127.0.0.1:1", retries=0).run("pp/r1")


def test_export_through_a_gateway_is_refused_in_one_line(
    served: tuple[Stack, Gateway], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # With STEPLINE_URL set and no store named, Api() is the remote one, which export cannot read exactly from:
    # it died with an AttributeError traceback; now one line naming what to do, exit status 1.
    from history.export import main

    _, gw = served
    monkeypatch.setenv("STEPLINE_URL", gw.url)
    monkeypatch.delenv("STEPLINE_DATA_DIR", raising=False)
    monkeypatch.delenv("STEPLINE_DB_URL", raising=False)
    assert main(["pp/r1", "--out", str(tmp_path / "r1.csv")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("stepline export: error: export reads the store itself"), err
    assert not (tmp_path / "r1.csv").exists()


def test_refused_keys_are_access_denied(served: tuple[Stack, Gateway]) -> None:
    from gateway.keys import KeyStore
    from schemas.store import writer_engine

    _, open_gw = served
    engine = writer_engine(open_gw.settings.metadata_url)
    try:
        store = KeyStore(engine)
        _, mine = store.create("pp", frozenset({"read"}))
        _, theirs = store.create("other", frozenset({"read"}))
    finally:
        engine.dispose()
    gw = Gateway(open_gw.settings)  # started with keys: every request needs one
    try:
        with Api(url=gw.url, api_key=mine) as a:
            assert a.run("pp/r1").rows == STEPS  # keys exist now: this one opens pp
        with pytest.raises(AccessDenied, match="401"), Api(url=gw.url) as a:
            a.run("pp/r1")
        with pytest.raises(AccessDenied, match="403"), Api(url=gw.url, api_key=theirs) as a:
            a.run("pp/r1")
        with pytest.raises(AccessDenied, match="401"), Api(url=gw.url, api_key=mine[:-3] + "xyz") as a:
            a.run("pp/r1")
    finally:
        gw.close()


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 then 429 (each with Retry-After: 0), then a run's info in the exact format."""

    replies: ClassVar[list[int]] = []
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        status = self.replies.pop(0) if self.replies else 200
        if status != 200:
            body = b'{"error": "busy", "message": "try again"}'
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
        else:
            body = packb({"project": "p", "id": "r", "name": None, "state": "running", "rows": 0,
                          "last_step": None, "created_at": 1.0, "updated_at": 1.0, "config": {}, "summary": {},
                          "rejections_by_reason": {}, "columns": []})
            self.send_response(200)
            self.send_header("Content-Type", "application/x-stepline-msgpack")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_retries_503_and_429_then_gives_up() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        _Flaky.replies[:] = [503, 429, 503]
        _Flaky.seen.clear()
        assert Api(url=url).run("p/r").state == "running"
        assert len(_Flaky.seen) == 4
        _Flaky.replies[:] = [503] * 10
        with pytest.raises(GatewayError, match="503"):
            Api(url=url, retries=2).run("p/r")
    finally:
        server.shutdown()
        server.server_close()


def test_scan_streams_page_by_page(served: tuple[Stack, Gateway], tmp_path: Path) -> None:
    _, gw = served
    with Api(url=gw.url) as a:
        rows = a.run("pp/r1").scan_history(page_size=10)
        first = next(rows)  # the first page is decoded before the stream is read to its end
        assert first["_step"] == 0
        assert sum(1 for _ in rows) == STEPS - 1
