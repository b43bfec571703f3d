"""Finding runs: W&B's filter language compiled to SQL, operator by operator, on SQLite and PostgreSQL (a fresh
database per test), plus ordering, pagination, malformed filters and the migration that adds the columns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, String, Table, insert, select
from support.pg import fresh_database

from history import Api, QueryError
from schemas import packb
from schemas.store import runs as runs_table
from schemas.store import writer_engine
from workers.metastore import Commit, MetaStore, RunUpdate, sqlite_url

pytestmark = pytest.mark.integration

P = "proj"
RUNS: dict[str, dict[str, Any]] = {
    "r1": {"config": {"lr": 0.1, "opt": "adam", "depth": 4, "flag": True, "model": {"layers": 12}},
           "summary": {"loss": 0.5, "acc": 0.9, "val/loss": 0.7}, "state": "finished", "group": "g1",
           "job_type": "train", "tags": ["a", "b"], "notes": "first try", "created_at": 1000.0, "name": "alpha"},
    "r2": {"config": {"lr": 0.01, "opt": "sgd", "depth": 2, "flag": False, "model": {"layers": 6}},
           "summary": {"loss": 0.3, "val/loss": 0.2}, "state": "finished", "group": "g1", "job_type": "eval",
           "tags": ["b"], "notes": None, "created_at": 2000.0, "name": "beta"},
    "r3": {"config": {"lr": 1, "opt": "adamw"}, "summary": {"loss": 0.9, "val/loss": float("nan")},
           "state": "running", "group": "g2", "job_type": None, "tags": [], "notes": "x", "created_at": 3000.0,
           "name": "gamma"},
    "r4": {"config": {"lr": "high", "depth": None}, "summary": {"loss": "diverged"}, "state": "crashed",
           "group": None, "job_type": "train", "tags": ["c"], "notes": None, "created_at": 4000.0, "name": "delta"},
    "r5": {"config": {}, "summary": {}, "state": "finished", "group": None, "job_type": None, "tags": [],
           "notes": None, "created_at": 5000.0, "name": "epsilon"},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(data_dir)
        return
    with fresh_database() as url:
        yield url


def commit_runs(store: MetaStore, project: str, specs: dict[str, dict[str, Any]]) -> None:
    epoch, _ = store.take_partition(0, "test")
    c = Commit(0, epoch, "1-0")
    for rid, s in specs.items():
        info = {"config": s["config"], "summary": s["summary"], "group": s["group"], "job_type": s["job_type"],
                "tags": s["tags"], "notes": s["notes"], "columns": [], "warnings": [], "conflicts": [],
                "rejected": {}, "metrics": []}
        c.runs.append(RunUpdate(project=project, run=rid, partition=0, name=s["name"], state=s["state"],
                                created_at=s["created_at"], updated_at=s["created_at"] + 1, last_step=None,
                                rows=0, rejected=0, info=info, state_blob=b""))
    store.commit(c)


@pytest.fixture
def api(db_url: str, data_dir: Path) -> Iterator[Api]:
    store = MetaStore(db_url)
    try:
        commit_runs(store, P, RUNS)
        commit_runs(store, "other", {"o1": RUNS["r1"]})
    finally:
        store.close()
    with Api(data_dir=data_dir, db_url=db_url) as a:
        yield a


def ids(api: Api, filters: Any = None, order: str = "created_at", **kw: Any) -> list[str]:
    return [r.id for r in api.runs(P, filters=filters, order=order, **kw)]


CASES: list[tuple[str, Any, list[str]]] = [
    # implicit $eq and $eq, on JSON paths, columns, nested paths; numbers by value (1 == 1.0), kinds apart
    ("eq implicit", {"config.opt": "adam"}, ["r1"]),
    ("eq number", {"config.lr": {"$eq": 0.01}}, ["r2"]),
    ("eq int as float", {"config.lr": 1.0}, ["r3"]),
    ("eq bool", {"config.flag": True}, ["r1"]),
    ("eq false", {"config.flag": False}, ["r2"]),
    ("eq nested", {"config.model.layers": 12}, ["r1"]),
    ("eq W&B value spelling", {"config.lr.value": 0.1}, ["r1"]),
    ("eq null = missing or null", {"config.depth": None}, ["r3", "r4", "r5"]),
    ("eq summary with a slash", {"summary_metrics.val/loss": 0.2}, ["r2"]),
    ("eq state", {"state": "finished"}, ["r1", "r2", "r5"]),
    ("eq group", {"group": "g1"}, ["r1", "r2"]),
    ("eq job_type", {"job_type": "train"}, ["r1", "r4"]),
    ("eq name is the run id", {"name": "r3"}, ["r3"]),
    ("eq display_name", {"display_name": "beta"}, ["r2"]),
    ("eq group null", {"group": None}, ["r4", "r5"]),
    # $ne matches runs without the field
    ("ne", {"config.opt": {"$ne": "adam"}}, ["r2", "r3", "r4", "r5"]),
    ("ne number", {"config.lr": {"$ne": 0.1}}, ["r2", "r3", "r4", "r5"]),
    ("ne null", {"config.depth": {"$ne": None}}, ["r1", "r2"]),
    ("ne state", {"state": {"$ne": "finished"}}, ["r3", "r4"]),
    # comparisons: numbers against numbers only, strings against strings only
    ("gt", {"config.lr": {"$gt": 0.01}}, ["r1", "r3"]),
    ("gte", {"config.lr": {"$gte": 0.01}}, ["r1", "r2", "r3"]),
    ("lt", {"summary_metrics.loss": {"$lt": 0.5}}, ["r2"]),
    ("lte", {"summary_metrics.loss": {"$lte": 0.5}}, ["r1", "r2"]),
    ("gt string", {"config.opt": {"$gt": "adam"}}, ["r2", "r3"]),
    ("lt string code points", {"display_name": {"$lt": "c"}}, ["r1", "r2"]),
    ("range", {"config.lr": {"$gt": 0.01, "$lt": 1}}, ["r1"]),
    ("created_at number", {"created_at": {"$gte": 3000}}, ["r3", "r4", "r5"]),
    ("created_at ISO", {"created_at": {"$lt": "1970-01-01T00:40:00Z"}}, ["r1", "r2"]),
    ("nan is no number", {"summary_metrics.val/loss": {"$gte": 0}}, ["r1", "r2"]),
    # $in / $nin
    ("in", {"config.opt": {"$in": ["adam", "sgd"]}}, ["r1", "r2"]),
    ("in mixed kinds", {"config.lr": {"$in": [0.1, "high"]}}, ["r1", "r4"]),
    ("in state", {"state": {"$in": ["running", "crashed"]}}, ["r3", "r4"]),
    ("in empty", {"config.opt": {"$in": []}}, []),
    ("nin", {"config.opt": {"$nin": ["adam", "sgd"]}}, ["r3", "r4", "r5"]),
    ("nin group", {"group": {"$nin": ["g1"]}}, ["r3", "r4", "r5"]),
    # $regex
    ("regex", {"config.opt": {"$regex": "^adam"}}, ["r1", "r3"]),
    ("regex display name", {"display_name": {"$regex": "^(alpha|delta)$"}}, ["r1", "r4"]),
    ("regex never matches numbers", {"config.lr": {"$regex": "1"}}, []),
    ("regex notes", {"notes": {"$regex": "try"}}, ["r1"]),
    # Python's syntax on both databases (PostgreSQL's \b is a backspace, its {,n} not a repetition)
    ("regex word boundary", {"notes": {"$regex": "\\btry\\b"}}, ["r1"]),
    ("regex not a boundary", {"notes": {"$regex": "\\Bry"}}, ["r1"]),
    ("regex up to n", {"display_name": {"$regex": "^al{,1}p"}}, ["r1"]),
    ("regex leading (?i)", {"display_name": {"$regex": "(?i)^BETA$"}}, ["r2"]),
    # $exists
    ("exists", {"config.opt": {"$exists": True}}, ["r1", "r2", "r3"]),
    ("exists null counts", {"config.depth": {"$exists": True}}, ["r1", "r2", "r4"]),
    ("not exists", {"config.opt": {"$exists": False}}, ["r4", "r5"]),
    ("exists group", {"group": {"$exists": True}}, ["r1", "r2", "r3"]),
    # tags
    ("tag", {"tags": "b"}, ["r1", "r2"]),
    ("tag eq", {"tags": {"$eq": "a"}}, ["r1"]),
    ("tag ne", {"tags": {"$ne": "b"}}, ["r3", "r4", "r5"]),
    ("tags in", {"tags": {"$in": ["a", "c"]}}, ["r1", "r4"]),
    ("tags nin", {"tags": {"$nin": ["a", "c"]}}, ["r2", "r3", "r5"]),
    ("tags regex", {"tags": {"$regex": "^[ac]$"}}, ["r1", "r4"]),
    ("tags exist", {"tags": {"$exists": True}}, ["r1", "r2", "r4"]),
    ("tags none", {"tags": {"$exists": False}}, ["r3", "r5"]),
    # $and / $or / $not, nesting
    ("and", {"$and": [{"group": "g1"}, {"config.lr": {"$gt": 0.05}}]}, ["r1"]),
    ("or", {"$or": [{"state": "running"}, {"tags": "c"}]}, ["r3", "r4"]),
    ("nested", {"$or": [{"$and": [{"group": "g1"}, {"job_type": "eval"}]}, {"config.lr": "high"}]}, ["r2", "r4"]),
    ("not", {"$not": {"group": "g1"}}, ["r3", "r4", "r5"]),
    ("nor", {"$nor": [{"group": "g1"}, {"tags": "c"}]}, ["r3", "r5"]),
    ("several fields", {"group": "g1", "state": "finished", "tags": "a"}, ["r1"]),
    ("empty filter", {}, ["r1", "r2", "r3", "r4", "r5"]),
]


@pytest.mark.parametrize(("what", "filters", "want"), CASES, ids=[c[0] for c in CASES])
def test_filter_operators(api: Api, what: str, filters: Any, want: list[str]) -> None:
    assert ids(api, filters) == want


def test_order_and_pagination(api: Api) -> None:
    assert ids(api, order="-created_at") == ["r5", "r4", "r3", "r2", "r1"]
    assert [r.id for r in api.runs(P)] == ["r5", "r4", "r3", "r2", "r1"]  # newest first by default
    # JSON fields: numbers (ascending), then strings, then runs without a value (newest first among those).
    assert ids(api, order="summary_metrics.loss") == ["r2", "r1", "r3", "r4", "r5"]
    assert ids(api, order="-summary_metrics.loss") == ["r3", "r1", "r2", "r4", "r5"]
    assert ids(api, order="-config.lr") == ["r3", "r1", "r2", "r4", "r5"]
    assert ids(api, order="display_name") == ["r1", "r2", "r4", "r5", "r3"]
    assert ids(api, order="-group") == ["r3", "r2", "r1", "r5", "r4"]
    assert ids(api, {"state": "finished"}, order="-summary_metrics.val/loss") == ["r1", "r2", "r5"]
    # Pagination: pages of 2, length by COUNT, indexing, the entity/project spelling.
    found = api.runs("team/" + P, order="created_at", per_page=2)
    assert len(found) == 5 and found[0].id == "r1" and found[4].id == "r5" and found[-1].id == "r5"
    assert [r.id for r in found.page(1)] == ["r3", "r4"] and found.page(3) == []
    assert [r.id for r in found] == ["r1", "r2", "r3", "r4", "r5"]
    with pytest.raises(IndexError):
        found[5]
    assert len(api.runs(P, {"group": "g1"})) == 2
    assert [r.id for r in api.runs("other")] == ["o1"]
    assert ids(api, state=["running", "crashed"]) == ["r3", "r4"]
    r1 = api.run(f"{P}/r1")
    assert (r1.group, r1.job_type, r1.tags, r1.notes) == ("g1", "train", ["a", "b"], "first try")


def test_pages_of_a_json_order_cross_its_sections(api: Api) -> None:
    """An order on a JSON field is read section by section (numbers, strings, the rest: history.filters.Section):
    every page size gives the same runs in the same order, whichever section a page starts or ends in."""
    for order in ("summary_metrics.loss", "-summary_metrics.loss", "config.lr", "-config.opt", "config.flag"):
        whole = ids(api, order=order)
        assert sorted(whole) == ["r1", "r2", "r3", "r4", "r5"], order
        for per_page in (1, 2, 3, 4):
            found = api.runs(P, order=order, per_page=per_page)
            paged = [r.id for n in range(6) for r in found.page(n)]
            assert paged == whole, (order, per_page)
            assert len(found) == 5
    assert [r.id for r in api.runs(P, {"config.lr": {"$lt": 5}}, order="-config.lr", per_page=1)] == [
        "r3", "r1", "r2"]


def test_counters_order_every_run_also_over_http(db_url: str, data_dir: Path, redis_url: str,
                                                namespace: str) -> None:
    """``rows`` and ``rejected`` (rejected calls) order and filter every run of the project on both databases, page
    after page, directly and through the gateway's runs listing (what the web page's runs table sorts by)."""
    counts = {"c1": (10, 0), "c2": (500, 3), "c3": (7, 12), "c4": (500, 1), "c5": (0, 3)}  # run -> (rows, rejected)
    store = MetaStore(db_url)
    try:
        epoch, _ = store.take_partition(0, "test")
        c = Commit(0, epoch, "1-0")
        for n, (rid, (rows, rejected)) in enumerate(counts.items()):
            info = {"config": {}, "summary": {}, "columns": [], "warnings": [], "conflicts": [],
                    "rejected": {"non_monotonic_step": rejected} if rejected else {}, "metrics": []}
            c.runs.append(RunUpdate(project="cnt", run=rid, partition=0, name=rid, state="finished",
                                    created_at=1000.0 + n, updated_at=1001.0 + n, last_step=None, rows=rows,
                                    rejected=rejected, info=info, state_blob=b""))
        store.commit(c)
    finally:
        store.close()
    # Ties newest first (c5 is newer than c2, c4 newer than c2).
    want = {"-rejected": ["c3", "c5", "c2", "c4", "c1"], "rejected": ["c1", "c4", "c5", "c2", "c3"],
            "-rows": ["c4", "c2", "c1", "c3", "c5"], "rows": ["c5", "c3", "c1", "c4", "c2"]}
    with Api(data_dir=data_dir, db_url=db_url) as api:
        for order, runs_in_order in want.items():
            found = api.runs("cnt", order=order, per_page=2)
            assert [r.id for n in range(3) for r in found.page(n)] == runs_in_order, order
        assert [r.id for r in api.runs("cnt", {"rejected": {"$gte": 3}}, order="created_at")] == ["c2", "c3", "c5"]
        with pytest.raises(QueryError, match="takes a number"):
            api.runs("cnt", {"rejected": "many"}, order="created_at")

    async def over_http() -> None:
        from aiohttp.test_utils import TestClient
        from support.gateway_server import GatewayTestServer

        from gateway import GatewaySettings, create_app

        settings = GatewaySettings(redis_url=redis_url, namespace=namespace, partitions=4, data_dir=data_dir,
                                   db_url=db_url)
        client: Any = TestClient(GatewayTestServer(create_app(settings)))
        await client.start_server()
        try:
            for order, runs_in_order in want.items():
                got = []
                for page in range(3):
                    r = await client.get("/api/v1/projects/cnt/runs", params={"order": order, "per_page": "2",
                                                                             "page": str(page)})
                    assert r.status == 200, await r.text()
                    body = await r.json()
                    assert body["total"] == 5
                    got += [(b["id"], b["rows"], b["rejected"]) for b in body["runs"]]
                assert got == [(rid, *counts[rid]) for rid in runs_in_order], order
        finally:
            await client.close()

    asyncio.run(over_http())


LONG = "x" * 600


@pytest.mark.parametrize(("filters", "want"), [
    ({"config.s": LONG + "b"}, ["l2"]),
    ({"config.s": {"$gt": LONG}}, ["l1", "l2", "l4"]),
    ({"config.s": {"$gt": LONG + "a"}}, ["l2", "l4"]),
    ({"config.s": {"$gte": LONG + "a"}}, ["l1", "l2", "l4"]),
    ({"config.s": {"$lt": LONG + "b"}}, ["l1", "l3"]),
    ({"config.s": {"$lte": "x" * 500}}, ["l3"]),
    ({"config.s": {"$gt": "x" * 500}}, ["l1", "l2", "l4"]),
    ({"config.s": {"$in": ["y", LONG + "a"]}}, ["l1", "l4"]),
    ({"config.s": {"$ne": LONG + "a"}}, ["l2", "l3", "l4", "l5"]),
    ({"config.s": {"$regex": "xb$"}}, ["l2"]),
])
def test_long_strings_compare_whole(db_url: str, data_dir: Path, filters: Any, want: list[str]) -> None:
    """Strings past the index's prefix (schemas.run_values.STR_PREFIX code points) compare and sort by their whole
    value, as shorter ones do."""
    specs = {rid: {**RUNS["r5"], "config": {"s": s}, "created_at": float(i)}
             for i, (rid, s) in enumerate([("l1", LONG + "a"), ("l2", LONG + "b"), ("l3", "x" * 10), ("l4", "y"),
                                           ("l5", 3)])}
    store = MetaStore(db_url)
    try:
        commit_runs(store, "long", specs)
    finally:
        store.close()
    with Api(data_dir=data_dir, db_url=db_url) as api:
        assert [r.id for r in api.runs("long", filters, order="created_at")] == want
        assert [r.id for r in api.runs("long", order="config.s")] == ["l5", "l3", "l1", "l2", "l4"]
        assert [r.id for r in api.runs("long", order="-config.s", per_page=2)] == ["l5", "l4", "l2", "l1", "l3"]


def test_the_value_index_follows_each_commit(db_url: str, data_dir: Path) -> None:
    """sl_run_values is rewritten by the commit that changes a run's config or summary (a value changed, a key
    gone, a number become a string, a nested key): filters and orders see the new values, and the index holds
    exactly the JSON columns' number and string leaves."""
    from schemas.run_values import run_values, value_rows

    first = {**RUNS["r1"], "summary": {"loss": 0.5, "acc": 0.9, "gone": 1}, "config": {"lr": 0.1, "m": {"d": 2}}}
    later = {**RUNS["r1"], "summary": {"loss": "nan-ish", "acc": 0.95, "new": 2.0},
             "config": {"lr": 0.1, "m": {"d": 3, "e": "x"}}}
    store = MetaStore(db_url)
    try:
        commit_runs(store, "live", {"a": first, "b": {**RUNS["r2"], "summary": {"loss": 0.7}}})
        with Api(data_dir=data_dir, db_url=db_url) as api:
            assert [r.id for r in api.runs("live", {"summary_metrics.loss": {"$lt": 0.6}})] == ["a"]
        commit_runs(store, "live", {"a": later})
        with Api(data_dir=data_dir, db_url=db_url) as api:
            assert [r.id for r in api.runs("live", {"summary_metrics.loss": {"$lt": 0.6}})] == []
            assert [r.id for r in api.runs("live", {"summary_metrics.loss": "nan-ish"})] == ["a"]
            assert [r.id for r in api.runs("live", {"summary_metrics.gone": {"$gte": 0}})] == []
            assert [r.id for r in api.runs("live", {"summary_metrics.new": {"$gte": 2}})] == ["a"]
            assert [r.id for r in api.runs("live", {"config.m.d": {"$gt": 2}, "config.m.e": {"$gte": "x"}})] == ["a"]
            assert [r.id for r in api.runs("live", order="summary_metrics.loss")] == ["b", "a"]

        def index_and_json() -> tuple[dict[Any, Any], dict[Any, Any]]:
            with store.engine.connect() as conn:
                stored = {(r.run, r.src, r.path): (r.kind, r.num, r.str) for r in conn.execute(
                    select(run_values).where(run_values.c.project == "live"))}
                json_cols = {r.run: (r.config, r.summary, r.tags) for r in conn.execute(
                    select(runs_table.c.run, runs_table.c.config, runs_table.c.summary, runs_table.c.tags).where(
                        runs_table.c.project == "live"))}
            return stored, {(run, *k): v for run, (config, summary, tags) in json_cols.items()
                            for k, v in value_rows(config, summary, tags).items()}

        stored, want = index_and_json()
        assert stored == want and ("a", 1, '["new"]') in stored and ("a", 1, '["gone"]') not in stored
        assert ("a", 2, '["a"]') in stored and ("a", 2, '["b"]') in stored  # r1's tags
        # One commit changing several runs at once (the index's changes of all runs are written together): a key
        # gone from one, a value changed and a key added in the other, a third run new.
        commit_runs(store, "live", {"a": first, "b": {**RUNS["r2"], "summary": {"loss": 0.1, "extra": "e"}},
                                    "c": {**RUNS["r3"], "summary": {"loss": 0.3}}})
        stored, want = index_and_json()
        assert stored == want and ("a", 1, '["new"]') not in stored and ("a", 1, '["gone"]') in stored
        assert stored[("b", 1, '["loss"]')] == ("n", 0.1, None) and ("b", 1, '["extra"]') in stored
        with Api(data_dir=data_dir, db_url=db_url) as api:
            assert [r.id for r in api.runs("live", order="summary_metrics.loss")] == ["b", "c", "a"]
    finally:
        store.close()


