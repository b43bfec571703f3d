"""The runs table of issue 17 in headless Chromium against a real worker and gateway: NaN and ±inf in config and
summary columns shown and sorted exactly, and counter columns ordered across every run of the project (not only
the page shown). Each test fails on the page before its fix (``STEPLINE_TEST_WEB_DIR`` at an older ``gateway/web``
shows it for the page's part)."""

from __future__ import annotations

from typing import Any

import pytest
from support.browser_stack import Stack

pytestmark = pytest.mark.browser

ORDER = "[...document.querySelectorAll('#runs tbody tr[data-run]')].map(e => e.dataset.run).join()"


def cells(page: Any, col: str) -> dict[str, str]:
    out: dict[str, str] = page.evaluate(
        f"Object.fromEntries([...document.querySelectorAll('#runs tbody tr[data-run]')].map(tr => "
        f"[tr.dataset.run, tr.querySelector('td[data-col=\"{col}\"]').textContent]))")
    return out


def add_column(page: Any, col: str) -> None:
    page.locator("#add-column").focus()
    page.wait_for_function(f"[...document.querySelectorAll('#add-column option')].some(o => o.value === {col!r})")
    page.select_option("#add-column", col)
    page.wait_for_selector(f'#runs th[data-col="{col}"]')


def test_non_finite_config_and_summary_columns(stack: Stack, page: Any) -> None:
    """The listing sent NaN as JSON null (shown "–", sorted as missing) and ±inf as the strings "Infinity" /
    "-Infinity" (sorted after every number); the table shows NaN, Infinity, -Infinity and sorts -inf < numbers <
    inf, NaN after the numbers and a run without the value last in both directions."""
    values = {"a": float("inf"), "b": 0.5, "c": float("nan"), "d": float("-inf"), "e": -3.0}
    for rid, v in values.items():
        run = stack.init("nft", rid, config={"lr": v, "opt": {"eps": v}})
        run.log({"loss": v}, step=0)
        run.finish()
    run = stack.init("nft", "f", config={"other": 1})  # no lr: missing, last
    run.log({"acc": 1.0}, step=0)
    run.finish()
    for rid in [*values, "f"]:
        stack.wait(f"nft/{rid}", lambda v: v.state == "finished", what="finished")

    page.goto(stack.url + "#/p/nft")
    page.wait_for_selector('#runs tr[data-run="f"]')
    for col in ("config.lr", "config.opt.eps", "summary.loss"):
        add_column(page, col)
        shown = cells(page, col)
        assert shown == {"a": "Infinity", "b": "0.5", "c": "NaN", "d": "-Infinity", "e": "-3", "f": "–"}, col
    head = page.locator('#runs th[data-col="summary.loss"] .th-label')
    head.click()  # ascending
    page.wait_for_function(f"{ORDER} === 'd,e,b,a,c,f'")
    head.click()  # descending
    page.wait_for_function(f"{ORDER} === 'a,b,e,d,c,f'")
    # The cells are numbers (right-aligned like the others).
    assert page.locator('#runs tr[data-run="c"] td[data-col="config.lr"]').get_attribute("class") == "num"


def test_counter_columns_sort_every_run(stack: Stack, page: Any) -> None:
    """With 2 runs a page, sorting by rejected calls (and rows) shows the runs with the fewest/most of every run
    of the project, not the newest page re-sorted."""
    page.add_init_script("localStorage.setItem('stepline.runsPerPage', '2')")
    # run -> (rows written, rejected calls); created in this order, so the newest page is (r4, r3).
    plan = {"r1": (3, 3), "r2": (8, 0), "r3": (5, 2), "r4": (2, 1)}
    for rid, (rows, rejected) in plan.items():
        run = stack.init("cnt", rid)
        for s in range(rows):
            run.log({"x": float(s)}, step=10 + s)
        for _ in range(rejected):  # below the cursor: the whole call is rejected
            run.log({"x": 0.0}, step=0)
        run.finish()
        def counted(v: Any, n: int = rows, k: int = rejected) -> bool:
            return bool(v.state == "finished" and v.rows == n and sum(v.rejected.values()) == k)

        stack.wait(f"cnt/{rid}", counted, what="committed with its counts")

    page.goto(stack.url + "#/p/cnt")
    page.wait_for_selector('#runs tr[data-run="r4"]')
    assert page.evaluate(ORDER) == "r4,r3"  # newest first
    rejected = page.locator('#runs th[data-col="rejected"] .th-label')
    rejected.click()  # ascending: the fewest rejected calls of all four runs
    page.wait_for_function(f"{ORDER} === 'r2,r4'")
    assert cells(page, "rejected") == {"r2": "0", "r4": "1"}
    rejected.click()  # descending
    page.wait_for_function(f"{ORDER} === 'r1,r3'")
    page.click("#runs-next")
    page.wait_for_function(f"{ORDER} === 'r4,r2'")
    assert page.locator("#runs-page").get_attribute("data-page") == "1"
    page.click("#runs-prev")
    page.wait_for_function(f"{ORDER} === 'r1,r3'")
    rows = page.locator('#runs th[data-col="rows"] .th-label')
    rows.click()  # ascending
    page.wait_for_function(f"{ORDER} === 'r4,r1'")
    rows.click()
    page.wait_for_function(f"{ORDER} === 'r2,r3'")
