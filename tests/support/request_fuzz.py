"""HTTP requests into the gateway: hostile bodies, headers, encodings, paths and query parameters, against two
in-process gateways over real Redis (one with API keys, one in open mode) whose accepted frames an in-process
worker commits as it goes, so the read routes serve what the fuzzer wrote. Shared by
``tests/gateway/test_fuzz_requests.py`` (a bounded sample) and ``bench/fuzz.py --target requests``.

Requests (:func:`gen_request`): ``POST .../frames`` with valid frames of every value kind, structure-aware
hostile frames (``support.frame_fuzz.hostile_frame``), mutants, frames of another run, bodies that are not an
array of frames, wrong and missing content types, every content encoding (gzip and zstd bombs, truncated and
wrong streams); ``PUT /blobs`` with right and wrong hashes and parameters; every read route with hostile query
parameters; unknown routes and methods; hostile ``Authorization`` and ``Host`` headers; and raw socket requests
(malformed request lines and headers, bodies shorter or longer than announced).

The invariant (:func:`check`): never a 5xx, never a hang (every request has a deadline), every refusal a 4xx JSON
``{"error", "message"}``, a refused write changes nothing; an accepted write is stored exactly (the stream
entries it added are the frames it sent, byte for byte, each of which decodes strictly for the URL's run; an
uploaded blob is the bytes sent); every 200 read is well formed in its format (JSON strictly: no NaN or
Infinity tokens); a scan of a seeded run gives exactly the rows it should for the parameters asked; and the
worker commits every accepted frame without dead-lettering it whole and without failing a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import hashlib
import io
import json
import logging
import math
import random
import re
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import msgpack
import numpy as np
import redis.asyncio as aioredis
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer

from gateway import GatewaySettings, create_app
from gateway.keys import KeyStore, writer_engine
from schemas import (
    FRAME_FIELD,
    Config,
    Finish,
    Limits,
    Log,
    LogBlock,
    Media,
    SchemaError,
    Start,
    Summary,
    decode_frame,
    encode_event,
    encode_frame_raw,
)
from support.frame_fuzz import FLOATS, GenContext, clean_value, enc, hostile_frame, mutate, same
from support.fuzz_report import Findings
from support.gateway_server import GatewayTestServer
from workers.metastore import MetaStore
from workers.partition import PartitionProcessor

try:  # Python 3.14+
    from compression.zstd import compress as zstd_compress  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    from backports.zstd import compress as zstd_compress

PARTITIONS = 4
FRAMES = "application/x-stepline-frames"
API = "/api/v1"
PROJECT, OTHER = "pa", "pb"
#: Seeded runs whose rows the scan check knows: step i holds f[i], n[i], s, b, l, arr (see :func:`_seed_rows`).
SEEDED = ("seeded-0", "seeded-1")

# --- the gateways under test -------------------------------------------------------------------------------------


def fuzz_settings(redis_url: str, namespace: str, data_dir: Path) -> GatewaySettings:
    """Small limits so that every limit is reached, rate limits off (they would hide everything else)."""
    return GatewaySettings(
        redis_url=redis_url, namespace=namespace, partitions=PARTITIONS, data_dir=data_dir, key_cache_s=0.0,
        backlog_refresh_s=0.2, backlog_high_water=10**9, rate_per_s=0, auth_fail_per_s=0,
        max_body_bytes=1 << 20, max_decoded_bytes=2 << 20, max_frames_per_request=64, max_blob_bytes=256 << 10,
        body_timeout_s=1.0, blob_quota_bytes=4 << 20, limits=Limits(max_frame_bytes=512 << 10),
    )


@dataclass
class Gateway:
    name: str  # "keys" or "open"
    settings: GatewaySettings
    server: TestServer
    tokens: dict[str, str]
    committer: Committer
    runs: set[tuple[str, str]] = field(default_factory=set)  # runs it accepted frames for
    seqs: dict[tuple[str, str, str], int] = field(default_factory=dict)
    blobs: list[tuple[str, str, str]] = field(default_factory=list)  # (project, run, sha) uploaded
    stream_total: int = 0  # entries its streams must hold

    @property
    def port(self) -> int:
        return cast("int", self.server.port)


class Committer:
    """An in-process worker: every partition processed and committed into the gateway's data directory, with a
    check that no frame the gateway accepted is dead-lettered whole and that no commit fails."""

    def __init__(self, settings: GatewaySettings, r: aioredis.Redis, findings: Findings) -> None:
        self.s = settings
        self.redis = r
        self.findings = findings
        self.store = MetaStore(settings.metadata_url)
        self.procs: dict[int, PartitionProcessor] = {}
        self.poison: set[str] = set()
        self.commits = 0
        self.entries = 0
        self.rejections: Counter[str] = Counter()

    def _proc(self, p: int) -> PartitionProcessor:
        proc = self.procs.get(p)
        if proc is None:
            epoch, offset = self.store.take_partition(p, "fuzz")
            proc = self.procs[p] = PartitionProcessor(
                p=p, epoch=epoch, offset=offset, names=self.s.names, store=self.store, data_dir=self.s.data_dir,
                redis=cast("Any", self.redis), limits=self.s.limits, skip=frozenset(self.poison))
        return proc

    async def step(self) -> None:
        for p in range(PARTITIONS):
            while True:
                proc = self._proc(p)
                start = "(" + proc.read_id if proc.read_id != "0-0" else "-"
                entries = cast("list[Any]", await self.redis.xrange(self.s.names.stream(p), min=start, count=500))
                if not entries:
                    break
                dlq_before = await self.redis.xlen(self.s.names.dlq(p))
                try:
                    await proc.process(entries)
                    for rej in proc.rejections:
                        self.rejections[rej.reason] += 1
                    await proc.commit()
                except Exception as e:
                    self.findings.add(f"[worker_commit_failed:{type(e).__name__}: {str(e)[:80]}] partition {p}, "
                                      f"entries {entries[0][0]!r}..{entries[-1][0]!r}\n{traceback.format_exc()}")
                    await asyncio.to_thread(self.store.close)
                    self.store = MetaStore(self.s.metadata_url)
                    self.procs.clear()
                    await self._isolate(p, entries)
                    continue
                self.commits += 1
                self.entries += len(entries)
                for _, f in cast("list[Any]", await self.redis.xrange(self.s.names.dlq(p)))[dlq_before:]:
                    if b"raw" in f:  # an entry dead-lettered whole: the gateway should have refused it
                        self.findings.add(f"[worker_dead_lettered_an_accepted_frame:{f[b'reason'].decode()}] "
                                          f"partition {p}: {f.get(b'message', b'')[:300]!r}")

    async def _isolate(self, p: int, entries: list[Any]) -> None:
        """As a worker's attempts do: each entry alone; one whose commit fails alone is skipped as poison."""
        for entry in entries:
            proc = self._proc(p)
            try:
                await proc.process([entry])
                await proc.commit()
            except Exception:
                self.poison.add(entry[0].decode())
                self.procs.clear()

    def close(self) -> None:
        self.store.close()


