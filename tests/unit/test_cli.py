"""The CLI's error policy: a user's mistake is one line and exit 1; a bug keeps its traceback."""

from __future__ import annotations

import argparse

import pytest
import redis

from history import RunNotFound
from stepline import cli


def test_a_bug_still_raises_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_args: argparse.Namespace) -> int:
        raise RuntimeError("a real bug")

    monkeypatch.setattr(cli, "cmd_history", broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main(["history", "p/r"])


@pytest.mark.parametrize(("error", "expected"), [
    (RunNotFound("no run 'r' in project 'p'"), "no run 'r' in project 'p'"),
    (redis.ConnectionError("Connection refused"), "cannot reach Redis: Connection refused"),
    (PermissionError(13, "Permission denied", "/x"), "Permission denied: /x"),
])
def test_a_users_mistake_is_one_line(error: Exception, expected: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    def failing(_args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_history", failing)
    assert cli.main(["history", "p/r"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stepline: error: ") and expected in err
    assert cli.user_error(ValueError("not ours")) is None
