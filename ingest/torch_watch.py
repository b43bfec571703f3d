"""``wandb.watch`` / ``wandb.unwatch`` for PyTorch models: gradient and parameter histograms through hooks.

Matches W&B's ``wandb/integration/torch/wandb_torch.py`` (``TorchHistory``) and ``wandb/sdk/wandb_watch.py``:

- ``log="gradients"`` (the default) puts a tensor hook on every parameter that requires grad; ``"parameters"`` a
  forward hook on each watched model; ``"all"`` both; ``None`` neither.
- Each hook counts its own calls and logs on every ``log_freq``-th one (the ``log_freq``-th backward / forward, then
  every ``log_freq`` more; W&B's ``log_track_update``): ``gradients/<prefix><name>`` with the gradient and
  ``parameters/<prefix><name>`` with every parameter of the model, ``<name>`` from ``named_parameters()``.
  ``<prefix>`` is empty for the first watched model of the process and ``graph_<idx>`` for the next ones (W&B's
  spelling, no separator: ``gradients/graph_1fc.weight``); ``idx`` sets it.
- The value is W&B's histogram: 64 bins computed by ``torch.histc`` where the tensor lives (only the 64 counts
  cross to the host) over the finite values' [min, max], edges ``torch.linspace(min, max, 65)`` in float32; one
  bin holding every value when min == max; nothing when no value is finite; a sparse tensor's implicit zeros added
  to the bin holding 0.
- It is logged with ``commit=False``, as W&B does: it joins the row of the current step and is committed with the
  script's next ``log()``.
- ``unwatch(models)`` removes those models' hooks, ``unwatch()`` all of them; ``finish()`` removes every hook of
  the run (a model trained after ``finish()`` costs nothing and logs nothing).

Cost: a hook that does not log is one Python call that bumps a counter (per parameter per backward for gradients,
per forward for parameters); ``bench/watch.py`` measures a training step with and without ``watch``.

Differences from W&B: ``log_graph=True`` logs no graph (stepline has no graph media type; a warning says so once)
and ``criterion`` is accepted and unused (W&B only uses it for the graph).

torch is imported here only when ``watch()`` is called.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from schemas import Histogram

if TYPE_CHECKING:
    from .run import Run

logger = logging.getLogger("ingest")

#: W&B's ``TorchHistory._num_bins``.
NUM_BINS = 64
_LOG_CHOICES = ("gradients", "parameters", "all", None)

_idx_lock = threading.Lock()
#: W&B's ``_global_watch_idx``: models watched so far in this process (names the prefix of the next one).
_global_watch_idx = 0


def histogram_of(tensor: Any) -> Histogram | None:
    """W&B's ``log_tensor_stats`` histogram of ``tensor`` (a torch tensor, or a list/tuple of them), or ``None``
    when it holds no finite value."""
    import torch

    if isinstance(tensor, tuple | list):
        while isinstance(tensor, tuple | list) and isinstance(tensor[0], tuple | list):
            tensor = [item for sub in tensor for item in sub]
        tensor = torch.cat([t.detach().reshape(-1) for t in tensor])
    tensor = tensor.detach()
    sparse_zeros = 0
    if tensor.is_sparse:
        tensor = tensor.cpu().coalesce()
        values = tensor._values()
        sparse_zeros = tensor.numel() - values.numel()
        tensor = values
    flat = tensor.reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.to(torch.float32)
    if flat.numel() == 0:
        return None
    finite = torch.isfinite(flat)
    if not bool(finite.all()):
        if not bool(finite.any()):
            return None
        flat = flat[finite]
    tmin = flat.min().item()
    tmax = flat.max().item()
    if sparse_zeros:
        tmin = min(tmin, 0)
        tmax = max(tmax, 0)
    if tmin == tmax:
        counts = [float(flat.numel() + sparse_zeros)]
        bins = torch.tensor([tmin, tmax], dtype=torch.float32).tolist()
        return Histogram(np_histogram=(counts, bins))
    hist = flat.histc(bins=NUM_BINS, min=tmin, max=tmax)
    counts = hist.cpu().tolist()  # 64 numbers cross to the host, not the tensor
    bins = torch.linspace(tmin, tmax, steps=NUM_BINS + 1).tolist()
    if sparse_zeros:
        for i in range(NUM_BINS):
            if (bins[i] <= 0 < bins[i + 1]) or (i == NUM_BINS - 1 and bins[i + 1] == 0):
                counts[i] += sparse_zeros
                break
    return Histogram(np_histogram=(counts, bins))


class _Counter:
    """W&B's ``log_track``: True on every ``every``-th call."""

    __slots__ = ("count", "every")

    def __init__(self, every: int) -> None:
        self.every = every
        self.count = 0


