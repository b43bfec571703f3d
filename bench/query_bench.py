"""Read-path timings of ``history.query`` on synthetic history written in the segment format.

    /work/venv/bin/python bench/query_bench.py [--files N]

Cases: a 1000-bucket sampled read of one key of a 1M-step run (target ≤ 20 ms), and a full
``history(samples=None, pandas=False)`` of 100k rows × 20 float columns (2M points, target well under 1 s).
Reports the median and the best of several runs (the segment files are in the OS page cache); by default the
Api's decoded-column cache is off, so every read decodes Parquet; ``--cache-bytes 268435456`` shows repeated
reads with the cache on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from history.query import Api
from schemas.store import RUNTIME, STEP, TIMESTAMP, column_info
from workers.metastore import Commit, MetaStore, RunUpdate, SegmentRef, sqlite_url
from workers.segments import write_table


def make_run(store: MetaStore, data_dir: Path, run: str, n_rows: int, keys: list[str], files: int) -> None:
    rng = np.random.default_rng(0)
    epoch, _ = store.take_partition(0, "bench")
    step = np.arange(n_rows, dtype=np.int64)
    cols = {k: rng.standard_normal(n_rows).cumsum() for k in keys}
    c = Commit(partition=0, epoch=epoch, offset="1-0")
    for part in np.array_split(np.arange(n_rows), files):
        a, b = int(part[0]), int(part[-1]) + 1
        fields = [pa.field(STEP, pa.int64()), pa.field(TIMESTAMP, pa.float64()), pa.field(RUNTIME, pa.float64())]
        arrays = [pa.array(step[a:b]), pa.array(1e9 + step[a:b] * 0.1), pa.array(step[a:b] * 0.1)]
        for k in keys:
            fields.append(pa.field(k, pa.float64(), metadata={"key": k, "kind": "number"}))
            arrays.append(pa.array(cols[k][a:b]))
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        rel, size = write_table(data_dir, "bench", run, table, level=1)
        c.segments.append(SegmentRef("bench", run, 1, a, b - 1, b - a, size, rel))
    info = {"config": {}, "summary": {}, "columns": [column_info(k, "number") for k in keys], "conflicts": [],
            "warnings": [], "rejected": {}, "metrics": [], "start_ts": 1e9, "exit_code": 0, "cursor": n_rows}
    c.runs.append(RunUpdate("bench", run, 0, run, "finished", 1e9, 1e9, n_rows - 1, n_rows, 0, info, b""))
    store.commit(c)


def timeit(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    fn()  # warm: imports, page cache, connection pool
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1, help="segments per run")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--cache-bytes", type=int, default=0,
                    help="Api column cache (default 0: every read decodes Parquet, the cold-cache cost)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        store = MetaStore(sqlite_url(data_dir))
        t0 = time.perf_counter()
        make_run(store, data_dir, "big", 1_000_000, ["loss"], args.files)
        make_run(store, data_dir, "wide", 100_000, [f"m{i:02d}" for i in range(20)], args.files)
        print(f"setup {time.perf_counter() - t0:.1f} s, files per run: {args.files}")
        with Api(data_dir=data_dir, db_url=sqlite_url(data_dir), cache_bytes=args.cache_bytes) as api:
            big, wide = api.run("bench/big"), api.run("bench/wide")
            cases: list[tuple[str, Callable[[], Any]]] = [
                ("sampled 1M steps, 1000 buckets", lambda: big.sampled("loss", buckets=1000)),
                ("sampled 1M steps, x in [250k, 750k]",
                 lambda: big.sampled("loss", buckets=1000, x_min=250_000, x_max=750_000)),
                ("sampled 1M steps, x_axis=_runtime", lambda: big.sampled("loss", x_axis="_runtime")),
                ("history 100k x 20 (2M points), all rows", lambda: wide.history(samples=None, pandas=False)),
                ("history 100k x 20, samples=500", lambda: wide.history(pandas=False)),
                ("history 100k x 20 -> DataFrame", lambda: wide.history(samples=None)),
                ("history 1 key of 1M, samples=500", lambda: big.history(keys=["loss"], pandas=False)),
                ("scan_history 100k x 20 (dicts)", lambda: sum(1 for _ in wide.scan_history())),
            ]
            for name, fn in cases:
                rep = 3 if name.startswith("scan") else args.repeat
                med, best = timeit(fn, rep)
                print(f"{name:45s} median {med:8.1f} ms   best {best:8.1f} ms")
        store.close()


if __name__ == "__main__":
    main()