BAD: list[tuple[Any, str]] = [
    ({"config.lr": {"$gtt": 1}}, "unknown operator '$gtt' on field 'config.lr'"),
    ({"$xor": []}, "unknown operator '$xor'"),
    ({"$and": {"state": "x"}}, "$and takes a non-empty list"),
    ({"$or": []}, "$or takes a non-empty list"),
    ({"colour": "red"}, "unknown filter field 'colour'"),
    ({"state.x": 1}, "only config.* and summary_metrics.* have paths"),
    ({"config.": 1}, "unknown filter field"),
    ({"config.a..b": 1}, "empty path segment"),
    ({"config.lr": {"$in": 3}}, "$in on 'config.lr' takes a list"),
    ({"config.lr": {"$gt": [1]}}, "$gt on 'config.lr' takes a finite number"),
    ({"config.lr": {"$gt": None}}, "cannot compare with null"),
    ({"created_at": {"$lt": 10**400}}, "$lt on 'created_at': 1000000000000000000000000000000000000000... is too "
                                        "large to compare with any number"),
    ({"config.opt": {"$regex": "a\x00"}}, "$regex on 'config.opt': a pattern cannot hold NUL"),
    ({"notes": {"$regex": "[[:alpha:]]+"}}, "$regex on 'notes': POSIX classes such as [[:alpha:]] are not supported"),
    ({"notes": {"$regex": "(?m)^x"}}, "$regex on 'notes': inline flags other than a leading (?i) are not supported"),
    ({"$nor": {"state": "x"}}, "$nor takes a non-empty list"),
    ({"config.flag": {"$gt": True}}, "cannot order bools"),
    ({"config.lr": {"$regex": "("}}, "$regex on 'config.lr': bad pattern"),
    ({"config.lr": {"$exists": 1}}, "$exists on 'config.lr' takes true or false"),
    ({"state": {"$gt": 3}}, "$gt on 'state' takes a string"),
    ({"created_at": {"$gt": "yesterday"}}, "'created_at' takes epoch seconds or an ISO 8601 time"),
    ({"tags": {"$gt": "a"}}, "tags take"),
    ({"rows": {"$regex": "1"}}, "the field is a number"),
    ({"config.lr": float("inf")}, "finite number"),
    ([1], "a filter must be an object"),
]