async def _start_gateway(name: str, base: Path, redis_url: str, namespace: str, r: aioredis.Redis,
                         findings: Findings) -> Gateway:
    data = base / name
    data.mkdir(parents=True, exist_ok=True)
    s = fuzz_settings(redis_url, f"{namespace}{name[0]}", data)
    tokens: dict[str, str] = {}
    committer = Committer(s, r, findings)  # creates the metadata schema
    if name == "keys":
        engine = writer_engine(s.metadata_url)
        store = KeyStore(engine)
        for role, project, scopes in (("write", PROJECT, {"write"}), ("read", PROJECT, {"read"}),
                                      ("admin", PROJECT, {"admin"}), ("revoked", PROJECT, {"admin"}),
                                      ("other", OTHER, {"admin"})):
            key, token = store.create(project, frozenset(scopes))
            tokens[role] = token
            if role == "revoked":
                store.revoke(key.id)
        engine.dispose()
        tokens["wrong"] = tokens["admin"][:-4] + ("AAAA" if not tokens["admin"].endswith("AAAA") else "BBBB")
    server = GatewayTestServer(create_app(s), host="127.0.0.1")  # served as `stepline gateway` serves it
    await server.start_server()
    return Gateway(name, s, server, tokens, committer)


# --- request generation -------------------------------------------------------------------------------------------


@dataclass
class Req:
    route: str
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    frames: list[bytes] | None = None  # the frames a POST carries (None: not an array of frames)
    project: str | None = None
    run: str | None = None
    raw: bytes | None = None  # sent as is over a socket (malformed HTTP)
    half_close: bool = False  # (raw) the client closes its side after sending
    blob: bytes | None = None
    seeded_scan: dict[str, Any] | None = None  # parameters of a scan of a seeded run (checked exactly)


HOSTILE_IDS = ["", " pa", "pa ", "a/b", "\x00", "pa\x00", "x" * 129, "..", ".", "%", "ünï", "\u202e", "\ud800",
               "a\\b", "?", "#", "pa%2F..", "\n"]
PARAMS = ["", "0", "-1", "1", "3", "10", "all", "none", "1e3", "NaN", "nan", "inf", "-inf", "Infinity", "9" * 30,
          "9223372036854775807", "9223372036854775808", "-9223372036854775809", "abc", "\x00", "ünï", "_step",
          "_timestamp", "_runtime", "f", "n", "s", "b", "l", "arr", "F", "f,n", ",,,", "x" * 3000, " 1", "1 ",
          "0x10", "1_000", "١٢", "+5", "-0", "1.5", "1e308", "-1e308", "5e-324", "f:other", "l:other", "json",
          "msgpack", "csv", "xml", "running", "finished,crashed", "\ud800"]
ROUTE_PARAMS = {
    "runs": ["state", "format"],
    "run": ["rejections", "format"],
    "history": ["keys", "samples", "x_axis", "min_step", "max_step", "format"],
    "scan": ["keys", "page_size", "min_step", "max_step", "format"],
    "sampled": ["key", "x_axis", "buckets", "x_min", "x_max", "format"],
    "sections": ["format"],
    "projects": ["format"],
}


def _q(s: str) -> str:
    return quote(s.encode("utf-8", "surrogatepass"), safe="")


