"""A filter's candidate runs read from indexes (``history.filters.Candidates``): a query whose indexed conditions
name few runs reads only those; one whose conditions name many walks the order's index as before. Both ways give
the same runs for every filter on both databases, including where the index holds a value only approximately
(an int past 2**53 as a float, a long string cut to its prefix), and the tags a migration adds to the index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_run_filters
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from test_run_filters import CASES, RUNS, P, commit_runs, ids

from history import Api
from history.query import Runs
from schemas.run_values import TAGS, run_values
from schemas.store import schema_version
from workers.metastore import MetaStore

pytestmark = pytest.mark.integration
# test_run_filters' fixtures: a fresh database of each kind (db_url), its runs RUNS committed (api).
db_url = test_run_filters.db_url
api = test_run_filters.api


def both_ways(monkeypatch: pytest.MonkeyPatch, api: Api, filters: Any, order: str = "created_at",
              **kw: Any) -> list[str]:
    """The runs of the query read from its candidates and by walking, asserted equal."""
    driven = ids(api, filters, order, **kw)
    with monkeypatch.context() as m:
        m.setattr(Runs, "CANDIDATES", 0)  # every index read names "too many": the walk
        walked = ids(api, filters, order, **kw)
    assert driven == walked, (filters, order)
    return driven


@pytest.mark.parametrize(("what", "filters", "want"), CASES, ids=[c[0] for c in CASES])
def test_candidates_and_walk_agree_operator_by_operator(monkeypatch: pytest.MonkeyPatch, api: Api, what: str,
                                                        filters: Any, want: list[str]) -> None:
    assert both_ways(monkeypatch, api, filters) == want
    assert both_ways(monkeypatch, api, filters, "-summary_metrics.loss", per_page=2) == \
        both_ways(monkeypatch, api, filters, "-summary_metrics.loss")


@pytest.mark.parametrize(("filters", "driven"), [
    ({"tags": "b"}, True),
    ({"config.lr": {"$gt": 0.05}}, True),
    ({"config.opt": {"$in": ["adam", "sgd"]}}, True),
    ({"$or": [{"group": "g1"}, {"summary_metrics.loss": {"$lt": 0.4}}]}, True),
    ({"$or": [{"group": "g1"}, {"state": "running"}]}, False),  # state has no index: no candidates
    ({"$not": {"tags": "b"}}, False),
    ({"config.opt": {"$regex": "^a"}}, False),
    ({"state": "finished", "created_at": {"$gte": 2000}}, True),
    # an $or whose branches are $or/$in and $and themselves (SQLite has no parenthesised UNION)
    ({"$or": [{"config.lr": {"$lt": 0.05}}, {"config.depth": {"$in": [2, 4]}},
              {"$or": [{"tags": "c"}, {"$and": [{"group": "g2"}, {"config.opt": "adamw"}]}]}]}, True),
])
def test_which_filters_have_candidates(api: Api, filters: Any, driven: bool) -> None:
    runs = api.runs(P, filters, order="-summary_metrics.loss")
    runs.page(0)
    assert runs._driven is driven
    walked = api.runs(P, filters, order="-summary_metrics.loss")
    walked._candidates = None
    assert [r.id for r in runs] == [r.id for r in walked] and len(runs) == len(walked)


def test_values_the_index_holds_approximately(monkeypatch: pytest.MonkeyPatch, db_url: str, data_dir: Path) -> None:
    """The index holds ints as floats and strings by a prefix: a strict comparison at such a value, or equality
    of two values the index cannot tell apart, still gives exactly the filter's runs."""
    big = 2**53
    long = "x" * 600
    specs = {f"b{i}": {**RUNS["r5"], "created_at": 100.0 + i, "config": c} for i, c in enumerate([
        {"n": big, "s": long + "a"}, {"n": big + 1, "s": long + "b"}, {"n": big + 2, "s": long}, {"n": 1.5, "s": "x"},
        {"n": 2**63 + 4096, "s": "a\x00b"},  # stored as a float; the text with its NUL escaped
    ])}
    store = MetaStore(db_url)
    try:
        commit_runs(store, P, specs)
    finally:
        store.close()
    with Api(data_dir=data_dir, db_url=db_url) as api:
        assert both_ways(monkeypatch, api, {"config.n": {"$gt": big}}) == ["b1", "b2", "b4"]
        assert both_ways(monkeypatch, api, {"config.n": big + 1}) == ["b1"]
        assert both_ways(monkeypatch, api, {"config.n": {"$lt": big + 1}}) == ["b0", "b3"]
        assert both_ways(monkeypatch, api, {"config.s": long + "b"}) == ["b1"]
        assert both_ways(monkeypatch, api, {"config.s": {"$gt": long + "a"}}) == ["b1"]
        assert both_ways(monkeypatch, api, {"config.s": {"$lte": long}}) == ["b2", "b3", "b4"]
        assert both_ways(monkeypatch, api, {"config.n": {"$gt": 1e300}}) == []
        # Operands are compared as the store holds values: an int past int64 as a float, text escaped.
        assert both_ways(monkeypatch, api, {"config.n": 2**63 + 4096}) == ["b4"]
        assert both_ways(monkeypatch, api, {"config.n": {"$gte": 2**63}}) == ["b4"]
        assert both_ways(monkeypatch, api, {"config.s": "a\x00b"}) == ["b4"]
        assert both_ways(monkeypatch, api, {"config.s": {"$in": ["a\x00b", "x"]}}) == ["b3", "b4"]
        assert both_ways(monkeypatch, api, {"config.s": "\ud800"}) == []  # a lone surrogate: no crash, no match


