"""PyTorch Lightning with :class:`ingest.integrations.lightning.SteplineLogger`: a tiny model trained on the CPU by
the real ``Trainer`` against a real Redis and worker, its history read back through the API.

A second logger beside ours records every ``log_metrics`` call the Trainer makes, so the history is checked
against what Lightning itself reported (keys, values, ``trainer/global_step``, one row per call as W&B writes).
"""

from __future__ import annotations

import math
from argparse import Namespace
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger
from support.compat_stack import Stack

import ingest
from ingest.integrations.lightning import SteplineLogger

pytestmark = [
    pytest.mark.integration,
    # Lightning's advice for real jobs (worker processes for a 32-sample loader, the 'tip' about its own logger).
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*The number of training batches.*"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    # Lightning 2.6's own use of torch's pytree under torch 2.13 (nothing of ours).
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]


class Recorder(Logger):  # type: ignore[misc]
    """What the Trainer reported: every log_metrics call, values as Python numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self.hparams: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hparams.update(vars(params) if isinstance(params, Namespace) else dict(params))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        self.calls.append({**row, "trainer/global_step": step})


class Tiny(L.LightningModule):  # type: ignore[misc, name-defined]
    def __init__(self, lr: float = 0.1, hidden: int = 4, fail_at: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def forward(self, x: Any) -> Any:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.hparams.fail_at is not None and self.global_step == self.hparams.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss)  # a tensor with grad: the logger must store its number
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader() -> Any:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def trainer(tmp_path: Path, *loggers: Logger, epochs: int = 2) -> Any:
    return L.Trainer(
        max_epochs=epochs,
        logger=list(loggers),
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def user_rows(view: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_") and v is not None} for r in view.scan_history()]


def test_fit_then_test_writes_what_lightning_reported(stack: Stack, tmp_path: Path) -> None:
    ours = SteplineLogger(project="pl", name="tiny", version="fit1", config={"data": {"n": 32, "batch": 8}})
    rec = Recorder()
    model = Tiny(lr=0.05, hidden=5)
    trainer(tmp_path, ours, rec).fit(model, loader(), loader())
    fit_calls = len(rec.calls)
    assert ours.experiment is not None  # the logger reopens its run for the next stage
    trainer(tmp_path, ours, rec).test(model, loader())

    view = stack.finished("pl/fit1")
    assert view.state == "finished"
    assert view.exit_code == 0
    assert view.name == "tiny"
    # Lightning reports 4 batches x 2 epochs of train/loss (plus its epoch), 2 validation epochs, then the test.
    steps = [c["trainer/global_step"] for c in rec.calls]
    assert len([c for c in rec.calls if "train/loss" in c]) == 8
    assert [s for c, s in zip(rec.calls, steps, strict=True) if "train/loss" in c] == list(range(8))
    assert len(rec.calls) == fit_calls + 1
    rows = user_rows(view)
    assert rows == rec.calls  # one row per call, same keys and values (float32 numbers, stored as float64)
    assert [r["_step"] for r in view.scan_history()] == list(range(len(rec.calls)))
    # W&B's axis: every key plotted against trainer/global_step.
    assert {m["name"]: m["step_metric"] for m in view.metrics} == {
        "trainer/global_step": None,
        "*": "trainer/global_step",
    }
    by_step = view.history(keys=["train/loss"], x_axis="trainer/global_step", samples=None, pandas=False)
    assert by_step["trainer/global_step"].tolist() == list(range(8))
    # Config: the constructor's and the module's hyperparameters.
    assert view.config == {"data": {"n": 32, "batch": 8}, "lr": 0.05, "hidden": 5, "fail_at": None}
    assert rec.hparams == {"lr": 0.05, "hidden": 5, "fail_at": None}
    # Summary: the last value of each key.
    last_train = [c for c in rec.calls if "train/loss" in c][-1]["train/loss"]
    assert view.summary["train/loss"] == last_train
    assert view.summary["test/loss"] == rec.calls[-1]["test/loss"]
    assert rec.calls[-1]["trainer/global_step"] == 0  # a new Trainer counts from 0 (W&B shows the same)
    assert view.summary["trainer/global_step"] == 0
    assert math.isfinite(view.summary["val/loss"])


def test_failed_fit_finishes_the_run_as_crashed(stack: Stack, tmp_path: Path) -> None:
    ours = SteplineLogger(project="pl", version="boom", prefix="p")
    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, ours, rec, epochs=1).fit(Tiny(fail_at=2), loader())
    view = stack.finished("pl/boom")
    assert view.state == "crashed"
    assert view.exit_code == 1
    rows = user_rows(view)
    assert [r["trainer/global_step"] for r in rows] == [0, 1]
    # Every key Lightning passes gets the prefix (its `epoch` too), as WandbLogger does; the step key does not.
    assert rows == [
        {"p-train/loss": c["train/loss"], "p-epoch": c["epoch"], "trainer/global_step": s}
        for c, s in zip(rec.calls, (0, 1), strict=True)
    ]


def test_a_run_started_by_the_script_is_used_and_left_open(stack: Stack, tmp_path: Path) -> None:
    run = ingest.init(project="pl", id="mine", config={"seed": 1})
    ours = SteplineLogger(project="ignored", config={"from_logger": True})
    trainer(tmp_path, ours, epochs=1).fit(Tiny(), loader())
    assert ours.experiment is run and not run.finished
    assert ours.version == "mine"
    run.log({"after": 1.0})
    run.finish()
    view = stack.finished("pl/mine")
    assert view.config == {"seed": 1, "from_logger": True, "lr": 0.1, "hidden": 4, "fail_at": None}
    assert [r["trainer/global_step"] for r in user_rows(view)[:-1]] == [0, 1, 2, 3]
    assert user_rows(view)[-1] == {"after": 1.0}


def test_the_older_pytorch_lightning_names_work_too(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``lightning`` hidden, the module builds the logger on ``pytorch_lightning``'s ``Logger``, and that
    distribution's Trainer runs it. (The module is loaded again under another name, with every ``lightning``
    module of this process masked for the time of the test.)"""
    import importlib.util
    import sys

    import pytorch_lightning as pl

    import ingest.integrations.lightning as ours

    for name in [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")]:
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("ingest.integrations.lightning_old_names", ours.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert issubclass(module.SteplineLogger, pl.loggers.Logger)
    assert not issubclass(module.SteplineLogger, Logger)

    class M(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(3, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    logger = module.SteplineLogger(project="pl", version="old")
    pl.Trainer(
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        limit_train_batches=2,
    ).fit(M(), loader())
    view = stack.finished("pl/old")
    assert view.state == "finished"
    rows = user_rows(view)
    assert [r["trainer/global_step"] for r in rows] == [0, 1]
    assert all(set(r) == {"loss", "epoch", "trainer/global_step"} for r in rows)


def test_tables_text_and_images_from_the_logger(stack: Stack) -> None:
    """``log_table`` / ``log_text`` / ``log_image`` as WandbLogger has them (what a callback calls on
    ``trainer.logger``): one row each at the given trainer step."""
    import numpy as np

    from schemas import Media

    ours = SteplineLogger(project="pl", version="media")
    ours.log_table("preds", columns=["x", "y"], data=[[1, 0.5], [2, 0.25]], step=3)
    ours.log_text("notes", columns=["text"], data=[["hello"]], step=4)
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    ours.log_image("samples", [pixels, pixels[::-1]], step=5, caption=["first", "second"])
    with pytest.raises(ValueError, match="expected 2 items but found 1 for caption"):
        ours.log_image("bad", [pixels, pixels], caption=["one"])
    ours.finalize("success")

    rows = list(stack.finished("pl/media").scan_history())
    assert [r["trainer/global_step"] for r in rows] == [3, 4, 5]
    table, text, images = rows[0]["preds"], rows[1]["notes"], rows[2]["samples"]
    assert isinstance(table, Media) and table.kind == "table"
    assert table.payload["columns"] == ["x", "y"] and table.payload["data"] == [[1, 0.5], [2, 0.25]]
    assert text.kind == "table" and text.payload["data"] == [["hello"]]
    assert [m.kind for m in images] == ["image", "image"]
    assert [m.payload.get("caption") for m in images] == ["first", "second"]


def test_watch_through_the_logger(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``logger.watch(model, log="all", log_freq=2)`` as with WandbLogger: gradient and parameter histograms on
    every second backward/forward, joining the metrics rows."""
    from ingest import torch_watch
    from schemas import Media

    # watch() counts watched models per process (W&B's key prefix graph_<n> for the second one on): put the count
    # back afterwards, so later tests see the process as this test found it.
    monkeypatch.setattr(torch_watch, "_global_watch_idx", torch_watch._global_watch_idx)

    ours = SteplineLogger(project="pl", version="watched")
    model = Tiny()
    ours.watch(model, log="all", log_freq=2, log_graph=False)
    trainer(tmp_path, ours, epochs=1).fit(model, loader())  # 4 batches
    rows = user_rows(stack.finished("pl/watched"))
    assert [r["trainer/global_step"] for r in rows] == [0, 1, 2, 3]
    names = {n for n, _ in model.named_parameters()}
    for kind in ("gradients", "parameters"):
        with_hist = [i for i, r in enumerate(rows) if any(k.startswith(f"{kind}/") for k in r)]
        assert len(with_hist) == 2, (kind, with_hist)
        keys = {k for r in rows for k in r if k.startswith(f"{kind}/")}
        # gradients/<name>, or gradients/graph_<n><name> when this process watched a model before (W&B's names)
        assert all(any(k.endswith(n) for n in names) for k in keys), keys
        assert len(keys) == len(names)
        assert all(
            isinstance(rows[i][k], Media) and rows[i][k].kind == "histogram"
            for i in with_hist
            for k in keys
            if k in rows[i]
        )
