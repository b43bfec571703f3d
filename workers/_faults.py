"""Test-only fault points: make this process die like ``kill -9`` at a named point of the commit protocol.

``STEPLINE_TEST_CRASH_AT=<point>[:<n>]`` sends SIGKILL to the process itself the ``n``-th time (default 1) it
passes ``<point>``. Read once, at import; inert (one dict lookup) unless set. Used by ``tests/faults`` to place a
crash exactly, which random kills only hit by luck. Points:

- ``read``: stream entries were read and applied in memory; nothing of them is committed;
- ``segments``: a commit's segment files are written and fsync'd; the metadata transaction has not run;
- ``committed``: the metadata transaction (segments + run state + offset) is done; the stream is not trimmed;
- ``trimmed``: the stream was just trimmed behind the committed offset.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("STEPLINE_TEST_CRASH_AT", "")
_POINT, _, _N = _SPEC.partition(":")
_LEFT = {_POINT: int(_N or 1)} if _POINT else {}


def crash_point(name: str) -> None:
    """Die here with SIGKILL if ``STEPLINE_TEST_CRASH_AT`` names this point (and its count is reached)."""
    if name in _LEFT:
        _LEFT[name] -= 1
        if _LEFT[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
