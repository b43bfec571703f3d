"""Frames into the worker's decode and apply path: structure-aware hostile frames, mutants of valid frames, and a
lane of valid frames checked against an independent model of docs/DESIGN.md §2 and §4. Shared by
``tests/unit/test_fuzz_decode.py`` (a bounded sample, seeded, plus a hypothesis test) and ``bench/fuzz.py`` (long
campaigns).

Inputs (each one stream entry, given to a :class:`PartitionProcessor` of partition 0 of 4 partitions):

- *hostile* frames generated from the structure of the wire format (:func:`hostile_frame`): every envelope field
  and every event field mostly valid but sometimes replaced by something hostile: deep nesting (containers and
  media ext types, up to 100,000 levels), NaN/±inf/-0.0/float32, ints up to uint64, lone surrogates and invalid
  UTF-8, NUL, wrong types, garbage ext types (numpy arrays with lying shapes and forbidden dtypes, media of unknown
  kinds, msgpack timestamps), array/str/bin headers that announce more than the input holds, truncated bytes,
  runs of other partitions, absurd sequence numbers and steps;
- *mutants* of valid frames (:func:`mutate`): bit flips, truncation, splices, a node replaced by a weird value;
- a *clean lane* (:class:`CleanLane`): valid frames with extreme values (NaN, ±inf, -0.0, int64 extremes, ints
  past int64, unicode and case-variant keys, arrays, column-wise blocks, duplicates resent, absurd ``seq`` frames),
  whose runs are checked row by row against :class:`support.history_oracle.Oracle` once they are committed.

The invariant, checked for every input (:func:`drive`):

- ``decode_frame`` returns or raises :class:`SchemaError`; nothing else. A frame that fails is dead-lettered once,
  with its error code as the reason and its bytes kept; a frame of another partition is dead-lettered
  ``wrong_partition``; no decoder or aligner crash (the worker logs those at ERROR and dead-letters
  ``decode_error``/``internal_error``: here each one counts as a crash).
- The producer's sequence numbers move exactly as docs/DESIGN.md §4 says (a shadow table here): a duplicate is
  skipped, a frame past the window is refused (``seq_out_of_window``) and changes nothing, and every bad event of an
  applied frame is rejected with its error code.
- Every commit goes through the real :meth:`PartitionProcessor.write` (Parquet segments, dead letters, one SQLite
  or PostgreSQL transaction); it never fails (one that does is retried entry by entry as a worker does, and an
  entry whose commit fails alone is counted as poison). Each segment it wrote holds exactly the rows the aligner emitted
  (every value, bit for bit: NaN payloads and the sign of zero; ints exact unless the column is float64), every
  value renders as strict JSON through :func:`history.formatting.plain`, the run's state survives
  ``dump``/``load``, and the dead letters it wrote (Redis is in memory here) are all there, each with a reason.
- Clean-lane runs hold exactly the oracle's rows, rejections and counts.

Anything else is a crash, reported with the seed, the input's index and its bytes (:class:`FuzzResult`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import struct
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np
import pyarrow.parquet as pq
from redis.exceptions import ResponseError

from history.formatting import plain
from history.stored import unpack_stored
from schemas import (
    DEFAULT_LIMITS,
    FRAME_FIELD,
    BadEvent,
    Config,
    DefineMetric,
    Finish,
    Histogram,
    Log,
    LogBlock,
    Media,
    Names,
    SchemaError,
    Start,
    Summary,
    capture,
    decode_frame,
    encode_event,
    encode_frame_raw,
    key_ident,
)
from schemas.frame import MAX_SEQ, MAX_STEP
from schemas.store import RUNTIME, STEP, TIMESTAMP
from schemas.values import NUMBER
from support.fuzz_report import Findings
from support.history_oracle import Oracle, exact_columns
from workers.align import Row, RowBatch, RunAligner, expand
from workers.metastore import MetaStore, sqlite_url
from workers.partition import SEQ_WINDOW, PartitionProcessor

PARTITIONS = 4
#: The processor under test owns partition 0 of ``PARTITIONS``.
NAMES = Names("fz", PARTITIONS)
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
CLEAN_PROJECT = "clean"


# --- a msgpack encoder that writes whatever it is told ----------------------------------------------------------


class Raw(bytes):
    """Bytes spliced into an encoding verbatim (deep nesting, lying headers, truncated items)."""


class F32(float):
    """A float written as msgpack float32."""


class Ext:
    """An ext type of any code (msgpack.ExtType refuses negative codes such as the timestamp, -1)."""

    __slots__ = ("code", "data")

    def __init__(self, code: int, data: bytes) -> None:
        self.code, self.data = code, data


def _head(out: bytearray, n: int, small: int | None, small_max: int, m8: int | None, m16: int, m32: int) -> None:
    if small is not None and n <= small_max:
        out.append(small | n)
    elif m8 is not None and n < 0x100:
        out += bytes((m8, n))
    elif n < 0x10000:
        out.append(m16)
        out += struct.pack(">H", n)
    else:
        out.append(m32)
        out += struct.pack(">I", n)


def enc(x: Any) -> bytes:
    """msgpack bytes of a tree of None/bool/int/float/:class:`F32`/str (lone surrogates written as the invalid UTF-8
    they make)/bytes/list/tuple/dict (any keys)/:class:`Ext`/``msgpack.ExtType``/numpy arrays/:class:`Raw`."""
    out = bytearray()
    _enc(x, out)
    return bytes(out)


def _enc(x: Any, out: bytearray) -> None:
    t = type(x)
    if x is None:
        out.append(0xC0)
    elif t is bool:
        out.append(0xC3 if x else 0xC2)
    elif t is Raw:
        out += x
    elif t is int:
        out += msgpack.packb(x)
    elif t is F32:
        out.append(0xCA)
        with np.errstate(over="ignore"):
            out += np.array([x], dtype=">f4").tobytes()  # rounds; past float32's range: inf
    elif t is float:
        out.append(0xCB)
        out += struct.pack(">d", x)
    elif t is str:
        b = x.encode("utf-8", "surrogatepass")
        _head(out, len(b), 0xA0, 31, 0xD9, 0xDA, 0xDB)
        out += b
    elif t is bytes or t is bytearray:
        _head(out, len(x), None, 0, 0xC4, 0xC5, 0xC6)
        out += x
    elif t is list or t is tuple:
        _head(out, len(x), 0x90, 15, None, 0xDC, 0xDD)
        for v in x:
            _enc(v, out)
    elif t is dict:
        _head(out, len(x), 0x80, 15, None, 0xDE, 0xDF)
        for k, v in x.items():
            _enc(k, out)
            _enc(v, out)
    elif t is Ext or t is msgpack.ExtType:
        code, data = x.code, x.data
        fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}.get(len(data))
        if fixed is not None:
            out.append(fixed)
        else:
            _head(out, len(data), None, 0, 0xC7, 0xC8, 0xC9)
        out += struct.pack(">b", code) if code < 0 else bytes((code,))
        out += data
    elif t is np.ndarray:
        _enc(Ext(1, msgpack.packb([x.dtype.str, list(x.shape), x.tobytes()])), out)
    elif t is Key:
        _enc(x.value, out)
    else:
        raise TypeError(f"enc: {t.__name__}")


class Key:
    """A map key that is not a str (int, None, float, bytes, bool): keeps dict keys unique in a generated tree."""

    __slots__ = ("n", "value")

    def __init__(self, value: Any, n: int) -> None:
        self.value, self.n = value, n

    def __hash__(self) -> int:
        return hash(("Key", self.n))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.n == self.n


# --- hostile values ---------------------------------------------------------------------------------------------


def _f64(bits: int) -> float:
    return cast("float", struct.unpack(">d", struct.pack(">Q", bits))[0])


FLOATS = [math.nan, _f64(0x7FF0000000000001), _f64(0xFFF8000000000000), _f64(0x7FF8DEADBEEF0001), math.inf,
          -math.inf, -0.0, 0.0, 5e-324, -5e-324, 1.7976931348623157e308, -1.7976931348623157e308,
          2.2250738585072014e-308, 0.1, -2.5, 1e-300, 9007199254740993.0]
INTS = [0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**32, 2**53, 2**53 + 1,
        -(2**53) - 1, INT64_MAX, INT64_MIN, INT64_MAX - 1, 2**63, 2**64 - 1]
STRINGS = ["", "a", "ünïcödé", "🎉", "κλειδί", "\x00", "a\x00b", "\ud800", "x\udfff", "\udc80abc", "\ufeff",
           "\u202eevil", " lead", "trail ", "\n\r\t", "a" * 300, "é" * 200, "a/b", "a.b", "_step", "_runtime",
           "/", ".", "..", "NaN", "null", "Infinity", "\x7f\x1b[31m", "日本語のテキスト"]
#: Byte strings written as msgpack str: not valid UTF-8 (overlong NUL, a lone surrogate, stray bytes, cut).
BAD_UTF8 = [b"\xc0\x80", b"\xed\xa0\x80", b"\xff\xfe", b"abc\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
KEYS = ["loss", "LOSS", "Loss", "acc", "val/acc", "VAL/acc", "a.b", "a", "b", "ünï/κλειδί 🎉", "epoch", "k0", "k1",
        "x" * 256, "train/loss", "lr", "ß", "SS", "İ", "i̇"]
BAD_KEYS: list[Any] = ["", "_step", "_timestamp", "_runtime", "a\x00b", "\ud800", "x" * 257, "k" * 5000,
                       Key(1, 1), Key(None, 2), Key(1.5, 3), Key(b"bin", 4), Key(True, 5), Key(-1, 6)]
DTYPES = ["<f8", ">f8", "<f4", "<f2", "<i8", ">i4", "<i2", "|i1", "|u1", "<u8", "|b1", "<c16", "|O", "<M8[s]",
          "<m8[s]", "|S3", "<U3", "|V8", "bogus", "", "<f16"]
MEDIA = ["histogram", "image", "table", "html", "plot", "nope", "", "Image"]


def _bad_str(rng: random.Random) -> Raw:
    b = rng.choice(BAD_UTF8)
    return Raw(bytes((0xA0 | len(b),)) + b)


def _deep(rng: random.Random) -> Raw:
    """A value nested d levels deep, as bytes (no Python recursion): lists, maps, or media ext chains."""
    d = rng.choice((31, 32, 33, 40, 200, 2000, 100_000))
    u = rng.randrange(4)
    if u == 0:
        return Raw(b"\x91" * d + b"\xcb" + struct.pack(">d", 1.0))
    if u == 1:
        return Raw(b"\x81\xa1d" * d + b"\xc0")
    if u == 2:
        return Raw((b"\x91\x81\xa1d") * (d // 2) + b"\x01")
    d = min(d, 2000)  # each media level is its own ext payload: the bytes grow with the square otherwise
    m = msgpack.packb(["image", {}])
    for _ in range(d):
        m = msgpack.packb(["table", {"m": msgpack.ExtType(2, m)}])
    return Raw(enc(Ext(2, m)))


def _lying(rng: random.Random) -> Raw:
    """A header that announces more than follows (or the reserved byte)."""
    return Raw(rng.choice((b"\xdd\xff\xff\xff\xff", b"\xdc\xff\xff\x01", b"\xdf\xff\xff\xff\xff",
                           b"\xdb\x7f\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xc9\x7f\xff\xff\xff\x01", b"\xc1",
                           b"\xd9\x05ab", b"\x93\x01\x02", b"\x82\xa1a\x01")))


def _ndarray_ext(rng: random.Random) -> Ext:
    dtype = rng.choice(DTYPES)
    n = rng.choice((0, 1, 3, 8, 33))
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        itemsize = 8
    u = rng.random()
    if u < 0.5:
        shape: Any = [n]
        data = rng.randbytes(n * itemsize)
    elif u < 0.6:
        shape, data = [n, 2], rng.randbytes(n * 2 * itemsize)
    elif u < 0.7:
        shape, data = [n], rng.randbytes(max(0, n * itemsize + rng.choice((-1, 1, 7))))
    elif u < 0.75:
        shape, data = [-1], b""
    elif u < 0.8:
        shape, data = [1 << 40], b"\x00" * 8
    elif u < 0.85:
        shape, data = [1] * 40, b"\x00" * itemsize
    elif u < 0.9:
        shape, data = [2**64 - 1, 0], b""
    elif u < 0.95:
        shape, data = "x", b""
    else:
        return Ext(1, enc([dtype, [n]]))
    return Ext(1, enc([dtype, shape, data]))


def _media_ext(rng: random.Random, depth: int) -> Ext:
    kind = rng.choice(MEDIA)
    u = rng.random()
    if u < 0.3:
        payload: Any = {"bins": [wire_value(rng, depth + 1) for _ in range(3)], "values": [1, 2]}
    elif u < 0.5:
        payload = {"sha256": rng.choice(("0" * 64, "zz", "../../etc/passwd", 5)),
                   "size": rng.choice((1, -1, 2**64 - 1)), "format": "png", "width": 1, "height": 1,
                   "caption": rng.choice(STRINGS)}
    elif u < 0.7:
        payload = {"columns": ["a", "b"], "data": [[wire_value(rng, depth + 2), wire_value(rng, depth + 2)]]}
    elif u < 0.8:
        payload = wire_value(rng, depth + 1)
    elif u < 0.9:
        return Ext(2, enc([kind]))
    else:
        return Ext(2, rng.randbytes(rng.randint(0, 12)))
    return Ext(2, enc([kind, payload]))


def wire_value(rng: random.Random, depth: int = 0) -> Any:
    """A hostile value (a tree for :func:`enc`): most of it is something a decoder must refuse or store exactly."""
    u = rng.random()
    if depth > 4:
        u = u * 0.45
    if u < 0.14:
        v = rng.choice(FLOATS)
        return F32(v) if rng.random() < 0.15 else v
    if u < 0.26:
        return rng.choice(INTS)
    if u < 0.36:
        return rng.choice(STRINGS) if rng.random() < 0.8 else _bad_str(rng)
    if u < 0.40:
        return rng.random() < 0.5
    if u < 0.43:
        return None
    if u < 0.45:
        return rng.randbytes(rng.randint(0, 10))
    if u < 0.58:
        return [wire_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if u < 0.66:
        out: dict[Any, Any] = {}
        for _ in range(rng.randint(0, 3)):
            k = rng.choice(KEYS) if rng.random() < 0.8 else rng.choice(BAD_KEYS)
            out[k] = wire_value(rng, depth + 1)
        return out
    if u < 0.74:
        return _ndarray_ext(rng)
    if u < 0.82:
        return _media_ext(rng, depth)
    if u < 0.86:
        return _deep(rng)
    if u < 0.89:
        return Ext(-1, rng.choice((b"\x00\x00\x00\x01", b"\x00" * 8, b"\x00" * 12, b"\x00" * 5)))  # msgpack timestamp
    if u < 0.92:
        return Ext(rng.choice((0, 3, 99, 127, -2, -128)), rng.randbytes(rng.randint(0, 9)))
    if u < 0.95:
        return _lying(rng)
    return capture(np.array([rng.choice(FLOATS) for _ in range(rng.randint(1, 5))]))


# --- hostile events and frames ----------------------------------------------------------------------------------


@dataclass
class GenContext:
    """What the generator knows of the runs it writes to, so that most frames are applied (not skipped as
    duplicates) and most steps are near the run's cursor."""

    home: list[tuple[str, str]]  # (project, run) of partition 0
    away: list[tuple[str, str]]  # of other partitions
    seqs: dict[tuple[str, str, str], int] = field(default_factory=dict)
    steps: dict[tuple[str, str], int] = field(default_factory=dict)
    ts: float = 1_700_000_000.0
    made: int = 0

    def retire(self, project: str, run: str) -> None:
        """Stop writing to a run (its entries were dead-lettered as poison): a fresh run takes its place, so one
        known failure does not make every later commit of the campaign fail too."""
        if (project, run) not in self.home:
            return
        while True:
            self.made += 1
            fresh = (project, f"{run[:100]}~{self.made}")
            if NAMES.partition(*fresh) == 0:
                break
        self.home[self.home.index((project, run))] = fresh


