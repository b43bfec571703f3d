"""The web page draws the ``wandb.plot`` charts over a table (issue #20 item 4), in real headless Chromium against
a real worker and gateway: line (one line per stroke value), scatter, bar, histogram, pr_curve and roc_curve with
uPlot, confusion_matrix as a shaded grid; what each draws is checked against the values logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.browser_stack import Stack

import ingest as wandb

pytestmark = pytest.mark.browser

KEYS = ["charts/line", "charts/scatter", "charts/bar", "charts/hist", "charts/cm", "charts/pr", "charts/roc"]


def test_table_charts_are_drawn(stack: Stack, page: Any, tmp_path: Path) -> None:
    run = stack.init("plots", "p1")
    t = wandb.Table(
        columns=["step", "loss", "split"],
        data=[[0, 1.0, "train"], [1, 0.5, "train"], [0, 1.2, "val"], [1, 0.8, "val"], [2, 0.3, "train"]],
    )
    bars = wandb.Table(columns=["name", "n"], data=[["cat", 3], ["dog", 5], ["owl", 1]])
    values = wandb.Table(columns=["v"], data=[[float(v)] for v in np.linspace(0, 1, 41)])
    y = [0, 0, 1, 1]
    probas = [[1 - s, s] for s in (0.1, 0.4, 0.35, 0.8)]
    run.log(
        {
            "charts/line": wandb.plot.line(t, "step", "loss", stroke="split", title="loss by split"),
            "charts/scatter": wandb.plot.scatter(t, "step", "loss"),
            "charts/bar": wandb.plot.bar(bars, "name", "n", title="animals"),
            "charts/hist": wandb.plot.histogram(values, "v"),
            "charts/cm": wandb.plot.confusion_matrix(y_true=[0, 1, 1, 0], preds=[0, 1, 0, 0], class_names=["a", "b"]),
            "charts/pr": wandb.plot.pr_curve(y, probas, labels=["neg", "pos"]),
            "charts/roc": wandb.plot.roc_curve(y, probas, labels=["neg", "pos"]),
        }
    )
    run.finish()
    stack.wait("plots/p1", lambda v: v.state == "finished", what="finished")

    page.goto(f"{stack.url}#/p/plots/r/p1")
    page.wait_for_selector("#run-body details.section")
    drawn: dict[str, Any] = {}
    for key in KEYS:
        p = page.locator(f'.panel[data-key="{key}"]')
        p.scroll_into_view_if_needed()
        page.wait_for_function("k => window.__stepline.charts[k]?.kind", arg=key)
        drawn[key] = page.evaluate("k => window.__stepline.charts[k]", key)
    assert {k: d["kind"] for k, d in drawn.items()} == dict(
        zip(KEYS, ["line", "scatter", "bar", "histogram", "confusion_matrix", "pr_curve", "roc_curve"], strict=True)
    )

    line = drawn["charts/line"]
    assert line["series"] == ["train", "val"]
    x, train, val = line["drawn"]
    assert x == [0, 0, 1, 1, 2]  # every point kept, sorted by x (stable)
    assert [v for v in train if v is not None] == [1.0, 0.5, 0.3]
    assert [v for v in val if v is not None] == [1.2, 0.8]
    legend = page.locator('.panel[data-key="charts/line"] .u-legend').inner_text()
    assert "train" in legend and "val" in legend
    assert drawn["charts/scatter"]["drawn"][0] == [0, 0, 1, 1, 2]

    assert drawn["charts/bar"]["drawn"] == [[0, 1, 2], [3, 5, 1]]
    hist_x, counts = drawn["charts/hist"]["drawn"]
    assert len(counts) == 20 and sum(counts) == 41 and hist_x[0] == pytest.approx(0.025)  # 20 bins over [0, 1]

    assert drawn["charts/cm"]["drawn"] == [[2, 0], [1, 1]] and drawn["charts/cm"]["series"] == ["a", "b"]
    grid = page.locator('.panel[data-key="charts/cm"] table.confusion').inner_text()
    assert "a" in grid and "b" in grid

    roc = drawn["charts/roc"]
    assert roc["series"] == ["neg", "pos"]
    fpr, neg, pos = roc["drawn"]
    assert sum(v is not None for v in neg) == 5
    assert [(f, t) for f, t in zip(fpr, pos, strict=True) if t is not None] == [
        (0.0, 0.0),
        (0.0, 0.5),
        (0.5, 0.5),
        (0.5, 1.0),
        (1.0, 1.0),
    ]  # the vertical runs are kept
    assert drawn["charts/pr"]["series"] == ["neg", "pos"] and len(drawn["charts/pr"]["drawn"][0]) == 42
    assert page.locator('.panel[data-key="charts/bar"] h3 .tools small').inner_text() == "animals"  # the title
    page.screenshot(path=tmp_path / "plots.png", full_page=True)
