"""A run page left open on a live run, in wall-clock time: does it stay under 100 MB of browser memory (issue 17,
item 7)? The browser test ``test_live_page_memory_stays_bounded`` checks the same in accelerated form; this runs
it for real.

    flock /work/helpers/bench.lock /work/venv/bin/python bench/web_live_hour.py [--minutes 60] [--rate 10]

(Type check: ``MYPYPATH=.:tests mypy --strict bench/web_live_hour.py``: the repository root first, as at run time,
since bench/gateway.py would shadow the gateway package.)

What runs is what a deployment runs: Redis (``--redis-url``, default 127.0.0.1:6379, a fresh key namespace removed
at the end), one worker and the gateway (tests/support/browser_stack.py: each in a thread of this process with its
own event loop, against a temporary data directory), an SDK client logging a training-like run (10 keys in three
sections, ``--rate`` steps a second, default 10: 36,000 steps an hour) and Debian's Chromium (/usr/bin/chromium
through Playwright, never a downloaded browser) showing the run page ``#/p/<project>/r/<run>`` at 1400x1000, which
follows the run over its SSE stream at the page's default live interval for ``--minutes`` (default 60).

Sampled every minute (``--sample-s``), each after a forced GC (CDP ``HeapProfiler.collectGarbage``):

- the page's JS heap: CDP ``Performance.getMetrics`` JSHeapUsedSize (also Nodes, JSEventListeners: counts that
  include detached DOM nodes and listeners not yet collected);
- the renderer process's memory from /proc (CDP ``SystemInfo.getProcessInfo`` has no memory figures): the
  process among this process's descendants whose command line has ``--type=renderer`` and the largest VmRSS
  (one page, so one renderer; a spare renderer is small; the browser UI's ``--top-chrome-webui`` renderer is left
  out). VmRSS counts shared pages too (Chromium's own code,
  fonts: RssFile, and shared memory with the browser process: RssShmem), so RssAnon (private anonymous memory:
  the V8 heap, Blink, Skia) and Pss (/proc/<pid>/smaps_rollup, shared pages split among their users) are shown
  beside it;
- DOM elements in the document, ``window.__stepline.live`` (SSE events and rows pushed), and for train/loss the
  chart's point count, drawn points and last drawn step against the last step logged (the page keeps up).

At the end: a table (start, every 10 minutes, end, max), growth rates fitted over the samples after the first 10
minutes (a steady climb is a leak even under the limit), page errors (``pageerror``) and console errors, one JSON
line, and pass/fail against 100 MB for the JS heap, the renderer's VmRSS, RssAnon and Pss. Exit status 1 on a fail.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

# bench/gateway.py would shadow the gateway package: the repository root goes first; tests/ for support/.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from support.browser_stack import Stack  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
LIMIT_MB = 100.0
KEYS = ["train/loss", "train/acc", "train/lr", "train/grad_norm", "train/tokens_per_s",
        "val/loss", "val/acc", "sys/gpu_util", "sys/gpu_mem_gb", "sys/cpu_util"]
WATCHED = "train/loss"

PAGE_STATE = """(key) => {
  const s = window.__stepline, c = s.charts[key];
  return {
    dom_elements: document.getElementsByTagName('*').length,
    live_events: s.live.events, live_rows: s.live.rows, live_names: s.live.names,
    live_text: document.getElementById('live')?.textContent ?? null,
    chart_count: c ? c.count : null,
    chart_points: c ? c.x.length : null,
    chart_last_step: c && c.step.length ? c.step[c.step.length - 1] : null,
    charts_drawn: Object.keys(s.charts).length,
  };
}"""


def values(step: int) -> dict[str, float]:
    """One training step's metrics: smooth trends plus a little deterministic wiggle."""
    w = math.sin(step * 0.37) * 0.02
    return {
        "train/loss": 2.5 * math.exp(-step / 20_000) + 0.3 + w,
        "train/acc": 0.95 - 0.85 * math.exp(-step / 15_000) + w / 2,
        "train/lr": 3e-4 * min(1.0, step / 2_000) * (0.5 + 0.5 * math.cos(math.pi * (step % 36_000) / 36_000)),
        "train/grad_norm": 1.0 + 0.5 * math.exp(-step / 5_000) + abs(w) * 10,
        "train/tokens_per_s": 52_000 + 800 * math.sin(step / 50),
        "val/loss": 2.6 * math.exp(-step / 20_000) + 0.35,
        "val/acc": 0.93 - 0.83 * math.exp(-step / 15_000),
        "sys/gpu_util": 0.9 + 0.05 * math.sin(step / 7),
        "sys/gpu_mem_gb": 61.5 + 0.1 * math.sin(step / 300),
        "sys/cpu_util": 0.35 + 0.1 * math.sin(step / 11),
    }


