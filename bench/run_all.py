"""Every performance figure of the project in one go: runs the benchmarks one after the other (never two at once on
a small machine), then writes a JSON result file and a Markdown table of target, measured median and verdict.

    python bench/run_all.py [--redis-url redis://127.0.0.1:6379/0] [--out bench/results] [--repeat 3]

Benchmarks run (each prints one JSON line, which is kept whole in the result file):

- ``bench/e2e.py --runs 1 --steps 100000``: end to end (SDK -> Redis -> 1 worker -> committed history), with the
  latency phase, the full and sampled reads, bytes per point and worker RSS with 1,000 active runs, next to raw
  pipelined XADD into the same Redis in the same run;
- ``bench/e2e.py --runs 100 --steps 1000``: end to end with 100 runs logging concurrently;
- ``bench/client.py``: caller-side cost of ``log()`` (20 float keys), sender vs raw XADD of the same frames.

Figures are medians of ``--repeat`` runs where the benchmark repeats (e2e); this machine is noisy, so compare
ratios to the raw-Redis baseline printed next to them rather than absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run_bench(args: list[str]) -> dict[str, Any]:
    """Run one benchmark script; return its JSON line (the first stdout line that parses as an object)."""
    cmd = [sys.executable, str(HERE / args[0]), *args[1:]]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{args[0]} failed with exit code {proc.returncode}")
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            out: dict[str, Any] = json.loads(line)
            out["wall_s"] = round(time.monotonic() - t0, 1)
            out["command"] = " ".join(["python", f"bench/{args[0]}", *args[1:]])
            return out
    raise SystemExit(f"{args[0]} printed no JSON line")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(e1: dict[str, Any], e100: dict[str, Any], client: dict[str, Any]) -> list[dict[str, Any]]:
    m1, m100, log = e1["median"], e100["median"], client["log"]
    rows: list[dict[str, Any]] = []

    def row(figure: str, target: str, measured: float, unit: str, ok: bool, baseline: str = "") -> None:
        rows.append({"figure": figure, "target": target, "measured": measured, "unit": unit, "met": ok,
                     "baseline": baseline})

    row("end to end, 1 run x 100k steps x 20 keys", ">= 2,000,000 points/s", m1["e2e_points_per_s"], "points/s",
        m1["e2e_points_per_s"] >= 2e6,
        f"raw pipelined XADD {m1['raw_xadd_points_per_s'] / 1e6:.0f} M points/s "
        f"(ratio {m1['ratio_e2e_to_raw_xadd']:.3f}); logging side {m1['log_points_per_s'] / 1e6:.2f} M")
    row("end to end, 100 runs x 1k steps, concurrent", ">= 1,000,000 points/s", m100["e2e_points_per_s"],
        "points/s", m100["e2e_points_per_s"] >= 1e6,
        f"raw pipelined XADD {m100['raw_xadd_points_per_s'] / 1e6:.0f} M points/s; "
        f"logging side {m100['log_points_per_s'] / 1e6:.2f} M")
    row("log() with 20 scalar keys, median", "<= 5 us", log["median_us"], "us", log["median_us"] <= 5)
    row("log() with 20 scalar keys, p99", "<= 50 us", log["p99_us"], "us", log["p99_us"] <= 50)
    if "latency_p99_ms" in m1:
        row("log -> visible through Api at 100k points/s, p99", "<= 1 s", m1["latency_p99_ms"] / 1000, "s",
            m1["latency_p99_ms"] <= 1000, f"p50 {m1['latency_p50_ms']:.0f} ms")
    first_read = e1["all"][0]["full_read_s"]
    row("read all 2M points (history(samples=None))", "<= 0.1 s", m1["full_read_s"], "s", m1["full_read_s"] <= 0.1,
        f"the first read of the process (run 1 of {len(e1['all'])}): {first_read:.3f} s, as pyarrow's first Parquet "
        "read imports pandas once")
    if "sampled_read_ms" in m1:
        cold = m1.get("sampled_read_cold_ms", float("nan"))
        row("1000-bucket sampled read, 1M steps (column cache warm)", "<= 20 ms", m1["sampled_read_ms"], "ms",
            m1["sampled_read_ms"] <= 20)
        row("1000-bucket sampled read, 1M steps (cache off: decodes Parquet)", "<= 20 ms", cold, "ms", cold <= 20)
    row("bytes on disk per point (random floats)", "<= 8", m1["bytes_per_point"], "bytes",
        m1["bytes_per_point"] <= 8)
    if "worker_peak_rss_mb_with_runs" in m1:
        row(f"worker peak RSS, {m1.get('rss_runs', 1000)} active runs", "<= 300 MB",
            m1["worker_peak_rss_mb_with_runs"], "MB", m1["worker_peak_rss_mb_with_runs"] <= 300)
    sender, raw = client["sender_alone"]["calls_per_s"], client["raw_xadd"]["calls_per_s"]
    row("sender alone vs raw XADD of the same frames", "(context)", sender, "calls/s", True,
        f"raw XADD {raw:,.0f} calls/s, ratio {sender / raw:.2f}")
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def fmt(v: float, unit: str) -> str:
        if unit in ("points/s", "calls/s"):
            return f"{v / 1e6:.2f} M {unit}"
        return f"{v:.3g} {unit}"

    out = [f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores), Python {meta['python']}, "
           f"Redis at {meta['redis_url']}; medians of {meta['repeat']} end-to-end runs.", "",
           "| figure | target | measured | | context |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = "" if r["target"] == "(context)" else ("met" if r["met"] else "**not met**")
        out.append(f"| {r['figure']} | {r['target']} | {fmt(r['measured'], r['unit'])} | {verdict} | "
                   f"{r['baseline']} |")
    out += ["", "Commands: " + "; ".join(f"`{c}`" for c in meta["commands"])]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default=os.environ.get("STEPLINE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    url = ["--redis-url", args.redis_url]
    e1 = run_bench(["e2e.py", *url, "--runs", "1", "--steps", "100000", "--repeat", str(args.repeat)])
    e100 = run_bench(["e2e.py", *url, "--runs", "100", "--steps", "1000", "--repeat", str(args.repeat),
                      "--latency-seconds", "0", "--sampled-steps", "0", "--rss-runs", "0", "--settle", "0"])
    client = run_bench(["client.py", *url])
    rows = table(e1, e100, client)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
            "cores": os.cpu_count(), "python": platform.python_version(), "redis_url": args.redis_url,
            "repeat": args.repeat, "commands": [e1["command"], e100["command"], client["command"]]}
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"bench": "run_all", "meta": meta, "table": rows, "e2e_1_run": e1, "e2e_100_runs": e100,
              "client": client}
    (args.out / "latest.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    md = markdown(rows, meta)
    (args.out / "latest.md").write_text(md)
    print(json.dumps({"bench": "run_all", "table": rows}))
    print()
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
