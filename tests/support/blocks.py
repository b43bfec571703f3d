"""``logs`` blocks as the SDK sends them, and which of them the aligner's column-wise fast path must take.

Written from docs/DESIGN.md §4 and ``ingest/batch.py``'s encoding rules, not from ``workers.fastpath``, so tests can
hold the fast path to them:

- a block is consecutive ``log()`` calls with the same keys in the same order; a column is a float64 array when
  every value is a ``float``, an int64 array when every value is an ``int`` (never a ``bool``), else a list;
- the worker aligns a block column-wise when it has at least 4 calls, one shape (every call with an explicit step
  and ``commit`` None, or every call with ``commit=True``, or no steps at all with ``commit`` all None or all True),
  one kind per column and keys distinct case-insensitively (:func:`fast_eligible`); whether it gets there from
  the block's first call depends on the run's cursor and pending row (:func:`must_go_fast`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas import Log, LogBlock
from support.history_oracle import Oracle
from workers.align import RunAligner


def sdk_column(values: list[Any]) -> Any:
    """One column as ``ingest.batch`` encodes it."""
    types = set(map(type, values))
    if types == {float}:
        return np.array(values, dtype=np.float64)
    if types == {int}:
        return np.array(values, dtype=np.int64)
    return list(values)


def block_of(calls: list[Log]) -> LogBlock:
    """Consecutive calls with the same keys as one block, encoded like the SDK does."""
    keys = list(calls[0].data)
    assert all(list(c.data) == keys for c in calls), "a block's calls have the same keys in the same order"
    return LogBlock(keys=keys, ts=np.array([c.ts for c in calls], dtype=np.float64), step=[c.step for c in calls],
                    commit=[c.commit for c in calls], cols=[sdk_column([c.data[k] for c in calls]) for k in keys])


def shape_of(steps: list[Any], commits: list[Any]) -> str | None:
    """The block's one shape: ``step`` (explicit steps, commit None), ``commit`` (explicit steps, commit True),
    ``nostep`` (no steps, commit all None or all True); None when the calls differ."""
    if all(s is not None for s in steps):
        if all(c is None for c in commits):
            return "step"
        if all(c is True for c in commits):
            return "commit"
        return None
    if all(s is None for s in steps) and (all(c is None for c in commits) or all(c is True for c in commits)):
        return "nostep"
    return None


def column_kind(col: Any) -> str | None:
    """The one kind of a column as the SDK encodes it (numbers as float64/int64 arrays), else None."""
    if isinstance(col, np.ndarray):
        return "number" if col.dtype in (np.float64, np.int64) else None
    if col and all(type(v) is str for v in col):
        return "string"
    if col and all(type(v) is bool for v in col):
        return "bool"
    return None


def fast_eligible(b: LogBlock) -> bool:
    """At least 4 calls, one shape, one kind per column, keys distinct case-insensitively."""
    return (len(b) >= 4 and shape_of(b.step, b.commit) is not None
            and all(column_kind(c) is not None for c in b.cols)
            and len({k.casefold() for k in b.keys}) == len(b.keys))


def must_go_fast(b: LogBlock, o: Oracle) -> bool:
    """An eligible block whose first call brings the run to "pending row = exactly the block's columns" (or, for
    the shapes that write every call, to an empty pending row), given the run's cursor and pending row before the
    block (``o``: the oracle of the run so far). Such a block hands at most its first call to the per-call path."""
    if not fast_eligible(b):
        return False
    shape = shape_of(b.step, b.commit)
    if shape == "nostep":
        return True
    step0 = b.step[0]
    assert step0 is not None
    pending = {(ident, kind) for ident, (kind, _v) in o.pending.items()}
    if shape == "commit":
        # With nothing pending the block goes column-wise after its first call, unless that call is rejected and
        # left a column unregistered: then it goes call by call until an accepted call registers them.
        # (A key's display is the first spelling of its identity, whatever the kind.)
        known = all((k.casefold(), str(column_kind(c))) in o.columns and o.spellings.get(k.casefold()) == k
                    for k, c in zip(b.keys, b.cols, strict=True))
        return step0 >= o.cursor or (not pending and known)
    cols = {(k.casefold(), column_kind(c)) for k, c in zip(b.keys, b.cols, strict=True)}
    return step0 > o.cursor or (step0 == o.cursor and (not pending or pending == cols))


@dataclass
class Counted:
    """A :class:`RunAligner` whose per-call path counts the calls it is given: the fast path hands a block's leading
    calls (at most one when :func:`must_go_fast`) to :meth:`RunAligner.apply_log` and aligns the rest with numpy,
    the fallback hands it every call. So a block went column-wise exactly when fewer than all its calls got there."""

    al: RunAligner = field(default_factory=RunAligner)
    calls: int = 0

    def __post_init__(self) -> None:
        self._wrap()

    def _wrap(self) -> None:
        per_call = self.al.apply_log

        def counting(ts: float, data: dict[str, Any], step: int | None, commit: bool | None) -> None:
            self.calls += 1
            per_call(ts, data, step, commit)

        self.al.apply_log = counting  # type: ignore[method-assign]

    def reload(self) -> None:
        """Dump and load the state, as the next owner of the partition does after a commit."""
        self.al = RunAligner.load(self.al.dump())
        self._wrap()

    def apply_block(self, block: LogBlock) -> bool:
        """Apply a block; True when it went column-wise."""
        before = self.calls
        self.al.apply(block)
        return self.calls - before < len(block)