def names_in(partition: int, want: int, rng: random.Random, hostile: bool = False) -> list[tuple[str, str]]:
    """``want`` (project, run) pairs of ``partition``; with ``hostile``, names that are odd but valid."""
    odd = ["ünï", "a b", "\u202erun", "..", ".", "x" * 128, "NUL?", "🎉", "-", "run.1", "Run", "RUN", "%2F", "a\\b"]
    out: list[tuple[str, str]] = []
    i = 0
    while len(out) < want:
        project = rng.choice(("fuzz", "p", "ünï", "..")) if hostile else "fuzz"
        run = f"{rng.choice(odd)}{i}" if hostile else f"r{i}"
        if NAMES.partition(project, run) == partition:
            out.append((project, run))
        i += 1
    return out


def new_context(rng: random.Random) -> GenContext:
    home = names_in(0, 6, rng) + names_in(0, 6, rng, hostile=True)
    away = [pr for p in range(1, PARTITIONS) for pr in names_in(p, 2, rng)]
    return GenContext(home=home, away=away)


def _maybe(rng: random.Random, p: float, good: Any, depth: int = 0) -> Any:
    return wire_value(rng, depth) if rng.random() < p else good


def _step(rng: random.Random, cur: int) -> Any:
    u = rng.random()
    if u < 0.35:
        return None
    if u < 0.6:
        return min(cur + rng.choice((0, 1, 2, 10)), 2**64 - 1)
    if u < 0.7:
        return max(0, cur - rng.randint(1, 5))
    if u < 0.8:
        if rng.random() < 0.2:  # the last steps of int64 (rarely: a run's cursor stays up there for good)
            return rng.choice((MAX_STEP, MAX_STEP - 1, MAX_STEP - 2))
        return rng.choice((0, 2**62, 2**53 + 1, 2**31, 10**12))
    return rng.choice((-1, MAX_STEP + 1, 2**64 - 1, 1.5, math.nan, True, "3", [1]))


