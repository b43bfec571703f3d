"""The value model: kinds, client-side capture, and the msgpack codec of values.

Kinds (a key logged with two kinds yields two columns):

- ``number``: ``int`` (int64 range) and ``float``; NaN and ±inf are kept bit for bit (msgpack float64).
- ``string``, ``bool``.
- ``other``: lists, tuples and numpy arrays (at most 32 elements; larger arrays become 32-bin histograms at the
  client, W&B's rule).
- media kinds (:data:`MEDIA_KINDS`): the value is a :class:`Media` reference; image and HTML bytes travel as blobs
  next to the frame, never inside it.

:func:`capture` turns what a user passes to ``log()`` into an immutable wire value at call time, so mutating the
object afterwards cannot change what was logged. :func:`packb`/:func:`unpackb` are the one msgpack codec of the
project: numpy arrays travel as ext type 1 (dtype, shape, raw bytes), media as ext type 2. Malformed bytes raise
:class:`SchemaError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgpack
import numpy as np

from .errors import LimitError, SchemaError
from .limits import DEFAULT_LIMITS, Limits

NUMBER: Final = "number"
STRING: Final = "string"
BOOL: Final = "bool"
OTHER: Final = "other"
MEDIA_KINDS: Final = ("histogram", "image", "table", "html", "plot")
KINDS: Final = (NUMBER, STRING, BOOL, OTHER, *MEDIA_KINDS)

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
#: numpy arrays with more elements than this are logged as histograms (W&B's rule).
ARRAY_HISTOGRAM_THRESHOLD: Final = 32

EXT_NDARRAY: Final = 1
EXT_MEDIA: Final = 2
_ARRAY_DTYPE_KINDS: Final = frozenset("biufc")


class Media:
    """A media value on the wire: ``kind`` plus a msgpack-able ``payload`` map (references, not bytes).

    ``blobs`` maps sha256 → bytes for content the producer must store next to the frame; it is not part of the
    value's identity and is empty once decoded.
    """

    __slots__ = ("blobs", "kind", "payload")

    def __init__(self, kind: str, payload: dict[str, Any], blobs: dict[str, bytes] | None = None) -> None:
        if kind not in MEDIA_KINDS:
            raise SchemaError(f"unknown media kind {kind!r}", code="bad_media")
        self.kind = kind
        self.payload = payload
        self.blobs: dict[str, bytes] = blobs or {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Media) and self.kind == other.kind and _eq(self.payload, other.payload)

    def __hash__(self) -> int:
        return hash(self.kind)

    def __repr__(self) -> str:
        return f"Media({self.kind!r}, {self.payload!r:.120})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view, W&B style (``{"_type": kind, ...}``)."""
        return {"_type": self.kind, **_jsonable(self.payload)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Media):
        return v.to_dict()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _eq(a: Any, b: Any) -> bool:
    """Structural equality that treats NaN as equal to NaN and compares arrays by dtype, shape and bytes."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


values_equal = _eq


def kind_of(value: Any) -> str | None:
    """The kind of a decoded wire value, or ``None`` for ``None`` (which logs nothing)."""
    t = type(value)
    if t is float or t is int:
        return NUMBER
    if t is str:
        return STRING
    if t is bool:
        return BOOL
    if value is None:
        return None
    if t is Media:
        kind: str = value.kind
        return kind
    if isinstance(value, np.floating | np.integer):
        return NUMBER
    if isinstance(value, np.bool_):
        return BOOL
    if t is list or t is dict or t is np.ndarray:
        return OTHER
    raise SchemaError(f"not a wire value: {t.__name__}", code="bad_value")


# --- capture (client side) -------------------------------------------------------------------------------------


def capture(value: Any, key: str = "?", limits: Limits = DEFAULT_LIMITS) -> Any:
    """Turn a user value into an immutable wire value, now; raise :class:`SchemaError` naming ``key``."""
    t = type(value)
    if t is float or t is str or t is bool or value is None:
        if t is str and len(value) * 4 > limits.max_value_bytes and len(value.encode()) > limits.max_value_bytes:
            raise LimitError(f"value of {key!r} is over {limits.max_value_bytes} bytes", key=key)
        return value
    if t is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise SchemaError(f"value of {key!r} is an int outside int64: {value}", code="int_range", key=key)
        return value
    out = _capture_deep(value, key, limits, 0)
    if type(out) is not str and not isinstance(out, float | int | bool):
        size = len(packb(out))
        if size > limits.max_value_bytes:
            raise LimitError(
                f"value of {key!r} is {size} bytes encoded, the limit is {limits.max_value_bytes}", key=key
            )
    return out


def _capture_deep(value: Any, key: str, limits: Limits, depth: int) -> Any:
    if depth > limits.max_depth:
        raise SchemaError(f"value of {key!r} nests deeper than {limits.max_depth}", code="too_deep", key=key)
    t = type(value)
    if t is float or t is str or t is bool or value is None:
        return value
    if t is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise SchemaError(f"value of {key!r} holds an int outside int64: {value}", code="int_range", key=key)
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        iv = int(value)
        if not INT64_MIN <= iv <= INT64_MAX:
            raise SchemaError(f"value of {key!r} is an int outside int64: {iv}", code="int_range", key=key)
        return iv
    if isinstance(value, np.floating):
        return float(value)
    if t is Media:
        return value
    to_media = getattr(value, "to_media", None)
    if to_media is not None:
        media = to_media()
        if not isinstance(media, Media):
            raise SchemaError(f"{t.__name__}.to_media() of {key!r} did not return Media", key=key)
        return media
    if isinstance(value, list | tuple):
        return [_capture_deep(v, key, limits, depth + 1) for v in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise SchemaError(f"value of {key!r} holds a non-str dict key {k!r:.40}", code="bad_key", key=key)
            out[k] = _capture_deep(v, key, limits, depth + 1)
        return out
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind not in _ARRAY_DTYPE_KINDS:
            if arr.dtype.kind in "OUS" and depth == 0:
                return _capture_deep(arr.tolist(), key, limits, depth)
            raise SchemaError(f"value of {key!r}: arrays of dtype {arr.dtype} are not supported", key=key)
        if arr.size > ARRAY_HISTOGRAM_THRESHOLD and depth == 0:
            from .media import Histogram  # media builds on this module

            return Histogram(arr, num_bins=ARRAY_HISTOGRAM_THRESHOLD).to_media()
        # A copy, in native byte order: later mutation of the caller's array cannot reach what was logged.
        return np.array(arr, dtype=arr.dtype.newbyteorder("="), copy=True, order="C")
    raise SchemaError(f"value of {key!r} has unsupported type {t.__module__}.{t.__name__}", key=key)


# --- msgpack codec ---------------------------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()]))
    if isinstance(obj, Media):
        return msgpack.ExtType(EXT_MEDIA, _packer().pack([obj.kind, obj.payload]))
    if isinstance(obj, np.generic):
        return obj.item()
    raise SchemaError(f"cannot encode {type(obj).__name__}", code="bad_value")


def _packer() -> msgpack.Packer:
    return msgpack.Packer(default=_default, use_bin_type=True, datetime=False)


def packb(obj: Any) -> bytes:
    """Encode a wire object (frame, event or value) to msgpack bytes."""
    try:
        out: bytes = _packer().pack(obj)
    except SchemaError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise SchemaError(f"cannot encode: {e}", code="bad_value") from e
    return out


#: Allowed dtypes already parsed, by their wire string (only valid ones are kept, so it stays small).
_DTYPES: dict[str, np.dtype[Any]] = {}


def _check_dtype(dtype_s: str) -> np.dtype[Any]:
    try:
        dtype = np.dtype(dtype_s)
    except TypeError as e:
        raise SchemaError(f"ndarray dtype {dtype_s!r:.40} is not a dtype", code="bad_array") from e
    if dtype.kind not in _ARRAY_DTYPE_KINDS or dtype.hasobject:
        raise SchemaError(f"ndarray dtype {dtype_s!r:.40} is not allowed", code="bad_array")
    if len(_DTYPES) < 256:  # spellings of allowed dtypes are few; a flood of odd ones is parsed, not kept
        _DTYPES[dtype_s] = dtype
    return dtype


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        parts = msgpack.unpackb(data, raw=False)
        if not (isinstance(parts, list) and len(parts) == 3):
            raise SchemaError("ndarray ext must be [dtype, shape, bytes]", code="bad_array")
        dtype_s, shape, buf = parts
        if not isinstance(dtype_s, str) or not isinstance(shape, list) or not isinstance(buf, bytes):
            raise SchemaError("ndarray ext must be [str, list, bytes]", code="bad_array")
        dtype = _DTYPES.get(dtype_s)
        if dtype is None:
            dtype = _check_dtype(dtype_s)
        if len(shape) == 1 and type(shape[0]) is int and shape[0] * dtype.itemsize == len(buf):
            return np.frombuffer(buf, dtype=dtype)  # the common case: a column (checked as below, only faster)
        if not all(type(n) is int and 0 <= n < (1 << 40) for n in shape) or len(shape) > 32:
            raise SchemaError(f"bad ndarray shape {shape!r:.80}", code="bad_array")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != len(buf):
            raise SchemaError("ndarray byte length does not match dtype and shape", code="bad_array")
        return np.frombuffer(buf, dtype=dtype).reshape(shape)
    if code == EXT_MEDIA:
        parts = unpackb(data)
        if not (isinstance(parts, list) and len(parts) == 2 and isinstance(parts[1], dict)):
            raise SchemaError("media ext must be [kind, map]", code="bad_media")
        return Media(parts[0], parts[1])
    raise SchemaError(f"unknown msgpack ext type {code}", code="bad_ext")


def unpackb(data: bytes) -> Any:
    """Decode msgpack bytes; any malformed input raises :class:`SchemaError` (never another type)."""
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=True, timestamp=0)
    except SchemaError:
        raise
    except RecursionError as e:
        raise SchemaError("msgpack nests too deep", code="malformed") from e
    except Exception as e:  # msgpack raises a zoo of types (ExtraData, FormatError, ValueError, TypeError, ...)
        raise SchemaError(f"malformed msgpack: {type(e).__name__}: {e}"[:300], code="malformed") from e
