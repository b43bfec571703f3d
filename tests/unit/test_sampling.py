"""M4 downsampling (docs/DESIGN.md §8) as properties: deterministic, ends kept, no spike hidden, small input
unchanged."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from history.sampling import bucket_edges, m4

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
maybe_nan = st.one_of(finite, st.just(float("nan")))


@st.composite
def lines(draw: st.DrawFn) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """A line with sorted x (duplicates allowed, often integer steps) and y with NaN, plus a bucket count."""
    n_points = draw(st.integers(min_value=1, max_value=300))
    if draw(st.booleans()):
        start = draw(st.integers(min_value=-1000, max_value=1000))
        x = np.arange(start, start + n_points, dtype=np.float64)
    else:
        x = np.sort(np.array(draw(st.lists(finite, min_size=n_points, max_size=n_points)), dtype=np.float64))
    y = np.array(draw(st.lists(maybe_nan, min_size=n_points, max_size=n_points)), dtype=np.float64)
    return x, y, draw(st.integers(min_value=1, max_value=64))


def _bucket_of(x: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.int64]:
    """The reference bucketing, point by point: bucket i holds edges[i-1] <= x < edges[i]."""
    edges = bucket_edges(float(x[0]), float(x[-1]), n)
    return np.array([int(np.sum(edges <= v)) for v in x], dtype=np.int64)


@settings(max_examples=300, deadline=None)
@given(lines())
def test_m4_properties(line: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]) -> None:
    x, y, n = line
    r = m4(x, y, n)
    again = m4(x.copy(), y.copy(), n)
    np.testing.assert_array_equal(r.keep, again.keep)  # deterministic
    np.testing.assert_array_equal(r.bucket_min, again.bucket_min)

    kept = r.keep
    assert np.all(np.diff(kept) > 0)  # positions ascending and unique...
    assert np.all(np.diff(x[kept]) >= 0)  # ...so the output x is sorted
    assert kept[0] == 0
    assert kept[-1] == len(x) - 1

    if len(x) <= n:
        assert not r.sampled
        np.testing.assert_array_equal(kept, np.arange(len(x)))  # raw points, unchanged
        return
    assert r.sampled
    assert len(kept) <= 4 * n + 2
    buckets = _bucket_of(x, n)
    kept_set = set(kept.tolist())
    for b in np.unique(buckets):
        members = np.flatnonzero(buckets == b)
        assert members[0] in kept_set
        assert members[-1] in kept_set
        ys = y[members]
        if np.all(np.isnan(ys)):
            continue
        kept_ys = y[[i for i in members if i in kept_set]]
        # A spike is never hidden: the bucket's extreme values are among the returned points.
        assert np.nanmin(ys) in kept_ys
        assert np.nanmax(ys) in kept_ys
    bands = {int(buckets[f]): (lo, hi) for f, lo, hi in zip(r.bucket_first, r.bucket_min, r.bucket_max, strict=True)}
    for b, (lo, hi) in bands.items():
        ys = y[buckets == b]
        if np.all(np.isnan(ys)):
            assert np.isnan(lo)
            assert np.isnan(hi)
        else:
            assert lo == np.nanmin(ys)
            assert hi == np.nanmax(ys)


@given(lines())
def test_m4_range_wider_than_data(line: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]) -> None:
    """A requested range beyond the data splits that range, not the data's: still ends kept, still sorted."""
    x, y, n = line
    r = m4(x, y, n, lo=float(x[0]) - 100.0, hi=float(x[-1]) + 100.0)
    assert r.keep[0] == 0
    assert r.keep[-1] == len(x) - 1
    assert np.all(np.diff(r.keep) > 0)


def test_m4_keeps_a_single_spike_among_a_million_points() -> None:
    x = np.arange(1_000_000, dtype=np.float64)
    y = np.zeros_like(x)
    y[123_457] = 1e9
    y[654_321] = -1e9
    r = m4(x, y, 1000)
    assert 123_457 in r.keep
    assert 654_321 in r.keep
    assert r.bucket_max.max() == 1e9
    assert r.bucket_min.min() == -1e9
    assert len(r.keep) <= 4002


