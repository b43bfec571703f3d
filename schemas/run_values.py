"""An index of runs' config and summary values: ``sl_run_values``, one row per number or string leaf.

Ordering runs by a JSON key (``history.filters``) cannot use an index on the JSON columns of ``sl_runs`` (SQLite
has none on JSON paths; PostgreSQL's GIN serves containment only), so every such query read, parsed and sorted
every run of the project. This side table holds the same values as plain, indexed columns:

- ``(project, run, src, path)`` is the key: ``src`` 0 for config, 1 for summary; ``path`` the leaf's path of
  keys through nested objects as a compact JSON array (``["model","depth"]``), unambiguous whatever the keys hold.
- ``kind`` ``n``: a number (``num``, a float, NULL for every other kind; ints past 2**53 lose precision here, as
  in PostgreSQL's own cast). ±inf are numbers here (``num`` ±Infinity, which both databases order below and
  above every finite float), although the JSON columns hold them as the strings ``"Infinity"``/``"-Infinity"``
  (JSON has no infinity): the run's exact values (``info``) tell them from a string logged with that text, which
  stays a string. NaN (null in the JSON) has no row, as a missing value. ``s``: a string of at most
  :data:`STR_PREFIX` code points (``str`` holds it); ``S``: a longer string, ``str`` its first :data:`STR_PREFIX`
  code points (index entries stay small: PostgreSQL's b-tree refuses entries past ~2.7 kB). Comparing prefixes
  orders strings as comparing them does, except between two long strings with the same prefix, which readers
  break with the full value.
- Bools, nulls, lists and objects have no row (an order puts those runs after the strings).
- ``src`` 2 (:data:`TAGS`): one row per tag of the run, ``path`` the tag as a one-element JSON array, ``kind``
  ``t``, ``num`` and ``str`` NULL: ``(project, src, path)`` finds the runs with a tag through the num index
  (a filter's candidates, ``history.filters``; SQLite has no index on a JSON array's elements).
- Indexes ``(project, src, path, num)`` and ``(project, src, path, str)`` (PostgreSQL: ``str COLLATE "C"``, code
  point order as SQLite's BINARY), created by ``workers.migrations``: an ordered first page walks one of them and
  stops after a page of matches.

The worker maintains it in the transaction that upserts the run (``workers.metastore``), from the same JSON
values it writes to ``sl_runs.config``/``summary`` (:func:`schemas.store.json_safe`), so the index never disagrees
with the JSON columns it mirrors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, Final

from sqlalchemy import (
    Column,
    Connection,
    Float,
    SmallInteger,
    String,
    Table,
    Text,
    bindparam,
    delete,
    insert,
    select,
    text,
    tuple_,
)

from .store import json_safe, metadata

__all__ = ["CONFIG", "INFINITIES", "STR_PREFIX", "SUMMARY", "TAGS", "create_run_values", "leaf_path", "run_values",
           "value_rows", "write_values", "write_values_many"]

CONFIG: Final = 0
SUMMARY: Final = 1
TAGS: Final = 2
#: Strings up to this many code points are indexed whole (at most 2 kB of UTF-8 in an index entry).
STR_PREFIX: Final = 500

run_values = Table(
    "sl_run_values",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("run", String(128), primary_key=True),
    Column("src", SmallInteger, primary_key=True),
    Column("path", Text, primary_key=True),
    Column("kind", String(1), nullable=False),
    Column("num", Float),
    Column("str", Text),
    # SQLite: the table is its primary key's b-tree, so the secondary indexes hold (project, run, src, path) and
    # an index walk has the run's id without visiting the table.
    sqlite_with_rowid=False,
)


def leaf_path(path: tuple[str, ...] | list[str]) -> str:
    """The ``path`` column's spelling of a path of keys."""
    return json.dumps(list(path), ensure_ascii=False, separators=(",", ":"))


def _leaves(v: Any, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _leaves(x, (*prefix, str(k)))
    elif prefix:
        yield prefix, v


#: How :func:`schemas.store.json_safe` spells ±inf in JSON, and the float each stands for.
INFINITIES: Final = {"Infinity": math.inf, "-Infinity": -math.inf}
_MISSING = object()


def _raw_at(doc: Any, path: tuple[str, ...]) -> Any:
    """The exact value at a JSON ``path`` (keys as :func:`schemas.store.json_safe` spells them) of a run's
    config or summary as logged, or ``_MISSING``."""
    for p in path:
        if not isinstance(doc, dict):
            return _MISSING
        if p in doc:
            doc = doc[p]
            continue
        doc = next((x for k, x in doc.items() if json_safe(str(k)) == p), _MISSING)
        if doc is _MISSING:
            return _MISSING
    return doc


def value_rows(config: Any, summary: Any, tags: Any = None, *, exact: tuple[Any, Any] | None = None
               ) -> dict[tuple[int, str], tuple[str, float | None, str | None]]:
    """The index rows of a run's JSON config and summary (as :func:`schemas.store.json_safe` gives them) and of
    its tags: ``(src, path) -> (kind, num, str)`` for every number and string leaf and every tag. ``exact``: the
    same config and summary as logged (``info``), which tell a float ±inf (a number row at ±Infinity) from a
    string logged as ``"Infinity"``; without it both are strings."""
    out: dict[tuple[int, str], tuple[str, float | None, str | None]] = {}
    for tag in tags or ():
        if isinstance(tag, str):
            out[(TAGS, leaf_path([tag]))] = ("t", None, None)
    for i, (src, doc) in enumerate(((CONFIG, config), (SUMMARY, summary))):
        for path, v in _leaves(doc, ()):
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, int | float):
                out[(src, leaf_path(path))] = ("n", float(v), None)
            elif isinstance(v, str) and v in INFINITIES and exact is not None and _is_inf(_raw_at(exact[i], path), v):
                out[(src, leaf_path(path))] = ("n", INFINITIES[v], None)
            elif isinstance(v, str):
                out[(src, leaf_path(path))] = ("s", None, v) if len(v) <= STR_PREFIX else ("S", None, v[:STR_PREFIX])
    return out


