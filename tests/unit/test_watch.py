"""``wandb.watch`` / ``wandb.unwatch`` (issue #20 item 3): W&B's hooks, key names, steps and histograms.

The first test is the issue's second failure: ``wandb.watch(model, log="all", log_freq=10)`` raised
``AttributeError: module 'ingest' has no attribute 'watch'``. Histograms are checked against W&B's own
``TorchHistory.log_tensor_stats`` (W&B's package is in the test extra).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.sdk_frames import events, log_calls

import ingest
from ingest.run import Run
from ingest.settings import ClientSettings
from ingest.torch_watch import NUM_BINS, histogram_of
from schemas import Media

if os.environ.get("CI") == "true":
    import torch
else:
    torch = pytest.importorskip("torch")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    r = Run(settings=ClientSettings(data_dir=tmp_path), project="proj", run_id="run1")
    # What init() does, without a sender (``ingest.run`` is the current run, so the module comes from importlib).
    monkeypatch.setattr(importlib.import_module("ingest.run"), "_current", r)
    return r


def mlp() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def train(model: Any, run: Run, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log({"loss": loss})


def rows(run: Run) -> dict[int, dict[str, Any]]:
    """The rows the worker would build: calls merged by step (commit=False joins the current step)."""
    out: dict[int, dict[str, Any]] = {}
    step = 0
    for c in log_calls(events(run)):
        out.setdefault(step, {}).update(c.data)
        if c.commit is not False:
            step += 1
    return out


PARAMS = ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_wandb_watch_exists_and_logs_all_at_wandbs_steps(run: Run) -> None:
    model = mlp()
    assert ingest.watch(model, log="all", log_freq=2, idx=0) == []
    train(model, run, 5)
    got = rows(run)
    assert sorted(got) == [0, 1, 2, 3, 4]
    keys = {f"gradients/{p}" for p in PARAMS} | {f"parameters/{p}" for p in PARAMS}
    for step in (1, 3):  # the 2nd and 4th forward/backward: every log_freq-th call, joined to that step's row
        assert set(got[step]) == keys | {"loss"}
        for k in keys:
            h = got[step][k]
            assert isinstance(h, Media) and h.kind == "histogram" and len(h.payload["values"]) == NUM_BINS
    for step in (0, 2, 4):
        assert set(got[step]) == {"loss"}
    assert sum(got[1]["parameters/0.weight"].payload["values"]) == 32


@pytest.mark.parametrize(
    ("log", "prefixes"), [("gradients", {"gradients"}), ("parameters", {"parameters"}), (None, set())]
)
def test_what_log_selects(run: Run, log: str | None, prefixes: set[str]) -> None:
    model = mlp()
    run.watch(model, log=log, log_freq=1, idx=0)
    train(model, run, 1)
    assert {k.split("/")[0] for k in rows(run)[0] if k != "loss"} == prefixes


def test_prefix_of_later_models_and_frozen_parameters(run: Run) -> None:
    a, b = mlp(), mlp()
    b[0].weight.requires_grad_(False)
    run.watch([a, b], log="gradients", log_freq=1, idx=0)
    x = torch.randn(2, 4)
    (a(x).sum() + b(x).sum()).backward()
    run.log({"done": 1})
    keys = set(rows(run)[0])
    assert {f"gradients/{p}" for p in PARAMS} <= keys
    assert {f"gradients/graph_1{p}" for p in PARAMS if p != "0.weight"} <= keys  # W&B's spelling
    assert "gradients/graph_10.weight" not in keys  # frozen: no hook


def test_histograms_are_wandbs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our histogram of a tensor equals the one W&B's ``TorchHistory.log_tensor_stats`` logs, bit for bit."""
    wandb = pytest.importorskip("wandb")
    from wandb.integration.torch.wandb_torch import TorchHistory

    logged: dict[str, Any] = {}

    class StubRun:
        def _log(self, d: dict[str, Any], commit: bool = False) -> None:
            logged.update(d)

    monkeypatch.setattr(wandb, "run", StubRun())
    th = TorchHistory()
    gen = torch.Generator().manual_seed(1)
    cases = {
        "normal": torch.randn(1000, generator=gen),
        "with_nonfinite": torch.tensor([1.0, float("nan"), float("inf"), -2.0, 0.5]),
        "constant": torch.full((7,), 3.25),
        "double": torch.randn(50, dtype=torch.float64, generator=gen),
        "half": torch.randn(50, generator=gen).half(),
        "ints": torch.arange(10),
        "sparse": torch.tensor([0.0, 0.0, 1.5, 0.0, -1.0, 0.0]).to_sparse(),
    }
    for name, t in cases.items():
        th.log_tensor_stats(t, name)
        ours = histogram_of(t)
        assert ours is not None
        assert ours.counts == [float(c) for c in logged[name].histogram], name
        assert ours.bins == [float(b) for b in logged[name].bins], name
    assert histogram_of(torch.tensor([float("nan")])) is None
    assert histogram_of(torch.tensor([])) is None


def test_unwatch_and_finish_remove_every_hook(run: Run) -> None:
    a, b = mlp(), mlp()
    run.watch(a, log="all", log_freq=1, idx=0)
    run.watch(b, log="all", log_freq=1, idx=1)
    hooked = lambda m: bool(m._forward_hooks) or any(p._backward_hooks for p in m.parameters())  # noqa: E731
    assert hooked(a) and hooked(b)
    ingest.unwatch(a)
    assert not hooked(a) and hooked(b)
    run.watch(a, log="gradients", log_freq=1, idx=0)  # watched again after unwatch: allowed
    with pytest.raises(ValueError, match="already"):
        run.watch(a, log="gradients", log_freq=1, idx=0)
    run.finish(timeout=0.1)
    assert not hooked(a) and not hooked(b)
    train(a, Run(settings=run.settings, project="proj", run_id="other"), 1)  # no hook left to fire


def test_bad_arguments() -> None:
    r = Run(settings=ClientSettings(data_dir=Path("/nonexistent")), project="p", run_id="r")
    with pytest.raises(ValueError, match="log must be"):
        r.watch(mlp(), log="weights")
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        r.watch(np.zeros(3))
    with pytest.raises(ValueError, match="log_freq"):
        r.watch(mlp(), log_freq=0)
