"""Every script in examples/ runs against ``stepline up`` with nothing configured, prints what it read back, and
the history it logged is there when read again from this process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.up_stack import ROOT, UpStack

from history import Api

pytestmark = pytest.mark.integration

#: example -> (lines its output must hold, the run's expected row count)
EXPECTED: dict[str, tuple[list[str], int]] = {
    "sections_and_axes": (["epochs: [0, 1, 2, 3, 4]", "val/acc: [0.5, 0.6, 0.7, 0.8, 0.9]",
                           "summary val/acc: {'max': 0.9} | note: validation once per epoch",
                           "sections: ['train', 'val']"], 501),
    "lists_and_histograms": (["rows: 20", "first top3 has 3 values", "last histogram: histogram 32 bins, 256 values"],
                             20),
    "line_series": (["chart: plot line_series 'learning-rate schedules'",
                     "lines: ['decay', 'warmup', 'cosine'] of 50 points"], 50),
    "table_html": (["table columns: ['id', 'prediction', 'confidence', 'explanation']",
                    "table rows: 3 | html cells: 3", "report: html 47 bytes"], 1),
    "media_over_steps": (["images at steps: [0, 10, 20, 30, 40]"], 50),
    "read_history": (["state: finished | rows: 500 | config: {'batch_size': 64}", "summary best_acc: 0.998",
                      "sampled rows: 50 first/last step: 0 499", "streamed rows: 500",
                      "rejected: {'non_monotonic_step': 1} ['non_monotonic_step']"], 500),
}


def test_every_example_is_tested() -> None:
    scripts = {p.stem for p in (ROOT / "examples").glob("*.py")}
    assert scripts == set(EXPECTED) | {"quickstart"}  # quickstart is the README's example: test_readme.py


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(up: UpStack, tmp_path: Path, name: str) -> None:
    lines, rows = EXPECTED[name]
    res = up.run(["python", str(ROOT / "examples" / f"{name}.py")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for line in lines:
        assert line in res.stdout.splitlines(), f"{line!r} not in:\n{res.stdout}"
    m = re.search(r"stepline: run examples/(\w+) finished: (\d+) rows?", res.stderr)
    assert m, res.stderr
    assert int(m.group(2)) == rows
    with Api(data_dir=up.record.data_dir) as api:
        r = api.run(f"examples/{m.group(1)}")
        assert (r.state, r.rows) == ("finished", rows)


def test_quickstart_as_the_readme_says(up: UpStack) -> None:
    """`python examples/quickstart.py` from the repository's folder, in another terminal: it prints the history
    and the run's page."""
    res = up.run(["python", "examples/quickstart.py"], cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "[100 rows x 2 columns]" in res.stdout
    assert re.search(rf"finished: 1000 rows; view it at {re.escape(str(up.record.gateway_url))}/#/p/mnist/r/\w+",
                     res.stderr), res.stderr
