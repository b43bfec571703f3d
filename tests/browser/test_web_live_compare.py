"""Issue 17's remaining gaps in real headless Chromium against a real worker and gateway: compare follows live runs
over one stream, compare tooltips name each run's value, the runs table is filtered and paged by the gateway, every
config/summary value kind renders (NaN, ±inf included), live updates carry only what changed of the run, and the run
page's first read starts from the HTML. Each test fails on the page before its fix (``STEPLINE_TEST_WEB_DIR``).

Screenshots go to ``tests/browser/screenshots/`` (``STEPLINE_SCREENSHOTS`` overrides), printed.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from support.browser_stack import Stack

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("STEPLINE_SCREENSHOTS", Path(__file__).parent / "screenshots"))
FAST_LIVE = "try { localStorage.setItem('stepline.liveIntervalS', '0.2') } catch {}"  # not in iframes


def shot(page: Any, name: str, full: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=full)
    print(f"\nscreenshot: {path}")


def panel(page: Any, key: str) -> Any:
    p = page.locator(f'.panel[data-key="{key}"]')
    p.scroll_into_view_if_needed()
    return p


def wait_chart(page: Any, key: str, cond: str = "true", timeout: int = 30_000) -> dict[str, Any]:
    page.wait_for_function(f"(() => {{ const c = window.__stepline.charts[{key!r}]; return c && ({cond}); }})()",
                           timeout=timeout)
    out: dict[str, Any] = page.evaluate(f"window.__stepline.charts[{key!r}]")
    return out


def finished(stack: Stack, path: str) -> None:
    stack.wait(path, lambda v: v.state == "finished", what="finished")


# --- compare: live runs and tooltips ---------------------------------------------------------------------------------


def test_compare_follows_a_live_run(stack: Stack, page: Any) -> None:
    """A compare of a finished run and a live one: the live run's new rows are appended to the drawn lines over one
    stream (no chart is read again), its badge turns finished when it ends."""
    page.add_init_script(FAST_LIVE)
    done = stack.init("cl", "done")
    for s in range(100):
        done.log({"loss": 2.0 / (s + 1)}, step=s)
    done.finish()
    finished(stack, "cl/done")
    run = stack.init("cl", "live")
    for s in range(10):
        run.log({"loss": 1.0 / (s + 1)}, step=s)
    run.log({}, commit=True)
    stack.wait("cl/live", lambda v: v.last_step == 9)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(stack.url + "#/p/cl/compare?runs=done,live")
    panel(page, "loss")
    c = wait_chart(page, "loss", "c.runs && Object.keys(c.runs).length === 2")
    assert len(c["runs"]["live"]["x"]) == 10
    page.wait_for_function("document.querySelector('#live').dataset.state === 'connected'")
    before = len(requests)
    for s in range(10, 200):
        run.log({"loss": 1.0 / (s + 1)}, step=s)
        if s % 50 == 0:
            run.log({}, commit=True)
    run.log({}, commit=True)
    c = wait_chart(page, "loss", "c.runs.live.x.length === 200")
    assert c["runs"]["live"]["x"] == list(range(200))
    assert c["runs"]["live"]["y"][-1] == pytest.approx(1.0 / 200)
    assert len(c["runs"]["done"]["x"]) == 100  # the finished run's line is unchanged
    after = requests[before:]
    assert not [u for u in after if "sampled" in u or "/history" in u], after  # appended, not read again
    assert len([u for u in requests if "/page_info" in u]) == 2  # read once per run (from index.html's script)
    streams = [u for u in requests if "/projects/cl/events?" in u]
    assert len(streams) == 1 and "run=live" in streams[0] and "run=done" not in streams[0]
    shot(page, "compare-live")
    run.finish()
    page.wait_for_selector('#compare-runs [data-run="live"] .badge[data-state="finished"]', timeout=30_000)
    page.wait_for_function("document.querySelector('#live').dataset.state === 'ended'", timeout=30_000)


def test_compare_tooltip_shows_each_runs_value(stack: Stack, page: Any) -> None:
    """Hovering a compare chart shows every run's value at the hovered step (each run at its own nearest point),
    ±inf named, not only the legend's."""
    runs = {"ta": lambda s: s * 0.5, "tb": lambda s: 100.0 - s, "tc": lambda s: float("inf") if s == 30 else 1.0}
    for rid, f in runs.items():
        r = stack.init("tt", rid)
        for s in range(0, 60, 1 if rid != "tb" else 2):  # tb logs every other step only
            r.log({"loss": f(s)}, step=s)
        r.finish()
    for rid in runs:
        finished(stack, f"tt/{rid}")
    page.goto(stack.url + "#/p/tt/compare?runs=ta,tb,tc")
    p = panel(page, "loss")
    wait_chart(page, "loss", "c.runs && Object.keys(c.runs).length === 3")
    u = "document.querySelector('.panel[data-key=\"loss\"]').__panel.chart.u"
    page.evaluate(f"(() => {{ const u = {u}; u.setCursor({{left: u.valToPos(30, 'x'), top: 20}}); }})()")
    page.wait_for_function("!document.querySelector('.panel[data-key=\"loss\"] .tip').hidden")
    tip = p.locator(".tip").inner_text().splitlines()
    assert tip[0] == "_step 30"
    assert "ta: 15" in tip and "tb: 70" in tip and "tc: +inf" in tip, tip
    page.evaluate(f"(() => {{ const u = {u}; u.setCursor({{left: u.valToPos(31, 'x'), top: 20}}); }})()")
    page.wait_for_function("document.querySelector('.panel[data-key=\"loss\"] .tip').innerText.includes('_step 31')")
    tip = p.locator(".tip").inner_text().splitlines()
    assert "ta: 15.5" in tip and "tc: 1" in tip, tip
    assert any(t.startswith("tb: ") and "(at " in t for t in tip), tip  # tb has no step 31: its nearest point, said
    shot(page, "compare-tooltip", full=False)


