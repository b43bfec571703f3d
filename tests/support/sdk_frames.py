"""What an SDK run has queued, read without Redis: its frames, their events and the log calls they hold (blocks
expanded, as a worker sees them)."""

from __future__ import annotations

from typing import Any

from ingest.run import Run
from schemas import Frame, Log, LogBlock, decode_frame


def frames(run: Run) -> list[Frame]:
    """Pack what the run has queued and take every frame out of its outbox (acknowledged, as if sent)."""
    run._core.pump()
    out: list[Frame] = []
    while batch := run._core.peek():
        out.extend(decode_frame(e.frame, strict=True) for e in batch)
        run._core.outbox.ack(batch[-1].idx)
    return out


def events(run: Run) -> list[Any]:
    return [e for f in frames(run) for e in f.events]


def log_calls(evs: list[Any]) -> list[Log]:
    """Every log call in order, blocks expanded (what a worker sees)."""
    out: list[Log] = []
    for e in evs:
        out.extend(e.calls() if isinstance(e, LogBlock) else [e] if isinstance(e, Log) else [])
    return out
