"""Run metadata from ``init`` (``group``, ``job_type``, ``tags``, ``notes``) is stored, can be changed while the
run is live (``run.tags = ...`` as in W&B), and is what ``Api`` and its filters see."""

from __future__ import annotations

import pytest
from support.compat_stack import Stack

import ingest as wandb
from schemas import SchemaError


@pytest.mark.integration
def test_init_metadata_is_stored_and_changes_while_live(stack: Stack) -> None:
    run = wandb.init(project="meta", id="m1", group="sweep-1", job_type="train", tags=["base", "lr"],
                     notes="first", config={"lr": 0.1})
    assert (run.group, run.job_type, run.tags, run.notes) == ("sweep-1", "train", ("base", "lr"), "first")
    run.log({"loss": 1.0})
    run.tags = (*run.tags, "best")
    run.notes = "better than expected"
    run.group = "sweep-2"
    run.job_type = None  # cleared
    with pytest.raises(SchemaError, match="tags must be a list"):
        run.tags = "oops"  # a str is not a list of tags (W&B takes a sequence)
    with pytest.raises(SchemaError, match="a tag is at most"):
        run.tags = ["x" * 300]
    assert run.tags == ("base", "lr", "best")
    run.log({"loss": 0.5})
    run.finish()
    other = wandb.init(project="meta", id="m2", tags=("other",))
    other.finish()

    view = stack.finished("meta/m1")
    assert (view.group, view.job_type, view.tags, view.notes) == (
        "sweep-2", None, ["base", "lr", "best"], "better than expected")
    stack.finished("meta/m2")
    with stack.api() as api:
        assert [r.id for r in api.runs("meta", {"tags": "best"})] == ["m1"]
        assert [r.id for r in api.runs("meta", {"group": "sweep-2", "config.lr": {"$gte": 0.1}})] == ["m1"]
        assert [r.id for r in api.runs("meta", {"tags": {"$in": ["other"]}})] == ["m2"]
        assert [r.id for r in api.runs("meta", {"job_type": {"$exists": False}}, order="name")] == ["m1", "m2"]


def test_bad_init_metadata_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(SchemaError, match="group must be a str"):
        wandb.init(project="meta", id="bad", group=3, redis_url="redis://127.0.0.1:1/0")
