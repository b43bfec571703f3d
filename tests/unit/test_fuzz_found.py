"""Product bugs the fuzzers found (``tests/support/fuzz_report.py``: ``KNOWN``), one minimal reproducer each.

Each open one is ``xfail(strict=True)``: it fails today, and the fix makes it pass, which fails the suite until
the mark and the bug's entry in ``KNOWN`` are deleted (the fuzz tests then fail on the bug again if it comes back).
Fixed ones stay as plain regression tests.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np
import pytest
from support.frame_fuzz import NAMES, MemoryRedis, names_in

from history.formatting import plain
from schemas import (
    DEFAULT_LIMITS,
    FRAME_FIELD,
    Log,
    LogBlock,
    SchemaError,
    capture,
    decode_frame,
    encode_event,
    encode_frame_raw,
)
from schemas.frame import MAX_STEP
from workers.metastore import MetaStore, sqlite_url
from workers.partition import PartitionProcessor


def _frame(events: list[bytes], project: str = "p", run: str = "r", seq: int = 0) -> bytes:
    return msgpack.packb({"v": 1, "project": project, "run": run, "producer": "x", "seq": seq, "events": events})


def _log_with(value_bytes: bytes) -> bytes:
    """A log event whose value of key ``x`` is the given msgpack bytes, verbatim."""
    return (b"\x85\xa1k\xa3log\xa2ts\xcb" + struct.pack(">d", 1.0) + b"\xa4step\xc0\xa6commit\xc0\xa4data\x81\xa1x"
            + value_bytes)


def _refused_or_served(raw_event: bytes) -> None:
    """The frame is refused by the decoder, or the value it carries renders as JSON (what reads need)."""
    try:
        frame = decode_frame(_frame([raw_event]), strict=True)
    except SchemaError:
        return
    value = cast("Log", frame.events[0]).data["x"]
    json.dumps(plain(value), allow_nan=False)


def processor(tmp_path: Path) -> tuple[MetaStore, PartitionProcessor]:
    """Partition 0 taken in a SQLite store under ``tmp_path``, over an in-memory Redis (no dead-letter server)."""
    store = MetaStore(sqlite_url(tmp_path))
    epoch, offset = store.take_partition(0, "t")
    return store, PartitionProcessor(p=0, epoch=epoch, offset=offset, names=NAMES, store=store, data_dir=tmp_path,
                                     redis=cast("Any", MemoryRedis()), limits=DEFAULT_LIMITS)


def test_a_msgpack_timestamp_is_refused_or_served() -> None:
    _refused_or_served(_log_with(b"\x91\xd6\xff\x00\x00\x00\x01"))  # [Timestamp(seconds=1)]


def test_a_map_key_that_is_not_str_is_refused_or_served() -> None:
    _refused_or_served(_log_with(b"\x91\x81\xc4\x03bin\x01"))  # [{b"bin": 1}]


def test_a_longdouble_array_is_refused_or_served() -> None:
    arr = np.array([1.5, np.nan], dtype=np.longdouble)
    try:
        v = capture(arr, "x")
    except SchemaError:
        pass
    else:
        json.dumps(plain(v), allow_nan=False)
        msgpack.packb(v.tolist())  # what the gateway's msgpack format sends
    raw = msgpack.packb(msgpack.ExtType(1, msgpack.packb([arr.dtype.str, [2], arr.tobytes()])))
    _refused_or_served(_log_with(raw))


def test_a_number_column_with_big_ints_and_floats_is_readable(tmp_path: Path) -> None:
    """Found by the frame fuzzer, fixed since (``schemas.store.concat_segments``): ``log({"n": 2**62})``, a commit,
    then ``log({"n": 0.5})``: both stored (a segment each), and the run could not be read: history() and
    scan_history() raised ArrowInvalid (the HTTP routes answered 500 or cut the stream), and compaction's merge
    raised the same. A nanosecond timestamp logged as an int is past 2**53. Now the column is float64 throughout
    and the int is kept exactly in its int companion: rows give it back as logged."""
    from history.query import Api
    from workers.segments import merge_tables, read_table

    project, run = names_in(0, 1, random.Random(0))[0]

    async def go() -> None:
        store, proc = processor(tmp_path)
        for i, value in enumerate((2**62, 0.5)):
            raw = encode_frame_raw(project, run, "x", i, [encode_event(Log(ts=1.0 + i, data={"n": value}))])
            await proc.process([(f"{i + 1}-0".encode(), {FRAME_FIELD: raw})])
            await proc.commit()
        files = [s["file"] for s in store.segments_of(project, run)]
        store.close()
        assert len(files) == 2
        merge_tables([read_table(tmp_path, f) for f in files])

    asyncio.run(go())
    with Api(data_dir=tmp_path) as api:
        view = api.run(f"{project}/{run}")
        assert [(type(r["n"]), r["n"]) for r in view.scan_history()] == [(int, 2**62), (float, 0.5)]
        assert view.history(pandas=False)["n"].tolist() == [float(2**62), 0.5]


class _BrokenTensor:
    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        raise RuntimeError("this tensor is on another device")


def test_an_array_like_that_fails_is_refused() -> None:
    with pytest.raises(SchemaError, match="'x'"):
        capture(_BrokenTensor(), "x")


def test_a_block_that_reaches_the_last_step_never_fails_a_commit(tmp_path: Path) -> None:
    """Found by the frame fuzzer, fixed since (the aligner refuses a call without a step past the last step): a block
    that reaches step 2**63 - 1 through an explicit step and goes on without steps wrote a row at 2**63, whose
    segment write raised OverflowError, so the entry could only end as poison. Now the commit succeeds."""
    project, run = names_in(0, 1, random.Random(0))[0]

    async def go() -> None:
        store, proc = processor(tmp_path)
        block = LogBlock(keys=["a"], ts=np.array([1.0, 2.0, 3.0]), step=[MAX_STEP - 1, None, None],
                         commit=[True, True, True], cols=[np.array([1.0, 2.0, 3.0])])
        raw = encode_frame_raw(project, run, "x", 0, [encode_event(block)])
        await proc.process([(b"1-0", {FRAME_FIELD: raw})])
        try:
            await proc.commit()
        finally:
            store.close()

    asyncio.run(go())