@pytest.mark.parametrize(("filters", "message"), BAD, ids=[m for _, m in BAD])
def test_malformed_filters_name_the_operator_or_field(api: Api, filters: Any, message: str) -> None:
    with pytest.raises(QueryError) as e:
        ids(api, filters)
    assert message in str(e.value)


def test_malformed_order_and_paths(api: Api) -> None:
    with pytest.raises(QueryError, match="unknown filter field 'nope'"):
        ids(api, order="-nope")
    with pytest.raises(QueryError, match="cannot be ordered by tags"):
        ids(api, order="tags")
    with pytest.raises(QueryError, match="order must be a field name"):
        ids(api, order="-")
    for typo in ("", "--created_at", "+-name", "-+name"):
        with pytest.raises(QueryError, match="order must be a field name"):
            ids(api, order=typo)
    with pytest.raises(QueryError, match="unknown run state 'failed'"):
        api.runs(P, state="failed")
    with pytest.raises(QueryError, match="project path"):
        api.runs("a/b/c")
    with pytest.raises(QueryError, match="per_page"):
        api.runs(P, per_page=0)


def test_a_pattern_postgresql_refuses_is_a_query_error(api: Api) -> None:
    # Python's re accepts a named group, PostgreSQL's regular expressions do not: the query raised psycopg's
    # DataError (a traceback in the CLI, 503 metadata_unavailable over HTTP, retried by the remote Api).
    f = {"name": {"$regex": "(?P<x>r)1"}}
    if api._engine.url.get_backend_name() == "postgresql":
        with pytest.raises(QueryError, match=r"\$regex: PostgreSQL refused the pattern \(invalid regular expression"):
            ids(api, f)
        with pytest.raises(QueryError, match=r"\$regex: PostgreSQL refused"):
            len(api.runs(P, filters=f))
    else:
        assert ids(api, f) == ["r1"]


