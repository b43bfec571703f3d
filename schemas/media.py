"""Media types with W&B's constructors, each turning into a :class:`~schemas.values.Media` reference.

- :class:`Histogram` — ``Histogram(sequence, num_bins=64)`` (at most 512 bins) or
  ``Histogram(np_histogram=(counts, edges))``; carried inline (bins and counts are small).
- :class:`Image` — from a numpy array (HxW, HxWx1, HxWx3, HxWx4) or a file path; encoded as PNG (arrays) or
  kept as the file's bytes; the reference holds sha256, size, format, width, height and caption, and the bytes
  travel once as a content-addressed blob.
- :class:`Table` — ``Table(columns, data)`` plus ``add_data(*row)``; cells are scalars or media.
- :class:`Html` — from a string or a path; the HTML is a blob, the reference holds its sha256 and size.
- :func:`line_series` (exposed as ``plot.line_series``) — several named lines on one chart.

:func:`iter_media` is the one walker over the media a value holds (the SDK gathers their blobs, the gateway checks
that the blobs a frame references are stored, the worker moves them into the data directory).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .errors import SchemaError
from .values import Media, capture

MAX_BINS = 512


class Histogram:
    def __init__(
        self,
        sequence: Any = None,
        np_histogram: tuple[Any, Any] | None = None,
        num_bins: int = 64,
    ) -> None:
        if np_histogram is not None:
            if sequence is not None:
                raise SchemaError("Histogram takes a sequence or np_histogram, not both", code="bad_media")
            try:
                counts, edges = np_histogram
                c = np.asarray(counts, dtype=np.float64)
                e = np.asarray(edges, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise SchemaError(f"np_histogram must be (counts, edges): {err}", code="bad_media") from err
            if c.ndim != 1 or e.ndim != 1 or len(e) != len(c) + 1:
                raise SchemaError(
                    f"np_histogram needs len(edges) == len(counts) + 1, got {c.shape} and {e.shape}",
                    code="bad_media",
                )
        else:
            if sequence is None:
                raise SchemaError("Histogram needs a sequence or np_histogram", code="bad_media")
            if not isinstance(num_bins, int) or not 1 <= num_bins <= MAX_BINS:
                raise SchemaError(f"num_bins must be within 1..{MAX_BINS}, got {num_bins!r}", code="bad_media")
            try:
                raw = np.asarray(sequence)
                # Casting complex to float drops the imaginary part (with only a warning): refuse instead.
                if raw.dtype.kind == "c":
                    raise TypeError("complex values have no histogram")
                data = raw.astype(np.float64).ravel()
            except (TypeError, ValueError) as err:
                raise SchemaError(f"Histogram needs real numbers: {err}", code="bad_media") from err
            data = data[np.isfinite(data)]
            try:
                with np.errstate(over="raise", invalid="raise"):
                    c, e = np.histogram(data, bins=num_bins)
            except (ValueError, FloatingPointError):
                # numpy cannot cut a range narrower than ``num_bins`` float steps (e.g. a constant 2.8e14), nor
                # one whose width overflows (±1e308): widen it around its centre, computed without overflow.
                lo, hi = float(data.min()), float(data.max())
                mid = lo / 2 + hi / 2
                half = max(hi / 2 - lo / 2, abs(mid) * 1e-12, 0.5)
                with np.errstate(over="ignore", invalid="ignore"):
                    edges = mid + half * np.linspace(-1.0, 1.0, num_bins + 1)
                fmax = float(np.finfo(np.float64).max)
                c, e = np.histogram(data, bins=np.clip(np.nan_to_num(edges, posinf=fmax, neginf=-fmax), -fmax, fmax))
        if len(c) > MAX_BINS:
            raise SchemaError(f"a histogram has at most {MAX_BINS} bins, got {len(c)}", code="bad_media")
        self.counts = [float(x) for x in c]
        self.bins = [float(x) for x in e]

    def to_media(self) -> Media:
        return Media("histogram", {"bins": list(self.bins), "values": list(self.counts)})


def _blob_ref(data: bytes) -> tuple[str, dict[str, bytes]]:
    sha = hashlib.sha256(data).hexdigest()
    return sha, {sha: data}


class Image:
    def __init__(self, data_or_path: Any, caption: str | None = None, mode: str | None = None) -> None:
        from PIL import Image as PILImage  # Pillow is heavy to import; only media users pay for it

        if isinstance(data_or_path, str | os.PathLike):
            try:
                with open(data_or_path, "rb") as f:
                    raw = f.read()
                with PILImage.open(io.BytesIO(raw)) as opened:
                    width, height = opened.size
                    fmt = (opened.format or "png").lower()
            except OSError as err:
                raise SchemaError(f"cannot read image {data_or_path!s}: {err}", code="bad_media") from err
        else:
            im: Any
            if hasattr(data_or_path, "save") and hasattr(data_or_path, "size"):  # a PIL image
                im = data_or_path
            else:
                arr = np.asarray(data_or_path)
                if arr.ndim == 3 and arr.shape[2] == 1:
                    arr = arr[:, :, 0]
                if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
                    raise SchemaError(f"image arrays must be HxW, HxWx3 or HxWx4, got {arr.shape}", code="bad_media")
                if arr.dtype != np.uint8:
                    a = arr.astype(np.float64)
                    if a.size and float(np.nanmax(a)) <= 1.0:  # W&B's rule: floats in [0, 1] are scaled
                        a = a * 255.0
                    arr = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
                im = PILImage.fromarray(arr, mode=mode)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            raw = buf.getvalue()
            width, height = im.size
            fmt = "png"
        self.sha256, self._blobs = _blob_ref(raw)
        self.size = len(raw)
        self.format = fmt
        self.width = int(width)
        self.height = int(height)
        self.caption = caption

    def to_media(self) -> Media:
        payload: dict[str, Any] = {
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
            "width": self.width,
            "height": self.height,
        }
        if self.caption is not None:
            payload["caption"] = str(self.caption)
        return Media("image", payload, dict(self._blobs))


class Html:
    def __init__(self, data: Any, inject: bool = True) -> None:
        if isinstance(data, os.PathLike) or (isinstance(data, str) and data.endswith((".html", ".htm"))
                                              and os.path.exists(data)):
            try:
                with open(data, "rb") as f:
                    raw = f.read()
            except OSError as err:
                raise SchemaError(f"cannot read HTML file {data!s}: {err}", code="bad_media") from err
        elif isinstance(data, str):
            raw = data.encode()
        elif hasattr(data, "read"):
            raw = data.read()
            raw = raw.encode() if isinstance(raw, str) else bytes(raw)
        else:
            raise SchemaError(f"Html takes a str, a path or a file, got {type(data).__name__}", code="bad_media")
        self.sha256, self._blobs = _blob_ref(raw)
        self.size = len(raw)

    def to_media(self) -> Media:
        return Media("html", {"sha256": self.sha256, "size": self.size}, dict(self._blobs))


class Table:
    def __init__(
        self,
        columns: Sequence[str] | None = None,
        data: Sequence[Sequence[Any]] | None = None,
        dataframe: Any = None,
    ) -> None:
        if dataframe is not None:
            columns = [str(c) for c in dataframe.columns]
            data = dataframe.itertuples(index=False, name=None)
        self.columns = [str(c) for c in (columns or [])]
        self.data: list[list[Any]] = []
        for row in data or []:
            self.add_data(*row)

    def add_data(self, *row: Any) -> None:
        if self.columns and len(row) != len(self.columns):
            raise SchemaError(
                f"table row has {len(row)} cells, the table has {len(self.columns)} columns", code="bad_media"
            )
        # Cells are captured now, like log() values: later changes to the objects do not reach the table.
        self.data.append([capture(c, key="table cell") for c in row])

    def to_media(self) -> Media:
        blobs: dict[str, bytes] = {}
        cells: list[list[Any]] = []
        for row in self.data:
            for c in row:
                if isinstance(c, Media):
                    blobs.update(c.blobs)
            cells.append(list(row))
        return Media("table", {"columns": list(self.columns), "data": cells}, blobs)


def line_series(
    xs: Sequence[Any],
    ys: Sequence[Sequence[Any]],
    keys: Sequence[str] | None = None,
    title: str | None = None,
    xname: str | None = None,
) -> Media:
    """Several lines on one chart (``plot.line_series``); ``xs`` is shared or one list per line."""
    try:
        ys_l = [[float(v) for v in y] for y in ys]
        xs_l: list[Any] = list(xs)
        if xs_l and isinstance(xs_l[0], Sequence | np.ndarray) and not isinstance(xs_l[0], str):
            xs_ll = [[float(v) for v in x] for x in xs_l]
        else:
            xs_ll = [[float(v) for v in xs_l]] * len(ys_l)
    except (TypeError, ValueError) as err:
        raise SchemaError(f"line_series needs numbers: {err}", code="bad_media") from err
    if len(xs_ll) != len(ys_l) or any(len(x) != len(y) for x, y in zip(xs_ll, ys_l, strict=True)):
        raise SchemaError("line_series: xs and ys lengths differ", code="bad_media")
    names = [str(k) for k in keys] if keys is not None else [f"line_{i}" for i in range(len(ys_l))]
    if len(names) != len(ys_l):
        raise SchemaError(f"line_series: {len(names)} keys for {len(ys_l)} lines", code="bad_media")
    payload: dict[str, Any] = {"kind": "line_series", "xs": xs_ll, "ys": ys_l, "keys": names}
    if title is not None:
        payload["title"] = str(title)
    if xname is not None:
        payload["xname"] = str(xname)
    return Media("plot", payload)


class _Plot:
    """The ``plot`` namespace (``wandb.plot.line_series``)."""

    line_series = staticmethod(line_series)


plot = _Plot()


def iter_media(value: Any) -> Iterator[Media]:
    """Every :class:`Media` held anywhere in a value: the value itself, inside lists and maps, and inside other
    media's payloads (table cells). Iterative, so a deeply nested value cannot exhaust the C stack."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, Media):
            yield v
            stack.append(v.payload)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)


def blob_shas(value: Any) -> set[str]:
    """sha256 of every blob a value references (images, HTML, media inside tables)."""
    return {m.payload["sha256"] for m in iter_media(value) if isinstance(m.payload.get("sha256"), str)}


def collect_blobs(value: Any, out: dict[str, bytes]) -> None:
    """Gather the blob bytes (sha256 → bytes) that captured media in a value carry to the producer."""
    for m in iter_media(value):
        out.update(m.blobs)