def _data(rng: random.Random, hostile: float) -> Any:
    if rng.random() < hostile * 0.1:
        return wire_value(rng)
    out: dict[Any, Any] = {}
    for _ in range(rng.choice((0, 1, 1, 2, 3, 5, 8))):
        k = rng.choice(KEYS) if rng.random() > hostile * 0.3 else rng.choice(BAD_KEYS)
        out[k] = wire_value(rng) if rng.random() < hostile else rng.choice((rng.random(), rng.randint(-5, 5), "s"))
    return out


def hostile_event(rng: random.Random, ctx: GenContext, key: tuple[str, str], hostile: float = 0.5) -> Any:
    """One event as a tree (see :func:`enc`): a kind, its fields mostly right, some replaced, removed or added."""
    ctx.ts += rng.random()
    cur = ctx.steps.get(key, 0)
    u = rng.random()
    ev: dict[Any, Any]
    if u < 0.4:
        step = _step(rng, cur)
        if type(step) is int and cur <= step <= MAX_STEP:
            ctx.steps[key] = step
        ev = {"k": "log", "ts": ctx.ts, "step": step, "commit": rng.choice((None, None, True, False)),
              "data": _data(rng, hostile)}
    elif u < 0.6:
        n = rng.choice((1, 2, 4, 5, 16))
        keys = rng.sample(KEYS, rng.randint(1, 3))
        if rng.random() < hostile * 0.2:
            keys.append(rng.choice((*BAD_KEYS, keys[0])))
        if rng.random() < 0.5:
            steps: list[Any] = [None] * n
        else:
            steps = [min(cur + i, 2**64 - 1) for i in range(n)]
            ctx.steps[key] = min(cur + n, MAX_STEP)
        cols: list[Any] = []
        for _ in keys:
            c = rng.random()
            if c < 0.35:
                cols.append(np.array([rng.choice(FLOATS) for _ in range(n)]))
            elif c < 0.55:
                cols.append(np.array([rng.choice(INTS[:-2]) for _ in range(n)], dtype=np.int64))
            elif c < 0.6:
                cols.append(np.array([rng.random() for _ in range(n)], dtype=rng.choice(("<f4", ">f8", "<f2", "<i2"))))
            elif c < 0.85:
                cols.append([_maybe(rng, hostile, rng.random()) for _ in range(n)])
            else:
                cols.append(_maybe(rng, 0.7, [1.0] * n))
        ts: Any = np.full(n, ctx.ts) if rng.random() < 0.6 else [ctx.ts] * n
        commits: list[Any] = [rng.choice((None, True)) for _ in range(n)]
        if rng.random() < hostile * 0.3:  # a block whose parts disagree
            rng.choice((steps, commits, cols)).append(None)
        if rng.random() < hostile * 0.2:
            steps[rng.randrange(n)] = _step(rng, cur)
        ev = {"k": "logs", "keys": keys, "ts": ts, "step": steps, "commit": commits, "cols": cols}
    elif u < 0.68:
        ev = {"k": "start", "ts": ctx.ts, "name": _maybe(rng, hostile * 0.3, "fuzz"),
              "resume": rng.choice((None, "allow")), "config": _data(rng, hostile)}
    elif u < 0.74:
        ev = {"k": "config", "data": _data(rng, hostile)}
    elif u < 0.8:
        d = _data(rng, hostile)
        if isinstance(d, dict) and d:
            d[next(iter(d))] = None
        ev = {"k": "summary", "data": d}
    elif u < 0.85:
        ev = {"k": "finish", "ts": ctx.ts, "exit_code": rng.choice((0, 0, 1, -1, 2**64 - 1, INT64_MIN, 1.0, None))}
    elif u < 0.91:
        ev = {"k": "define_metric", "name": rng.choice(("loss", "val/*", "*", "a*", "", "x" * 257, "\x00", "epoch")),
              "step_metric": rng.choice((None, "epoch", "loss", "_step", "", "\x00")),
              "summary": rng.choice((None, "min,max", "mean,last,first", "none", "bogus", ",", "")),
              "hidden": rng.choice((None, True, False, 1)), "goal": rng.choice((None, "minimize", "maximize", "up")),
              "step_sync": rng.choice((None, True, False, "no"))}
    elif u < 0.95:
        ev = {"k": "warning", "ts": ctx.ts, "message": rng.choice(("dropped 1 call", "x" * 1000, "x" * 1001, "\ud800"))}
    else:
        ev = {"k": rng.choice(("rm -rf", "", "LOG", 1, None, ["log"], b"log")), "data": {}}
    # Field-level hostility: replace, drop or add a field.
    if rng.random() < hostile * 0.4:
        f = rng.choice(list(ev))
        ev[f] = wire_value(rng)
    if rng.random() < hostile * 0.15:
        ev.pop(rng.choice(list(ev)), None)
    if rng.random() < hostile * 0.15:
        ev[rng.choice(("extra", "k", "ts", "data", Key(7, 7)))] = wire_value(rng)
    if rng.random() < hostile * 0.05:
        return rng.choice((wire_value(rng), [ev], "log"))
    return ev


def _seq(rng: random.Random, nxt: int) -> Any:
    u = rng.random()
    if u < 0.8:
        return nxt
    if u < 0.85:
        return max(0, nxt - rng.randint(1, 3))  # overlaps what was sent
    if u < 0.9:
        return nxt + rng.randint(1, 5)  # a gap
    return rng.choice((MAX_SEQ, MAX_SEQ + 1, nxt + SEQ_WINDOW, nxt + SEQ_WINDOW + 1, 2**63 - 1, 2**64 - 1, -1, 1.5,
                       None, "0", True))


def hostile_frame(rng: random.Random, ctx: GenContext, hostile: float = 0.5) -> bytes:
    """A frame built from the wire format's structure, with hostile parts (see the module docstring)."""
    u = rng.random()
    if u < 0.04:
        project, run = rng.choice(ctx.away)  # another partition's run
    elif u < 0.1:
        project, run = rng.choice(ctx.home)
        if rng.random() < 0.5:
            project = rng.choice(("", " p", "p ", "a/b", "p\x00", "\ud800", "x" * 129, 1, None))
        else:
            run = rng.choice(("", " r", "r ", "a/b", "r\x00", "\udfff", "y" * 129, 1.0, [b"r"]))
    else:
        project, run = rng.choice(ctx.home)
    producer: Any = rng.choice(("p0", "p1", "p2"))
    if rng.random() < hostile * 0.1:
        producer = rng.choice(("", "x" * 64, "x" * 65, 7, None, "\x00", "\ud800"))
    pk = (str(project), str(run), str(producer))
    key = (str(project), str(run))
    nxt = ctx.seqs.get(pk, 0)
    seq = _seq(rng, nxt)
    events: list[Any] = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 6))):
        ev = hostile_event(rng, ctx, key, hostile)
        raw = enc(ev)
        v = rng.random()
        if v < hostile * 0.06:
            raw = raw[: rng.randrange(len(raw) + 1)]
        elif v < hostile * 0.1:
            raw = raw + rng.choice((b"\x00", b"\xc1", raw))
        events.append(raw)
    if type(seq) is int:
        ctx.seqs[pk] = max(nxt, seq + len(events)) if seq <= nxt + 10 else nxt
    frame: dict[Any, Any] = {"v": 1, "project": project, "run": run, "producer": producer, "seq": seq,
                             "events": events}
    if rng.random() < hostile * 0.2:
        f = rng.choice(list(frame))
        frame[f] = wire_value(rng) if f != "events" else rng.choice((
            wire_value(rng), [wire_value(rng)], [*events, "not bytes"], events * 50))
    if rng.random() < hostile * 0.05:
        frame.pop(rng.choice(list(frame)))
    if rng.random() < hostile * 0.05:
        frame["extra"] = wire_value(rng)
    out = enc(frame) if rng.random() > hostile * 0.02 else enc(wire_value(rng))
    w = rng.random()
    if w < hostile * 0.05:
        out = out[: rng.randrange(len(out) + 1)]
    elif w < hostile * 0.07:
        out = out + rng.choice((b"\x00", b"\xc0", out))
    return out


