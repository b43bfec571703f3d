"""The aligner's column-wise fast path: a :class:`LogBlock` of many ``log()`` calls applied with numpy.

Guarantees:

- Same result as call by call: :func:`apply_block` leaves the aligner with the rows (steps, values, ts, runtime),
  rejections, summaries and saved state (warnings included) that applying the block's calls one by one with
  :meth:`RunAligner.apply_log` would (docs/DESIGN.md §2). ``tests/unit/test_align_fast.py`` holds the two paths to
  identical results with generated blocks.
- It goes column-wise only where that cannot change the outcome: the block's calls share one shape (every call
  with an explicit step and ``commit`` None, or every call with ``commit=True``, or no steps at all) and every
  column holds values of one kind under distinct key identities. Any other block, or one of fewer than 4 calls, is
  applied call by call, and so are the leading calls until the pending row holds exactly the block's columns (or
  nothing).
- The column-wise part does no Python work per row and column: numeric columns cost a fixed number of numpy calls
  per block. What stays per row in Python is reading the shape (steps and commits are Python lists) and copying
  string and bool columns (Python lists too), plus one step per rejected call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from schemas import LogBlock
from schemas.values import BOOL, NUMBER, STRING

from .runstate import Agg, ColId

if TYPE_CHECKING:  # align imports this module at runtime; the aligner is only a type here
    from .align import RunAligner


def apply_block(al: RunAligner, block: LogBlock) -> None:
    """Apply a block of log calls to ``al``: column-wise when the block allows it, else call by call.

    It first applies calls one by one until the pending row holds exactly the block's columns (or nothing), then
    computes acceptance, rows and summaries of the rest with numpy.
    """
    n = len(block.step)
    ts_arr = np.asarray(block.ts, dtype=np.float64)
    mode = _block_mode(block)
    kinds = [_column_kind(c) for c in block.cols] if mode is not None else []
    if mode is None or n < 4 or any(k is None for k in kinds):
        _apply_calls(al, block, 0, n, ts_arr.tolist())
        return
    colids = [al.colid(k, str(kind)) for k, kind in zip(block.keys, kinds, strict=True)]
    if len({ident for ident, _ in colids}) != len(colids):  # "a" and "A" in one call: per-call merge rules
        _apply_calls(al, block, 0, n, ts_arr.tolist())
        return
    want = set(colids)
    if mode == "step" and _continue_steps(al, block, colids, want, ts_arr):
        return
    ts_list = ts_arr.tolist()
    i = 0
    while i < n:
        rejected = len(al.out_rejections)
        _apply_calls(al, block, i, i + 1, ts_list)
        i += 1
        if mode == "step" and al.pending.keys() == want and al.cursor == block.step[i - 1]:
            _fast_steps(al, block, colids, ts_arr, i - 1)
            return
        # Column-wise writes register no column, key spelling or spelling warning: go there once an accepted
        # call has done that for the block's columns (a rejected call did nothing), or nothing is left to do.
        accepted = len(al.out_rejections) == rejected
        if mode != "step" and not al.pending and (accepted or _registered(al, colids, block.keys)):
            _fast_commits(al, block, colids, ts_arr, i, mode)
            return


def column_item(col: Any, i: int) -> Any:
    """Element ``i`` of a column as a Python value (what the per-call path would hold)."""
    v = col[i]
    return v.item() if isinstance(v, np.generic) else v


def _continue_steps(al: RunAligner, block: LogBlock, colids: list[ColId], want: set[ColId],
                    ts: np.ndarray[Any, Any]) -> bool:
    """The usual next block of a steady run: its first call does exactly what :meth:`RunAligner.apply_log` would
    (write the pending row when the step moves on, then hold the call), so do that without building the call's
    dict, and go column-wise from call 0. Only when every key is a known column under the same spelling, so the
    per-call merge would raise no warning and create no column."""
    step0, c = block.step[0], al.cursor
    if step0 is None or step0 < c or (step0 == c and al.pending and al.pending.keys() != want):
        return False
    if not _registered(al, colids, block.keys):
        return False
    al.touch(float(ts[0]))
    if step0 > c:
        if al.pending:
            al.write_pending(c)
        al.cursor = step0
    _fast_steps(al, block, colids, ts, 0)
    return True


def _registered(al: RunAligner, colids: list[ColId], keys: list[str]) -> bool:
    """Whether every column exists with ``keys``' spelling, so merging a call would create nothing and warn of
    nothing."""
    displays = al.displays
    return all(displays.get(col) == key for col, key in zip(colids, keys, strict=True))


def _apply_calls(al: RunAligner, block: LogBlock, lo: int, hi: int, ts: list[float]) -> None:
    """Calls ``lo:hi`` of the block through the per-call path."""
    keys = block.keys
    cols = [c[lo:hi].tolist() if isinstance(c, np.ndarray) else c[lo:hi] for c in block.cols]
    for i in range(hi - lo):
        al.apply_log(ts[lo + i], {k: cols[j][i] for j, k in enumerate(keys)}, block.step[lo + i],
                     block.commit[lo + i])


def _fast_steps(al: RunAligner, block: LogBlock, colids: list[ColId], ts: np.ndarray[Any, Any], k: int) -> None:
    """Explicit steps, ``commit`` None; call ``k`` is accepted and is exactly the pending row."""
    steps = np.asarray(block.step[k:], dtype=np.int64)
    m = len(steps)
    # A call is accepted when its step is at least the cursor it meets, which is the highest step accepted before
    # it; a rejected step is below that already, so the running maximum over all earlier calls gives the same.
    prev_max = np.maximum.accumulate(steps)
    thr = np.empty(m, dtype=np.int64)
    thr[0] = steps[0]
    thr[1:] = np.maximum(prev_max[:-1], al.cursor)
    acc = steps >= thr
    _reject_fast(al, block, k, acc, thr, ts)
    idx = np.flatnonzero(acc)
    acc_steps = steps[idx]
    # Calls at the same step merge into one row, and every call holds all the block's columns, so the last call
    # of each run of equal steps is that row; the last group stays pending, as the per-call path leaves it.
    last_of_group = np.ones(len(idx), dtype=bool)
    last_of_group[:-1] = acc_steps[:-1] != acc_steps[1:]
    group_last = idx[last_of_group]
    written, pend = group_last[:-1], int(group_last[-1])
    al.touch(float(ts[k + int(idx[-1])]))
    if len(written):
        al.pending = {}
        _write_batch(al, steps[written], ts[k:][written], block, colids, k + written)
    row = k + pend
    al.pending = {c: column_item(block.cols[j], row) for j, c in enumerate(colids)}
    al.pending_ts = float(ts[row])
    al.cursor = int(steps[pend])


def _fast_commits(al: RunAligner, block: LogBlock, colids: list[ColId], ts: np.ndarray[Any, Any], k: int,
                  mode: str) -> None:
    """Calls ``k:`` each write their own row (``commit=True`` with steps, or no steps); pending is empty."""
    m = len(block.step) - k
    if m <= 0:
        return
    if mode == "nostep":
        steps = al.cursor + np.arange(m, dtype=np.int64)
        acc = np.ones(m, dtype=bool)
    else:
        steps = np.asarray(block.step[k:], dtype=np.int64)
        # Each accepted call moves the cursor past its step, so a call needs a step above every earlier accepted
        # one (a rejected step is already below that, so the maximum may run over all earlier calls).
        thr = np.empty(m, dtype=np.int64)
        thr[0] = al.cursor
        thr[1:] = np.maximum(np.maximum.accumulate(steps)[:-1] + 1, al.cursor)
        acc = steps >= thr
        _reject_fast(al, block, k, acc, thr, ts)
    idx = np.flatnonzero(acc)
    if not len(idx):
        return
    al.touch(float(ts[k + int(idx[0])]))
    al.touch(float(ts[k + int(idx[-1])]))
    _write_batch(al, steps[idx], ts[k:][idx], block, colids, k + idx)
    al.cursor = int(steps[idx[-1]]) + 1


def _reject_fast(al: RunAligner, block: LogBlock, k: int, acc: np.ndarray[Any, Any], thr: np.ndarray[Any, Any],
                 ts: np.ndarray[Any, Any]) -> None:
    for j in np.flatnonzero(~acc).tolist():
        step, c = int(block.step[k + j]), int(thr[j])  # type: ignore[arg-type]
        al.reject("non_monotonic_step", step, c, float(ts[k + j]),
                  f"step {step} is lower than the run's current step {c}: the whole call is rejected")


def _write_batch(al: RunAligner, steps: np.ndarray[Any, Any], ts: np.ndarray[Any, Any], block: LogBlock,
                 colids: list[ColId], rows: np.ndarray[Any, Any]) -> None:
    """Write rows ``rows`` of the block at ``steps``: the column-wise twin of :meth:`RunAligner.write_pending`.

    The summaries of every numeric array column are computed together on one (rows x columns) matrix, so a
    small block costs a handful of numpy calls rather than a dozen per column.
    """
    n = len(rows)
    # Accepted calls are usually consecutive: a slice is a view, fancy indexing a copy.
    lo = int(rows[0])
    take: slice | np.ndarray[Any, Any] = slice(lo, lo + n) if int(rows[-1]) - lo + 1 == n else rows
    values: dict[ColId, np.ndarray[Any, Any] | list[Any]] = {}
    numeric: list[tuple[Agg, np.ndarray[Any, Any]]] = []
    aggs = al.aggs
    explicit_summary = al.explicit_summary
    for j, col in enumerate(colids):
        src = block.cols[j]
        v = src[take] if isinstance(src, np.ndarray) else [src[r] for r in rows.tolist()]
        values[col] = v
        ident, kind = col
        agg = aggs.get(ident)
        if agg is None:
            agg = aggs[ident] = Agg()
        if not agg.has_first:
            agg.first, agg.has_first = column_item(v, 0), True
        agg.last = column_item(v, n - 1)
        if kind == NUMBER:
            if isinstance(v, np.ndarray):
                numeric.append((agg, v))
            else:
                _summarize_all([agg], np.asarray(v, dtype=np.float64)[:, None])
        explicit_summary.pop(ident, None)
    if numeric:
        mat = np.empty((n, len(numeric)), dtype=np.float64)
        for k, (_, v) in enumerate(numeric):
            mat[:, k] = v
        _summarize_all([a for a, _ in numeric], mat)
    al.emit_batch(steps, ts, values)


def _block_mode(block: LogBlock) -> str | None:
    """Which fast path fits the block: ``step`` (explicit steps, commit None), ``commit`` (explicit steps,
    commit True), ``nostep`` (no steps, commit None or True); None when calls mix these shapes."""
    steps, commits = block.step, block.commit
    if all(c is None for c in commits):
        if all(s is not None for s in steps):
            return "step"
        if all(s is None for s in steps):
            return "nostep"
        return None
    if all(c is True for c in commits):
        if all(s is not None for s in steps):
            return "commit"
        if all(s is None for s in steps):
            return "nostep"
    return None


def _column_kind(col: Any) -> str | None:
    """The one kind of every value of a column, or None when it holds several kinds or a None."""
    if isinstance(col, np.ndarray):
        return NUMBER if col.dtype.kind in "fi" else None
    if not col:
        return None
    t = type(col[0])
    if t is str:
        kind = STRING
    elif t is bool:
        kind = BOOL
    else:
        return None
    return kind if all(type(v) is t for v in col) else None


def _summarize_all(aggs: list[Agg], mat: np.ndarray[Any, Any]) -> None:
    """Fold the columns of ``mat`` (rows x len(aggs), float64) into their aggregates exactly as the per-call path
    would, value by value: NaN skipped; min/max keep the first of equal values (0.0 vs -0.0) and the old extreme
    on a tie; the total adds left to right (a NaN counts as +0.0 there, which is exact because a total that
    starts at +0.0 can never become -0.0)."""
    nan = np.isnan(mat)
    any_nan = bool(nan.any())
    counts = (len(mat) - nan.sum(axis=0)).tolist() if any_nan else [len(mat)] * len(aggs)
    cols = np.arange(len(aggs))
    lo_m = np.where(nan, np.inf, mat) if any_nan else mat
    hi_m = np.where(nan, -np.inf, mat) if any_nan else mat
    los = lo_m[lo_m.argmin(axis=0), cols].tolist()
    his = hi_m[hi_m.argmax(axis=0), cols].tolist()
    acc = np.empty((len(mat) + 1, len(aggs)), dtype=np.float64)
    acc[0] = [a.total for a in aggs]
    acc[1:] = np.where(nan, 0.0, mat) if any_nan else mat
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as in Python
        totals = np.cumsum(acc, axis=0)[-1].tolist()
    for agg, cnt, lo, hi, total in zip(aggs, counts, los, his, totals, strict=True):
        if not cnt:
            continue
        agg.min = lo if agg.min is None or lo < agg.min else agg.min
        agg.max = hi if agg.max is None or hi > agg.max else agg.max
        agg.total = total
        agg.count += cnt
