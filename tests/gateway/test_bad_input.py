"""Bad input: every hostile or broken request is refused whole with a 4xx JSON error naming the problem; never a
500, never a partial write. Ends with a hypothesis fuzz of request bodies (a small sample by default; at least
10,000 cases under ``-m slow``).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import io
import json
import math
import os
import socket
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import pytest
import redis
from backports.zstd import compress as zstd_compress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.gateway_frames import FRAMES, body, frames_for, stream_len, total_len

from gateway import GatewaySettings
from schemas import (
    Config,
    Limits,
    Log,
    LogBlock,
    Media,
    SchemaError,
    Start,
    Summary,
    capture,
    encode_event,
    encode_frame_raw,
    packb,
)

pytestmark = pytest.mark.integration
URL = "/api/v1/projects/p/runs/r/frames"


def frame_with_events(raws: list[bytes], project: str = "p", run: str = "r", seq: int = 0) -> bytes:
    return packb({"v": 1, "project": project, "run": run, "producer": "x", "seq": seq, "events": raws})


def log_raw(**wire: Any) -> bytes:
    return packb({"k": "log", "ts": 1.0, "step": None, "commit": None, "data": {"a": 1.0}, **wire})


def _media_chain(n: int) -> msgpack.ExtType:
    m = msgpack.ExtType(2, msgpack.packb(["image", {}]))
    for _ in range(n):
        m = msgpack.ExtType(2, msgpack.packb(["table", {"m": m}]))
    return m


def _lists(n: int) -> Any:
    v: Any = 1.0
    for _ in range(n):
        v = [v]
    return v


CASES: list[tuple[str, dict[str, str], bytes, int, str]] = [
    ("empty body", FRAMES, b"", 400, "bad_body"),
    ("empty array", FRAMES, body([]), 400, "bad_body"),
    ("not msgpack", FRAMES, b"\xc1\xc1\xc1", 400, "bad_body"),
    ("a map, not an array", FRAMES, msgpack.packb({"a": 1}), 400, "bad_body"),
    ("array of ints", FRAMES, msgpack.packb([1, 2]), 400, "bad_body"),
    ("truncated msgpack", FRAMES, body(frames_for("p", "r"))[:-7], 400, "bad_body"),
    ("trailing bytes", FRAMES, body(frames_for("p", "r")) + b"\x00", 400, "bad_body"),
    ("truncated frame", FRAMES, body([frames_for("p", "r")[0][:-3]]), 422, "malformed"),
    ("frame of another run", FRAMES, body(frames_for("p", "other")), 422, "run_mismatch"),
    ("frame of another project", FRAMES, body(frames_for("q", "r")), 422, "run_mismatch"),
    ("good then another run", FRAMES, body(frames_for("p", "r") + frames_for("p", "zz")), 422, "run_mismatch"),
    ("unknown version", FRAMES, packb([packb({"v": 2, "project": "p", "run": "r", "producer": "x", "seq": 0,
                                              "events": []})]), 422, "unknown_version"),
    ("NaN version", FRAMES, packb([packb({"v": math.nan, "project": "p", "run": "r", "producer": "x", "seq": 0,
                                          "events": []})]), 422, "unknown_version"),
    ("NaN seq", FRAMES, packb([packb({"v": 1, "project": "p", "run": "r", "producer": "x", "seq": math.nan,
                                      "events": []})]), 422, "bad_frame"),
    ("NaN step", FRAMES, body([frame_with_events([log_raw(step=math.nan)])]), 422, "bad_event"),
    ("NaN commit", FRAMES, body([frame_with_events([log_raw(commit=math.nan)])]), 422, "bad_event"),
    ("NaN as a key", FRAMES, body([frame_with_events([packb({"k": "log", "ts": 1.0, "data": {math.nan: 1.0}})])]),
     422, "malformed"),
    ("NaN timestamp in a block", FRAMES, body([frame_with_events([packb(
        {"k": "logs", "keys": ["a"], "ts": ["x"], "step": [None], "commit": [None], "cols": [[1.0]]})])]),
     422, "bad_event"),
    ("negative step", FRAMES, body([frame_with_events([log_raw(step=-1)])]), 422, "bad_step"),
    ("huge key", FRAMES, body([frame_with_events([log_raw(data={"k" * 10_000: 1.0})])]), 413, "key_too_long"),
    ("unknown event kind", FRAMES, body([frame_with_events([packb({"k": "rm -rf"})])]), 422, "unknown_event"),
    ("event not bytes", FRAMES, body([packb({"v": 1, "project": "p", "run": "r", "producer": "x", "seq": 0,
                                             "events": [{"k": "log"}]})]), 422, "bad_frame"),
    ("deeply nested value", FRAMES, body([frame_with_events([
        b"\x82\xa1k\xa3log\xa4data" + b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0"])]), 422, "malformed"),
    ("deeply nested body", FRAMES, b"\x91" * 100_000 + b"\xc0", 400, "bad_body"),
    # Issue 15: media nested 200 levels killed the gateway (SIGSEGV in msgpack's C unpacker).
    ("media nested 200 deep", FRAMES, body([frame_with_events([log_raw(data={"x": _media_chain(200)})])]), 422,
     "too_deep"),
    ("value one level past the limit", FRAMES, body([frame_with_events([log_raw(data={"x": _lists(33)})])]), 422,
     "too_deep"),
    ("NUL in a key", FRAMES, body([frame_with_events([log_raw(data={"a\x00b": 1.0})])]), 422, "bad_key"),
    ("wrong content type", {"Content-Type": "application/json"}, body(frames_for("p", "r")), 415,
     "unsupported_media_type"),
    ("no content type", {}, body(frames_for("p", "r")), 415, "unsupported_media_type"),
    ("unknown encoding", {**FRAMES, "Content-Encoding": "br"}, body(frames_for("p", "r")), 415,
     "unsupported_encoding"),
    ("gzip that is not", {**FRAMES, "Content-Encoding": "gzip"}, body(frames_for("p", "r")), 400, "bad_encoding"),
    ("truncated gzip", {**FRAMES, "Content-Encoding": "gzip"}, gzip.compress(body(frames_for("p", "r")))[:-9], 400,
     "bad_encoding"),
    ("truncated zstd", {**FRAMES, "Content-Encoding": "zstd"}, zstd_compress(body(frames_for("p", "r")))[:-5], 400,
     "bad_encoding"),
    ("gzip bomb", {**FRAMES, "Content-Encoding": "gzip"}, gzip.compress(b"\x00" * (3 << 20)), 413,
     "decoded_too_large"),
    ("zstd bomb", {**FRAMES, "Content-Encoding": "zstd"}, zstd_compress(b"\x00" * (3 << 20)), 413,
     "decoded_too_large"),
    ("too many frames", FRAMES, body(frames_for("p", "r", n_steps=60, per_frame=1)), 413, "too_many_frames"),
    ("oversized body", FRAMES, body([b"\x00" * (2 << 20)]), 413, "body_too_large"),
    ("oversized frame", FRAMES, body([frame_with_events([b"\x00" * (600 << 10)])]), 413, "frame_too_large"),
]


def small_settings(s: GatewaySettings) -> GatewaySettings:
    return s.replace(max_body_bytes=1 << 20, max_decoded_bytes=2 << 20, max_frames_per_request=50,
                     body_timeout_s=0.5, limits=Limits(max_frame_bytes=512 << 10))


@pytest.mark.parametrize(("what", "headers", "data", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_bad_frames_request(gw_settings: GatewaySettings, make_client: Callable[..., Awaitable[Any]],
                                  what: str, headers: dict[str, str], data: bytes, status: int, code: str) -> None:
    c = await make_client(small_settings(gw_settings))
    rc = redis.Redis.from_url(gw_settings.redis_url)
    # aiohttp's client warns about big raw bodies (warnings are errors here): stream those from a file object.
    r = await c.post(URL, data=io.BytesIO(data) if len(data) > 1 << 20 else data, headers=headers)
    got = await r.json()
    assert (r.status, got["error"]) == (status, code), got
    assert got["message"]
    assert total_len(rc, gw_settings.names) == 0, "a refused request wrote something"
    rc.close()


async def test_good_request_in_every_encoding(gw_settings: GatewaySettings,
                                              make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    rc = redis.Redis.from_url(gw_settings.redis_url)
    raw = body(frames_for("p", "r"))
    n = len(frames_for("p", "r"))
    for enc, data in (("identity", raw), ("gzip", gzip.compress(raw)), ("zstd", zstd_compress(raw))):
        r = await c.post(URL, data=data, headers={**FRAMES, "Content-Encoding": enc})
        got = await r.json()
        assert r.status == 202 and got["accepted"] == n and got["events"] == 7 and len(got["ids"]) == n, got
    assert stream_len(rc, gw_settings.names, "p", "r") == 3 * n
    # NaN and infinities as values are data, not errors.
    odd = encode_frame_raw("p", "r", "y", 0, [encode_event(Log(ts=math.nan, data={"a": math.nan, "b": -math.inf}))])
    r = await c.post(URL, data=body([odd]), headers=FRAMES)
    assert r.status == 202
    rc.close()


async def test_blobs(gw_settings: GatewaySettings, make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    rc = redis.Redis.from_url(gw_settings.redis_url)
    img = b"\x89PNG fake image"
    sha = hashlib.sha256(img).hexdigest()
    ref = Media("image", {"sha256": sha, "size": len(img), "format": "png", "width": 1, "height": 1})
    frame = encode_frame_raw("p", "r", "m", 0, [encode_event(Log(ts=1.0, data={"img": ref}))])
    r = await c.post(URL, data=body([frame]), headers=FRAMES)
    got = await r.json()
    assert (r.status, got["error"], got["missing"]) == (422, "missing_blob", [sha])
    octet = {"Content-Type": "application/octet-stream"}
    for path, data, status, code in (
        (f"/api/v1/blobs/{sha}?project=p&run=r", b"other bytes", 422, "hash_mismatch"),
        (f"/api/v1/blobs/{sha.upper()}?project=p&run=r", img, 400, "bad_path"),
        (f"/api/v1/blobs/{sha}?project=p", img, 400, "bad_param"),
        (f"/api/v1/blobs/{sha}?project=a/b&run=r", img, 400, "bad_param"),
    ):
        r = await c.put(path, data=data, headers=octet)
        assert (r.status, (await r.json())["error"]) == (status, code), path
    assert total_len(rc, gw_settings.names) == 0
    r = await c.put(f"/api/v1/blobs/{sha}?project=p&run=r", data=img, headers=octet)
    assert r.status == 201 and (await r.json())["stored"] is True
    r = await c.put(f"/api/v1/blobs/{sha}?project=p&run=r", data=img, headers=octet)
    assert r.status == 200 and (await r.json())["stored"] is False  # stored once
    p = gw_settings.names.partition("p", "r")
    assert rc.get(gw_settings.names.blob(p, sha)) == img and int(rc.ttl(gw_settings.names.blob(p, sha))) > 0
    r = await c.post(URL, data=body([frame]), headers=FRAMES)
    assert r.status == 202
    rc.close()


async def test_bad_paths_and_params(gw_settings: GatewaySettings, make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    for path, status in (("/api/v1/projects/%20p/runs/r/frames", 400), ("/api/v1/projects/p/runs/" + "r" * 200
                                                                        + "/frames", 400)):
        r = await c.post(path, data=body(frames_for("p", "r")), headers=FRAMES)
        assert r.status == status
    for path in ("/api/v1/projects/p/runs?format=xml", "/api/v1/projects/p/runs/r/history?samples=0",
                 "/api/v1/projects/p/runs/r/history?min_step=abc", "/api/v1/projects/p/runs/r/sampled",
                 "/api/v1/projects/p/runs/r/sampled?key=a&x_min=nan"):
        r = await c.get(path)
        assert r.status == 400, path
        assert (await r.json())["error"] == "bad_param"
    r = await c.get("/api/v1/projects/p/runs/none")
    assert r.status == 404 and (await r.json())["error"] == "not_found"
    r = await c.get("/nothing/here")
    assert r.status == 404 and (await r.json())["error"] == "http_404"


def _raw_request(port: int, head: bytes, body_part: bytes, wait: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body_part)
        if wait:
            s.settimeout(wait + 5)
        return s.recv(65536)


async def test_slow_and_truncated_bodies(gw_settings: GatewaySettings, thread_gateway: Callable[..., Any]) -> None:
    g = thread_gateway(small_settings(gw_settings))
    rc = redis.Redis.from_url(gw_settings.redis_url)
    data = body(frames_for("p", "r"))
    head = (f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-stepline-frames\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    # A client that stops half way and waits: 408 after body_timeout_s.
    reply = await asyncio.to_thread(_raw_request, g.port, head, data[: len(data) // 2], 0.5)
    assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout" in reply
    # A client that sends less than it announced and closes its side.
    def truncated() -> bytes:
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
            s.sendall(head + data[:10])
            s.shutdown(socket.SHUT_WR)
            return s.recv(65536)
    reply = await asyncio.to_thread(truncated)
    assert not reply.startswith(b"HTTP/1.1 2") and not reply.startswith(b"HTTP/1.1 5")
    assert total_len(rc, gw_settings.names) == 0
    rc.close()


# --- fuzz -------------------------------------------------------------------------------------------------------

_GOOD = frames_for("p", "r", n_steps=4, per_frame=2)
def _pack(v: Any) -> bytes:
    out: bytes = msgpack.packb(v, use_bin_type=True)
    return out


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(-9, 2**40), inner,
                                                                 max_size=4),
    max_leaves=20,
)


def _mutate(data: bytes, at: int, byte: int) -> bytes:
    if not data:
        return data
    i = at % len(data)
    return data[:i] + bytes([byte]) + data[i + 1:]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return _pack(draw(_values))
    if kind == 2:  # an array of arbitrary values
        return _pack(draw(st.lists(_values, max_size=4)))
    if kind == 3:  # frames whose envelope fields are arbitrary
        env = {"v": draw(st.sampled_from([1, 2, 1.0, None, "1"])), "project": draw(st.sampled_from(["p", "q", 1])),
               "run": draw(st.sampled_from(["r", "r/x", ""])), "producer": draw(st.text(max_size=70)),
               "seq": draw(st.integers(-3, 2**64 - 1) | st.floats()),
               "events": draw(st.lists(st.binary(max_size=50) | st.builds(_pack, _values), max_size=3))}
        return body([_pack(env)])
    if kind == 4:  # events whose fields are arbitrary, in an otherwise good frame
        ev = {"k": draw(st.sampled_from(["log", "logs", "start", "config", "summary", "finish", "define_metric"])),
              **draw(st.dictionaries(st.sampled_from(["ts", "step", "commit", "data", "keys", "cols", "config",
                                                      "name", "exit_code", "summary", "goal"]), _values))}
        return body([frame_with_events([_pack(ev)])])
    # good frames with one byte changed somewhere in the body
    return _mutate(body(_GOOD), draw(st.integers(0, 10_000)), draw(st.integers(0, 255)))


def _fuzz(port: int, r: redis.Redis, names: Any, data: bytes, enc: str) -> None:
    headers = {**FRAMES}
    if enc == "gzip":
        data = zlib.compress(data) if len(data) % 2 else gzip.compress(data)  # zlib framing is a wrong gzip
        headers["Content-Encoding"] = "gzip"
    before = stream_len(r, names, "p", "r")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", URL, body=data, headers=headers)
    resp = conn.getresponse()
    out = json.loads(resp.read())
    conn.close()
    assert resp.status in (202, 400, 413, 415, 422), (resp.status, out)
    added = stream_len(r, names, "p", "r") - before
    if resp.status == 202:
        assert added == out["accepted"] and out["accepted"] > 0
    else:
        assert added == 0 and out["error"] and out["message"], out


def _run_fuzz(g: Any, gw_settings: GatewaySettings, max_examples: int) -> None:
    r = redis.Redis.from_url(gw_settings.redis_url)

    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=bodies(), enc=st.sampled_from(["identity", "identity", "gzip"]))
    def check(data: bytes, enc: str) -> None:
        _fuzz(g.port, r, gw_settings.names, data, enc)

    try:
        check()
    finally:
        r.close()


def test_fuzzed_bodies_sample(gw_settings: GatewaySettings, thread_gateway: Callable[..., Any]) -> None:
    _run_fuzz(thread_gateway(gw_settings.replace(rate_per_s=0)), gw_settings, 300)


def test_fuzzed_bodies_many(gw_settings: GatewaySettings, thread_gateway: Callable[..., Any]) -> None:
    """The long campaign (10,000 bodies) runs with STEPLINE_TEST_LONG=1; CI runs 2,000 (about 20 s here)."""
    n = 10_000 if os.environ.get("STEPLINE_TEST_LONG") == "1" else 2_000
    _run_fuzz(thread_gateway(gw_settings.replace(rate_per_s=0)), gw_settings, n)


WIDE_INTS: list[tuple[str, Any, str]] = [
    ("a logged value", Log(ts=1.0, data={"ok": 1.0, "big": 2**63}), "value of 'big' is an int outside int64"),
    ("inside a list", Log(ts=1.0, data={"xs": [1, [2, 2**64 - 1]]}), "value of 'xs' holds an int outside int64"),
    ("inside a map", Log(ts=1.0, data={"m": {"a": {"b": 2**63}}}), "value of 'm' holds an int outside int64"),
    ("a block's list column", LogBlock(keys=["s", "n"], ts=[1.0, 2.0], step=[0, 1], commit=[None, None],
                                       cols=[["a", "b"], [1, 2**63]]), "value of 'n' holds an int outside int64"),
    ("config", Config(data={"lr": 0.1, "seed": 2**64 - 1}), "config value of 'seed' is an int outside int64"),
    ("the start's config", Start(ts=1.0, config={"seed": 2**63}), "config value of 'seed' is an int outside int64"),
    ("summary", Summary(data={"best": [2**63]}), "summary value of 'best' holds an int outside int64"),
]


@pytest.mark.parametrize(("what", "event", "message"), WIDE_INTS, ids=[w[0] for w in WIDE_INTS])
async def test_ints_outside_int64_are_refused_naming_the_key(
        what: str, event: Any, message: str, gw_settings: GatewaySettings,
        make_client: Callable[..., Awaitable[Any]]) -> None:
    """An int outside int64 (msgpack carries up to 2**64 - 1) is refused at request time with 422 ``int_range``
    naming the frame and the key, as ``log()``/``config`` refuse it in the SDK. Before: 202, and the worker then
    rejected the call (``int_range``) after the client was told it was accepted."""
    c = await make_client(gw_settings)
    rc = redis.Redis.from_url(gw_settings.redis_url)
    good = encode_frame_raw("p", "r", "w", 0, [encode_event(Log(ts=1.0, data={"a": 1.0}))])
    bad = encode_frame_raw("p", "r", "w", 1, [encode_event(Log(ts=1.0, data={"a": 2.0})), encode_event(event)])
    r = await c.post(URL, data=body([good, bad]), headers=FRAMES)
    got = await r.json()
    assert (r.status, got["error"], got["frame"]) == (422, "int_range", 1), got
    assert message in got["message"] and got["key"] in message, got
    assert total_len(rc, gw_settings.names) == 0  # refused whole: not even the good frame
    # The SDK refuses the same value with the same code.
    key = got["key"]
    held = event.config if isinstance(event, Start) else (
        dict(zip(event.keys, event.cols, strict=True)) if isinstance(event, LogBlock) else event.data)
    with pytest.raises(SchemaError) as e:
        capture(held[key], key)
    assert e.value.code == "int_range"
    rc.close()


async def test_ints_at_the_edges_of_int64_are_accepted(gw_settings: GatewaySettings,
                                                       make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    edges = {"max": 2**63 - 1, "min": -(2**63), "nested": [2**63 - 1, {"a": -(2**63)}]}
    frame = encode_frame_raw("p", "r", "w", 0, [encode_event(Log(ts=1.0, data=edges)),
                                                encode_event(Config(data=edges)), encode_event(Summary(data=edges))])
    r = await c.post(URL, data=body([frame]), headers=FRAMES)
    assert r.status == 202, await r.text()