# --- the corpus of valid frames and their mutants -----------------------------------------------------------------


def _value(rng: random.Random) -> Any:
    u = rng.random()
    if u < 0.45:
        return rng.random() * 10 - 5
    if u < 0.6:
        return rng.randint(-1000, 1000)
    if u < 0.68:
        return rng.choice(("train", "eval", "", "ünïcode"))
    if u < 0.74:
        return rng.random() < 0.5
    if u < 0.8:
        return [rng.random() for _ in range(rng.randint(0, 5))]
    if u < 0.85:
        return capture(np.arange(rng.randint(1, 20), dtype=np.float32), "arr")
    if u < 0.9:
        return capture(Histogram([rng.random() for _ in range(50)], num_bins=8), "h")
    if u < 0.95:
        return float("nan")
    return None


def _event(rng: random.Random, i: int, ts: float) -> Any:
    keys = [f"k{j}" for j in range(rng.randint(1, 4))] + rng.sample(["a/b", "A/B", "x.y", "epoch"], 1)
    u = rng.random()
    if u < 0.45:
        step = rng.choice((None, None, i, i + 1, max(0, i - 3)))
        return Log(ts=ts, data={k: _value(rng) for k in keys}, step=step, commit=rng.choice((None, True, False)))
    if u < 0.7:
        n = rng.randint(1, 12)
        steps: list[int | None] = [None] * n if rng.random() < 0.5 else [i + j for j in range(n)]
        cols: list[Any] = []
        for _ in keys:
            c = rng.random()
            if c < 0.5:
                cols.append(np.array([rng.random() for _ in range(n)], dtype=np.float64))
            elif c < 0.7:
                cols.append(np.arange(n, dtype=np.int64))
            else:
                cols.append([_value(rng) for _ in range(n)])
        return LogBlock(keys=keys, ts=np.full(n, ts), step=steps, commit=[rng.choice((None, True)) for _ in range(n)],
                        cols=cols)
    if u < 0.78:
        return DefineMetric(name=rng.choice(("k0", "val/*", "epoch")), step_metric=rng.choice((None, "epoch")),
                            summary=rng.choice((None, "min,max", "mean,last", "none")))
    if u < 0.84:
        return Config(data={"lr": rng.random(), "nested": {"a": 1}})
    if u < 0.9:
        return Summary(data={"best": rng.random(), "k0": None})
    if u < 0.95:
        return Start(ts=ts, name="fuzz", config={"seed": i})
    return Finish(ts=ts, exit_code=rng.choice((0, 1)))


def corpus(rng: random.Random, n: int = 64, tag: str = "") -> list[bytes]:
    """``n`` valid frames of a few runs (of partition 0) and producers."""
    runs = [(p, f"{r}{tag}") for p, r in names_in(0, 4, random.Random(tag))]
    runs = [pr for pr in runs if NAMES.partition(*pr) == 0] or names_in(0, 1, random.Random(0))
    out: list[bytes] = []
    seqs: dict[tuple[str, str], int] = {}
    for i in range(n):
        project, run = rng.choice(runs)
        producer = f"c{rng.randint(0, 1)}"
        seq = seqs.get((run, producer), 0)
        events = [encode_event(_event(rng, i * 10 + j, 1_700_000_000.0 + i)) for j in range(rng.randint(1, 6))]
        seqs[(run, producer)] = seq + len(events)
        out.append(encode_frame_raw(project, run, producer, seq, events))
    return out


