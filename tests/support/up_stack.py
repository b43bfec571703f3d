"""A ``stepline up`` started the way a new user starts it: in an empty folder, with nothing configured (no
``STEPLINE_*`` variable but a private ``STEPLINE_HOME``, so the record it writes is the test's alone), and
commands run beside it the way a user runs them in another terminal."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.local import LocalStack, parse_stack

ROOT = Path(__file__).resolve().parents[2]


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a user who configured nothing: no STEPLINE_* variable except the private home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    env["STEPLINE_HOME"] = str(home)
    return env


@dataclass
class UpStack:
    proc: subprocess.Popen[str]
    folder: Path
    home: Path
    env: dict[str, str]
    record: LocalStack
    output: list[str]
    reader: threading.Thread

    def run(self, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command in another process with the clean environment (a new terminal of the same user)."""
        return subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)


def start_up(folder: Path, home: Path, *extra: str) -> UpStack:
    env = clean_env(home)
    proc = subprocess.Popen([sys.executable, "-m", "stepline.cli", "up", *extra], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:  # read in a thread: the pipe must never fill while the test runs
        for line in stdout:
            output.append(line)
            lines.put(line)
        lines.put("")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120  # generous: only catches a hang on a loaded machine
    while True:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            line = None
        if line is not None and "Ctrl-C stops" in line:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc, reader)
            raise AssertionError("stepline up did not start:\n" + "".join(output))
    record = parse_stack((home / "stack.json").read_bytes())
    return UpStack(proc, folder, home, env, record, output, reader)


def _stop(proc: subprocess.Popen[str], reader: threading.Thread) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join(10)  # the pipe is at its end once the process is gone
        if proc.stdout is not None:
            proc.stdout.close()


def stop_up(stack: UpStack) -> int:
    """SIGTERM (as Ctrl-C), wait, and close the output pipe; returns the exit code."""
    return _stop(stack.proc, stack.reader)
