"""Framework values made loggable, for the integrations: tensors to Python numbers, configs to plain trees.

- :func:`plain` turns a 0-d (or one-element) tensor or a numpy scalar into its Python scalar (one device-to-host
  copy) and a larger tensor into a numpy array (which ``log()`` stores as it stores arrays); anything else is
  returned as it is, so ``log()`` still refuses what it cannot store, naming the key.
- :func:`config_tree` turns hyperparameters into what a config holds: str keys, lists for tuples and sets, plain
  scalars, and the ``str()`` of anything else (W&B's integrations do the same: configs carry enums, paths,
  callables and device objects that have no stored form of their own).

No framework is imported here: tensors are recognised by their methods (``detach``, ``numpy``).
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Mapping
from typing import Any

import numpy as np

_SCALARS = (str, int, float, bool)


def plain(value: Any) -> Any:
    """A framework number as a Python scalar (or a numpy array when it holds several values)."""
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, np.generic):
        return value.item()
    detach = getattr(value, "detach", None)
    if callable(detach) and hasattr(value, "numel"):  # a torch tensor (also what Keras' torch backend hands out)
        t = detach()
        if t.numel() == 1:
            return t.item()
        if not t.dtype.is_floating_point or t.dtype.itemsize >= 4:
            return t.cpu().numpy()
        return t.float().cpu().numpy()  # float16/bfloat16: numpy has no bfloat16
    numpy = getattr(value, "numpy", None)
    if callable(numpy) and not isinstance(value, np.ndarray):  # TensorFlow / JAX arrays and the like
        arr = np.asarray(numpy())
        return arr.item() if arr.size == 1 else arr
    if isinstance(value, np.ndarray) and value.size == 1 and value.ndim == 0:
        return value.item()
    return value


def plain_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in values.items()}


def params_dict(params: Any) -> dict[str, Any]:
    """Hyperparameters as a dict: an ``argparse.Namespace`` (or any object with attributes) or a mapping."""
    if params is None:
        return {}
    if isinstance(params, argparse.Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    if hasattr(params, "__dict__"):
        return dict(vars(params))
    raise TypeError(f"hyperparameters must be a dict or a Namespace, got {type(params).__name__}")


def config_tree(value: Any, depth: int = 0) -> Any:
    """A value as a config can hold it (see the module docstring); depth-capped so a cycle cannot recurse forever."""
    if value is None or type(value) in _SCALARS:
        return value
    if depth >= 16:  # well inside the stored values' nesting limit (schemas.Limits.max_depth, 32)
        return str(value)
    if isinstance(value, enum.Enum):
        return config_tree(value.value, depth + 1)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): config_tree(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [config_tree(v, depth + 1) for v in value]
    for base in (int, float, str):  # subclasses of the plain scalars (enums were handled above)
        if isinstance(value, base):
            return base(value)
    converted = plain(value)
    if converted is not value:
        return converted.tolist() if isinstance(converted, np.ndarray) else converted
    if isinstance(value, np.ndarray):
        return value.tolist()
    if callable(value) and hasattr(value, "__name__"):  # Lightning's logger sanitises callables to their names
        return str(value.__name__)
    return str(value)
