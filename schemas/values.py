"""The value model: kinds, client-side capture, and the msgpack codec of values.

Kinds (a key logged with two kinds yields two columns):

- ``number``: ``int`` (int64 range) and ``float``; NaN and ±inf are kept bit for bit (msgpack float64).
- ``string``, ``bool``.
- ``other``: lists, tuples and numpy arrays (at most 32 elements; larger arrays become 32-bin histograms at the
  client, W&B's rule).
- media kinds (:data:`MEDIA_KINDS`): the value is a :class:`Media` reference; image and HTML bytes travel as blobs
  next to the frame, never inside it.

Tensors: a PyTorch, JAX or TensorFlow tensor is captured as its host copy (:func:`host_value`: detached, moved to
the CPU once, bfloat16/float8 widened to float32) and then follows the numpy rules; a 0-d tensor or array is its
Python scalar (a ``number`` or ``bool``). Frameworks are recognised by the module of the value's class, never by
importing them, so a script that logs floats never loads one.

:func:`capture` turns what a user passes to ``log()`` into an immutable wire value at call time, so mutating the
object afterwards cannot change what was logged. It refuses, naming the key, everything the pipeline could not
store and serve back exactly: strings that are not valid Unicode (lone surrogates, anywhere in the value, its
dict keys or a media payload), complex numbers, ``datetime64``/``timedelta64``, object arrays, longdouble
(float96/float128) arrays, other types, and values nested deeper than ``Limits.max_depth``.

Nesting depth (:func:`nesting_depth`) counts every container: a list, tuple, dict, numpy array or media
reference is one level (a media reference's payload values sit one level below it); a scalar is 0. ``log()``
and every decoder apply the same count, so what the client accepts the worker and the gateway accept too.

:func:`packb`/:func:`unpackb` are the one msgpack codec of the project: numpy arrays travel as ext type 1
(dtype, shape, raw bytes), media as ext type 2. :func:`unpackb` is bounded: string lengths and element counts
are capped by :class:`Limits`, and every length by the input's length, before anything is allocated; a media
reference's payload is decoded after the enclosing object by an iterative loop, never from inside msgpack's C
unpacker, with the chain of media inside media capped at ``max_depth``: hostile nesting costs no C stack.
Malformed or over-limit bytes raise :class:`SchemaError` and nothing else.
"""

from __future__ import annotations

import threading
from collections import deque
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
#: dtype kinds an array value may have (complex, datetime, object, ... have no stored form).
_ARRAY_DTYPE_KINDS: Final = frozenset("biuf")


def _dtype_stored(dtype: np.dtype[Any]) -> bool:
    """Whether arrays of ``dtype`` have a stored form: bool, int, uint, and float up to float64 (a longdouble,
    float96/float128, has no JSON, msgpack or Arrow form to serve it back)."""
    return dtype.kind in _ARRAY_DTYPE_KINDS and not dtype.hasobject and (dtype.kind != "f" or dtype.itemsize <= 8)


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


def text_ok(s: str) -> bool:
    """True when ``s`` is valid Unicode text (no lone surrogates), so it encodes to UTF-8 and reads back equal."""
    if s.isascii():  # the common case, without encoding
        return True
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_text(s: str, what: str, key: str | None = None) -> str:
    """Return ``s``; raise :class:`SchemaError` (``bad_text``) when it is not valid Unicode text."""
    if not text_ok(s):
        raise SchemaError(
            f"{what} is not valid Unicode text (a lone surrogate, e.g. from errors='surrogateescape'): {s!r:.80}",
            code="bad_text",
            key=key,
        )
    return s


def _too_deep(key: str, limits: Limits) -> SchemaError:
    return SchemaError(f"value of {key!r} nests deeper than {limits.max_depth} levels", code="too_deep", key=key)


def capture(value: Any, key: str = "?", limits: Limits = DEFAULT_LIMITS) -> Any:
    """Turn a user value into an immutable wire value, now; raise :class:`SchemaError` naming ``key``."""
    t = type(value)
    if t is float or t is bool or value is None:
        return value
    if t is str:
        # ASCII strings hold one byte per character: their size is their length, and they are valid text.
        if value.isascii():
            if len(value) > limits.max_value_bytes:
                raise LimitError(f"value of {key!r} is over {limits.max_value_bytes} bytes", key=key)
            return value
        return _capture_text(value, key, limits)
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


