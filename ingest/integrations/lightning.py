"""PyTorch Lightning: :class:`SteplineLogger`, a ``Logger`` that writes what W&B's ``WandbLogger`` writes.

::

    from lightning.pytorch import Trainer
    from ingest.integrations.lightning import SteplineLogger

    trainer = Trainer(logger=SteplineLogger(project="mnist", name="baseline", config={"batch_size": 64}))
    trainer.fit(model, train_loader, val_loader)

Built on ``lightning.pytorch`` when it is installed, else on ``pytorch_lightning`` (both Trainers take either).
What it writes, as ``WandbLogger`` does:

- The run starts on the first use of :attr:`SteplineLogger.experiment` (the Trainer touches it in its setup) with
  ``resume="allow"`` and two metric definitions: ``trainer/global_step`` and ``*`` plotted against it
  (``step_sync``). A run already started with ``ingest.init()`` is used (and left open), as W&B reuses
  ``wandb.run``; the logger's ``config`` is added to it (W&B drops it).
- ``log_metrics(metrics, step)`` is one ``log()`` call: the metrics (tensors as their numbers; ``prefix`` and ``-``
  before each key when a prefix is set) and ``trainer/global_step`` = the trainer's ``step``. ``_step`` is the
  run's own counter, as in W&B: training and validation metrics logged at one trainer step are two rows, and
  both carry that ``trainer/global_step`` (read them with ``history(x_axis="trainer/global_step")``).
- ``log_hyperparams(params)`` updates the config: a ``Namespace`` becomes a dict, nested dicts stay nested,
  callables become their names and values without a stored form their ``str()``.
- ``watch(model, log="gradients", log_freq=100)`` as in ``WandbLogger`` (:meth:`ingest.Run.watch`; the
  histograms join the next metrics row).
- ``log_table``, ``log_text`` and ``log_image`` as in ``WandbLogger``: one row holding a
  :class:`~schemas.Table` or a list of :class:`~schemas.Image` (with per-image keywords such as ``caption``), at
  the trainer's step.
- Checkpoint-free: no checkpoint or artifact is uploaded (``after_save_checkpoint`` does nothing).
- ``finalize(status)`` finishes the run this logger started: exit code 0 for ``"success"`` (and ``"finished"``,
  what Lightning says when a job is stopped to be requeued), 1 for ``"failed"`` (the run is then ``crashed``).
  W&B leaves its run open until the process exits; stepline finishes it so the state and summaries are final
  when ``fit()`` returns. A later ``fit``/``validate``/``test`` with the same logger resumes the same run id, and
  the workers continue its step cursor.
- Only rank zero logs (Lightning's ``rank_zero_only``); on other ranks ``experiment`` is Lightning's dummy.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_only  # the one both distributions set the rank on

from schemas import Image, Table

from ..run import Run, current_run, init
from ._values import config_tree, params_dict, plain

try:
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import Logger
except ImportError:  # the older distribution names; their Trainer is the same code
    from lightning_fabric.loggers.logger import rank_zero_experiment  # type: ignore[no-redef, unused-ignore]
    from pytorch_lightning.loggers import Logger  # type: ignore[assignment, unused-ignore]

__all__ = ["SteplineLogger"]

logger = logging.getLogger(__name__)

#: The x-axis every metric is plotted against (W&B's name).
STEP_KEY = "trainer/global_step"


class SteplineLogger(Logger):
    """Lightning logger: ``Trainer(logger=SteplineLogger(project=..., name=..., config=...))``.

    ``name`` is the run's display name, ``version`` (or ``id``) its id (random when not given); other keyword
    arguments go to :func:`ingest.init` (``redis_url``, ``url``, ``api_key``, ``namespace``, ``data_dir``, ...).
    ``experiment`` passes a run started elsewhere.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        version: str | None = None,
        id: str | None = None,
        config: Mapping[str, Any] | Namespace | None = None,
        prefix: str = "",
        experiment: Run | None = None,
        **init_kwargs: Any,
    ) -> None:
        super().__init__()
        self._project = project or "lightning_logs"
        self._name = name
        self._id = version or id
        self._config = config_tree(params_dict(config))
        self._prefix = prefix
        self._init_kwargs = init_kwargs
        self._run: Run | None = experiment
        self._owned = False  # finalize() finishes only a run this logger started

    def __getstate__(self) -> dict[str, Any]:
        # A spawned process gets the logger pickled; a run (threads, sockets) does not travel, only its id does.
        state = self.__dict__.copy()
        if self._run is not None:
            state["_id"] = self._run.id
        state["_run"] = None
        state["_owned"] = False
        return state

    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The run (started on first use); ``self.logger.experiment.log(...)`` in a module logs to it directly."""
        if self._run is None or self._run.finished:
            self._run = self._start()
        return self._run

    def _start(self) -> Run:
        current = current_run()
        if self._id is None and current is not None and not current.finished:
            logger.warning(
                "stepline: a run is already in progress (%s/%s); SteplineLogger logs to it",
                current.project,
                current.id,
            )
            if self._config:  # W&B drops the logger's config here; stepline keeps it
                current.config.update(self._config)
                self._config = {}
            self._owned = False
            return current
        run = init(
            project=self._project,
            name=self._name,
            id=self._id,
            config=self._config,
            resume="allow",
            **self._init_kwargs,
        )
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        self._id = run.id
        self._config = {}  # stored with the first start; a resumed start adds nothing to it
        self._owned = True
        return run

    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True) -> None:
        """Gradient/parameter histograms of ``model`` (``WandbLogger.watch``; :meth:`ingest.Run.watch`)."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self.experiment.config.update(config_tree(params_dict(params)))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        sep = self.LOGGER_JOIN_CHAR
        data = {(f"{self._prefix}{sep}{k}" if self._prefix else k): plain(v) for k, v in metrics.items()}
        if step is not None:
            data[STEP_KEY] = int(step)
        self.experiment.log(data)

    @rank_zero_only
    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """A table under ``key`` (W&B's ``log_table``: ``columns`` and ``data``, or a pandas ``dataframe``)."""
        self.log_metrics({key: Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Text as a table, as W&B's ``log_text`` does."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: list[Any]) -> None:
        """A list of images under ``key``; each keyword (``caption=[...]``) gives one value per image."""
        if not isinstance(images, list):
            raise TypeError(f'expected a list as "images", found {type(images).__name__}')
        n = len(images)
        for k, v in kwargs.items():
            if len(v) != n:
                raise ValueError(f"expected {n} items but found {len(v)} for {k}")
        per_image = [{k: kwargs[k][i] for k in kwargs} for i in range(n)]
        self.log_metrics({key: [Image(img, **kw) for img, kw in zip(images, per_image, strict=True)]}, step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        run = self._run
        if run is None or not self._owned or run.finished:
            return
        self._run = None
        run.finish(exit_code=1 if status == "failed" else 0)

    @property
    def name(self) -> str:
        """The project, as ``WandbLogger.name`` is (Lightning uses it in paths); the run's name is
        ``experiment.name``."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run id (``None`` until the run starts when none was given)."""
        return self._run.id if self._run is not None else self._id

    @property
    def save_dir(self) -> str | None:
        return None