class Logger:
    """Logs one step every 1/rate s in a thread, on an absolute schedule (a slow call does not shift the later
    ones)."""

    def __init__(self, run: Any, rate: float) -> None:
        self.sdk_run = run
        self.rate = rate
        self.step = -1  # the last step logged
        self.behind_max_s = 0.0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._log, name="logger", daemon=True)

    def _log(self) -> None:
        t0 = time.monotonic()
        step = 0
        while not self.stop_event.is_set():
            due = t0 + step / self.rate
            now = time.monotonic()
            if due > now:
                self.stop_event.wait(due - now)
                if self.stop_event.is_set():
                    break
            else:
                self.behind_max_s = max(self.behind_max_s, now - due)
            self.sdk_run.log(values(step), step=step)
            self.step = step
            step += 1


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (from /proc/<pid>/stat's parent ids)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: list[int] = []
    todo = [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, RssShmem (status) and Pss (smaps_rollup) of one process, in MB (10^6 bytes)."""
    out: dict[str, float] = {}
    for name in ("status", "smaps_rollup"):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Pss") and v.strip().endswith("kB"):
                out[k] = int(v.split()[0]) * 1024 / 1e6
    return out


def chromium_memory() -> dict[str, Any]:
    """The page's renderer (largest-VmRSS renderer below this process) and all Chromium processes' Pss summed."""
    renderers: list[tuple[int, dict[str, float]]] = []
    total_pss = 0.0
    for pid in descendants(os.getpid()):
        try:
            # Chromium rewrites its children's command lines into one space-separated string: match bytes.
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"chromium" not in cmd.split(b"\0")[0].split(b" ")[0]:
                continue
            mem = proc_mem(pid)
        except OSError:  # exited meanwhile
            continue
        total_pss += mem.get("Pss", 0.0)
        if b"--type=renderer" in cmd and b"--top-chrome-webui" not in cmd:  # not the browser's own UI
            renderers.append((pid, mem))
    if not renderers:
        raise RuntimeError("no Chromium renderer process found below this process")
    pid, mem = max(renderers, key=lambda r: r[1]["VmRSS"])
    return {"renderer_pid": pid, "renderers": len(renderers), "chromium_pss_mb": round(total_pss, 1),
            **{f"renderer_{k.lower()}_mb": round(v, 1) for k, v in mem.items()}}


def sample(page: Any, cdp: Any, logger: Logger, t0: float) -> dict[str, Any]:
    cdp.send("HeapProfiler.collectGarbage")
    m = {x["name"]: x["value"] for x in cdp.send("Performance.getMetrics")["metrics"]}
    logged = logger.step
    s: dict[str, Any] = {"minute": round((time.monotonic() - t0) / 60, 2), "logged_step": logged,
                         "js_heap_mb": round(m["JSHeapUsedSize"] / 1e6, 2),
                         "js_heap_total_mb": round(m["JSHeapTotalSize"] / 1e6, 2),
                         "cdp_nodes": int(m["Nodes"]), "listeners": int(m["JSEventListeners"]),
                         "documents": int(m["Documents"])}
    s.update(page.evaluate(PAGE_STATE, WATCHED))
    s.update(chromium_memory())
    return s


def slope_per_hour(samples: list[dict[str, Any]], key: str) -> float | None:
    """Least-squares growth of ``key`` per hour over the samples after minute 10 (or all when the run is short)."""
    pts = [(s["minute"], float(s[key])) for s in samples if s["minute"] >= 10] or \
        [(s["minute"], float(s[key])) for s in samples]
    if len(pts) < 3:
        return None
    fit = statistics.linear_regression([p[0] for p in pts], [p[1] for p in pts])
    return fit.slope * 60


COLUMNS = [("minute", "min", "{:.0f}"), ("logged_step", "logged", "{}"), ("chart_last_step", "drawn@", "{}"),
           ("chart_count", "count", "{}"), ("chart_points", "points", "{}"), ("live_events", "events", "{}"),
           ("live_rows", "rows", "{}"), ("js_heap_mb", "heap MB", "{:.1f}"), ("dom_elements", "elements", "{}"),
           ("cdp_nodes", "nodes", "{}"), ("listeners", "listeners", "{}"),
           ("renderer_vmrss_mb", "rss MB", "{:.1f}"), ("renderer_rssanon_mb", "anon MB", "{:.1f}"),
           ("renderer_pss_mb", "pss MB", "{:.1f}"), ("chromium_pss_mb", "all pss", "{:.1f}")]


def table(samples: list[dict[str, Any]]) -> str:
    rows = [s for s in samples if round(s["minute"]) % 10 == 0]
    if samples[-1] is not rows[-1]:
        rows.append(samples[-1])
    cells = [[("-" if s.get(k) is None else f.format(s[k])) for k, _, f in COLUMNS] for s in rows]
    cells.append(["max"] + ["" if k in ("logged_step", "chart_last_step") else f.format(max(
        s[k] for s in samples if s.get(k) is not None)) for k, _, f in COLUMNS[1:]])
    head = [h for _, h, _ in COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=10.0, help="steps logged a second")
    ap.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    os.environ.setdefault("STEPLINE_SILENT", "1")

    from playwright.sync_api import sync_playwright

    namespace = f"livehour{uuid.uuid4().hex[:8]}"
    errors: list[str] = []
    samples: list[dict[str, Any]] = []
    project, run_id = "livehour", "r1"
    with tempfile.TemporaryDirectory(prefix="stepline-livehour-") as tmp:
        stack = Stack(args.redis_url, namespace, Path(tmp)).start()
        logger: Logger | None = None
        try:
            run = stack.init(project, run_id, config={"lr": 3e-4, "model": "bench"})
            logger = Logger(run, args.rate)
            logger.thread.start()
            stack.wait(f"{project}/{run_id}", lambda v: v.rows >= 1, what="a first committed row")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
                page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
                        if m.type == "error" else None)
                page.on("crash", lambda _: errors.append("page crashed"))
                page.goto(stack.url + f"#/p/{project}/r/{run_id}")
                page.wait_for_function(
                    f"document.querySelector('.panel[data-key=\"{WATCHED}\"]')?.dataset.drawn === '1'",
                    timeout=30_000)
                cdp = ctx.new_cdp_session(page)
                cdp.send("Performance.enable")
                t0 = time.monotonic()
                n = int(args.minutes * 60 / args.sample_s)
                for i in range(n + 1):
                    wait_ms = (t0 + i * args.sample_s - time.monotonic()) * 1000
                    if wait_ms > 0:
                        page.wait_for_timeout(wait_ms)  # not time.sleep: Playwright delivers page events meanwhile
                    s = sample(page, cdp, logger, t0)
                    samples.append(s)
                    print(json.dumps({"sample": s}), flush=True)
                browser.close()
        finally:
            if logger is not None:
                logger.stop_event.set()
                logger.thread.join(10)
            try:
                if logger is not None:
                    logger.sdk_run.finish(timeout=30)
            finally:
                stack.close()
                client = redis.Redis.from_url(args.redis_url)
                for key in client.scan_iter(match=f"{namespace}:*", count=1000):
                    client.delete(key)
                client.close()

    assert logger is not None
    last = samples[-1]
    growth = {k: slope_per_hour(samples, k) for k in ("js_heap_mb", "renderer_vmrss_mb", "renderer_rssanon_mb",
                                                       "renderer_pss_mb", "cdp_nodes", "listeners", "dom_elements")}
    steps = [s["chart_last_step"] for s in samples]
    kept_up = all(b is not None and a is not None and b > a for a, b in itertools.pairwise(steps))
    lag = [s["logged_step"] - s["chart_last_step"] for s in samples if s["chart_last_step"] is not None]
    checks = {f"{k}_under_{LIMIT_MB:g}": max(s[k] for s in samples) < LIMIT_MB
              for k in ("js_heap_mb", "renderer_vmrss_mb", "renderer_rssanon_mb", "renderer_pss_mb")}
    checks["chart_kept_up"] = kept_up
    checks["no_page_errors"] = not errors
    result = {"bench": "web_live_hour", "minutes": args.minutes, "rate": args.rate, "keys": len(KEYS),
              "logged_steps": logger.step + 1, "logger_behind_max_s": round(logger.behind_max_s, 3),
              "max": {k: max(s[k] for s in samples) for k in ("js_heap_mb", "renderer_vmrss_mb",
                                                                 "renderer_rssanon_mb", "renderer_pss_mb",
                                                                 "chromium_pss_mb", "cdp_nodes", "dom_elements")},
              "growth_per_hour_after_10min": {k: None if v is None else round(v, 2) for k, v in growth.items()},
              "lag_steps_max": max(lag) if lag else None, "live_events": last["live_events"],
              "live_rows": last["live_rows"], "live_names": last["live_names"], "errors": errors[:50],
              "error_count": len(errors), "checks": checks, "pass": all(checks.values()), "samples": samples}
    print()
    print(table(samples))
    print()
    print("growth per hour (least squares, samples after minute 10): "
          + ", ".join(f"{k} {'-' if v is None else f'{v:+.2f}'}" for k, v in growth.items()))
    print(f"largest lag of the drawn {WATCHED} behind the last step logged: {max(lag) if lag else '-'} steps; "
          f"logger fell behind its schedule by at most {logger.behind_max_s:.2f} s")
    print(f"page errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:20]))
    print("renderer memory from /proc/<pid>/status (VmRSS includes shared pages: Chromium's code, fonts, shared "
          "memory with the browser process) and /proc/<pid>/smaps_rollup (Pss)")
    for k, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {k}")
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
