"""Every code example of W&B's logging FAQ (shared/seed/logging-faq.md), run with ``import ingest as wandb``.

Each test runs the FAQ's lines verbatim (between ``# FAQ`` and ``# /FAQ``) against a real Redis and a worker, then
asserts the history they produce through the W&B-shaped read API. The FAQ's snippets are fragments: the lines
around them (``init``, the data they log, ``finish``) are ours. Adapted, and said so where it happens: the Plotly
and Bokeh scripts write a small generated HTML file instead of a figure (plotly, bokeh, holoviews, panel and scipy
are not dependencies of ours), and their ``import wandb`` resolves to ``ingest`` through ``sys.modules``.
"""

from __future__ import annotations

import logging
import runpy
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.compat_stack import Stack

import ingest
import ingest as wandb
from schemas import Media

pytestmark = pytest.mark.integration


def user_rows(view: Any) -> list[dict[str, Any]]:
    """Rows without the special columns other than ``_step``."""
    return [{k: v for k, v in r.items() if k in ("_step",) or not k.startswith("_")} for r in view.scan_history()]


def test_sections_by_slash(stack: Stack) -> None:
    run = wandb.init(project="faq", id="sections")
    # FAQ
    wandb.log({"val/loss": 1.1, "val/acc": 0.3})
    wandb.log({"train/loss": 0.1, "train/acc": 0.94})
    # /FAQ
    run.finish()
    view = stack.finished("faq/sections")
    assert view.sections() == {"train": ["train/acc", "train/loss"], "val": ["val/acc", "val/loss"]}
    assert user_rows(view) == [
        {"_step": 0, "val/loss": 1.1, "val/acc": 0.3},
        {"_step": 1, "train/loss": 0.1, "train/acc": 0.94},
    ]


def test_batch_and_epoch_as_custom_x_axes(stack: Stack) -> None:
    run = wandb.init(project="faq", id="axes")
    wandb.define_metric("loss", step_metric="batch")
    wandb.define_metric("val_acc", step_metric="epoch")
    for epoch in range(2):
        for batch_idx in range(3):
            # FAQ
            wandb.log({"batch": batch_idx, "loss": 0.3})
            # /FAQ
        # FAQ
        wandb.log({"epoch": epoch, "val_acc": 0.94})
        # /FAQ
    run.finish()
    view = stack.finished("faq/axes")
    assert [m["name"] for m in view.metrics] == ["loss", "val_acc"]
    assert {m["name"]: m["step_metric"] for m in view.metrics} == {"loss": "batch", "val_acc": "epoch"}
    per_epoch = view.history(keys=["val_acc"], x_axis="epoch", samples=None, pandas=False)
    assert per_epoch["epoch"].tolist() == [0, 1]
    assert per_epoch["_step"].tolist() == [3, 7]
    assert per_epoch["val_acc"].tolist() == [0.94, 0.94]
    line = view.sampled("loss", x_axis="batch")
    assert line["x"].tolist() == [0, 0, 1, 1, 2, 2]  # sorted by x, step order kept among equal x
    assert line["step"].tolist() == [0, 4, 1, 5, 2, 6]


def test_list_of_values_as_keys_and_as_histogram(stack: Stack) -> None:
    losses = [0.9, 0.5, 0.25, 0.125, 0.1]
    run = wandb.init(project="faq", id="lists")
    # FAQ
    wandb.log({f"losses/loss-{ii}": loss for ii, loss in enumerate(losses)})
    # /FAQ
    # FAQ
    wandb.log({"losses": wandb.Histogram(losses)})  # losses를 히스토그램으로 변환
    # /FAQ
    run.finish()
    view = stack.finished("faq/lists")
    assert view.sections()["losses"] == [f"losses/loss-{i}" for i in range(5)]
    rows = list(view.scan_history())
    assert [r["_step"] for r in rows] == [0, 1]
    assert {k: v for k, v in rows[0].items() if k.startswith("losses/")} == {
        f"losses/loss-{i}": v for i, v in enumerate(losses)
    }
    hist = rows[1]["losses"]
    assert isinstance(hist, Media) and hist.kind == "histogram"
    counts, edges = np.histogram(losses, bins=64)
    assert hist.payload["values"] == counts.tolist()
    assert hist.payload["bins"] == pytest.approx(edges.tolist())


