"""W&B's run filter language, compiled to SQL over the metadata database (``sl_runs``).

::

    api.runs("team/proj", filters={"$and": [{"config.lr": {"$gt": 0.01}}, {"state": "finished"}]},
             order="-summary_metrics.val_loss")

Fields: ``config.<path>`` (``config.lr``, ``config.model.depth``; W&B's ``config.lr.value`` is accepted as
``config.lr``), ``summary_metrics.<path>`` (also ``summary.<path>``), ``state``, ``created_at``, ``updated_at``,
``name`` (the run id, as in W&B), ``display_name``, ``group``, ``job_type``, ``tags``, ``notes``, ``rows``,
``last_step`` (camelCase spellings are accepted too). A path is split on ``.``.

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
sort before strings, runs without a value last (bools, lists and objects: after the strings, in an order that may
differ between the databases), ties newest first. A malformed filter raises
:class:`~history.query.QueryError` naming the operator or field.

Indexes: ``(project, created_at)`` and ``(project, group_name)`` on both databases, GIN (``jsonb_path_ops``)
on config, summary and tags on PostgreSQL, which an ``$eq`` there uses (compiled to containment ``@>``).
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

from schemas import SteplineError
from schemas.store import runs

__all__ = ["FIELDS", "FilterError", "compile_filters", "compile_order"]


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
    "last_step": runs.c.last_step,
}
_ALIASES = {"createdAt": "created_at", "updatedAt": "updated_at", "displayName": "display_name",
            "jobType": "job_type", "lastStep": "last_step", "summaryMetrics": "summary_metrics"}
_TIMES = frozenset({"created_at", "updated_at"})
_NUMBERS = frozenset({"created_at", "updated_at", "rows", "last_step"})
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

    def order(self, order: Any) -> list[Any]:
        if not isinstance(order, str) or not order.strip("+-"):
            raise FilterError(f"order must be a field name with an optional + or - prefix, got {_show(order)}")
        desc = order.startswith("-")
        name = order.lstrip("+-")
        kind, target = self.field(name)
        if kind == "tags":
            raise FilterError("runs cannot be ordered by tags")
        if kind == "column" and target[0] == "created_at":
            # The (project, created_at) index gives this order; created_at is never null (a run's first event
            # sets it), so no NULLS LAST that would keep PostgreSQL from scanning the index backwards.
            return [runs.c.created_at.desc() if desc else runs.c.created_at.asc(), runs.c.run]
        if kind == "column":
            keys = [target[1]]
        elif self.pg:
            keys = [target.number(), target.text().collate("C")]
        else:
            # Numbers, then text, then the rest; within a group SQLite's own order (numbers by value, text by
            # code point): two JSON parses per row instead of four.
            raw = target.raw()
            group = case((func.typeof(raw).in_(["integer", "real"]), 0), (func.typeof(raw) == "text", 1), else_=2)
            return [group.asc(), raw.desc() if desc else raw.asc(), runs.c.created_at.desc(), runs.c.run]
        out = [(k.desc() if desc else k.asc()).nulls_last() for k in keys]
        return [*out, runs.c.created_at.desc(), runs.c.run]


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


def compile_order(order: str, dialect: str) -> list[Any]:
    """ORDER BY terms for ``order`` (``"-summary_metrics.loss"``), ties broken newest first, then by run id."""
    return _Compiler(dialect == "postgresql").order(order)

