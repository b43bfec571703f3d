"""Benchmark of ``wandb.watch``: the time of a training step with and without the hooks, in the same run.

A small MLP (``--width`` hidden units, two hidden layers) trained with SGD on random CPU data; each step is
forward, cross-entropy, backward, ``optimizer.step()`` and ``run.log({"loss": loss})`` (the 0-d tensor, as scripts
do). Two copies of the model train side by side in one process and one run: the reference has no hooks, the other
is watched with ``log="all", log_freq=1000`` (W&B's default frequency); a third, unwatched copy (``reference_b``)
measures the noise floor: its ratio to the reference is what "no difference" looks like on this machine. Steps
rotate in blocks among the three (the order rotates too) so drift of a loaded machine hits all alike; every step
is timed with ``perf_counter_ns``. Steps where a hook logs (every 1000th) are reported apart: the question is the cost
of the hooks that do not log.

Needs Redis (the run sends its frames there, under a namespace ``bench-<random>`` deleted afterwards). Prints ONE
JSON line, then a human-readable table::

    python bench/watch.py [--redis-url redis://127.0.0.1:6379/0] [--steps 6000] [--block 20] [--width 256]
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import tempfile
import time
import uuid
from typing import Any

import redis
import torch

import ingest


def _model(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    )


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--steps", type=int, default=6000, help="training steps per model")
    ap.add_argument("--block", type=int, default=20, help="steps of one model before switching to the other")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--log-freq", type=int, default=1000)
    ap.add_argument("--log", default="all", choices=["all", "gradients", "parameters"], help="watch(log=...)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core for the step: the measurement is not a race between thread pools

    ns = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url)
    with tempfile.TemporaryDirectory() as tmp:
        run = ingest.init(project="bench-watch", redis_url=args.redis_url, namespace=ns, data_dir=tmp)
        plain, plain_b, watched = _model(args.width), _model(args.width), _model(args.width)
        run.watch(watched, log=args.log, log_freq=args.log_freq, idx=0)
        opts = {id(m): torch.optim.SGD(m.parameters(), lr=0.01) for m in (plain, plain_b, watched)}
        x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
        times: dict[str, list[float]] = {"reference": [], "reference_b": [], "watched": []}
        logging_steps: list[float] = []
        count = {"watched": 0}

        def step(name: str, model: torch.nn.Module) -> None:
            opt = opts[id(model)]
            t0 = time.perf_counter_ns()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log({f"{name}/loss": loss})
            dt = (time.perf_counter_ns() - t0) / 1000
            if name == "watched":
                count["watched"] += 1
                if count["watched"] % args.log_freq == 0:  # a step where the hooks log
                    logging_steps.append(dt)
                    return
            times[name].append(dt)

        for _ in range(20):  # warm-up (allocator, autograd caches), not counted
            step("reference", plain)
        times["reference"].clear()
        rounds: list[dict[str, float]] = []  # per round, each model's median step time over its block
        for b in range(max(1, args.steps // args.block)):
            order = [("reference", plain), ("reference_b", plain_b), ("watched", watched)]
            medians: dict[str, float] = {}
            for name, model in order[b % 3 :] + order[: b % 3]:
                start = len(times[name])
                for _ in range(args.block):
                    step(name, model)
                medians[name] = statistics.median(times[name][start:])
            rounds.append(medians)
        fin: Any = run.finish
        res = fin(wait=False) if "wait" in inspect.signature(fin).parameters else fin()
        for key in client.scan_iter(f"{ns}:*"):
            client.delete(key)
    client.close()

    ref, ref_b, w = times["reference"], times["reference_b"], times["watched"]
    # Paired per round (the three blocks of a round ran back to back): drift of the machine's load cancels out.
    paired = statistics.median(r["watched"] / r["reference"] for r in rounds)
    noise = statistics.median(r["reference_b"] / r["reference"] for r in rounds)
    spread = sorted(abs(r["reference_b"] / r["reference"] - 1) for r in rounds)
    out = {
        "bench": "watch",
        "steps_per_model": len(ref),
        "width": args.width,
        "log_freq": args.log_freq,
        "log": args.log,
        "reference_median_us": round(statistics.median(ref), 1),
        "watched_median_us": round(statistics.median(w), 1),
        "ratio_median": round(statistics.median(w) / statistics.median(ref), 4),
        "reference_b_median_us": round(statistics.median(ref_b), 1),
        "noise_ratio_median": round(statistics.median(ref_b) / statistics.median(ref), 4),
        "paired_ratio": round(paired, 4),
        "paired_noise_ratio": round(noise, 4),
        "noise_p50_abs": round(spread[len(spread) // 2], 4),
        "rounds": len(rounds),
        "reference_p90_us": round(_pct(ref, 0.9), 1),
        "watched_p90_us": round(_pct(w, 0.9), 1),
        "logging_steps": len(logging_steps),
        "logging_step_median_us": round(statistics.median(logging_steps), 1) if logging_steps else None,
        "frames_sent": res.sent_frames,
        "torch": torch.__version__,
    }
    print(json.dumps(out, sort_keys=True))
    rows = [
        ("training step, no watch (reference), median", f"{out['reference_median_us']} us"),
        (f"training step, watch(log={args.log!r}), hooks not logging, median", f"{out['watched_median_us']} us"),
        ("ratio watched / reference (median of all steps)", f"{out['ratio_median']}"),
        ("noise floor: second unwatched copy / reference (same)", f"{out['noise_ratio_median']}"),
        (f"paired ratio watched / reference (median of {len(rounds)} rounds)", f"{out['paired_ratio']}"),
        (
            "paired noise floor: unwatched copy / reference",
            f"{out['paired_noise_ratio']} (a round's |ratio - 1| median {out['noise_p50_abs']})",
        ),
        ("p90 reference / watched", f"{out['reference_p90_us']} us / {out['watched_p90_us']} us"),
        (
            f"steps where the hooks log (every {args.log_freq}th), median",
            f"{out['logging_step_median_us']} us ({len(logging_steps)} steps)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"MLP 64-{args.width}-{args.width}-10, batch 64, CPU, 1 thread; {len(ref)} steps per model, same run")
    for name, val in rows:
        print(f"{name:<{width}}  {val}")


if __name__ == "__main__":
    main()