def _is_inf(raw: Any, spelled: str) -> bool:
    """Whether a logged value that JSON spells ``spelled`` is a float infinity (a float or numpy float), not text."""
    return raw is not _MISSING and not isinstance(raw, str) and json_safe(raw) == spelled


def create_run_values(conn: Connection) -> None:
    """Create the table and its two indexes (the migration's step)."""
    run_values.create(conn, checkfirst=True)
    str_key = 'str COLLATE "C"' if conn.dialect.name == "postgresql" else "str"
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_sl_run_values_num ON {run_values.name} "
                      "(project, src, path, num)"))
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_sl_run_values_str ON {run_values.name} "
                      f"(project, src, path, {str_key})"))


Rows = dict[tuple[int, str], tuple[str, float | None, str | None]]


def write_values(conn: Connection, project: str, run: str, rows: Rows, *, fresh: bool) -> int:
    """Bring one run's index rows to ``rows`` (:func:`value_rows`); see :func:`write_values_many`."""
    return write_values_many(conn, [(project, run, rows, fresh)])


#: ``(project, run, rows, fresh)``: a run's new index rows; ``fresh``: it has none yet (its first upsert).
Item = tuple[str, str, Rows, bool]
#: Runs (keys, rows) one statement names: bound parameters stay well under SQLite's limit of 32766.
_READ_BATCH = 500


def write_values_many(conn: Connection, items: list[Item]) -> int:
    """Bring the index rows of every run in ``items`` to its new rows, in the caller's transaction: only what
    changed is written. The stored rows of all runs are read in one SELECT (per :data:`_READ_BATCH` runs) and the
    changes of all runs go in one executemany per kind of change, so a commit of many live runs costs a handful of
    round trips, not a few per run. Returns how many rows were written or deleted."""
    have: dict[tuple[str, str], Rows] = {}
    old = [(project, run) for project, run, _rows, fresh in items if not fresh]
    for i in range(0, len(old), _READ_BATCH):
        q = select(run_values.c.project, run_values.c.run, run_values.c.src, run_values.c.path, run_values.c.kind,
                   run_values.c.num, run_values.c.str).where(
            tuple_(run_values.c.project, run_values.c.run).in_(old[i:i + _READ_BATCH]))
        for r in conn.execute(q):
            have.setdefault((r.project, r.run), {})[(r.src, r.path)] = (r.kind, r.num, r.str)
    gone: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    for project, run, rows, _fresh in items:
        had = have.get((project, run), {})
        key = {"b_project": project, "b_run": run}
        gone += [{**key, "b_src": k[0], "b_path": k[1]} for k in had if k not in rows]
        for k, (kind, num, s) in rows.items():
            if k not in had:
                new.append({"project": project, "run": run, "src": k[0], "path": k[1], "kind": kind, "num": num,
                            "str": s})
            elif had[k] != (kind, num, s):
                changed.append({**key, "b_src": k[0], "b_path": k[1], "b_kind": kind, "b_num": num, "b_str": s})
    # A changed row is deleted and inserted again: a DELETE of a list of keys and one executemany INSERT instead of
    # an UPDATE per row (measured, a commit of 50 runs x 20 new summary values: the index's cost on PostgreSQL
    # went from +256..382 ms per row-by-row run to +140; a multi-row VALUES statement was slower still, its
    # compilation is not cached).
    drop = [(d["b_project"], d["b_run"], d["b_src"], d["b_path"]) for d in (*gone, *changed)]
    whole_key = tuple_(run_values.c.project, run_values.c.run, run_values.c.src, run_values.c.path)
    for i in range(0, len(drop), _READ_BATCH):
        conn.execute(delete(run_values).where(whole_key.in_(drop[i:i + _READ_BATCH])))
    put = new + [{"project": d["b_project"], "run": d["b_run"], "src": d["b_src"], "path": d["b_path"],
                  "kind": d["b_kind"], "num": d["b_num"], "str": d["b_str"]} for d in changed]
    if put:
        conn.execute(insert(run_values), put)
    return len(gone) + len(new) + len(changed)


def _bind(name: str) -> Any:
    return bindparam("b_" + name)
