"""``stepline demo`` as a user reads it: the SDK's warnings gathered into one summary (a count per kind, the first
examples) instead of lines between progress redraws, no per-run lines, and what to do next, which works as
printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def stepline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_") or k == "STEPLINE_HOME"}
    return subprocess.run([sys.executable, "-m", "stepline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_demo_summarises_warnings_and_says_what_next(tmp_path: Path) -> None:
    res = stepline("demo", "--runs", "3", "--steps", "1200", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    err = res.stderr.splitlines()
    # 3 runs x 2 deliberate steps below the cursor: 6 warnings, one summary line for the kind, 2 examples.
    assert any(line.startswith("6 SDK warnings while logging") for line in err), res.stderr
    assert "  6 x run … logged step … below the current step …; the call is sent and the worker will reject it " \
           "(non_monotonic_step)…" in err, res.stderr
    examples = [line for line in err if "logged step" in line and "e.g." in line]
    assert len(examples) == 2
    assert len([line for line in err if "logged step" in line]) == 3  # the summary line and its 2 examples only
    assert "stepline: run demo/" not in res.stderr  # the per-run init/finish lines are silenced in the demo
    # What next: the printed history command works as printed, in the same folder.
    out = res.stdout.splitlines()
    assert "Next:" in out
    cmd = next(line for line in out if line.strip().startswith("stepline history demo/"))
    argv = shlex.split(cmd.split("   ")[0].strip())
    hist = stepline(*argv[1:], cwd=tmp_path)
    assert hist.returncode == 0, hist.stderr
    assert re.search(r"train/loss", hist.stdout)
    assert any("stepline up" in line for line in out)