# --- the runs table: filtered and paged by the gateway -------------------------------------------------------------


def test_runs_table_filters_and_pages_on_the_server(stack: Stack, page: Any) -> None:
    """The table asks the runs query API (filters, order, per_page, page) instead of filtering the listing it
    holds: with 2 runs per page, a filter counts and pages every matching run, and the order is the gateway's."""
    page.add_init_script("try { localStorage.setItem('stepline.runsPerPage', '2') } catch {}")
    lrs = [0.1, 0.02, 0.003, 0.5, 0.04]
    for i, lr in enumerate(lrs):
        r = stack.init("rt", f"r{i}", config={"lr": lr, "opt": "adam" if i % 2 else "sgd"})
        r.log({"loss": lr * 10}, step=0)
        r.finish()
    for i in range(len(lrs)):
        finished(stack, f"rt/r{i}")
    queries: list[dict[str, list[str]]] = []
    page.on("request", lambda r: queries.append(urllib.parse.parse_qs(urllib.parse.urlparse(r.url).query))
            if urllib.parse.urlparse(r.url).path.endswith("/projects/rt/runs") else None)
    page.goto(stack.url + "#/p/rt")
    page.wait_for_function("document.querySelector('#runs-page')?.dataset.total === '5'")
    assert page.locator("#runs tbody tr[data-run]").count() == 2
    assert page.locator("#runs-page").inner_text() == "5 runs · page 1 of 3"
    page.click("#runs-next")
    page.wait_for_function("document.querySelector('#runs-page').dataset.page === '1'")
    assert page.locator("#runs tbody tr[data-run]").count() == 2
    page.click("#runs-prev")
    page.wait_for_function("document.querySelector('#runs-page').dataset.page === '0'")

    page.locator("#add-column").focus()
    page.wait_for_function("[...document.querySelectorAll('#add-column option')].some(o => o.value === 'config.lr')")
    page.select_option("#add-column", "config.lr")
    page.fill('input.col-filter[data-col="config.lr"]', ">0.03")
    page.press('input.col-filter[data-col="config.lr"]', "Enter")
    page.wait_for_function("document.querySelector('#runs-page').dataset.total === '3'")  # 0.1, 0.5, 0.04
    sent = [q for q in queries if "filters" in q]
    assert sent and json.loads(sent[-1]["filters"][0]) == {"config.lr": {"$gt": 0.03}}
    assert sent[-1]["per_page"] == ["2"] and sent[-1]["page"] == ["0"]
    # Sorted by the gateway over all matches: ascending lr is 0.04, 0.1 | 0.5.
    page.locator('#runs th[data-col="config.lr"] .th-label').click()
    page.wait_for_function("[...document.querySelectorAll('#runs tbody tr[data-run]')].map(e => e.dataset.run)"
                           ".join() === 'r4,r0'")
    assert json.loads(sent[-1]["filters"][0]) == {"config.lr": {"$gt": 0.03}}
    assert [q for q in queries if q.get("order") == ["+config.lr"]]
    page.click("#runs-next")
    page.wait_for_function("[...document.querySelectorAll('#runs tbody tr[data-run]')].map(e => e.dataset.run)"
                           ".join() === 'r3'")
    # The name box and the state picker go to the gateway too; no match says so.
    page.fill("#run-filter", "R2")
    page.wait_for_function("document.querySelector('#runs-page').dataset.total === '0'")
    assert page.locator("#no-match").count() == 1
    page.fill('input.col-filter[data-col="config.lr"]', "")
    page.press('input.col-filter[data-col="config.lr"]', "Enter")
    page.wait_for_function("[...document.querySelectorAll('#runs tbody tr[data-run]')].map(e => e.dataset.run)"
                           ".join() === 'r2'")
    page.select_option("#state-filter", "running")
    page.wait_for_function("document.querySelector('#runs-page').dataset.total === '0'")
    shot(page, "runs-table-server-filters")


