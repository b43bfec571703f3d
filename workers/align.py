"""The step aligner: W&B's logging semantics (DESIGN §2), one run at a time, deterministically.

Guarantees:

- :meth:`RunAligner.apply` implements the table of DESIGN §2 exactly: a call with a step lower than the cursor
  is rejected whole (``non_monotonic_step``, with the step it tried and the cursor), never partly applied.
- Processing is a pure function of (state, events): the same events applied to the same state give the same rows,
  rejections and state, so replay, redelivery after a crash and a fenced zombie converge to identical history.
- The whole state round-trips through :meth:`RunAligner.dump` / :meth:`RunAligner.load` (msgpack), which is
  what a commit stores next to the partition offset.

Columns are identified by ``(key identity, kind)``: a key logged with two kinds gives two columns and a recorded
conflict; ``My-Metric`` and ``my-metric`` are one column (first spelling kept) and the second spelling is recorded
as a run warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas import (
    KINDS,
    Config,
    DefineMetric,
    Finish,
    Log,
    LogBlock,
    Start,
    Summary,
    key_ident,
    kind_of,
    packb,
    unpackb,
)
from schemas.values import BOOL, NUMBER, STRING

ColId = tuple[str, str]  # (key identity, kind)
MAX_WARNINGS = 200


@dataclass(slots=True)
class Row:
    """One history row: step, client timestamp, runtime, and values by column."""

    step: int
    ts: float
    runtime: float
    values: dict[ColId, Any]


@dataclass(slots=True)
class RowBatch:
    """Consecutive history rows written column-wise by the block fast path (same columns in every row)."""

    steps: np.ndarray[Any, Any]
    ts: np.ndarray[Any, Any]
    runtime: np.ndarray[Any, Any]
    values: dict[ColId, np.ndarray[Any, Any] | list[Any]]

    def __len__(self) -> int:
        return len(self.steps)

    def rows(self) -> list[Row]:
        cols = {c: (v.tolist() if isinstance(v, np.ndarray) else v) for c, v in self.values.items()}
        steps, ts, rt = self.steps.tolist(), self.ts.tolist(), self.runtime.tolist()
        return [Row(steps[i], ts[i], rt[i], {c: v[i] for c, v in cols.items()}) for i in range(len(steps))]


def expand(rows: list[Row | RowBatch]) -> list[Row]:
    """Rows and row batches as plain rows, in order."""
    out: list[Row] = []
    for r in rows:
        if isinstance(r, RowBatch):
            out.extend(r.rows())
        else:
            out.append(r)
    return out


@dataclass(slots=True)
class Rejection:
    reason: str
    step: int | None
    cursor: int | None
    message: str
    ts: float | None


@dataclass(slots=True)
class _Agg:
    """Summary aggregates of one key identity (NaN skipped for min/max/mean)."""

    first: Any = None
    has_first: bool = False
    last: Any = None
    min: float | None = None
    max: float | None = None
    total: float = 0.0
    count: int = 0


@dataclass
class RunAligner:
    """The per-run state of the aligner (DESIGN §2) and what it produced since the last :meth:`take`."""

    cursor: int = 0
    pending: dict[ColId, Any] = field(default_factory=dict)
    pending_ts: float | None = None
    start_ts: float | None = None
    state: str = "running"
    exit_code: int | None = None
    name: str | None = None
    producers: dict[str, int] = field(default_factory=dict)
    displays: dict[ColId, str] = field(default_factory=dict)
    spellings: dict[str, str] = field(default_factory=dict)  # identity -> first spelling
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # identity of name -> definition
    step_values: dict[str, Any] = field(default_factory=dict)  # identity -> latest written value
    aggs: dict[str, _Agg] = field(default_factory=dict)
    explicit_summary: dict[str, tuple[str, Any]] = field(default_factory=dict)  # identity -> (key, value)
    config: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    last_step: int | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created_at: float | None = None
    updated_at: float | None = None
    # Key identities logged with more than one kind (derived from ``displays``; not persisted).
    multi_kind: set[str] = field(default_factory=set)
    # Column id of each key spelling by kind (a cache, not persisted): rows waiting for their commit share these
    # tuples and strings instead of holding a fresh casefolded copy of every key of every call.
    colid_cache: dict[str, dict[str, ColId]] = field(default_factory=dict, repr=False, compare=False)
    # Output since the last take(); not part of the persisted state.
    out_rows: list[Row | RowBatch] = field(default_factory=list)
    out_rejections: list[Rejection] = field(default_factory=list)

    # --- events --------------------------------------------------------------------------------------------

    def check_seq(self, producer: str, seq: int, n: int) -> int:
        """How many leading events of a frame to skip as already applied (``n`` = all: a duplicate frame)."""
        nxt = self.producers.get(producer)
        if nxt is None:
            if seq != 0:
                self.warn(f"producer {producer}: first frame seen has seq {seq}; events 0..{seq - 1} are missing")
            self.producers[producer] = seq + n
            return 0
        if seq + n <= nxt:
            return n
        if seq < nxt:
            self.producers[producer] = seq + n
            return nxt - seq
        if seq > nxt:
            self.warn(f"producer {producer}: events {nxt}..{seq - 1} are missing (lost or trimmed before commit)")
        self.producers[producer] = seq + n
        return 0

    def apply(self, event: Any) -> None:
        if isinstance(event, LogBlock):
            self.apply_block(event)
        elif isinstance(event, Log):
            self.apply_log(event.ts, event.data, event.step, event.commit)
        elif isinstance(event, Start):
            self.apply_start(event)
        elif isinstance(event, DefineMetric):
            self.apply_define_metric(event)
        elif isinstance(event, Config):
            self.config.update(event.data)
        elif isinstance(event, Summary):
            for k, v in event.data.items():
                if v is None:
                    self.explicit_summary.pop(key_ident(k), None)
                else:
                    self.explicit_summary[key_ident(k)] = (k, v)
        elif isinstance(event, Finish):
            self._touch(event.ts)
            if self.pending_has_user():
                self._write(self.cursor)
                self.cursor += 1
            self.state = "finished" if event.exit_code == 0 else "crashed"
            self.exit_code = event.exit_code
        else:  # pragma: no cover - decode_frame only yields the kinds above
            raise TypeError(f"unknown event {type(event).__name__}")

    def apply_start(self, event: Start) -> None:
        if self.start_ts is None:
            self.start_ts = event.ts
        elif event.resume is None and self.state != "running":
            self.warn("run started again without resume: history continues from the current step")
        self._touch(event.ts)
        self.state = "running"
        self.exit_code = None
        if event.name:
            self.name = event.name
        self.config.update(event.config)

    def apply_define_metric(self, event: DefineMetric) -> None:
        self.metrics[key_ident(event.name)] = {
            "name": event.name,
            "step_metric": event.step_metric,
            "summary": event.summary,
            "hidden": event.hidden,
            "goal": event.goal,
            "step_sync": event.step_sync,
        }

    def apply_block(self, block: LogBlock) -> None:
        """Apply a block of log calls; column-wise when the block allows it, else call by call.

        The fast path covers the common shapes (every call with an explicit step and ``commit`` None, or every call
        with ``commit=True``, or no steps at all) over columns of one kind each. It first applies calls one by one
        until the pending row holds exactly the block's columns (or nothing), then computes acceptance, rows and
        summaries with numpy. Both paths give identical rows, rejections and state (a property test holds them
        to it).
        """
        n = len(block.step)
        ts_arr = np.asarray(block.ts, dtype=np.float64)
        mode = _block_mode(block)
        kinds = [_column_kind(c) for c in block.cols] if mode is not None else []
        if mode is None or n < 4 or any(k is None for k in kinds):
            self._apply_block_slow(block, 0, n, ts_arr.tolist())
            return
        colids = [self._colid(k, str(kind)) for k, kind in zip(block.keys, kinds, strict=True)]
        if len({ident for ident, _ in colids}) != len(colids):  # "a" and "A" in one call: per-call merge rules
            self._apply_block_slow(block, 0, n, ts_arr.tolist())
            return
        want = set(colids)
        if mode == "step" and self._continue_steps(block, colids, want, ts_arr):
            return
        ts_list = ts_arr.tolist()
        i = 0
        while i < n:
            self._apply_block_slow(block, i, i + 1, ts_list)
            i += 1
            if mode == "step" and self.pending.keys() == want and self.cursor == block.step[i - 1]:
                self._fast_steps(block, colids, ts_arr, i - 1)
                return
            if mode != "step" and not self.pending:
                self._fast_commits(block, colids, ts_arr, i, mode)
                return

    def _continue_steps(self, block: LogBlock, colids: list[ColId], want: set[ColId],
                        ts: np.ndarray[Any, Any]) -> bool:
        """The usual next block of a steady run: its first call does exactly what :meth:`apply_log` would (write
        the pending row when the step moves on, then hold the call), so do that without building the call's dict,
        and go column-wise from call 0. Only when every key is a known column under the same spelling, so the
        per-call merge would raise no warning and create no column."""
        step0, c = block.step[0], self.cursor
        if step0 is None or step0 < c or (step0 == c and self.pending and self.pending.keys() != want):
            return False
        displays = self.displays
        if not all(displays.get(col) == key for col, key in zip(colids, block.keys, strict=True)):
            return False
        self._touch(float(ts[0]))
        if step0 > c:
            if self.pending:
                self._write(c)
            self.cursor = step0
        self._fast_steps(block, colids, ts, 0)
        return True

    def _apply_block_slow(self, block: LogBlock, lo: int, hi: int, ts: list[float]) -> None:
        keys = block.keys
        cols = [c[lo:hi].tolist() if isinstance(c, np.ndarray) else c[lo:hi] for c in block.cols]
        for i in range(hi - lo):
            self.apply_log(ts[lo + i], {k: cols[j][i] for j, k in enumerate(keys)}, block.step[lo + i],
                           block.commit[lo + i])

    def _fast_steps(self, block: LogBlock, colids: list[ColId], ts: np.ndarray[Any, Any], k: int) -> None:
        """Explicit steps, ``commit`` None; call ``k`` is accepted and is exactly the pending row."""
        steps = np.asarray(block.step[k:], dtype=np.int64)
        m = len(steps)
        prev_max = np.maximum.accumulate(steps)
        thr = np.empty(m, dtype=np.int64)
        thr[0] = steps[0]
        thr[1:] = np.maximum(prev_max[:-1], self.cursor)
        acc = steps >= thr
        self._reject_fast(block, k, acc, thr, ts)
        idx = np.flatnonzero(acc)
        acc_steps = steps[idx]
        last_of_group = np.ones(len(idx), dtype=bool)
        last_of_group[:-1] = acc_steps[:-1] != acc_steps[1:]
        group_last = idx[last_of_group]
        written, pend = group_last[:-1], int(group_last[-1])
        self._touch(float(ts[k + int(idx[-1])]))
        if len(written):
            self.pending = {}
            self._write_batch(steps[written], ts[k:][written], block, colids, k + written)
        row = k + pend
        self.pending = {c: _item(block.cols[j], row) for j, c in enumerate(colids)}
        self.pending_ts = float(ts[row])
        self.cursor = int(steps[pend])

    def _fast_commits(self, block: LogBlock, colids: list[ColId], ts: np.ndarray[Any, Any], k: int,
                      mode: str) -> None:
        """Calls ``k:`` each write their own row (``commit=True`` with steps, or no steps); pending is empty."""
        m = len(block.step) - k
        if m <= 0:
            return
        if mode == "nostep":
            steps = self.cursor + np.arange(m, dtype=np.int64)
            acc = np.ones(m, dtype=bool)
        else:
            steps = np.asarray(block.step[k:], dtype=np.int64)
            thr = np.empty(m, dtype=np.int64)
            thr[0] = self.cursor
            thr[1:] = np.maximum(np.maximum.accumulate(steps)[:-1] + 1, self.cursor)
            acc = steps >= thr
            self._reject_fast(block, k, acc, thr, ts)
        idx = np.flatnonzero(acc)
        if not len(idx):
            return
        self._touch(float(ts[k + int(idx[0])]))
        self._touch(float(ts[k + int(idx[-1])]))
        self._write_batch(steps[idx], ts[k:][idx], block, colids, k + idx)
        self.cursor = int(steps[idx[-1]]) + 1

    def _reject_fast(self, block: LogBlock, k: int, acc: np.ndarray[Any, Any], thr: np.ndarray[Any, Any],
                     ts: np.ndarray[Any, Any]) -> None:
        for j in np.flatnonzero(~acc).tolist():
            step, c = int(block.step[k + j]), int(thr[j])  # type: ignore[arg-type]
            self.reject("non_monotonic_step", step, c, float(ts[k + j]),
                        f"step {step} is lower than the run's current step {c}: the whole call is rejected")

    def _write_batch(self, steps: np.ndarray[Any, Any], ts: np.ndarray[Any, Any], block: LogBlock,
                     colids: list[ColId], rows: np.ndarray[Any, Any]) -> None:
        """Write rows ``rows`` of the block at ``steps``: the column-wise twin of :meth:`_write`.

        The summaries of every numeric array column are computed together on one (rows x columns) matrix, so a
        small block costs a handful of numpy calls rather than a dozen per column.
        """
        n = len(rows)
        # Accepted calls are usually consecutive: a slice is a view, fancy indexing a copy.
        lo = int(rows[0])
        take: slice | np.ndarray[Any, Any] = slice(lo, lo + n) if int(rows[-1]) - lo + 1 == n else rows
        values: dict[ColId, np.ndarray[Any, Any] | list[Any]] = {}
        numeric: list[tuple[_Agg, np.ndarray[Any, Any]]] = []
        aggs = self.aggs
        for j, col in enumerate(colids):
            src = block.cols[j]
            v = src[take] if isinstance(src, np.ndarray) else [src[r] for r in rows.tolist()]
            values[col] = v
            ident, kind = col
            agg = aggs.get(ident)
            if agg is None:
                agg = aggs[ident] = _Agg()
            if not agg.has_first:
                agg.first, agg.has_first = _item(v, 0), True
            agg.last = _item(v, n - 1)
            if kind == NUMBER:
                if isinstance(v, np.ndarray):
                    numeric.append((agg, v))
                else:
                    _summarize_all([agg], np.asarray(v, dtype=np.float64)[:, None])
            self.explicit_summary.pop(ident, None)
        if numeric:
            mat = np.empty((n, len(numeric)), dtype=np.float64)
            for k, (_, v) in enumerate(numeric):
                mat[:, k] = v
            _summarize_all([a for a, _ in numeric], mat)
        if self.metrics:
            self._step_sync(values, n)
        start = self.start_ts if self.start_ts is not None else float(ts[0])
        self.out_rows.append(RowBatch(steps=steps, ts=ts, runtime=ts - start, values=values))
        self.rows += n
        self.last_step = int(steps[-1])

    def apply_log(self, ts: float, data: dict[str, Any], step: int | None, commit: bool | None) -> None:
        c = self.cursor
        if step is not None and step < c:
            self.reject("non_monotonic_step", step, c, ts,
                        f"step {step} is lower than the run's current step {c}: the whole call is rejected")
            return
        self._touch(ts)
        if step is None:
            self._merge(ts, data)
            if commit is not False:
                self._write(c)
                self.cursor = c + 1
            return
        if step > c:
            if self.pending_has_user():
                self._write(c)
            self.cursor = step
        self._merge(ts, data)
        if commit is True:
            self._write(step)
            self.cursor = step + 1

    # --- internals ---------------------------------------------------------------------------------------------

    def _touch(self, ts: float) -> None:
        if self.start_ts is None:
            self.start_ts = ts
        if self.created_at is None:
            self.created_at = ts
        self.updated_at = ts

    def pending_has_user(self) -> bool:
        return bool(self.pending)

    def _merge(self, ts: float, data: dict[str, Any]) -> None:
        pending = self.pending
        for key, value in data.items():
            kind = kind_of(value)
            if kind is None:  # None logs nothing (W&B shows no point either)
                continue
            col = self._colid(key, kind)
            ident = col[0]
            display = self.displays.get(col)
            if display is None:
                self._new_column(key, ident, kind)
            elif display != key:  # a known column under another spelling: keep the first, record it
                self.warn(f"key {key!r} differs from {display!r} only by case: both are stored as {display!r}")
            if ident in self.multi_kind:  # per leaf, last write wins: drop this key's value of another kind
                for other in KINDS:
                    if other != kind:
                        pending.pop((ident, other), None)
            pending[col] = value
        self.pending_ts = ts

    def _colid(self, key: str, kind: str) -> ColId:
        by_kind = self.colid_cache.get(key)
        if by_kind is None:
            by_kind = self.colid_cache[key] = {}
        col = by_kind.get(kind)
        if col is None:
            col = by_kind[kind] = (key_ident(key), kind)
        return col

    def _new_column(self, key: str, ident: str, kind: str) -> None:
        first = self.spellings.get(ident)
        if first is None:
            self.spellings[ident] = key
            first = key
        elif first != key:
            self.warn(f"key {key!r} differs from {first!r} only by case: both are stored as {first!r}")
        other_kinds = sorted(k for (i, k) in self.displays if i == ident)
        if other_kinds:
            self.multi_kind.add(ident)
            self.warn(f"key {first!r} logged as {kind} and as {', '.join(other_kinds)}: one column per kind")
        self.displays[(ident, kind)] = first

    def _metric_for(self, ident: str) -> dict[str, Any] | None:
        exact = self.metrics.get(ident)
        if exact is not None:
            return exact
        best: dict[str, Any] | None = None
        best_len = -1
        for name_ident, definition in self.metrics.items():
            if name_ident.endswith("*"):
                prefix = name_ident[:-1]
                if ident.startswith(prefix) and len(prefix) > best_len:
                    best, best_len = definition, len(prefix)
        return best

    def _write(self, step: int) -> None:
        values = self.pending
        self.pending = {}
        ts = self.pending_ts if self.pending_ts is not None else (self.updated_at or 0.0)
        self.pending_ts = None
        start = self.start_ts if self.start_ts is not None else ts
        # Summaries and step metrics see only what was logged, not the step_sync fill-ins below.
        for (ident, kind), v in values.items():
            agg = self.aggs.get(ident)
            if agg is None:
                agg = self.aggs[ident] = _Agg()
            if not agg.has_first:
                agg.first, agg.has_first = v, True
            agg.last = v
            if kind == NUMBER and not (isinstance(v, float) and math.isnan(v)):
                fv = float(v)
                agg.min = fv if agg.min is None or fv < agg.min else agg.min
                agg.max = fv if agg.max is None or fv > agg.max else agg.max
                agg.total += fv
                agg.count += 1
            self.explicit_summary.pop(ident, None)
        if self.metrics:
            self._step_sync(values)
        self.out_rows.append(Row(step=step, ts=ts, runtime=ts - start, values=values))
        self.rows += 1
        self.last_step = step

    def _step_sync(self, values: dict[ColId, Any], m: int | None = None) -> None:
        """Remember the latest value of step metrics and fill in ``step_sync`` metrics' missing step metric.

        ``values`` is one row (``m`` None) or ``m`` rows column-wise (a fill-in is then a constant column: within
        a block every row has the same keys, so the latest value of an absent step metric cannot change).
        """
        present = {ident for ident, _ in values}
        for ident, kind in list(values):
            if kind == NUMBER and any(
                d.get("step_metric") and key_ident(d["step_metric"]) == ident for d in self.metrics.values()
            ):
                v = values[(ident, kind)]
                self.step_values[ident] = v if m is None else _item(v, m - 1)
        for ident in list(present):
            definition = self._metric_for(ident)
            if definition is None or not definition["step_metric"] or not definition["step_sync"]:
                continue
            sm = key_ident(definition["step_metric"])
            if sm in present or sm not in self.step_values:
                continue
            col = (sm, NUMBER)
            if col not in self.displays:
                self._new_column(definition["step_metric"], sm, NUMBER)
            latest = self.step_values[sm]
            values[col] = latest if m is None else [latest] * m
            present.add(sm)

    def reject(self, reason: str, step: int | None, cursor: int | None, ts: float | None, message: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.out_rejections.append(Rejection(reason, step, cursor, message, ts))

    def warn(self, message: str) -> None:
        if message not in self.warnings and len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)

    def take(self) -> tuple[list[Row], list[Rejection]]:
        """Rows and rejections produced since the last take, rows expanded one by one."""
        rows, rej = self.take_columnar()
        return expand(rows), rej

    def take_columnar(self) -> tuple[list[Row | RowBatch], list[Rejection]]:
        """Like :meth:`take`, keeping the fast path's row batches column-wise (what the segment writer wants)."""
        rows, rej = self.out_rows, self.out_rejections
        self.out_rows, self.out_rejections = [], []
        return rows, rej

    # --- summary and info -------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ident, agg in self.aggs.items():
            display = self.spellings.get(ident, ident)
            definition = self._metric_for(ident)
            spec = definition.get("summary") if definition else None
            modes = [m.strip() for m in spec.split(",") if m.strip()] if spec else ["last"]
            if "none" in modes:
                continue
            if modes == ["last"]:
                out[display] = agg.last
                continue
            val: dict[str, Any] = {}
            for m in modes:
                if m == "last":
                    val["last"] = agg.last
                elif m == "first":
                    val["first"] = agg.first
                elif m == "min" and agg.min is not None:
                    val["min"] = agg.min
                elif m == "max" and agg.max is not None:
                    val["max"] = agg.max
                elif m == "mean" and agg.count:
                    val["mean"] = agg.total / agg.count
            out[display] = val
        for _ident, (key, v) in self.explicit_summary.items():
            out[self.spellings.get(key_ident(key), key)] = v
        return out

    def columns(self) -> list[dict[str, Any]]:
        from schemas.store import column_info

        return [column_info(display, kind) for (_ident, kind), display in self.displays.items()]

    def conflicts(self) -> list[str]:
        kinds: dict[str, int] = {}
        for ident, _kind in self.displays:
            kinds[ident] = kinds.get(ident, 0) + 1
        return sorted(self.spellings.get(i, i) for i, n in kinds.items() if n > 1)

    def info(self) -> dict[str, Any]:
        """What readers see of the run (``runs.info``)."""
        return {
            "config": self.config,
            "summary": self.summary(),
            "columns": self.columns(),
            "conflicts": self.conflicts(),
            "warnings": list(self.warnings),
            "rejected": dict(self.rejected),
            "metrics": list(self.metrics.values()),
            "start_ts": self.start_ts,
            "exit_code": self.exit_code,
            "cursor": self.cursor,
        }

    # --- persistence ------------------------------------------------------------------------------------------

    def dump(self) -> bytes:
        return packb({
            "cursor": self.cursor,
            "pending": [[i, k, v] for (i, k), v in self.pending.items()],
            "pending_ts": self.pending_ts,
            "start_ts": self.start_ts,
            "state": self.state,
            "exit_code": self.exit_code,
            "name": self.name,
            "producers": self.producers,
            "displays": [[i, k, d] for (i, k), d in self.displays.items()],
            "spellings": self.spellings,
            "metrics": self.metrics,
            "step_values": self.step_values,
            "aggs": {i: [a.first, a.has_first, a.last, a.min, a.max, a.total, a.count] for i, a in self.aggs.items()},
            "explicit_summary": {i: [k, v] for i, (k, v) in self.explicit_summary.items()},
            "config": self.config,
            "rows": self.rows,
            "last_step": self.last_step,
            "rejected": self.rejected,
            "warnings": self.warnings,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })

    @classmethod
    def load(cls, blob: bytes) -> RunAligner:
        d = unpackb(blob)
        r = cls(
            cursor=d["cursor"],
            pending={(i, k): v for i, k, v in d["pending"]},
            pending_ts=d["pending_ts"],
            start_ts=d["start_ts"],
            state=d["state"],
            exit_code=d["exit_code"],
            name=d["name"],
            producers=d["producers"],
            displays={(i, k): disp for i, k, disp in d["displays"]},
            spellings=d["spellings"],
            metrics=d["metrics"],
            step_values=d["step_values"],
            aggs={i: _Agg(*a) for i, a in d["aggs"].items()},
            explicit_summary={i: (kv[0], kv[1]) for i, kv in d["explicit_summary"].items()},
            config=d["config"],
            rows=d["rows"],
            last_step=d["last_step"],
            rejected=d["rejected"],
            warnings=d["warnings"],
            created_at=d["created_at"],
            updated_at=d["updated_at"],
        )
        idents = [i for i, _k in r.displays]
        r.multi_kind = {i for i in idents if idents.count(i) > 1}
        return r


def _item(col: Any, i: int) -> Any:
    """Element ``i`` of a column as a Python value (what the per-call path would hold)."""
    v = col[i]
    return v.item() if isinstance(v, np.generic) else v


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


def _summarize_all(aggs: list[_Agg], mat: np.ndarray[Any, Any]) -> None:
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
