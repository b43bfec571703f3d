"""W&B's run filter language, compiled to SQL over the metadata database (``sl_runs``).

::

    api.runs("team/proj", filters={"$and": [{"config.lr": {"$gt": 0.01}}, {"state": "finished"}]},
             order="-summary_metrics.val_loss")

Fields: ``config.<path>`` (``config.lr``, ``config.model.depth``; W&B's ``config.lr.value`` is accepted as
``config.lr``), ``summary_metrics.<path>`` (also ``summary.<path>``), ``state``, ``created_at``, ``updated_at``,
``name`` (the run id, as in W&B), ``display_name``, ``group``, ``job_type``, ``tags``, ``notes``, ``rows``,
``rejected`` (rejected calls), ``last_step``, ``warning_count`` (warnings and keys logged with several kinds),
``column_count`` (keys logged) (camelCase spellings are accepted too). A path is split on ``.``.

Operators: ``$and``, ``$or``, ``$nor`` (a list of filters), ``$not`` (a filter), and per field ``$eq``, ``$ne``,
``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$in``, ``$nin``, ``$regex``, ``$exists``; ``{"field": value}`` is ``$eq``, and
several operators on one field all apply. Semantics (the same on SQLite and PostgreSQL):

- A comparison compares values of the operand's kind only: ``{"config.lr": {"$gt": 0.01}}`` matches numbers
  (ints and floats alike) above 0.01, never a string or a bool; strings compare by code point.
- A float ±inf is a number past every finite one (``$gt``/``$gte`` match +inf, ``$lt``/``$lte`` -inf; operands are
  finite), never a string, although the JSON copy holds it as the text ``"Infinity"``/``"-Infinity"``: a string
  logged with that text stays a string (sl_run_values tells them apart: :meth:`_Json.infinite`). NaN is no
  number: null in the JSON, a missing value.
- ``$eq: null`` matches a missing or null value; ``$ne`` and ``$nin`` match runs without the field (MongoDB's
  rule); ``$exists: true`` matches runs that have the field (even null).
- ``tags``: ``{"tags": "x"}`` (or ``$eq``) — the run has tag x; ``$ne`` — it has not; ``$in`` — any of the list;
  ``$nin`` — none of them; ``$regex`` — some tag matches; ``$exists`` — the run has any tag.
- ``$regex`` is a regular expression in Python's syntax searched in the text (SQLite's REGEXP is Python's ``re``;
  on PostgreSQL, ``~`` with the pattern respelled where its syntax differs: ``\\b``/``\\B`` word boundaries,
  ``{,n}``). POSIX classes (``[[:alpha:]]``) and inline flags other than a leading ``(?i)`` are refused; a
  construct PostgreSQL lacks (a named group) is a QueryError there.
- ``created_at``/``updated_at`` compare with epoch seconds or ISO 8601 strings (``"2026-12-01T00:00:00Z"``).

Ordering: ``order`` is a field with ``+`` (ascending, the default) or ``-`` (descending); on JSON fields numbers
(-inf and +inf at their ends) sort before strings, then the runs with neither (bools, lists, objects, null or NaN,
or no value) newest first; ties newest first. A malformed filter raises :class:`~history.query.QueryError`
naming the operator or field.

Indexes: ``(project, created_at)`` and ``(project, group_name)`` on both databases, GIN (``jsonb_path_ops``)
on config, summary and tags on PostgreSQL, which an ``$eq`` there uses (compiled to containment ``@>``), and
``sl_run_values`` (:mod:`schemas.run_values`): every number and string leaf of config and summary, and every tag,
as plain columns, indexed by ``(project, src, path, num)`` and ``(project, src, path, str)``.

How a query reads them:

- **Candidates.** The conditions that imply a match and that an index answers (:meth:`_Compiler.candidates`:
  ``$eq``/``$in``/comparisons with a number or string on ``config.*``/``summary_metrics.*``, a tag's ``$eq``/
  ``$in``, and on ``group``, ``name``, ``created_at``; every conjunct of the filter and every branch of an
  ``$or``) are read first, at most ``Runs.CANDIDATES + 1`` index entries each (:func:`resolve_candidates`). When
  they name at most that many runs (the intersection of the conjuncts read), the query reads only those runs by
  key, tests each against the whole filter and sorts them: a filter that few runs pass costs about as much as it
  has candidates, whatever the project's size. The index holds numbers as floats and strings by a 500 code point
  prefix, so candidates are a superset (a strict comparison reads as non-strict); the filter itself decides.
- **Walk.** Otherwise an order on a JSON field is three :class:`Section` s (the numbers, joined with it and walking
  its num index; the strings, walking its str index; then the rest), so an ordered first page reads about as many
  index entries as it takes to find ``per_page`` matches, each tested against the filter on the run's own row:
  cheap when many runs match, which is when candidates are too many to read.
- ``len()`` is a COUNT: of the candidates when they were few, else of every run of the project the cheapest index
  leaves, tested against the filter (hundreds of ms at 100,000 runs: bench/runs_query.py).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    ColumnElement,
    Connection,
    Numeric,
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
    null,
    or_,
    select,
    true,
    tuple_,
    union,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.selectable import Join

from schemas import SteplineError
from schemas.run_values import CONFIG, INFINITIES, STR_PREFIX, SUMMARY, TAGS, leaf_path, run_values
from schemas.store import json_safe, runs

__all__ = ["FIELDS", "Candidates", "FilterError", "Section", "compile_candidates", "compile_filters",
           "compile_order", "resolve_candidates"]


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
    "warning_count": runs.c.warning_count,  # warnings and keys logged with several kinds
    "column_count": runs.c.column_count,  # keys logged
}
_ALIASES = {"createdAt": "created_at", "updatedAt": "updated_at", "displayName": "display_name",
            "jobType": "job_type", "lastStep": "last_step", "summaryMetrics": "summary_metrics",
            "warningCount": "warning_count", "columnCount": "column_count"}
_TIMES = frozenset({"created_at", "updated_at"})
_NUMBERS = frozenset({"created_at", "updated_at", "rows", "rejected", "last_step", "warning_count", "column_count"})
FIELDS = (*_COLUMNS, "tags", "config.<path>", "summary_metrics.<path>")
_CMP = {"$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__", "$lte": "__le__"}
_FIELD_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$regex", "$exists"})
_MAX_DEPTH = 32
#: Plain fields with an index on (project, field): their conditions give a filter's candidates.
_INDEXED = frozenset({"created_at", "name", "id", "group"})
_MAX_PATTERN = 1000


def _operand(v: Any, op: str, name: str) -> Any:
    """A scalar operand as the store holds values (:func:`schemas.store.json_safe`, which wrote the JSON columns
    and sl_run_values): NUL and lone surrogates in a string escaped (PostgreSQL refuses them, so a stored string
    holds them escaped), an int past int64 a float (as a stored one); FilterError if no float holds it."""
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
        try:
            float(v)
        except OverflowError:
            raise FilterError(f"{op} on {name!r:.80}: {v!r:.40}... is too large to compare with any number") from None
    return json_safe(v)


def _ops(cond: Any) -> list[tuple[Any, Any]]:
    """A field's condition as ``(operator, operand)`` pairs: ``{"$gt": 1, "$lt": 2}`` as it is, a bare value as
    ``$eq`` (shared by the filter's SQL and its candidates, so both read a condition alike)."""
    if isinstance(cond, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in cond):
        return list(cond.items())
    return [("$eq", cond)]


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
    project: str | None = None  # the query's project, when known: the index reads of infinite() seek it

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
            # numeric, not float8: an int past 2**53 compares exactly, as SQLite compares its integers.
            return case((self.type_() == "number", cast(self.raw(), Numeric)))
        return case((self.type_().in_(["integer", "real"]), self.raw()))

    def _text(self) -> Any:
        """The value's text, whatever a string of the JSON stands for."""
        if self.pg:
            path = literal(list(self.path), type_=_text_array())
            return case((self.type_() == "string", self.col.op("#>>", return_type=String)(path)))
        return case((self.type_() == "text", self.raw()))

    def text(self) -> Any:
        """The value if it is a string: not a float ±inf, which the JSON spells as a string too."""
        return case((self.infinite(), null()), else_=self._text())

    def infinite(self, spelling: str | None = None) -> Any:
        """Whether the value is a float infinity (``spelling``: that one, ``"Infinity"`` or ``"-Infinity"``);
        never NULL. The JSON holds it as that text, as it holds a string logged with that text; sl_run_values tells
        them apart: a number (±Infinity) there. The runs with one at the path are one uncorrelated read of its num
        index (made once per query, and only if a value has that text: a CASE's branches are evaluated lazily).
        Not a correlated EXISTS per run: PostgreSQL costs that as a probe per run of the project, and the COUNT
        of a range filter lost its parallel scan and paid JIT compilation (bench/runs_query.py at 100,000 runs:
        69 -> 264 ms)."""
        spellings = list(INFINITIES) if spelling is None else [spelling]
        # One extraction per run: a jsonb comparison; SQLite's json_extract gives a JSON string as text, and no
        # number equals a text there.
        if self.pg:
            spelled = or_(*(self.raw() == literal(x, type_=JSONB) for x in spellings))
        else:
            spelled = self.raw().in_(spellings)
        v = run_values.alias()
        nums = [INFINITIES[spelling]] if spelling is not None else list(INFINITIES.values())
        mine = [] if self.project is None else [v.c.project == self.project]
        flagged = tuple_(runs.c.project, runs.c.run).in_(select(v.c.project, v.c.run).where(
            *mine, v.c.src == self.src, v.c.path == leaf_path(self.path), v.c.num.in_(nums)))
        return case((spelled, flagged), else_=false())

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
    def __init__(self, pg: bool, project: str | None = None) -> None:
        self.pg = pg
        self.project = project

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
            return "json", _Json(col, path, self.pg, self.project)
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
            if key in ("$and", "$or", "$nor"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{key} takes a non-empty list of filters, got {_show(value)}")
                subs = [self.filters(x, depth + 1) for x in value]
                parts.append(and_(*subs) if key == "$and" else or_(*subs) if key == "$or"
                             else not_(_yes(or_(*subs))))
            elif key == "$not":
                parts.append(not_(_yes(self.filters(value, depth + 1))))
            elif isinstance(key, str) and key.startswith("$"):
                raise FilterError(f"unknown operator {key!r:.40} at the top of a filter "
                                  "(use $and, $or, $nor, $not, or a field)")
            else:
                parts.append(self.on_field(key, value))
        if not parts:
            return true()
        return parts[0] if len(parts) == 1 else and_(*parts)

    def on_field(self, name: str, cond: Any) -> ColumnElement[bool]:
        kind, target = self.field(name)
        ops = _ops(cond)
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
            if v != json_safe(v):
                raise FilterError(f"$regex on {name!r:.80}: a pattern cannot hold NUL or a lone surrogate "
                                  "(stored text holds them escaped: match the escape, e.g. \\\\x00)")
            v = _pattern(v, name, self.pg)
            if kind == "tags":
                return self.tags_where(lambda t: t.regexp_match(v))
            text = target.text() if kind == "json" else target[1]
            if kind == "column" and target[0] in _NUMBERS:
                raise FilterError(f"$regex on {name!r:.80}: the field is a number")
            return text.regexp_match(v)
        # $eq and the comparisons
        if not _scalar(v) or (isinstance(v, float) and not math.isfinite(v)):
            raise FilterError(f"{op} on {name!r:.80} takes a finite number, a string, a bool or null, got {_show(v)}")
        v = _operand(v, op, name)
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
            contains = j.col.op("@>", is_comparison=True)(literal(doc, type_=JSONB))
            # The text "Infinity" is also how the JSON holds a float +inf, which no string equals.
            return and_(contains, not_(j.infinite(v))) if v in INFINITIES else contains
        # A comparison reads the run's JSON, not sl_run_values: measured (bench/runs_query.py), probing the
        # index per run costs more than reading the JSON the query holds anyway, and an EXISTS on it led
        # PostgreSQL's planner to worse plans for $or and COUNT. The index serves orders (Section) and narrows
        # a filter to its candidates (candidates()).
        expr = j.number() if k == "number" else j.text()
        if k == "string" and self.pg:
            expr = expr.collate("C")
        if k == "number" and self.pg:
            # As numeric: a float by its shortest spelling (0.05 is JSON's 0.05, not the binary double's
            # expansion), an int exactly.
            v = literal(decimal.Decimal(repr(v) if isinstance(v, float) else v), Numeric())
        if op == "$eq":
            return expr == v
        cmp = getattr(expr, _CMP[op])(v)
        if k == "number":
            # A float ±inf (text in the JSON) is a number past every finite one: above any operand of $gt/$gte,
            # below any of $lt/$lte (operands are finite), as the index orders it.
            return or_(cmp, j.infinite("Infinity" if op in ("$gt", "$gte") else "-Infinity"))
        return cmp

    # --- candidates: a superset of a filter's runs, read from indexes ----------------------------------------

    def candidates(self, f: Any, project: str) -> Candidates | None:
        """The runs that may match ``f`` (already compiled, so well formed) as index reads, or None where no
        index narrows them. Only what implies a match is used: a conjunct of the filter, every branch of an $or."""
        parts: list[Candidates] = []
        for key, value in f.items():
            if key == "$and":
                parts += [c for c in (self.candidates(x, project) for x in value) if c is not None]
            elif key == "$or":
                subs = [self.candidates(x, project) for x in value]
                if all(c is not None for c in subs):
                    parts.append(Candidates("or", parts=tuple(c for c in subs if c is not None)))
            elif key in ("$not", "$nor"):  # a negation implies no index read
                continue
            else:
                parts += self.field_candidates(key, value, project)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else Candidates("and", parts=tuple(parts))

    def field_candidates(self, name: str, cond: Any, project: str) -> list[Candidates]:
        kind, target = self.field(name)
        ops = _ops(cond)
        out: list[Candidates] = []
        for op, v in ops:
            if op == "$in" and v:
                subs = [self.op_candidates(kind, target, name, "$eq", x, project) for x in v]
                if all(c is not None for c in subs):
                    out.append(Candidates("or", parts=tuple(c for c in subs if c is not None)))
            else:
                c = self.op_candidates(kind, target, name, op, v, project)
                if c is not None:
                    out.append(c)
        return out

    def op_candidates(self, kind: str, target: Any, name: str, op: str, v: Any, project: str) -> Candidates | None:
        if op not in ("$eq", *_CMP) or v is None or isinstance(v, bool):
            return None
        v = _operand(v, op, name)  # as op() compared it (the filter compiled: it does not raise)
        if kind == "tags":
            path = leaf_path([v])
            return Candidates("leaf", run_values, project, lambda t: [t.c.src == TAGS, t.c.path == path])
        if kind == "column":
            if target[0] not in _INDEXED:
                return None
            field, col = target
            return Candidates("leaf", runs, project,
                              lambda t: [self.column_op((field, t.c[col.name]), name, op, v)])
        # config/summary: sl_run_values holds numbers as floats and strings cut to STR_PREFIX code points, both
        # monotone maps, so a strict comparison becomes a non-strict one: never fewer runs than the filter's.
        j: _Json = target
        x: str | float
        if isinstance(v, str):
            x = v[:STR_PREFIX]
        else:
            try:
                x = float(v)
            except OverflowError:
                return None
        path = leaf_path(j.path)

        def where(t: Any) -> list[Any]:
            col = (t.c.str.collate("C") if self.pg else t.c.str) if isinstance(x, str) else t.c.num
            cond = col == x if op == "$eq" else col >= x if op in ("$gt", "$gte") else col <= x
            return [t.c.src == j.src, t.c.path == path, cond]

        return Candidates("leaf", run_values, project, where)

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
        # One optional sign: "--x" or "+-x" is a typo, not an order.
        name = order[1:] if isinstance(order, str) and order[:1] in ("+", "-") else order
        if not isinstance(name, str) or not name or name[0] in "+-":
            raise FilterError(f"order must be a field name with an optional + or - prefix, got {_show(order)}")
        desc = order.startswith("-")
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
            Section(_Walk(o, runs, on(o.c.num)), None, [way(o.c.num), *newest], _Walk(runs, o, on(o.c.num))),
            Section(_Walk(o, runs, on(o.c.str)), None, [way(j.collated(o.c.str)), way(whole), *newest],
                    _Walk(runs, o, on(o.c.str))),
            Section(runs, not_(j.side(lambda t: t.c.kind.in_(["n", "s", "S"]))), newest),
        ]


class _Walk(Join):
    """A join read in its written order on SQLite (CROSS JOIN is how SQLite is told the order of a join);
    PostgreSQL plans it from its statistics. ``ord JOIN sl_runs``: SQLite's planner (no histograms) would rather
    read every run of the project and sort them than walk the value index in order, which a first page of an
    ordered query needs; ``sl_runs JOIN ord``: a short list of candidate runs, each looked up by its key."""

    inherit_cache = True


@compiles(_Walk, "sqlite")
def _walk_sqlite(join: _Walk, compiler: Any, **kw: Any) -> str:
    # "<ord> JOIN <sl_runs> ON ...": the left side is a plain aliased table, so its first " JOIN " is the join's.
    return str(compiler.visit_join(join, **kw)).replace(" JOIN ", " CROSS JOIN ", 1)


@dataclass(frozen=True)
class Section:
    """One part of an order: the runs of ``source`` (``sl_runs``, or it joined with ``sl_run_values`` as
    ``ord``), also filtered by ``where`` when set, sorted by ``order_by``. A query's runs are its sections' runs
    one after the other. ``driven``, when set, is the same join read the other way (runs first), for a query
    whose runs are a short list of candidates (:func:`resolve_candidates`)."""

    source: Any
    where: Any | None
    order_by: list[Any]
    driven: Any | None = None


@dataclass(frozen=True)
class Candidates:
    """Index reads whose runs include every run a filter matches: a ``leaf`` (the runs of ``project`` in
    ``table``, ``sl_run_values`` or ``sl_runs``, meeting ``where(alias of table)``), or the intersection (``and``)
    or union (``or``) of ``parts``."""

    kind: str
    table: Any = None
    project: str = ""
    where: Callable[[Any], list[Any]] | None = None
    parts: tuple[Candidates, ...] = ()

    def select(self, ids: bool = True) -> Any:
        """A SELECT of these runs' ids (a column ``run``); an ``and`` reads its first part, probing the rest.
        ``ids=False``: a leaf's rows without them, to count (SQLite answers from the index alone, not visiting
        each run's wide row for its id)."""
        if self.kind == "leaf":
            assert self.where is not None
            t = self.table.alias()
            return select(t.c.run if ids else literal(1)).where(t.c.project == self.project, *self.where(t))
        if self.kind == "or":  # one UNION of every branch: SQLite has no parenthesised compound SELECTs
            return union(*(p.select() for p in self.branches()))
        return self.driven_by(self.parts[0])

    def branches(self) -> list[Candidates]:
        """An ``or``'s parts with the parts of the ``or`` s among them in their place."""
        return [b for p in self.parts for b in (p.branches() if p.kind == "or" else [p])]

    def driven_by(self, driver: Candidates) -> Any:
        """An ``and``'s runs: those of ``driver`` (one of its parts) that every other part has, each looked up by
        the run's key (a probe per driver's run, not a read of every part)."""
        sub = driver.select().subquery()
        return select(sub.c.run).where(*(p.has(sub.c.run) for p in self.parts if p is not driver))

    def has(self, run: Any) -> Any:
        """Whether the run ``run`` (a column) is among these: index lookups by ``(project, run, ...)``."""
        if self.kind == "leaf":
            assert self.where is not None
            t = self.table.alias()
            # OFFSET 0 keeps PostgreSQL from turning the probe into a join whose plan rests on its estimate of
            # the part's size, often far off for sl_run_values (a hash of 25,000 rows to probe 1,000 runs).
            return exists(select(literal(1)).select_from(t).where(
                t.c.project == self.project, t.c.run == run, *self.where(t)).offset(0))
        probes = [p.has(run) for p in self.parts]
        return or_(*probes) if self.kind == "or" else and_(*probes)


def _leaves(c: Candidates) -> list[Candidates]:
    return [c] if c.kind == "leaf" else [x for p in c.parts for x in _leaves(p)]


def _count(conn: Connection, leaves: list[Candidates], limit: int, sizes: dict[int, int]) -> None:
    """Each leaf's number of runs, up to ``limit + 1`` (a count reads at most that many index entries), into
    ``sizes`` by the leaf's id: one statement for all of them, one round trip."""
    if leaves:
        counts = conn.execute(select(*(select(func.count()).select_from(leaf.select(False).limit(limit + 1).subquery())
                                       .scalar_subquery() for leaf in leaves))).one()
        sizes.update(zip(map(id, leaves), map(int, counts), strict=True))


def _plan(c: Candidates, sizes: dict[int, int], limit: int) -> tuple[Candidates, int] | None:
    """``c`` arranged to be read cheaply (an ``and`` driven by its smallest part) and a bound of its number of
    runs, from its leaves' ``sizes``; None where that bound passes ``limit``."""
    if c.kind == "leaf":
        n = sizes[id(c)]
        return (c, n) if n <= limit else None
    if c.kind == "or":  # a union reads every part: together they must fit the limit
        got = [_plan(p, sizes, limit) for p in c.parts]
        if any(g is None for g in got):
            return None
        total = sum(g[1] for g in got if g is not None)
        return (Candidates("or", parts=tuple(g[0] for g in got if g is not None)), total) if total <= limit else None
    best: tuple[Candidates, Candidates, int] | None = None  # (part, its plan, its size)
    for p in c.parts:
        g = _plan(p, sizes, limit)
        if g is not None and (best is None or g[1] < best[2]):
            best = (p, *g)
    if best is None:
        return None
    part, plan, n = best
    return Candidates("and", parts=(plan, *(q for q in c.parts if q is not part))), n


def resolve_candidates(conn: Connection, c: Candidates, cap: int, scan: int = 2_500) -> set[str] | None:
    """The runs of ``c`` when they are at most ``cap``, else None (the query walks instead). Each leaf is counted
    up to ``scan`` (one statement, at most ``scan + 1`` index entries per leaf); an ``and`` is read from its
    smallest part, each of whose runs is looked up in the other parts, so a filter whose conditions each name
    many runs but together few (a tag and a range) is still read from its candidates."""
    leaves = _leaves(c)
    sizes: dict[int, int] = {}
    _count(conn, leaves, scan, sizes)
    planned = _plan(c, sizes, scan)
    if planned is None:
        return None
    got = list(conn.execute(planned[0].select().limit(cap + 1)).scalars())
    return set(got) if len(got) <= cap else None

def _pattern(v: str, name: str, pg: bool) -> str:
    """A ``$regex`` pattern (Python's syntax, what SQLite's REGEXP runs) checked, and for PostgreSQL spelled so
    that it means the same: ``\\b``/``\\B`` (a word boundary and its opposite) are ``\\y``/``\\Y`` there (its
    ``\\b`` is a backspace) and ``{,n}`` is ``{0,n}``. What means different things in the two (POSIX classes such
    as ``[[:alpha:]]``, which Python reads as a set of characters; inline flags other than a leading ``(?i)``) is
    refused rather than matched differently; what PostgreSQL cannot compile is a QueryError when it runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # Python's "possible nested set": [[:alpha:]]
        try:
            re.compile(v)
        except FutureWarning:
            raise FilterError(f"$regex on {name!r:.80}: POSIX classes such as [[:alpha:]] are not supported "
                              "(SQLite and PostgreSQL read them differently): use a set such as [A-Za-z]") from None
        except re.error as e:
            raise FilterError(f"$regex on {name!r:.80}: bad pattern {v!r:.80}: {e}") from None
    flags = re.findall(r"\(\?([a-zA-Z-]+)[:)]", v)
    if flags and not (flags == ["i"] and v.startswith("(?i)")):
        raise FilterError(f"$regex on {name!r:.80}: inline flags other than a leading (?i) are not supported "
                          "(they mean different things in SQLite's and PostgreSQL's regular expressions)")
    if not pg:
        return v
    out: list[str] = []
    i, set_from = 0, -1  # set_from: where the open set's members start (-1: outside a set)
    while i < len(v):
        c = v[i]
        if c == "\\" and i + 1 < len(v):
            nxt = v[i + 1]
            outside = set_from < 0
            out.append("\\y" if nxt == "b" and outside else "\\Y" if nxt == "B" and outside else c + nxt)
            i += 2
            continue
        if set_from >= 0:
            if c == "]" and i > set_from:  # a "]" first in the set is a member
                set_from = -1
        elif c == "[":
            set_from = i + 2 if v.startswith("[^", i) else i + 1
        elif c == "{" and v.startswith("{,", i):
            out.append("{0")
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


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


def compile_filters(filters: Mapping[str, Any] | None, dialect: str, project: str | None = None
                    ) -> ColumnElement[bool]:
    """The WHERE clause of ``filters`` for ``dialect`` (``sqlite`` or ``postgresql``); FilterError if malformed.
    ``project``: the runs' project, which the clause's index reads then seek (give it when the query has one)."""
    if filters is None:
        return true()
    return _Compiler(dialect == "postgresql", project).filters(filters)


def compile_candidates(filters: Mapping[str, Any] | None, project: str, dialect: str) -> Candidates | None:
    """The index reads that narrow ``filters`` (well formed: :func:`compile_filters` first) to fewer runs than
    the project's, or None."""
    if filters is None:
        return None
    return _Compiler(dialect == "postgresql").candidates(filters, project)


def compile_order(order: str, dialect: str) -> list[Section]:
    """The sections of ``order`` (``"-summary_metrics.loss"``), ties broken newest first, then by run id."""
    return _Compiler(dialect == "postgresql").order(order)

