"""Every ``stepline`` subcommand answers a user's mistake with one error line and a non-zero exit, never a
traceback: bad flag values, malformed run paths, unknown runs, unreachable Redis or database, unwritable paths,
a port in use. Each case runs the real command in a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
UNREACHABLE_PG = "postgresql://nobody@127.0.0.1:1/nothing"
FORBIDDEN = "/proc/stepline-cannot-write-here"


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def cases(port: int) -> list[list[str]]:
    return [
        ["demo", "--runs", "-1"],
        ["demo", "--steps", "abc"],
        ["demo", "--data-dir", FORBIDDEN],
        ["up", "--partitions", "0"],
        ["up", "--gateway-port", "70000"],
        ["up", "--data-dir", FORBIDDEN],
        ["worker", "--partitions", "0"],
        ["worker", "--lease-ttl-ms", "-1"],
        ["worker", "--commit-interval", "nan"],
        ["worker", "--retention", "-5"],
        ["replay", "a/b/c"],
        ["replay", "--redis-url", UNREACHABLE_REDIS],
        ["status", "--redis-url", UNREACHABLE_REDIS],
        ["status", "--db-url", UNREACHABLE_PG],
        ["status", "--data-dir", FORBIDDEN],
        ["history", "demo/"],
        ["history", "a/b/c/d"],
        ["history", "nope/nope"],
        ["history", "p/r", "--samples", "0"],
        ["history", "p/r", "--db-url", UNREACHABLE_PG],
        ["history", "p/r", "--db-url", "bogus://x"],
        ["sync", "/nonexistent/spill"],
        ["gateway", "--port", "70000"],
        ["gateway", "--port", str(port)],
        ["gateway", "--port", "0", "--db-url", UNREACHABLE_PG],
        ["gateway", "--port", "0", "--host", "0.0.0.0"],  # no API keys: refuses to serve beyond loopback
        ["keys", "list", "--db-url", UNREACHABLE_PG],
        ["keys", "create"],
        ["import-wandb", "/nonexistent/run-x.wandb"],
        ["export", "nope/x", "--out", "out.csv", "--format", "csv"],
        ["export", "p/r", "--out", f"{FORBIDDEN}/x.csv", "--format", "csv"],
        ["no-such-command"],
    ]


@pytest.mark.parametrize("case", range(len(cases(0))), ids=lambda i: " ".join(cases(0)[i]))
def test_every_mistake_gets_one_error_line_and_no_traceback(tmp_path: Path, busy_port: int, case: int) -> None:
    # One test per command: each runs a fresh interpreter, which a loaded machine can make slow, and the suite's
    # timeout is per test.
    args = cases(busy_port)[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    env["STEPLINE_DATA_DIR"] = str(tmp_path / "data")
    env["STEPLINE_HOME"] = str(tmp_path / "home")  # no running `stepline up` of the developer's is found
    try:
        p = subprocess.run([sys.executable, "-m", "stepline", *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=90, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:  # run() killed it: a mistake must end the command, not hang it
        pytest.fail(f"stepline {' '.join(args)} did not end within 90 s: {e.stderr!r:.500}")
    err = p.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    assert p.returncode != 0, f"stepline {' '.join(args)} exited 0\n{err[-1500:]}"
    assert "Traceback" not in err, err[-1500:]
    assert last.startswith("stepline") and "error" in last, err[-1500:]