def _capture_text(value: str, key: str, limits: Limits) -> str:
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        check_text(value, f"value of {key!r}", key)  # raises, with the message
        raise
    if size > limits.max_value_bytes:
        raise LimitError(f"value of {key!r} is over {limits.max_value_bytes} bytes", key=key)
    return value


def _capture_deep(value: Any, key: str, limits: Limits, depth: int) -> Any:
    """Capture ``value`` found inside ``depth`` containers; a container here is level ``depth + 1``."""
    t = type(value)
    if t is float or t is bool or value is None:
        return value
    if t is str:
        return value if value.isascii() else check_text(value, f"a string in the value of {key!r}", key)
    if t is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise SchemaError(f"value of {key!r} holds an int outside int64: {value}", code="int_range", key=key)
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.datetime64 | np.timedelta64):  # timedelta64 is an np.integer: test it first
        raise SchemaError(
            f"value of {key!r} is a numpy {type(value).__name__}, which has no stored form; log a number "
            "(e.g. seconds) or a string instead",
            code="bad_value",
            key=key,
        )
    if isinstance(value, np.integer):
        iv = int(value)
        if not INT64_MIN <= iv <= INT64_MAX:
            raise SchemaError(f"value of {key!r} is an int outside int64: {iv}", code="int_range", key=key)
        return iv
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, complex | np.complexfloating):
        raise SchemaError(
            f"value of {key!r} is a complex number, which has no stored form; log its real and imaginary parts "
            "(or abs/angle) as two keys",
            code="bad_value",
            key=key,
        )
    if t is not np.ndarray and _framework(t) is not None:  # a tensor: its host copy, then the rules below
        return _capture_deep(_tensor_to_host(value, key), key, limits, depth)
    if depth >= limits.max_depth:  # everything below is a container, one level more
        raise _too_deep(key, limits)
    if t is Media:
        _check_payload(value.payload, key, limits, depth + 1)
        return value
    to_media = getattr(value, "to_media", None)
    if to_media is not None:
        media = to_media()
        if not isinstance(media, Media):
            raise SchemaError(f"{t.__name__}.to_media() of {key!r} did not return Media", key=key)
        _check_payload(media.payload, key, limits, depth + 1)
        return media
    if isinstance(value, list | tuple):
        return [_capture_deep(v, key, limits, depth + 1) for v in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise SchemaError(f"value of {key!r} holds a non-str dict key {k!r:.40}", code="bad_key", key=key)
            if not k.isascii():
                check_text(k, f"a dict key in the value of {key!r}", key)
            out[k] = _capture_deep(v, key, limits, depth + 1)
        return out
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        try:
            arr = np.asarray(value)
        except Exception as e:  # whatever __array__ raises (a tensor on another device, ...) refuses this value
            raise SchemaError(f"value of {key!r}: {t.__name__} does not convert to an array: "
                              f"{type(e).__name__}: {e}"[:300], key=key) from e
        if arr.ndim == 0:  # a 0-d array is its scalar (W&B's rule; the scalar's own checks apply)
            return _capture_deep(arr.item(), key, limits, depth)
        if not _dtype_stored(arr.dtype) and not (arr.dtype.kind == "f" and arr.size > ARRAY_HISTOGRAM_THRESHOLD
                                                and depth == 0):  # a histogram's counts and edges are float64
            if arr.dtype.kind in "US" and depth == 0:  # strings: logged as a list of str (bytes are refused)
                return _capture_deep(arr.tolist(), key, limits, depth)
            hint = ("; convert it with .astype() or .tolist()" if arr.dtype.kind == "O"
                    else "; convert it with .astype(np.float64)" if arr.dtype.kind == "f" else "")
            raise SchemaError(
                f"value of {key!r}: numpy arrays of dtype {arr.dtype} have no stored form (bool, int, uint and "
                f"float arrays up to float64 do){hint}",
                code="bad_value",
                key=key,
            )
        if arr.size > ARRAY_HISTOGRAM_THRESHOLD and depth == 0:
            from .media import Histogram  # media builds on this module

            return Histogram(arr, num_bins=ARRAY_HISTOGRAM_THRESHOLD).to_media()
        # A copy, in native byte order: later mutation of the caller's array cannot reach what was logged.
        return np.array(arr, dtype=arr.dtype.newbyteorder("="), copy=True, order="C")
    raise SchemaError(f"value of {key!r} has unsupported type {t.__module__}.{t.__name__}", key=key)


# --- tensors (PyTorch, JAX, TensorFlow), duck-typed: this module never imports a framework ---------------------

#: Framework of a value's type by the module of a class in its MRO (``None``: not a tensor), learnt per type.
_FRAMEWORKS: dict[type, str | None] = {}
_FRAMEWORK_PREFIXES: Final = (("torch", "torch"), ("jaxlib", "jax"), ("jax", "jax"), ("tensorflow", "tensorflow"),
                              ("keras", "tensorflow"))


def _framework(t: type) -> str | None:
    """``"torch"``, ``"jax"`` or ``"tensorflow"`` when instances of ``t`` are that framework's tensors.

    Decided by the modules of the classes in ``t``'s MRO (a ``torch.nn.Parameter``, fastai's ``TensorBase`` and
    other subclasses count), never by importing anything: a script that logs floats never loads a framework."""
    try:
        return _FRAMEWORKS[t]
    except KeyError:
        pass
    found: str | None = None
    for c in t.__mro__:
        mod = getattr(c, "__module__", None) or ""
        for prefix, name in _FRAMEWORK_PREFIXES:
            if (mod == prefix or mod.startswith(prefix + ".")) and _tensor_like(c, name):
                found = name
                break
        if found:
            break
    if len(_FRAMEWORKS) < 1024:  # types are few; a flood of generated classes is looked at, not remembered
        _FRAMEWORKS[t] = found
    return found


def _tensor_like(c: type, framework: str) -> bool:
    if framework == "torch":
        return c.__name__ == "Tensor"
    return hasattr(c, "__array__") or hasattr(c, "numpy")  # jax.Array, tf EagerTensor / Variable


def _widen(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """bfloat16 / float8 (``ml_dtypes``, what JAX and TensorFlow hand numpy) as float32, which holds them exactly."""
    if arr.dtype.kind == "V" or (arr.dtype.kind == "f" and arr.dtype.name not in ("float16", "float32", "float64")
                                 and arr.dtype.itemsize <= 2):
        try:
            return arr.astype(np.float32)
        except (TypeError, ValueError):
            return arr
    return arr


def _tensor_to_host(value: Any, key: str = "?") -> Any:
    """A framework tensor as a numpy array on the host, or its Python scalar when it is 0-d.

    PyTorch: detached (``requires_grad`` tensors log their value, as in W&B), dequantized / densified when it must
    be, and copied to the CPU once (a CPU tensor is viewed, not copied: :func:`capture` copies what it keeps);
    bfloat16 and float8 become float32 on the way (one ``.to(cpu, float32)``, still a single copy). JAX and
    TensorFlow: ``__array__`` / ``.numpy()``, the one device-to-host transfer. Anything the framework refuses to
    convert (a meta tensor, ...) is a :class:`SchemaError` naming the key."""
    t = type(value)
    fw = _framework(t)
    try:
        if fw == "torch":
            return _torch_to_host(value)
        tf = fw == "tensorflow" and hasattr(value, "numpy")
        arr = _widen(np.asarray(value.numpy() if tf else value))
        return arr.item() if arr.ndim == 0 else arr
    except SchemaError:
        raise
    except Exception as e:
        raise SchemaError(f"value of {key!r}: {t.__module__}.{t.__name__} does not convert to a host value: "
                          f"{type(e).__name__}: {e}"[:300], code="bad_value", key=key) from e


def _torch_to_host(x: Any) -> Any:
    import sys

    torch = sys.modules["torch"]  # a torch tensor exists, so torch is imported: this imports nothing
    x = x.detach()
    if x.is_quantized:
        x = x.dequantize()
    if x.layout != torch.strided:  # sparse, mkldnn: numpy needs the dense values
        x = x.to_dense()
    dtype = x.dtype
    if x.ndim == 0:
        return x.item()  # one element copied, a Python int / float / bool (bfloat16 included)
    if dtype == torch.bfloat16 or "float8" in str(dtype):  # no numpy dtype: float32 holds them exactly
        dtype = torch.float32
    if x.device.type != "cpu" or dtype != x.dtype:
        x = x.to(device="cpu", dtype=dtype)
    return x.resolve_conj().resolve_neg().numpy()


def host_value(value: Any, key: str = "?") -> Any:
    """``value`` with a framework tensor (PyTorch, JAX, TensorFlow) turned into a numpy array or, 0-d, its Python
    scalar; anything else is returned as is. For media constructors, which then apply their own rules."""
    t = type(value)
    if t is float or t is int or t is np.ndarray or _framework(t) is None:
        return value
    return _tensor_to_host(value, key)


def _check_payload(payload: Any, key: str, limits: Limits, depth: int) -> None:
    """Check a media payload in place (media constructors build it; it is not copied): every string valid
    text, every value a wire value, no container deeper than the limit. ``depth``: containers around it."""
    if type(payload) is not dict:
        raise SchemaError(f"media payload of {key!r} must be a dict, got {type(payload).__name__}", key=key)
    _check_wire(payload.values(), key, limits, depth)


def _check_wire(items: Any, key: str, limits: Limits, depth: int) -> None:
    for v in items:
        t = type(v)
        if t is float or t is bool or v is None:
            continue
        if t is str:
            if not v.isascii():
                check_text(v, f"a string in the media value of {key!r}", key)
            continue
        if t is int:
            if not INT64_MIN <= v <= INT64_MAX:
                raise SchemaError(f"media value of {key!r} holds an int outside int64: {v}", code="int_range",
                                  key=key)
            continue
        if depth >= limits.max_depth:
            raise _too_deep(key, limits)
        if t is list or t is tuple:
            _check_wire(v, key, limits, depth + 1)
        elif t is dict:
            for k in v:
                if type(k) is not str:
                    raise SchemaError(f"media value of {key!r} holds a non-str dict key {k!r:.40}", code="bad_key",
                                      key=key)
                if not k.isascii():
                    check_text(k, f"a dict key in the media value of {key!r}", key)
            _check_wire(v.values(), key, limits, depth + 1)
        elif t is Media:
            _check_payload(v.payload, key, limits, depth + 1)
        elif t is np.ndarray:
            if not _dtype_stored(v.dtype):
                raise SchemaError(f"media value of {key!r} holds an array of dtype {v.dtype}", code="bad_value",
                                  key=key)
        else:
            raise SchemaError(f"media value of {key!r} holds a {t.__module__}.{t.__name__}, which has no stored "
                              "form", code="bad_value", key=key)


def _str_keys(m: dict[Any, Any], key: str) -> None:
    for k in m:
        if type(k) is not str:
            raise SchemaError(f"value of {key!r} holds a map key of type {type(k).__name__} (only str keys have a "
                              "stored form)", code="bad_key", key=key)


def nesting_depth(value: Any, limit: int, key: str = "?") -> int:
    """The nesting depth of a wire value (see the module docstring), counted up to ``limit + 1`` at most: a
    value deeper than ``limit`` is not walked further (no recursion past it, whatever the value holds).

    The walk also refuses (:class:`SchemaError` naming ``key``) what msgpack decodes but no read could serve: a
    map key that is not str (a bin key decodes as bytes) and a msgpack timestamp (ext -1)."""
    t = type(value)
    if t is list:
        children: Any = value
    elif t is dict:
        _str_keys(value, key)
        children = value.values()
    elif t is Media:
        _str_keys(value.payload, key)
        children = value.payload.values()
    elif t is np.ndarray:
        return 1
    else:
        return 0
    if limit <= 0:
        return 1
    deepest = 0
    for x in children:
        tx = type(x)
        if tx is list or tx is dict or tx is Media or tx is np.ndarray:
            d = nesting_depth(x, limit - 1, key)
            if d > deepest:
                deepest = d
                if d >= limit:  # already past the limit: stop looking
                    break
        elif tx is msgpack.Timestamp:
            raise SchemaError(f"value of {key!r} holds a msgpack timestamp, which has no stored form; log a number "
                              "(e.g. seconds) or a string instead", code="bad_value", key=key)
    return 1 + deepest


def check_nesting(value: Any, limits: Limits = DEFAULT_LIMITS, key: str = "?") -> None:
    """Raise :class:`SchemaError` (``too_deep``) when a decoded value nests deeper than ``limits.max_depth``, or
    (:func:`nesting_depth`) holds a map key that is not str or a msgpack timestamp."""
    if nesting_depth(value, limits.max_depth, key) > limits.max_depth:
        raise _too_deep(key, limits)


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
    if not _dtype_stored(dtype):
        raise SchemaError(f"ndarray dtype {dtype_s!r:.40} is not allowed (bool, int, uint and float up to float64 "
                          "are)", code="bad_array")
    if len(_DTYPES) < 256:  # spellings of allowed dtypes are few; a flood of odd ones is parsed, not kept
        _DTYPES[dtype_s] = dtype
    return dtype


class _DecodeState(threading.local):
    """Per-thread state of :func:`unpackb`: media references whose payloads are still to be decoded."""

    def __init__(self) -> None:
        self.pending: deque[tuple[Media, bytes, int]] = deque()
        #: How many media references enclose the bytes being decoded (0: the top object).
        self.level = 0


_state = _DecodeState()


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        parts = msgpack.unpackb(data, raw=False)  # no ext hook here: its nesting is msgpack's own, bounded
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
        # Decoding the payload here would nest one C unpacker (tens of KB of C stack) per level of media inside
        # media, and ~200 levels kill the process. Return the reference now; unpackb() fills it in after this C
        # call returns, checking the depth budget before it decodes any payload.
        st = _state
        media = Media.__new__(Media)
        media.kind, media.payload, media.blobs = "", {}, {}
        st.pending.append((media, data, st.level + 1))
        return media
    raise SchemaError(f"unknown msgpack ext type {code}", code="bad_ext")


def _unpack(data: bytes, limits: Limits | None) -> Any:
    n = len(data)
    if limits is None or (n <= limits.max_value_bytes and n <= limits.max_elements):
        # msgpack's own caps are the input's length (half of it for maps): here they are the tighter ones.
        return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=True, timestamp=0)
    # Each cap is checked by msgpack against a header before it allocates anything for it. Bin and ext lengths
    # keep msgpack's cap, the input's length (bounded by the frame and event limits): they are plain bytes, and
    # an oversized event inside a frame must reach decode_event, which refuses that event alone.
    return msgpack.unpackb(
        data, raw=False, ext_hook=_ext_hook, strict_map_key=True, timestamp=0,
        max_str_len=min(n, limits.max_value_bytes), max_array_len=min(n, limits.max_elements),
        max_map_len=min(n // 2, limits.max_elements),
    )


def _resolve_media(pending: deque[tuple[Media, bytes, int]], limits: Limits | None) -> None:
    """Decode the payloads of the media references :func:`_ext_hook` left, breadth first, each in its own C call:
    no recursion, whatever the nesting. A payload's bytes are dropped once decoded, so at most two levels' worth
    are held at once."""
    st = _state
    max_depth = (limits or DEFAULT_LIMITS).max_depth
    try:
        while pending:
            media, raw, level = pending.popleft()
            if level > max_depth:  # each media reference is a level: checked before its payload is read
                raise SchemaError(f"media values nest deeper than {max_depth} levels", code="too_deep")
            st.level = level
            parts = _unpack(raw, limits)
            if not (isinstance(parts, list) and len(parts) == 2 and type(parts[0]) is str
                    and isinstance(parts[1], dict)):
                raise SchemaError("media ext must be [kind, map]", code="bad_media")
            if parts[0] not in MEDIA_KINDS:
                raise SchemaError(f"unknown media kind {parts[0]!r:.40}", code="bad_media")
            media.kind, media.payload = parts
    finally:
        st.level = 0


def unpackb(data: bytes, limits: Limits | None = None) -> Any:
    """Decode msgpack bytes within ``limits`` (see the module docstring); any malformed input raises
    :class:`SchemaError` (never another type).

    Without ``limits`` (bytes the pipeline stored itself: run state, run info, column cells) string lengths and
    element counts are capped by the input's length only, since a long run may hold more keys than one message
    may; media nesting is still capped at the default ``max_depth`` and never recurses in C. Bytes from clients
    are decoded by :func:`schemas.decode_frame` / :func:`schemas.decode_event`, which always pass their limits.
    """
    pending = _state.pending
    try:
        out = _unpack(data, limits)
        if pending:
            _resolve_media(pending, limits)
        return out
    except SchemaError:
        pending.clear()
        raise
    except RecursionError as e:
        pending.clear()
        raise SchemaError("msgpack nests too deep", code="malformed") from e
    except Exception as e:  # msgpack raises a zoo of types (ExtraData, FormatError, ValueError, TypeError, ...)
        pending.clear()
        raise SchemaError(f"malformed msgpack: {type(e).__name__}: {e}"[:300], code="malformed") from e
