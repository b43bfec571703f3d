"""Values into ``log()``: every call either refused at once with a :class:`SchemaError` naming the key, or
accepted and then stored exactly (read back through a real worker process and :class:`history.Api`). Shared by
``tests/integration/test_fuzz_log.py`` (a bounded sample) and ``bench/fuzz.py --target log``.

Each generated value comes with its own expectation, written here from docs/DESIGN.md §2-§3 (not from
``schemas.capture``): the wire value it must be stored as, or a refusal. Generated: floats (NaN payloads, ±inf,
-0.0, subnormals) and numpy floats of every width, ints up to uint64 and numpy ints of every width, bools, text with
lone surrogates and NUL, bytes, complex, datetime64/timedelta64, Decimal, sets, lists/tuples/dicts nested up to and
past the depth limit, numpy arrays of every dtype kind, shape and byte order (small, past the histogram threshold,
nested), objects with ``__array__`` (working and failing), media (histograms, tables, HTML, images, line plots),
nested dicts that flatten into dotted keys (and collide with literal ones), keys that are empty, reserved, too long,
not str, with NUL or surrogates or differing only by case, and ``step``/``commit`` arguments of every wrong type.

Accepted calls feed :class:`support.history_oracle.Oracle` (docs/DESIGN.md §2); after ``finish()`` (whose result
must be ok) every run's history, read with ``scan_history``, must equal the oracle's rows value for value (ints
exact unless the column is float64 somewhere in the run: then ``float(v)``), its rejection counts the oracle's,
and every value must render as strict JSON (what the read routes need).
"""

from __future__ import annotations

import fractions
import json
import logging
import random
import time
import traceback
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

import ingest
from history.formatting import plain
from history.query import Api, columns_of
from schemas import Histogram, Html, Image, SchemaError, Table, capture, plot
from support.frame_fuzz import FLOATS, INTS, STRINGS, json_culprit, same, segment_values
from support.fuzz_report import Findings
from support.history_oracle import Oracle
from support.worker_harness import WorkerFleet
from workers.metastore import MetaStore, sqlite_url

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_DEPTH = 32


