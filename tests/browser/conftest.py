"""Browser fixtures: headless Chromium from Debian's packages (``/usr/bin/chromium``) driven by Playwright for
Python, and a stack (worker + gateway) on the test's Redis namespace. Without Chromium or Playwright the tests
skip with the reason, except under ``CI=true`` where they fail (``.ci/run`` installs Chromium).

Playwright's own browser downloads are never used (``playwright install`` is not run): ``executable_path`` points
at the system Chromium.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.browser_stack import Stack
from support.servers import need

CHROMIUM = os.environ.get("STEPLINE_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium for one test. Not shared wider: Playwright's sync API keeps an event loop running in this thread
    while it is open, which would break every asyncio test that runs after the browser tests."""
    if not Path(CHROMIUM).exists():
        need(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (own localStorage) and page; JavaScript errors fail the test."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(15_000)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(autouse=True)
def _web_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STEPLINE_TEST_WEB_DIR`` serves another copy of the page (e.g. an older commit's ``gateway/web``), to show
    that a test fails without a fix."""
    other = os.environ.get("STEPLINE_TEST_WEB_DIR")
    if other:
        import gateway.page

        monkeypatch.setattr(gateway.page, "WEB_DIR", Path(other).resolve())


@pytest.fixture
def stack(redis_url: str, namespace: str, data_dir: Path) -> Iterator[Stack]:
    s = Stack(redis_url, namespace, data_dir).start()
    try:
        yield s
    finally:
        s.close()
