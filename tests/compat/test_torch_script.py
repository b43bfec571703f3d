"""A PyTorch training script written for W&B, with only the import changed (issue #20 item 6).

A tiny MLP on random data, on the CPU, using every W&B call of a typical script: ``init`` with a config,
``wandb.config`` attribute reads, ``watch(log="all")``, ``log`` with the 0-d loss tensor that requires grad and
other tensors, images from CHW tensors (one per key and a list under one key), a table, the ``wandb.plot``
charts, a summary update with a tensor, ``finish``. It runs against a real Redis and a worker; the history,
summary, config and media are then read back through ``ingest.Api`` and compared with what the script computed.
"""

from __future__ import annotations

import importlib
import io
import os
from typing import Any

import numpy as np
import pytest
from support.compat_stack import Stack

import ingest as wandb
from schemas import Media
from schemas.store import blob_path

if os.environ.get("CI") == "true":
    import torch
else:
    torch = pytest.importorskip("torch")

pytestmark = pytest.mark.integration

EPOCHS, BATCHES, LOG_FREQ = 3, 4, 5
CLASSES = ["a", "b", "c"]


def script(project: str) -> dict[str, Any]:
    """The training script (``wandb`` is ``ingest``); returns what it computed, for the checks."""
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    seen: dict[str, Any] = {"loss": [], "acc": [], "val_loss": []}
    run = wandb.init(project=project, config={"lr": 0.1, "epochs": EPOCHS, "hidden": 16, "arch": "mlp"})
    model = nn.Sequential(nn.Linear(8, wandb.config.hidden), nn.ReLU(), nn.Linear(wandb.config.hidden, 3))
    wandb.watch(model, log="all", log_freq=LOG_FREQ)
    opt = torch.optim.SGD(model.parameters(), lr=wandb.config.lr)
    x, y = torch.randn(BATCHES * 16, 8), torch.randint(0, 3, (BATCHES * 16,))
    xv, yv = torch.randn(32, 8), torch.randint(0, 3, (32,))
    best = torch.tensor(float("inf"))
    for epoch in range(wandb.config.epochs):
        model.train()
        for b in range(BATCHES):
            xb, yb = x[b * 16 : (b + 1) * 16], y[b * 16 : (b + 1) * 16]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            acc = (out.argmax(1) == yb).float().mean()
            wandb.log({"train/loss": loss, "train/acc": acc})  # 0-d tensors; loss requires grad
            seen["loss"].append(loss.item())
            seen["acc"].append(acc.item())
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            val_loss = F.cross_entropy(logits, yv)
        best = torch.minimum(best, val_loss)
        samples = torch.rand(3, 3, 8, 8)  # CHW float images in [0, 1], as torchvision gives
        wandb.log(
            {
                "val/loss": val_loss,
                "epoch": epoch,
                "val/logits": logits,  # 96 values: a histogram (W&B's rule past 32)
                "val/sample": wandb.Image(samples[0], caption=f"epoch {epoch}"),
                "val/examples": [wandb.Image(s, caption=f"ex{i}") for i, s in enumerate(samples)],
            }
        )
        seen["val_loss"].append(val_loss.item())
        seen.setdefault("samples", []).append(samples)
    probs = torch.softmax(logits, 1)
    table = wandb.Table(columns=["id", "pred", "truth", "p_max"])
    for i in range(4):
        table.add_data(i, probs[i].argmax(), yv[i], probs[i].max())
    wandb.log(
        {
            "predictions": table,
            "charts/conf_mat": wandb.plot.confusion_matrix(probs=probs, y_true=yv, class_names=CLASSES),
            "charts/pr": wandb.plot.pr_curve(yv, probs, labels=CLASSES),
            "charts/roc": wandb.plot.roc_curve(yv, probs, labels=CLASSES),
            "charts/loss": wandb.plot.line(
                wandb.Table(columns=["step", "loss"], data=list(enumerate(seen["loss"]))), "step", "loss", title="loss"
            ),
        }
    )
    wandb.summary["best_val_loss"] = best
    wandb.summary.update({"final_weights_norm": sum(p.norm() ** 2 for p in model.parameters()) ** 0.5})
    res = wandb.finish()
    seen.update(
        run=run,
        model=model,
        probs=probs,
        table_rows=[[i, int(probs[i].argmax()), int(yv[i]), float(probs[i].max())] for i in range(4)],
        best=best.item(),
        result=res,
    )
    return seen


def wandb_tensor_pixels(chw: Any) -> np.ndarray[Any, Any]:
    """W&B's (<= 0.19) pixels of a float CHW tensor: ``make_grid(t, normalize=True)`` stretches it by its own min and
    max (``max(hi - lo, 1e-5)``), then ``.mul(255).clamp(0, 255).byte()``; as HWC."""
    t = chw.detach().clone()
    lo, hi = float(t.min()), float(t.max())
    t = t.clamp(lo, hi).sub(lo).div(max(hi - lo, 1e-5))
    out: np.ndarray[Any, Any] = t.mul(255).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return out


def png_pixels(stack: Stack, media: Media) -> np.ndarray[Any, Any]:
    from PIL import Image as PILImage

    data = (stack.data_dir / blob_path(media.payload["sha256"])).read_bytes()
    return np.asarray(PILImage.open(io.BytesIO(data)))


