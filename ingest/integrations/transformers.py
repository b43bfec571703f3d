"""Hugging Face Transformers: :class:`SteplineCallback`, a ``TrainerCallback`` that writes what W&B's
``WandbCallback`` (``report_to="wandb"``) writes.

::

    from transformers import Trainer, TrainingArguments
    from ingest.integrations.transformers import SteplineCallback

    args = TrainingArguments(output_dir="out", report_to="none", logging_steps=10, run_name="baseline")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[SteplineCallback(project="glue")])
    trainer.train()

``report_to="none"`` keeps the Trainer from adding the integrations it finds installed (W&B's among them) beside
this one. What it writes, as ``WandbCallback`` does:

- At ``on_train_begin`` (or the first log): the run (``project``, default ``"huggingface"``; name
  ``args.run_name``, or the trial's name in a hyperparameter search) and its config: the model's config
  (``model.config.to_dict()``) updated with ``args.to_dict()``, ``model/num_parameters``, and ``peft_config`` when
  the model has one; two metric definitions, ``train/global_step`` and ``*`` plotted against it (``step_sync``).
  A run already started with ``ingest.init()`` is used as it is (and left open).
- ``on_log``: the Trainer's logs renamed by W&B's rule (``eval_x`` → ``eval/x``, ``test_x`` → ``test/x``, any
  other ``x`` → ``train/x``) plus ``train/global_step`` = ``state.global_step``, one ``log()`` call each
  (``_step`` is the run's own counter, as in W&B). The end-of-training numbers ``train_runtime``,
  ``train_samples_per_second``, ``train_steps_per_second``, ``train_loss`` and ``total_flos`` go to the summary
  under their own names instead; every other summary entry is the last logged value of its key.
- ``on_predict``: the prediction metrics, renamed the same way.
- ``SteplineCallback(watch="gradients")``: W&B's ``WANDB_WATCH``, histograms through :meth:`ingest.Run.watch`.
- ``on_train_end`` finishes the run this callback started (exit code 0), as MLflow's callback does (W&B leaves
  it open until the process exits); a later ``trainer.evaluate()`` resumes the same run id. Checkpoints and
  models are not uploaded.
- Only the world's process zero logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..run import Run, current_run, init
from ._values import config_tree, plain

__all__ = ["SteplineCallback", "rewrite_logs"]

#: The x-axis every metric is plotted against (W&B's name).
STEP_KEY = "train/global_step"
#: The numbers the Trainer logs once, at the end of training: summary entries, not history (W&B's list).
SINGLE_VALUE_SCALARS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}
)


def rewrite_logs(logs: Mapping[str, Any]) -> dict[str, Any]:
    """W&B's key names for the Trainer's logs: ``eval_x`` → ``eval/x``, ``test_x`` → ``test/x``, else ``train/x``."""
    out: dict[str, Any] = {}
    for k, v in logs.items():
        if k.startswith("eval_"):
            out["eval/" + k[5:]] = plain(v)
        elif k.startswith("test_"):
            out["test/" + k[5:]] = plain(v)
        else:
            out["train/" + k] = plain(v)
    return out


class SteplineCallback(TrainerCallback):
    """``Trainer(..., callbacks=[SteplineCallback(project=...)], report_to="none")``.

    ``name`` overrides ``args.run_name``; ``id`` fixes the run id; other keyword arguments go to
    :func:`ingest.init`. ``run`` passes a run started elsewhere. ``watch`` ("gradients", "parameters" or "all")
    does what ``WANDB_WATCH`` does for W&B: :meth:`ingest.Run.watch` on the model, every
    ``max(100, args.logging_steps)`` steps unless ``watch_log_freq`` says otherwise.
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        id: str | None = None,
        run: Run | None = None,
        watch: str | None = None,
        watch_log_freq: int | None = None,
        **init_kwargs: Any,
    ) -> None:
        if watch not in (None, "gradients", "parameters", "all"):
            raise ValueError(f"watch must be None, 'gradients', 'parameters' or 'all', got {watch!r}")
        self._watch = watch
        self._watch_log_freq = watch_log_freq
        self._project = project or "huggingface"
        self._name = name
        self._id = id
        self._init_kwargs = init_kwargs
        self._run: Run | None = run
        self._owned = False
        self._initialized = False

    @property
    def run(self) -> Run | None:
        """The run being written (``None`` before the Trainer starts; after training, the finished run)."""
        return self._run

    def setup(self, args: TrainingArguments, state: TrainerState, model: Any, **kwargs: Any) -> None:
        """Start the run and write its config (W&B's ``WandbCallback.setup``)."""
        self._initialized = True
        if not state.is_world_process_zero:
            return
        combined: dict[str, Any] = dict(args.to_dict())  # type: ignore[no-untyped-call, unused-ignore]
        model_config = getattr(model, "config", None)
        if model_config is not None:
            model_config = model_config if isinstance(model_config, dict) else model_config.to_dict()
            combined = {**model_config, **combined}
        peft_config = getattr(model, "peft_config", None)
        if peft_config is not None:
            combined = {"peft_config": peft_config, **combined}
        name = self._name
        if state.trial_name is not None:
            name = state.trial_name
        elif name is None:
            name = args.run_name
        run = self._open(name)
        run.config.update(config_tree(combined))
        if self._watch is not None and model is not None:  # WANDB_WATCH's job in W&B, and its log_freq
            run.watch(model, log=self._watch, log_freq=self._watch_log_freq or max(100, int(args.logging_steps)))
        if hasattr(model, "num_parameters"):  # a PreTrainedModel; W&B skips others too
            run.config["model/num_parameters"] = int(model.num_parameters())

    def _open(self, name: str | None) -> Run:
        """The run to write to: the given or current one, else a new one (defining W&B's x-axis)."""
        if self._run is not None and not self._run.finished:
            return self._run
        current = current_run()
        if not self._owned and current is not None and not current.finished:
            self._run = current
            return current
        run = init(
            project=self._project, name=name, id=self._id, resume="allow" if self._owned else None, **self._init_kwargs
        )
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        self._id = run.id
        self._owned = True
        self._run = run
        return run

    def _current(self, args: TrainingArguments, state: TrainerState, model: Any) -> Run:
        if not self._initialized:
            self.setup(args, state, model)
        # A run reopened after on_train_end keeps the name it had.
        return self._open(self._run.name if self._run is not None else self._name)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if state.is_hyper_param_search and self._initialized:
            # Each trial is its own run (W&B finishes the previous one and starts another).
            self._finish_owned()
            self._initialized = False
            self._owned = False
            self._id = None
        if not self._initialized:
            self.setup(args, state, model, **kwargs)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        run = self._current(args, state, model)
        logs = logs or {}
        for k, v in logs.items():
            if k in SINGLE_VALUE_SCALARS:
                run.summary[k] = plain(v)
        data = rewrite_logs({k: v for k, v in logs.items() if k not in SINGLE_VALUE_SCALARS})
        run.log({**data, STEP_KEY: state.global_step})

    def on_predict(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: Any, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self._current(args, state, kwargs.get("model")).log(rewrite_logs(metrics))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self._finish_owned()

    def _finish_owned(self) -> None:
        run = self._run
        if run is not None and self._owned and not run.finished:
            run.finish(exit_code=0)