def test_migration_adds_the_columns_and_fills_config_and_summary(db_url: str, data_dir: Path) -> None:
    """A database of schema version 2 (sl_runs without the new columns) is upgraded: the columns and indexes
    are added, existing runs get their config and summary, and filters find them."""
    old = MetaData()
    old_runs = Table(
        runs_table.name, old,
        *(Column(c.name, c.type.__class__() if not isinstance(c.type, String) else String(256),
                 primary_key=c.primary_key, nullable=c.nullable)
          for c in runs_table.columns if c.name not in ("group_name", "job_type", "tags", "notes", "config",
                                                        "summary")),
    )
    assert {c.name for c in old_runs.columns} >= {"info", "state_blob", "project", "run"}
    schema_version = Table("sl_schema_version", old, Column("version", Integer, primary_key=True),
                           Column("description", String(256)), Column("applied_at", Float))
    engine = writer_engine(db_url)
    try:
        with engine.begin() as conn:
            old.create_all(conn)
            conn.execute(insert(schema_version), [{"version": v, "description": "old", "applied_at": 0.0}
                                                  for v in (1, 2)])
            conn.execute(insert(old_runs).values(
                project=P, run="old1", name="old", state="finished", partition=0, created_at=1.0, updated_at=1.0,
                last_step=None, rows=0, rejected=0, state_blob=b"",
                info=packb({"config": {"lr": 0.5}, "summary": {"loss": 0.25}})))
    finally:
        engine.dispose()
    MetaStore(db_url).close()
    with Api(data_dir=data_dir, db_url=db_url) as api:
        assert [r.id for r in api.runs(P, {"config.lr": 0.5, "summary_metrics.loss": {"$lt": 1}})] == ["old1"]
        assert api.run(f"{P}/old1").tags == []
    engine = writer_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(runs_table.c.tags).where(runs_table.c.run == "old1")).scalar() == []
    finally:
        engine.dispose()
    _ = LargeBinary