def test_a_pytorch_script_for_wandb_runs_unchanged(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # As in W&B, the first model watched in a process has no key prefix and later ones "graph_<n>"; the script is
    # that of a fresh process, whatever other tests of this process watched before.
    monkeypatch.setattr(importlib.import_module("ingest.torch_watch"), "_global_watch_idx", 0)
    seen = script("torch-compat")
    assert seen["result"].ok
    run = seen["run"]
    view = stack.finished(f"torch-compat/{run.id}")
    assert view.state == "finished" and view.exit_code == 0 and not view.rejected and not view.warnings
    assert view.config == {"lr": 0.1, "epochs": EPOCHS, "hidden": 16, "arch": "mlp"}
    rows = list(view.scan_history())
    steps = EPOCHS * (BATCHES + 1) + 1
    assert [r["_step"] for r in rows] == list(range(steps))

    # Scalars: the 0-d tensors' values, at W&B's steps (one row per log call).
    train = [r for r in rows if "train/loss" in r]
    assert [r["train/loss"] for r in train] == seen["loss"]
    assert [r["train/acc"] for r in train] == seen["acc"]
    val = [r for r in rows if "val/loss" in r]
    assert [r["val/loss"] for r in val] == seen["val_loss"] and [r["epoch"] for r in val] == list(range(EPOCHS))
    assert all(isinstance(r["val/logits"], Media) and r["val/logits"].kind == "histogram" for r in val)
    assert sum(val[0]["val/logits"].payload["values"]) == 96

    # watch(log="all", log_freq=5): every 5th forward (parameters) and backward (gradients), joined to the row of
    # that step. Forwards: 4 training + 1 eval per epoch; backwards: 4 per epoch.
    names = [n for n, _ in seen["model"].named_parameters()]
    grad_steps = [r["_step"] for r in rows if "gradients/0.weight" in r]
    param_steps = [r["_step"] for r in rows if "parameters/0.weight" in r]
    backward_rows = [r["_step"] for r in train]  # the row each backward joined
    assert grad_steps == [backward_rows[i] for i in range(LOG_FREQ - 1, len(backward_rows), LOG_FREQ)]
    forward_rows = []  # 4 training forwards then the eval forward (which joins the val row of that epoch)
    for e in range(EPOCHS):
        forward_rows += [*backward_rows[e * BATCHES : (e + 1) * BATCHES], val[e]["_step"]]
    assert param_steps == [forward_rows[i] for i in range(LOG_FREQ - 1, len(forward_rows), LOG_FREQ)]
    for r in rows:
        if r["_step"] in grad_steps:
            assert {f"gradients/{n}" for n in names} <= set(r)
            h = r["gradients/0.weight"]
            assert h.kind == "histogram" and len(h.payload["values"]) == 64
        if r["_step"] in param_steps:
            assert {f"parameters/{n}" for n in names} <= set(r)

    # Images from CHW tensors: one per key, and a list of three under one key, pixels as W&B's make_grid makes them.
    for e, r in enumerate(val):
        img = r["val/sample"]
        assert img.kind == "image" and img.payload["caption"] == f"epoch {e}"
        assert (img.payload["width"], img.payload["height"]) == (8, 8)
        assert np.array_equal(png_pixels(stack, img), wandb_tensor_pixels(seen["samples"][e][0]))
        examples = r["val/examples"]
        assert [m.payload["caption"] for m in examples] == ["ex0", "ex1", "ex2"]
        assert examples[0].payload["sha256"] == img.payload["sha256"]
        for m, chw in zip(examples, seen["samples"][e], strict=True):  # each one's blob stored, pixels as logged
            assert view.references_blob(m.payload["sha256"])
            assert np.array_equal(png_pixels(stack, m), wandb_tensor_pixels(chw))

    # The table (tensor cells stored as their scalars) and the charts.
    last = rows[-1]
    table = last["predictions"]
    assert table.kind == "table" and table.payload["columns"] == ["id", "pred", "truth", "p_max"]
    assert table.payload["data"] == seen["table_rows"]
    cm = last["charts/conf_mat"]
    assert cm.kind == "plot" and cm.payload["kind"] == "confusion_matrix"
    assert sum(row[2] for row in cm.payload["data"]) == 32
    assert last["charts/pr"].payload["kind"] == "pr_curve"
    assert {row[0] for row in last["charts/roc"].payload["data"]} <= set(CLASSES)
    assert last["charts/loss"].payload["fields"] == {"x": "step", "y": "loss"}

    # The summary: the tensors set explicitly, and the last value of every logged key.
    s = view.summary
    assert s["best_val_loss"] == seen["best"] == min(seen["val_loss"])
    assert isinstance(s["final_weights_norm"], float)
    assert s["train/loss"] == seen["loss"][-1] and s["epoch"] == EPOCHS - 1


def test_images_in_a_charts_table_are_stored_and_referenced(stack: Stack) -> None:
    """A chart over a table with an image column (W&B tables often hold images): the images' blobs are stored and
    the run references them, so the gateway serves them."""
    imgs = [wandb.Image(torch.rand(3, 4, 4)) for _ in range(2)]
    t = wandb.Table(columns=["step", "acc", "example"], data=[[0, 0.5, imgs[0]], [1, 0.7, imgs[1]]])
    run = wandb.init(project="torch-compat", id="chart-images")
    wandb.log({"acc_chart": wandb.plot.line(t, "step", "acc")})
    # a later value of the key without images: the summary no longer holds them, only the first row does
    wandb.log({"acc_chart": wandb.plot.line(wandb.Table(columns=["step", "acc"], data=[[0, 0.1]]), "step", "acc")})
    run.finish()
    view = stack.finished("torch-compat/chart-images")
    row, _ = view.scan_history()
    assert [c[2].payload["sha256"] for c in row["acc_chart"].payload["data"]] == [i.sha256 for i in imgs]
    for img in imgs:
        assert (stack.data_dir / blob_path(img.sha256)).is_file()
        assert view.references_blob(img.sha256)