def _query(params: dict[str, str] | list[tuple[str, str]]) -> str:
    items = params.items() if isinstance(params, dict) else params
    return urlencode([(k, v.encode("utf-8", "surrogatepass")) for k, v in items], quote_via=quote)


def _id(rng: random.Random, good: str) -> str:
    return good if rng.random() < 0.95 else rng.choice(HOSTILE_IDS)


def _auth(rng: random.Random, g: Gateway, scope: str) -> list[tuple[str, str]]:
    if g.name == "open":
        u = rng.random()
        if u < 0.85:
            return []
        return [("Authorization", rng.choice(("Bearer slk_0123456789abcdef_x", "Bearer", "Basic Zm9vOmJhcg==",
                                              "Bearer " + "A" * 300)))]
    u = rng.random()
    if u < 0.85:
        return [("Authorization", f"Bearer {g.tokens['admin' if rng.random() < 0.3 else scope]}")]
    role = rng.choice(("read" if scope == "write" else "write", "revoked", "other", "wrong"))
    v = rng.choice((f"Bearer {g.tokens[role]}", "", "Bearer", "Bearer ", "bearer " + g.tokens[scope],
                    "Bearer slk_zz", "Bearer slk_0123456789abcdef_" + "x" * 190, "Token abc", "Bearer " + "A" * 4000,
                    f"Bearer {g.tokens[scope]} extra", f"Bearer  {g.tokens[scope]}"))
    return [] if v == "" and rng.random() < 0.5 else [("Authorization", v)]


def _host(rng: random.Random, g: Gateway) -> list[tuple[str, str]]:
    if rng.random() > 0.08:
        return []
    return [("Host", rng.choice(("evil.example", "localhost", "127.0.0.1:1", "[::1]:80", "127.0.0.1.nip.io",
                                 "localhost:abc", "LOCALHOST", "[::1", "0.0.0.0", "", "127.1", "10.0.0.1")))]


def _valid_events(rng: random.Random, g: Gateway, project: str, run: str) -> list[Any]:
    ts = time.time()
    events: list[Any] = []
    for _ in range(rng.randint(1, 4)):
        u = rng.random()
        if u < 0.6:
            data = {k: clean_value(rng) for k in rng.sample(["f", "n", "s", "b", "l", "loss", "ünï/κ 🎉", "Loss",
                                                             "x" * 256], rng.randint(1, 4))}
            if g.blobs and rng.random() < 0.1:
                *_, sha = rng.choice(g.blobs)
                data["img"] = Media("image", {"sha256": sha, "size": 1, "format": "png", "width": 1, "height": 1})
            events.append(Log(ts=ts, data=data, step=rng.choice((None, None, rng.randint(0, 50))),
                              commit=rng.choice((None, True, False))))
        elif u < 0.75:
            n = rng.choice((1, 4, 9))
            events.append(LogBlock(keys=["f", "n"], ts=np.full(n, ts), step=[None] * n, commit=[None] * n,
                                   cols=[np.array([rng.choice(FLOATS) for _ in range(n)]),
                                         np.arange(n, dtype=np.int64)]))
        elif u < 0.85:
            events.append(Start(ts=ts, name=run, config={"lr": rng.choice(FLOATS), "k": clean_value(rng)}))
        elif u < 0.9:
            events.append(Config(data={"c": clean_value(rng)}))
        elif u < 0.95:
            events.append(Summary(data={"best": clean_value(rng)}))
        else:
            events.append(Finish(ts=ts, exit_code=rng.choice((0, 1))))
    return events


def _frames(rng: random.Random, g: Gateway, project: str, run: str) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        u = rng.random()
        producer = rng.choice(("f0", "f1"))
        key = (project, run, producer)
        if u < 0.75:
            raws = []
            for e in _valid_events(rng, g, project, run):
                with contextlib.suppress(SchemaError):  # (a start named after a run id that is not text)
                    raws.append(encode_event(e))
            seq = g.seqs.get(key, 0)
            g.seqs[key] = seq + len(raws)
            out.append(enc({"v": 1, "project": project, "run": run, "producer": producer, "seq": seq,
                            "events": raws}))
        elif u < 0.9:
            ctx = GenContext(home=[(project, run)], away=[(project, run + "-elsewhere")])
            out.append(hostile_frame(rng, ctx, hostile=rng.choice((0.1, 0.3, 0.7))))
        elif u < 0.97 and out:
            out.append(mutate(rng, out))
        else:
            other = rng.choice(((project, run + "x"), (OTHER, run), ("..", run)))
            out.append(enc({"v": 1, "project": other[0], "run": other[1], "producer": "f9", "seq": 0,
                            "events": [encode_event(Log(ts=1.0, data={"a": 1.0}))]}))
    return out


_BOMBS: dict[str, bytes] = {}


def _bomb(enc: str) -> bytes:
    """A small body that decodes to 8 MiB of zeros (past every decoded-size limit)."""
    if enc not in _BOMBS:
        zeros = b"\x00" * (8 << 20)
        _BOMBS[enc] = gzip.compress(zeros, 9) if enc == "gzip" else zstd_compress(zeros)
    return _BOMBS[enc]


