"""Hostile bytes into the decoders: deep nesting, huge headers, over-limit sizes (issue 15, item 1).

- The issue's reproducer (media nested ~200 levels, 3 KB) used to kill the process with SIGSEGV in msgpack's C
  unpacker; it now raises ``SchemaError`` (``too_deep``), also on a thread with a small stack. The crash cases
  run in a subprocess, so a regression fails the test instead of killing pytest.
- Nesting depth counts containers and media references together, the same way in ``capture`` (what ``log()``
  accepts) and in ``decode_frame`` (what the worker applies and the gateway accepts): a value at the limit
  round-trips exactly, one level past it is refused by both (property tests, default and small limits).
- Element counts and string/bin sizes are capped by ``Limits`` before msgpack allocates anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    BadEvent,
    Limits,
    Log,
    LogBlock,
    Media,
    SchemaError,
    Table,
    capture,
    decode_event,
    decode_frame,
    encode_frame_raw,
    packb,
    unpackb,
)
from schemas.values import nesting_depth

MAX_DEPTH = Limits().max_depth


def _frame(events: list[bytes], project: str = "p", run: str = "r") -> bytes:
    return msgpack.packb({"v": 1, "project": project, "run": run, "producer": "x", "seq": 0, "events": events})


def _log_event(data: dict[str, Any]) -> bytes:
    return packb({"k": "log", "ts": 1.0, "step": 1, "data": data})


# --- the crash, in a subprocess -------------------------------------------------------------------------------

# Each case builds frame bytes with plain msgpack (no help from our encoder) and prints the SchemaError code.
_CASES = {
    # The issue's reproducer: ext 2 inside ext 2, 200 levels, about 3 KB.
    "media_chain_200": """
        m = msgpack.ExtType(2, msgpack.packb(['image', {}]))
        for _ in range(200): m = msgpack.ExtType(2, msgpack.packb(['table', {'m': m}]))
        ev = msgpack.packb({'k': 'log', 'ts': 1.0, 'step': 1, 'data': {'x': m}})
    """,
    "media_chain_20000": """
        m = msgpack.ExtType(2, msgpack.packb(['image', {}]))
        for _ in range(20000): m = msgpack.ExtType(2, msgpack.packb(['plot', {'m': m}]))
        ev = msgpack.packb({'k': 'log', 'ts': 1.0, 'step': 1, 'data': {'x': m}})
    """,
    # Lists inside media inside lists: containers and ext types alternate.
    "lists_and_media_300": """
        m = [1.0]
        for i in range(300):
            m = msgpack.ExtType(2, msgpack.packb(['plot', {'m': [[m]]}])) if i % 2 else [m]
        ev = msgpack.packb({'k': 'log', 'ts': 1.0, 'step': 1, 'data': {'x': m}})
    """,
    "lists_5000": """
        ev = b"\\x84\\xa1k\\xa3log\\xa2ts\\xcb" + msgpack.packb(1.0)[1:] + b"\\xa4step\\x01\\xa4data\\x81\\xa1x" \\
            + b"\\x91" * 5000 + b"\\xc0"
    """,
    "maps_2000_in_media": """
        inner = b"\\x81\\xa1a" * 2000 + b"\\xc0"
        m = msgpack.ExtType(2, b"\\x92\\xa4plot" + b"\\x81\\xa1m" + inner)
        ev = msgpack.packb({'k': 'log', 'ts': 1.0, 'step': 1, 'data': {'x': m}})
    """,
    "ndarray_shape_nested": """
        shape = b"\\x91" * 3000 + b"\\x01"
        m = msgpack.ExtType(1, b"\\x93\\xa3<f8" + shape + b"\\xc4\\x08" + b"\\x00" * 8)
        ev = msgpack.packb({'k': 'log', 'ts': 1.0, 'step': 1, 'data': {'x': m}})
    """,
    "array_header_claims_4g": """
        ev = b"\\x84\\xa1k\\xa3log\\xa2ts\\xcb" + msgpack.packb(1.0)[1:] + b"\\xa4step\\x01\\xa4data\\x81\\xa1x" \\
            + b"\\xdd\\xff\\xff\\xff\\xff"
    """,
}

_WRAPPER = """
import json, sys, threading, msgpack
from schemas import SchemaError, decode_frame

{build}
frame = msgpack.packb({{'v': 1, 'project': 'p', 'run': 'r', 'producer': 'x', 'seq': 0, 'events': [ev]}})
out = {{}}

def decode(tag):
    try:
        decode_frame(frame, strict=True)
        out[tag] = 'decoded'
    except SchemaError as e:
        out[tag] = e.code
    f = decode_frame(frame)  # not strict: the event comes back as a BadEvent, the frame decodes
    out[tag + '_lenient'] = type(f.events[0]).__name__

