"""Deterministic M4 downsampling of one line (docs/DESIGN.md §8), vectorised with numpy.

Guarantees, for points sorted by x (ascending, ties in any fixed order) and ``n >= 1`` buckets:

- At most ``n`` points in the range: every point is returned, unchanged and in order.
- Otherwise the range ``[lo, hi]`` is split into ``n`` buckets of equal width (:func:`bucket_edges`); per
  non-empty bucket the first, the last, the minimum and the maximum point are kept (NaN is skipped for min/max;
  ties go to the earliest point), plus the first and last point of the range. A spike is never hidden: every
  bucket's extreme values are among the returned points.
- Output positions are sorted, so the returned x are sorted too.
- A pure function of its inputs: same arrays, same ``n``, same range → the same output, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# Integers up to this magnitude convert to float64 exactly.
_EXACT = 2**53


@dataclass(frozen=True, slots=True)
class M4:
    """The result of :func:`m4`: positions of kept points and, per non-empty bucket, its band."""

    keep: IntArray  # ascending positions into the input arrays
    bucket_first: IntArray  # position of each non-empty bucket's first point
    bucket_last: IntArray  # position of each non-empty bucket's last point
    bucket_min: FloatArray  # NaN when every y of the bucket is NaN
    bucket_max: FloatArray
    sampled: bool  # False: the range held at most n points and all are returned


def bucket_edges(lo: float, hi: float, n: int) -> FloatArray:
    """The ``n - 1`` inner edges splitting ``[lo, hi]`` into ``n`` equal buckets (non-decreasing).

    Bucket ``i`` holds ``edges[i-1] <= x < edges[i]``; the last bucket also holds ``x == hi``.
    """
    t = np.arange(1, n, dtype=np.float64) / n
    span = hi - lo
    # A span that overflows (lo and hi near ±float max) would give inf/NaN edges; the convex form cannot overflow.
    edges = lo + span * t if np.isfinite(span) else lo * (1.0 - t) + hi * t
    # Rounding may make neighbouring edges step back by an ulp; searchsorted needs them sorted.
    out: FloatArray = np.maximum.accumulate(edges)
    return out


def m4(x: npt.NDArray[Any], y: npt.NDArray[Any], n: int, lo: float | None = None, hi: float | None = None) -> M4:
    """Select M4 points of the line ``(x, y)``; ``x`` must be sorted ascending and free of NaN.

    ``lo``/``hi`` default to the first and last x; points outside ``[lo, hi]`` must be removed by the caller.
    """
    if n < 1:
        raise ValueError(f"buckets must be >= 1, got {n}")
    x = np.asarray(x)
    count = len(x)
    if len(y) != count:
        raise ValueError("x and y must have the same length")
    yf = np.asarray(y, dtype=np.float64)
    if count <= n:
        pos = np.arange(count, dtype=np.int64)
        return M4(pos, pos, pos, yf.copy(), yf.copy(), sampled=False)
    lo_f = float(x[0]) if lo is None else float(lo)
    hi_f = float(x[-1]) if hi is None else float(hi)

    # Bucket boundaries as positions: x is sorted, so n-1 binary searches replace a per-point division.
    edges = bucket_edges(lo_f, hi_f, n)
    if x.dtype.kind in "iu" and x[0] >= -_EXACT and x[-1] <= _EXACT and np.isfinite(edges).all():
        # Integer x (the step axis) that floats hold exactly: float(x) >= e  <=>  x >= ceil(e), so the search
        # runs on x itself instead of a float copy of it (edges lie within [lo, hi]; clipping keeps them in
        # int64 without changing any comparison, since every x lies within ±_EXACT; ±(_EXACT + 2), unlike
        # ±(_EXACT + 1), is a float64 exactly, so a clipped edge stays above every x).
        inner = np.searchsorted(x, np.clip(np.ceil(edges), -_EXACT - 2, _EXACT + 2).astype(np.int64), side="left")
    else:
        inner = np.searchsorted(np.asarray(x, dtype=np.float64), edges, side="left")
    inner = inner.astype(np.int64, copy=False)
    starts_all = np.concatenate(([0], inner))
    ends_all = np.concatenate((inner, [count]))
    nonempty = ends_all > starts_all
    # reduceat needs strictly increasing starts: an empty bucket would repeat a start and report a neighbour.
    starts = starts_all[nonempty]
    ends = ends_all[nonempty]
    counts = ends - starts

    # np.minimum propagates NaN, so the per-bucket minima tell whether any y is NaN without a pass over y.
    mins0 = np.minimum.reduceat(yf, starts)
    nan = np.isnan(yf) if np.isnan(mins0).any() else None
    if nan is None:
        arg_min, mins = _first_extreme(yf, None, mins0, counts, starts)
        arg_max, maxs = _first_extreme(yf, None, np.maximum.reduceat(yf, starts), counts, starts)
    else:
        # NaN must never win min/max: stand it in by +inf for the min and -inf for the max.
        y_lo = np.where(nan, np.inf, yf)
        y_hi = np.where(nan, -np.inf, yf)
        arg_min, mins = _first_extreme(y_lo, nan, np.minimum.reduceat(y_lo, starts), counts, starts)
        arg_max, maxs = _first_extreme(y_hi, nan, np.maximum.reduceat(y_hi, starts), counts, starts)

    keep = np.sort(np.concatenate((
        [0, count - 1], starts, ends - 1, arg_min[arg_min >= 0], arg_max[arg_max >= 0],
    )).astype(np.int64))
    # Sorted, so duplicates are neighbours (a sort + mask is several times cheaper than np.unique's hashing).
    keep = keep[np.concatenate(([True], keep[1:] != keep[:-1]))]
    all_nan = arg_min < 0
    band_min = np.where(all_nan, np.nan, mins)
    band_max = np.where(all_nan, np.nan, maxs)
    return M4(keep, starts, ends - 1, band_min, band_max, sampled=True)


def _first_extreme(
    y: FloatArray, nan: npt.NDArray[np.bool_] | None, ext: FloatArray, counts: IntArray, starts: IntArray,
) -> tuple[IntArray, FloatArray]:
    """Per bucket, the first position where ``y`` equals the bucket's extreme ``ext`` (-1 when every y is NaN)."""
    # Points equal to their bucket's extreme: usually about one per bucket, so the work after this is small.
    hit = y == np.repeat(ext, counts)
    if nan is not None:
        hit &= ~nan
    hits = np.flatnonzero(hit)
    bucket = np.searchsorted(starts, hits, side="right") - 1
    # hits are ascending, so the first hit of each bucket is where its bucket number first appears.
    first = np.ones(len(hits), dtype=bool)
    first[1:] = bucket[1:] != bucket[:-1]
    out = np.full(len(starts), -1, dtype=np.int64)
    out[bucket[first]] = hits[first]
    return out, ext