def test_stepline_runs_command(api: Api, db_url: str, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    from stepline.cli import main

    where = ["--data-dir", str(data_dir), "--db-url", db_url]
    assert main(["runs", P, *where, "--filter", '{"config.lr": {"$gte": 0.01}}', "--order", "-summary_metrics.loss",
                 "--columns", "config.lr,summary_metrics.loss"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "name", "state", "group", "job_type", "tags", "rows", "last_step", "created",
                                "config.lr", "summary_metrics.loss"]
    assert [ln.split()[0] for ln in lines[1:]] == ["r3", "r1", "r2"]
    assert "a,b" in lines[2] and "g1" in lines[2] and "0.5" in lines[2]
    assert main(["runs", P, *where, "--format", "json", "--limit", "1", "--state", "finished"]) == 0
    (one,) = capsys.readouterr().out.splitlines()
    assert '"id": "r5"' in one and '"config": {}' in one
    # A malformed filter: one line naming the operator, exit status 1, no traceback (a real process).
    bad = '{"config.lr": {"$gtt": 1}}'
    proc = subprocess.run([sys.executable, "-m", "stepline", "runs", P, *where, "--filter", bad],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "stepline runs: error: unknown operator '$gtt' on field 'config.lr' (known: $eq, $exists, $gt, $gte, $in, "
        "$lt, $lte, $ne, $nin, $regex)"]