def test_m4_keeps_each_buckets_first_and_last_point() -> None:
    """The first and last point of every bucket are kept even where neither is the bucket's min or max (a line
    drawn through the kept points starts and ends each bucket where the data does); only the inner point that is
    no extreme goes. Fails at once, where the property test above may only fail after a long shrink."""
    x = np.arange(15, dtype=np.float64)  # 3 buckets: 0..4, 5..9, 10..14
    y = np.tile([5.0, 0.0, 7.0, 9.0, 6.0], 3)  # first, min, (dropped), max, last
    r = m4(x, y, 3)
    assert r.sampled
    assert r.keep.tolist() == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14]
    assert r.bucket_first.tolist() == [0, 5, 10]
    assert r.bucket_last.tolist() == [4, 9, 14]
    assert r.bucket_min.tolist() == [0.0, 0.0, 0.0]
    assert r.bucket_max.tolist() == [9.0, 9.0, 9.0]


def test_m4_all_nan_and_constant() -> None:
    x = np.arange(100, dtype=np.float64)
    r = m4(x, np.full(100, np.nan), 10)
    assert np.all(np.isnan(r.bucket_min))
    assert set(r.keep.tolist()) >= {0, 99}
    r = m4(x, np.ones(100), 10)
    assert len(r.keep) <= 4 * 10 + 2
    assert np.all(r.bucket_min == 1.0)
    single = m4(np.full(50, 3.0), np.arange(50, dtype=np.float64), 5)  # zero-width range: one bucket
    assert set(single.keep.tolist()) == {0, 49}


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        # Dense small integers: many points sit right at bucket edges (the case the integer search must get right).
        st.lists(st.integers(min_value=-60, max_value=60), min_size=30, max_size=300),
        st.lists(st.integers(min_value=-(2**40), max_value=2**40), min_size=1, max_size=300),
        # Around ±2**53, where int64 values stop being exact floats and the integer search must hand over.
        st.lists(st.integers(min_value=2**53 - 40, max_value=2**53 + 40), min_size=1, max_size=100),
        st.lists(st.integers(min_value=-(2**53) - 40, max_value=-(2**53) + 40), min_size=1, max_size=100),
    ),
    st.data(),
)
def test_m4_integer_x_matches_float_x(xs: list[int], data: st.DataObject) -> None:
    """Integer x (the step axis) takes a search on the integers themselves; it must pick exactly the points the
    float path picks, with or without a requested range, including the earliest of tied extremes."""
    x = np.sort(np.array(xs, dtype=np.int64))
    # Few distinct y values, so tied extremes are common.
    y = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, -1.0, float("nan")]), min_size=len(x),
                                    max_size=len(x))), dtype=np.float64)
    n = data.draw(st.integers(min_value=1, max_value=25))
    lo = data.draw(st.one_of(st.none(), st.floats(min_value=float(x[0]) - 50.0, max_value=float(x[0])),
                             st.floats(min_value=-(2.0**60), max_value=float(x[0]))))
    hi = data.draw(st.one_of(st.none(), st.floats(min_value=float(x[-1]), max_value=float(x[-1]) + 50.0),
                             st.floats(min_value=float(x[-1]), max_value=2.0**60)))
    got = m4(x, y, n, lo, hi)
    want = m4(x.astype(np.float64), y, n, lo, hi)
    for field in ("keep", "bucket_first", "bucket_last", "bucket_min", "bucket_max"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    if got.sampled:
        for first, last, lo_y in zip(got.bucket_first, got.bucket_last, got.bucket_min, strict=True):
            seg = y[first:last + 1]
            if not np.isnan(lo_y):
                # Ties go to the earliest point: the first position holding the bucket's minimum is kept.
                assert first + int(np.flatnonzero(seg == lo_y)[0]) in set(got.keep.tolist())


def test_m4_integer_x_at_two_to_the_53_with_a_far_range() -> None:
    """A point at exactly 2**53 with edges beyond it: the clipped integer edge must stay above the point."""
    x = np.array([0, 1, 2**53], dtype=np.int64)
    y = np.array([0.0, 5.0, 1.0])
    for xs in (x, x.astype(np.uint64)):
        got = m4(xs, y, 2, None, 2.0**54 + 4)
        want = m4(x.astype(np.float64), y, 2, None, 2.0**54 + 4)
        np.testing.assert_array_equal(got.bucket_first, want.bucket_first)
        np.testing.assert_array_equal(got.bucket_min, want.bucket_min)