def _raw_tree(data: bytes) -> Any:
    """msgpack bytes as a plain tree (ext types kept opaque), or None when they do not decode."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None


def _weird(rng: random.Random) -> Any:
    """A value of a random, often wrong, shape (msgpack-packable)."""
    u = rng.randrange(16)
    if u == 0:
        return None
    if u == 1:
        return rng.choice((-1, 0, 1, 2**63 - 1, -(2**63), 2**64 - 1))
    if u == 2:
        return rng.choice((float("inf"), float("-inf"), float("nan"), -0.0, 1e308))
    if u == 3:
        return "x" * rng.choice((0, 1, 257, 70_000))
    if u == 4:
        return bytes(rng.randbytes(rng.randint(0, 40)))
    if u == 5:
        return [_weird(rng) for _ in range(rng.randint(0, 3))] if rng.random() < 0.7 else []
    if u == 6:
        return {str(rng.randint(0, 9)): 1, "k": [1, {"z": None}]}
    if u == 7:
        deep: Any = 1.0
        for _ in range(rng.choice((10, 40, 200))):
            deep = [deep] if rng.random() < 0.5 else {"d": deep}
        return deep
    if u == 8:
        return {"x" * rng.choice((255, 256, 257, 5000)): 1.0}
    if u == 9:
        return msgpack.ExtType(rng.choice((1, 2, 3, 99)), bytes(rng.randbytes(rng.randint(0, 30))))
    if u == 10:
        return msgpack.ExtType(1, msgpack.packb([rng.choice(("<f8", "<i4", "|O", "<c16", "bogus")),
                                                 [rng.randint(-1, 5)], bytes(rng.randbytes(8))]))
    if u == 11:
        return msgpack.ExtType(2, msgpack.packb([rng.choice(("histogram", "image", "nope")),
                                                 {"bins": [1, 2], "values": "x"}]))
    if u == 12:
        return True
    if u == 13:
        return {1: 2} if rng.random() < 0.5 else {None: 1}
    if u == 14:
        return "y" * (1 << 20) + "z" if rng.random() < 0.05 else "y"
    return rng.random()


def _nodes(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if len(path) >= 8:
        return out
    if isinstance(tree, dict):
        for k, v in list(tree.items())[:20]:
            out.extend(_nodes(v, (*path, k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree[:20]):
            out.extend(_nodes(v, (*path, i)))
    return out


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return tree


def _mutate_tree(rng: random.Random, tree: Any) -> Any:
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_nodes(tree))
        u = rng.random()
        if u < 0.6:
            tree = _set(tree, path, _weird(rng))
        elif u < 0.8 and path:
            parent = tree
            for p in path[:-1]:
                parent = parent[p]
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, list) and parent:
                parent.pop(path[-1] if path[-1] < len(parent) else -1)
        elif isinstance(tree, dict):
            tree[rng.choice(("v", "seq", "events", "extra", "k", "step", "data", "cols", "keys"))] = _weird(rng)
    return tree


def _pack(tree: Any) -> bytes | None:
    try:
        return cast("bytes", msgpack.packb(tree, use_bin_type=True))
    except Exception:  # deep nesting beyond msgpack's packer, or unpackable keys
        return None


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One mutant of a random seed frame."""
    data = rng.choice(seeds)
    u = rng.random()
    if u < 0.3:  # byte level
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(5)
            if not b:
                break
            i = rng.randrange(len(b))
            if op == 0:
                b[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                b[i] = rng.randrange(256)
            elif op == 2:
                del b[i:i + rng.randint(1, 16)]
            elif op == 3:
                b[i:i] = rng.randbytes(rng.randint(1, 16))
            else:
                b[i:i] = bytes([rng.choice((0xC1, 0xDC, 0xDD, 0xDE, 0xDF, 0xC7, 0xD4, 0x90, 0x80))])
        return bytes(b)
    if u < 0.4:  # truncated
        return data[: rng.randrange(len(data))]
    if u < 0.45:  # spliced
        other = rng.choice(seeds)
        return data[: rng.randrange(len(data))] + other[rng.randrange(len(other)):]
    if u < 0.5:  # random bytes
        return rng.randbytes(rng.randint(0, 200))
    tree = _raw_tree(data)
    if not isinstance(tree, dict):
        return data
    if u < 0.75 and isinstance(tree.get("events"), list) and tree["events"]:  # inside one event
        j = rng.randrange(len(tree["events"]))
        ev = _raw_tree(tree["events"][j])
        if ev is not None:
            packed = _pack(_mutate_tree(rng, ev))
            if packed is not None:
                tree["events"][j] = packed
        elif rng.random() < 0.5 and isinstance(tree["events"][j], bytes):
            tree["events"][j] = tree["events"][j][: rng.randrange(len(tree["events"][j]) + 1)]
    else:  # the frame map itself
        tree = _mutate_tree(rng, tree)
    packed = _pack(tree)
    return packed if packed is not None else data


# --- the clean lane: valid frames with an oracle ------------------------------------------------------------------


class LaneOracle(Oracle):
    """:class:`Oracle` plus the worker's refusals of valid frames: a call holding an int outside int64
    (``int_range``) and a frame past the producer's window (``seq_out_of_window``)."""

    def log(self, ts: float, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        if any(type(v) is int and not INT64_MIN <= v <= INT64_MAX for v in data.values()):
            self.rejections.append(("int_range", cast("int", step), self.cursor))
            return
        super().log(ts, data, step, commit)


@dataclass
class LaneRun:
    project: str
    run: str
    oracle: LaneOracle = field(default_factory=LaneOracle)
    seqs: dict[str, int] = field(default_factory=dict)
    sent: list[tuple[str, int, bytes]] = field(default_factory=list)  # (producer, seq, frame) for resends
    frames: int = 0
    finished_at: int | None = None  # the input index of its finish frame
    got: list[tuple[str, Any, Any]] = field(default_factory=list)  # the worker's rejections: (reason, step, cursor)


CLEAN_KEYS = ["loss", "Loss", "LOSS", "acc", "val/acc", "ünï/κλειδί 🎉", "x" * 256, "a.b", "ß", "epoch", "n"]


def clean_value(rng: random.Random) -> Any:
    """A valid wire value the pipeline must store exactly (None logs nothing)."""
    u = rng.random()
    if u < 0.3:
        return rng.choice(FLOATS)
    if u < 0.45:
        return rng.choice(INTS[:-2]) if rng.random() < 0.97 else rng.choice((2**63, 2**64 - 1))
    if u < 0.55:
        return rng.choice([*STRINGS[:7], "", "a\x00b", "🎉" * 100])
    if u < 0.62:
        return rng.random() < 0.5
    if u < 0.66:
        return None
    if u < 0.76:
        return [rng.choice((*FLOATS, *INTS, "s", True, None)) for _ in range(rng.randint(0, 4))]
    if u < 0.8:
        return {"a": [1, {"b": rng.choice(FLOATS)}], "ü": rng.choice(INTS)}
    if u < 0.9:
        dt = rng.choice(("<f8", ">f8", "<f4", "<i8", "|u1", "|b1", "<u8", "<i2"))
        return np.frombuffer(rng.randbytes(np.dtype(dt).itemsize * rng.randint(0, 6)), dtype=dt)
    return capture(Histogram([rng.random() for _ in range(20)], num_bins=rng.randint(1, 8)), "h")


class CleanLane:
    """Valid frames of a few runs at a time, each run modelled by a :class:`LaneOracle`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.runs: dict[tuple[str, str], LaneRun] = {}
        self.n = 0
        self.ts = 1_700_000_000.0
        self._tag = f"{rng.getrandbits(32):08x}"
        self._made = 0

    def _new_run(self) -> LaneRun:
        while True:
            self._made += 1
            run = f"c{self._tag}-{self._made}"
            if NAMES.partition(CLEAN_PROJECT, run) == 0:
                break
        r = LaneRun(CLEAN_PROJECT, run)
        self.runs[(r.project, r.run)] = r
        return r

    def frame(self, index: int) -> bytes:
        """The next clean frame (input ``index``)."""
        rng = self.rng
        live = [r for r in self.runs.values() if r.finished_at is None]
        r = rng.choice(live) if live and (len(live) >= 4 or rng.random() < 0.9) else self._new_run()
        r.frames += 1
        u = rng.random()
        if u < 0.05 and r.sent:  # a resend: all of it already applied, a duplicate
            return rng.choice(r.sent)[2]
        producer = rng.choice(("a", "b")) if rng.random() < 0.95 else f"n{self.n}"
        self.n += 1
        nxt = r.seqs.get(producer, 0)
        if u < 0.08:  # a frame far past the producer's window: refused whole, changes nothing
            seq = rng.choice((nxt + SEQ_WINDOW + 1, MAX_SEQ))
            raw = encode_frame_raw(r.project, r.run, producer, seq, [encode_event(Log(ts=self.ts, data={"z": 1.0}))])
            r.oracle.rejections.append(("seq_out_of_window", cast("int", None), r.oracle.cursor))
            return raw
        finish = r.frames > rng.randint(20, 60)
        events: list[Any] = []
        for _ in range(rng.randint(1, 4)):
            self.ts += rng.random()
            v = rng.random()
            if v < 0.55:
                step = rng.choice((None, None, None, r.oracle.cursor, r.oracle.cursor + rng.randint(1, 3),
                                   max(0, r.oracle.cursor - 1)))
                data = {k: clean_value(rng) for k in rng.sample(CLEAN_KEYS, rng.randint(0, 4))}
                events.append(Log(ts=self.ts, data=data, step=step, commit=rng.choice((None, None, True, False))))
            elif v < 0.8:
                events.append(self._block(r))
            elif v < 0.87:
                events.append(Start(ts=self.ts, name=r.run, config={"lr": rng.choice(FLOATS)}))
            elif v < 0.93:
                events.append(Config(data={"k": clean_value(rng)}))
            else:
                events.append(Summary(data={"loss": clean_value(rng)}))
        if finish:
            events.append(Finish(ts=self.ts, exit_code=rng.choice((0, 1))))
            r.finished_at = index
        for ev in events:
            self._model(r, ev)
        raw = encode_frame_raw(r.project, r.run, producer, nxt, [encode_event(e) for e in events])
        r.seqs[producer] = nxt + len(events)
        r.sent.append((producer, nxt, raw))
        return raw

    def _block(self, r: LaneRun) -> LogBlock:
        rng = self.rng
        n = rng.choice((1, 3, 4, 8, 20))
        keys = rng.sample(CLEAN_KEYS, rng.randint(1, 3))
        keys = [k for i, k in enumerate(keys) if key_ident(k) not in {key_ident(x) for x in keys[:i]}]
        cols: list[Any] = []
        for _ in keys:
            c = rng.random()
            if c < 0.45:
                cols.append(np.array([rng.choice(FLOATS) for _ in range(n)]))
            elif c < 0.7:
                cols.append(np.array([rng.choice(INTS[:-2]) for _ in range(n)], dtype=np.int64))
            else:
                cols.append([clean_value(rng) for _ in range(n)])
        if rng.random() < 0.5:
            steps: list[int | None] = [None] * n
        else:
            base = r.oracle.cursor + rng.choice((0, 0, 1, -1))
            steps = [max(0, base) + i * rng.choice((1, 1, 2)) for i in range(n)]
        commits: list[bool | None] = [None] * n if rng.random() < 0.6 else [rng.choice((None, True)) for _ in range(n)]
        return LogBlock(keys=keys, ts=np.array([self.ts + i for i in range(n)]), step=steps, commit=commits, cols=cols)

    @staticmethod
    def _model(r: LaneRun, ev: Any) -> None:
        o = r.oracle
        if isinstance(ev, Log):
            o.log(ev.ts, ev.data, ev.step, ev.commit)
        elif isinstance(ev, LogBlock):
            for call in ev.calls():
                o.log(call.ts, call.data, call.step, call.commit)
        elif isinstance(ev, Start):
            o.start(ev.ts)
        elif isinstance(ev, Finish):
            o.finish(ev.ts)


# --- exact comparison of stored values ---------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal as stored values: same types, floats bit for bit (NaN payloads, the sign of zero), arrays by dtype,
    shape and bytes, media by kind and payload."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and a.tobytes() == b.tobytes())
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is Media:
        return a.kind == b.kind and same(a.payload, b.payload)
    return bool(a == b)


def same_number(want: Any, got: Any) -> bool:
    """A number as a segment holds it: an int stays an int, exactly (an int64 column, or a float64 column's int
    companion: :func:`support.history_oracle.exact_columns`), and a float is a float, bit for bit."""
    if type(want) is int:
        return type(got) is int and want == got
    return type(got) is float and same(want, got)


def check_segment(table: Any, rows: list[Row | RowBatch], where: str) -> int:
    """Raise AssertionError unless ``table`` (a segment as read back) holds exactly ``rows``; returns the values
    checked. Every value must also render as strict JSON (what every read route relies on)."""
    want = expand(rows)
    assert table.num_rows == len(want), f"[segment_rows] {where}: {table.num_rows} rows stored, {len(want)} emitted"
    cols = exact_columns(table)  # a float64 column's logged ints from its int companion
    assert cols[STEP] == [r.step for r in want], f"[segment_steps] {where}: steps differ"
    assert same(cols[TIMESTAMP], [float(r.ts) for r in want]), f"[segment_ts] {where}: timestamps differ"
    assert same(cols[RUNTIME], [float(r.runtime) for r in want]), f"[segment_runtime] {where}: runtimes differ"
    by_col: dict[tuple[str, str], tuple[str, bool]] = {}
    for f in table.schema:
        if f.name in (STEP, TIMESTAMP, RUNTIME) or f.name not in cols:  # not an int companion
            continue
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        by_col[(key_ident(meta["key"]), meta["kind"])] = (f.name, str(f.type) == "double")
    checked = 0
    for i, row in enumerate(want):
        stored = sum(1 for name, _ in by_col.values() if cols[name][i] is not None)
        assert stored == len(row.values), (
            f"[segment_values] {where}: row {i} has {len(row.values)} values, {stored} stored")
        for col, v in row.values.items():
            assert col in by_col, f"[segment_columns] {where}: no column for {col}"
            name, _ = by_col[col]
            got = cols[name][i]
            if col[1] == NUMBER:
                ok = same_number(v.item() if isinstance(v, np.generic) else v, got)
            elif col[1] in ("string", "bool"):
                ok = type(got) is type(v) and got == v
            else:
                decoded = unpack_stored(got)
                ok = same(_py(v), decoded)
                servable(decoded, f"{where}: row {i} column {name!r}")
            assert ok, (f"[segment_value:{col[1]}] {where}: row {i} column {name!r}: emitted {v!r:.200}, "
                        f"stored {got!r:.200}")
            checked += 1
    return checked


def servable(v: Any, where: str) -> None:
    """A stored value must render as strict JSON (every read route's JSON format relies on it)."""
    try:
        json.dumps(plain(v), allow_nan=False)
    except Exception as e:
        raise AssertionError(f"[not_json:{json_culprit(v)}] {where}: a stored value does not render as JSON "
                             f"({type(e).__name__}: {str(e)[:100]}): {v!r:.300}") from None


def json_culprit(v: Any) -> str:
    """What in a value does not render as JSON: a leaf's type (an array's dtype) or a map key's type."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            bad = [k for k in x if not isinstance(k, str)]
            if bad:
                return f"a map key of type {type(bad[0]).__name__}"
            stack.extend(x.values())
        elif isinstance(x, list | tuple):
            stack.extend(x)
        elif isinstance(x, Media):
            stack.append(x.payload)
        else:
            try:
                json.dumps(plain(x), allow_nan=False)
            except Exception:
                return f"array of {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
    return "?"


def _py(v: Any) -> Any:
    """A value as msgpack gives it back: tuples as lists."""
    if type(v) is tuple or type(v) is list:
        return [_py(x) for x in v]
    if type(v) is dict:
        return {k: _py(x) for k, x in v.items()}
    return v


# --- the driver ---------------------------------------------------------------------------------------------------


@dataclass
class FuzzResult:
    seed: int = 0
    frames: int = 0
    decoded: int = 0
    dead_lettered: int = 0  # entries dead-lettered whole (undecodable, wrong partition)
    dead_letters: int = 0
    commits: int = 0
    segments_checked: int = 0
    values_checked: int = 0
    clean_frames: int = 0
    clean_runs_checked: int = 0
    clean_rows_checked: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    entry_reasons: Counter[str] = field(default_factory=Counter)  # why whole entries were dead-lettered
    rejections: Counter[str] = field(default_factory=Counter)  # rejected events and calls, by reason
    #: Failures of the invariant (crashes, wrong results), by signature with examples.
    crashes: Findings = field(default_factory=Findings)
    #: Commits that failed (a worker retries them), and entries whose commit failed alone (dead-lettered as
    #: ``poison`` by a worker), by exception. A value the wire accepts should never do either.
    commit_failures: Findings = field(default_factory=Findings)
    poisoned: Findings = field(default_factory=Findings)
    wall_s: float = 0.0

    def line(self) -> str:
        return (f"frames={self.frames}, decoded={self.decoded}, frames_dead_lettered={self.dead_lettered}, "
                f"dead_letters={self.dead_letters}, commits={self.commits}, segments={self.segments_checked}, "
                f"clean_runs={self.clean_runs_checked}, crashes={len(self.crashes)}")

    def merge(self, other: FuzzResult) -> None:
        for name in ("frames", "decoded", "dead_lettered", "dead_letters", "commits", "segments_checked",
                     "values_checked", "clean_frames", "clean_runs_checked", "clean_rows_checked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.by_source.update(other.by_source)
        self.entry_reasons.update(other.entry_reasons)
        self.rejections.update(other.rejections)
        self.crashes.merge(other.crashes)
        self.commit_failures.merge(other.commit_failures)
        self.poisoned.merge(other.poisoned)
        self.wall_s += other.wall_s


class _Errors(logging.Handler):
    """The worker turns a decoder or aligner crash into an ERROR log and a dead letter: each is a crash here."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record) + (f"\n{record.exc_text}" if record.exc_text else ""))


class MemoryRedis:
    """What :meth:`PartitionProcessor.write` asks of Redis, in memory: blobs (none stored here) and dead-letter
    streams with Redis's rule for explicit ids (an id not above the stream's top is refused)."""

    def __init__(self) -> None:
        self.streams: dict[str, list[tuple[tuple[int, int], dict[bytes, bytes]]]] = {}

    async def get(self, key: str) -> bytes | None:
        return None

    def pipeline(self, transaction: bool = True) -> MemoryRedis._Pipe:
        return MemoryRedis._Pipe(self)

    def xadd(self, stream: str, fields: dict[bytes, bytes], id: str) -> Any:
        ms, _, seq = id.partition("-")
        sid = (int(ms), int(seq))
        entries = self.streams.setdefault(stream, [])
        if entries and sid <= entries[-1][0]:
            return ResponseError("The ID specified in XADD is equal or smaller than the target stream top item")
        entries.append((sid, dict(fields)))
        return id.encode()

    async def xlen(self, stream: str) -> int:
        return len(self.streams.get(stream, []))

    async def delete(self, stream: str) -> None:
        self.streams.pop(stream, None)

    class _Pipe:
        def __init__(self, r: MemoryRedis) -> None:
            self.r, self.ops = r, []

        def xadd(self, stream: str, fields: dict[bytes, bytes], id: str) -> None:
            self.ops.append((stream, fields, id))

        async def execute(self, raise_on_error: bool = True) -> list[Any]:
            return [self.r.xadd(*op) for op in self.ops]


class _Harness:
    """A partition processor with a real metadata store (SQLite in ``tmp``, or ``db_url``: PostgreSQL) and data
    directory, and Redis in memory."""

    def __init__(self, tmp: Path, db_url: str | None = None) -> None:
        self.tmp = tmp
        self.store = MetaStore(db_url or sqlite_url(tmp))
        self.redis = MemoryRedis()
        self.proc = self._new()
        self.seen_files: set[str] = set()

    def _new(self) -> PartitionProcessor:
        epoch, offset = self.store.take_partition(0, "fuzz")
        return PartitionProcessor(p=0, epoch=epoch, offset=offset, names=NAMES, store=self.store, data_dir=self.tmp,
                                  redis=cast("Any", self.redis), limits=DEFAULT_LIMITS)

    def renew(self) -> None:
        """A new owner of the partition (state reloaded from the store), as after a hand-over."""
        self.proc = self._new()

    async def commit(self, res: FuzzResult, where: str) -> list[Any]:
        """Prepare and write a commit for real, then check what it wrote (a failed check is a crash in ``res``);
        returns the clean lane's rejections. Raises :class:`CommitFailed` when the write fails."""
        prep = self.proc.prepare()
        if prep is None:
            return []
        dlq_n = len({i for i, _ in prep.dlq})
        try:
            await self.proc.write(prep)
        except Exception as e:
            await self.redis.delete(NAMES.dlq(0))  # dead letters go first; the retry writes them again
            raise CommitFailed(str(e)) from e
        res.commits += 1
        stream = NAMES.dlq(0)
        got_dlq = await self.redis.xlen(stream)
        await self.redis.delete(stream)
        checks: list[tuple[str, Any]] = [("", lambda: self._check_dlq(prep.dlq, dlq_n, got_dlq, where))]
        for (project, run), r, rows in prep.work:
            checks.append((f"{project}/{run}", lambda p=project, n=run, r=r, rows=rows: self._check_run(
                res, p, n, r, rows, f"{where} {p}/{n}")))
        for u in prep.updates:  # what readers get of the run: info must render as strict JSON
            checks.append((f"{u.project}/{u.run}", lambda u=u: servable(u.info, f"{where}: run info of "
                                                                           f"{u.project}/{u.run}")))
        for what, check in checks:
            try:
                check()
            except AssertionError:
                res.crashes.add(f"{where}: a check of the commit failed ({what})\n{traceback.format_exc()}")
        return [rej for rej in prep.rejections if rej.project == CLEAN_PROJECT]

    @staticmethod
    def _check_dlq(dlq: list[tuple[str, dict[bytes, bytes]]], want: int, got: int, where: str) -> None:
        assert got == want, f"[dlq_count] {where}: {want} dead letters to write, {got} in the stream"
        for _, f in dlq:
            assert f[b"reason"] and f[b"message"], f"[dead_letter] {where}: without a reason: {f!r:.300}"

    def _check_run(self, res: FuzzResult, project: str, run: str, r: RunAligner, rows: list[Row | RowBatch],
                   where: str) -> None:
        again = RunAligner.load(r.dump())
        assert again.dump() == r.dump(), f"[state_dump] {where}: state changed by dump/load"
        if not rows:
            return
        files = [s["file"] for s in self.store.segments_of(project, run) if s["file"] not in self.seen_files]
        assert len(files) == 1, f"[segment_files] {where}: {len(files)} new segments for one commit"
        self.seen_files.update(files)
        res.values_checked += check_segment(pq.read_table(self.tmp / files[0]), rows, where)
        res.segments_checked += 1

    def verify_clean(self, lane: CleanLane, rejected: list[Any], res: FuzzResult, where: str, final: bool) -> None:
        """Check every finished clean run (all of them when ``final``) against its oracle, then forget it."""
        for rej in rejected:
            r = lane.runs.get((rej.project, rej.run))
            assert r is not None, f"[clean_rejection] {where}: a rejection of a run not live: {rej!r:.200}"
            r.got.append((rej.reason, rej.step, rej.cursor))
        for key, r in list(lane.runs.items()):
            if r.finished_at is None and not final:
                continue
            got = segment_values(self.tmp, self.store, r.project, r.run)
            want = r.oracle.rows
            assert [g[0] for g in got] == [w[0] for w in want], (
                f"[clean_steps] {where}: clean run {r.run}: steps {[g[0] for g in got][:20]} != oracle "
                f"{[w[0] for w in want][:20]}")
            for g, w in zip(got, want, strict=True):
                assert same(g[1], w[1]), f"[clean_ts] {where}: clean run {r.run} step {g[0]}: ts {g[1]!r} != {w[1]!r}"
                assert g[3].keys() == w[3].keys(), (
                    f"[clean_keys] {where}: clean run {r.run} step {g[0]}: {g[3]} != {w[3]}")
                for k, v in w[3].items():
                    gv = g[3][k]
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        ok = same_number(v, gv)
                    else:
                        ok = same(_py(v), gv)
                    assert ok, (f"[clean_value] {where}: clean run {r.run} step {g[0]} {k!r}: stored {gv!r:.200}, "
                                f"want {v!r:.200}")
            got_rej, want_rej = Counter(map(repr, r.got)), Counter(map(repr, r.oracle.rejections))
            assert got_rej == want_rej, (f"[clean_rejections] {where}: clean run {r.run}: the worker's rejections "
                                         f"less the oracle's {dict(got_rej - want_rej)}, the oracle's less the "
                                         f"worker's {dict(want_rej - got_rej)}")
            res.clean_runs_checked += 1
            res.clean_rows_checked += len(want)
            del lane.runs[key]


def segment_values(data_dir: Path, store: MetaStore, project: str,
                  run: str) -> list[tuple[int, float, float, dict[str, Any]]]:
    """Rows of a run as committed, values decoded (packed columns through the reader's decoder)."""
    out = []
    for seg in store.segments_of(project, run):
        table = pq.read_table(data_dir / seg["file"])
        kinds = {f.name: (f.metadata or {}).get(b"kind", b"").decode() for f in table.schema}
        cols = exact_columns(table)
        for i in range(table.num_rows):
            values = {}
            for name, col in cols.items():
                v = col[i]
                if name in (STEP, TIMESTAMP, RUNTIME) or v is None:
                    continue
                values[name] = unpack_stored(v) if kinds[name] not in (NUMBER, "string", "bool") else v
            out.append((cols[STEP][i], cols[TIMESTAMP][i], cols[RUNTIME][i], values))
    return out


def _shadow_seq(table: dict[tuple[str, str, str], int], key: tuple[str, str, str], seq: int, n: int) -> str:
    """docs/DESIGN.md §4's table, independently: ``"window"`` (refused), ``"dup"`` or ``"apply:<skip>"``."""
    nxt = table.get(key)
    if seq > (nxt or 0) + SEQ_WINDOW:
        return "window"
    if nxt is None:
        table[key] = seq + n
        return "apply:0"
    if seq + n <= nxt:
        return "dup" if n else "apply:0"
    if seq < nxt:
        table[key] = seq + n
        return f"apply:{nxt - seq}"
    table[key] = seq + n
    return "apply:0"


class CommitFailed(Exception):
    """``PartitionProcessor.write`` raised: a live worker drops its work and retries (:mod:`workers.attempts`)."""


def _signature(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


class FramePipe:
    """The worker's path for a sequence of entries: process each (:func:`_check_one`), commit when told, and after a
    failure go back to the committed state as a worker does. Shared by :func:`drive` and the hypothesis test."""

    def __init__(self, tmp: Path, db_url: str | None = None) -> None:
        self.h = _Harness(tmp, db_url)
        self.shadow: dict[tuple[str, str, str], int] = {}
        self.committed_shadow: dict[tuple[str, str, str], int] = {}
        self.window: list[tuple[str, bytes, str]] = []  # (entry id, frame, where) since the last commit
        self.n = 0

    def close(self) -> None:
        self.h.store.close()

    async def feed(self, raw: bytes, where: str, res: FuzzResult) -> None:
        self.n += 1
        entry_id = f"{self.n}-0"
        self.window.append((entry_id, raw, where))
        try:
            await _check_one(self.h.proc, self.shadow, raw, entry_id, res, where)
        except Exception:
            res.crashes.add(f"{where}: {raw[:300]!r}\n{traceback.format_exc()}")
            # Nothing in memory is trusted after a failure: back to the committed state, the entry skipped.
            self.window.pop()
            self.h.renew()
            self.shadow = dict(self.committed_shadow)
            for eid, w_raw, w_where in self.window:
                await _check_one(self.h.proc, self.shadow, w_raw, eid, FuzzResult(), w_where)

    async def commit(self, res: FuzzResult, where: str) -> tuple[list[Any], list[bytes]]:
        """Commit what was fed since the last commit; returns the clean lane's rejections and the frames found to
        be poison (their commit failed alone)."""
        try:
            rejected, poisoned = await self.h.commit(res, where), []
        except CommitFailed as e:
            # As a worker does (workers.attempts): retry from the committed state until the entries whose commit
            # fails alone are found (here by halving the window); each is dead-lettered as poison and the
            # partition moves on.
            res.commit_failures.add(f"{where}\n{_signature(e.__cause__ or e)}")
            self.shadow = dict(self.committed_shadow)
            rejected, poisoned = await _settle(self.h, res, self.window, self.shadow)
        self.committed_shadow = dict(self.shadow)
        self.window = []
        return rejected, poisoned


async def _drive(seed: int, n: int, tmp: Path, commit_every: int, clean_share: float, hostile_share: float,
                 db_url: str | None) -> FuzzResult:
    rng = random.Random(seed)
    seeds = corpus(rng)
    ctx = new_context(rng)
    lane = CleanLane(random.Random(rng.random()))
    res = FuzzResult(seed=seed)
    pipe = FramePipe(tmp, db_url)
    t0 = time.monotonic()
    try:
        for i in range(n):
            u = rng.random()
            try:
                if u < clean_share:
                    source, raw = "clean", lane.frame(i)
                    res.clean_frames += 1
                elif u < clean_share + hostile_share:
                    source, raw = "hostile", hostile_frame(rng, ctx, hostile=rng.choice((0.1, 0.3, 0.6, 1.0)))
                elif u < 0.95:
                    source, raw = "mutant", mutate(rng, seeds)
                else:
                    source, raw = "corpus", rng.choice(seeds)
            except Exception as e:  # a bug of the generator: reported, and the campaign goes on
                res.crashes.add(f"[fuzzer_error:{type(e).__name__}] seed={seed} frame {i}\n{traceback.format_exc()}")
                continue
            res.frames += 1
            res.by_source[source] += 1
            await pipe.feed(raw, f"seed={seed} frame {i} ({source})", res)
            if (i + 1) % commit_every and i != n - 1:
                continue
            where = f"seed={seed} commit after frame {i}"
            rejected, poisoned = await pipe.commit(res, where)
            for w_raw in poisoned:
                with contextlib.suppress(SchemaError):
                    f = decode_frame(w_raw)
                    ctx.retire(f.project, f.run)
                    if any(decode_frame(x).run == f.run for x in seeds[:8]):
                        seeds = corpus(rng, tag=f"~{i}")
            try:
                pipe.h.verify_clean(lane, rejected, res, where, final=i == n - 1)
            except Exception:
                res.crashes.add(f"{where}: the clean lane\n{traceback.format_exc()}")
                lane = CleanLane(random.Random(rng.random()))
            if rng.random() < 0.2 or len(pipe.h.proc.runs) > 200:
                pipe.h.renew()  # a new owner: every run's state comes back from the store
    finally:
        pipe.close()
    res.wall_s = time.monotonic() - t0
    return res


async def _settle(h: _Harness, res: FuzzResult, entries: list[tuple[str, bytes, str]],
                  shadow: dict[tuple[str, str, str], int]) -> tuple[list[Any], list[bytes]]:
    """Apply and commit ``entries`` from the committed state (``shadow`` is its sequence table, updated in place);
    a failed commit is split in halves down to the single entries that fail alone, which are skipped (poison).
    Returns the clean lane's rejections and the poisoned frames."""
    h.renew()
    before = dict(shadow)
    for eid, raw, where in entries:
        await _check_one(h.proc, shadow, raw, eid, FuzzResult(), where)
    try:
        return await h.commit(res, f"{entries[0][2]}, retried"), []
    except CommitFailed as e:
        shadow.clear()
        shadow.update(before)
        if len(entries) == 1:
            res.poisoned.add(f"{entries[0][2]}: frame {entries[0][1][:600]!r}\n{_signature(e.__cause__ or e)}")
            h.renew()
            return [], [entries[0][1]]
    mid = len(entries) // 2
    rej1, p1 = await _settle(h, res, entries[:mid], shadow)
    rej2, p2 = await _settle(h, res, entries[mid:], shadow)
    return rej1 + rej2, p1 + p2


async def _check_one(proc: PartitionProcessor, shadow: dict[tuple[str, str, str], int], raw: bytes, entry_id: str,
                     res: FuzzResult, where: str) -> None:
    """One entry through the worker's path, with the invariant of the module docstring."""
    try:
        frame = decode_frame(raw, DEFAULT_LIMITS)
        error: SchemaError | None = None
    except SchemaError as e:
        frame, error = None, e
    before_dlq, before_rej = len(proc.dlq), len(proc.rejections)
    await proc.process([(entry_id.encode(), {FRAME_FIELD: raw})])
    new_dlq = [f for _, f in proc.dlq[before_dlq:]]
    new_rej = proc.rejections[before_rej:]
    res.dead_letters += len(new_dlq)
    for rej in new_rej:
        res.rejections[rej.reason] += 1
    if error is not None:
        assert len(new_dlq) == 1 and not new_rej, (
            f"[dead_letter] {where}: undecodable frame gave {len(new_dlq)} dead letters")
        f = new_dlq[0]
        assert f[b"reason"] == error.code.encode() and f[b"raw"] == raw and f[b"message"], (
            f"[dead_letter] {where}: {f!r:.300}")
        res.dead_lettered += 1
        res.entry_reasons[error.code] += 1
        return
    assert frame is not None
    res.decoded += 1
    if NAMES.partition(frame.project, frame.run) != 0:
        assert len(new_dlq) == 1 and new_dlq[0][b"reason"] == b"wrong_partition" and new_dlq[0][b"raw"] == raw, (
            f"[wrong_partition] {where}: a frame of another partition was not dead-lettered wrong_partition: "
            f"{new_dlq!r:.300}")
        res.dead_lettered += 1
        res.entry_reasons["wrong_partition"] += 1
        return
    assert all(b"raw" not in f for f in new_dlq), f"[dead_letter] {where}: a decodable frame was dead-lettered whole"
    assert len(new_dlq) == len(new_rej), (
        f"[dead_letter] {where}: {len(new_rej)} rejections but {len(new_dlq)} dead letters")
    key = (frame.project, frame.run, frame.producer)
    n = len(frame.events)
    outcome = _shadow_seq(shadow, key, frame.seq, n)
    r = proc.runs[(frame.project, frame.run)]
    if outcome == "window":
        assert [x.reason for x in new_rej] == ["seq_out_of_window"], f"{where}: seq {frame.seq}: {new_rej!r:.300}"
    elif outcome == "dup":
        assert not new_rej, f"[dedupe] {where}: a duplicate frame was applied: {new_rej!r:.300}"
    else:
        skip = int(outcome.split(":")[1])
        bad = Counter(ev.error.code for ev in frame.events[skip:] if isinstance(ev, BadEvent))
        got = Counter(x.reason for x in new_rej)
        assert not bad - got, f"[bad_event_not_rejected] {where}: bad events {dict(bad)} not all rejected ({dict(got)})"
        crashed = [x.message for x in new_rej if x.reason == "internal_error"]
        assert not crashed, f"[internal_error:{crashed[0][:120]}] {where}: applying an event crashed"
    assert r.producers.get(frame.producer) == shadow.get(key), (
        f"[seq_table] {where}: producer {frame.producer!r:.40} next seq {r.producers.get(frame.producer)} != "
        f"{shadow.get(key)}")


def drive(seed: int, n: int, tmp: Path, commit_every: int = 200, clean_share: float = 0.12,
          hostile_share: float = 0.45, db_url: str | None = None) -> FuzzResult:
    """Run ``n`` inputs (see the module docstring) through the decode, apply and commit path; the metadata goes
    to SQLite in ``tmp``, or to ``db_url`` (a fresh PostgreSQL database)."""
    worker_log = logging.getLogger("stepline.worker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)  # one warning per dead letter would drown the report
    errors = _Errors()
    worker_log.addHandler(errors)
    try:
        with warnings_quiet():
            res = asyncio.run(_drive(seed, n, tmp, commit_every, clean_share, hostile_share, db_url))
    finally:
        worker_log.setLevel(level)
        worker_log.removeHandler(errors)
    for r in errors.records:
        res.crashes.add(f"seed={seed}: the worker logged an error:\n{r}")
    return res


@contextlib.contextmanager
def scratch_dir() -> Any:
    """A temporary directory, in memory (``/dev/shm``) when there is one: segments and the metadata database are
    fsync'd on every commit, which on a disk costs more than everything else the fuzzer does."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base, prefix="stepline-fuzz-") as d:
        yield Path(d)


@contextlib.contextmanager
def warnings_quiet() -> Any:
    """numpy's casting warnings (a float16 column of 1e308) are not failures of the pipeline."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