def test_many_candidates_fall_back_to_the_walk(monkeypatch: pytest.MonkeyPatch, api: Api) -> None:
    """More candidates than Runs.CANDIDATES: the query walks, with the same pages and count."""
    monkeypatch.setattr(Runs, "CANDIDATES", 1)
    runs = api.runs(P, {"group": "g1"}, order="-created_at", per_page=1)
    assert [r.id for r in runs] == ["r2", "r1"] and len(runs) == 2 and not runs._driven
    monkeypatch.setattr(Runs, "CANDIDATES", 2)
    runs = api.runs(P, {"group": "g1"}, order="-created_at", per_page=1)
    assert len(runs) == 2 and runs._driven and [r.id for r in runs] == ["r2", "r1"]


def test_migration_7_indexes_the_tags_of_stored_runs(monkeypatch: pytest.MonkeyPatch, db_url: str,
                                                     data_dir: Path) -> None:
    """A database at schema version 6 (no tag rows in sl_run_values) gets its runs' tags indexed, and a filter on
    a tag reads its candidates from them."""
    store = MetaStore(db_url)
    try:
        commit_runs(store, P, RUNS)
        with store.engine.begin() as conn:
            conn.execute(delete(run_values).where(run_values.c.src == TAGS))
            conn.execute(delete(schema_version).where(schema_version.c.version >= 7))
    finally:
        store.close()
    with Api(data_dir=data_dir, db_url=db_url) as api:
        runs = api.runs(P, {"tags": "b"}, order="created_at")
        assert [r.id for r in runs] == [] and runs._driven  # no tag rows: the index names no run
    MetaStore(db_url).close()  # migrates 6 -> 7 (and on)
    with Api(data_dir=data_dir, db_url=db_url) as api:
        assert both_ways(monkeypatch, api, {"tags": "b"}) == ["r1", "r2"]
        assert both_ways(monkeypatch, api, {"tags": {"$in": ["a", "c"]}}) == ["r1", "r4"]
    store = MetaStore(db_url)
    try:
        with store.engine.connect() as conn:
            tagged = {(r.run, r.path) for r in conn.execute(select(run_values).where(run_values.c.src == TAGS,
                                                                                     run_values.c.project == P))}
    finally:
        store.close()
    assert tagged == {("r1", '["a"]'), ("r1", '["b"]'), ("r2", '["b"]'), ("r4", '["c"]')}


_VALUES: dict[str, list[Any]] = {
    "config.lr": [0.01, 0.1, 1, 0.05, "high", 2**53 + 1], "config.opt": ["adam", "sgd", "adamw", "b", "z"],
    "config.depth": [2, 4, 3, None], "summary_metrics.loss": [0.3, 0.5, 0.9, "diverged", 0.0],
    "summary_metrics.val/loss": [0.2, 0.7, 1.0], "tags": ["a", "b", "c", "x"], "group": ["g1", "g2", "g9"],
    "created_at": [1000.0, 2500, 5000], "name": ["r1", "r4", "nope"], "state": ["finished", "running"],
}


def _conditions() -> st.SearchStrategy[dict[str, Any]]:
    def cond(field: str) -> st.SearchStrategy[dict[str, Any]]:
        values = st.sampled_from(_VALUES[field])
        ops = ["$eq", "$in"] if field == "tags" else ["$eq", "$in", "$gt", "$gte", "$lt", "$lte", "$ne"]
        if field in ("tags", "group", "name", "state", "config.depth"):
            values = values.filter(lambda v: v is None or isinstance(v, str | int | float))

        def one(op: str, v: Any, more: list[Any]) -> dict[str, Any]:
            if op == "$in":
                return {field: {"$in": [v, *more]}}
            if op in _CMP_OPS and (v is None or (field in _TEXT) != isinstance(v, str)):
                return {field: v}  # a comparison the field refuses: an $eq instead
            return {field: {op: v} if op != "$eq" or v is None else v}

        return st.builds(one, st.sampled_from(ops), values, st.lists(values, max_size=2))

    leaf = st.sampled_from(sorted(_VALUES)).flatmap(cond)
    return st.recursive(leaf, lambda inner: st.one_of(
        st.builds(lambda xs: {"$and": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"$or": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a, b: {**a, **b}, inner, inner)), max_leaves=5)


_CMP_OPS = ("$gt", "$gte", "$lt", "$lte")
_TEXT = ("tags", "group", "name", "state")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filters=_conditions(), order=st.sampled_from(["created_at", "-summary_metrics.loss", "config.opt"]))
def test_candidates_never_change_a_querys_runs(api: Api, filters: dict[str, Any], order: str) -> None:
    """Property: for any filter of indexed and unindexed conditions (nested $and/$or), the runs read from the
    candidates equal the runs the walk finds, page by page and counted."""
    driven = api.runs(P, filters, order=order, per_page=2)
    walked = api.runs(P, filters, order=order, per_page=2)
    walked._candidates = None
    assert [r.id for r in driven] == [r.id for r in walked]
    assert len(driven) == len(walked)
