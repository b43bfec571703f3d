"""``stepline`` with no arguments says what it can do, in a few lines, and exits 0 (not a usage error)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stepline.cli import main


def test_no_arguments_prints_the_first_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert 5 <= len(lines) <= 15
    for command in ("stepline up", "stepline history", "stepline status", "stepline demo", "stepline --help"):
        assert command in out
    assert "running here" not in out  # no stepline up in this test's (empty) STEPLINE_HOME


def test_no_arguments_as_a_process() -> None:
    res = subprocess.run([sys.executable, "-m", "stepline.cli"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith("stepline: streaming ingestion")
