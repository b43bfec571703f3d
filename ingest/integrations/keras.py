"""Keras 3: :class:`SteplineMetricsLogger`, a callback that writes what W&B's ``WandbMetricsLogger`` writes.

::

    import ingest
    from ingest.integrations.keras import SteplineMetricsLogger

    run = ingest.init(project="mnist", config={"batch_size": 32})
    model.fit(x, y, epochs=5, validation_data=(xv, yv), callbacks=[SteplineMetricsLogger(log_freq="epoch")])
    run.finish()

Any Keras 3 backend (torch, JAX, TensorFlow): the values Keras hands to callbacks (tensors of the backend) are
stored as their numbers. What it writes, as ``WandbMetricsLogger`` does:

- Needs a run: ``ingest.init()`` first (or ``run=``); the callback neither starts nor finishes it.
- At the end of every epoch, one ``log()`` call: ``epoch/<name>`` for each of Keras' logs (``loss``, compiled
  metrics, ``val_*``), ``epoch/epoch`` (0-based) and ``epoch/learning_rate`` when the optimizer has one.
- ``log_freq="batch"`` (every batch) or an int ``n`` (every batch whose index in its epoch is a multiple of
  ``n``): one ``log()`` call per such training batch with ``batch/<name>``, ``batch/batch_step`` (0, n, 2n, ...
  across epochs) and ``batch/learning_rate``; the epoch calls are written too.
- Metric definitions: ``epoch/*`` plotted against ``epoch/epoch`` (``log_freq="epoch"``), or ``batch/*``
  against ``batch/batch_step`` (batch-wise), made when the callback is created.
- The learning rate is the optimizer's current one (a schedule evaluated at the optimizer's iteration count, as
  Keras 3 reports it); ``initial_global_step`` is accepted for W&B's signature and counts from there.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import keras

from schemas import SteplineError

from ..run import Run, current_run
from ._values import plain, plain_dict

__all__ = ["SteplineMetricsLogger"]

logger = logging.getLogger(__name__)


class SteplineMetricsLogger(keras.callbacks.Callback):  # type: ignore[misc]
    """``model.fit(..., callbacks=[SteplineMetricsLogger(log_freq="epoch" | "batch" | n)])``."""

    def __init__(
        self,
        log_freq: Literal["epoch", "batch"] | int = "epoch",
        initial_global_step: int = 0,
        run: Run | None = None,
    ) -> None:
        super().__init__()
        run = run if run is not None else current_run()
        if run is None or run.finished:
            raise SteplineError("call ingest.init() before SteplineMetricsLogger()")
        if log_freq == "batch":
            log_freq = 1
        if not (log_freq == "epoch" or (type(log_freq) is int and log_freq > 0)):
            raise ValueError(f"log_freq must be 'epoch', 'batch' or a positive int, got {log_freq!r}")
        self.run = run
        self.logging_batch_wise = isinstance(log_freq, int)
        self.log_freq: int | None = log_freq if isinstance(log_freq, int) else None
        self.global_batch = 0
        self.global_step = initial_global_step
        self._lr_failed = False
        if self.logging_batch_wise:
            run.define_metric("batch/batch_step")
            run.define_metric("batch/*", step_metric="batch/batch_step")
        else:
            run.define_metric("epoch/epoch")
            run.define_metric("epoch/*", step_metric="epoch/epoch")

    def _get_lr(self) -> float | None:
        try:
            lr = self.model.optimizer.learning_rate
            if isinstance(lr, keras.Variable):  # a fixed rate: its backend tensor (numpy() warns on numpy 2)
                lr = lr.value
            elif callable(lr):  # a schedule the optimizer did not evaluate itself
                lr = lr(self.global_step)
            value = plain(lr)
            return float(value)
        except Exception as e:  # no optimizer yet, or a rate with no number: log the rest (W&B does the same)
            if not self._lr_failed:
                logger.warning("stepline: unable to log the learning rate: %s", e)
                self._lr_failed = True
            return None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        data = {f"epoch/{k}": v for k, v in plain_dict(logs or {}).items()}
        data["epoch/epoch"] = epoch
        lr = self._get_lr()
        if lr is not None:
            data["epoch/learning_rate"] = lr
        self.run.log(data)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.global_step += 1
        if self.log_freq is not None and batch % self.log_freq == 0:
            data = {f"batch/{k}": v for k, v in plain_dict(logs or {}).items()}
            data["batch/batch_step"] = self.global_batch
            lr = self._get_lr()
            if lr is not None:
                data["batch/learning_rate"] = lr
            self.run.log(data)
            self.global_batch += self.log_freq
