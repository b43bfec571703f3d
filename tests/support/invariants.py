"""The reliability invariants, checked against what the store holds (used by ``tests/faults`` and ``bench/chaos.py``).

Given the calls the clients made (one :class:`~history_oracle.Oracle` per run, fed call by call) and the data
directory + metadata store the workers wrote, :func:`check_runs` asserts, per run:

- every accepted call is in history exactly once: the rows equal the oracle's (a missing step is **lost**, a step
  stored twice is **duplicated**, a stored step not after the previous one in segment order is **reordered**, a
  row whose values differ is **mismatched**);
- every rejected call is in ``sl_rejections`` exactly once, with a reason and a message, in call order, and agrees
  with the semantics table (docs/DESIGN.md §2: ``non_monotonic_step`` only when ``step < cursor``);
- no duplicate ``(run, step)`` rows and steps strictly increasing per run (segments do not overlap);
- the run's counters (``rows``, ``rejected``) and its summary (last value per key, W&B's default) agree with the
  history.

Counts rather than a first assertion, so the chaos runner can report ``lost=…, duplicated=…, reordered=…``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from schemas import unpackb
from schemas.store import rejections as rejections_table
from schemas.store import runs as runs_table
from schemas.values import KINDS
from support.history_oracle import Oracle, segment_rows, values_same
from workers.metastore import MetaStore

#: Reason codes a stored rejection may carry: the aligner's, and the schema codes of a malformed event.
KNOWN_REASONS = frozenset({
    "non_monotonic_step", "bad_event", "bad_step", "bad_key", "bad_value", "key_collision", "key_too_long",
    "too_deep", "value_too_large", "event_too_large", "unknown_event", "malformed", "bad_array", "bad_media",
    "bad_ext", "reserved_key",
})


@dataclass
class Violations:
    runs: int = 0
    rows: int = 0
    rejections: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    mismatched: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.mismatched)

    def add(self, other: Violations) -> None:
        for name in ("runs", "rows", "rejections", "lost", "duplicated", "reordered", "mismatched"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.messages.extend(other.messages)

    def note(self, what: str, n: int, message: str) -> None:
        if n:
            setattr(self, what, getattr(self, what) + n)
            if len(self.messages) < 50:
                self.messages.append(message)

    def line(self) -> str:
        return (f"runs={self.runs}, rows={self.rows}, rejections={self.rejections}, lost={self.lost}, "
                f"duplicated={self.duplicated}, reordered={self.reordered}, mismatched={self.mismatched}")

    def assert_ok(self, context: str = "") -> None:
        if not self.ok:
            raise AssertionError(f"{context}{self.line()}\n" + "\n".join(self.messages[:20]))


def stored_rows(data_dir: Path, store: MetaStore, project: str, run: str) -> list[tuple[int, float, dict[str, Any]]]:
    """A run's rows in storage order (segments by ``min_step``, rows in file order): ``(step, ts, values)``."""
    return [(step, ts, values) for step, ts, _runtime, values in segment_rows(data_dir, store, project, run)]


def stored_rejections(store: MetaStore, project: str, run: str) -> list[tuple[str, int | None, int | None, str]]:
    t = rejections_table
    with store.engine.connect() as conn:
        q = select(t.c.reason, t.c.step, t.c.cursor, t.c.message).where(t.c.project == project, t.c.run == run)
        return [(x.reason, x.step, x.cursor, x.message) for x in conn.execute(q.order_by(t.c.id))]


def stored_run(store: MetaStore, project: str, run: str) -> dict[str, Any] | None:
    t = runs_table
    with store.engine.connect() as conn:
        row = conn.execute(select(t.c.rows, t.c.rejected, t.c.info, t.c.state)
                           .where(t.c.project == project, t.c.run == run)).first()
    if row is None:
        return None
    return {"rows": int(row.rows), "rejected": int(row.rejected), "info": unpackb(bytes(row.info)),
            "state": row.state}


def expected_summary(oracle: Oracle) -> dict[str, Any]:
    """W&B's default summary: the last value written of each key (first spelling kept)."""
    last: dict[str, tuple[str, Any]] = {}
    for _step, _ts, _rt, values in oracle.rows:
        for f, v in values.items():
            key, _, kind = f.rpartition(":")
            if not key or kind not in KINDS:
                key = f
            ident = key.casefold()
            display = last[ident][0] if ident in last else oracle.spellings.get(ident, key)
            last[ident] = (display, v)
    return {display: v for display, v in last.values()}