decode('main')
# A thread with a small C stack: the old decoder recursed in C once per media level.
threading.stack_size(256 << 10)
t = threading.Thread(target=decode, args=('thread',))
t.start()
t.join()
print(json.dumps(out))
"""


@pytest.mark.parametrize("case", sorted(_CASES))
def test_hostile_nesting_is_a_schema_error_not_a_crash(case: str) -> None:
    script = _WRAPPER.format(build=textwrap.dedent(_CASES[case]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    # A negative return code is a signal (SIGSEGV was -11): the process died instead of raising.
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
    out = json.loads(proc.stdout)
    assert out["main"] == out["thread"] != "decoded", out
    assert out["main"] in ("too_deep", "malformed", "bad_array"), out
    assert out["main_lenient"] == out["thread_lenient"] == "BadEvent", out


def test_issue_reproducer_exits_cleanly() -> None:
    # The reproducer exactly as in the issue, wrapped so that the expected SchemaError exits 0.
    script = textwrap.dedent("""
        import msgpack; from schemas import decode_frame, SchemaError
        m = msgpack.ExtType(2, msgpack.packb(['image', {}]))
        for _ in range(200): m = msgpack.ExtType(2, msgpack.packb(['table', {'m': m}]))
        ev = msgpack.packb({'k': 'log', 'ts': 1.0, 'step': 1, 'data': {'x': m}})
        f = decode_frame(msgpack.packb({'v': 1, 'project': 'p', 'run': 'r', 'producer': 'x', 'seq': 0, 'events': [ev]}))
        assert f.events[0].error.code == 'too_deep', f.events[0].error
        try:
            decode_frame(msgpack.packb({'v': 1, 'project': 'p', 'run': 'r', 'producer': 'x', 'seq': 0,
                                        'events': [ev]}), strict=True)
        except SchemaError as e:
            print(e.code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "too_deep"


# --- depth: the same count in capture and in decode -----------------------------------------------------------

scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(1 << 63), (1 << 63) - 1), st.text(max_size=8),
    st.booleans(), st.none(),
)
dict_keys = st.text(min_size=1, max_size=6)


@st.composite
def nested(draw: st.DrawFn, depth: int) -> Any:
    """A value of nesting depth exactly ``depth``, built from every kind of container."""
    if depth == 0:
        return draw(scalars)
    if depth == 1:
        leaf = draw(st.sampled_from(["list", "dict", "array", "media", "empty"]))
        if leaf == "array":
            return (np.arange(draw(st.integers(0, 5))) % 3).astype(draw(st.sampled_from(["f8", "i4", "u1", "?"])))
        if leaf == "empty":
            return draw(st.sampled_from([[], {}]))
    kinds = ["list", "tuple", "dict", "media"] + (["table"] if depth >= 3 else [])
    kind = draw(st.sampled_from(kinds)) if depth > 1 else leaf
    if kind == "table":  # a Table adds three levels: the media, its rows list and a row
        child = draw(nested(depth - 3))
        return Table(columns=["a", "b"], data=[[child, draw(scalars)]]).to_media()
    child = draw(nested(depth - 1))
    siblings = draw(st.lists(nested(draw(st.integers(0, min(depth - 1, 2)))), max_size=2))
    items = [*siblings, child] if draw(st.booleans()) else [child, *siblings]
    if kind in ("list", "tuple"):
        return items if kind == "list" else tuple(items)
    names = draw(st.lists(dict_keys, min_size=len(items), max_size=len(items), unique=True))
    d = dict(zip(names, items, strict=True))
    if kind == "dict":
        return d
    # A media payload holds wire values (no tuples: media payloads are not copied by capture).
    return Media("plot", {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()})


def _wire_bytes(value: Any) -> bytes:
    """A frame holding ``value`` as one log call, encoded without capture (as a hostile client would)."""
    return encode_frame_raw("p", "r", "x", 0, [_log_event({"x": value})])


@pytest.mark.parametrize("max_depth", [4, MAX_DEPTH])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_values_at_the_limit_round_trip_and_past_it_are_refused_everywhere(max_depth: int, data: Any) -> None:
    limits = Limits(max_depth=max_depth)
    depth = data.draw(st.integers(max(1, max_depth - 2), max_depth + 2), label="depth")
    value = data.draw(nested(depth), label="value")
    assert nesting_depth(packb_round(value), max_depth + 5) == depth
    raw = _wire_bytes(value)
    if depth <= max_depth:
        got = capture(value, "x", limits)  # log() accepts it ...
        frame = decode_frame(encode_frame_raw("p", "r", "x", 0, [_log_event({"x": got})]), limits, strict=True)
        (ev,) = frame.events  # ... and the worker and the gateway accept it, exactly
        assert isinstance(ev, Log) and packb(ev.data["x"]) == packb(got)
        assert decode_frame(raw, limits, strict=True).events[0] == ev
        return
    with pytest.raises(SchemaError) as e:
        capture(value, "x", limits)
    assert e.value.code == "too_deep" and e.value.key == "x"
    with pytest.raises(SchemaError) as e:
        decode_frame(raw, limits, strict=True)
    assert e.value.code == "too_deep"
    (bad,) = decode_frame(raw, limits).events
    assert isinstance(bad, BadEvent) and bad.error.code == "too_deep"


