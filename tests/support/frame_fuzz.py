"""A seeded mutator of frames and a driver of the worker's decode path, for the fuzz test and ``bench/fuzz.py``.

The corpus is valid frames built with :mod:`schemas` as the SDK builds them (every event kind, numbers, strings,
bools, lists, nested maps, numpy arrays, histograms, column-wise ``logs`` blocks). Mutations work at three levels:
bytes (flips, truncation, insertion, splicing two frames), msgpack structure (a random node of the decoded frame
replaced by a value of another shape, deep nesting, enormous keys and values) and inside one event's bytes.

:func:`drive` pushes each mutant through what a worker does with a stream entry: ``decode_frame`` (which may only
raise :class:`SchemaError`), :meth:`PartitionProcessor.process` (``RunAligner.apply`` of every event, which must
not raise at all), and every few hundred frames the in-memory half of a commit (``take_columnar``, the segment
table, the run's ``dump``/``load`` and ``info``). Anything else raised is a crash, reported with the seed and the
frame bytes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np

from schemas import (
    DEFAULT_LIMITS,
    FRAME_FIELD,
    Config,
    DefineMetric,
    Finish,
    Histogram,
    Log,
    LogBlock,
    Names,
    SchemaError,
    Start,
    Summary,
    capture,
    decode_frame,
    encode_event,
    encode_frame_raw,
    packb,
)
from workers.align import RunAligner
from workers.metastore import MetaStore
from workers.partition import PartitionProcessor
from workers.segments import rows_to_table

# --- the corpus ------------------------------------------------------------------------------------------------


def _value(rng: random.Random) -> Any:
    u = rng.random()
    if u < 0.45:
        return rng.random() * 10 - 5
    if u < 0.6:
        return rng.randint(-1000, 1000)
    if u < 0.68:
        return rng.choice(("train", "eval", "", "ünïcode"))
    if u < 0.74:
        return rng.random() < 0.5
    if u < 0.8:
        return [rng.random() for _ in range(rng.randint(0, 5))]
    if u < 0.85:
        return capture(np.arange(rng.randint(1, 20), dtype=np.float32), "arr")
    if u < 0.9:
        return capture(Histogram([rng.random() for _ in range(50)], num_bins=8), "h")
    if u < 0.95:
        return float("nan")
    return None


def _event(rng: random.Random, i: int, ts: float) -> Any:
    keys = [f"k{j}" for j in range(rng.randint(1, 4))] + rng.sample(["a/b", "A/B", "x.y", "epoch"], 1)
    u = rng.random()
    if u < 0.45:
        step = rng.choice((None, None, i, i + 1, max(0, i - 3)))
        return Log(ts=ts, data={k: _value(rng) for k in keys}, step=step, commit=rng.choice((None, True, False)))
    if u < 0.7:
        n = rng.randint(1, 12)
        steps: list[int | None] = [None] * n if rng.random() < 0.5 else [i + j for j in range(n)]
        cols: list[Any] = []
        for _ in keys:
            c = rng.random()
            if c < 0.5:
                cols.append(np.array([rng.random() for _ in range(n)], dtype=np.float64))
            elif c < 0.7:
                cols.append(np.arange(n, dtype=np.int64))
            else:
                cols.append([_value(rng) for _ in range(n)])
        return LogBlock(keys=keys, ts=np.full(n, ts), step=steps, commit=[rng.choice((None, True)) for _ in range(n)],
                        cols=cols)
    if u < 0.78:
        return DefineMetric(name=rng.choice(("k0", "val/*", "epoch")), step_metric=rng.choice((None, "epoch")),
                            summary=rng.choice((None, "min,max", "mean,last", "none")))
    if u < 0.84:
        return Config(data={"lr": rng.random(), "nested": {"a": 1}})
    if u < 0.9:
        return Summary(data={"best": rng.random(), "k0": None})
    if u < 0.95:
        return Start(ts=ts, name="fuzz", config={"seed": i})
    return Finish(ts=ts, exit_code=rng.choice((0, 1)))


def corpus(rng: random.Random, n: int = 64) -> list[bytes]:
    """``n`` valid frames of a few runs and producers."""
    out: list[bytes] = []
    seqs: dict[tuple[str, str], int] = {}
    for i in range(n):
        run = f"r{rng.randint(0, 3)}"
        producer = f"p{rng.randint(0, 1)}"
        seq = seqs.get((run, producer), 0)
        events = [encode_event(_event(rng, i * 10 + j, 1_700_000_000.0 + i)) for j in range(rng.randint(1, 6))]
        seqs[(run, producer)] = seq + len(events)
        out.append(encode_frame_raw("fuzz", run, producer, seq, events))
    return out


# --- mutations -------------------------------------------------------------------------------------------------


def _raw_tree(data: bytes) -> Any:
    """msgpack bytes as a plain tree (ext types kept opaque), or None when they do not decode."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None


