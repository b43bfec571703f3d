"""``stepline up``'s record: it takes another port when 8080 is busy (and the record names it), replaces a stale
record from a crashed ``up`` (saying so once), and removes its own on exit."""

from __future__ import annotations

import errno
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
from support.servers import need
from support.up_stack import start_up, stop_up

from schemas.local import LocalStack, encode_stack

pytestmark = pytest.mark.integration


def test_busy_default_port_and_a_stale_record(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        need("redis-server is not on PATH")
    home = tmp_path / "home"
    home.mkdir()
    stale = LocalStack(pid=2**22 + 4321, redis_url="redis://127.0.0.1:1/0", data_dir="/nonexistent",
                       gateway_url="http://127.0.0.1:1")
    (home / "stack.json").write_bytes(encode_stack(stale))
    blocker = socket.socket()
    try:
        try:
            blocker.bind(("127.0.0.1", 8080))
            blocker.listen()
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise  # (in use by someone else: busy all the same)
        folder = tmp_path / "fresh"
        folder.mkdir()
        up = start_up(folder, home)  # no --gateway-port: 8080, or any free port when it is taken
        try:
            record = json.loads((home / "stack.json").read_text())
            assert record["pid"] == up.proc.pid
            assert record["gateway_url"].startswith("http://127.0.0.1:")
            assert not record["gateway_url"].endswith(":8080")
            assert record["data_dir"] == str((folder / "stepline-data").resolve())
            said = [line for line in up.output if "ignoring" in line and "stack.json" in line]
            assert len(said) == 1 and "is gone" in said[0], up.output
        finally:
            assert stop_up(up) == 0
        assert not (home / "stack.json").exists()
    finally:
        blocker.close()


def test_a_second_embedded_stack_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    """``stepline demo`` in the folder where ``stepline up`` runs: both default to ./stepline-data. The demo's
    private Redis and worker would take the up's partitions in the shared metadata (seen: the up's worker fenced,
    then reading its offsets against the demo's stream, "DATA LOSS"). The demo is refused instead, in one line,
    and the up's worker goes on undisturbed."""
    if shutil.which("redis-server") is None:
        need("redis-server is not on PATH")
    home = tmp_path / "home"
    home.mkdir()
    folder = tmp_path / "shared"
    folder.mkdir()
    up = start_up(folder, home)
    try:
        demo = up.run([sys.executable, "-m", "stepline", "demo", "--runs", "1", "--steps", "10"], folder, 120)
        assert demo.returncode != 0, demo.stdout + demo.stderr
        err = demo.stderr.strip().splitlines()
        assert err and err[-1].startswith("stepline: error:") and "in use by another embedded stack" in err[-1], (
            demo.stderr)
        assert "Traceback" not in demo.stderr
        assert up.proc.poll() is None
    finally:
        assert stop_up(up) == 0
    assert not any("fenced" in line for line in up.output), up.output
