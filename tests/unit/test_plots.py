"""``wandb.plot`` charts (issue #20 item 4): W&B's signatures, stored as a ``plot`` value holding the chart's table
and its kind. ``confusion_matrix`` and the table charts are checked against W&B's own functions (W&B's package is
in the test extra); ``pr_curve``/``roc_curve`` (W&B needs scikit-learn for them, which is not a dependency) against
values worked out by hand from scikit-learn's definitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ingest as wandb
from schemas import Media, SchemaError, capture, packb, unpackb
from schemas.media import TABLE_CHARTS


def roundtrip(m: Media) -> Media:
    """What a reader gets back: captured as log() does, encoded and decoded."""
    out = unpackb(packb(capture(m, "chart")))
    assert isinstance(out, Media)
    return out


def table() -> Any:
    return wandb.Table(columns=["step", "loss", "name"], data=[[0, 1.0, "a"], [1, 0.5, "b"], [2, 0.25, "a"]])


@pytest.mark.parametrize(
    ("make", "kind", "fields"),
    [
        (lambda t: wandb.plot.line(t, "step", "loss", title="L"), "line", {"x": "step", "y": "loss"}),
        (
            lambda t: wandb.plot.line(t, "step", "loss", stroke="name"),
            "line",
            {"x": "step", "y": "loss", "stroke": "name"},
        ),
        (lambda t: wandb.plot.scatter(t, "step", "loss"), "scatter", {"x": "step", "y": "loss"}),
        (lambda t: wandb.plot.bar(t, "name", "loss", title="B"), "bar", {"label": "name", "value": "loss"}),
        (lambda t: wandb.plot.histogram(t, "loss"), "histogram", {"value": "loss"}),
    ],
)
def test_table_charts_store_their_table_and_kind(make: Any, kind: str, fields: dict[str, str]) -> None:
    m = roundtrip(make(table()))
    assert m.kind == "plot" and m.payload["kind"] == kind and kind in TABLE_CHARTS
    assert m.payload["columns"] == ["step", "loss", "name"]
    assert m.payload["data"] == [[0, 1.0, "a"], [1, 0.5, "b"], [2, 0.25, "a"]]
    assert m.payload["fields"] == fields


def test_table_charts_match_wandbs_fields() -> None:
    w = pytest.importorskip("wandb")
    wt = w.Table(columns=["step", "loss", "name"], data=[[0, 1.0, "a"]])
    for ours, theirs in [
        (
            wandb.plot.line(table(), "step", "loss", stroke="name", title="t"),
            w.plot.line(wt, "step", "loss", "name", "t"),
        ),
        (wandb.plot.scatter(table(), "step", "loss", title="t"), w.plot.scatter(wt, "step", "loss", "t")),
        (wandb.plot.bar(table(), "name", "loss", title="t"), w.plot.bar(wt, "name", "loss", "t")),
        (wandb.plot.histogram(table(), "loss", title="t"), w.plot.histogram(wt, "loss", "t")),
    ]:
        assert ours.payload["fields"] == {k: v for k, v in theirs.spec.fields.items() if v is not None}
        assert ours.payload["title"] == theirs.spec.string_fields["title"]


def test_a_chart_over_a_missing_column_or_no_table_is_refused() -> None:
    with pytest.raises(SchemaError, match="'lr' is not a column"):
        wandb.plot.line(table(), "step", "lr")
    with pytest.raises(SchemaError, match="takes a Table"):
        wandb.plot.scatter([[1, 2]], "x", "y")


def test_confusion_matrix_is_wandbs() -> None:
    w = pytest.importorskip("wandb")
    y_true = [0, 1, 2, 2, 1, 0, 2]
    preds = [0, 2, 2, 2, 1, 1, 0]
    names = ["cat", "dog", "owl"]
    ours = roundtrip(wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=names))
    theirs = w.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=names)
    assert ours.payload["kind"] == "confusion_matrix"
    assert ours.payload["columns"] == ["Actual", "Predicted", "nPredictions"] == theirs.table.columns
    assert ours.payload["data"] == [[a, p, float(c)] for a, p, c in theirs.table.data]
    assert ours.payload["fields"] == theirs.spec.fields
    assert ours.payload["title"] == "Confusion Matrix Curve"
    probs = np.eye(3)[preds] * 0.8 + 0.05
    by_probs = wandb.plot.confusion_matrix(probs=probs, y_true=np.array(y_true), class_names=names)
    assert by_probs.payload["data"] == ours.payload["data"]
    unnamed = wandb.plot.confusion_matrix(y_true=y_true, preds=preds)
    assert unnamed.payload["data"][0][:2] == ["Class_1", "Class_1"]


def test_confusion_matrix_refusals() -> None:
    with pytest.raises(SchemaError, match="Only one"):
        wandb.plot.confusion_matrix(probs=[[1, 0]], preds=[0], y_true=[0])
    with pytest.raises(SchemaError, match="must be equal"):
        wandb.plot.confusion_matrix(preds=[0, 1], y_true=[0])
    with pytest.raises(SchemaError, match="exceeds"):
        wandb.plot.confusion_matrix(preds=[0, 1, 2], y_true=[0, 1, 2], class_names=["a", "b"])


def two_class() -> tuple[list[int], list[list[float]]]:
    scores = [0.1, 0.4, 0.35, 0.8]  # sklearn's roc_curve docstring example
    return [0, 0, 1, 1], [[1 - s, s] for s in scores]


def test_roc_curve_by_hand() -> None:
    y, p = two_class()
    m = roundtrip(wandb.plot.roc_curve(y, p, labels=["neg", "pos"]))
    assert m.payload["kind"] == "roc_curve" and m.payload["columns"] == ["class", "fpr", "tpr"]
    assert m.payload["fields"] == {"x": "fpr", "y": "tpr", "class": "class"}
    pos = [row[1:] for row in m.payload["data"] if row[0] == "pos"]
    assert pos == [[0.0, 0.0], [0.0, 0.5], [0.5, 0.5], [0.5, 1.0], [1.0, 1.0]]  # sklearn: fpr/tpr of the example
    assert {row[0] for row in m.payload["data"]} == {"neg", "pos"}
    only = wandb.plot.roc_curve(y, p, classes_to_plot=[1])
    assert {row[0] for row in only.payload["data"]} == {1}


def test_pr_curve_by_hand() -> None:
    y, p = two_class()
    m = roundtrip(wandb.plot.pr_curve(y, p, labels=["neg", "pos"], interp_size=5))
    assert m.payload["columns"] == ["class", "precision", "recall"]
    assert m.payload["fields"] == {"x": "recall", "y": "precision", "class": "class"}
    pos = [row[1:] for row in m.payload["data"] if row[0] == "pos"]
    # sklearn: precision [0.5, 0.667, 0.5, 1, 1] at recall [1, 1, 0.5, 0.5, 0]; W&B's _step makes it the running max
    # in that order ([0.5, 0.667, 0.667, 1, 1]) and reads it at recall 1, 0.75, 0.5, 0.25, 0 (searchsorted, left)
    assert pos == [[0.667, 1.0], [0.667, 0.75], [1.0, 0.5], [1.0, 0.25], [1.0, 0.0]]
    assert [r[2] for r in m.payload["data"] if r[0] == "neg"] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_curves_take_tensors() -> None:
    torch = pytest.importorskip("torch")
    y, p = two_class()
    assert (
        wandb.plot.roc_curve(torch.tensor(y), torch.tensor(p, requires_grad=True)).payload
        == wandb.plot.roc_curve(y, p).payload
    )
    with pytest.raises(SchemaError, match="N labels"):
        wandb.plot.pr_curve([0, 1], [0.5, 0.5])
