"""The run workspace of issue 17 in real headless Chromium against a real worker and gateway: each defect the issue
lists has a test here that fails on the page before the fix (run with ``STEPLINE_TEST_WEB_DIR`` pointing at an older
``gateway/web`` to see it), and the workspace features (tick labels, tooltips, smoothing, log scales, sync zoom,
full screen, the view in the URL, panel search, overview, runs table, media in compare, live updates over SSE).

Screenshots go to ``tests/browser/screenshots/`` (ignored by git; ``STEPLINE_SCREENSHOTS`` overrides), printed.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.browser_stack import Stack

import ingest
from gateway.keys import KeyStore, writer_engine

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("STEPLINE_SCREENSHOTS", Path(__file__).parent / "screenshots"))


def shot(page: Any, name: str, full: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=full)
    print(f"\nscreenshot: {path}")


def panel(page: Any, key: str) -> Any:
    p = page.locator(f'.panel[data-key="{key}"]')
    p.scroll_into_view_if_needed()
    return p


def wait_drawn(page: Any, key: str, cond: str = "true") -> dict[str, Any]:
    page.wait_for_function(f"(() => {{ const c = window.__stepline.charts[{key!r}]; return c && ({cond}); }})()")
    out: dict[str, Any] = page.evaluate(f"window.__stepline.charts[{key!r}]")
    return out


def uplot(key: str) -> str:
    """A JS expression for the uPlot instance of a panel's chart."""
    return f"document.querySelector('.panel[data-key=\"{key}\"]').__panel.chart?.u"


def finished(stack: Stack, path: str) -> None:
    stack.wait(path, lambda v: v.state == "finished", what="finished")


# --- item 1: the defects --------------------------------------------------------------------------------------------


def test_zoom_draws_the_refetched_points(stack: Stack, page: Any) -> None:
    """Zoom showed stale data: setData(data, false) without a redraw left the old line stretched."""
    run = stack.init("z", "z1")
    rng = np.random.default_rng(1)
    for s in range(20_000):
        run.log({"loss": float(rng.normal())}, step=s)
    run.finish()
    finished(stack, "z/z1")
    page.goto(stack.url + "#/p/z/r/z1")
    panel(page, "loss")
    wait_drawn(page, "loss", "c.count === 20000")
    page.evaluate(f"(() => {{ const u = {uplot('loss')}; window.__draws = [];"
                  " (u.hooks.draw ||= []).push((u) => window.__draws.push({n: u.data[0].length,"
                  " min: u.scales.x.min, max: u.scales.x.max})); })()")
    box = page.locator('.panel[data-key="loss"] .u-over').bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.40, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.45, y, steps=5)
    page.mouse.up()
    zoomed = wait_drawn(page, "loss", "c.zoom !== null")
    lo, hi = zoomed["zoom"]
    api = stack.get_json("projects/z/runs/z1/sampled", key="loss", x_axis="_step", buckets=zoomed["buckets"],
                         x_min=lo, x_max=hi)
    assert zoomed["x"] == api["x"]
    # What was drawn last: the refetched points, over the zoomed range.
    page.wait_for_function(f"window.__draws.length && window.__draws.at(-1).n === {len(api['x'])}", timeout=10_000)
    last = page.evaluate("window.__draws.at(-1)")
    assert last["min"] == pytest.approx(lo) and last["max"] == pytest.approx(hi)
    assert "zoom=" in page.evaluate("location.hash")  # the zoom is in the URL