def _encode_body(rng: random.Random, body: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    u = rng.random()
    if u < 0.7:
        return body, ([("Content-Encoding", "identity")] if rng.random() < 0.1 else [])
    if u < 0.8:
        return gzip.compress(body), [("Content-Encoding", rng.choice(("gzip", "GZIP", " gzip ")))]
    if u < 0.88:
        return zstd_compress(body), [("Content-Encoding", "zstd")]
    if u < 0.9:
        return _bomb("gzip"), [("Content-Encoding", "gzip")]
    if u < 0.92:
        return _bomb("zstd"), [("Content-Encoding", "zstd")]
    if u < 0.94:
        return zlib.compress(body), [("Content-Encoding", "gzip")]  # zlib framing: not gzip
    if u < 0.96:
        return gzip.compress(body)[:-5], [("Content-Encoding", "gzip")]
    if u < 0.97:
        return gzip.compress(body) + b"junk", [("Content-Encoding", "gzip")]
    if u < 0.98:
        return zstd_compress(body)[:-3], [("Content-Encoding", "zstd")]
    return body, [("Content-Encoding", rng.choice(("br", "deflate", "gzip, zstd", "x-gzip", "compress", "\t")))]


def _post_frames(rng: random.Random, g: Gateway, runs: list[str]) -> Req:
    project = PROJECT if g.name == "keys" and rng.random() < 0.95 else rng.choice((PROJECT, OTHER, "q"))
    if g.name == "open":
        project = rng.choice((PROJECT, OTHER, "q"))
    project = _id(rng, project)
    run = _id(rng, rng.choice(runs))
    frames = _frames(rng, g, project, run)
    u = rng.random()
    framed: list[bytes] | None = frames
    if u < 0.9:
        body = msgpack.packb(frames, use_bin_type=True)
    else:
        framed = None
        body = rng.choice((
            b"", msgpack.packb([]), msgpack.packb({"a": 1}), msgpack.packb([f.decode("latin-1") for f in frames]),
            msgpack.packb(frames) + b"\x00", msgpack.packb(frames)[:-1], b"\xdd\xff\xff\xff\xff",
            b"\x91" * 100_000 + b"\xc0", msgpack.packb([frames]), msgpack.packb([b"x"] * 65), rng.randbytes(50),
            msgpack.packb([b"\x00" * (600 << 10)]), b"\x00" * ((1 << 20) + 10)))
    body, enc_headers = _encode_body(rng, body)
    ctype = FRAMES if rng.random() < 0.9 else rng.choice((
        "application/json", "", "application/x-stepline-frames; charset=binary", "APPLICATION/X-STEPLINE-FRAMES",
        "application/x-stepline-frames,text/plain", "application/msgpack", "multipart/form-data; boundary=x"))
    headers = [("Content-Type", ctype)] if ctype or rng.random() < 0.5 else []
    headers += enc_headers + _auth(rng, g, "write") + _host(rng, g)
    return Req("post_frames", "POST", f"{API}/projects/{_q(project)}/runs/{_q(run)}/frames", headers, body, framed,
               project, run)


def _put_blob(rng: random.Random, g: Gateway, runs: list[str]) -> Req:
    data = rng.randbytes(rng.choice((0, 1, 100, 4096, (256 << 10) + 1)))
    sha = hashlib.sha256(data).hexdigest()
    u = rng.random()
    if u < 0.1:
        sha = hashlib.sha256(b"other").hexdigest()
    elif u < 0.15:
        sha = sha.upper()
    elif u < 0.2:
        sha = rng.choice(("", "zz", "../../etc/passwd", sha[:63], sha + "0", "%2e%2e"))
    project = PROJECT if g.name == "keys" else rng.choice((PROJECT, OTHER))
    run = rng.choice(runs)
    params: dict[str, str] = {"project": _id(rng, project), "run": _id(rng, run)}
    if rng.random() < 0.05:
        params.pop(rng.choice(list(params)))
    body, enc_headers = _encode_body(rng, data) if rng.random() < 0.3 else (data, [])
    ctype = "application/octet-stream" if rng.random() < 0.9 else rng.choice(("text/plain", "image/png", ""))
    headers = [("Content-Type", ctype), *enc_headers, *_auth(rng, g, "write"), *_host(rng, g)]
    return Req("put_blob", "PUT", f"{API}/blobs/{_q(sha)}?{_query(params)}", headers, body,
               project=params.get("project"), run=params.get("run"), blob=data)


def _get(rng: random.Random, g: Gateway, runs: list[str]) -> Req:
    route = rng.choice(("runs", "run", "run", "history", "history", "scan", "scan", "sampled", "sampled",
                        "sections", "projects", "blob", "health", "page"))
    project = PROJECT if g.name == "keys" or rng.random() < 0.7 else OTHER
    run = rng.choice([*runs, *SEEDED, *SEEDED])
    project, run = _id(rng, project), _id(rng, run)
    base = f"{API}/projects/{_q(project)}/runs"
    if route == "health":
        return Req(route, "GET", rng.choice(("/healthz", "/readyz", "/metrics")), _host(rng, g))
    if route == "page":
        path = rng.choice(("/", "/static/app.js", "/static/../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
                           "/static/" + "a" * 300, "/static/", "/static/index.html", "/static/%00"))
        return Req(route, "GET", path, _host(rng, g))
    if route == "blob":
        sha = rng.choice([s for _, _, s in g.blobs] or ["0" * 64]) if rng.random() < 0.8 else rng.choice(
            ("0" * 64, "zz", "A" * 64))
        path = f"{API}/blobs/{_q(sha)}?{_query({'project': project, 'run': run})}"
        return Req(route, "GET", path, _auth(rng, g, "read") + _host(rng, g))
    path = {"runs": base, "run": f"{base}/{_q(run)}", "history": f"{base}/{_q(run)}/history",
            "scan": f"{base}/{_q(run)}/scan", "sampled": f"{base}/{_q(run)}/sampled",
            "sections": f"{base}/{_q(run)}/sections", "projects": f"{API}/projects"}[route]
    params: list[tuple[str, str]] = []
    for name in ROUTE_PARAMS[route]:
        if rng.random() < 0.5:
            params.append((name, rng.choice(PARAMS)))
    if rng.random() < 0.1:
        params.append((rng.choice(("keys", "format", "zzz", "", "min_step")), rng.choice(PARAMS)))
    seeded = None
    if route == "scan" and run in SEEDED and project == PROJECT and rng.random() < 0.5:
        # A scan the check knows the answer to: msgpack, keys among the seeded ones, plain step bounds.
        params = [("format", "msgpack")]
        seeded = {"keys": rng.sample(["f", "n", "s", "b", "l", "arr", "F"], rng.randint(0, 3)),
                  "min_step": rng.choice((None, 0, 3, 40)), "max_step": rng.choice((None, 5, 17, 1000)),
                  "page_size": rng.choice((None, 1, 7, 1000))}
        if seeded["keys"]:
            params.append(("keys", ",".join(seeded["keys"])))
        for k in ("min_step", "max_step", "page_size"):
            if seeded[k] is not None:
                params.append((k, str(seeded[k])))
    query = _query(params)
    return Req(route, "GET", path + (f"?{query}" if query else ""), _auth(rng, g, "read") + _host(rng, g),
               project=project, run=run, seeded_scan=seeded)


def _odd(rng: random.Random, g: Gateway, runs: list[str]) -> Req:
    method = rng.choice(("DELETE", "PATCH", "OPTIONS", "HEAD", "PUT", "POST", "GET", "TRACE"))
    path = rng.choice((f"{API}/projects/{PROJECT}/runs/r/frames", f"{API}/projects", "/nothing/here", "/api/v2/x",
                       f"{API}/blobs/{'0' * 64}", "//", "/%", "/" + "a" * 5000, f"{API}/projects/{PROJECT}/runs/r"))
    return Req("odd", method, path, _auth(rng, g, "write") + _host(rng, g), rng.randbytes(rng.randint(0, 20)))


def _raw(rng: random.Random, g: Gateway, runs: list[str]) -> Req:
    """Malformed HTTP sent over a socket (the client library would refuse to send it)."""
    body = msgpack.packb(_frames(rng, g, PROJECT, rng.choice(runs)), use_bin_type=True)
    path = f"{API}/projects/{PROJECT}/runs/{rng.choice(runs)}/frames"
    auth = f"Authorization: Bearer {g.tokens.get('write', 'x')}\r\n".encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FRAMES}\r\n".encode() + auth
    u = rng.randrange(12)
    raw = {
        0: head + f"Content-Length: {len(body) + 50}\r\n\r\n".encode() + body,  # shorter: 408, or the client quits
        1: head + f"Content-Length: {max(0, len(body) - 5)}\r\n\r\n".encode() + body,  # longer than announced
        2: head + b"Content-Length: -1\r\n\r\n" + body,
        3: head + b"Content-Length: abc\r\n\r\n" + body,
        4: head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n",
        5: head + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        6: b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x00b\r\n\r\n",
        7: b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        8: b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
        9: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(40),  # a TLS hello
        10: b"GET /healthz HTTP/9.9\r\n\r\n",
        11: f"GET {API}/projects/{PROJECT}/runs/r HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + auth
        + "X-Ünï: ü\r\n\r\n".encode(),
    }[u]
    return Req("raw", "RAW", path, [], raw=raw, half_close=u == 0 and rng.random() < 0.5)


