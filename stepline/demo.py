"""``stepline demo``: the main job end to end on the embedded default.

Starts the stack (embedded Redis + worker processes + SQLite), logs ``--runs`` simulated training runs
concurrently through the SDK (train/val metrics, ``lr``, an ``epoch`` x-axis via ``define_metric``, a histogram
every 100 steps, strings and bools, and a few deliberate non-monotonic steps), waits until everything is
committed, prints a per-run table and the throughput, and exits non-zero if the history read back differs from
what was logged (an oracle built here from the calls made). The SDK's warnings (the deliberate steps below the
cursor) are gathered while the progress bars draw and summarised after them; the last lines say what to do next.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.settings import WorkerSettings

from . import console
from .embedded import start_embedded_redis, worker_processes

VAL_EVERY = 100
BAD_EVERY = 500


@dataclass
class Expected:
    """What one run must hold: values per key per step, and the count of rejected calls."""

    run_id: str
    steps: int
    values: dict[str, dict[int, Any]] = field(default_factory=dict)
    rejected: int = 0
    points: int = 0

    def put(self, step: int, data: dict[str, Any]) -> None:
        for k, v in data.items():
            self.values.setdefault(k, {})[step] = v
        self.points += len(data)


def simulate(run: Any, exp: Expected, seed: int, progress: list[int]) -> None:
    """One training run: W&B-style calls; the oracle records what must come back."""
    rng = np.random.default_rng(seed)
    run.define_metric("epoch")
    run.define_metric("val/*", step_metric="epoch")
    run.define_metric("val/loss", summary="min")
    loss = 2.5 + rng.random()
    for t in range(exp.steps):
        loss *= 0.999
        noise = rng.normal(0.0, 0.02)
        train = {
            "train/loss": float(loss + noise),
            "train/acc": float(min(1.0, 1.0 - loss / 3.0 + noise)),
            "lr": float(1e-3 * 0.5 * (1 + math.cos(math.pi * t / exp.steps))),
            "phase": "warmup" if t < exp.steps // 10 else "train",
        }
        run.log(train, step=t)
        exp.put(t, train)
        if t % VAL_EVERY == VAL_EVERY - 1:
            epoch = t // VAL_EVERY
            val = {
                "val/loss": float(loss * 1.1 + rng.normal(0.0, 0.05)),
                "val/acc": float(min(1.0, 1.0 - loss / 3.3)),
                "epoch": epoch,
                "improved": bool(rng.random() < 0.5),
            }
            run.log({**val, "weights": _histogram(rng)}, step=t)
            exp.put(t, val)
            exp.points += 1  # the histogram
        if t % BAD_EVERY == BAD_EVERY // 2:
            run.log({"train/loss": 999.0}, step=t - 7)  # deliberate: lower than the current step
            exp.rejected += 1
        progress[0] += 1
    run.finish()


def _histogram(rng: np.random.Generator) -> Any:
    from schemas import Histogram

    return Histogram(rng.normal(0.0, 1.0, 512), num_bins=32)


def verify(api: Any, project: str, exp: Expected) -> list[str]:
    """Differences between the run's history and the oracle (empty when identical)."""
    problems: list[str] = []
    run = api.run(f"{project}/{exp.run_id}")
    hist = run.history(samples=None, pandas=False)
    steps = np.asarray(hist["_step"])
    if steps.tolist() != list(range(exp.steps)):
        problems.append(f"{exp.run_id}: steps are not 0..{exp.steps - 1} (got {len(steps)} rows)")
        return problems
    for key, by_step in exp.values.items():
        col = hist.get(key)
        if col is None:  # columns of a non-number kind may carry their kind in the name
            col = next((v for k, v in hist.items() if k.split(":")[0] == key), None)
        if col is None:
            problems.append(f"{exp.run_id}: column {key!r} missing")
            continue
        for s, v in by_step.items():
            got = col[s]
            got = got.item() if hasattr(got, "item") else got
            if got != v:
                problems.append(f"{exp.run_id}: {key} at step {s} is {got!r}, logged {v!r}")
                break
    if run.rejected.get("non_monotonic_step", 0) != exp.rejected:
        problems.append(f"{exp.run_id}: {run.rejected} rejected, expected {exp.rejected} non_monotonic_step")
    best = min(exp.values["val/loss"].values()) if "val/loss" in exp.values else None
    if best is not None and run.summary.get("val/loss") != {"min": best}:
        problems.append(f"{exp.run_id}: summary val/loss {run.summary.get('val/loss')!r}, expected min {best}")
    return problems


def _wait_for_workers(settings: WorkerSettings, count: int, timeout: float = 60.0) -> None:
    """Until the worker processes beat (each run's finish() then waits for a live worker's commit)."""
    from schemas.clients import sync_redis

    with sync_redis(settings.redis_url, socket_connect_timeout=2.0) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and int(client.hlen(settings.names.workers)) < count:
            time.sleep(0.05)


