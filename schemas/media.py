"""Media types with W&B's constructors, each turning into a :class:`~schemas.values.Media` reference.

- :class:`Histogram` — ``Histogram(sequence, num_bins=64)`` (at most 512 bins) or
  ``Histogram(np_histogram=(counts, edges))``; carried inline (bins and counts are small).
- :class:`Image` — from a numpy array or a PyTorch / JAX / TensorFlow tensor (HWC or CHW, grayscale, RGB, RGBA;
  values scaled to 8 bits as W&B does), a PIL image, a matplotlib figure or a file path; encoded as PNG (or
  ``file_type``) or kept as the file's bytes; the reference holds sha256, size, format, width, height and caption,
  and the bytes travel once as a content-addressed blob. Masks and boxes are not supported (refused).

Every constructor takes tensors where it takes arrays (:func:`~schemas.values.host_value`: one copy to the host).
- :class:`Table` — ``Table(columns, data)`` plus ``add_data(*row)``; cells are scalars or media.
- :class:`Html` — from a string or a path; the HTML is a blob, the reference holds its sha256 and size.
- :func:`line_series` (exposed as ``plot.line_series``) — several named lines on one chart.
- ``plot.line``, ``scatter``, ``bar``, ``histogram``, ``confusion_matrix``, ``pr_curve``, ``roc_curve`` — W&B's
  charts over a table, stored as a ``plot`` value holding the table and the chart kind (see ``TABLE_CHARTS``).

:func:`iter_media` is the one walker over the media a value holds (the SDK gathers their blobs, the gateway checks
that the blobs a frame references are stored, the worker moves them into the data directory).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import SchemaError
from .values import Media, capture, host_value

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
                c = np.asarray(host_value(counts, "np_histogram"), dtype=np.float64)
                e = np.asarray(host_value(edges, "np_histogram"), dtype=np.float64)
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
                raw = np.asarray(host_value(sequence, "histogram"))
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


#: What ``Image`` takes besides data; masks and boxes have no stored form here (refused, not dropped).
_IMAGE_UNSUPPORTED = ("masks", "boxes")


def _matplotlib_figure(obj: Any) -> Any:
    """The matplotlib ``Figure`` behind ``obj`` (a figure, the ``pyplot`` module, an ``Axes``), else ``None``.
    Looked up by module name: matplotlib is never imported here."""
    mod = getattr(type(obj), "__module__", "") or ""
    if getattr(obj, "__name__", None) == "matplotlib.pyplot":  # wandb.Image(plt), as W&B takes it
        return obj.gcf()
    if not mod.startswith("matplotlib"):
        return None
    if hasattr(obj, "savefig"):
        return obj
    fig = getattr(obj, "figure", None)
    return fig if fig is not None and hasattr(fig, "savefig") else None


def _is_torch(data: Any) -> bool:
    """A PyTorch tensor, recognised by its class's module (torch is never imported here)."""
    return (getattr(type(data), "__module__", "") or "").split(".")[0] == "torch"


