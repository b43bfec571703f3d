"""What a run's aligner saves between commits: the per-run state and its msgpack form for the metadata store.

Guarantees:

- :meth:`RunState.load` of :meth:`RunState.dump` restores every persisted field and rebuilds the derived
  ``multi_kind`` from ``displays``, so the events after a round trip give the same rows, rejections and state as
  without it. A commit stores the blob next to the partition offset; whichever worker owns the partition next
  resumes the run exactly where the commit left it.
- The blob's layout (its keys and list shapes) is the one the metadata store already holds: runs committed by
  earlier versions load unchanged. A change to it must keep loading the blobs already stored.
- Nothing here applies events. The rules that move the state on (docs/DESIGN.md §2) are in :mod:`workers.align`;
  the column-wise fast path for blocks of calls is in :mod:`workers.fastpath`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from schemas import packb, unpackb

ColId = tuple[str, str]  # (key identity, kind): a key logged with two kinds is two columns


@dataclass(slots=True)
class Agg:
    """Summary aggregates of one key identity (NaN skipped for min/max/mean)."""

    first: Any = None
    has_first: bool = False
    last: Any = None
    min: float | None = None
    max: float | None = None
    total: float = 0.0
    count: int = 0


@dataclass
class RunState:
    """The per-run fields the aligner persists, plus ``multi_kind``, which is derived from them on load."""

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
    aggs: dict[str, Agg] = field(default_factory=dict)
    explicit_summary: dict[str, tuple[str, Any]] = field(default_factory=dict)  # identity -> (key, value)
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # group, job_type, tags, notes (schemas.frame.META_FIELDS)
    rows: int = 0
    last_step: int | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created_at: float | None = None
    updated_at: float | None = None
    # Key identities logged with more than one kind: derived from ``displays`` on load, so not persisted.
    multi_kind: set[str] = field(default_factory=set)

    def dump(self) -> bytes:
        # msgpack has no tuple keys: column-keyed dicts travel as lists of [identity, kind, value].
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
            "meta": self.meta,
            "rows": self.rows,
            "last_step": self.last_step,
            "rejected": self.rejected,
            "warnings": self.warnings,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })

    @classmethod
    def load(cls, blob: bytes) -> Self:
        """The state :meth:`dump` wrote, as an instance of ``cls`` (``RunAligner.load`` gives an aligner)."""
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
            aggs={i: Agg(*a) for i, a in d["aggs"].items()},
            explicit_summary={i: (kv[0], kv[1]) for i, kv in d["explicit_summary"].items()},
            config=d["config"],
            meta=d.get("meta") or {},  # blobs committed before run metadata existed have none
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
