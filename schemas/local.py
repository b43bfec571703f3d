"""The local stack record: how a running ``stepline up`` is found on this machine with nothing configured.

``stepline up`` writes a small JSON file (atomically: a temporary file renamed over it) and removes it on exit:

- where: ``$STEPLINE_HOME/stack.json`` when ``STEPLINE_HOME`` is set (tests, several users of one account), else
  ``$XDG_RUNTIME_DIR/stepline/stack.json`` (a per-user runtime folder that the system empties at logout), else
  ``~/.stepline/stack.json``;
- what: ``{"v": 1, "pid", "redis_url", "data_dir" (absolute), "db_url" (or null), "gateway_url" (or null),
  "namespace", "partitions", "started_at"}``.

Discovery order, everywhere (SDK, ``ingest.Api``/``history.Api``, every ``stepline`` command): an explicit argument,
then a ``STEPLINE_*`` variable, then a live local stack, then the documented default. The record is used as a unit:
a process that was told where its data goes by an argument or a variable does not mix in the stack's other fields.

:func:`local_stack` is the one place that reads the record. It is the only I/O in :mod:`schemas` (one small file
read, a signal-0 ``kill`` and a Redis ``PING``), kept here because the SDK, the read side and the command line must
agree on it and may not import each other (docs/DESIGN.md §10). A record whose process is gone or whose Redis does
not answer is stale: it is ignored, and said once per process on the ``stepline`` logger.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .names import DEFAULT_NAMESPACE, DEFAULT_PARTITIONS, Names

__all__ = ["FORMAT_VERSION", "LocalStack", "encode_stack", "local_stack", "parse_stack", "stack_path"]

FORMAT_VERSION = 1
#: Variables that say where data goes: when one of them is set the stack is not consulted for that side.
WRITE_SIDE_ENV = ("STEPLINE_REDIS_URL", "STEPLINE_URL")
READ_SIDE_ENV = ("STEPLINE_DATA_DIR", "STEPLINE_DB_URL")

log = logging.getLogger("stepline")
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class LocalStack:
    """What a running ``stepline up`` serves: where frames go, where history is read, the web page."""

    pid: int
    redis_url: str
    data_dir: str
    db_url: str | None = None
    gateway_url: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    partitions: int = DEFAULT_PARTITIONS
    started_at: float = 0.0


def stack_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the record of this user's ``stepline up`` lives (no I/O)."""
    env = os.environ if environ is None else environ
    if env.get("STEPLINE_HOME"):
        return Path(env["STEPLINE_HOME"]) / "stack.json"
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "stepline" / "stack.json"
    return Path(env.get("HOME") or Path.home()) / ".stepline" / "stack.json"


def encode_stack(stack: LocalStack) -> bytes:
    return json.dumps({"v": FORMAT_VERSION, **asdict(stack)}, indent=1).encode()


def parse_stack(data: bytes) -> LocalStack:
    """The record in ``data``; ``ValueError`` naming what is wrong when it is not one."""
    try:
        obj: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
        raise ValueError(f"not a version-{FORMAT_VERSION} stack record")

    def field(name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        v = obj.get(name)
        if v is None and optional:
            return None
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ValueError(f"field {name!r} is missing or malformed: {v!r:.80}")
        return v

    stack = LocalStack(
        pid=field("pid", int), redis_url=field("redis_url", str), data_dir=field("data_dir", str),
        db_url=field("db_url", str, True), gateway_url=field("gateway_url", str, True),
        namespace=field("namespace", str), partitions=field("partitions", int),
        started_at=float(field("started_at", (int, float))),
    )
    if stack.pid <= 0 or not Path(stack.data_dir).is_absolute():
        raise ValueError("pid must be positive and data_dir absolute")
    Names(stack.namespace, stack.partitions)  # raises ValueError
    return stack


def _say_once(path: Path, message: str) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("stepline: ignoring %s: %s", path, message)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's: not ours, but alive
        return True
    return True


def _redis_answers(url: str) -> bool:
    import redis

    from .clients import sync_redis

    try:
        with sync_redis(url, socket_connect_timeout=0.5, socket_timeout=1.0) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def local_stack(environ: Mapping[str, str] | None = None) -> LocalStack | None:
    """The live ``stepline up`` of this user, or None (no record, or a stale one: said once)."""
    path = stack_path(environ)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        _say_once(path, f"cannot read it ({e.strerror or e})")
        return None
    try:
        stack = parse_stack(data)
    except ValueError as e:
        _say_once(path, str(e))
        return None
    if not _pid_alive(stack.pid):
        _say_once(path, f"the stepline up that wrote it (pid {stack.pid}) is gone")
        return None
    if not _redis_answers(stack.redis_url):
        _say_once(path, f"its Redis ({stack.redis_url}) does not answer")
        return None
    return stack