# --- every value kind in config and summary ------------------------------------------------------------------------


def test_config_and_summary_show_every_value_kind(stack: Stack, page: Any) -> None:
    """A NaN in config or summary showed as "–" (JSON's null) and ±inf as a string: now NaN / Infinity / -Infinity,
    inside lists and nested dicts too, next to every other kind."""
    config = {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "list": [1, float("nan"), float("inf")],
              "nested": {"eps": float("nan"), "name": "adam"}, "flag": True, "none": None, "big": 2**62,
              "text": "Infinity", "pi": 3.25, "ints": [2**60, -3]}
    run = stack.init("vk", "v1", config=config)
    run.log({"loss": 1.0}, step=0)
    run.summary["s_nan"] = float("nan")
    run.summary["s_ninf"] = float("-inf")
    run.summary["s_list"] = [float("-inf"), 2.5, "x"]
    run.finish()
    finished(stack, "vk/v1")
    page.goto(stack.url + "#/p/vk/r/v1")
    page.wait_for_selector('#config [data-config-key="nested.eps"]')

    def cv(k: str) -> str:
        out: str = page.locator(f'#config [data-config-key="{k}"] .cv').inner_text()
        return out

    assert cv("nan") == "NaN" and cv("inf") == "Infinity" and cv("ninf") == "-Infinity"
    assert cv("nested.eps") == "NaN" and cv("nested.name") == "adam"
    assert cv("list") == "[1, NaN, Infinity]" and cv("ints") == f"[{2**60}, -3]"
    assert cv("text") == "Infinity"  # the string, shown as it is
    assert cv("flag") == "true" and cv("none") == "–" and cv("big") == f"{2**62:,}" and cv("pi") == "3.25"

    def sv(k: str) -> str:
        out: str = page.locator(f'#summary [data-summary-key="{k}"] td').inner_text()
        return out

    assert sv("s_nan") == "NaN" and sv("s_ninf") == "-Infinity" and sv("s_list") == '[-Infinity, 2.5, "x"]'
    shot(page, "overview-value-kinds")


# --- live updates: only what changed -------------------------------------------------------------------------------


def test_live_updates_carry_only_changes(stack: Stack, page: Any) -> None:
    """The stream sent the whole run (config, columns, summary, rejections) on every change: now one ``run`` event,
    then ``run_delta`` events the page applies (counters, summary and state follow)."""
    page.add_init_script(FAST_LIVE)
    run = stack.init("lu", "l1", config={"lr": 0.1, "pad": "x" * 2000})
    run.log({"loss": 1.0}, step=0)
    run.log({}, commit=True)
    stack.wait("lu/l1", lambda v: v.rows >= 1)
    page.goto(stack.url + "#/p/lu/r/l1")
    page.wait_for_function("document.querySelector('#live')?.dataset.state === 'connected'")
    for s in range(1, 60):
        run.log({"loss": 1.0 / (s + 1)}, step=s)
        if s % 10 == 0:
            run.log({}, commit=True)
    run.log({"acc": 0.5}, step=60)
    run.log({}, commit=True)
    page.wait_for_function("document.querySelector('[data-counter=\"last step\"] b')?.innerText === '60'",
                           timeout=30_000)
    page.wait_for_selector('#summary [data-summary-key="acc"]', timeout=30_000)
    names = page.evaluate("window.__stepline.live.names")
    assert names.get("run") == 1 and names.get("run_delta", 0) >= 1, names
    assert page.locator('#config [data-config-key="lr"] .cv').inner_text() == "0.1"  # kept from the first event
    panel(page, "acc")
    wait_chart(page, "acc", "c.count === 1")  # a new key from a delta's columns gets its panel
    run.finish()
    page.wait_for_selector('h1 .badge[data-state="finished"]', timeout=30_000)
    assert page.locator('[data-fact="exit code"]').inner_text() == "0"


# --- speed: the run's first read starts from the HTML --------------------------------------------------------------


def test_run_info_read_starts_from_the_html(stack: Stack, page: Any) -> None:
    """The run page's info is read by an inline script in index.html while the scripts load (not after them), and
    only once; the first screen's lines come in batched reads."""
    run = stack.init("pf", "p1")
    keys = [f"k{i:02d}" for i in range(12)]
    for s in range(200):
        run.log({k: float(s) for k in keys}, step=s)
    run.finish()
    finished(stack, "pf/p1")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(stack.url + "#/p/pf/r/p1")
    for k in keys[:3]:
        wait_chart(page, k)
    info_reads = [u for u in requests if "/runs/p1" in u and "sampled" not in u and "/events" not in u]
    assert len(info_reads) == 1 and "/page_info" in info_reads[0], info_reads
    assert page.evaluate("window.__steplinePrefetch") is None  # app.js took the inline script's reply
    batched = [u for u in requests if "/sampled_batch" in u]
    assert batched and not [u for u in requests if "/sampled?" in u]
