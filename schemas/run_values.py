"""An index of runs' config and summary values: ``sl_run_values``, one row per number or string leaf.

Ordering runs by a JSON key (``history.filters``) cannot use an index on the JSON columns of ``sl_runs`` (SQLite
has none on JSON paths; PostgreSQL's GIN serves containment only), so every such query read, parsed and sorted
every run of the project. This side table holds the same values as plain, indexed columns:

- ``(project, run, src, path)`` is the key: ``src`` 0 for config, 1 for summary; ``path`` the leaf's path of
  keys through nested objects as a compact JSON array (``["model","depth"]``), unambiguous whatever the keys hold.
- ``kind`` ``n``: a number (``num``, a float, NULL for every other kind; ints past 2**53 lose precision here, as
  in PostgreSQL's own cast); ``s``: a string of at most :data:`STR_PREFIX` code points (``str`` holds it); ``S``:
  a longer string, ``str`` its first :data:`STR_PREFIX` code points (index entries stay small: PostgreSQL's b-tree
  refuses entries past ~2.7 kB). Comparing prefixes orders strings as comparing them does, except between two
  long strings with the same prefix, which readers break with the full value.
- Bools, nulls, lists and objects have no row (an order puts those runs after the strings).
- Indexes ``(project, src, path, num)`` and ``(project, src, path, str)`` (PostgreSQL: ``str COLLATE "C"``, code
  point order as SQLite's BINARY), created by ``workers.migrations``: an ordered first page walks one of them and
  stops after a page of matches.

The worker maintains it in the transaction that upserts the run (``workers.metastore``), from the same JSON
values it writes to ``sl_runs.config``/``summary`` (:func:`schemas.store.json_safe`), so the index never disagrees
with the JSON columns it mirrors.
"""

from __future__ import annotations

import json
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
    update,
)

from .store import metadata

__all__ = ["CONFIG", "STR_PREFIX", "SUMMARY", "create_run_values", "leaf_path", "run_values", "value_rows",
           "write_values"]

CONFIG: Final = 0
SUMMARY: Final = 1
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


def value_rows(config: Any, summary: Any) -> dict[tuple[int, str], tuple[str, float | None, str | None]]:
    """The index rows of a run's JSON config and summary (as :func:`schemas.store.json_safe` gives them):
    ``(src, path) -> (kind, num, str)`` for every number and string leaf."""
    out: dict[tuple[int, str], tuple[str, float | None, str | None]] = {}
    for src, doc in ((CONFIG, config), (SUMMARY, summary)):
        for path, v in _leaves(doc, ()):
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, int | float):
                out[(src, leaf_path(path))] = ("n", float(v), None)
            elif isinstance(v, str):
                out[(src, leaf_path(path))] = ("s", None, v) if len(v) <= STR_PREFIX else ("S", None, v[:STR_PREFIX])
    return out


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
    """Bring the run's index rows to ``rows`` (:func:`value_rows`) in the caller's transaction: only what
    changed is written (a config that stays the same costs one read). ``fresh``: the run has no rows yet (its
    first upsert), nothing to read. Returns how many rows were written or deleted."""
    have: Rows = {}
    if not fresh:
        q = select(run_values.c.src, run_values.c.path, run_values.c.kind, run_values.c.num, run_values.c.str).where(
            run_values.c.project == project, run_values.c.run == run)
        have = {(r.src, r.path): (r.kind, r.num, r.str) for r in conn.execute(q)}
    gone = [k for k in have if k not in rows]
    new = [k for k in rows if k not in have]
    changed = [k for k in rows if k in have and have[k] != rows[k]]
    if gone:
        conn.execute(delete(run_values).where(
            run_values.c.project == project, run_values.c.run == run,
            run_values.c.src == _bind("src"), run_values.c.path == _bind("path")),
            [{"b_src": s, "b_path": p} for s, p in gone])
    if changed:
        conn.execute(update(run_values).where(
            run_values.c.project == project, run_values.c.run == run,
            run_values.c.src == _bind("src"), run_values.c.path == _bind("path"),
        ).values(kind=_bind("kind"), num=_bind("num"), str=_bind("str")),
            [{"b_src": k[0], "b_path": k[1], "b_kind": rows[k][0], "b_num": rows[k][1], "b_str": rows[k][2]}
             for k in changed])
    if new:
        conn.execute(insert(run_values), [
            {"project": project, "run": run, "src": k[0], "path": k[1], "kind": rows[k][0], "num": rows[k][1],
             "str": rows[k][2]} for k in new])
    return len(gone) + len(new) + len(changed)


def _bind(name: str) -> Any:
    return bindparam("b_" + name)
