"""W&B's run filter language, compiled to SQL over the metadata database (``sl_runs``).

::

    api.runs("team/proj", filters={"$and": [{"config.lr": {"$gt": 0.01}}, {"state": "finished"}]},
             order="-summary_metrics.val_loss")

Fields: ``config.<path>`` (``config.lr``, ``config.model.depth``; W&B's ``config.lr.value`` is accepted as
``config.lr``), ``summary_metrics.<path>`` (also ``summary.<path>``), ``state``, ``created_at``, ``updated_at``,
``name`` (the run id, as in W&B), ``display_name``, ``group``, ``job_type``, ``tags``, ``notes``, ``rows``,
``rejected`` (rejected calls), ``last_step`` (camelCase spellings are accepted too). A path is split on ``.``.

Operators: ``$and``, ``$or`` (a list of filters), ``$not`` (a filter), and per field ``$eq``, ``$ne``, ``$gt``,
``$gte``, ``$lt``, ``$lte``, ``$in``, ``$nin``, ``$regex``, ``$exists``; ``{"field": value}`` is ``$eq``, and several
operators on one field all apply. Semantics (the same on SQLite and PostgreSQL):

- A comparison compares values of the operand's kind only: ``{"config.lr": {"$gt": 0.01}}`` matches numbers
  (ints and floats alike) above 0.01, never a string or a bool; strings compare by code point.
- ``$eq: null`` matches a missing or null value; ``$ne`` and ``$nin`` match runs without the field (MongoDB's
  rule); ``$exists: true`` matches runs that have the field (even null).
- ``tags``: ``{"tags": "x"}`` (or ``$eq``) — the run has tag x; ``$ne`` — it has not; ``$in`` — any of the list;
  ``$nin`` — none of them; ``$regex`` — some tag matches; ``$exists`` — the run has any tag.
- ``$regex`` is a regular expression searched in the text (PostgreSQL's ``~``, SQLite's REGEXP = Python's ``re``;
  they agree on the common syntax: classes, anchors, alternation, repetition).
- ``created_at``/``updated_at`` compare with epoch seconds or ISO 8601 strings (``"2026-12-01T00:00:00Z"``).

Ordering: ``order`` is a field with ``+`` (ascending, the default) or ``-`` (descending); on JSON fields numbers
sort before strings, then the runs with neither (bools, lists, objects, null, or no value) newest first; ties
newest first. A malformed filter raises :class:`~history.query.QueryError` naming the operator or field.

Indexes: ``(project, created_at)`` and ``(project, group_name)`` on both databases, GIN (``jsonb_path_ops``)
on config, summary and tags on PostgreSQL, which an ``$eq`` there uses (compiled to containment ``@>``), and
``sl_run_values`` (:mod:`schemas.run_values`): every number and string leaf of config and summary as plain columns,
indexed by ``(project, src, path, num)`` and ``(project, src, path, str)``. An order on a JSON field is three
:class:`Section` s (the numbers, joined with it and walking its num index; the strings, walking its str index;
then the rest), so an ordered first page reads about as many index entries as it takes to find ``per_page``
matches, each match tested against the filter on the run's own row. A filter that few runs pass walks far
(``tags``/``$eq`` on PostgreSQL may start from their GIN index instead). ``len()`` is a COUNT: every run of the
project the cheapest index leaves is tested against the filter, so it grows with the project (hundreds of ms at
100,000 runs: bench/runs_query.py).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    ColumnElement,
    Float,
    String,
    and_,
    case,
    cast,
    column,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.selectable import Join

from schemas import SteplineError
from schemas.run_values import CONFIG, SUMMARY, leaf_path, run_values
from schemas.store import runs

__all__ = ["FIELDS", "FilterError", "Section", "compile_filters", "compile_order"]


class FilterError(SteplineError, ValueError):
    """A malformed filter or order (:class:`history.query.QueryError` is raised in its place)."""


#: Plain fields: name -> column. camelCase spellings of W&B's GraphQL fields map to the same columns.
_COLUMNS: dict[str, Any] = {
    "state": runs.c.state,
    "created_at": runs.c.created_at,
    "updated_at": runs.c.updated_at,
    "name": runs.c.run,  # W&B: "name" is the run id; the display name is "display_name"
    "id": runs.c.run,
    "display_name": runs.c.name,
    "group": runs.c.group_name,
    "job_type": runs.c.job_type,
    "notes": runs.c.notes,
    "rows": runs.c.rows,
    "rejected": runs.c.rejected,  # rejected calls (the sum of the run's counts by reason)
    "last_step": runs.c.last_step,
}
_ALIASES = {"createdAt": "created_at", "updatedAt": "updated_at", "displayName": "display_name",
            "jobType": "job_type", "lastStep": "last_step", "summaryMetrics": "summary_metrics"}
_TIMES = frozenset({"created_at", "updated_at"})
_NUMBERS = frozenset({"created_at", "updated_at", "rows", "rejected", "last_step"})
FIELDS = (*_COLUMNS, "tags", "config.<path>", "summary_metrics.<path>")
_CMP = {"$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__", "$lte": "__le__"}
_FIELD_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$regex", "$exists"})
_MAX_DEPTH = 32
_MAX_PATTERN = 1000


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return "string"


@dataclass(frozen=True)
class _Json:
    """A value inside a JSON column (config or summary) at ``path``, for one dialect."""

    col: Any
    path: tuple[str, ...]
    pg: bool

    @property
    def src(self) -> int:
        return CONFIG if self.col is runs.c.config else SUMMARY

    def side(self, *conds: Any) -> Any:
        """A correlated EXISTS over the run's rows of ``sl_run_values`` at this path (its primary key)."""
        v = run_values.alias()
        return exists(select(literal(1)).select_from(v).where(
            v.c.project == runs.c.project, v.c.run == runs.c.run, v.c.src == self.src,
            v.c.path == leaf_path(self.path), *(c(v) for c in conds)))

    def collated(self, expr: Any) -> Any:
        return expr.collate("C") if self.pg else expr

    def _sqlite_path(self) -> str:
        return "$" + "".join('."' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in self.path)

    def raw(self) -> Any:
        if self.pg:
            return self.col.op("#>", return_type=JSONB)(literal(list(self.path), type_=_text_array()))
        return func.json_extract(self.col, self._sqlite_path())

    def type_(self) -> Any:
        """SQLite: integer/real/text/true/false/null/object/array; PostgreSQL: number/string/boolean/..."""
        if self.pg:
            return func.jsonb_typeof(self.raw())
        return func.json_type(self.col, self._sqlite_path())

    def number(self) -> Any:
        if self.pg:
            return case((self.type_() == "number", cast(self.raw(), Float)))
        return case((self.type_().in_(["integer", "real"]), self.raw()))

    def text(self) -> Any:
        if self.pg:
            path = literal(list(self.path), type_=_text_array())
            return case((self.type_() == "string", self.col.op("#>>", return_type=String)(path)))
        return case((self.type_() == "text", self.raw()))

    def boolean(self, b: bool) -> Any:
        if self.pg:
            return and_(self.type_() == "boolean", self.raw() == literal(b, type_=JSONB))
        return self.type_() == ("true" if b else "false")

    def missing(self) -> Any:
        return or_(self.type_().is_(None), self.type_() == "null")

    def present(self) -> Any:
        return self.type_().is_not(None)