def _next_steps(project: str, run_id: str, data_dir: Path) -> None:
    here = data_dir.resolve() == Path("stepline-data").resolve()
    flag = "" if here else f" --data-dir {data_dir}"
    print("\nNext:")
    print(f"  stepline history {project}/{run_id} --samples 10{flag}   a run's history in this terminal")
    print(f"  stepline up{flag}   the web page over this history (it prints its URL), and a stack for your scripts")
    print("  python examples/quickstart.py   (with stepline up running) log a run of your own")


def run_demo(args: argparse.Namespace) -> int:
    """The demo: an embedded stack, simulated runs logged through the SDK, history read back and verified."""
    import ingest
    from history import Api

    data_dir: Path = args.data_dir or Path(os.environ.get("STEPLINE_DATA_DIR", "stepline-data"))
    data_dir.mkdir(parents=True, exist_ok=True)
    show = not args.no_progress
    emb = None
    redis_url = args.redis_url
    if not redis_url:
        emb = start_embedded_redis(data_dir, prefer_fake=args.fakeredis)
        redis_url = emb.url
    namespace = "sl"
    settings = WorkerSettings.from_env(redis_url=redis_url, data_dir=data_dir, namespace=namespace)
    project = "demo"
    stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    print(f"stepline demo: {args.runs} runs x {args.steps} steps, {args.workers} worker process(es), "
          f"Redis: {emb.kind if emb else redis_url}, data: {data_dir.resolve()}")
    try:
        with worker_processes(settings, args.workers):
            _wait_for_workers(settings, args.workers)
            exps = [Expected(run_id=f"{stamp}-run{i}", steps=args.steps) for i in range(args.runs)]
            progress = [[0] for _ in exps]
            runs = [
                ingest.init(project=project, id=e.run_id, name=f"demo run {i}", redis_url=redis_url,
                            namespace=namespace, data_dir=str(data_dir),
                            config={"lr": 1e-3, "batch_size": 64, "seed": i},
                            settings={"silent": True})  # (the table below says it all, not 2 lines per run)
                for i, e in enumerate(exps)
            ]
            threads = [threading.Thread(target=simulate, args=(r, e, i, progress[i]))
                       for i, (r, e) in enumerate(zip(runs, exps, strict=True))]
            total = args.runs * args.steps
            with console.gathered_warnings("ingest", "stepline") as warned, console.progress(show) as bars:
                logging_bar = bars.add_task("logging", total=total)
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    bars.update(logging_bar, completed=sum(p[0] for p in progress))
                    time.sleep(0.1)
                for t in threads:
                    t.join()
                bars.update(logging_bar, completed=total)
                t_logged = time.perf_counter() - t0
                committed_bar = bars.add_task("committed", total=total)
                with Api(data_dir=data_dir) as api:
                    deadline = time.monotonic() + max(120.0, total / 2000)
                    while True:
                        done = 0
                        for e in exps:
                            try:
                                r = api.run(f"{project}/{e.run_id}")
                                done += min(r.rows, e.steps) if r.state == "finished" else min(r.rows, e.steps - 1)
                            except LookupError:
                                pass
                        bars.update(committed_bar, completed=done)
                        if done >= total:
                            break
                        if time.monotonic() > deadline:
                            console.error(f"timed out waiting for commits ({done}/{total} rows); "
                                          f"see {data_dir}/workers.log")
                            return 2
                        time.sleep(0.2)
            t_all = time.perf_counter() - t0
            console.print_warnings(warned, "SDK warnings while logging (the demo logs some steps below the cursor "
                                           "on purpose: the workers reject them, see 'rejected' below)")
            problems: list[str] = []
            rows = []
            with Api(data_dir=data_dir) as api:
                for e in exps:
                    r = api.run(f"{project}/{e.run_id}")
                    kinds: dict[str, int] = {}
                    for c in r.columns:
                        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
                    media = sum(n for k, n in kinds.items() if k not in ("number", "string", "bool", "other"))
                    rej = ", ".join(f"{n} {reason}" for reason, n in sorted(r.rejected.items())) or "0"
                    rows.append([e.run_id, r.rows, kinds.get("number", 0), kinds.get("string", 0),
                                 kinds.get("bool", 0), media, rej, len(r.warnings)])
                    problems += verify(api, project, e)
            print()
            console.print_table([("run", "left"), ("rows", "right"), ("number", "right"), ("string", "right"),
                                 ("bool", "right"), ("media", "right"), ("rejected (reason)", "left"),
                                 ("warnings", "right")], rows)
            points = sum(e.points for e in exps)
            print(f"\n{points:,} points in {t_logged:.2f} s of logging ({points / t_logged:,.0f} points/s); "
                  f"all committed and queryable after {t_all:.2f} s ({points / t_all:,.0f} points/s end to end)")
            print(f"history: {data_dir.resolve()} (segments/ Parquet, meta.sqlite)")
            if problems:
                print("\nHISTORY DIFFERS FROM WHAT WAS LOGGED:")
                for p in problems[:50]:
                    print("  " + p)
                return 1
            print("verified: history read back equals what was logged (rows, values, rejections, summaries)")
            _next_steps(project, exps[0].run_id, data_dir)
            return 0
    finally:
        if emb:
            emb.close()

