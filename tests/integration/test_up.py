"""``stepline up`` (embedded all-in-one) serves a training script end to end, and ``stepline status`` reports it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import ingest
from history.query import Api

pytestmark = pytest.mark.integration


def read_env_lines(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, str]:
    """The ``export NAME=value`` lines ``stepline up`` prints before it serves (read in a thread: no deadlock)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    env: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2).strip()
        except queue.Empty:
            continue
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = value
        if "Ctrl-C stops" in line:
            return env
    raise AssertionError(f"stepline up did not start: {env}")


@pytest.mark.parametrize("fake", [False, True], ids=["redis-server", "fakeredis"])
def test_up_serves_a_training_script(tmp_path: Path, fake: bool) -> None:
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "stepline.cli", "up", "--data-dir", str(data), "--gateway-port", "0"]
    cmd += ["--fakeredis"] if fake else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        env = read_env_lines(proc, 30)
        url = env["STEPLINE_REDIS_URL"]
        run = ingest.init(project="up", id="r1", redis_url=url, data_dir=str(data))
        for s in range(300):
            run.log({"loss": 1 / (s + 1), "phase": "a"}, step=s)
        run.log({"loss": 5.0}, step=10)  # rejected
        assert run.finish(timeout=30).ok
        with Api(data_dir=data) as api:
            deadline = time.monotonic() + 30
            while True:
                try:
                    r = api.run("up/r1")
                    if r.rows == 300 and r.state == "finished":
                        break
                except LookupError:
                    pass
                assert time.monotonic() < deadline, "history not committed in time"
                time.sleep(0.05)
            assert r.rejected == {"non_monotonic_step": 1}
            hist = r.history(keys=["loss"], samples=None, pandas=False)
            assert hist["_step"].tolist() == list(range(300))
        status = subprocess.run(
            [sys.executable, "-m", "stepline.cli", "status", "--redis-url", url, "--data-dir", str(data),
             "--format", "json"], capture_output=True, text=True, timeout=60, env=dict(os.environ),
        )
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert len(st["partitions"]) == 16 and len(st["workers"]) == 1
        assert all(p["owner"] for p in st["partitions"]) and all(p["lag"] == 0 for p in st["partitions"])
        assert sum(p["dead_letters"] for p in st["partitions"]) == 1  # the rejected call
        # The gateway of `up` serves the same history over HTTP, and takes frames from an HTTP client.
        base = env["STEPLINE_URL"]
        with urllib.request.urlopen(f"{base}/api/v1/projects/up/runs/r1") as resp:
            assert json.loads(resp.read())["rows"] == 300
        over_http = ingest.init(project="up", id="r2", url=base, data_dir=str(data))
        for s in range(50):
            over_http.log({"loss": float(s)}, step=s)
        assert over_http.finish(timeout=30).ok
        with Api(data_dir=data) as api:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if api.run("up/r2").rows == 50:
                        break
                except LookupError:
                    pass
                assert time.monotonic() < deadline, "HTTP-logged history not committed in time"
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
    assert rc == 0
