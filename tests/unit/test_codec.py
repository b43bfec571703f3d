"""Property tests of the wire codec as the SDK uses it.

- Every value the SDK accepts (``capture``) round-trips exactly through ``encode_event`` → ``encode_frame_raw`` →
  ``decode_frame`` (NaN, ±inf, int64 extremes, unicode keys, nested dicts, numpy arrays of every numeric dtype,
  media).
- Arbitrary bytes and mutated valid frames never make ``decode_frame`` raise anything but ``SchemaError``.
- A literal dotted key and a nested path to the same key in one call is a ``SchemaError``, never a silent pick.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas import (
    RESERVED_KEYS,
    Histogram,
    Html,
    Image,
    Log,
    LogBlock,
    SchemaError,
    Table,
    capture,
    decode_frame,
    encode_event,
    encode_frame_raw,
    flatten,
    line_series,
    values_equal,
)

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

NUMERIC_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", ">i4", ">f8",
]

# Valid by construction (capture and flatten accept every value drawn; what they refuse is drawn separately in
# test_invalid_values_and_keys_raise): keys without NUL (surrogates are never drawn by st.text) or ".", so a nested
# path cannot collide with a literal dotted key, not reserved; nesting explicitly bounded, so a flattened key stays
# under 256 characters (5 levels of at most 40) and a value under 32 levels.
keys = st.text(st.characters(exclude_characters="\x00.", exclude_categories=("Cs",)), min_size=1,
               max_size=40).filter(lambda k: k not in RESERVED_KEYS)
scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1]),
    st.text(max_size=50),
    st.booleans(),
    st.none(),
)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    dtype = np.dtype(draw(st.sampled_from(NUMERIC_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
    return draw(hnp.arrays(dtype, shape))


def _plain(depth: int) -> st.SearchStrategy[Any]:
    """Scalars and small arrays, in lists and tuples nested at most ``depth`` deep."""
    leaf = st.one_of(scalars, arrays())
    if depth == 0:
        return leaf
    inner = _plain(depth - 1)
    return st.one_of(leaf, st.lists(inner, max_size=4), st.tuples(inner, inner))


def _nested(depth: int) -> st.SearchStrategy[Any]:
    """Values, or dicts of them nested at most ``depth`` deep (flattened into dotted keys)."""
    if depth == 0:
        return _plain(3)
    return st.one_of(_plain(3), st.dictionaries(keys, _nested(depth - 1), max_size=3))


plain = _plain(3)
nested = _nested(4)
# A literal dotted key as well: "lit.x" cannot collide, no generated key holds a dot.
log_data = st.dictionaries(st.one_of(keys, st.just("lit.x")), nested, max_size=8)


def _roundtrip(events: list[Any]) -> list[Any]:
    raws = [encode_event(e) for e in events]
    frame = decode_frame(encode_frame_raw("proj", "run-1", "prod", 7, raws), strict=True)
    assert (frame.project, frame.run, frame.producer, frame.seq) == ("proj", "run-1", "prod", 7)
    return frame.events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=log_data, step=st.one_of(st.none(), st.integers(0, INT64_MAX)),
       commit=st.one_of(st.none(), st.booleans()), ts=st.floats(allow_nan=False))
def test_captured_log_values_round_trip_exactly(data: dict[str, Any], step: int | None, commit: bool | None,
                                                ts: float) -> None:
    captured = {k: capture(v, k) for k, v in flatten(data).items()}  # every drawn value is valid
    (got,) = _roundtrip([Log(ts=ts, data=captured, step=step, commit=commit)])
    assert isinstance(got, Log)
    assert got.step == step and got.commit == commit and values_equal(got.ts, ts)
    assert values_equal(got.data, captured)


def _deep_dict(n: int) -> dict[str, Any]:
    d: dict[str, Any] = {"k": 1}
    for _ in range(n):
        d = {"k": d}
    return d


def _deep_list(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


# What capture/flatten must refuse: (fragment of a log() dict, SchemaError code, the key the error names or None,
# whether the fragment still fails when nested one level down under "outer").
INVALID: list[tuple[dict[Any, Any], str, str | None, bool]] = [
    ({"a\x00b": 1.0}, "bad_key", "a\x00b", True),
    ({"\ud800": 1.0}, "bad_key", "\ud800", True),
    ({"": 1.0}, "bad_key", "", False),
    ({1: 1.0}, "bad_key", None, True),
    ({"_step": 1.0}, "reserved_key", "_step", False),
    ({"_timestamp": 1.0}, "reserved_key", "_timestamp", False),
    ({"k" * 257: 1.0}, "key_too_long", "k" * 257, True),
    ({"a" * 200: {"b" * 60: 1.0}}, "key_too_long", "a" * 200 + "." + "b" * 60, True),
    ({"c.d": 1.0, "c": {"d": 2.0}}, "key_collision", "c.d", True),
    ({"k": _deep_dict(40)}, "too_deep", None, True),
    ({"v": _deep_list(40)}, "too_deep", "v", True),
    ({"i": INT64_MAX + 1}, "int_range", "i", True),
    ({"i": INT64_MIN - 1}, "int_range", "i", True),
    ({"s": "x\ud800"}, "bad_text", "s", True),
    ({"z": np.ones(3, dtype=np.complex128)}, "bad_value", "z", True),
    ({"o": object()}, "schema_error", "o", True),
    ({"b": b"bytes"}, "schema_error", "b", True),
    ({"big": "x" * ((1 << 20) + 1)}, "too_large", "big", True),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=log_data, case=st.sampled_from(range(len(INVALID))), nest=st.booleans(), pos=st.integers(0, 8))
def test_invalid_values_and_keys_raise(data: dict[str, Any], case: int, nest: bool, pos: int) -> None:
    """One invalid key or value among valid ones, anywhere in the dict (and nested one level when that keeps it
    invalid): capture/flatten raise SchemaError with its code, naming the key, whatever else the call holds."""
    fragment, code, key, nestable = INVALID[case]
    if nest and nestable:
        fragment = {"outer": fragment}
        key = None if key is None else "outer." + key
    items = [(k, v) for k, v in data.items() if k not in fragment]
    items[pos:pos] = list(fragment.items())
    with pytest.raises(SchemaError) as e:
        {k: capture(v, k) for k, v in flatten(dict(items)).items()}
    assert e.value.code == code, (e.value.code, str(e.value))
    if key is not None:  # an over-long key is named by its start
        assert e.value.key == key or (code == "key_too_long" and e.value.key and key.startswith(e.value.key))


MIXED_CELLS = st.one_of(st.none(), st.booleans(), st.integers(INT64_MIN, INT64_MAX), st.floats(), st.text(max_size=5))


@st.composite
def block_columns(draw: st.DrawFn) -> tuple[int, list[Any]]:
    """Columns of one block: float64, int64, str, bool and a really mixed list (None, a bool, an int, a float and a
    str are always in it, in a drawn order, with more drawn cells)."""
    mixed = draw(st.lists(MIXED_CELLS, max_size=45).flatmap(
        lambda xs: st.permutations([None, True, 1, 1.5, "s", *xs])))
    n = len(mixed)
    floats = draw(st.lists(st.floats(), min_size=n, max_size=n))
    ints = draw(st.lists(st.integers(INT64_MIN, INT64_MAX), min_size=n, max_size=n))
    strs = draw(st.lists(st.text(max_size=5), min_size=n, max_size=n))
    bools = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return n, [np.array(floats, dtype=np.float64), np.array(ints, dtype=np.int64), strs, bools, mixed]


@given(block_columns())
def test_block_columns_round_trip(columns: tuple[int, list[Any]]) -> None:
    n, cols = columns
    assert {type(v) for v in cols[4]} >= {type(None), bool, int, float, str}
    block = LogBlock(keys=["f", "i", "s", "b", "mixed"], ts=np.arange(n, dtype=np.float64), step=[None] * n,
                     commit=[None] * n, cols=cols)
    (got,) = _roundtrip([block])
    assert got == block  # values_equal: type-strict (True is not 1, 1 is not 1.0), NaN equals NaN
    assert [type(c) for c in got.cols] == [np.ndarray, np.ndarray, list, list, list]
    assert [type(v) for v in got.cols[4]] == [type(v) for v in cols[4]]


def test_extremes_and_specials() -> None:
    data = {
        "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "max": INT64_MAX, "min": INT64_MIN,
        "ключ/λ": "ünïcødé ✓", "empty": [], "nested": {"a": {"b": 1.0}}, "arr": np.arange(5, dtype=np.uint64),
    }
    captured = {k: capture(v, k) for k, v in flatten(data).items()}
    assert "nested.a.b" in captured
    (got,) = _roundtrip([Log(ts=1.0, data=captured)])
    assert values_equal(got.data, captured)
    assert flatten({"empty": {}}) == {}


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
def test_numpy_arrays_of_every_numeric_dtype(dtype: str) -> None:
    arr = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    v = capture(arr, "a")
    assert isinstance(v, np.ndarray) and v.shape == (3, 4)
    (got,) = _roundtrip([Log(ts=0.0, data={"a": v})])
    assert values_equal(got.data["a"], v)
    assert got.data["a"].dtype == np.dtype(dtype).newbyteorder("=")


@pytest.mark.parametrize(
    "data",
    [[2.81474977e14] * 40, [1e308, -1e308], [1e15, 1e15 + 1], [float("nan")] * 40, [-1.7976931348623157e308] * 3],
)
def test_histograms_of_awkward_ranges(data: list[float]) -> None:
    # numpy refuses to cut these ranges into 32 bins (too narrow for float steps, or overflowing): still a value.
    m = capture(np.array(data * 20), "h")
    assert m.kind == "histogram" and len(m.payload["values"]) == 32
    assert sum(m.payload["values"]) == sum(1 for x in data * 20 if np.isfinite(x))


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize("size", [3, 100])  # small: an array value; big: it would become a histogram
def test_complex_arrays_are_refused_naming_the_key(dtype: str, size: int) -> None:
    # Complex numbers have no stored form (the read side could not serve them back): refused, never truncated.
    with pytest.raises(SchemaError, match="'z'") as e:
        capture(np.ones(size, dtype=dtype), "z")
    assert e.value.key == "z"


def test_media_round_trip() -> None:
    rng = np.random.default_rng(0)
    table = Table(columns=["name", "page", "score"])
    table.add_data("a", Html("<b>hello</b>"), 0.5)
    table.add_data("b", Html("<i>bye</i>"), float("nan"))
    media = {
        "hist": Histogram(rng.normal(size=1000), num_bins=20),
        "hist_np": Histogram(np_histogram=([1, 2, 3], [0.0, 1.0, 2.0, 3.0])),
        "big_array": rng.normal(size=100),  # > 32 elements: a histogram, W&B's rule
        "img": Image(rng.integers(0, 255, size=(8, 6, 3), dtype=np.uint8), caption="c"),
        "img_float": Image(rng.random((5, 5))),
        "table": table,
        "html": Html("<p>x</p>"),
        "plot": line_series([0, 1, 2], [[1, 2, 3], [3, 2, 1]], keys=["up", "down"], title="t"),
    }
    captured = {k: capture(v, k) for k, v in media.items()}
    assert captured["big_array"].kind == "histogram"
    assert captured["img"].blobs and captured["table"].blobs
    assert captured["img"].payload["width"] == 6 and captured["img"].payload["height"] == 8
    (got,) = _roundtrip([Log(ts=0.0, data=captured)])
    assert values_equal(got.data, captured)
    for v in got.data.values():
        assert v.blobs == {}  # blobs travel next to the frame, never inside it


def _check_decode(data: bytes) -> None:
    for strict in (False, True):
        with contextlib.suppress(SchemaError):
            decode_frame(data, strict=strict)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_schema_error(data: bytes) -> None:
    _check_decode(data)


def _valid_frame() -> bytes:
    block = LogBlock(keys=["a", "b"], ts=np.array([1.0, 2.0]), step=[None, 3], commit=[None, True],
                     cols=[np.array([1.0, 2.0]), ["x", None]])
    log = Log(ts=1.0, data={"arr": np.arange(3, dtype=np.int16), "m": capture(Histogram([1, 2, 3], num_bins=3))},
              step=4)
    return encode_frame_raw("p", "r", "prod", 0, [encode_event(block), encode_event(log)])


VALID = _valid_frame()


@settings(max_examples=1000)
@given(st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
                          st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_frames_raise_only_schema_error(ops: list[tuple[str, int, int]]) -> None:
    data = bytearray(VALID)
    for op, pos, byte in ops:
        pos = min(pos, max(len(data) - 1, 0))
        if op == "flip" and data:
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    _check_decode(bytes(data))


def test_mutated_event_bytes_inside_a_valid_envelope() -> None:
    # Corrupt an event but keep the envelope valid: non-strict decoding yields a BadEvent in its place.
    raw = bytearray(encode_event(Log(ts=1.0, data={"a": 1.0})))
    for i in range(len(raw)):
        for b in (0x00, 0xC1, 0xFF, 0x92):
            bad = bytearray(raw)
            bad[i] = b
            _check_decode(encode_frame_raw("p", "r", "prod", 0, [bytes(bad)]))


@pytest.mark.parametrize(
    "data",
    [
        {"a.b": 1, "a": {"b": 2}},
        {"a": {"b": 2}, "a.b": 1},
        {"x": {"y.z": 1, "y": {"z": 2}}},
    ],
)
def test_flatten_collisions_raise(data: dict[str, Any]) -> None:
    with pytest.raises(SchemaError) as e:
        flatten(data)
    assert e.value.code == "key_collision"


def test_flatten_rejects_reserved_and_empty_keys() -> None:
    for bad in ({"_step": 1}, {"": 1}, {1: 2}, {"": {"a": 1}}):
        with pytest.raises(SchemaError):
            flatten(bad)