class Watcher:
    """The hooks one run put on its watched models (``run.watch``), by W&B's hook names."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.handles: dict[str, Any] = {}
        #: id(model) -> names of the hooks set on it (W&B keeps them in ``model._wandb_hook_names``).
        self.by_model: dict[int, list[str]] = {}
        self._warned_graph = False

    def _log(self, name: str, tensor: Any) -> None:
        run = self.run
        if run.finished:
            return
        try:
            h = histogram_of(tensor)
            if h is not None:
                run.log({name: h}, commit=False)
        except Exception:  # a hook must never break the training step; say what was lost
            logger.exception("stepline: watch could not log %s", name)

    def watch(
        self,
        models: Any,
        criterion: Any = None,
        log: str | None = "gradients",
        log_freq: int = 1000,
        idx: int | None = None,
        log_graph: bool = False,
    ) -> list[Any]:
        global _global_watch_idx
        if log not in _LOG_CHOICES:
            raise ValueError("log must be one of 'gradients', 'parameters', 'all', or None")
        if type(log_freq) is not int or log_freq < 1:
            raise ValueError(f"log_freq must be an int >= 1, got {log_freq!r}")
        import torch

        if not isinstance(models, tuple | list):
            models = (models,)
        for model in models:
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"Expected a pytorch model (torch.nn.Module). Received {type(model)}")
        if log_graph and not self._warned_graph:
            self._warned_graph = True
            logger.warning("stepline: watch(log_graph=True) logs no graph (stepline stores no model graphs)")
        log_parameters = log in ("parameters", "all")
        log_gradients = log in ("gradients", "all")
        prefix = ""
        with _idx_lock:
            if idx is None:
                idx = _global_watch_idx
            for local_idx, model in enumerate(models):
                global_idx = idx + local_idx
                _global_watch_idx += 1
                if global_idx > 0:
                    prefix = f"graph_{global_idx}"
                if log_parameters:
                    self._parameters_hook(model, prefix, log_freq)
                if log_gradients:
                    self._gradient_hooks(model, prefix, log_freq)
        return []  # W&B returns the graphs it will fill; there are none here

    def _remember(self, model: Any, name: str, handle: Any) -> None:
        self.handles[name] = handle
        self.by_model.setdefault(id(model), []).append(name)

    def _parameters_hook(self, model: Any, prefix: str, log_freq: int) -> None:
        name = "parameters/" + prefix
        if name in self.handles:
            raise ValueError(f'A hook has already been set under name "{name}"')
        counter = _Counter(log_freq)
        log = self._log

        def hook(module: Any, inputs: Any, output: Any) -> None:
            counter.count += 1
            if counter.count < counter.every:
                return
            counter.count = 0
            for pname, p in module.named_parameters():
                log("parameters/" + prefix + pname, p.data)

        self._remember(model, name, model.register_forward_hook(hook))

    def _gradient_hooks(self, model: Any, prefix: str, log_freq: int) -> None:
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            name = "gradients/" + prefix + pname
            if name in self.handles:
                raise ValueError(f'A hook has already been set under name "{name}"')
            self._remember(model, name, p.register_hook(self._grad_hook(name, _Counter(log_freq))))

    def _grad_hook(self, name: str, counter: _Counter) -> Callable[[Any], None]:
        log = self._log

        def hook(grad: Any) -> None:
            counter.count += 1
            if counter.count < counter.every:
                return
            counter.count = 0
            log(name, grad)

        return hook

    def unwatch(self, models: Any = None) -> None:
        if models is None:
            for handle in self.handles.values():
                handle.remove()
            self.handles.clear()
            self.by_model.clear()
            return
        if not isinstance(models, Sequence):
            models = (models,)
        for model in models:
            names = self.by_model.pop(id(model), None)
            if names is None:
                logger.warning("stepline: %s model has not been watched", type(model).__name__)
                continue
            for name in names:
                handle = self.handles.pop(name, None)
                if handle is not None:
                    handle.remove()
