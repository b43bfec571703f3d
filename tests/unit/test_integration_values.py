"""The integrations' value helpers: framework numbers to Python scalars, hyperparameters to config trees."""

from __future__ import annotations

import enum
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

from ingest.integrations._values import config_tree, params_dict, plain
from schemas.values import capture


class Mode(enum.Enum):
    FAST = "fast"


def test_plain_turns_tensors_into_numbers() -> None:
    w = torch.tensor(2.0, requires_grad=True)
    loss = w * 1.5  # a 0-d tensor with grad, what a loss is
    assert plain(loss) == 3.0 and type(plain(loss)) is float
    assert plain(torch.tensor([7])) == 7 and type(plain(torch.tensor([7]))) is int
    assert plain(torch.tensor(0.5, dtype=torch.bfloat16)) == 0.5
    halves = plain(torch.tensor([0.5, 0.25], dtype=torch.bfloat16))
    assert isinstance(halves, np.ndarray) and halves.dtype == np.float32 and halves.tolist() == [0.5, 0.25]
    assert plain(np.float32(0.125)) == 0.125 and type(plain(np.float32(0.125))) is float
    assert plain(np.array(3)) == 3
    for same in ("x", 1, 1.5, True, None):
        assert plain(same) is same


def test_config_tree_holds_only_what_a_config_can_store() -> None:
    params = Namespace(
        lr=np.float64(1e-3),
        mode=Mode.FAST,
        out=Path("/tmp/out"),
        act=torch.nn.functional.relu,
        sizes=(64, 32),
        id2label={0: "neg", 1: "pos"},
        dtype=torch.float32,
        scale=torch.tensor(2.0),
    )
    tree = config_tree(params_dict(params))
    assert tree == {
        "lr": 1e-3,
        "mode": "fast",
        "out": "/tmp/out",
        "act": "relu",
        "sizes": [64, 32],
        "id2label": {"0": "neg", "1": "pos"},
        "dtype": "torch.float32",
        "scale": 2.0,
    }
    assert capture(tree, "config") == tree  # storable as it is
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    assert isinstance(capture(config_tree(cyclic), "config"), dict)  # depth-capped, not a RecursionError