def _weird(rng: random.Random) -> Any:
    """A value of a random, often wrong, shape."""
    u = rng.randrange(16)
    if u == 0:
        return None
    if u == 1:
        return rng.choice((-1, 0, 1, 2**63 - 1, -(2**63), 2**64 - 1))
    if u == 2:
        return rng.choice((float("inf"), float("-inf"), float("nan"), -0.0, 1e308))
    if u == 3:
        return "x" * rng.choice((0, 1, 257, 70_000))
    if u == 4:
        return bytes(rng.randbytes(rng.randint(0, 40)))
    if u == 5:
        return [_weird(rng) for _ in range(rng.randint(0, 3))] if rng.random() < 0.7 else []
    if u == 6:
        return {str(rng.randint(0, 9)): 1, "k": [1, {"z": None}]}
    if u == 7:
        deep: Any = 1.0
        for _ in range(rng.choice((10, 40, 200, 2000))):
            deep = [deep] if rng.random() < 0.5 else {"d": deep}
        return deep
    if u == 8:
        return {"x" * rng.choice((255, 256, 257, 5000)): 1.0}
    if u == 9:
        return msgpack.ExtType(rng.choice((1, 2, 3, 99)), bytes(rng.randbytes(rng.randint(0, 30))))
    if u == 10:
        return msgpack.ExtType(1, msgpack.packb([rng.choice(("<f8", "<i4", "|O", "<c16", "bogus")),
                                                 [rng.randint(-1, 5)], bytes(rng.randbytes(8))]))
    if u == 11:
        return msgpack.ExtType(2, msgpack.packb([rng.choice(("histogram", "image", "nope")),
                                                 {"bins": [1, 2], "values": "x"}]))
    if u == 12:
        return True
    if u == 13:
        return {1: 2} if rng.random() < 0.5 else {None: 1}
    if u == 14:
        return "y" * (1 << 20) + "z" if rng.random() < 0.05 else "y"
    return rng.random()


