"""The step aligner: W&B's logging semantics (docs/DESIGN.md §2), one run at a time, deterministically.

Guarantees:

- :meth:`RunAligner.apply` implements the table of docs/DESIGN.md §2 exactly: a call with a step lower than the
  cursor is rejected whole (``non_monotonic_step``, with the step it tried and the cursor), never partly applied.
- Processing is a pure function of (state, events): the same events applied to the same state give the same rows,
  rejections and state, so replay, redelivery after a crash and a fenced zombie converge to identical history.
- A block of calls (:class:`LogBlock`) gives exactly what its calls give one by one; :mod:`workers.fastpath` applies
  the common shapes column-wise. The state round-trips through :meth:`RunAligner.dump` / :meth:`RunAligner.load`
  (msgpack, :mod:`workers.runstate`), which is what a commit stores next to the partition offset.

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
    ClientWarning,
    Config,
    DefineMetric,
    Finish,
    Log,
    LogBlock,
    Start,
    Summary,
    key_ident,
    kind_of,
)
from schemas.frame import MAX_STEP, RunMeta
from schemas.values import NUMBER

from . import fastpath
from .fastpath import column_item
from .runstate import Agg, ColId, RunState

__all__ = ["MAX_WARNINGS", "ColId", "Rejection", "Row", "RowBatch", "RunAligner", "expand"]

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


@dataclass
class RunAligner(RunState):
    """A run's state (:class:`RunState`, what a commit saves) with the rules of docs/DESIGN.md §2 that move it on,
    and what it produced since the last :meth:`take`."""

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
            self.touch(event.ts)
            if self.pending_has_user():
                self.write_pending(self.cursor)
                self.cursor += 1
            self.state = "finished" if event.exit_code == 0 else "crashed"
            self.exit_code = event.exit_code
        elif isinstance(event, ClientWarning):
            self.warn(f"client: {event.message}")
        elif isinstance(event, RunMeta):
            self.meta.update(event.data)
        else:  # pragma: no cover - decode_frame only yields the kinds above
            raise TypeError(f"unknown event {type(event).__name__}")

    def apply_start(self, event: Start) -> None:
        if self.start_ts is None:
            self.start_ts = event.ts
        elif event.resume is None and self.state != "running":
            self.warn("run started again without resume: history continues from the current step")
        self.touch(event.ts)
        self.state = "running"
        self.exit_code = None
        if event.name:
            self.name = event.name
        self.config.update(event.config)
        self.meta.update(event.meta)

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
        """Apply a block of log calls: column-wise when the block allows it (:mod:`workers.fastpath`), else call
        by call. Both give identical rows, rejections and state (a property test holds them to it)."""
        fastpath.apply_block(self, block)

    def apply_log(self, ts: float, data: dict[str, Any], step: int | None, commit: bool | None) -> None:
        c = self.cursor
        if step is not None and step < c:
            self.reject("non_monotonic_step", step, c, ts,
                        f"step {step} is lower than the run's current step {c}: the whole call is rejected")
            return
        if step is None and c > MAX_STEP:
            # After log(d, step=2**63 - 1, commit=True) the cursor is 2**63, where a call without a step would be
            # written; ``_step`` is int64, so the segment writer would refuse the whole commit. Refusing it here
            # covers every path (single calls, and blocks applied call by call).
            self.reject("bad_step", None, c, ts,
                        f"the run's cursor is {c}: a call without a step would be written past the last step a "
                        f"segment holds ({MAX_STEP})")
            return
        self.touch(ts)
        if step is None:
            self._merge(ts, data)
            if commit is not False:
                self.write_pending(c)
                self.cursor = c + 1
            return
        if step > c:
            if self.pending_has_user():
                self.write_pending(c)
            self.cursor = step
        self._merge(ts, data)
        if commit is True:
            self.write_pending(step)
            self.cursor = step + 1

    # --- internals (touch, colid, write_pending and emit_batch have public names: workers.fastpath calls them) ---

    def touch(self, ts: float) -> None:
        """Record activity at client time ``ts`` (run start, creation and last update)."""
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
            col = self.colid(key, kind)
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

    def colid(self, key: str, kind: str) -> ColId:
        """The column of ``key`` logged as ``kind``, one shared tuple per spelling and kind."""
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

    def write_pending(self, step: int) -> None:
        """Write the pending row at ``step`` (summaries, step metrics, output) and start an empty one."""
        values = self.pending
        self.pending = {}
        ts = self.pending_ts if self.pending_ts is not None else (self.updated_at or 0.0)
        self.pending_ts = None
        start = self.start_ts if self.start_ts is not None else ts
        # Summaries and step metrics see only what was logged, not the step_sync fill-ins below.
        for (ident, kind), v in values.items():
            agg = self.aggs.get(ident)
            if agg is None:
                agg = self.aggs[ident] = Agg()
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

    def emit_batch(self, steps: np.ndarray[Any, Any], ts: np.ndarray[Any, Any],
                   values: dict[ColId, np.ndarray[Any, Any] | list[Any]]) -> None:
        """Emit rows at ``steps`` column-wise, their summaries already folded in by the fast path: the end of
        :meth:`write_pending` for a whole batch (step metrics, the output, the row count)."""
        n = len(steps)
        if self.metrics:
            self._step_sync(values, n)
        start = self.start_ts if self.start_ts is not None else float(ts[0])
        self.out_rows.append(RowBatch(steps=steps, ts=ts, runtime=ts - start, values=values))
        self.rows += n
        self.last_step = int(steps[-1])

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
                self.step_values[ident] = v if m is None else column_item(v, m - 1)
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
            "group": self.meta.get("group"),
            "job_type": self.meta.get("job_type"),
            "tags": list(self.meta.get("tags") or []),
            "notes": self.meta.get("notes"),
            "cursor": self.cursor,
        }
