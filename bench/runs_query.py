"""Finding runs: filtered, ordered ``Api.runs`` queries over 100,000 runs (config with 20 keys, summary with 20
keys), on SQLite and on PostgreSQL, next to an unfiltered listing of the newest runs measured in the same run.

    flock /work/helpers/bench.lock /work/venv/bin/python bench/runs_query.py [--runs 100000] [--pg postgresql://...]

The runs are written in bulk into ``sl_runs`` in the form a worker's commit gives them (``info`` msgpack plus the
JSON copies of config and summary, :func:`workers.metastore.run_columns`), in a fresh SQLite file and a fresh
PostgreSQL database (dropped afterwards). Each case is the first page (50 runs) of a query, as ``stepline runs``
or the web page asks for it, and ``len()`` (a COUNT of the matches) separately; medians of ``--repeat`` calls after
one warm-up. Target (issue 16): a filtered, ordered query <= 50 ms on each database.

The index of config and summary values (``sl_run_values``, :mod:`schemas.run_values`) is written by the worker's
commit; its cost there is measured too: ``--commits`` commits of 50 live runs each (config 20 keys, unchanged;
summary 20 keys, all new values each commit, as a run logging every key does), as ``MetaStore.commit`` writes them,
with the index kept and with its maintenance switched off (the reference), medians per commit.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert

import workers.metastore
from history.query import Api
from schemas import packb
from schemas.run_values import run_values, value_rows
from schemas.store import runs, writer_engine
from workers.metastore import Commit, MetaStore, RunUpdate, run_columns, sqlite_url

OPTIMIZERS = ("adam", "sgd", "adamw", "lion")
CASES: list[tuple[str, dict[str, Any] | None, str]] = [
    ("newest 50 (reference)", None, "-created_at"),
    ("config.lr > x, finished; by -summary.val_loss", {"$and": [{"config.lr": {"$gt": 0.05}},
                                                               {"state": "finished"}]}, "-summary_metrics.val_loss"),
    ("optimizer = adam, group = g7; newest", {"config.optimizer": "adam", "group": "g7"}, "-created_at"),
    ("tags has 'best', acc >= 0.9; by config.lr", {"tags": "best", "summary_metrics.acc": {"$gte": 0.9}},
     "config.lr"),
    ("$or of two ranges; by -created_at", {"$or": [{"summary_metrics.loss": {"$lt": 0.01}},
                                                   {"config.batch": {"$in": [32, 64]}}]}, "-created_at"),
]


def fill(url: str, n: int) -> None:
    MetaStore(url).close()  # creates the schema (migrations)
    rng = random.Random(0)
    engine = writer_engine(url)
    try:
        batch: list[dict[str, Any]] = []
        values: list[dict[str, Any]] = []
        for i in range(n):
            config: dict[str, Any] = {"lr": rng.random() / 10, "batch": rng.choice([16, 32, 64, 128]),
                                      "optimizer": rng.choice(OPTIMIZERS)}
            config.update({f"c{j:02d}": rng.random() for j in range(17)})
            summary: dict[str, Any] = {"loss": rng.random(), "acc": rng.random(), "val_loss": rng.random()}
            summary.update({f"s{j:02d}": rng.random() for j in range(17)})
            info = {"config": config, "summary": summary, "group": f"g{i % 100}", "job_type": "train",
                    "tags": ["best"] if i % 50 == 0 else ["base"], "notes": None, "columns": [], "warnings": [],
                    "conflicts": [], "rejected": {}, "metrics": []}
            columns = run_columns(info)
            batch.append({"project": "bench", "run": f"r{i:06d}", "name": f"run {i}",
                          "state": "finished" if i % 10 else "running", "partition": i % 16,
                          "created_at": 1.7e9 + i, "updated_at": 1.7e9 + i, "last_step": 1000, "rows": 1000,
                          "rejected": 0, "info": packb(info), "state_blob": b"", **columns})
            # The worker's commit writes these in the run's transaction (workers.metastore, schemas.run_values).
            values += [{"project": "bench", "run": f"r{i:06d}", "src": src, "path": path, "kind": kind, "num": num,
                        "str": text} for (src, path), (kind, num, text)
                       in value_rows(columns["config"], columns["summary"], columns["tags"]).items()]
            if len(batch) == 5000:
                with engine.begin() as conn:
                    conn.execute(insert(runs), batch)
                    conn.execute(insert(run_values), values)
                batch, values = [], []
        if batch:
            with engine.begin() as conn:
                conn.execute(insert(runs), batch)
                conn.execute(insert(run_values), values)
        if url.startswith("postgresql"):
            # VACUUM (outside a transaction) as autovacuum would for runs that stopped changing: it marks the pages
            # all-visible, so index-only scans of sl_run_values (a filter's candidates) skip the table. ANALYZE
            # writes the planner's statistics.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE sl_runs")
                conn.exec_driver_sql("VACUUM ANALYZE sl_run_values")
        else:
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(label: str, url: str, data_dir: Path, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Api(data_dir=data_dir, db_url=url) as api:
        for name, filters, order in CASES:
            page = median_ms(lambda f=filters, o=order: api.runs("bench", f, o, per_page=50).page(0), repeat)
            count = median_ms(lambda f=filters, o=order: len(api.runs("bench", f, o)), repeat)
            matches = len(api.runs("bench", filters, order))
            out[name] = {"page_ms": round(page, 2), "count_ms": round(count, 2), "matches": matches}
            print(f"{label:10s} {name:50s} {page:8.1f} ms  (COUNT {count:7.1f} ms, {matches} matches)")
    return out


def commit_cost(url: str, commits: int) -> dict[str, float]:
    """Median ms per ``MetaStore.commit`` of 50 run updates, with the value index kept and without it."""
    out: dict[str, float] = {}
    keep = workers.metastore.write_values_many
    store = MetaStore(url)
    try:
        for label, project in (("without_index_ms", "c0"), ("with_index_ms", "c1")):
            workers.metastore.write_values_many = keep if label == "with_index_ms" else (lambda *a, **k: 0)  # type: ignore[assignment]
            rng = random.Random(1)
            epoch, _ = store.take_partition(0, "bench")
            times = []
            for c in range(commits + 1):
                commit = Commit(0, epoch, f"{c + 1}-0")
                for r in range(50):
                    config = {f"c{j:02d}": j * 0.5 for j in range(19)} | {"optimizer": "adam"}
                    summary = {f"s{j:02d}": rng.random() for j in range(20)}
                    info = {"config": config, "summary": summary, "group": None, "job_type": None, "tags": [],
                            "notes": None, "columns": [], "warnings": [], "conflicts": [], "rejected": {},
                            "metrics": []}
                    commit.runs.append(RunUpdate(project=project, run=f"r{r}", partition=0, name=None,
                                                 state="running", created_at=1.0, updated_at=float(c),
                                                 last_step=c, rows=c, rejected=0, info=info, state_blob=b""))
                t0 = time.perf_counter()
                store.commit(commit)
                if c:  # the first commit inserts the runs: the steady state is the updates that follow
                    times.append(time.perf_counter() - t0)
            out[label] = round(statistics.median(times) * 1e3, 2)
    finally:
        workers.metastore.write_values_many = keep  # type: ignore[assignment]
        store.close()
    print(f"commit of 50 run updates: {out['with_index_ms']:.1f} ms with the value index, "
          f"{out['without_index_ms']:.1f} ms without")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--commits", type=int, default=40)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="a PostgreSQL server's URL; a fresh database is made next to this one ('' skips)")
    args = ap.parse_args()
    result: dict[str, Any] = {"bench": "runs_query", "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        fill(sqlite_url(d), args.runs)
        print(f"SQLite: {args.runs} runs written in {time.perf_counter() - t0:.1f} s")
        result["sqlite"] = measure("sqlite", sqlite_url(d), d, args.repeat)
        (d / "commits").mkdir()
        result["sqlite_commit"] = commit_cost(sqlite_url(d / "commits"), args.commits)
        if args.pg:
            import psycopg

            base = args.pg.replace("postgresql+psycopg://", "postgresql://")
            name = f"sl_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(base, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            url = "postgresql+psycopg://" + base.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
            try:
                t0 = time.perf_counter()
                fill(url, args.runs)
                print(f"PostgreSQL: {args.runs} runs written in {time.perf_counter() - t0:.1f} s")
                result["postgresql"] = measure("postgresql", url, d, args.repeat)
                result["postgresql_commit"] = commit_cost(url, args.commits)
            finally:
                with psycopg.connect(base, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    worst = {db: max(v["page_ms"] for k, v in result[db].items() if k != CASES[0][0])
             for db in ("sqlite", "postgresql") if db in result}
    print("target <= 50 ms per filtered, ordered page: " + ", ".join(
        f"{db} worst {ms:.1f} ms ({'met' if ms <= 50 else 'NOT met'})" for db, ms in worst.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
