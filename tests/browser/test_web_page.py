"""The web page in real headless Chromium, against a real worker and gateway: runs list, a run's sections and
panels, drawn data equal to the sampled API, zoom, the step slider, the x-axis picker, rejected calls, compare,
live growth, API keys. Screenshots go to each test's tmp_path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.browser_stack import Stack

import ingest
from gateway.keys import KeyStore, writer_engine

pytestmark = pytest.mark.browser

STEPS = 400
EVERY = 50  # histograms, images and plots every EVERY steps; val/* every 10 with an epoch


def log_full_run(stack: Stack, run_id: str, scale: float = 1.0) -> None:
    rng = np.random.default_rng(7)
    run = stack.init("demo", run_id)
    run.define_metric("val/*", step_metric="epoch")
    for i in range(STEPS):
        d: dict[str, Any] = {"train/loss": scale / (i + 1) + (3.0 if i == 271 else 0.0), "train/acc": i / STEPS,
                             "phase": "warmup" if i < 100 else "main", "ok": i % 3 != 0}
        if i % 10 == 0:
            d["val/loss"] = scale * (0.5 - i / 2000)
            d["epoch"] = i // 10
        if i % EVERY == 0:
            d["media/weights"] = ingest.Histogram(rng.normal(i / 100, 1.0, 2000), num_bins=32)
            d["media/sample"] = ingest.Image(np.full((24, 32, 3), (i * 5) % 256, dtype=np.uint8)
                                             + (rng.random((24, 32, 3)) * 40).astype(np.uint8))
            d["media/curves"] = ingest.plot.line_series([0, 1, 2, 3], [[0, 1, 2, 3], [3, 2, 1, i / 100]],
                                                        keys=["rising", "falling"], title="curves")
        run.log(d, step=i)
    run.log({"train/loss": 123.0}, step=7)  # deliberately below the cursor: the whole call is rejected
    run.finish()
    stack.wait(f"demo/{run_id}", lambda v: v.state == "finished" and sum(v.rejected.values()) == 1, what="finished")


def charts(page: Any) -> dict[str, Any]:
    out: dict[str, Any] = page.evaluate("window.__stepline.charts")
    return out


def panel(page: Any, key: str) -> Any:
    p = page.locator(f'.panel[data-key="{key}"]')
    p.scroll_into_view_if_needed()
    return p


def wait_loads(page: Any, key: str, more_than: int = 0) -> None:
    page.wait_for_function(
        "([k, n]) => { const p = document.querySelector(`.panel[data-key=\"${k}\"]`);"
        " return p && Number(p.dataset.loads || 0) > n && p.dataset.drawn !== '0'; }", arg=[key, more_than])


def loads(page: Any, key: str) -> int:
    return int(page.locator(f'.panel[data-key="{key}"]').get_attribute("data-loads") or 0)


def same_line(drawn: dict[str, Any], api: dict[str, Any]) -> None:
    assert drawn["x"] == api["x"] and drawn["y"] == api["y"]
    assert len(drawn["drawn"][0]) == len(api["x"])  # what uPlot was given: the same points


def test_runs_list_and_run_page(stack: Stack, page: Any, tmp_path: Path) -> None:
    log_full_run(stack, "r1")
    log_full_run(stack, "r2", scale=2.0)
    t0 = time.monotonic()
    page.goto(stack.url)
    page.locator('#projects tr[data-project="demo"] a').click()

    # Runs list: both runs, finished badges, counters; the filter narrows it.
    page.wait_for_selector('#runs tr[data-run="r2"]')
    row = page.locator('#runs tr[data-run="r1"]')
    assert row.locator(".badge").inner_text() == "finished"
    cells = row.locator("td").all_inner_texts()
    assert cells[3:8] == ["399", "400", "9", "1", "0"], cells  # last step, rows, columns, rejected, warnings
    page.fill("#run-filter", "r2")
    page.wait_for_function("document.querySelectorAll('#runs tr[data-run]').length === 1")
    page.select_option("#state-filter", "running")
    page.wait_for_function("document.querySelectorAll('#runs tr[data-run]').length === 0")
    page.select_option("#state-filter", "all")
    page.fill("#run-filter", "")
    page.screenshot(path=tmp_path / "runs.png")

    # Run page: sections, panels by kind.
    page.locator('#runs tr[data-run="r1"] a').click()
    page.wait_for_selector("#run-body details.section")
    sections = page.locator("#run-body details.section").evaluate_all("els => els.map(e => e.dataset.section)")
    assert sections == ["", "media", "train", "val"]
    kinds = dict(page.locator(".panel[data-key]").evaluate_all(
        "els => els.map(e => [e.dataset.key, e.dataset.kind])"))
    assert {k: kinds[k] for k in ("train/loss", "train/acc", "val/loss", "epoch")} == dict.fromkeys(
        ("train/loss", "train/acc", "val/loss", "epoch"), "line")
    assert kinds["media/weights"] == "histogram" and kinds["media/sample"] == "image"
    assert kinds["media/curves"] == "plot" and kinds["/*scalars"] == "table"
    assert page.locator('details.section[data-section="train"] summary').inner_text().startswith("train")

    # The line chart draws exactly the sampled API's points (one bucket per pixel of its width, step axis).
    panel(page, "train/loss")
    wait_loads(page, "train/loss")
    buckets = charts(page)["train/loss"]["buckets"]
    assert 200 <= buckets < 1000  # a ~680 px chart at devicePixelRatio 1
    api = stack.get_json("projects/demo/runs/r1/sampled", key="train/loss", x_axis="_step", buckets=buckets)
    same_line(charts(page)["train/loss"], api)
    assert max(charts(page)["train/loss"]["y"]) > 3.0  # the spike at step 271 is drawn
    first_render_ms = charts(page)["train/loss"]["totalMs"]

    # Zoom: dragging over the chart re-queries the visible x range.
    n = loads(page, "train/loss")
    over = page.locator('.panel[data-key="train/loss"] .u-over')
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    wait_loads(page, "train/loss", n)
    zoomed = charts(page)["train/loss"]
    lo, hi = zoomed["zoom"]
    assert 150 < lo < hi < 350 and zoomed["x"][0] >= lo and zoomed["x"][-1] <= hi
    same_line(zoomed, stack.get_json("projects/demo/runs/r1/sampled", key="train/loss", x_axis="_step",
                                     buckets=zoomed["buckets"], x_min=lo, x_max=hi))
    page.screenshot(path=tmp_path / "zoomed.png")
    over.dblclick()
    wait_loads(page, "train/loss", n + 1)
    assert charts(page)["train/loss"]["zoom"] is None and len(charts(page)["train/loss"]["x"]) == STEPS

    # The step slider moves through the logged images; each shown image is the one logged at that step.
    img_panel = panel(page, "media/sample")
    page.wait_for_function("document.querySelector('.panel[data-key=\"media/sample\"] img.media')?.naturalWidth > 0")
    hist = stack.get_json("projects/demo/runs/r1/history", keys="media/sample", samples="all")
    by_step = {r["_step"]: r["media/sample"]["sha256"] for r in hist}
    assert img_panel.get_attribute("data-step") == str(STEPS - EVERY)
    last_sha = img_panel.get_attribute("data-sha")
    assert last_sha == by_step[STEPS - EVERY]
    img_panel.locator("input.step-slider").fill("2")
    page.wait_for_function("document.querySelector('.panel[data-key=\"media/sample\"]').dataset.step === '100'")
    page.wait_for_function(
        f"document.querySelector('.panel[data-key=\"media/sample\"] img.media').dataset.sha === '{by_step[100]}'")
    assert by_step[100] != last_sha
    page.wait_for_function("document.querySelector('.panel[data-key=\"media/sample\"] img.media').naturalWidth === 32")
    hist_panel = panel(page, "media/weights")
    hist_panel.locator("input.step-slider").fill("0")
    page.wait_for_function("document.querySelector('.panel[data-key=\"media/weights\"]').dataset.step === '0'")

    # Multi-line plot with a legend.
    panel(page, "media/curves")
    page.wait_for_function("window.__stepline.charts['media/curves']")
    assert charts(page)["media/curves"]["series"] == ["rising", "falling"]
    legend = page.locator('.panel[data-key="media/curves"] .u-legend').inner_text()
    assert "rising" in legend and "falling" in legend

    # Strings and bools as a table.
    table = panel(page, "/*scalars")
    page.wait_for_function("document.querySelector('.panel[data-key=\"/*scalars\"] tbody tr')")
    assert "warmup" in table.inner_text() and "main" in table.inner_text()

    # The rejected call and its reason.
    problems = page.locator("#problems")
    assert problems.get_attribute("data-rejected") == "1"
    rej = page.locator('#rejections tr[data-reason="non_monotonic_step"]')
    assert rej.get_attribute("data-step") == "7" and "step 7 is lower" in rej.inner_text()

    page.screenshot(path=tmp_path / "run.png", full_page=True)

    # The x-axis picker: by default each key against its define_metric step metric (val/* → epoch); a page-wide
    # choice overrides it.
    options = page.locator("#x-axis option").evaluate_all("els => els.map(e => e.value)")
    assert options == ["", "_step", "_runtime", "_timestamp", "epoch"]
    panel(page, "val/loss")
    wait_loads(page, "val/loss")
    page.wait_for_function("window.__stepline.charts['val/loss']?.xAxis === 'epoch'")
    same_line(charts(page)["val/loss"], stack.get_json("projects/demo/runs/r1/sampled", key="val/loss",
                                                       x_axis="epoch", buckets=1000))
    assert charts(page)["val/loss"]["x"] == [float(e) for e in range(STEPS // 10)]
    page.select_option("#x-axis", "_runtime")
    page.wait_for_function("window.__stepline.charts['val/loss'].xAxis === '_runtime'")
    assert "x=_runtime" in page.evaluate("location.hash")

    # Compare: the same key from both runs on one chart.
    page.goto(stack.url + "#/p/demo")
    page.wait_for_selector('#runs tr[data-run="r2"]')
    page.locator('#runs tr[data-run="r1"] input[type=checkbox]').check()
    page.locator('#runs tr[data-run="r2"] input[type=checkbox]').check()
    page.click("#compare-btn")
    panel(page, "val/loss")
    page.wait_for_function("window.__stepline.charts['val/loss']?.runs")
    runs, buckets = charts(page)["val/loss"]["runs"], charts(page)["val/loss"]["buckets"]
    assert set(runs) == {"r1", "r2"} and 200 <= buckets < 1000  # one bucket per pixel of a ~680 px chart
    for rid in ("r1", "r2"):
        api = stack.get_json(f"projects/demo/runs/{rid}/sampled", key="val/loss", x_axis="epoch", buckets=buckets)
        assert runs[rid] == {"x": api["x"], "y": api["y"]}
    legend = page.locator('.panel[data-key="val/loss"] .u-legend').inner_text()
    assert "r1" in legend and "r2" in legend
    page.screenshot(path=tmp_path / "compare.png", full_page=True)
    print(f"\nbrowser: run page checks took {time.monotonic() - t0:.1f} s; first train/loss render "
          f"{first_render_ms:.0f} ms; screenshots in {tmp_path}")


def test_live_run_grows(stack: Stack, page: Any, tmp_path: Path) -> None:
    page.add_init_script("localStorage.setItem('stepline.pollMs', '300')")
    run = stack.init("live", "l1")
    stack.wait("live/l1", lambda v: True, what="run start committed")  # an unknown run id is "does not exist"
    page.goto(stack.url + "#/p/live/r/l1")
    page.wait_for_selector("#no-data")
    assert page.locator("#no-data").inner_text() == "No data logged yet"
    page.screenshot(path=tmp_path / "live-empty.png")
    for i in range(50):
        run.log({"loss": 1.0 / (i + 1)}, step=i)
    run.log({}, commit=True)
    panel(page, "loss")
    page.wait_for_function("window.__stepline.charts['loss']?.count === 50", timeout=30_000)
    assert page.locator("#no-data").count() == 0
    page.wait_for_selector('h1 .badge[data-state="running"]')
    for i in range(50, 200):
        run.log({"loss": 1.0 / (i + 1)}, step=i)
    run.log({}, commit=True)
    page.wait_for_function("window.__stepline.charts['loss'].count === 200", timeout=30_000)
    assert charts(page)["loss"]["x"][-1] == 199
    page.screenshot(path=tmp_path / "live-grown.png")
    run.finish()
    page.wait_for_selector('h1 .badge[data-state="finished"]', timeout=30_000)


def test_api_keys(redis_url: str, namespace: str, data_dir: Path, page: Any, tmp_path: Path) -> None:
    engine = writer_engine(f"sqlite:///{data_dir / 'meta.sqlite'}")
    store = KeyStore(engine)
    _, read_key = store.create("secret", frozenset({"read"}))
    _, other_key = store.create("elsewhere", frozenset({"read", "write"}))
    engine.dispose()
    stack = Stack(redis_url, namespace, data_dir).start()
    try:
        run = stack.init("secret", "s1")
        run.log({"loss": 1.0}, step=0)
        run.finish()
        stack.wait("secret/s1", lambda v: v.state == "finished")

        page.goto(stack.url + "#/p/secret")
        page.wait_for_selector("#auth-error:not([hidden])")
        assert page.locator("#auth-error").get_attribute("data-status") == "401"
        assert "needs an API key" in page.locator("#auth-error").inner_text()

        page.fill("#key-input", read_key[:-3] + "xyz")
        page.click("#key-save")
        page.wait_for_function("document.querySelector('#auth-error').textContent.includes('invalid_key')")
        assert page.locator("#auth-error").get_attribute("data-status") == "401"

        page.fill("#key-input", other_key)
        page.click("#key-save")
        page.wait_for_function("document.querySelector('#auth-error').dataset.status === '403'")
        assert "may not read this project" in page.locator("#auth-error").inner_text()
        page.screenshot(path=tmp_path / "forbidden.png")

        page.fill("#key-input", read_key)
        page.click("#key-save")
        page.wait_for_selector('#runs tr[data-run="s1"]')
        assert page.locator("#auth-error").is_hidden()
        assert page.evaluate("localStorage.getItem('stepline.apiKey')") == read_key
        page.reload()  # the key is kept in the browser
        page.wait_for_selector('#runs tr[data-run="s1"]')
        page.locator('#runs tr[data-run="s1"] a').click()
        panel(page, "loss")
        page.wait_for_function("window.__stepline.charts['loss']?.count === 1")
        page.goto(stack.url)
        page.wait_for_selector('#projects tr[data-project="secret"]')
        assert page.locator("#projects tr[data-project]").count() == 1  # a key sees its own project only
    finally:
        stack.close()


def test_million_step_panel_render_time(stack: Stack, page: Any, tmp_path: Path,
                                        record_property: Any) -> None:
    """Measured, not asserted: a 1M-step key's panel from request to drawn frame (fetch + M4 + uPlot)."""
    n = 1_000_000
    t0 = time.monotonic()
    run = stack.init("big", "m1")
    for s in range(n):
        run.log({"loss": 1.0 / (s + 1)}, step=s)
    run.finish()
    t_logged = time.monotonic() - t0
    stack.wait("big/m1", lambda v: v.state == "finished", timeout=300, what="1M rows committed")
    t_committed = time.monotonic() - t0
    # Generous deadlines, only to catch a hang: on a loaded machine a first read of 1M rows can take a while; each
    # wait ends as soon as its condition holds.
    page.set_default_timeout(180_000)
    page.goto(stack.url + "#/p/big/r/m1")
    panel(page, "loss")
    page.wait_for_function("window.__stepline.charts['loss']?.count === 1000000", polling=100)
    first = charts(page)["loss"]
    # Again with the column cache warm, as when the page polls or the user comes back.
    page.reload()
    panel(page, "loss")
    page.wait_for_function("window.__stepline.charts['loss']?.count === 1000000", polling=100)
    warm = charts(page)["loss"]
    page.screenshot(path=tmp_path / "million.png")
    result = {"steps": n, "log_s": round(t_logged, 2), "committed_s": round(t_committed, 2),
              "first_render_ms": round(first["totalMs"]), "first_fetch_ms": round(first["fetchMs"]),
              "first_draw_ms": round(first["drawMs"]), "warm_render_ms": round(warm["totalMs"]),
              "warm_fetch_ms": round(warm["fetchMs"]), "warm_draw_ms": round(warm["drawMs"]),
              "points_drawn": len(warm["x"])}
    (tmp_path / "million.json").write_text(json.dumps(result))
    for k, v in result.items():
        record_property(k, v)
    print(f"\n1M-step panel: {result}")