def _nodes(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if len(path) >= 8:
        return out
    if isinstance(tree, dict):
        for k, v in list(tree.items())[:20]:
            out.extend(_nodes(v, (*path, k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree[:20]):
            out.extend(_nodes(v, (*path, i)))
    return out


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return tree


def _mutate_tree(rng: random.Random, tree: Any) -> Any:
    for _ in range(rng.randint(1, 3)):
        nodes = _nodes(tree)
        path = rng.choice(nodes)
        u = rng.random()
        if u < 0.6:
            tree = _set(tree, path, _weird(rng))
        elif u < 0.8 and path:
            parent = tree
            for p in path[:-1]:
                parent = parent[p]
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, list) and parent:
                parent.pop(path[-1] if path[-1] < len(parent) else -1)
        elif isinstance(tree, dict):
            tree[rng.choice(("v", "seq", "events", "extra", "k", "step", "data", "cols", "keys"))] = _weird(rng)
    return tree


def _pack(tree: Any) -> bytes | None:
    try:
        return cast("bytes", msgpack.packb(tree, use_bin_type=True))
    except Exception:  # deep nesting beyond msgpack's packer, or unpackable keys
        return None


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One mutant of a random seed frame."""
    data = rng.choice(seeds)
    u = rng.random()
    if u < 0.3:  # byte level
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(5)
            if not b:
                break
            i = rng.randrange(len(b))
            if op == 0:
                b[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                b[i] = rng.randrange(256)
            elif op == 2:
                del b[i:i + rng.randint(1, 16)]
            elif op == 3:
                b[i:i] = rng.randbytes(rng.randint(1, 16))
            else:
                b[i:i] = bytes([rng.choice((0xC1, 0xDC, 0xDD, 0xDE, 0xDF, 0xC7, 0xD4, 0x90, 0x80))])
        return bytes(b)
    if u < 0.4:  # truncated
        return data[: rng.randrange(len(data))]
    if u < 0.45:  # spliced
        other = rng.choice(seeds)
        return data[: rng.randrange(len(data))] + other[rng.randrange(len(other)):]
    if u < 0.5:  # random bytes
        return rng.randbytes(rng.randint(0, 200))
    tree = _raw_tree(data)
    if not isinstance(tree, dict):
        return data
    if u < 0.75 and isinstance(tree.get("events"), list) and tree["events"]:  # inside one event
        j = rng.randrange(len(tree["events"]))
        ev = _raw_tree(tree["events"][j])
        if ev is not None:
            packed = _pack(_mutate_tree(rng, ev))
            if packed is not None:
                tree["events"][j] = packed
        elif rng.random() < 0.5:
            tree["events"][j] = tree["events"][j][: rng.randrange(len(tree["events"][j]) + 1)]
    else:  # the frame map itself
        tree = _mutate_tree(rng, tree)
    packed = _pack(tree)
    return packed if packed is not None else data


# --- the driver ------------------------------------------------------------------------------------------------


class _NoState:
    """Stands in for the metadata store: every run starts fresh."""

    def load_states(self, keys: Any) -> dict[tuple[str, str], bytes]:
        return {}


@dataclass
class FuzzResult:
    frames: int = 0
    decoded: int = 0
    dead_lettered: int = 0
    dead_letters: int = 0
    commits: int = 0
    crashes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"frames={self.frames}, decoded={self.decoded}, frames_dead_lettered={self.dead_lettered}, "
                f"dead_letters={self.dead_letters}, commits={self.commits}, crashes={len(self.crashes)}")


def _new_processor(tmp: Path) -> PartitionProcessor:
    return PartitionProcessor(
        p=0, epoch=1, offset="0-0", names=Names("fuzz", 1), store=cast("MetaStore", _NoState()), data_dir=tmp,
        redis=cast("Any", None), limits=DEFAULT_LIMITS,
    )


def _commit_in_memory(proc: PartitionProcessor) -> None:
    """The in-memory half of a commit: rows into a segment table, state dumped and reloaded, info packed."""
    for key in sorted(proc.dirty):
        r = proc.runs[key]
        rows, _ = r.take_columnar()
        if rows:
            rows_to_table(rows, r.displays)
        again = RunAligner.load(r.dump())
        assert again.cursor == r.cursor, "dump/load changed the cursor"
        packb(r.info())
    proc.dirty.clear()
    proc.rejections.clear()
    proc.dlq.clear()


async def _drive(seed: int, n: int, tmp: Path, commit_every: int) -> FuzzResult:
    rng = random.Random(seed)
    seeds = corpus(rng)
    res = FuzzResult()
    proc = _new_processor(tmp)
    for i in range(n):
        raw = seeds[i % len(seeds)] if i % 10 == 0 else mutate(rng, seeds)
        res.frames += 1
        entry_id = f"{i + 1}-0"
        try:
            decode_frame(raw, DEFAULT_LIMITS)
            res.decoded += 1
        except SchemaError:
            pass
        except Exception:
            res.crashes.append(f"decode_frame, seed={seed}, frame {i}: {raw[:200]!r}\n{traceback.format_exc()}")
            continue
        before_dlq = len(proc.dlq)
        try:
            await proc.process([(entry_id.encode(), {FRAME_FIELD: raw})])
            if (i + 1) % commit_every == 0:
                _commit_in_memory(proc)
                res.commits += 1
                if len(proc.runs) > 50 or rng.random() < 0.1:
                    proc = _new_processor(tmp)
        except Exception:
            res.crashes.append(f"process, seed={seed}, frame {i}: {raw[:200]!r}\n{traceback.format_exc()}")
            proc = _new_processor(tmp)
            continue
        new_dlq = proc.dlq[before_dlq:]
        if any(f[b"raw"] == raw for _, f in new_dlq if b"raw" in f):
            res.dead_lettered += 1
        res.dead_letters += len(new_dlq)
    return res


def drive(seed: int, n: int, tmp: Path, commit_every: int = 200) -> FuzzResult:
    """Run ``n`` frames (every tenth a valid one, the rest mutants) through the decode and apply path."""
    worker_log = logging.getLogger("stepline.worker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)  # one warning per dead letter would drown the report
    errors = _Errors()  # the worker turns a decoder or aligner crash into an ERROR log and a dead letter
    worker_log.addHandler(errors)
    try:
        res = asyncio.run(_drive(seed, n, tmp, commit_every))
    finally:
        worker_log.setLevel(level)
        worker_log.removeHandler(errors)
    res.crashes.extend(errors.records)
    return res


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))
