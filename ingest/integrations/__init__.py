"""Training-framework integrations, each in its own submodule and importing its framework only there.

- :mod:`ingest.integrations.lightning`: ``SteplineLogger``, a PyTorch Lightning logger (W&B's ``WandbLogger``).
- :mod:`ingest.integrations.transformers`: ``SteplineCallback``, a Hugging Face ``TrainerCallback``
  (W&B's ``WandbCallback``).
- :mod:`ingest.integrations.keras`: ``SteplineMetricsLogger``, a Keras 3 callback (W&B's ``WandbMetricsLogger``).

Guarantee: importing ``ingest`` or this package imports none of torch, lightning, transformers or keras (a
training script that only logs pays nothing for them); a submodule imports its framework when it is imported.
Each writes the keys, steps and config W&B's integration writes, so a run reads back as W&B would show it.
"""

from __future__ import annotations