def check_run(data_dir: Path, store: MetaStore, project: str, run: str, oracle: Oracle, *,
              exact_time: bool = True, check_summary: bool = True) -> Violations:
    """Compare one run's stored history, rejections, counters and summary with its oracle."""
    v = Violations(runs=1)
    name = f"{project}/{run}"
    rows = stored_rows(data_dir, store, project, run)
    v.rows = len(rows)
    steps = [s for s, _, _ in rows]
    counts = Counter(steps)
    v.note("duplicated", sum(n - 1 for n in counts.values()), f"{name}: steps stored more than once: "
           f"{sorted(s for s, n in counts.items() if n > 1)[:10]}")
    back = [i for i in range(1, len(steps)) if steps[i] < steps[i - 1]]
    v.note("reordered", len(back), f"{name}: steps go backwards at stored positions {back[:10]}")
    got: dict[int, tuple[float, dict[str, Any]]] = {}
    for s, ts, values in rows:
        got.setdefault(s, (ts, values))
    want = {s: (ts, values) for s, ts, _rt, values in oracle.rows}
    missing = sorted(set(want) - set(got))
    v.note("lost", len(missing), f"{name}: {len(missing)} rows missing, steps {missing[:10]}")
    extra = sorted(set(got) - set(want))
    v.note("mismatched", len(extra), f"{name}: {len(extra)} rows nobody logged, steps {extra[:10]}")
    differ = []
    for s in sorted(set(got) & set(want)):
        (gts, gv), (wts, wv) = got[s], want[s]
        if gv.keys() != wv.keys() or not all(values_same(gv[k], wv[k]) for k in gv) or (
                exact_time and gts != wts):
            differ.append(s)
    v.note("mismatched", len(differ), f"{name}: {len(differ)} rows differ from the calls, steps {differ[:10]}")

    rej = stored_rejections(store, project, run)
    v.rejections = len(rej)
    bad = [r for r in rej if not r[0] or not r[3] or r[0] not in KNOWN_REASONS
           or (r[0] == "non_monotonic_step" and not (r[1] is not None and r[2] is not None and r[1] < r[2]))]
    v.note("mismatched", len(bad), f"{name}: rejections that break the semantics table: {bad[:5]}")
    got_rej: Counter[tuple[str, int | None, int | None]] = Counter(r[:3] for r in rej)
    want_rej: Counter[tuple[str, int | None, int | None]] = Counter(oracle.rejections)
    v.note("lost", sum((want_rej - got_rej).values()), f"{name}: rejections missing: {list(want_rej - got_rej)[:5]}")
    v.note("duplicated", sum((got_rej - want_rej).values()),
           f"{name}: rejections stored but not expected (or twice): {list(got_rej - want_rej)[:5]}")
    if got_rej == want_rej and [r[:3] for r in rej] != oracle.rejections:
        v.note("reordered", 1, f"{name}: rejections stored out of call order")

    meta = stored_run(store, project, run)
    if meta is None:
        if oracle.rows or oracle.rejections:
            v.note("lost", 1, f"{name}: the run is not in the metadata store")
        return v
    if meta["rows"] != len(counts):
        v.note("mismatched", 1, f"{name}: runs.rows = {meta['rows']}, history holds {len(counts)} rows")
    if meta["rejected"] != len(rej):
        v.note("mismatched", 1, f"{name}: runs.rejected = {meta['rejected']}, sl_rejections holds {len(rej)}")
    if check_summary:
        summary = meta["info"].get("summary", {})
        want_summary = expected_summary(oracle)
        wrong = [k for k in want_summary.keys() | summary.keys()
                 if k not in summary or k not in want_summary or not _summary_same(summary[k], want_summary[k])]
        v.note("mismatched", len(wrong), f"{name}: summary disagrees with history on {sorted(wrong)[:10]}")
    return v


def _summary_same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return values_same(a, b)


def check_runs(data_dir: Path, store: MetaStore, oracles: dict[tuple[str, str], Oracle], *,
               exact_time: bool = True, check_summary: bool = True) -> Violations:
    """:func:`check_run` over every run; the sum of their violations."""
    total = Violations()
    for (project, run), oracle in sorted(oracles.items()):
        total.add(check_run(data_dir, store, project, run, oracle, exact_time=exact_time,
                            check_summary=check_summary))
    return total