def test_non_finite_values_render(stack: Stack, page: Any) -> None:
    """A NaN or ±inf in a key made its panel show "500 internal"; the panel must draw and say what it left out."""
    run = stack.init("nf", "n1", config={"lr": float("inf"), "opt": {"eps": float("nan"), "name": "adam"}})
    for s in range(50):
        v = {10: float("nan"), 20: float("inf"), 30: float("-inf")}.get(s, 1.0 / (s + 1))
        run.log({"loss": v, "acc": s / 50}, step=s)
    run.log({"last": float("-inf")}, step=50)
    run.finish()
    finished(stack, "nf/n1")
    page.goto(stack.url + "#/p/nf/r/n1")
    p = panel(page, "loss")
    c = wait_drawn(page, "loss")
    assert p.locator(".err").count() == 0
    assert c["count"] == 50 and "Infinity" in c["y"] and "-Infinity" in c["y"]
    assert "not drawn: 1 NaN, 1 +inf, 1 -inf" in p.locator(".note").inner_text()
    assert page.evaluate(f"{uplot('loss')}.data[1].filter(v => v !== null).length") == 47
    # The tooltip names them: hover over step 20.
    page.evaluate(f"(() => {{ const u = {uplot('loss')}; u.setCursor({{left: u.valToPos(20, 'x'), top: 10}}); }})()")
    assert "+inf" in p.locator(".tip").inner_text()
    ov = page.locator("#overview").inner_text()
    # config lr, opt.eps and summary last: named as Python and JavaScript spell them (test_web_live_compare.py)
    assert "lr Infinity" in ov and "eps NaN" in ov and "last\t-Infinity" in ov
    panel(page, "last")
    wait_drawn(page, "last")
    assert page.locator('.panel[data-key="last"] .err').count() == 0


MAGNITUDES = {"lr": (9.0e-4, 1.1e-3), "tiny": (1e-7, 2e-4), "huge": (1e12, 1e15), "mid": (-3.0, 250_000.0)}


def test_axis_tick_labels_and_titles(stack: Stack, page: Any) -> None:
    """Ticks read "0.001, 0.001, 0" for 1e-3, "0" for 1e-7..2e-4 and "00,000" for 1e12..1e15; no axis titles."""
    run = stack.init("ax", "a1")
    for s in range(200):
        f = s / 199
        run.log({k: lo + (hi - lo) * f for k, (lo, hi) in MAGNITUDES.items()}, step=s)
    run.finish()
    finished(stack, "ax/a1")
    page.goto(stack.url + "#/p/ax/r/a1")
    for key in MAGNITUDES:
        panel(page, key)
        wait_drawn(page, key)
        axes = page.evaluate(f"(() => {{ const u = {uplot(key)}; return u.axes.map(a => "
                             "({label: a.label, values: a._values, splits: a._splits})); })()")
        assert axes[0]["label"] == "_step" and axes[1]["label"] == key  # axis titles
        splits, labels = axes[1]["splits"], axes[1]["values"]
        assert len(splits) >= 2 and len(set(labels)) == len(labels), (key, labels)
        spacing = min(b - a for a, b in itertools.pairwise(splits))
        for v, text in zip(splits, labels, strict=True):
            assert re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", text), (key, text)
            assert abs(float(text) - v) < spacing / 2, (key, v, text)  # each label names its own tick
            assert text != "0" or v == 0, (key, labels)


