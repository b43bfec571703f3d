"""The examples' tier: one ``stepline up`` per module, started as a new user starts it (support.up_stack)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from support.servers import need
from support.up_stack import UpStack, start_up, stop_up


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpStack]:
    """One ``stepline up`` (real redis-server child, a worker, the web page) for the module's tests."""
    if shutil.which("redis-server") is None:
        need("redis-server is not on PATH (stepline up would fall back to fakeredis)")
    folder = tmp_path_factory.mktemp("fresh-folder")
    home = tmp_path_factory.mktemp("stepline-home")
    stack = start_up(folder, home)
    try:
        yield stack
    finally:
        rc = stop_up(stack)
        assert rc == 0, "".join(stack.output)
        assert not (home / "stack.json").exists(), "stepline up left its record behind"
