"""The URL the SDK prints at ``finish()`` opens the run's page: ``stepline up`` in a fresh folder with nothing
configured, the README's example run in another process, its printed link opened in Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support.up_stack import ROOT, start_up, stop_up

pytestmark = pytest.mark.browser


@pytest.mark.timeout(600)
def test_the_printed_url_opens_the_runs_page(page: Any, tmp_path: Path) -> None:
    folder, home = tmp_path / "fresh", tmp_path / "home"
    folder.mkdir()
    home.mkdir()
    up = start_up(folder, home, "--gateway-port", "0")
    try:
        res = up.run(["python", str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        m = re.search(r"stepline: run mnist/(\w+) finished: 1000 rows; view it at (\S+)", res.stderr)
        assert m, res.stderr
        run_id, url = m.groups()
        page.goto(url)
        page.get_by_text(run_id).first.wait_for()
        page.get_by_text("train/loss").first.wait_for()
        assert f"#/p/mnist/r/{run_id}" in page.url
    finally:
        assert stop_up(up) == 0
