"""stepline's client SDK, shaped like W&B's: ``import ingest as wandb`` runs a typical training script unchanged.

::

    import ingest as wandb

    run = wandb.init(project="mnist", config={"lr": 1e-3})
    for step in range(1000):
        wandb.log({"train/loss": loss, "epoch": epoch})
    wandb.finish()

Guarantees (details in :mod:`ingest.run`, :mod:`ingest.sender`, :mod:`ingest.spill`): values are validated and
captured when ``log()`` is called; ``log()`` never does network I/O; every call reaches Redis at least once and in
order per run (duplicates are skipped by the workers); while Redis is down frames are kept, in memory up to a cap
and then in a spill file, and resent when it is back; ``finish()`` reports whatever it could not send.

``ingest.run``, ``ingest.config`` and ``ingest.summary`` resolve to the current run's (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

from typing import Any

from schemas import Histogram, Html, Image, LimitError, SchemaError, SteplineError, Table, plot

from .run import (
    AsyncRun,
    FinishResult,
    Run,
    RunConfig,
    RunSummary,
    async_init,
    current_run,
    define_metric,
    finish,
    init,
    log,
    unwatch,
    watch,
)
from .settings import ClientSettings, SettingsError

# Importing the submodule ``ingest.run`` bound the name ``run`` in this package; W&B's ``wandb.run`` must be the
# current run instead, so drop the binding and let ``__getattr__`` answer (the module stays in sys.modules).
globals().pop("run", None)


def __getattr__(name: str) -> Any:
    if name == "run":
        return current_run()
    if name in ("config", "summary"):
        r = current_run()
        if r is None:
            raise AttributeError(f"ingest.{name} is available after ingest.init()")
        return getattr(r, name)
    if name == "Api":
        # The read side is its own package (``history``); loaded only by those who use it, so a training
        # script that only logs never imports pyarrow's readers or SQLAlchemy.
        from history import Api

        return Api
    raise AttributeError(f"module 'ingest' has no attribute {name!r}")


__all__ = [
    "AsyncRun",
    "ClientSettings",
    "FinishResult",
    "Histogram",
    "Html",
    "Image",
    "LimitError",
    "Run",
    "RunConfig",
    "RunSummary",
    "SchemaError",
    "SettingsError",
    "SteplineError",
    "Table",
    "async_init",
    "define_metric",
    "finish",
    "init",
    "log",
    "plot",
    "unwatch",
    "watch",
]