class Refuse:
    """The expectation of a value ``log()`` must refuse (``why`` says what, for the report)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"Refuse({self.why})"


class ArrayLike:
    """Not an array, but has ``__array__`` (a tensor, a pandas column...)."""

    def __init__(self, arr: np.ndarray[Any, Any], broken: bool = False) -> None:
        self.arr, self.broken = arr, broken

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        if self.broken:
            raise RuntimeError("this tensor is on another device")
        return self.arr


# --- values with their expectations ------------------------------------------------------------------------------

_NP_FLOATS = (np.float16, np.float32, np.float64, np.longdouble)
_NP_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
_DTYPES = ("<f8", ">f8", "<f4", "<f2", "<i8", ">i4", "|i1", "|u1", "<u8", "|b1", "<f16", "<c16", "|O", "<U3",
           "|S3", "<M8[s]", "<m8[s]")


def _refused(parts: list[Any]) -> Refuse | None:
    return next((p for p in parts if isinstance(p, Refuse)), None)


def _array(rng: random.Random, d: int) -> tuple[Any, Any]:
    dtype = np.dtype(rng.choice(_DTYPES))
    n = rng.choice((0, 1, 3, 32, 33, 100)) if d == 0 else rng.choice((0, 2, 40))
    shape: tuple[int, ...] = (n,) if rng.random() < 0.8 else (2, max(1, n // 2))
    size = int(np.prod(shape))
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.array([rng.choice(FLOATS) for _ in range(size)], dtype=np.float64).astype(dtype).reshape(shape)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        arr = np.array([rng.choice((0, 1, int(info.min), int(info.max))) for _ in range(size)], dtype=dtype
                       ).reshape(shape)
    elif dtype.kind == "b":
        arr = np.array([rng.random() < 0.5 for _ in range(size)], dtype=dtype).reshape(shape)
    elif dtype.kind == "c":
        arr = np.full(shape, 1 + 2j, dtype=dtype)
    elif dtype.kind == "O":
        arr = np.empty(shape, dtype=object)
        arr.fill(1.5)
    elif dtype.kind in "US":
        arr = np.full(shape, "ab", dtype=dtype)
    else:
        arr = np.zeros(shape, dtype=dtype)
    if rng.random() < 0.1:
        wrapped: Any = ArrayLike(arr, broken=rng.random() < 0.3)
        if wrapped.broken:
            return wrapped, Refuse("__array__ raises")
    else:
        wrapped = arr
    if dtype.kind not in "biuf":
        if d == 0 and (dtype.kind == "U" or (dtype.kind == "S" and arr.size == 0)):
            return wrapped, arr.tolist()  # strings: logged as a list of str (bytes are refused)
        return wrapped, Refuse(f"array of {dtype}")
    if d >= MAX_DEPTH:
        return wrapped, Refuse("too deep")
    if arr.size > 32 and d == 0:
        return wrapped, capture(arr)  # a histogram (W&B's rule); its bins are the SDK's business
    if dtype.kind == "f" and dtype.itemsize > 8:
        return wrapped, Refuse(f"array of {dtype}")  # longdouble: no JSON, msgpack or Arrow form
    return wrapped, np.array(arr, dtype=arr.dtype.newbyteorder("="), copy=True)


def _media(rng: random.Random, d: int) -> tuple[Any, Any]:
    if d >= MAX_DEPTH:
        return Histogram([1.0, 2.0], num_bins=2), Refuse("too deep")
    u = rng.randrange(6)
    if u == 0:
        obj: Any = Histogram([rng.choice(FLOATS[7:]) for _ in range(20)], num_bins=rng.randint(1, 16))
    elif u == 1:
        obj = Table(columns=["a", "b"], data=[[rng.choice(FLOATS), "x"], [1, None]])
    elif u == 2:
        obj = Html(rng.choice(("<b>hi</b>", "ünï 🎉", "")))
    elif u == 3:
        obj = Image(np.full((2, 3, 3), rng.randrange(256), dtype=np.uint8), caption=rng.choice((None, "c", "ü")))
    elif u == 4:
        obj = plot.line_series([0, 1, 2], [[1.0, 2.0, rng.choice(FLOATS)]], keys=["l"], title="t")
    else:
        obj = Histogram(np_histogram=([1, 2], [0.0, 0.5, 1.0]))
    return obj, capture(obj)


def gen_value(rng: random.Random, d: int = 0) -> tuple[Any, Any]:
    """A value to log inside ``d`` containers, and what it must be stored as (a :class:`Refuse` if refused)."""
    u = rng.random()
    if d > 3:
        u *= 0.5
    if u < 0.12:
        v = rng.choice(FLOATS)
        return v, v
    if u < 0.17:
        t = rng.choice(_NP_FLOATS)
        with np.errstate(over="ignore"):
            v = t(rng.choice(FLOATS))
        return v, float(v)
    if u < 0.27:
        i = rng.choice(INTS)
        return i, i if INT64_MIN <= i <= INT64_MAX else Refuse("int outside int64")
    if u < 0.31:
        t = rng.choice(_NP_INTS)
        info = np.iinfo(t)
        i = rng.choice((0, int(info.max), int(info.min)))
        return t(i), i if INT64_MIN <= i <= INT64_MAX else Refuse("uint64 outside int64")
    if u < 0.36:
        b = rng.random() < 0.5
        return (np.bool_(b), b) if rng.random() < 0.3 else (b, b)
    if u < 0.44:
        s = rng.choice(STRINGS)
        ok = "\ud800" not in s and "\udfff" not in s and "\udc80" not in s
        return s, s if ok else Refuse("lone surrogate")
    if u < 0.46:
        return None, None
    if u < 0.5:
        odd: list[tuple[Any, str]] = [(b"bytes", "bytes"), (1 + 2j, "complex"), (np.complex64(1), "complex"),
                                      (np.datetime64("2024-01-01"), "datetime64"), (np.timedelta64(5, "s"), "td64"),
                                      (Decimal("1.5"), "Decimal"), (fractions.Fraction(1, 3), "Fraction"),
                                      ({1, 2}, "set"), (object(), "object"), (bytearray(b"x"), "bytearray"),
                                      (range(3), "range")]
        v, why = rng.choice(odd)
        return v, Refuse(why)
    if u < 0.62:
        if d >= MAX_DEPTH:
            return [1.0], Refuse("too deep")
        items = [gen_value(rng, d + 1) for _ in range(rng.randint(0, 4))]
        v = [x for x, _ in items] if rng.random() < 0.8 else tuple(x for x, _ in items)
        exp = [e for _, e in items]
        return v, _refused(exp) or exp
    if u < 0.68 and d > 0:
        if d >= MAX_DEPTH:
            return {"a": 1}, Refuse("too deep")
        out: dict[Any, Any] = {}
        exp_d: dict[str, Any] = {}
        bad: Refuse | None = None
        for _ in range(rng.randint(0, 3)):
            k: Any = rng.choice(("a", "ü", "", "x.y", "\x00", "K")) if rng.random() < 0.9 else rng.choice(
                (1, None, "\ud800", ("t",)))
            v, e = gen_value(rng, d + 1)
            out[k] = v
            exp_d[k] = e
            if type(k) is not str:
                bad = bad or Refuse("a non-str key inside a value")
            elif "\ud800" in k:
                bad = bad or Refuse("a surrogate key inside a value")
        cls = rng.choice((dict, dict, OrderedDict))
        return cls(out), bad or _refused(list(exp_d.values())) or exp_d
    if u < 0.78:
        return _array(rng, d)
    if u < 0.84:
        return _media(rng, d)
    if u < 0.88:
        depth = rng.choice((MAX_DEPTH - d - 1, MAX_DEPTH - d, MAX_DEPTH - d + 1, 200))
        v: Any = 1.5
        for _ in range(max(0, depth)):
            v = [v]
        e: Any = 1.5
        for _ in range(max(0, depth)):
            e = [e]
        return v, e if d + depth <= MAX_DEPTH else Refuse("too deep")
    if u < 0.885:
        return "x" * ((1 << 20) + 1), Refuse("over 1 MiB")
    if u < 0.89:
        return ["x" * (600 << 10)] * 2, Refuse("over 1 MiB encoded")
    v = rng.random()
    return v, v


KEYS = ["loss", "LOSS", "Loss", "acc", "val/acc", "ünï/κλειδί 🎉", "x" * 256, "a.b", "ß", "epoch", "i", "s"]
BAD_KEYS: list[tuple[Any, str]] = [("", "empty key"), ("_step", "reserved"), ("_runtime", "reserved"),
                                   ("a\x00b", "NUL in a key"), ("\ud800k", "surrogate key"),
                                   ("x" * 257, "key too long"), (1, "int key"), (None, "None key"),
                                   (("t",), "tuple key")]


@dataclass
class Call:
    data: Any
    step: Any
    commit: Any
    expect: dict[str, Any] | Refuse  # the flattened wire values, or why the call is refused
    keys: list[str]  # keys a refusal may name


def gen_call(rng: random.Random, cursor: int) -> Call:
    data: dict[Any, Any] = {}
    flat: dict[str, Any] = {}
    why: Refuse | None = None
    names: list[str] = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 5))):
        u = rng.random()
        if u < 0.08:
            k, reason = rng.choice(BAD_KEYS)
            data[k] = 1.0
            why = why or Refuse(reason)
            names.append(str(k))
            continue
        key = rng.choice(KEYS)
        v, e = gen_value(rng)
        if u < 0.15 and "." not in key:  # a nested dict: flattened into a dotted key
            inner = rng.choice(("b", "c"))
            if key in data and not isinstance(data[key], dict):
                continue
            data.setdefault(key, {})[inner] = v
            flat[f"{key}.{inner}"] = e
            names.append(f"{key}.{inner}")
            continue
        if 0.15 <= u < 0.155:  # a literal dotted key and the nested dict that flattens to it, in one call
            data["q.r"] = v
            data["q"] = {"r": v}
            why = why or Refuse("key collision")
            names.append("q.r")
            continue
        if isinstance(data.get(key), dict):
            continue
        data[key] = v
        flat[key] = e
        names.append(key)
    for k, e in flat.items():
        if isinstance(e, Refuse):
            why = why or e
        if len(k) > 256:
            why = why or Refuse("key too long")
    u = rng.random()
    step: Any = None
    if u < 0.25:
        step = cursor + rng.choice((0, 1, 3))
    elif u < 0.3:
        step = max(0, cursor - rng.randint(1, 3))
    elif u < 0.33:
        step = np.int64(cursor + 1)
    elif u < 0.36:
        step = rng.choice((-1, 2**63, 1.5, "3", True, None))
        if step is not None:
            why = why or Refuse(f"step {step!r}")
    commit: Any = rng.choice((None, None, None, True, False))
    if rng.random() < 0.03:
        commit = rng.choice((np.bool_(True), 1, "yes"))
        if not isinstance(commit, np.bool_):
            why = why or Refuse(f"commit {commit!r}")
    if rng.random() < 0.005:
        data = rng.choice(([("a", 1)], None, "a=1"))
        why = Refuse("data is not a dict")
    return Call(data, step, commit, why or flat, names)


def _plain_step(step: Any) -> int | None:
    return None if step is None else int(step)


def _plain_commit(commit: Any) -> bool | None:
    return None if commit is None else bool(commit)


# --- the driver ---------------------------------------------------------------------------------------------------


@dataclass
class LogResult:
    seed: int = 0
    calls: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # by expected reason
    refused_codes: Counter[str] = field(default_factory=Counter)  # by SchemaError code
    runs: int = 0
    runs_checked: int = 0
    runs_checked_in_segments: int = 0  # read back from the segments because scan_history failed
    rows_checked: int = 0
    values_checked: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    crashes: Findings = field(default_factory=Findings)
    wall_s: float = 0.0

    def line(self) -> str:
        return (f"calls={self.calls}, accepted={self.accepted}, refused={sum(self.refused.values())}, "
                f"runs={self.runs}, runs_checked={self.runs_checked}, rows_checked={self.rows_checked}, "
                f"crashes={len(self.crashes)}")

    def merge(self, other: LogResult) -> None:
        for name in ("calls", "accepted", "runs", "runs_checked", "runs_checked_in_segments", "rows_checked",
                     "values_checked", "wall_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.refused.update(other.refused)
        self.refused_codes.update(other.refused_codes)
        self.rejections.update(other.rejections)
        self.crashes.merge(other.crashes)


@dataclass
class _Run:
    project: str
    id: str
    oracle: Oracle = field(default_factory=Oracle)


def _names_key(e: SchemaError, keys: list[str]) -> bool:
    text = str(e)
    return any(e.key == k or k[:60] in text or repr(k)[:60] in text for k in keys)


def one_call(run: ingest.Run, r: _Run, call: Call, res: LogResult, where: str) -> None:
    """``run.log`` one call and check it against its expectation (a finding in ``res`` when it differs)."""
    res.calls += 1
    try:
        run.log(call.data, step=call.step, commit=call.commit)
    except SchemaError as e:
        res.refused_codes[e.code] += 1
        if not isinstance(call.expect, Refuse):
            res.crashes.add(f"[log_refused_a_storable_value:{e.code}] {where}: {call.data!r:.300} step={call.step!r} "
                            f"commit={call.commit!r}: {e}")
            return
        res.refused[call.expect.why] += 1
        step_ok = call.step is None or (type(call.step) in (int, np.int64) and 0 <= call.step <= INT64_MAX)
        commit_ok = call.commit is None or type(call.commit) in (bool, np.bool_)
        value_level = call.expect.why != "data is not a dict" and step_ok and commit_ok
        if value_level and call.keys and not _names_key(e, call.keys):
            res.crashes.add(f"[refusal_does_not_name_the_key:{e.code}] {where}: keys {call.keys!r:.200}: {e}")
        return
    except Exception as e:
        res.crashes.add(f"[log_raised:{type(e).__name__}] {where}: {call.data!r:.300}\n{traceback.format_exc()}")
        return
    if isinstance(call.expect, Refuse):
        res.crashes.add(f"[log_accepted:{call.expect.why}] {where}: {call.data!r:.300} step={call.step!r} "
                        f"commit={call.commit!r}")
        return
    res.accepted += 1
    r.oracle.log(0.0, call.expect, _plain_step(call.step), _plain_commit(call.commit))


def check_run(api: Api, r: _Run, res: LogResult, where: str) -> None:
    """The run's history as stored equals the oracle's rows; rejection counts agree; values render as JSON.

    Read with ``scan_history``; when that fails (a finding of its own), the rows are compared as the segments
    hold them, so what was stored is still checked."""
    view = api.run(f"{r.project}/{r.id}")
    o = r.oracle
    assert view.state == "finished", f"[run_state] {where}: {view.state}"
    rej = Counter(x[0] for x in o.rejections)
    assert dict(view.rejected) == dict(rej), f"[rejections] {where}: stored {view.rejected}, oracle {dict(rej)}"
    # One column per stored field (the kind split), as the oracle keeps them: a key logged with several kinds is
    # checked kind by kind (W&B's one-column row shape is checked against W&B itself in tests/compat).
    labels = {c.label: c.field for c in columns_of(view.info, split_kinds=True)}
    try:
        rows = [(g["_step"], {labels.get(k, k): v for k, v in g.items() if k not in ("_step", "_timestamp",
                                                                                    "_runtime")})
                for g in view.scan_history(page_size=500, split_kinds=True)]
    except Exception:
        res.crashes.add(f"[read_failed] {where}\n{traceback.format_exc()}")
        store = MetaStore(sqlite_url(api.data_dir))
        try:
            rows = [(step, values) for step, _ts, _rt, values in segment_values(api.data_dir, store, r.project, r.id)]
        finally:
            store.close()
        res.runs_checked_in_segments += 1
    assert len(rows) == len(o.rows), f"[row_count] {where}: {len(rows)} rows stored, oracle {len(o.rows)}"
    for (got_step, values), (step, _ts, _rt, want) in zip(rows, o.rows, strict=True):
        assert got_step == step, f"[steps] {where}: stored step {got_step}, oracle {step}"
        assert values.keys() == want.keys(), (
            f"[row_keys] {where} step {step}: stored {sorted(values)!r:.300}, oracle {sorted(want)!r:.300}")
        for k, w in want.items():
            g = values[k]
            # Each value as logged: an int stays an int (exactly) also where its column holds floats.
            ok = type(g) is int and g == w if type(w) is int else same(_wire(w), g)
            assert ok, f"[value] {where} step {step} {k!r}: stored {g!r:.200}, logged {w!r:.200}"
            try:
                json.dumps(plain(g), allow_nan=False)
            except Exception:  # a finding of its own; the rest of the run is still checked
                res.crashes.add(f"[not_json:{json_culprit(g)}] {where} step {step} {k!r}: {g!r:.200}")
            res.values_checked += 1
    res.runs_checked += 1
    res.rows_checked += len(rows)


def _wire(v: Any) -> Any:
    """An expected value as the reader gives it back: tuples are lists; dicts and lists element by element."""
    if isinstance(v, tuple | list):
        return [_wire(x) for x in v]
    if isinstance(v, dict):
        return {k: _wire(x) for k, x in v.items()}
    return v


def drive_log(seed: int, n: int, base: Path, redis_url: str, namespace: str, calls_per_run: int = 400,
              check_every: int = 1, max_seconds: float | None = None) -> LogResult:
    """``n`` ``log()`` calls (seeded) into runs of ``calls_per_run`` calls through real Redis and one worker process;
    then every ``check_every``-th run is read back and compared with its oracle."""
    rng = random.Random(seed)
    res = LogResult(seed=seed)
    data_dir = base / "data"
    fleet = WorkerFleet(redis_url=redis_url, namespace=namespace, data_dir=data_dir, log_dir=base / "logs",
                        commit_interval_s=0.2)
    t0 = time.monotonic()
    sdk_log = logging.getLogger("ingest")
    level = sdk_log.level
    sdk_log.setLevel(logging.ERROR)  # "logged step below the current step" warnings are expected here
    runs: list[_Run] = []
    try:
        fleet.start()
        i = 0
        while i < n:
            r = _Run("fz", f"run{seed}-{len(runs)}")
            if rng.random() < 0.02:
                _hostile_init(rng, redis_url, namespace, data_dir, res, f"seed={seed} init {len(runs)}")
            run = ingest.init(project=r.project, id=r.id, redis_url=redis_url, namespace=namespace,
                              data_dir=data_dir / "client", settings={"partitions": 16})
            runs.append(r)
            res.runs += 1
            for _ in range(min(calls_per_run, n - i)):
                try:
                    call = gen_call(rng, run.step)
                except Exception as e:  # a bug of the generator: reported, and the campaign goes on
                    res.crashes.add(f"[fuzzer_error:{type(e).__name__}] seed={seed} call {i}\n"
                                    f"{traceback.format_exc()}")
                    i += 1
                    continue
                one_call(run, r, call, res, f"seed={seed} {r.id} call {i}")
                i += 1
                if rng.random() < 0.01:
                    _config_or_summary(rng, run, res, f"seed={seed} {r.id} call {i}")
            fin = run.finish(timeout=60)
            if not fin.ok:
                res.crashes.add(f"[finish_not_ok] seed={seed} {r.id}: {fin}")
            r.oracle.finish(0.0)
            if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                break
        _wait_committed(data_dir, runs, fleet, res, seed)
        with Api(data_dir=data_dir) as api:
            for j, r in enumerate(runs):
                if j % check_every:
                    continue
                try:
                    check_run(api, r, res, f"seed={seed} {r.id}")
                except AssertionError:
                    res.crashes.add(traceback.format_exc())
                except Exception:
                    res.crashes.add(f"[read_failed] seed={seed} {r.id}\n{traceback.format_exc()}")
        if any(not w.alive() for w in fleet.procs):
            res.crashes.add(f"[worker_died] seed={seed}\n{fleet.logs()}")
    finally:
        sdk_log.setLevel(level)
        fleet.close()
    res.wall_s = time.monotonic() - t0
    return res


def _wait_committed(data_dir: Path, runs: list[_Run], fleet: WorkerFleet, res: LogResult, seed: int) -> None:
    """Until every run is finished with the oracle's row count (or 5 minutes pass)."""
    deadline = time.monotonic() + 300
    todo = {(r.project, r.id): r for r in runs}
    while todo and time.monotonic() < deadline:
        time.sleep(0.5)
        with Api(data_dir=data_dir) as api:
            if not api._ready():
                continue
            for v in api.runs("fz"):
                r = todo.get((v.project, v.id))
                if r is not None and v.state == "finished" and v.rows == len(r.oracle.rows):
                    for reason, n in v.rejected.items():
                        res.rejections[reason] += n
                    del todo[(v.project, v.id)]
    for key in list(todo)[:5]:
        res.crashes.add(f"[not_committed] seed={seed} {key[0]}/{key[1]}: not finished with the oracle's rows "
                        f"within 5 minutes\n{fleet.logs()[-3000:]}")