def _text_array() -> Any:
    return ARRAY(String)


def _yes(expr: Any) -> Any:
    """Two-valued: NULL (a missing value compared) is false, so ``$not``/``$ne``/``$nin`` may negate it."""
    return func.coalesce(expr, false(), type_=Boolean)


class _Compiler:
    def __init__(self, pg: bool) -> None:
        self.pg = pg

    # --- fields ----------------------------------------------------------------------------------------------

    def field(self, name: str) -> tuple[str, Any]:
        """``("column", col)``, ``("json", _Json)`` or ``("tags", None)``; FilterError for an unknown field."""
        if not isinstance(name, str) or not name:
            raise FilterError(f"a filter field must be a non-empty string, got {name!r:.60}")
        head, _, rest = name.partition(".")
        head = _ALIASES.get(head, head)
        if head in ("config", "summary_metrics", "summary") and rest:
            path = tuple(rest.split("."))
            if head == "config" and len(path) > 1 and path[-1] == "value":
                path = path[:-1]  # W&B stores config as {"lr": {"value": ...}}; its filters say config.lr.value
            if any(not p for p in path):
                raise FilterError(f"filter field {name!r:.80} has an empty path segment")
            col = runs.c.config if head == "config" else runs.c.summary
            return "json", _Json(col, path, self.pg)
        if rest:
            raise FilterError(f"unknown filter field {name!r:.80}: only config.* and summary_metrics.* have paths")
        if head == "tags":
            return "tags", None
        plain: Any = _COLUMNS.get(head)
        if plain is None:
            raise FilterError(f"unknown filter field {name!r:.80} (known: {', '.join(FIELDS)})")
        return "column", (head, plain)

    # --- filters ---------------------------------------------------------------------------------------------

    def filters(self, f: Any, depth: int = 0) -> ColumnElement[bool]:
        if depth > _MAX_DEPTH:
            raise FilterError(f"filter nested deeper than {_MAX_DEPTH} levels")
        if not isinstance(f, Mapping):
            raise FilterError(f"a filter must be an object, got {type(f).__name__}")
        parts: list[ColumnElement[bool]] = []
        for key, value in f.items():
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{key} takes a non-empty list of filters, got {_show(value)}")
                subs = [self.filters(x, depth + 1) for x in value]
                parts.append(and_(*subs) if key == "$and" else or_(*subs))
            elif key == "$not":
                parts.append(not_(_yes(self.filters(value, depth + 1))))
            elif isinstance(key, str) and key.startswith("$"):
                raise FilterError(f"unknown operator {key!r:.40} at the top of a filter "
                                  "(use $and, $or, $not, or a field)")
            else:
                parts.append(self.on_field(key, value))
        if not parts:
            return true()
        return parts[0] if len(parts) == 1 else and_(*parts)

    def on_field(self, name: str, cond: Any) -> ColumnElement[bool]:
        kind, target = self.field(name)
        if isinstance(cond, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in cond):
            ops = list(cond.items())
        else:
            ops = [("$eq", cond)]
        parts = []
        for op, v in ops:
            if op not in _FIELD_OPS:
                raise FilterError(f"unknown operator {op!r:.40} on field {name!r:.80} "
                                  f"(known: {', '.join(sorted(_FIELD_OPS))})")
            # NULL (a missing value compared) is false in WHERE; only negations need it two-valued (_yes), and a
            # bare comparison on a column stays usable by its index.
            parts.append(self.op(kind, target, name, op, v))
        return parts[0] if len(parts) == 1 else and_(*parts)

    def op(self, kind: str, target: Any, name: str, op: str, v: Any) -> Any:
        if op == "$exists":
            if not isinstance(v, bool):
                raise FilterError(f"$exists on {name!r:.80} takes true or false, got {_show(v)}")
            if kind == "tags":
                has = self.tags_any()
            elif kind == "json":
                has = target.present()
            else:
                has = target[1].is_not(None)
            return has if v else not_(_yes(has))
        if op in ("$in", "$nin"):
            if not isinstance(v, list) or not all(_scalar(x) for x in v):
                raise FilterError(f"{op} on {name!r:.80} takes a list of numbers, strings, bools or nulls, "
                                  f"got {_show(v)}")
            anyof = or_(*(self.op(kind, target, name, "$eq", x) for x in v)) if v else false()
            return anyof if op == "$in" else not_(_yes(anyof))
        if op == "$ne":
            return not_(_yes(self.op(kind, target, name, "$eq", v)))
        if op == "$regex":
            if not isinstance(v, str):
                raise FilterError(f"$regex on {name!r:.80} takes a string, got {_show(v)}")
            if len(v) > _MAX_PATTERN:
                raise FilterError(f"$regex on {name!r:.80}: the pattern is longer than {_MAX_PATTERN} characters")
            try:
                re.compile(v)
            except re.error as e:
                raise FilterError(f"$regex on {name!r:.80}: bad pattern {v!r:.80}: {e}") from None
            if kind == "tags":
                return self.tags_where(lambda t: t.regexp_match(v))
            text = target.text() if kind == "json" else target[1]
            if kind == "column" and target[0] in _NUMBERS:
                raise FilterError(f"$regex on {name!r:.80}: the field is a number")
            return text.regexp_match(v)
        # $eq and the comparisons
        if not _scalar(v) or (isinstance(v, float) and not math.isfinite(v)):
            raise FilterError(f"{op} on {name!r:.80} takes a finite number, a string, a bool or null, got {_show(v)}")
        if kind == "tags":
            if op != "$eq" or not isinstance(v, str):
                raise FilterError(f"tags take $eq/$ne/$in/$nin with strings, $regex or $exists; got {op} {_show(v)}")
            return self.tags_has(v)
        if kind == "column":
            return self.column_op(target, name, op, v)
        return self.json_op(target, name, op, v)

    def column_op(self, target: tuple[str, Any], name: str, op: str, v: Any) -> Any:
        field, col = target
        if field in _TIMES and isinstance(v, str):
            v = _epoch(v, name)
        if v is None:
            if op != "$eq":
                raise FilterError(f"{op} on {name!r:.80} cannot compare with null")
            return col.is_(None)
        numeric = field in _NUMBERS
        if isinstance(v, bool) or numeric != isinstance(v, int | float):
            want = "a number" + (" or an ISO 8601 time" if field in _TIMES else "") if numeric else "a string"
            raise FilterError(f"{op} on {name!r:.80} takes {want}, got {_show(v)}")
        if op == "$eq":
            return col == v
        if not numeric and self.pg:
            col = col.collate("C")  # code point order, as SQLite's BINARY
        return getattr(col, _CMP[op])(v)

    def json_op(self, j: _Json, name: str, op: str, v: Any) -> Any:
        k = _kind(v)
        if k == "null":
            if op != "$eq":
                raise FilterError(f"{op} on {name!r:.80} cannot compare with null")
            return j.missing()
        if k == "bool":
            if op != "$eq":
                raise FilterError(f"{op} on {name!r:.80} cannot order bools (use $eq or $ne)")
            return j.boolean(v)
        if op == "$eq" and self.pg:
            # Containment uses the GIN index; jsonb compares numbers by value (1 == 1.0), as SQLite does.
            doc: Any = v
            for p in reversed(j.path):
                doc = {p: doc}
            return j.col.op("@>", is_comparison=True)(literal(doc, type_=JSONB))
        # A comparison reads the run's JSON, not sl_run_values: measured (bench/runs_query.py), probing the
        # index per run costs more than reading the JSON the query holds anyway, and an EXISTS on it led
        # PostgreSQL's planner to worse plans for $or and COUNT; the index serves orders (Section).
        expr = j.number() if k == "number" else j.text()
        if k == "string" and self.pg:
            expr = expr.collate("C")
        if op == "$eq":
            return expr == v
        return getattr(expr, _CMP[op])(v)

    # --- tags (a JSON array of strings) ----------------------------------------------------------------------

    def tags_has(self, tag: str) -> Any:
        if self.pg:
            return runs.c.tags.op("@>", is_comparison=True)(literal([tag], type_=JSONB))
        return self.tags_where(lambda t: t == tag)

    def tags_where(self, pred: Callable[[Any], Any]) -> Any:
        fn = func.jsonb_array_elements_text if self.pg else func.json_each
        each = fn(runs.c.tags).table_valued(column("value", String)).alias("tag")
        return exists(select(literal(1)).select_from(each).where(pred(each.c.value)))

    def tags_any(self) -> Any:
        if self.pg:
            return and_(runs.c.tags.is_not(None), func.jsonb_array_length(runs.c.tags) > 0)
        return and_(runs.c.tags.is_not(None), func.json_array_length(runs.c.tags) > 0)

    # --- order -----------------------------------------------------------------------------------------------

    def order(self, order: Any) -> list[Section]:
        if not isinstance(order, str) or not order.strip("+-"):
            raise FilterError(f"order must be a field name with an optional + or - prefix, got {_show(order)}")
        desc = order.startswith("-")
        name = order.lstrip("+-")
        kind, target = self.field(name)
        if kind == "tags":
            raise FilterError("runs cannot be ordered by tags")

        def way(k: Any) -> Any:
            return k.desc() if desc else k.asc()

        newest = [runs.c.created_at.desc(), runs.c.run]
        if kind == "column" and target[0] == "created_at":
            # The (project, created_at) index gives this order; created_at is never null (a run's first event
            # sets it), so no NULLS LAST that would keep PostgreSQL from scanning the index backwards.
            return [Section(runs, None, [way(runs.c.created_at), runs.c.run])]
        if kind == "column":
            return [Section(runs, None, [way(target[1]).nulls_last(), *newest])]
        # A JSON field: numbers, then strings, then the rest (bools, lists, objects, null, missing) newest first,
        # as three sections paged one after the other. The first two join sl_run_values and walk its (project,
        # src, path, num|str) index in order, so a first page stops after per_page matches.
        j: _Json = target
        o = run_values.alias("ord")

        def on(present: Any) -> Any:
            return and_(o.c.project == runs.c.project, o.c.run == runs.c.run, o.c.src == j.src,
                        o.c.path == leaf_path(j.path), present.is_not(None))

        # Two long strings with the same indexed prefix: their whole values decide (case: NULL for the rest).
        whole = case((o.c.kind == "S", j.collated(j.text())))
        return [
            Section(_Walk(o, runs, on(o.c.num)), None, [way(o.c.num), *newest]),
            Section(_Walk(o, runs, on(o.c.str)), None, [way(j.collated(o.c.str)), way(whole), *newest]),
            Section(runs, not_(j.side(lambda t: t.c.kind.in_(["n", "s", "S"]))), newest),
        ]


