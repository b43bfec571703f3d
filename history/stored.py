"""Decoding what the store holds: :func:`unpack_stored` for run info and the cells of packed columns.

Stored bytes are decoded with :func:`schemas.unpackb`, the one codec. The wire has become stricter over time than
what older workers stored: complex numbers and complex arrays were accepted before issue 15 (item 3) and have no
wire form now, so ``unpackb`` refuses the bytes they left in segments and run info. Such a value must not make its
whole run unreadable: when ``unpackb`` refuses stored bytes, they are decoded again by a permissive decoder that
also accepts numeric arrays of any numpy number kind (complex included), never object arrays; bytes it refuses
too raise the original :class:`schemas.SchemaError`.

The read paths render a complex number as ``{"_type": "complex", "real": r, "imag": i}``
(:func:`history.formatting.plain`).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from schemas import Media, SchemaError, unpackb
from schemas.values import EXT_MEDIA, EXT_NDARRAY

__all__ = ["unpack_stored"]

#: How deep media may nest inside media in the permissive decoder (each level is a nested C unpacker call).
_MAX_MEDIA_DEPTH = 32


def unpack_stored(data: bytes) -> Any:
    """A stored value (or run info), decoded; see the module docstring. Raises :class:`SchemaError`."""
    try:
        return unpackb(data)
    except SchemaError as e:
        try:
            return _Legacy().unpack(data)
        except Exception:
            raise e from None


class _Legacy:
    def __init__(self) -> None:
        self.depth = 0

    def unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, ext_hook=self.hook, strict_map_key=True, timestamp=0)

    def hook(self, code: int, data: bytes) -> Any:
        if code == EXT_NDARRAY:
            dtype_s, shape, buf = msgpack.unpackb(data, raw=False)
            dtype = np.dtype(dtype_s)
            if dtype.kind not in "biufc" or dtype.hasobject:
                raise SchemaError(f"stored array of dtype {dtype}", code="bad_array")
            return np.frombuffer(buf, dtype=dtype).reshape([int(n) for n in shape])
        if code == EXT_MEDIA:
            if self.depth >= _MAX_MEDIA_DEPTH:
                raise SchemaError("stored media nest too deep", code="too_deep")
            self.depth += 1
            try:
                kind, payload = self.unpack(data)
            finally:
                self.depth -= 1
            if not isinstance(kind, str) or not isinstance(payload, dict):
                raise SchemaError("stored media must be [kind, map]", code="bad_media")
            return Media(kind, payload)
        raise SchemaError(f"unknown msgpack ext type {code}", code="bad_ext")
