"""The web page's speed in Chromium (Debian's /usr/bin/chromium through Playwright), against a real gateway.

    flock /work/helpers/bench.lock /work/venv/bin/python bench/web_page.py [--repeat 5]

Cases (targets from issue 17), each the median of ``--repeat`` fresh page loads (fresh browser contexts: no HTTP
cache) after one first load, reported apart as the cold load (the gateway's caches empty):

- run page of a 20k-step run with 30 keys: navigation start → every panel in the viewport drawn (≤ 300 ms);
- a 1M-step key: navigation start → its panel drawn (≤ 400 ms);
- compare of 10 runs (20k steps, 3 keys each): navigation start → every panel in the viewport drawn (≤ 1 s);
- scrolling through a 200-key run's panels (100 px per frame, to the bottom): p95 frame interval (≤ 33 ms).

References measured in the same run: the empty projects page (navigation → table shown) and, from Python, the
sampled replies the run page needs (30 keys, fetched 6 at a time as the browser does), so a slow machine shows in
both. History is written straight into segments (as bench/query_bench.py), the gateway runs in this process on a
real Redis (``--redis-url``, default 127.0.0.1:6379, a fresh namespace). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

# bench/gateway.py would shadow the gateway package: the repository root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from query_bench import make_run

from gateway import GatewaySettings, create_app
from workers.metastore import MetaStore, sqlite_url

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TARGETS = {"run_20k_30keys_ms": 300, "million_step_key_ms": 400, "compare_10_runs_ms": 1000, "scroll_p95_frame_ms": 33}

# Every panel intersecting the viewport has drawn; the answer is the latest draw time since navigation start.
ALL_VISIBLE_DRAWN = """() => {
  const ps = [...document.querySelectorAll('.panel[data-key]')].filter(p => {
    const r = p.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight && !p.hidden; });
  if (!ps.length || !ps.every(p => p.dataset.drawn === '1')) return null;
  return Math.max(...ps.map(p => Number(p.dataset.drawnAt)));
}"""

IDLE_FRAMES = """async () => {
  const gaps = []; let last = performance.now();
  for (let i = 0; i < 180; i++) {
    await new Promise(r => requestAnimationFrame(r));
    const now = performance.now(); gaps.push(now - last); last = now;
  }
  return gaps;
}"""

SCROLL = """async () => {
  const gaps = []; let last = performance.now();
  while (innerHeight + scrollY < document.body.scrollHeight - 2) {
    scrollBy(0, 100);
    await new Promise(r => requestAnimationFrame(r));
    const now = performance.now(); gaps.push(now - last); last = now;
  }
  return gaps;
}"""


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.serve(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "gateway did not start"

    async def serve(self) -> None:
        runner = web.AppRunner(create_app(self.settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.settings.port).start()
        self.stop = asyncio.Event()
        self.ready.set()
        await self.stop.wait()
        await runner.cleanup()

    def close(self) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def page_load(browser: Any, url: str, ready: str, timeout_ms: int = 120_000) -> float:
    """A fresh context (no cache), navigate, and the ms since navigation start at which ``ready`` held."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    got = page.wait_for_function(ready, timeout=timeout_ms, polling=16).json_value()
    ctx.close()
    assert not errors, errors
    return float(got)


FIRST: dict[str, float] = {}


