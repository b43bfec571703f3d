"""The commit announcements' format (``<ns>:{pNN}:committed``, :meth:`schemas.Names.committed`), without I/O.

A worker announces each commit that moved its partition's offset with a stream entry whose id is the committed
offset, ``o`` = the offset and ``<project>/<run>`` = ``"<rows> <rejected>"`` for each run finished in the commit.
Whoever waits for read-your-writes (the SDK over Redis, the gateway for the SDK over HTTP) decides with
:func:`reached` whether the commit of a given stream id has been announced, and with :func:`live_workers` whether
waiting longer makes sense.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: A worker whose heartbeat is older than this is not counted as live (the default lease TTL is 10 s).
LIVE_WORKER_S = 15.0
#: Entries a partition keeps (a waiting client reads the last few at most).
KEEP = 64


def id_tuple(entry_id: str | bytes) -> tuple[int, int]:
    """A stream id as ``(ms, seq)``, for comparing ids."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def announcement(offset: str, finished: Iterable[tuple[str, str, int, int]]) -> dict[bytes, bytes]:
    """The fields of one announcement: the offset and ``(project, run, rows, rejected)`` of each finished run."""
    fields = {b"o": offset.encode()}
    for project, run, rows, rejected in finished:
        fields[f"{project}/{run}".encode()] = f"{rows} {rejected}".encode()
    return fields


@dataclass(frozen=True, slots=True)
class Reached:
    """The commit of the awaited id is announced; the run's counts when that commit finished it."""

    rows: int | None = None
    rejected: int | None = None


def reached(entries: Sequence[tuple[Any, Mapping[bytes, bytes]]], target: str, project: str,
            run: str) -> Reached | None:
    """Whether ``entries`` (ascending, as ``XRANGE``/``XREAD`` give them) announce a commit at or past ``target``,
    and the run's counts if one of those commits names it."""
    goal = id_tuple(target)
    past = [(i, f) for i, f in entries if id_tuple(i) >= goal]
    if not past:
        return None
    key = f"{project}/{run}".encode()
    for _i, fields in past:
        raw = fields.get(key)
        if raw is not None:
            rows, _, rejected = raw.decode().partition(" ")
            return Reached(int(rows), int(rejected or 0))
    return Reached()


def live_workers(beats: Mapping[Any, Any], now_ms: float) -> int:
    """How many heartbeats (worker id → epoch ms) are younger than :data:`LIVE_WORKER_S`."""
    return sum(1 for hb in beats.values() if now_ms - int(hb) <= LIVE_WORKER_S * 1000)