def packb_round(value: Any) -> Any:
    """``value`` as the decoder returns it (tuples become lists)."""
    return unpackb(packb(value))


@pytest.mark.parametrize("where", ["log", "summary", "config", "start", "block"])
def test_every_event_kind_refuses_values_past_the_limit(where: str) -> None:
    ok: Any = 1.0
    for _ in range(MAX_DEPTH):
        ok = [ok]
    deep = [ok]
    for value, refused in ((ok, False), (deep, True)):
        if where == "block":
            ev = packb({"k": "logs", "keys": ["x"], "ts": [1.0], "step": [None], "commit": [None], "cols": [[value]]})
        elif where == "start":
            ev = packb({"k": "start", "ts": 1.0, "config": {"x": value}})
        else:
            ev = packb({"k": "log" if where == "log" else where, "ts": 1.0, "data": {"x": value}})
        if refused:
            with pytest.raises(SchemaError) as e:
                decode_event(ev)
            assert e.value.code == "too_deep"
        else:
            decode_event(ev)


# --- sizes and counts -----------------------------------------------------------------------------------------


def test_element_counts_are_capped() -> None:
    small = Limits(max_elements=10)
    assert unpackb(packb(list(range(10))), small) == list(range(10))
    for value in (list(range(11)), {str(i): i for i in range(11)}):
        with pytest.raises(SchemaError, match="malformed"):
            unpackb(packb(value), small)
    # A header that claims far more items than the input holds is refused before anything is allocated.
    for header in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"):
        with pytest.raises(SchemaError):
            unpackb(header + b"\x00" * 16)


def test_stored_bytes_are_not_held_to_the_message_caps() -> None:
    # Run state and info are the pipeline's own bytes: a long run may hold more keys than one message may.
    many = [0] * (Limits().max_elements + 1)
    assert unpackb(packb(many)) == many
    with pytest.raises(SchemaError):
        unpackb(packb(many), Limits())


def test_string_sizes_are_capped() -> None:
    small = Limits(max_value_bytes=100)
    assert unpackb(packb("a" * 100), small) == "a" * 100
    with pytest.raises(SchemaError):
        unpackb(packb("a" * 101), small)


def test_an_oversized_event_is_refused_alone() -> None:
    # The caps must not make a frame with one oversized event malformed as a whole: that event is a BadEvent
    # (event_too_large) and the others decode.
    small = Limits(max_event_bytes=1000, max_value_bytes=2000)
    big = _log_event({"v": "y" * 1500})
    frame = decode_frame(_frame([_log_event({"a": 1.0}), big, _log_event({"a": 2.0})]), small)
    kinds = [type(e).__name__ for e in frame.events]
    assert kinds == ["Log", "BadEvent", "Log"]
    bad = frame.events[1]
    assert isinstance(bad, BadEvent) and bad.error.code == "event_too_large"


def test_big_block_of_the_client_still_decodes() -> None:
    # The caps leave room for what the SDK sends: a block of as many calls as fit in one event decodes.
    n = 400_000
    block = LogBlock(keys=[], ts=np.zeros(n), step=[None] * n, commit=[None] * n, cols=[])
    raw = packb(block.to_wire())
    assert len(raw) <= Limits().max_event_bytes
    (got,) = decode_frame(encode_frame_raw("p", "r", "x", 0, [raw]), strict=True).events
    assert isinstance(got, LogBlock) and len(got) == n


@pytest.mark.parametrize(
    "frame",
    [
        _frame([], project="a\x00b"),
        _frame([], run="r\x00"),
        _frame([_log_event({"a\x00b": 1.0})]),
        _frame([packb({"k": "summary", "data": {"a\x00": 1.0}})]),
        _frame([packb({"k": "start", "ts": 1.0, "name": "n\x00"})]),
        _frame([packb({"k": "start", "ts": 1.0, "name": "n" * 257})]),
        _frame([packb({"k": "define_metric", "name": "m\x00"})]),
        _frame([packb({"k": "define_metric", "name": "m", "step_metric": "s\x00"})]),
        _frame([packb({"k": "log", "ts": 1.0, "data": {"c": msgpack.ExtType(1, msgpack.packb(
            ["<c16", [1], b"\x00" * 16]))}})]),
    ],
    ids=["nul-project", "nul-run", "nul-key", "nul-summary-key", "nul-run-name", "long-run-name",
         "nul-metric", "nul-step-metric", "complex-array"],
)
def test_names_with_nul_and_complex_arrays_are_refused_on_decode(frame: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_frame(frame, strict=True)
