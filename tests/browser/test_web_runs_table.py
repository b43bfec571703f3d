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


def log_runs(stack: Stack, project: str, rows: dict[str, dict[str, Any]]) -> None:
    """One finished run per id (created in this order), each logging its row at step 0."""
    for rid, row in rows.items():
        run = stack.init(project, rid)
        run.log(row, step=0)
        run.finish()
    for rid in rows:
        stack.wait(f"{project}/{rid}", lambda v: v.state == "finished", what="finished")


def sort_header(page: Any, stack: Stack, project: str, newest: str, col: str) -> Any:
    """The project's runs table with ``col`` added (``newest`` shown first); the locator of its sort header."""
    page.goto(stack.url + f"#/p/{project}")
    page.wait_for_selector(f'#runs tr[data-run="{newest}"]')
    add_column(page, col)
    return page.locator(f'#runs th[data-col="{col}"] .th-label')


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


def test_infinities_sort_across_pages(stack: Stack, page: Any) -> None:
    """Sorting by a summary column orders every run of the project, ±inf at the numeric ends: the gateway's order
    took them for the strings "Infinity"/"-Infinity" (its value index held the JSON's text), so the first page
    ascending was the smallest finite numbers and ±inf came after them all, in both directions."""
    page.add_init_script("localStorage.setItem('stepline.runsPerPage', '5')")
    losses: dict[str, float | None] = {"r0": 1.0, "r1": float("inf"), "r2": -2.0, "r3": float("nan"),
                                       "r4": float("-inf"), "r5": 3.0, "r6": None, "r7": 0.5, "r8": 2.0}
    # created in this order: the newest page is r8..r4
    log_runs(stack, "infp", {rid: {"acc": 1.0} if v is None else {"loss": v} for rid, v in losses.items()})
    head = sort_header(page, stack, "infp", "r8", "summary.loss")
    head.click()  # ascending: -inf first, +inf after every finite number, NaN and no value last
    page.wait_for_function(f"{ORDER} === 'r4,r2,r7,r0,r8'")
    assert cells(page, "summary.loss")["r4"] == "-Infinity"
    page.click("#runs-next")
    page.wait_for_function(f"{ORDER} === 'r5,r1,r3,r6'")
    assert cells(page, "summary.loss") == {"r5": "3", "r1": "Infinity", "r3": "NaN", "r6": "–"}
    page.click("#runs-prev")
    page.wait_for_function(f"{ORDER} === 'r4,r2,r7,r0,r8'")
    head.click()  # descending: +inf first, -inf after every finite number, NaN and no value still last
    page.wait_for_function(f"{ORDER} === 'r1,r5,r8,r0,r7'")
    page.click("#runs-next")
    page.wait_for_function(f"{ORDER} === 'r2,r4,r3,r6'")


def test_warning_and_column_counts_sort_across_pages(stack: Stack, page: Any) -> None:
    """The warnings and columns columns sorted the page shown only (the counts were not in the run index): with 2
    runs a page, sorting by them shows the runs with the fewest/most of every run of the project."""
    page.add_init_script("localStorage.setItem('stepline.runsPerPage', '2')")
    # run -> (keys logged, keys of them also logged as a string: a conflict and a client warning each); created in
    # this order, so the newest page is (w4, w3). Columns 2, 5, 1, 3; warnings fewest to most: w1, w3, w4, w2.
    plan = {"w1": (2, 0), "w2": (5, 3), "w3": (1, 1), "w4": (3, 2)}
    warned: dict[str, int] = {}
    for rid, (keys, mixed) in plan.items():
        run = stack.init("wcp", rid)
        run.log({f"k{i}": float(i) for i in range(keys)}, step=0)
        if mixed:
            run.log({f"k{i}": "text" for i in range(mixed)}, step=1)
        run.finish()

        def counted(v: Any, n: int = keys, k: int = mixed) -> bool:
            return bool(v.state == "finished" and len(v.conflicts) == k and len({c["key"] for c in v.columns}) == n)

        view = stack.wait(f"wcp/{rid}", counted, what="committed with its columns and warnings")
        warned[rid] = len(view.warnings) + len(view.conflicts)
    assert sorted(plan, key=warned.__getitem__) == ["w1", "w3", "w4", "w2"] and len(set(warned.values())) == 4

    page.goto(stack.url + "#/p/wcp")
    page.wait_for_selector('#runs tr[data-run="w4"]')
    assert page.evaluate(ORDER) == "w4,w3"  # newest first
    warnings = page.locator('#runs th[data-col="warning_count"] .th-label')
    warnings.click()  # ascending: the fewest warnings of all four runs
    page.wait_for_function(f"{ORDER} === 'w1,w3'")
    assert cells(page, "warning_count") == {"w1": "0", "w3": str(warned["w3"])}
    page.click("#runs-next")
    page.wait_for_function(f"{ORDER} === 'w4,w2'")
    page.click("#runs-prev")
    page.wait_for_function(f"{ORDER} === 'w1,w3'")
    warnings.click()  # descending
    page.wait_for_function(f"{ORDER} === 'w2,w4'")
    columns = page.locator('#runs th[data-col="column_count"] .th-label')
    columns.click()  # ascending
    page.wait_for_function(f"{ORDER} === 'w3,w1'")
    assert cells(page, "column_count") == {"w3": "1", "w1": "2"}
    columns.click()  # descending
    page.wait_for_function(f"{ORDER} === 'w2,w4'")
    page.click("#runs-next")
    page.wait_for_function(f"{ORDER} === 'w1,w3'")


def test_numbers_and_strings_in_one_column_sort_as_the_gateway_orders(stack: Stack, page: Any) -> None:
    """A column holding numbers in some runs and strings in others: the gateway orders numbers first, then strings,
    in both directions; the page's own re-sort of the rows shown flipped that when descending (strings first), so a
    page holding both disagreed with the pages around it."""
    page.add_init_script("localStorage.setItem('stepline.runsPerPage', '4')")
    values: dict[str, float | str] = {"m0": 2.0, "m1": "adam", "m2": 5.0, "m3": "sgd", "m4": 1.0}
    log_runs(stack, "mixp", {rid: {"opt": v} for rid, v in values.items()})
    head = sort_header(page, stack, "mixp", "m4", "summary.opt")
    head.click()  # ascending: 1, 2, 5, then "adam"; "sgd" on the next page
    page.wait_for_function(f"{ORDER} === 'm4,m0,m2,m1'")
    head.click()  # descending: 5, 2, 1, then "sgd"; "adam" on the next page
    page.wait_for_function(f"{ORDER} === 'm2,m0,m4,m3'")
    page.click("#runs-next")
    page.wait_for_function(f"{ORDER} === 'm1'")