def _hostile_init(rng: random.Random, redis_url: str, namespace: str, data_dir: Path, res: LogResult,
                  where: str) -> None:
    # (An empty project or id is W&B's "not given": the default project, a random id.)
    project, run_id = rng.choice((("a/b", "r"), ("p\x00", "r"), ("\ud800", "r"), ("p", "r/x"), ("p", " r"),
                                  ("p", "x" * 129), ("..", "r\x00"), ("p", "\udcff")))
    try:
        run = ingest.init(project=project, id=run_id, redis_url=redis_url, namespace=namespace,
                          data_dir=data_dir / "client", settings={"partitions": 16})
    except SchemaError:
        res.refused["bad run name"] += 1
        return
    except Exception as e:
        res.crashes.add(f"[init_raised:{type(e).__name__}] {where}: {project!r}/{run_id!r}: {e}")
        return
    run.finish(timeout=10)
    res.crashes.add(f"[init_accepted_a_bad_name] {where}: {project!r}/{run_id!r}")


def _config_or_summary(rng: random.Random, run: ingest.Run, res: LogResult, where: str) -> None:
    v, e = gen_value(rng)
    target = run.config if rng.random() < 0.5 else run.summary
    try:
        target[rng.choice(("k", "ü", "lr"))] = v
    except SchemaError:
        if not isinstance(e, Refuse):
            res.crashes.add(f"[config_refused_a_storable_value] {where}: {v!r:.200}")
        return
    except Exception as ex:
        res.crashes.add(f"[config_raised:{type(ex).__name__}] {where}: {v!r:.200}: {ex}")
        return
    if isinstance(e, Refuse):
        res.crashes.add(f"[config_accepted:{e.why}] {where}: {v!r:.200}")


__all__ = ["LogResult", "drive_log", "gen_call", "gen_value"]
