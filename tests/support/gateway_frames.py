"""Frames and bodies for gateway tests, built with :mod:`schemas` exactly as the SDK's sender builds them."""

from __future__ import annotations

from typing import Any

import msgpack
import redis

from schemas import Finish, Log, Names, Start, encode_event, encode_frame_raw

FRAMES = {"Content-Type": "application/x-stepline-frames"}


def frames_for(project: str, run: str, n_steps: int = 5, producer: str = "prod", seq: int = 0,
               per_frame: int = 3, finish: bool = True, extra: dict[str, Any] | None = None) -> list[bytes]:
    t0 = 1_700_000_000.0
    events: list[Any] = [Start(ts=t0, name=run)]
    events += [Log(ts=t0 + i, data={"i": float(i), **(extra or {})}) for i in range(n_steps)]
    if finish:
        events.append(Finish(ts=t0 + n_steps))
    raws = [encode_event(e) for e in events]
    return [encode_frame_raw(project, run, producer, seq + s, raws[s:s + per_frame])
            for s in range(0, len(raws), per_frame)]


def body(frames: list[bytes]) -> bytes:
    out: bytes = msgpack.packb(frames, use_bin_type=True)
    return out


def stream_len(r: redis.Redis, names: Names, project: str, run: str) -> int:
    return int(r.xlen(names.stream(names.partition(project, run))))


def total_len(r: redis.Redis, names: Names) -> int:
    return sum(int(r.xlen(names.stream(p))) for p in range(names.partitions))
