"""Orders the runs table sorts by across pages (issue 17), on SQLite and PostgreSQL (a fresh database per test):
a config or summary value that is ±inf orders as a number at the ends (its JSON copy holds the text "Infinity",
which a string logged with that text still is), filters compare it as a number, and ``warning_count`` /
``column_count`` (counts of the run's info) order and filter runs, kept current as runs update; migrations 8 and 9
bring a database of schema version 7 there."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import test_run_filters
from sqlalchemy import delete, text
from test_run_candidates import both_ways

from history import Api
from schemas.store import runs, schema_version
from workers.metastore import Commit, MetaStore, RunUpdate

pytestmark = pytest.mark.integration
db_url = test_run_filters.db_url  # a fresh database of each kind

P = test_run_filters.P  # the project both_ways reads
INF = math.inf

#: run -> its summary value x (absent: no x); created in this order.
XS: dict[str, Any] = {
    "pinf": INF, "ninf": -INF, "big": 1e308, "neg": -5, "zero": 0.0, "nan": math.nan, "text": "Infinity",
    "s": "abc", "miss": None, "flag": True, "ntext": "-Infinity",
}


def info(config: dict[str, Any], summary: dict[str, Any], warnings: int = 0, conflicts: int = 0,
         keys: list[str] | None = None) -> dict[str, Any]:
    return {"config": config, "summary": summary, "group": None, "job_type": None, "tags": [], "notes": None,
            "columns": [{"key": k, "kind": "number", "field": k} for k in keys or []],
            "warnings": [f"w{i}" for i in range(warnings)], "conflicts": [f"c{i}" for i in range(conflicts)],
            "rejected": {}, "metrics": []}


def commit(db_url: str, infos: dict[str, dict[str, Any]]) -> None:
    """One commit of these runs (created in the order given; a run committed again is updated)."""
    store = MetaStore(db_url)
    try:
        epoch, _ = store.take_partition(0, "test")
        c = Commit(0, epoch, "1-0")
        for rid, inf in infos.items():
            created = 1000.0 + 10 * list(XS).index(rid) if rid in XS else 2000.0 + list(COUNTS).index(rid)
            c.runs.append(RunUpdate(project=P, run=rid, partition=0, name=rid, state="finished", created_at=created,
                                    updated_at=created, last_step=None, rows=0, rejected=0, info=inf, state_blob=b""))
        store.commit(c)
    finally:
        store.close()


def value_runs() -> dict[str, dict[str, Any]]:
    return {rid: info({"opt": {"eps": x}} if x is not None else {}, {"x": x} if x is not None else {})
            for rid, x in XS.items()}


def pages(api: Api, order: str, filters: Any = None) -> list[str]:
    """The runs of the order, asserted the same read a page of 1, 2, 3 or 50 at a time."""
    got = [[r.id for r in api.runs(P, filters, order=order, per_page=n)] for n in (1, 2, 3, 50)]
    assert all(g == got[-1] for g in got), got
    return got[-1]


#: Numbers (-inf first, +inf last ascending), then strings by code point, then the rest newest first: NaN (null in
#: the JSON), a bool, no value.
ASC = ["ninf", "neg", "zero", "big", "pinf", "ntext", "text", "s", "flag", "miss", "nan"]
DESC = ["pinf", "big", "zero", "neg", "ninf", "s", "text", "ntext", "flag", "miss", "nan"]


def test_infinities_order_at_the_numeric_ends(db_url: str, data_dir: Path) -> None:
    commit(db_url, value_runs())
    with Api(data_dir=data_dir, db_url=db_url) as api:
        for field in ("summary_metrics.x", "config.opt.eps"):
            assert pages(api, f"+{field}") == ASC, field
            assert pages(api, f"-{field}") == DESC, field


@pytest.mark.parametrize(("filters", "want"), [
    ({"summary_metrics.x": {"$gt": 5}}, ["pinf", "big"]),
    ({"summary_metrics.x": {"$gte": 1e308}}, ["pinf", "big"]),
    ({"summary_metrics.x": {"$lt": 0}}, ["ninf", "neg"]),
    ({"summary_metrics.x": {"$lte": 1e308}}, ["ninf", "big", "neg", "zero"]),
    ({"summary_metrics.x": {"$gt": -1e308, "$lt": 1e308}}, ["neg", "zero"]),
    ({"config.opt.eps": {"$gt": 5}}, ["pinf", "big"]),
    # the string logged as "Infinity" is a string: equal to that text, matched by a pattern, ordered as text
    ({"summary_metrics.x": "Infinity"}, ["text"]),
    ({"summary_metrics.x": {"$in": ["-Infinity", 0]}}, ["zero", "ntext"]),
    ({"summary_metrics.x": {"$regex": "Inf"}}, ["text", "ntext"]),
    ({"summary_metrics.x": {"$gte": "A"}}, ["text", "s"]),
    ({"summary_metrics.x": {"$ne": "Infinity"}}, [r for r in XS if r != "text"]),
    ({"$not": {"summary_metrics.x": {"$gt": 5}}}, [r for r in XS if r not in ("big", "pinf")]),
    ({"$or": [{"summary_metrics.x": {"$lt": -1e308}}, {"summary_metrics.x": "abc"}]}, ["ninf", "s"]),
])
def test_filters_compare_infinities_as_numbers(monkeypatch: pytest.MonkeyPatch, db_url: str, data_dir: Path,
                                               filters: Any, want: list[str]) -> None:
    """+inf is a number above every finite operand, -inf below; read from candidates and by walking alike."""
    commit(db_url, value_runs())
    with Api(data_dir=data_dir, db_url=db_url) as api:
        assert both_ways(monkeypatch, api, filters) == want
        assert both_ways(monkeypatch, api, filters, "-summary_metrics.x", per_page=1) == \
            [r for r in DESC if r in want]
        assert len(api.runs(P, filters)) == len(want)


def test_an_update_moves_a_run_in_the_order(db_url: str, data_dir: Path) -> None:
    """A run whose value becomes (or stops being) ±inf moves: the index follows each commit."""
    commit(db_url, value_runs())
    commit(db_url, {"pinf": info({}, {"x": 1.0}), "s": info({}, {"x": -INF}), "text": info({}, {"x": INF})})
    with Api(data_dir=data_dir, db_url=db_url) as api:
        assert pages(api, "+summary_metrics.x") == ["s", "ninf", "neg", "zero", "pinf", "big", "text", "ntext",
                                                    "flag", "miss", "nan"]
        assert [r.id for r in api.runs(P, {"summary_metrics.x": {"$gt": 1}}, order="created_at")] == ["big", "text"]


#: run -> (warnings, conflicts, keys): warning_count 3, 0, 1, 2, 5; column_count 2, 4, 1, 3, 0.
COUNTS: dict[str, tuple[int, int, list[str]]] = {
    "c1": (2, 1, ["a", "b"]), "c2": (0, 0, ["a", "b", "c", "d"]), "c3": (1, 0, ["a"]),
    "c4": (0, 2, ["a", "A", "b", "c"]),  # "a" and "A" are one key
    "c5": (5, 0, []),
}


def test_counts_order_and_filter_every_run(monkeypatch: pytest.MonkeyPatch, db_url: str, data_dir: Path) -> None:
    commit(db_url, {rid: info({}, {}, w, c, keys) for rid, (w, c, keys) in COUNTS.items()})
    with Api(data_dir=data_dir, db_url=db_url) as api:
        assert pages(api, "+warning_count") == ["c2", "c3", "c4", "c1", "c5"]
        assert pages(api, "-warning_count") == ["c5", "c1", "c4", "c3", "c2"]
        assert pages(api, "+column_count") == ["c5", "c3", "c1", "c4", "c2"]
        assert pages(api, "-columnCount") == ["c2", "c4", "c1", "c3", "c5"]
        assert both_ways(monkeypatch, api, {"warning_count": {"$gt": 0}, "column_count": {"$lte": 3}}) == \
            ["c1", "c3", "c4", "c5"]
        assert [r.id for r in api.runs(P, {"warningCount": 0})] == ["c2"]
    # A run's new warnings and keys reorder it.
    commit(db_url, {"c2": info({}, {}, 9, 0, [])})
    with Api(data_dir=data_dir, db_url=db_url) as api:
        assert pages(api, "-warning_count") == ["c2", "c5", "c1", "c4", "c3"]
        assert pages(api, "+column_count") == ["c5", "c2", "c3", "c1", "c4"]  # a tie: newest first


def test_migrations_from_version_7(db_url: str, data_dir: Path) -> None:
    """A database of schema version 7 (no count columns; ±inf as text in sl_run_values) is brought to version 9:
    the stored runs get their counts from their info and their float infinities as numbers, while a string
    logged as "Infinity" stays a string."""
    commit(db_url, {**value_runs(), **{rid: info({}, {}, w, c, keys) for rid, (w, c, keys) in COUNTS.items()}})
    store = MetaStore(db_url)
    try:
        with store.engine.begin() as conn:
            for col in ("warning_count", "column_count"):
                conn.execute(text(f"ALTER TABLE {runs.name} DROP COLUMN {col}"))
            # As version 7 wrote them: from the JSON copies, where a float ±inf is the text.
            conn.execute(text("UPDATE sl_run_values SET kind = 's', num = NULL, str = CASE WHEN num > 0 THEN "
                              "'Infinity' ELSE '-Infinity' END WHERE kind = 'n' AND (num > 1e308 OR num < -1e308)"))
            conn.execute(delete(schema_version).where(schema_version.c.version > 7))
    finally:
        store.close()
    with Api(data_dir=data_dir, db_url=db_url) as api:  # version 7's order: the infinities among the strings
        assert pages(api, "+summary_metrics.x")[:7] == ["neg", "zero", "big", "ntext", "ninf", "text", "pinf"]
    store = MetaStore(db_url)  # migrates 7 -> 9
    try:
        assert store.schema_version == 9
    finally:
        store.close()
    with Api(data_dir=data_dir, db_url=db_url) as api:
        newest = list(reversed(COUNTS))  # no value: the rest, newest first
        assert pages(api, "+summary_metrics.x") == [*ASC[:8], *newest, *ASC[8:]]
        assert pages(api, "-config.opt.eps") == [*DESC[:8], *newest, *DESC[8:]]
        counted = [r for r in pages(api, "-warning_count") if r in COUNTS]
        assert counted == ["c5", "c1", "c4", "c3", "c2"]
        assert [r for r in pages(api, "+column_count") if r in COUNTS] == ["c5", "c3", "c1", "c4", "c2"]
