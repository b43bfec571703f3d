"""Test-only fault points: make this process die like ``kill -9`` at a named point of the commit protocol, or on the
frames of one run.

``STEPLINE_TEST_CRASH_AT=<point>[:<n>]`` sends SIGKILL to the process itself the ``n``-th time (default 1) it
passes ``<point>``. Read once, at import; inert (one dict lookup) unless set. Used by ``tests/faults`` to place a
crash exactly, which random kills only hit by luck. Points:

- ``read``: stream entries were read and applied in memory; nothing of them is committed;
- ``segments``: a commit's segment files are written and fsync'd; the metadata transaction has not run;
- ``committed``: the metadata transaction (segments + run state + offset) is done; the stream is not trimmed;
- ``archived``: a stream archive object is complete in the storage location; its ``sl_archive`` row is not
  written (``workers.archive``);
- ``trimmed``: the stream was just trimmed behind the committed (and archived) offset.

``STEPLINE_TEST_POISON=<run>[:<how>]`` makes the frames of every run named ``<run>`` poison, the way an input
nobody foresaw would be (a crash in native code, an out-of-memory kill, a value the store refuses): ``how`` is

- ``apply`` (default): SIGKILL while the worker applies such a frame;
- ``segments``: SIGKILL while the commit writes that run's segment (in an executor thread);
- ``raise``: the commit raises ``RuntimeError`` while writing that run's segment, every time;
- ``sql``: the commit raises ``RuntimeError`` inside its metadata transaction (after the dead letters of the batch
  were written), every time.

Both are read once, at import, and cost nothing when unset.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("STEPLINE_TEST_CRASH_AT", "")
_POINT, _, _N = _SPEC.partition(":")
_LEFT = {_POINT: int(_N or 1)} if _POINT else {}

_POISON_RUN, _, _POISON_HOW = os.environ.get("STEPLINE_TEST_POISON", "").partition(":")
_POISON_HOW = _POISON_HOW or "apply"


def crash_point(name: str) -> None:
    """Die here with SIGKILL if ``STEPLINE_TEST_CRASH_AT`` names this point (and its count is reached)."""
    if name in _LEFT:
        _LEFT[name] -= 1
        if _LEFT[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


def poison_point(where: str, run: str) -> None:
    """Die (or raise) here if ``STEPLINE_TEST_POISON`` names ``run`` and this point: ``where`` is ``apply``,
    ``segments`` or ``sql``."""
    if not _POISON_RUN or run != _POISON_RUN:
        return
    if where == _POISON_HOW and where in ("apply", "segments"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif where == "segments" and _POISON_HOW == "raise":
        raise RuntimeError(f"test poison: the segment of run {run!r} cannot be written")
    elif where == "sql" and _POISON_HOW == "sql":
        raise RuntimeError(f"test poison: the state of run {run!r} cannot be stored")