def test_define_metric_step_metric_is_the_default_axis(stack: Stack, page: Any) -> None:
    run = stack.init("dm", "d1")
    run.define_metric("val/*", step_metric="epoch")
    for s in range(100):
        d: dict[str, Any] = {"train/loss": 1 / (s + 1)}
        if s % 10 == 0:
            d.update({"val/loss": 0.5 - s / 1000, "epoch": s // 10})
        run.log(d, step=s)
    run.finish()
    finished(stack, "dm/d1")
    page.goto(stack.url + "#/p/dm/r/d1")
    panel(page, "val/loss")
    c = wait_drawn(page, "val/loss")
    assert c["xAxis"] == "epoch" and c["x"] == [float(e) for e in range(10)]
    panel(page, "train/loss")
    assert wait_drawn(page, "train/loss")["xAxis"] == "_step"
    assert page.evaluate(f"{uplot('val/loss')}.axes[0].label") == "epoch"


def test_mistyped_run_id_says_it_does_not_exist(stack: Stack, page: Any) -> None:
    run = stack.init("mt", "real")
    run.log({"loss": 1.0}, step=0)
    run.finish()
    finished(stack, "mt/real")
    page.goto(stack.url + "#/p/mt/r/reall")
    page.wait_for_selector("#not-found", timeout=10_000)
    assert 'Run "reall" does not exist in project "mt"' in page.locator("#not-found").inner_text()
    assert page.locator("#no-data").count() == 0
    assert page.evaluate("window.__stepline.polling") is False and page.evaluate("window.__stepline.streaming") is False


def test_errors_said_once_and_not_polled(redis_url: str, namespace: str, data_dir: Path, page: Any) -> None:
    engine = writer_engine(f"sqlite:///{data_dir / 'meta.sqlite'}")
    KeyStore(engine).create("locked", frozenset({"read"}))
    engine.dispose()
    stack = Stack(redis_url, namespace, data_dir).start()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    try:
        page.goto(stack.url + "#/p/locked/r/x1")
        page.wait_for_selector("#auth-error:not([hidden])")
        text = page.locator("body").inner_text()
        assert text.count("Enter a key with the read scope") == 1, text
        assert page.evaluate("[window.__stepline.polling, window.__stepline.streaming]") == [False, False]
        page.goto(stack.url + "#/p/locked")
        page.wait_for_selector("#auth-error:not([hidden])")
        assert page.locator("body").inner_text().count("Enter a key with the read scope") == 1
        assert page.evaluate("window.__stepline.polling") is False
    finally:
        stack.close()


def test_live_run_is_pushed_not_polled(stack: Stack, page: Any) -> None:
    """A live page made ~76 requests in 10 s and rebuilt its HTML panel on every poll: now one SSE stream carries the
    new rows, appended to the drawn charts; the HTML panel is built once."""
    page.add_init_script("try { localStorage.setItem('stepline.liveIntervalS', '0.2') } catch {}")  # not in iframes
    run = stack.init("lv", "l1")
    run.log({"loss": 1.0, "acc": 0.0, "report": ingest.Html("<p>hello</p>")}, step=0)
    run.log({}, commit=True)
    stack.wait("lv/l1", lambda v: v.rows >= 1)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(stack.url + "#/p/lv/r/l1")
    panel(page, "loss")
    wait_drawn(page, "loss")
    panel(page, "acc")
    wait_drawn(page, "acc")
    panel(page, "report")
    page.wait_for_selector('.panel[data-key="report"] iframe')
    before = len(requests)
    for s in range(1, 301):
        run.log({"loss": 1.0 / (s + 1), "acc": s / 300}, step=s)
        if s % 50 == 0:
            run.log({}, commit=True)
    page.wait_for_function("window.__stepline.charts['loss'].count === 301 && window.__stepline.charts['acc'].count"
                           " === 301", timeout=30_000)
    after = requests[before:]
    assert after == [], after  # nothing fetched: the rows came over the one stream
    assert [u for u in requests if u.endswith("/events") or "/events?" in u].__len__() == 1
    c = page.evaluate("window.__stepline.charts['loss']")
    assert c["x"][-1] == 300 and c["step"][-1] == 300
    assert page.locator('.panel[data-key="report"]').get_attribute("data-renders") == "1"
    run.finish()
    page.wait_for_selector('h1 .badge[data-state="finished"]', timeout=30_000)
    page.wait_for_function("document.querySelector('#live').dataset.state === 'ended'")


def test_200_keys_only_panels_near_the_viewport_are_drawn(stack: Stack, page: Any) -> None:
    """With 200 keys every panel held a live uPlot chart and scrolling stuttered: now only panels near the viewport
    hold one; scrolled-away panels free theirs."""
    run = stack.init("wide", "w1")
    for s in range(50):
        run.log({f"k{i:03d}": (s + 1) * (i + 1) for i in range(200)}, step=s)
    run.finish()
    finished(stack, "wide/w1")
    page.goto(stack.url + "#/p/wide/r/w1")
    page.wait_for_selector('.panel[data-key="k000"][data-drawn="1"]')
    most = 0
    for _ in range(60):
        page.mouse.wheel(0, 900)
        page.wait_for_function("requestAnimationFrame(() => {}) || true")
        most = max(most, page.evaluate("document.querySelectorAll('.uplot').length"))
        if page.evaluate("innerHeight + scrollY >= document.body.scrollHeight - 2"):
            break
    panel(page, "k199")
    page.wait_for_selector('.panel[data-key="k199"][data-drawn="1"]')
    assert page.locator('.panel[data-key="k000"]').get_attribute("data-drawn") == "0"
    assert most <= 40, most  # a screenful or two of charts, never all 200
    assert page.evaluate("document.querySelectorAll('.uplot').length") <= 40


# --- items 2, 3, 6: charts, the view in the URL, panel search ------------------------------------------------------


def ema(x: list[float], y: list[float], weight: float) -> list[float]:
    """W&B's time-weighted EMA with debias (the reference the page's smoothing is checked against)."""
    w = min(math.sqrt(weight), 0.999)
    rng = x[-1] - x[0] or 1.0
    acc = deb = 0.0
    out = []
    prev = None
    for xi, yi in zip(x, y, strict=True):
        k = w ** (0.0 if prev is None else (xi - prev) / rng * 1000)
        acc = acc * k + yi
        deb = deb * k + 1
        out.append(acc / deb)
        prev = xi
    return out


def test_chart_tools_and_url(stack: Stack, page: Any) -> None:
    run = stack.init("ct", "c1")
    rng = np.random.default_rng(3)
    for s in range(1, 301):
        run.log({"train/loss": 10.0 / s + float(rng.random()), "train/acc": s / 300, "gpu/util": 50.0}, step=s)
    run.finish()
    finished(stack, "ct/c1")
    page.goto(stack.url + "#/p/ct/r/c1?smooth=0.6")
    panel(page, "train/loss")
    c = wait_drawn(page, "train/loss")
    panel(page, "gpu/util")
    wait_drawn(page, "gpu/util")
    page.evaluate("scrollTo(0, 0)")
    shot(page, "run-page")
    smoothed = page.evaluate(f"{uplot('train/loss')}.data[2]")
    assert smoothed == pytest.approx(ema(c["x"], c["y"], 0.6), rel=1e-9)
    assert page.evaluate(f"{uplot('train/loss')}.series[1].stroke()").startswith("rgba")  # the raw line faint

    # Tooltip: exact value, step and smoothed value.
    page.evaluate(f"(() => {{ const u = {uplot('train/loss')}; u.setCursor({{left: u.valToPos(150, 'x'), top: 20}});"
                  " })()")
    tip = page.locator('.panel[data-key="train/loss"] .tip').inner_text()
    i = c["x"].index(150)
    assert "step 150" in tip and repr(c["y"][i]) in tip and "smoothed" in tip

    # Log y.
    page.check("#log-y")
    page.wait_for_function(f"{uplot('train/loss')}?.scales.y.distr === 3")
    assert "logy=1" in page.evaluate("location.hash")

    # Sync zoom: zooming train/loss zooms train/acc, not gpu/util.
    page.check("#sync-zoom")
    box = page.locator('.panel[data-key="train/loss"] .u-over').bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    z = wait_drawn(page, "train/acc", "c.zoom !== null")["zoom"]
    assert wait_drawn(page, "train/loss", "c.zoom !== null")["zoom"] == z
    panel(page, "gpu/util")
    assert wait_drawn(page, "gpu/util")["zoom"] is None

    # Panel search (regex) with the count, in the URL; a link reproduces the whole view.
    page.fill("#panel-search", "^train/(loss|acc)$")
    page.wait_for_function("document.querySelector('#panel-count').dataset.count === '2'")
    assert page.locator('.panel[data-key="gpu/util"]').is_hidden()
    assert "2 of 3 panels" in page.locator("#panel-count").inner_text()
    url = page.url
    page.goto("about:blank")
    page.goto(url)
    page.wait_for_function("document.querySelector('#panel-count')?.dataset.count === '2'", polling=100)
    assert page.is_checked("#log-y") and page.is_checked("#sync-zoom")
    assert wait_drawn(page, "train/acc", "c.zoom !== null")["zoom"] == pytest.approx(z)

    # Full screen of one panel, Esc closes.
    page.locator('.panel[data-key="train/acc"] .fs-btn').click()
    page.wait_for_function(f"{uplot('train/acc')}?.width > 1000")
    shot(page, "fullscreen", full=False)
    page.keyboard.press("Escape")
    page.wait_for_function(f"{uplot('train/acc')}?.width < 1000")


# --- items 4, 5: overview, runs table, compare ----------------------------------------------------------------------


def log_sweep(stack: Stack) -> None:
    for i, (opt, lr) in enumerate([("adam", 1e-3), ("sgd", 1e-2), ("adam", 3e-4)]):
        run = stack.init("sw", f"s{i}", config={"opt": {"name": opt, "lr": lr}, "batch": 32 * (i + 1)},
                         group=f"sweep-{opt}", tags=["base", opt], notes=f"try {opt} at lr={lr}")
        for s in range(0, 60):
            d: dict[str, Any] = {"loss": (i + 1) / (s + 1)}
            if s % 20 == 0:
                d["samples"] = ingest.Image(np.full((16, 16, 3), 60 * i + s, dtype=np.uint8))
            run.log(d, step=s)
        run.finish()
    for i in range(3):
        finished(stack, f"sw/s{i}")


def js(v: float) -> str:
    """A number as the page's tooltip writes it (JavaScript's String(v): shortest round trip, 0 not 0.0)."""
    return str(int(v)) if float(v).is_integer() else repr(v)


def test_tooltip_on_a_log_x_axis_and_the_sampling_band(stack: Stack, page: Any) -> None:
    """A log x axis drops x <= 0 (here step 0): the tooltip still names the hovered point's own step and value, and
    on a sampled line it gives the min–max of the sampling bucket that point is in, as the API reports it."""
    run = stack.init("lx", "l1")
    for s in range(5000):
        run.log({"loss": math.sin(s / 37.0) + s / 5000}, step=s)
    run.finish()
    finished(stack, "lx/l1")
    page.goto(stack.url + "#/p/lx/r/l1?logx=1")
    p = panel(page, "loss")
    c = wait_drawn(page, "loss")
    assert c["sampled"] and c["x"][0] == 0  # step 0 is in the reply, not on the log axis
    page.wait_for_function(f"{uplot('loss')}?.scales.x.distr === 3")
    api = stack.get_json("projects/lx/runs/l1/sampled", key="loss", x_axis="_step", buckets=c["buckets"])
    assert api["x"] == c["x"]
    for i in (1, len(c["x"]) // 3, len(c["x"]) - 1):
        x = c["x"][i]
        page.evaluate(f"(() => {{ const u = {uplot('loss')}; const j = u.data[0].indexOf({x});"
                      " u.setCursor({left: u.valToPos(u.data[0][j], 'x'), top: 10}); })()")
        tip = p.locator(".tip").inner_text()
        assert f"step {c['step'][i]}" in tip.splitlines() and f"loss {js(c['y'][i])}" in tip.splitlines()
        b = max(k for k, x0 in enumerate(api["bucket_x0"]) if x0 <= x)
        assert f"bucket {js(api['bucket_min'][b])} … {js(api['bucket_max'][b])}" in tip.splitlines()


def test_overview_runs_table_and_compare(stack: Stack, page: Any) -> None:
    log_sweep(stack)
    page.goto(stack.url + "#/p/sw/r/s1")
    page.wait_for_selector("#overview")
    ov = page.locator("#overview")
    assert ov.locator('[data-fact="state"]').inner_text() == "finished"
    assert ov.locator('[data-fact="exit code"]').inner_text() == "0"
    assert ov.locator('[data-config-key="opt.name"]').inner_text().endswith("sgd")
    assert ov.locator('[data-summary-key="loss"]').count() == 1
    assert ov.locator('[data-fact="group"]').inner_text() == "sweep-sgd"
    assert ov.locator('[data-fact="tags"] .tag').all_inner_texts() == ["base", "sgd"]
    assert ov.locator("#notes").inner_text() == "try sgd at lr=0.01"
    page.fill("#config-search", "lr")
    page.wait_for_function("document.querySelectorAll('#config [data-config-key]').length === 1")
    assert page.locator("#problems").count() == 0  # no room taken when nothing was rejected
    shot(page, "overview")

    page.goto(stack.url + "#/p/sw")
    page.wait_for_selector('#runs tr[data-run="s2"]')
    assert page.locator('#runs tr[data-run="s1"] td[data-col="group"]').inner_text() == "sweep-sgd"
    page.locator("#add-column").focus()
    page.wait_for_function("[...document.querySelectorAll('#add-column option')]"
                           ".some(o => o.value === 'config.opt.lr')")
    page.select_option("#add-column", "config.opt.lr")
    order = "[...document.querySelectorAll('#runs tbody tr[data-run]')].map(e => e.dataset.run).join()"
    page.locator('#runs th[data-col="config.opt.lr"] .th-label').click()  # ascending
    page.wait_for_function(f"{order} === 's2,s0,s1'")
    page.locator('#runs th[data-col="config.opt.lr"] .th-label').click()  # descending
    page.wait_for_function(f"{order} === 's1,s0,s2'")
    page.fill('input.col-filter[data-col="config.opt.lr"]', "<0.005")
    page.press('input.col-filter[data-col="config.opt.lr"]', "Enter")
    page.wait_for_function("document.querySelectorAll('#runs tbody tr[data-run]').length === 2")
    page.fill('input.col-filter[data-col="config.opt.lr"]', "")
    page.press('input.col-filter[data-col="config.opt.lr"]', "Enter")
    page.select_option("#group-by", "config.opt.name")
    page.wait_for_function("document.querySelectorAll('#runs tr.group-row').length === 2")
    groups = page.locator("#runs tr.group-row").evaluate_all("els => els.map(e => e.dataset.group)")
    assert groups == ["adam", "sgd"]
    shot(page, "runs-table")

    for r in ("s0", "s1", "s2"):
        page.locator(f'#runs tr[data-run="{r}"] input[type=checkbox]').check()
    page.click("#compare-btn")
    panel(page, "loss")
    c = wait_drawn(page, "loss", "c.runs")
    assert set(c["runs"]) == {"s0", "s1", "s2"}
    media = panel(page, "samples")
    page.wait_for_function("document.querySelectorAll('.panel[data-key=\"samples\"] img.media').length === 3")
    assert media.get_attribute("data-step") == "40"
    media.locator("input.step-slider").fill("1")
    page.wait_for_function("document.querySelector('.panel[data-key=\"samples\"]').dataset.step === '20'")
    page.wait_for_function("[...document.querySelectorAll('.panel[data-key=\"samples\"] .media-cell')]"
                           ".every(c => c.dataset.step === '20')")
    shot(page, "compare")


def test_live_page_memory_stays_bounded(stack: Stack, page: Any) -> None:
    """A page left open on a live run: an accelerated hour (36,000 rows of 10 keys, pushed every 0.2 s) keeps every
    drawn line under the live bound (re-sampled with one read when it grows past it) and the JS heap under 100 MB."""
    page.add_init_script("try { localStorage.setItem('stepline.liveIntervalS', '0.2') } catch {}")
    keys = [f"m/k{i}" for i in range(10)]
    run = stack.init("mem", "m1")
    run.log(dict.fromkeys(keys, 0.0), step=0)
    run.log({}, commit=True)
    stack.wait("mem/m1", lambda v: v.rows >= 1)
    page.goto(stack.url + "#/p/mem/r/m1")
    for k in keys:
        panel(page, k)
        wait_drawn(page, k)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")

    def heap_mb() -> float:
        cdp.send("HeapProfiler.collectGarbage")
        m = {x["name"]: x["value"] for x in cdp.send("Performance.getMetrics")["metrics"]}
        return float(m["JSHeapUsedSize"]) / 1e6

    start = heap_mb()
    n = 36_000
    for s in range(1, n + 1):
        run.log({k: float(np.sin(s / 100 + i)) for i, k in enumerate(keys)}, step=s)
        if s % 1000 == 0:  # paced by the page: each chunk arrives as appended rows, not as one re-read
            run.log({}, commit=True)
            page.wait_for_function(f"window.__stepline.charts['m/k0']?.count === {s + 1}", timeout=60_000)
    biggest = page.evaluate("Math.max(...Object.values(window.__stepline.charts).map(c => c.x.length))")
    end = heap_mb()
    events = page.evaluate("window.__stepline.live")
    print(f"\nlive page: heap {start:.1f} MB -> {end:.1f} MB after {n} rows x {len(keys)} keys; "
          f"{events['events']} events, {events['rows']} rows pushed; largest drawn line {biggest} points")
    assert biggest <= 4000
    assert events["rows"] >= n * 0.9  # most rows came appended over the stream
    assert end < 100
    run.finish()