class _Walk(Join):
    """``ord JOIN sl_runs``, read in that order: SQLite's planner (no histograms) would rather read every run of
    the project and sort them than walk the value index in order, which a first page of an ordered query needs
    (CROSS JOIN is how SQLite is told the order of a join); PostgreSQL plans it from its statistics."""

    inherit_cache = True


@compiles(_Walk, "sqlite")
def _walk_sqlite(join: _Walk, compiler: Any, **kw: Any) -> str:
    # "<ord> JOIN <sl_runs> ON ...": the left side is a plain aliased table, so its first " JOIN " is the join's.
    return str(compiler.visit_join(join, **kw)).replace(" JOIN ", " CROSS JOIN ", 1)


@dataclass(frozen=True)
class Section:
    """One part of an order: the runs of ``source`` (``sl_runs``, or it joined with ``sl_run_values`` as
    ``ord``), also filtered by ``where`` when set, sorted by ``order_by``. A query's runs are its sections' runs
    one after the other."""

    source: Any
    where: Any | None
    order_by: list[Any]


def _epoch(s: str, name: str) -> float:
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{name!r:.80} takes epoch seconds or an ISO 8601 time, got {s!r:.60}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _show(v: Any) -> str:
    return f"{type(v).__name__} {v!r:.60}"


def compile_filters(filters: Mapping[str, Any] | None, dialect: str) -> ColumnElement[bool]:
    """The WHERE clause of ``filters`` for ``dialect`` (``sqlite`` or ``postgresql``); FilterError if malformed."""
    if filters is None:
        return true()
    return _Compiler(dialect == "postgresql").filters(filters)


def compile_order(order: str, dialect: str) -> list[Section]:
    """The sections of ``order`` (``"-summary_metrics.loss"``), ties broken newest first, then by run id."""
    return _Compiler(dialect == "postgresql").order(order)