def median_of(fn: Any, repeat: int, name: str = "") -> tuple[float, list[float]]:
    # The first load warms the gateway's caches (sampled_batch keeps encoded replies of unchanged runs) and
    # Chromium's first start of a renderer; it is reported apart as the cold load.
    FIRST[name] = fn()
    xs = [fn() for _ in range(repeat)]
    return statistics.median(xs), xs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        store = MetaStore(sqlite_url(data_dir))
        t0 = time.perf_counter()
        make_run(store, data_dir, "r20k", 20_000, [f"sec{i // 10}/k{i:02d}" for i in range(30)], 1)
        make_run(store, data_dir, "m1", 1_000_000, ["loss"], 1)
        for i in range(10):
            make_run(store, data_dir, f"c{i}", 20_000, ["loss", "acc", "lr"], 1)
        make_run(store, data_dir, "wide", 1_000, [f"g{i // 20:02d}/k{i:03d}" for i in range(200)], 1)
        store.close()
        setup_s = time.perf_counter() - t0
        gs = GatewaySettings(redis_url=args.redis_url, namespace=f"webbench{uuid.uuid4().hex[:8]}", partitions=4,
                             data_dir=data_dir, port=free_port(), rate_per_s=0)
        gw = Gateway(gs)
        base = f"http://127.0.0.1:{gs.port}/"
        try:
            def api_sampled() -> float:
                keys = [f"sec{i // 10}/k{i:02d}" for i in range(30)]
                t = time.perf_counter()
                url = f"{base}api/v1/projects/bench/runs/r20k/sampled?buckets=1000&key="
                with concurrent.futures.ThreadPoolExecutor(6) as ex:
                    list(ex.map(lambda k: urllib.request.urlopen(url + k, timeout=60).read(), keys))
                return (time.perf_counter() - t) * 1e3

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                results: dict[str, Any] = {}
                ref_api, _ = median_of(api_sampled, args.repeat)
                ref_page, _ = median_of(lambda: page_load(
                    browser, base, "() => document.querySelector('#projects') ? performance.now() : null"),
                    args.repeat)
                results["run_20k_30keys_ms"], runs20 = median_of(
                    lambda: page_load(browser, base + "#/p/bench/r/r20k", ALL_VISIBLE_DRAWN), args.repeat,
                    "run_20k_30keys_ms")
                results["million_step_key_ms"], runs1m = median_of(
                    lambda: page_load(browser, base + "#/p/bench/r/m1", ALL_VISIBLE_DRAWN), args.repeat,
                    "million_step_key_ms")
                cmp_url = base + "#/p/bench/compare?runs=" + ",".join(f"c{i}" for i in range(10))
                results["compare_10_runs_ms"], runs_cmp = median_of(
                    lambda: page_load(browser, cmp_url, ALL_VISIBLE_DRAWN), args.repeat, "compare_10_runs_ms")

                def scroll() -> float:
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = ctx.new_page()
                    page.goto(base + "#/p/bench/r/wide")
                    page.wait_for_function(ALL_VISIBLE_DRAWN, timeout=120_000)
                    gaps = page.evaluate(SCROLL)
                    page.wait_for_function(ALL_VISIBLE_DRAWN, timeout=120_000)
                    drawn = page.evaluate("document.querySelectorAll('.uplot').length")
                    ctx.close()
                    gaps.sort()
                    scroll.frames, scroll.drawn = len(gaps), drawn  # type: ignore[attr-defined]
                    return float(gaps[int(0.95 * (len(gaps) - 1))])

                results["scroll_p95_frame_ms"], runs_scroll = median_of(scroll, args.repeat)

                def idle() -> float:  # the machine's own frame jitter: a page doing nothing
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = ctx.new_page()
                    page.goto(base)
                    page.wait_for_selector("#projects")
                    gaps = sorted(page.evaluate(IDLE_FRAMES))
                    ctx.close()
                    return float(gaps[int(0.95 * (len(gaps) - 1))])

                ref_idle, _ = median_of(idle, args.repeat)
                browser.close()
        finally:
            gw.close()
    out = {"bench": "web_page", "repeat": args.repeat, "setup_s": round(setup_s, 1),
           **{k: round(v, 1) for k, v in results.items()},
           "ref_api_sampled_30keys_ms": round(ref_api, 1), "ref_projects_page_ms": round(ref_page, 1),
           "ref_idle_p95_frame_ms": round(ref_idle, 1),
           "scroll_frames": scroll.frames, "charts_alive_after_scroll": scroll.drawn,  # type: ignore[attr-defined]
           "first_load_ms": {k: round(v, 1) for k, v in FIRST.items() if k}, "targets": TARGETS,
           "all": {"run": runs20, "million": runs1m, "compare": runs_cmp, "scroll": runs_scroll}}
    print(f"{'case':32s} {'median':>10s} {'target':>8s}       {'first (cold) load':>18s}")
    for k, target in TARGETS.items():
        cold = f"{FIRST[k]:18.1f}" if k in FIRST else ""
        print(f"{k:32s} {results[k]:10.1f} {target:8d}  {'ok  ' if results[k] <= target else 'OVER'} {cold}")
    print(f"{'ref: 30 sampled replies (py)':32s} {ref_api:10.1f}")
    print(f"{'ref: projects page':32s} {ref_page:10.1f}")
    print(f"{'ref: idle page p95 frame':32s} {ref_idle:10.1f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