def test_line_series_with_legend(stack: Stack) -> None:
    x_data = [0, 1, 2, 3]
    y_data = [[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]
    run = wandb.init(project="faq", id="lines")
    # FAQ
    wandb.log(
        {
            "my_plot": wandb.plot.line_series(
                xs=x_data, ys=y_data, keys=["metric_A", "metric_B"]
            )
        }
    )
    # /FAQ
    wandb.log({"titled": wandb.plot.line_series(xs=x_data, ys=y_data, keys=["a", "b"], title="Two lines",
                                                 xname="epoch")})
    run.finish()
    view = stack.finished("faq/lines")
    rows = list(view.scan_history())
    plot = rows[0]["my_plot"]
    assert isinstance(plot, Media) and plot.kind == "plot"
    assert plot.payload["keys"] == ["metric_A", "metric_B"]
    assert plot.payload["xs"] == [[0.0, 1.0, 2.0, 3.0]] * 2
    assert plot.payload["ys"] == y_data
    titled = rows[1]["titled"]
    assert (titled.payload["title"], titled.payload["xname"]) == ("Two lines", "epoch")


PLOTLY_SCRIPT = """
import wandb
# ADAPTED: plotly is not installed; a small HTML file stands in for the figure.
# import plotly.express as px

# 새로운 실행 초기화
run = wandb.init(project="log-plotly-fig-tables", name="plotly_html")

# 테이블 생성
table = wandb.Table(columns=["plotly_figure"])

# Plotly 그림 경로 생성
path_to_plotly_html = "./plotly_figure.html"

# Plotly 그림 예시
# ADAPTED: fig = px.scatter(x=[0, 1, 2, 3, 4], y=[0, 1, 4, 9, 16])

# Plotly 그림을 HTML로 작성
# auto_play를 False로 설정하면 애니메이션 Plotly
# 차트가 테이블에서 자동으로 재생되지 않음
# ADAPTED: fig.write_html(path_to_plotly_html, auto_play=False)
with open(path_to_plotly_html, "w") as f:
    f.write("<html><body><div id='plot'>scatter x=[0, 1, 2, 3, 4] y=[0, 1, 4, 9, 16]</div></body></html>")

# Plotly 그림을 HTML 파일로 테이블에 추가
table.add_data(wandb.Html(path_to_plotly_html))

# 테이블 로그
run.log({"test_table": table})
wandb.finish()
"""

BOKEH_SCRIPT = """
# ADAPTED: scipy, holoviews, panel and bokeh are not installed; the function writes a generated HTML file with
# the audio's spectrogram described in text instead of the Bokeh/Panel page (same name, same signature).
# from scipy.signal import spectrogram
# import holoviews as hv
# import panel as pn
# from scipy.io import wavfile
import numpy as np
# from bokeh.resources import INLINE

# hv.extension("bokeh", logo=False)
import wandb


def save_audio_with_bokeh_plot_to_html(audio_path, html_file_name):
    with open(audio_path, "rb") as f:
        wav_data = np.frombuffer(f.read(), dtype=np.uint8)
    with open(html_file_name, "w") as f:
        f.write(f"<html><body><audio></audio><p>{len(wav_data)} bytes of {audio_path}</p></body></html>")


html_file_name = "audio_with_plot.html"
audio_path = "hello.wav"
save_audio_with_bokeh_plot_to_html(audio_path, html_file_name)

wandb_html = wandb.Html(html_file_name)
run = wandb.init(project="audio_test")
my_table = wandb.Table(columns=["audio_with_plot"], data=[[wandb_html], [wandb_html]])
run.log({"audio_table": my_table})
run.finish()
"""


def run_script(source: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a W&B script file unchanged but for its ADAPTED lines: ``import wandb`` gets ``ingest``."""
    path.write_text(textwrap.dedent(source))
    monkeypatch.setitem(sys.modules, "wandb", ingest)
    monkeypatch.chdir(path.parent)
    runpy.run_path(str(path), run_name="__main__")


def stored_blob(stack: Stack, sha: str) -> bytes:
    found = [p for p in stack.data_dir.rglob(f"*{sha}*") if p.is_file()]
    assert found, f"blob {sha} not in the data directory"
    return found[0].read_bytes()


def test_plotly_figure_as_html_in_a_table(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_script(PLOTLY_SCRIPT, tmp_path / "plotly_table.py", monkeypatch)
    view = stack.only_run("log-plotly-fig-tables")
    assert view.name == "plotly_html" and view.state == "finished"
    (row,) = list(view.scan_history())
    table = row["test_table"]
    assert isinstance(table, Media) and table.kind == "table"
    assert table.payload["columns"] == ["plotly_figure"]
    (cell,) = table.payload["data"][0]
    assert isinstance(cell, Media) and cell.kind == "html"
    html = (tmp_path / "plotly_figure.html").read_bytes()
    assert cell.payload["size"] == len(html)
    assert stored_blob(stack, cell.payload["sha256"]) == html


def test_bokeh_audio_as_html_in_a_table(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hello.wav").write_bytes(b"RIFF" + bytes(range(64)))
    run_script(BOKEH_SCRIPT, tmp_path / "bokeh_table.py", monkeypatch)
    view = stack.only_run("audio_test")
    (row,) = list(view.scan_history())
    table = row["audio_table"]
    assert table.payload["columns"] == ["audio_with_plot"]
    cells = [r[0] for r in table.payload["data"]]
    assert len(cells) == 2 and all(c.kind == "html" for c in cells)
    assert stored_blob(stack, cells[0].payload["sha256"]) == (tmp_path / "audio_with_plot.html").read_bytes()


def test_history_through_the_public_api(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    r = wandb.init(project="project", id="run_id")
    for i in range(3):
        wandb.log({"loss": 1 / (i + 1)})
    r.finish()
    stack.finished("project/run_id")
    # FAQ
    api = wandb.Api()
    run = api.run("username/project/run_id")
    print(run.history())
    # /FAQ
    out = capsys.readouterr().out
    assert "loss" in out and "_step" in out
    df = run.history()
    assert df["_step"].tolist() == [0, 1, 2]
    assert df["loss"].tolist() == [1.0, 0.5, 1 / 3]
    api.close()


def test_precision_and_recall_separate_bundled_and_with_explicit_step(stack: Stack) -> None:
    precision, recall = 0.8, 0.6
    run = wandb.init(project="faq", id="sync")
    # FAQ
    wandb.log({"Precision": precision})
    ...
    wandb.log({"Recall": recall})
    # /FAQ
    # FAQ
    wandb.log({"Precision": precision, "Recall": recall})
    # /FAQ
    step = 10
    # FAQ
    wandb.log({"Precision": precision}, step=step)
    ...
    wandb.log({"Recall": recall}, step=step)
    # /FAQ
    run.finish()
    view = stack.finished("faq/sync")
    assert user_rows(view) == [
        {"_step": 0, "Precision": 0.8},
        {"_step": 1, "Recall": 0.6},
        {"_step": 2, "Precision": 0.8, "Recall": 0.6},
        {"_step": 10, "Precision": 0.8, "Recall": 0.6},
    ]
    both = view.history(keys=["Precision", "Recall"], samples=None, pandas=False)
    assert both["_step"].tolist() == [2, 10]


def test_lower_step_is_warned_and_rejected(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    run = wandb.init(project="faq", id="lower")
    wandb.log({"Precision": 0.5}, step=5)
    with caplog.at_level(logging.WARNING, logger="ingest"):
        wandb.log({"Recall": 0.4}, step=3)  # W&B: "Tried to log to step 3 that is less than the current step 5"
    assert any("step 3 below the current step 5" in m for m in caplog.messages)
    wandb.log({"Recall": 0.7}, step=6)
    run.finish()
    view = stack.finished("faq/lower")
    assert user_rows(view) == [{"_step": 5, "Precision": 0.5}, {"_step": 6, "Recall": 0.7}]
    assert view.rejected == {"non_monotonic_step": 1}
    (rej,) = view.rejections()
    assert (rej["reason"], rej["step"], rej["cursor"]) == ("non_monotonic_step", 3, 5)


def test_one_key_two_types_and_case_only_respelling(stack: Stack) -> None:
    run = wandb.init(project="faq", id="kinds")
    wandb.log({"My-Metric": 1.0, "mixed": 1.5})
    wandb.log({"my-metric": 2.0, "mixed": "high"})
    run.finish()
    view = stack.finished("faq/kinds")
    assert view.keys() == ["My-Metric", "mixed"]  # case-insensitive: one column, first spelling kept
    assert any("my-metric" in w for w in view.warnings)
    assert view.conflicts and "mixed" in view.conflicts[0]
    kinds = sorted(c["kind"] for c in view.columns if c["key"] == "mixed")
    assert kinds == ["number", "string"]


class Trainer:
    def __init__(self) -> None:
        self.scores = [0.1, 0.2]


def test_class_attribute_is_captured_when_logged(stack: Stack) -> None:
    trainer = Trainer()
    run = wandb.init(project="faq", id="capture")
    wandb.log({"scores": trainer.scores})
    trainer.scores.append(0.3)  # the FAQ's hazard: a change after log() must not reach the logged value
    run.finish()
    view = stack.finished("faq/capture")
    (row,) = list(view.scan_history())
    assert list(row["scores"]) == [0.1, 0.2]