def gen_request(rng: random.Random, g: Gateway, runs: list[str]) -> Req:
    u = rng.random()
    if u < 0.42:
        return _post_frames(rng, g, runs)
    if u < 0.5:
        return _put_blob(rng, g, runs)
    if u < 0.94:
        return _get(rng, g, runs)
    if u < 0.98:
        return _odd(rng, g, runs)
    return _raw(rng, g, runs)


# --- checks -------------------------------------------------------------------------------------------------------


def _strict_json(text: str) -> Any:
    def bad(token: str) -> Any:
        raise ValueError(f"JSON has {token}")

    return json.loads(text, parse_constant=bad)


def _seeded_value(name: str, i: int) -> Any:
    return {"f": FLOATS[i % len(FLOATS)], "n": [-(2**63), 2**63 - 1, 0, -1, 7][i % 5], "s": f"ü{i}\x00",
            "b": i % 3 == 0, "l": [FLOATS[i % len(FLOATS)], i, "x"], "arr": [float(i), -0.0, math.inf]}[name]


def _seeded_rows(steps: int = 40) -> list[dict[str, Any]]:
    return [{"_step": i, **{k: _seeded_value(k, i) for k in ("f", "n", "s", "b", "l", "arr")
                            if not (k == "s" and i % 4 == 1)}} for i in range(steps)]


