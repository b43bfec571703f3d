"""Keras 3 (torch backend) with :class:`ingest.integrations.keras.SteplineMetricsLogger`: a tiny model trained on
the CPU by the real ``model.fit`` against a real Redis and worker, with ``log_freq`` "epoch", "batch" and 2.

Keras picks its backend once per process, when it is first imported, so the training runs in a child process with
``KERAS_BACKEND=torch`` (this pytest process may have imported keras already, or never should). A second callback
in the child records what Keras reported (its logs as numbers, the optimizer's learning rate), and the history
is checked against W&B's rules applied to that record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support.compat_stack import Stack

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import ingest
    from ingest.integrations.keras import SteplineMetricsLogger

    assert keras.backend.backend() == "torch", keras.backend.backend()

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches, self.epochs = [], []

        def _lr(self):
            lr = self.model.optimizer.learning_rate
            return float(lr.value if isinstance(lr, keras.Variable) else lr)

        def on_train_batch_end(self, batch, logs=None):
            self.batches.append([batch, {k: float(v) for k, v in logs.items()}, self._lr()])

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append([epoch, {k: float(v) for k, v in logs.items()}, self._lr()])

    rng = np.random.default_rng(0)
    x = rng.random((24, 3), dtype=np.float32)
    y = x.sum(axis=1, keepdims=True)
    out = {}
    for mode in ("epoch", "batch", 2):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
        # A decaying schedule, and a fixed rate (a keras.Variable) for "batch".
        lr = 0.05 if mode == "batch" else keras.optimizers.schedules.ExponentialDecay(0.1, 1, decay_rate=0.9)
        model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse", metrics=["mae"])
        run = ingest.init(project="keras", id=f"k-{mode}", config={"mode": str(mode)})
        rec = Recorder()
        model.fit(x, y, batch_size=8, epochs=2, validation_data=(x[:8], y[:8]), verbose=0,
                  callbacks=[SteplineMetricsLogger(log_freq=mode), rec])
        run.finish()
        out[str(mode)] = {"batches": rec.batches, "epochs": rec.epochs}
    try:
        SteplineMetricsLogger()
    except ingest.SteplineError as e:
        out["no_run"] = str(e)
    json.dump(out, open(sys.argv[1], "w"))
    """
)


def expected_rows(record: dict[str, Any], freq: int | None) -> list[dict[str, Any]]:
    """W&B's WandbMetricsLogger applied to what Keras reported: batch rows (batch-wise only) then the epoch row."""
    rows: list[dict[str, Any]] = []
    batch_step = 0
    for epoch, logs, lr in record["epochs"]:
        for batch, blogs, blr in record["batches"][3 * epoch : 3 * epoch + 3]:  # 24 samples in batches of 8
            if freq is not None and batch % freq == 0:
                batch_row = {f"batch/{k}": v for k, v in blogs.items()}
                rows.append({**batch_row, "batch/batch_step": batch_step, "batch/learning_rate": blr})
                batch_step += freq
        rows.append({**{f"epoch/{k}": v for k, v in logs.items()}, "epoch/epoch": epoch, "epoch/learning_rate": lr})
    return rows


def test_fit_writes_epoch_and_batch_metrics(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": "torch"}  # plus the STEPLINE_* variables the stack fixture set
    proc = subprocess.run(
        # Warnings are errors in the child too (as in this test session): the callback must not trip any.
        [sys.executable, "-W", "error", str(script), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["no_run"] == "call ingest.init() before SteplineMetricsLogger()"

    for mode, freq in (("epoch", None), ("batch", 1), ("2", 2)):
        view = stack.finished(f"keras/k-{mode}")
        assert view.state == "finished"
        assert view.config == {"mode": mode}
        rec = record[mode]
        assert [b[0] for b in rec["batches"]] == [0, 1, 2, 0, 1, 2]
        assert set(rec["epochs"][0][1]) == {"loss", "mae", "val_loss", "val_mae"}
        rows = [{k: v for k, v in r.items() if not k.startswith("_") and v is not None} for r in view.scan_history()]
        assert rows == expected_rows(rec, freq), mode
        # The rate is the optimizer's current one: fixed, or 0.1 * 0.9 ** iterations after the batch.
        final_lr = 0.05 if mode == "batch" else 0.1 * 0.9**6
        assert rows[-1]["epoch/learning_rate"] == pytest.approx(final_lr, rel=1e-6)
        metrics = {m["name"]: m["step_metric"] for m in view.metrics}
        if freq is None:
            assert metrics == {"epoch/epoch": None, "epoch/*": "epoch/epoch"}
            assert len(rows) == 2
        else:
            assert metrics == {"batch/batch_step": None, "batch/*": "batch/batch_step"}
            assert [r["batch/batch_step"] for r in rows if "batch/batch_step" in r] == [
                freq * i
                for i in range(6 // freq if freq == 1 else 4)  # batches 0 and 2 of each epoch for n=2
            ]
        assert view.summary["epoch/val_loss"] == rec["epochs"][-1][1]["val_loss"]