def wandb_to_uint8(data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """W&B's ``Image.to_uint8`` (wandb <= 0.19, numpy / JAX / TensorFlow arrays), rule for rule, any dtype:

    - an array whose min is negative is stretched to [0, 1]: ``(data - min) / ptp``;
    - then an array whose max is at most 1 is multiplied by 255 and truncated to integers (``astype(int32)``), so a
      uint8 or bool 0/1 mask becomes 0/255;
    - the result is clipped to [0, 255] and cast to uint8. A NaN anywhere makes min and max NaN, so nothing is
      scaled; NaN pixels become 0 (W&B's cast leaves them undefined). Arithmetic stays in the array's dtype (float32
      as float32), as W&B's; only signed integers are widened to int64 first (W&B's int8 ``data - min`` wraps).
    """
    if data.dtype.kind == "i":
        data = data.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if data.size and np.min(data) < 0:
            data = (data - np.min(data)) / np.ptp(data)
        if data.size and np.max(data) <= 1.0:
            data = (data * 255).astype(np.int32)
        out = data.clip(0, 255)
        if out.dtype.kind == "f":
            out = np.nan_to_num(out, nan=0.0)
        return out.astype(np.uint8)


def torch_make_grid_uint8(data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What W&B (<= 0.19) makes of a PyTorch tensor's values, on its host copy:
    ``torchvision.utils.make_grid(t, normalize=True).mul(255).clamp(0, 255).byte()``.

    ``normalize=True`` without a range stretches the whole tensor by its own min and max:
    ``(clamp(t, lo, hi) - lo) / max(hi - lo, 1e-5)``, so a constant tensor is all 0 (black) and a NaN anywhere makes
    every pixel 0; ``byte()`` truncates. A uint8 tensor is stretched too (W&B converts it with ``.to(float)``, i.e.
    float64, first); float32 is computed in float32 as torch does. Other integer and bool tensors (which W&B's
    in-place division refuses) are taken as float64.
    """
    a = data if data.dtype in (np.float32, np.float64) else data.astype(np.float64)
    if not a.size:
        return a.astype(np.uint8)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lo, hi = a.min(), a.max()
        if np.isnan(lo) or np.isnan(hi):
            return np.zeros(a.shape, dtype=np.uint8)
        span = a.dtype.type(max(float(hi) - float(lo), 1e-5))  # torchvision: Python floats, then the tensor's dtype
        out: np.ndarray[Any, Any] = (np.clip(a, lo, hi) - lo) / span * a.dtype.type(255)
        pixels: np.ndarray[Any, Any] = np.nan_to_num(np.clip(out, 0, 255), nan=0.0).astype(np.uint8)
        return pixels


def torch_grid(batch: np.ndarray[Any, Any], normalize: bool = True) -> np.ndarray[Any, Any]:
    """A B x C x H x W tensor's host copy tiled as W&B (<= 0.19) does, ``make_grid(t, normalize=True)`` with its
    defaults: the whole batch stretched as one (:func:`torch_make_grid_uint8`), then 8 images a row, 2 pixels of 0
    (black) around and between them; a batch of one is that image alone. Returns H' x W' x C (C = 1 as H' x W')."""
    if batch.shape[1] not in (1, 3, 4):
        raise SchemaError(f"a batch of images must be B x C x H x W with C in 1, 3, 4, got shape {batch.shape}",
                          code="bad_media")
    if batch.dtype.kind not in "biuf":
        raise SchemaError(f"image arrays must hold numbers, got dtype {batch.dtype}", code="bad_media")
    if normalize:
        pix = torch_make_grid_uint8(batch)
    else:
        pix = (np.nan_to_num(batch.clip(0, 255), nan=0.0) if batch.dtype.kind == "f" else batch).astype(np.uint8)
    n, c, h, w = pix.shape
    if n == 1:
        grid = pix[0]
    else:
        pad = 2
        cols = min(8, n)
        rows = -(-n // cols)
        grid = np.zeros((c, (h + pad) * rows + pad, (w + pad) * cols + pad), dtype=np.uint8)
        for k in range(n):
            y, x = divmod(k, cols)
            grid[:, y * (h + pad) + pad: y * (h + pad) + pad + h, x * (w + pad) + pad: x * (w + pad) + pad + w] = pix[k]
    hwc = grid.transpose(1, 2, 0)
    return np.ascontiguousarray(hwc[:, :, 0] if c == 1 else hwc)


def image_array(data: Any, normalize: bool = True) -> np.ndarray[Any, Any]:
    """An array or tensor as the HxW or HxWx3/4 uint8 array W&B would make of it.

    - tensors (PyTorch, JAX, TensorFlow) are copied to the host first (:func:`~schemas.values.host_value`);
    - CHW: a 3-d array whose first dimension is 1, 3 or 4 and whose last is not is moved to HWC (W&B's rule);
    - grayscale: HxW, HxWx1 and 1xHxW;
    - a 4-d PyTorch tensor (B x C x H x W) is tiled as W&B's ``make_grid`` tiles it (:func:`torch_grid`);
    - values: a PyTorch tensor as W&B's ``make_grid(normalize=True)`` (:func:`torch_make_grid_uint8`: stretched by
      its own min and max, whatever its dtype); anything else by W&B's ``to_uint8`` (:func:`wandb_to_uint8`);
      ``normalize=False`` (W&B 0.20's flag): values clipped to [0, 255] and cast, nothing stretched (NaN as 0).
    """
    torch_tensor = _is_torch(data)
    arr = np.asarray(host_value(data, "image"))
    if torch_tensor and arr.ndim == 4:
        return torch_grid(arr, normalize)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise SchemaError(f"image arrays must be HxW, HxWx1, HxWx3, HxWx4 or CxHxW with C in 1, 3, 4 (log a batch as "
                          f"a list of images), got shape {arr.shape}", code="bad_media")
    if arr.dtype.kind not in "biuf":
        raise SchemaError(f"image arrays must hold numbers, got dtype {arr.dtype}", code="bad_media")
    if not normalize:
        clipped = arr.clip(0, 255) if arr.dtype.kind != "b" else arr
        arr = (np.nan_to_num(clipped, nan=0.0) if arr.dtype.kind == "f" else clipped).astype(np.uint8)
    elif torch_tensor:
        arr = torch_make_grid_uint8(arr)
    else:
        arr = wandb_to_uint8(arr)
    return np.ascontiguousarray(arr)


class Image:
    """W&B's ``wandb.Image``: ``Image(data_or_path, mode=None, caption=None, ..., file_type=None)``.

    ``data_or_path``: a file path; a PIL image; a matplotlib figure (or ``pyplot`` itself, or an ``Axes``), rendered
    to PNG with ``savefig``; a numpy array or a PyTorch / JAX / TensorFlow tensor, HWC or CHW, grayscale or RGB(A),
    uint8 or float (:func:`image_array`; ``normalize=False`` turns off W&B's stretching). ``file_type`` picks the
    encoding of arrays, PIL images and figures (PNG by default; ``"jpg"``/``"jpeg"``, ``"webp"``, ``"gif"`` and
    ``"bmp"`` as Pillow writes them). A list of images under one key is logged as such (a list value holding image
    references; each image's bytes is one blob).

    Not supported: ``masks`` and ``boxes`` (segmentation masks, bounding boxes) are refused with a
    :class:`SchemaError` rather than dropped; ``grouping`` and ``classes`` are accepted and ignored. Values follow
    W&B up to 0.19 (the rules most scripts were written against; wandb 0.31 casts with ``astype(uint8)`` and
    nothing else): a PyTorch tensor as ``make_grid(normalize=True)``, an array by ``to_uint8``. Differences from
    W&B: a 4-d numpy array is refused (W&B fails on it too; log a list); a grayscale tensor stays one channel
    (``make_grid`` repeats it into three equal ones); HWC tensors are accepted (``make_grid`` takes every 3-d tensor
    as CHW).
    """

    def __init__(self, data_or_path: Any, mode: str | None = None, caption: str | None = None,
                 grouping: Any = None, classes: Any = None, boxes: Any = None, masks: Any = None,
                 file_type: str | None = None, normalize: bool = True) -> None:
        from PIL import Image as PILImage  # Pillow is heavy to import; only media users pay for it

        for name, v in (("masks", masks), ("boxes", boxes)):
            if v is not None:
                raise SchemaError(f"Image({name}=...) is not supported by stepline: {name} have no stored form; log "
                                  "the image alone (or the mask as its own image)", code="unsupported")
        fmt_out = {"jpg": "jpeg"}.get((file_type or "png").lower(), (file_type or "png").lower())
        if fmt_out not in ("png", "jpeg", "webp", "gif", "bmp"):
            raise SchemaError(f"Image file_type must be png, jpg, jpeg, webp, gif or bmp, got {file_type!r}",
                              code="bad_media")
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
            fig = _matplotlib_figure(data_or_path)
            if fig is not None:
                buf = io.BytesIO()
                fig.savefig(buf, format="png")
                im = PILImage.open(io.BytesIO(buf.getvalue()), formats=["PNG"])
                im.load()
            elif isinstance(data_or_path, Image):
                other: Image = data_or_path
                im = PILImage.open(io.BytesIO(next(iter(other.to_media().blobs.values()))))
                im.load()
                caption = other.caption if caption is None else caption
            elif hasattr(data_or_path, "save") and hasattr(data_or_path, "size") and hasattr(data_or_path, "mode"):
                im = data_or_path  # a PIL image
            else:
                arr = image_array(data_or_path, normalize=normalize)
                im = PILImage.fromarray(arr, mode=mode) if mode else PILImage.fromarray(arr)
            if fmt_out == "jpeg" and im.mode not in ("RGB", "L"):
                im = im.convert("RGB")
            buf = io.BytesIO()
            try:
                im.save(buf, format=fmt_out.upper())
            except (OSError, ValueError) as err:
                raise SchemaError(f"cannot encode the image as {fmt_out}: {err}", code="bad_media") from err
            raw = buf.getvalue()
            width, height = im.size
            fmt = fmt_out
        self.sha256, self._blobs = _blob_ref(raw)
        self.size = len(raw)
        self.format = fmt
        self.width = int(width)
        self.height = int(height)
        self.caption: str | None = caption

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


# --- wandb.plot charts over a table -----------------------------------------------------------------------------
#
# Each is stored as a ``plot`` media value: ``{"kind": <chart>, "columns": [...], "data": [[...], ...], "fields":
# {<role>: <column>}, "title": str}`` (plus ``x_title``/``y_title`` for the curves): the chart's table (as a Table's
# columns and rows) and what W&B's Vega spec would draw from which column. W&B logs the same table under
# ``<key>_table`` next to a chart panel; here the table travels inside the chart value, under the key itself.

#: The chart kinds of ``plot`` values (``line_series`` stores xs/ys instead of a table, as before).
TABLE_CHARTS = ("line", "scatter", "bar", "histogram", "confusion_matrix", "pr_curve", "roc_curve")


def _chart(kind: str, table: Any, fields: Mapping[str, str | None], title: str | None,
           extra: dict[str, str] | None = None) -> Media:
    if not isinstance(table, Table):
        raise SchemaError(f"plot.{kind} takes a Table, got {type(table).__name__}", code="bad_media")
    used = {role: col for role, col in fields.items() if col is not None}
    for role, col in used.items():
        if not isinstance(col, str) or col not in table.columns:
            raise SchemaError(f"plot.{kind}: {role}={col!r} is not a column of the table {table.columns}",
                              code="bad_media")
    media = table.to_media()
    payload: dict[str, Any] = {"kind": kind, "columns": media.payload["columns"], "data": media.payload["data"],
                               "fields": used, "title": "" if title is None else str(title)}
    payload.update(extra or {})
    return Media("plot", payload, media.blobs)


def line(table: Table, x: str, y: str, stroke: str | None = None, title: str = "",
         split_table: bool = False) -> Media:
    """``wandb.plot.line``: y against x from a table's columns, one line per value of ``stroke`` when given."""
    return _chart("line", table, {"x": x, "y": y, "stroke": stroke}, title)


def scatter(table: Table, x: str, y: str, title: str = "", split_table: bool = False) -> Media:
    """``wandb.plot.scatter``: the points (x, y) of a table's rows."""
    return _chart("scatter", table, {"x": x, "y": y}, title)


def bar(table: Table, label: str, value: str, title: str = "", split_table: bool = False) -> Media:
    """``wandb.plot.bar``: one bar per row, ``label`` column as its name, ``value`` as its height."""
    return _chart("bar", table, {"label": label, "value": value}, title)


def histogram(table: Table, value: str, title: str = "", split_table: bool = False) -> Media:
    """``wandb.plot.histogram``: the distribution of a table's ``value`` column (binned when drawn, as W&B)."""
    return _chart("histogram", table, {"value": value}, title)


def _labels_of(values: Any, what: str) -> list[Any]:
    arr = np.asarray(host_value(values, what))
    if arr.ndim != 1:
        raise SchemaError(f"{what} must be one-dimensional, got shape {arr.shape}", code="bad_media")
    return [capture(v, what) for v in arr.tolist()]


def confusion_matrix(probs: Any = None, y_true: Any = None, preds: Any = None, class_names: Any = None,
                     title: str = "Confusion Matrix Curve", split_table: bool = False) -> Media:
    """``wandb.plot.confusion_matrix``: W&B's rows (Actual, Predicted, nPredictions) for every pair of classes.

    ``preds`` (predicted labels) or ``probs`` (an N x classes array: its argmax per row); class indices map to
    ``class_names`` (sorted classes otherwise, named ``Class_1``, ...) exactly as W&B does."""
    if probs is not None and preds is not None:
        raise SchemaError("Only one of `probs` or `preds` should be provided, not both.", code="bad_media")
    if y_true is None or (probs is None and preds is None):
        raise SchemaError("confusion_matrix needs y_true and preds (or probs)", code="bad_media")
    if probs is not None:
        p = np.asarray(host_value(probs, "probs"))
        if p.ndim != 2:
            raise SchemaError(f"probs must be N x classes, got shape {p.shape}", code="bad_media")
        preds = np.argmax(p, axis=1)
    pred_l, true_l = _labels_of(preds, "preds"), _labels_of(y_true, "y_true")
    if len(pred_l) != len(true_l):
        raise SchemaError("The number of predictions and true labels must be equal.", code="bad_media")
    idx: Any
    if class_names is not None:
        names = [str(c) for c in class_names]
        n = len(names)
        idx = list(range(n))
        if len(set(pred_l)) > n:
            raise SchemaError("The number of unique predicted classes exceeds the number of class names.",
                              code="bad_media")
        if len(set(true_l)) > n:
            raise SchemaError("The number of unique true labels exceeds the number of class names.", code="bad_media")
    else:
        idx = set(pred_l) | set(true_l)
        n = len(idx)
        names = [f"Class_{i + 1}" for i in range(n)]
    try:
        mapping = {v: i for i, v in enumerate(sorted(idx))}
        counts = np.zeros((n, n))
        for t, p_ in zip(true_l, pred_l, strict=True):
            counts[mapping[t], mapping[p_]] += 1
    except (KeyError, TypeError) as err:
        raise SchemaError(f"confusion_matrix: label {err} is not a class index of class_names", code="bad_media") \
            from err
    data = [[names[i], names[j], float(counts[i, j])] for i in range(n) for j in range(n)]
    fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    return _chart("confusion_matrix", Table(columns=["Actual", "Predicted", "nPredictions"], data=data), fields,
                  title)


def _binary_curve(truth: np.ndarray[Any, Any], score: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    """False and true positives at each distinct score, highest first (sklearn's ``_binary_clf_curve``)."""
    order = np.argsort(score, kind="mergesort")[::-1]
    score, truth = score[order], truth[order]
    distinct = np.where(np.diff(score))[0]
    thresholds = np.r_[distinct, truth.size - 1]
    tps = np.cumsum(truth)[thresholds]
    fps = 1 + thresholds - tps
    return fps, tps


def _class_curves(y_true: Any, y_probas: Any, labels: Any, classes_to_plot: Any,
                  what: str) -> Iterator[tuple[Any, np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """(class label, truth as 0/1 floats, that class's scores) per class to plot, W&B's one-vs-rest choice: the
    sorted unique labels of ``y_true`` are the columns of ``y_probas``."""
    if y_true is None or y_probas is None:
        raise SchemaError(f"{what} needs y_true and y_probas", code="bad_media")
    truth = np.asarray(host_value(y_true, "y_true"))
    probas = np.asarray(host_value(y_probas, "y_probas"), dtype=np.float64)
    if truth.ndim != 1 or probas.ndim != 2 or len(truth) != len(probas):
        raise SchemaError(f"{what}: y_true must be N labels and y_probas N x classes, got shapes {truth.shape} and "
                          f"{probas.shape}", code="bad_media")
    classes = np.unique(truth)
    if len(classes) > probas.shape[1]:
        raise SchemaError(f"{what}: y_true has {len(classes)} classes, y_probas {probas.shape[1]} columns",
                          code="bad_media")
    wanted = classes if classes_to_plot is None else np.asarray(host_value(classes_to_plot, "classes_to_plot"))
    for i in np.where(np.isin(classes, wanted))[0]:
        c = classes[i]
        if labels is not None and isinstance(c, int | np.integer):
            label = labels[int(c)]
        else:
            label = c.item() if isinstance(c, np.generic) else c
        yield label, (truth == c).astype(np.float64), probas[:, i]


def pr_curve(y_true: Any = None, y_probas: Any = None, labels: Any = None, classes_to_plot: Any = None,
             interp_size: int = 21, title: str = "Precision-Recall Curve", split_table: bool = False) -> Media:
    """``wandb.plot.pr_curve``: per class (one vs rest), precision at ``interp_size`` recall levels from 1 to 0,
    the precision made monotone as W&B does; columns class, precision, recall, rounded to 3 decimals.

    Computed with numpy (W&B calls scikit-learn's ``precision_recall_curve``; the same numbers)."""
    interp_recall = np.linspace(0, 1, interp_size)[::-1]
    data: list[list[Any]] = []
    for label, truth, score in _class_curves(y_true, y_probas, labels, classes_to_plot, "pr_curve"):
        fps, tps = _binary_curve(truth, score)
        ps = tps + fps
        precision = np.divide(tps, ps, out=np.zeros_like(tps, dtype=np.float64), where=ps != 0)
        recall = np.ones_like(tps, dtype=np.float64) if tps[-1] == 0 else tps / tps[-1]
        precision = np.hstack((precision[::-1], 1.0))  # sklearn's order: recall falling to 0
        recall = np.hstack((recall[::-1], 0.0))
        precision = np.maximum.accumulate(precision)  # W&B's _step: each precision the max of those before it
        cur_p, cur_r = precision[::-1], recall[::-1]
        at = np.searchsorted(cur_r, interp_recall, side="left")
        # np.round, as pandas' DataFrame.round in W&B (it can differ from Python's round() in the last digit)
        for p, r in zip(np.round(cur_p[at], 3), np.round(interp_recall, 3), strict=True):
            data.append([label, float(p), float(r)])
    table = Table(columns=["class", "precision", "recall"], data=data)
    return _chart("pr_curve", table, {"x": "recall", "y": "precision", "class": "class"}, title,
                  {"x_title": "Recall", "y_title": "Precision"})


def roc_curve(y_true: Any = None, y_probas: Any = None, labels: Any = None, classes_to_plot: Any = None,
              title: str = "ROC Curve", split_table: bool = False) -> Media:
    """``wandb.plot.roc_curve``: per class (one vs rest), the ROC curve's points (scikit-learn's ``roc_curve``
    with ``drop_intermediate``, computed with numpy); columns class, fpr, tpr, rounded to 3 decimals."""
    data: list[list[Any]] = []
    for label, truth, score in _class_curves(y_true, y_probas, labels, classes_to_plot, "roc_curve"):
        fps, tps = _binary_curve(truth, score)
        if len(fps) > 2:  # drop the points on a straight line (sklearn's drop_intermediate=True)
            keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
            fps, tps = fps[keep], tps[keep]
        fps, tps = np.r_[0, fps], np.r_[0, tps]
        with np.errstate(invalid="ignore", divide="ignore"):  # one class only: NaN, as sklearn (with a warning)
            fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
            tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
        for f, t in zip(np.round(fpr, 3), np.round(tpr, 3), strict=True):
            data.append([label, float(f), float(t)])
    table = Table(columns=["class", "fpr", "tpr"], data=data)
    return _chart("roc_curve", table, {"x": "fpr", "y": "tpr", "class": "class"}, title,
                  {"x_title": "False positive rate", "y_title": "True positive rate"})


class _Plot:
    """The ``plot`` namespace: ``wandb.plot.line``, ``scatter``, ``bar``, ``histogram``, ``line_series``,
    ``confusion_matrix``, ``pr_curve``, ``roc_curve`` (W&B's signatures; ``split_table`` is accepted and has no
    effect: the table is stored inside the chart's value)."""

    line = staticmethod(line)
    scatter = staticmethod(scatter)
    bar = staticmethod(bar)
    histogram = staticmethod(histogram)
    line_series = staticmethod(line_series)
    confusion_matrix = staticmethod(confusion_matrix)
    pr_curve = staticmethod(pr_curve)
    roc_curve = staticmethod(roc_curve)


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