def _expected_scan(p: dict[str, Any]) -> list[dict[str, Any]]:
    lo = p["min_step"] if p["min_step"] is not None else 0
    hi = p["max_step"]
    keys = [k.casefold() for k in p["keys"]]
    out = []
    for row in _seeded_rows():
        if row["_step"] < lo or (hi is not None and row["_step"] >= hi):
            continue
        if keys and not all(k in row for k in keys):
            continue
        out.append({k: v for k, v in row.items() if k == "_step" or not keys or k in keys})
    return out


@dataclass
class RequestResult:
    seed: int = 0
    requests: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # "<status> <error code>"
    frames_accepted: int = 0
    blobs_stored: int = 0
    seeded_scans_checked: int = 0
    worker_commits: int = 0
    worker_entries: int = 0
    worker_rejections: Counter[str] = field(default_factory=Counter)
    crashes: Findings = field(default_factory=Findings)
    wall_s: float = 0.0

    def line(self) -> str:
        return (f"requests={self.requests}, 2xx={sum(n for s, n in self.by_status.items() if 200 <= s < 300)}, "
                f"4xx={sum(n for s, n in self.by_status.items() if 400 <= s < 500)}, "
                f"5xx={sum(n for s, n in self.by_status.items() if s >= 500)}, frames_accepted={self.frames_accepted}, "
                f"worker_entries={self.worker_entries}, crashes={len(self.crashes)}")

    def merge(self, other: RequestResult) -> None:
        for name in ("requests", "frames_accepted", "blobs_stored", "seeded_scans_checked", "worker_commits",
                     "worker_entries", "wall_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.by_route.update(other.by_route)
        self.by_status.update(other.by_status)
        self.refusals.update(other.refusals)
        self.worker_rejections.update(other.worker_rejections)
        self.crashes.merge(other.crashes)


async def _send_raw(port: int, data: bytes, half_close: bool) -> tuple[int | None, str, bytes]:
    """Send bytes (then close the write side, with ``half_close``: a client that gives up), return the status,
    Content-Type and body of the reply (None, "", b"": the server closed the connection without one)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            with contextlib.suppress(OSError):
                writer.write_eof()
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line:
            return None, "", b""
        parts = line.split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else -1
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head.split("\r\n"))}
        length = headers.get("content-length", "")
        # A reply without a length ends with the connection (an error reply closes it).
        body = await asyncio.wait_for(reader.readexactly(int(length)) if length.isdigit() else reader.read(), 10)
        return status, headers.get("content-type", ""), body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def check(req: Req, g: Gateway, session: ClientSession, r: aioredis.Redis, res: RequestResult,
                where: str, errors: _GatewayErrors) -> None:
    """Send one request and check the invariant of the module docstring (AssertionError on a violation); a
    failure's tag names the route and the cause the gateway logged."""
    errors.take()
    try:
        await _check(req, g, session, r, res, where)
    except AssertionError as e:
        cause = errors.take()
        if cause is None:
            raise
        msg = str(e)
        raise AssertionError(re.sub(r"^\[([^\]]*)\]", lambda m: f"[{m.group(1)}:{cause}]", msg, count=1)
                             if msg.startswith("[") else f"[failed:{req.route}:{cause}] {msg}") from None
    except Exception as e:
        cause = errors.take()
        raise AssertionError(f"[client_error:{req.route}:{type(e).__name__}:{cause}] {where}: {req.method} "
                             f"{req.path[:300]}: {e}") from None
    cause = errors.take()
    assert cause is None, f"[gateway_logged_error:{req.route}:{cause}] {where}: {req.method} {req.path[:300]}"


async def _check(req: Req, g: Gateway, session: ClientSession, r: aioredis.Redis, res: RequestResult,
                 where: str) -> None:
    res.requests += 1
    res.by_route[req.route] += 1
    if req.raw is not None:
        status, ctype, body = await _send_raw(g.port, req.raw, req.half_close)
        res.by_status[status or 0] += 1
        assert status is None or status < 500, f"[raw_5xx:{status}] {where}: {req.raw[:200]!r}"
        assert status is not None or req.half_close, f"[raw_no_reply] {where}: {req.raw[:200]!r}"
        if status is not None and status >= 400:  # refused by aiohttp's parser or by a handler: JSON alike
            assert ctype.startswith("application/json"), (
                f"[raw_error_not_json:{status}] {where}: {ctype} {body[:100]!r}")
            err = _strict_json(body.decode())
            assert isinstance(err.get("error"), str) and isinstance(err.get("message"), str), (
                f"[raw_error_body] {where}: {err!r:.300}")
            res.refusals[f"raw {status} {err['error']}"] += 1
        return
    names = g.settings.names
    before = sum(await asyncio.gather(*(r.xlen(names.stream(p)) for p in range(PARTITIONS))))
    assert before == g.stream_total, f"[stream_changed] {where}: streams hold {before}, expected {g.stream_total}"
    url = f"http://127.0.0.1:{g.port}{req.path}"
    # (aiohttp's client warns about bodies over 1 MiB given as bytes: a file object it streams instead)
    data: Any = None
    if req.method not in ("GET", "HEAD"):
        data = io.BytesIO(req.body) if len(req.body) >= 1 << 20 else req.body
    async with session.request(req.method, url, data=data,
                               headers=req.headers, skip_auto_headers=("Content-Type",) if req.method != "GET"
                               else (), allow_redirects=False) as resp:
        body = await resp.read()
        status = resp.status
        ctype = resp.headers.get("Content-Type", "")
    res.by_status[status] += 1
    assert status < 500, f"[http_{status}:{req.route}] {where}: {req.method} {req.path[:300]} -> {body[:300]!r}"
    after = sum(await asyncio.gather(*(r.xlen(names.stream(p)) for p in range(PARTITIONS))))
    if status >= 400:
        if req.method != "HEAD":
            assert ctype.startswith("application/json"), f"[error_not_json:{req.route}] {where}: {status} {ctype}"
            err = _strict_json(body.decode())
            assert isinstance(err.get("error"), str) and err["error"] and isinstance(err.get("message"), str), (
                f"[error_body:{req.route}] {where}: {err!r:.300}")
            res.refusals[f"{req.route} {status} {err['error']}"] += 1
        assert after == before, f"[refused_but_written:{req.route}] {where}: {status} but {after - before} entries"
        return
    if req.route == "post_frames":
        assert status == 202 and req.frames is not None, f"[post_status] {where}: {status} {body[:200]!r}"
        got = _strict_json(body.decode())
        frames = req.frames
        assert got["accepted"] == len(frames) == len(got["ids"]) == after - before, (
            f"[accepted_count] {where}: {got!r:.300}, {after - before} entries added")
        first = decode_frame(frames[0], g.settings.limits, strict=True)
        p = names.partition(first.project, first.run)
        assert got["partition"] == p, f"[partition] {where}: {got['partition']} != {p}"
        stored = [e[1][FRAME_FIELD] for e in cast("list[Any]", await r.xrange(names.stream(p), min=got["ids"][0],
                                                                              max=got["ids"][-1]))]
        assert stored == frames, f"[not_stored_exactly] {where}: the entries added are not the frames sent"
        events = 0
        for raw in frames:
            f = decode_frame(raw, g.settings.limits, strict=True)
            assert (f.project, f.run) == (req.project, req.run), f"[run_mismatch_accepted] {where}"
            events += len(f.events)
        assert got["events"] == events, f"[event_count] {where}: {got['events']} != {events}"
        g.stream_total = after
        g.runs.add((req.project, req.run))
        res.frames_accepted += len(frames)
        return
    assert after == before, f"[read_wrote:{req.route}] {where}: a {req.method} added {after - before} entries"
    if req.route == "put_blob":
        assert status in (200, 201) and req.blob is not None, f"[blob_status] {where}: {status}"
        got = _strict_json(body.decode())
        # (The partition the gateway chose: a name sent as invalid UTF-8 arrives as some other valid text.)
        key = names.blob(got["partition"], got["sha256"])
        assert await r.get(key) == req.blob, f"[blob_not_stored_exactly] {where}"
        g.blobs.append((req.project, req.run, got["sha256"]))
        if len(g.blobs) > 50:
            g.blobs.pop(0)
        res.blobs_stored += status == 201
        return
    if req.method == "HEAD" or (req.route in ("page", "blob", "odd") and not ctype.startswith(
            ("application/json", "application/msgpack", "text/csv"))):
        return
    _well_formed(body, ctype, where, req.route)
    if req.seeded_scan is not None and status == 200:
        up = msgpack.Unpacker(raw=False)
        up.feed(body)
        rows = [{k: v for k, v in row.items() if k not in ("_timestamp", "_runtime")} for row in up]
        want = _expected_scan(req.seeded_scan)
        assert len(rows) == len(want) and all(a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
                                              for a, b in zip(rows, want, strict=True)), (
            f"[seeded_scan] {where}: {req.seeded_scan}: got {rows[:3]!r:.300} ({len(rows)} rows), want "
            f"{want[:3]!r:.300} ({len(want)} rows)")
        res.seeded_scans_checked += 1


def _well_formed(body: bytes, ctype: str, where: str, route: str) -> None:
    try:
        if ctype.startswith("application/json"):
            _strict_json(body.decode())
        elif ctype.startswith("application/x-ndjson"):
            for line in body.decode().splitlines():
                _strict_json(line)
        elif ctype.startswith("application/msgpack"):
            up = msgpack.Unpacker(raw=False, strict_map_key=False)
            up.feed(body)
            for _ in up:
                pass
        elif ctype.startswith("text/csv"):
            list(csv.reader(io.StringIO(body.decode())))
        elif ctype.startswith("text/plain"):  # /metrics
            body.decode()
    except Exception as e:
        raise AssertionError(f"[malformed_{route}_body:{type(e).__name__}] {where}: {ctype}: {e}: {body[:200]!r}")\
            from None


# --- the driver ---------------------------------------------------------------------------------------------------


async def _seed(g: Gateway, session: ClientSession, r: aioredis.Redis) -> None:
    """Two runs with known rows (every value kind; a string missing on some rows), for exact scan checks."""
    project = PROJECT
    rows = _seeded_rows()
    for run in SEEDED:
        events = [Start(ts=1.0, name=run)] + [
            Log(ts=2.0 + row["_step"], data={k: (np.array(v) if k == "arr" else v) for k, v in row.items()
                                             if k != "_step"}, step=row["_step"], commit=True) for row in rows
        ] + [Finish(ts=100.0)]
        frames = [encode_frame_raw(project, run, "seed", 0, [encode_event(e) for e in events])]
        auth = {"Authorization": f"Bearer {g.tokens['write']}"} if g.tokens else {}
        async with session.post(f"http://127.0.0.1:{g.port}{API}/projects/{project}/runs/{run}/frames",
                                data=msgpack.packb(frames), headers={"Content-Type": FRAMES, **auth}) as resp:
            assert resp.status == 202, await resp.text()
        g.stream_total += 1
        g.runs.add((project, run))
    await g.committer.step()


async def run_requests(seed: int, n: int, base: Path, redis_url: str, namespace: str,
                       commit_every: int = 250) -> RequestResult:
    """``n`` requests (seeded) against both gateways; the worker commits every ``commit_every`` requests."""
    rng = random.Random(seed)
    res = RequestResult(seed=seed)
    r = aioredis.Redis.from_url(redis_url)
    gateways: list[Gateway] = []
    t0 = time.monotonic()
    quiet = [logging.getLogger(n) for n in ("stepline.worker", "stepline.gateway", "aiohttp.server",
                                             "aiohttp.access", "aiohttp.web")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # warnings of every refusal would drown the report; errors are collected below
        lg.setLevel(logging.ERROR if lg.name == "stepline.gateway" else logging.CRITICAL)
    errors = _GatewayErrors()
    logging.getLogger("stepline.gateway").addHandler(errors)
    try:
        for name in ("keys", "open"):
            gateways.append(await _start_gateway(name, base, redis_url, namespace, r, res.crashes))
        runs = [f"r{i}" for i in range(12)]
        async with ClientSession(timeout=ClientTimeout(total=30), auto_decompress=False) as session:
            for g in gateways:
                await _seed(g, session, r)
            for i in range(n):
                g = gateways[0] if rng.random() < 0.8 else gateways[1]
                try:
                    req = gen_request(rng, g, runs)
                except Exception as e:  # a bug of the generator: reported, and the campaign goes on
                    res.crashes.add(f"[fuzzer_error:{type(e).__name__}] seed={seed} request {i}\n"
                                    f"{traceback.format_exc()}")
                    continue
                where = f"seed={seed} request {i} ({g.name})"
                try:
                    await asyncio.wait_for(check(req, g, session, r, res, where, errors), 60)
                except TimeoutError:
                    res.crashes.add(f"[hang:{req.route}] {where}: {req.method} {req.path[:200]} did not finish in 60 s")
                except AssertionError:
                    res.crashes.add(f"{where}: {req.method} {req.path[:300]} {req.headers!r:.300}\n"
                                    f"{traceback.format_exc()}")
                if (i + 1) % commit_every == 0:
                    for g2 in gateways:
                        await g2.committer.step()
                        g2.stream_total = sum([await r.xlen(g2.settings.names.stream(p)) for p in range(PARTITIONS)])
            for g in gateways:
                await g.committer.step()
    finally:
        for g in gateways:
            res.worker_commits += g.committer.commits
            res.worker_entries += g.committer.entries
            res.worker_rejections.update(g.committer.rejections)
            await g.server.close()
            g.committer.close()
        logging.getLogger("stepline.gateway").removeHandler(errors)
        for lg, lvl in zip(quiet, levels, strict=True):
            lg.setLevel(lvl)
        for g in gateways:
            async for key in r.scan_iter(match=f"{g.settings.namespace}:*", count=1000):
                await r.delete(key)
        await r.aclose()
    for rec in errors.records:
        res.crashes.add(f"[gateway_logged_error] {rec}")
    res.wall_s = time.monotonic() - t0
    return res


class _GatewayErrors(logging.Handler):
    """Errors the gateway logged (it answers 500 for an unexpected one; a scan cut mid-stream logs one too): each
    is matched to the request that caused it, whose finding then names its cause."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 100:
            self.records.append(self.format(record)[-3000:])

    def take(self) -> str | None:
        """The cause of the errors logged since the last call (its exception's last line), if any."""
        recs, self.records = self.records, []
        if not recs:
            return None
        lines = [ln for ln in recs[-1].splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Invalid)\b", ln)), lines[-1])
        last = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", last.split(".")[-1] if last.startswith("pyarrow") else last)
        return re.sub(r"-?\d+", "N", last)[:100].replace("]", ")")


def drive_requests(seed: int, n: int, base: Path, redis_url: str, namespace: str,
                   commit_every: int = 250) -> RequestResult:
    from support.frame_fuzz import warnings_quiet

    with warnings_quiet():
        return asyncio.run(run_requests(seed, n, base, redis_url, namespace, commit_every))


__all__ = ["RequestResult", "drive_requests", "run_requests"]
