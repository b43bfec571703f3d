"""The wire format: a versioned msgpack frame holding a batch of events of one run from one producer.

A frame is one stream entry (field ``f``)::

    {"v": 1, "project": str, "run": str, "producer": str, "seq": int, "events": [bytes, ...]}

``producer`` is a random id per client ``Run`` object and ``seq`` the sequence number of the frame's first
event; sequence numbers are contiguous per producer, so a worker skips a frame it has already applied by
``(producer, seq)``. Each event is itself msgpack-encoded bytes: its size is known without decoding it, and a
malformed or oversized event is dead-lettered alone while the rest of the frame is applied.

Event kinds (field ``k``): ``start``, ``log``, ``logs``, ``define_metric``, ``config``, ``summary``, ``meta`` (the
run's ``group``, ``job_type``, ``tags`` and ``notes`` changed while it is live; ``start`` carries their first values
in its ``meta`` field, :func:`check_run_meta`), ``finish``, ``warning`` (a problem the client found after ``log()``
returned, e.g. calls it had to drop; the worker adds it to the run's warnings). ``logs`` is the column-wise form of
consecutive ``log`` calls with the same keys: the keys once, then one column per key (a float64/int64 numpy array
when the column allows, else a list), so a worker can decode and align a whole block with vectorised code. A
``logs`` block of ``n`` calls counts as one event (one ``seq``).

:func:`decode_frame` validates the envelope strictly and every event it can; a bad event comes back as a
:class:`BadEvent` in place (``strict=True`` raises instead). Anything malformed raises :class:`SchemaError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .errors import LimitError, SchemaError
from .keys import check_key
from .limits import DEFAULT_LIMITS, Limits
from .values import Media, check_nesting, check_text, kind_of, packb, unpackb, values_equal

FRAME_VERSION = 1
#: The one field of a stream entry that holds the frame bytes.
FRAME_FIELD = b"f"
#: Highest step a call may name: ``_step`` is an int64 column (the cursor after it still packs as a uint64).
MAX_STEP = (1 << 63) - 1
#: Highest first sequence number of a frame: ``seq + len(events)`` must still pack as an int64.
MAX_SEQ = 1 << 62
SUMMARY_MODES = frozenset({"min", "max", "mean", "first", "last", "none"})


def _req(m: dict[str, Any], name: str, types: type | tuple[type, ...], what: str) -> Any:
    if name not in m:
        raise SchemaError(f"{what} lacks field {name!r}", code="bad_event")
    v = m[name]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in _as_tuple(types)):
        raise SchemaError(f"{what} field {name!r} has type {type(v).__name__}", code="bad_event")
    return v


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _opt(m: dict[str, Any], name: str, types: type | tuple[type, ...], what: str) -> Any:
    if m.get(name) is None:
        return None
    return _req(m, name, types, what)


def _check_value(v: Any, key: str, limits: Limits) -> None:
    """A received value: a wire value (``kind_of`` raises otherwise) nested no deeper than the limit."""
    t = type(v)
    if t is float or t is int or t is str or t is bool or v is None:  # the common case: nothing to walk
        return
    kind_of(v)
    check_nesting(v, limits, key)


def _check_data(data: Any, what: str, limits: Limits) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SchemaError(f"{what} data must be a map", code="bad_event")
    for k, v in data.items():
        _check_value(v, check_key(k, limits), limits)
    return data


def _check_config(cfg: dict[str, Any], what: str, limits: Limits) -> dict[str, Any]:
    """Config values are captured like logged values (any str key, no key rules): the same nesting limit."""
    for k, v in cfg.items():
        if type(k) is not str:
            raise SchemaError(f"{what} keys must be str", code="bad_event")
        _check_value(v, k, limits)
    return cfg


class Event:
    """Base of the event value objects; equality is structural (NaN equals NaN)."""

    KIND: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and type(self) is type(other) and values_equal(self.to_wire(), other.to_wire())

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False, slots=True)
class Start(Event):
    KIND: ClassVar[str] = "start"
    ts: float
    name: str | None = None
    resume: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: The run's metadata from ``init`` (group, job_type, tags, notes: :func:`check_run_meta`); absent when empty.
    meta: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        out = {"k": self.KIND, "ts": self.ts, "name": self.name, "resume": self.resume, "config": self.config}
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass(eq=False, slots=True)
class RunMeta(Event):
    """The run's metadata changed while it is live (``run.tags = ...``, ``run.notes``, ``run.group``,
    ``run.job_type``): the fields given replace the stored ones (``None`` clears one)."""

    KIND: ClassVar[str] = "meta"
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.KIND, "data": self.data}


@dataclass(eq=False, slots=True)
class Log(Event):
    KIND: ClassVar[str] = "log"
    ts: float
    data: dict[str, Any]
    step: int | None = None
    commit: bool | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.KIND, "ts": self.ts, "step": self.step, "commit": self.commit, "data": self.data}


@dataclass(eq=False, slots=True)
class LogBlock(Event):
    """``n`` consecutive log calls with the same keys, column-wise. ``cols[j][i]`` is key ``j`` of call ``i``."""

    KIND: ClassVar[str] = "logs"
    keys: list[str]
    ts: list[float] | np.ndarray[Any, Any]
    step: list[int | None]
    commit: list[bool | None]
    cols: list[list[Any] | np.ndarray[Any, Any]]

    def __len__(self) -> int:
        return len(self.step)

    def to_wire(self) -> dict[str, Any]:
        return {
            "k": self.KIND,
            "keys": self.keys,
            "ts": self.ts,
            "step": self.step,
            "commit": self.commit,
            "cols": self.cols,
        }

    def calls(self) -> list[Log]:
        """The block as individual log calls (the general path; the columnar path must agree with it)."""
        cols = [c.tolist() if isinstance(c, np.ndarray) else c for c in self.cols]
        ts = self.ts.tolist() if isinstance(self.ts, np.ndarray) else self.ts
        return [
            Log(ts=ts[i], data={k: cols[j][i] for j, k in enumerate(self.keys)}, step=self.step[i],
                commit=self.commit[i])
            for i in range(len(self.step))
        ]


@dataclass(eq=False, slots=True)
class DefineMetric(Event):
    KIND: ClassVar[str] = "define_metric"
    name: str
    step_metric: str | None = None
    summary: str | None = None
    hidden: bool = False
    goal: str | None = None
    step_sync: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {
            "k": self.KIND,
            "name": self.name,
            "step_metric": self.step_metric,
            "summary": self.summary,
            "hidden": self.hidden,
            "goal": self.goal,
            "step_sync": self.step_sync,
        }


@dataclass(eq=False, slots=True)
class Config(Event):
    KIND: ClassVar[str] = "config"
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.KIND, "data": self.data}


@dataclass(eq=False, slots=True)
class Summary(Event):
    """Explicit summary updates (``run.summary[k] = v``); a ``None`` value removes the key."""

    KIND: ClassVar[str] = "summary"
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.KIND, "data": self.data}


@dataclass(eq=False, slots=True)
class Finish(Event):
    KIND: ClassVar[str] = "finish"
    ts: float
    exit_code: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.KIND, "ts": self.ts, "exit_code": self.exit_code}


#: Longest client warning message, in characters.
MAX_WARNING_CHARS = 1000


@dataclass(eq=False, slots=True)
class ClientWarning(Event):
    """A problem the client could not raise in the caller (calls it had to drop while packing them); the worker
    adds ``message`` to the run's warnings, so the loss is visible next to the run, not only in a client log."""

    KIND: ClassVar[str] = "warning"
    ts: float
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.KIND, "ts": self.ts, "message": self.message}


@dataclass(eq=False, slots=True)
class BadEvent(Event):
    """An event that failed to decode or validate; the worker dead-letters it with ``error.code``."""

    KIND: ClassVar[str] = "bad"
    raw: bytes
    error: SchemaError

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.KIND, "raw": self.raw, "error": str(self.error)}


AnyEvent = Start | Log | LogBlock | DefineMetric | Config | Summary | Finish | ClientWarning | RunMeta

#: The run metadata ``init`` takes besides the config (W&B's names), and their limits.
META_FIELDS = ("group", "job_type", "tags", "notes")
MAX_META_CHARS = 256  # group, job_type, each tag
MAX_NOTES_CHARS = 65_536
MAX_TAGS = 1000


def _meta_text(v: Any, what: str, most: int) -> str:
    if type(v) is not str:
        raise SchemaError(f"{what} must be a str, got {type(v).__name__}", code="bad_meta")
    if len(v) > most:
        raise SchemaError(f"{what} is at most {most} characters, got {len(v)}", code="bad_meta")
    if "\x00" in v:
        raise SchemaError(f"{what} must not contain NUL", code="bad_meta")
    check_text(v, what)
    return v


def check_run_meta(meta: Any) -> dict[str, Any]:
    """Validate run metadata: ``group``, ``job_type`` and ``notes`` are str (or None: cleared), ``tags`` a list of
    distinct str (order kept). Returns it with tags as a list; raises :class:`SchemaError` (``bad_meta``) naming
    the field."""
    if not isinstance(meta, dict):
        raise SchemaError("run metadata must be a map", code="bad_meta")
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k not in META_FIELDS:
            raise SchemaError(f"unknown run metadata field {k!r:.40} (known: {', '.join(META_FIELDS)})",
                              code="bad_meta")
        if v is None:
            out[k] = None
        elif k == "tags":
            if isinstance(v, str) or not isinstance(v, list | tuple):
                raise SchemaError(f"tags must be a list of str, got {type(v).__name__}", code="bad_meta")
            if len(v) > MAX_TAGS:
                raise SchemaError(f"a run has at most {MAX_TAGS} tags, got {len(v)}", code="bad_meta")
            out[k] = list(dict.fromkeys(_meta_text(t, "a tag", MAX_META_CHARS) for t in v))
        else:
            out[k] = _meta_text(v, k, MAX_NOTES_CHARS if k == "notes" else MAX_META_CHARS)
    return out


def _flag(m: dict[str, Any], name: str, default: bool) -> bool:
    v = m.get(name)
    if v is None:
        return default
    if type(v) is not bool:  # never bool(v): an array has no truth value
        raise SchemaError(f"{name} must be a bool, got {type(v).__name__}", code="bad_event")
    return v


def _num(v: Any, what: str) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    raise SchemaError(f"{what} must be a number, got {type(v).__name__}", code="bad_event")


def decode_event(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> AnyEvent:
    """Decode and validate one event's bytes."""
    if len(raw) > limits.max_event_bytes:
        raise LimitError(f"event is {len(raw)} bytes, the limit is {limits.max_event_bytes}", code="event_too_large")
    m = unpackb(raw, limits)
    if not isinstance(m, dict):
        raise SchemaError("an event must be a map", code="bad_event")
    k = m.get("k")
    if type(k) is not str:  # compared with str below: an array here would make ``==`` elementwise
        raise SchemaError(f"unknown event kind {k!r:.40}", code="unknown_event")
    if k == "log":
        step = _opt(m, "step", int, "log")
        if step is not None and not 0 <= step <= MAX_STEP:
            raise SchemaError(f"step must be within 0..{MAX_STEP}, got {step}", code="bad_step")
        return Log(
            ts=_num(m.get("ts"), "log ts"),
            data=_check_data(m.get("data"), "log", limits),
            step=step,
            commit=_opt(m, "commit", bool, "log"),
        )
    if k == "logs":
        return _decode_block(m, limits)
    if k == "start":
        cfg = m.get("config")
        cfg = {} if cfg is None else cfg
        if not isinstance(cfg, dict):
            raise SchemaError("start config must be a map", code="bad_event")
        name = _opt(m, "name", str, "start")
        if name is not None:
            check_run_name(name)
        meta = m.get("meta")
        return Start(
            ts=_num(m.get("ts"), "start ts"),
            name=name,
            resume=_opt(m, "resume", str, "start"),
            config=_check_config(cfg, "start config", limits),
            meta={} if meta is None else check_run_meta(meta),
        )
    if k == "define_metric":
        name = _req(m, "name", str, "define_metric")
        if not name or len(name) > limits.max_key_length or "\x00" in name:
            raise SchemaError(f"bad metric name {name!r:.80}", code="bad_event")
        step_metric = _opt(m, "step_metric", str, "define_metric")
        if step_metric is not None and "\x00" in step_metric:
            raise SchemaError(f"bad step metric name {step_metric!r:.80}", code="bad_event")
        summary = _opt(m, "summary", str, "define_metric")
        if summary is not None:
            bad = {s.strip() for s in summary.split(",") if s.strip()} - SUMMARY_MODES
            if bad:
                raise SchemaError(f"unknown summary modes {sorted(bad)}", code="bad_event")
        goal = _opt(m, "goal", str, "define_metric")
        if goal is not None and goal not in ("minimize", "maximize"):
            raise SchemaError(f"goal must be minimize or maximize, got {goal!r}", code="bad_event")
        return DefineMetric(
            name=name,
            step_metric=step_metric,
            summary=summary,
            hidden=_flag(m, "hidden", False),
            goal=goal,
            step_sync=_flag(m, "step_sync", True),
        )
    if k == "config":
        data = m.get("data")
        if not isinstance(data, dict):
            raise SchemaError("config data must be a map with str keys", code="bad_event")
        return Config(data=_check_config(data, "config data", limits))
    if k == "summary":
        data = m.get("data")
        if not isinstance(data, dict):
            raise SchemaError("summary data must be a map", code="bad_event")
        for key, v in data.items():
            _check_value(v, check_key(key, limits), limits)
        return Summary(data=data)
    if k == "finish":
        code = m.get("exit_code", 0)
        if type(code) is not int:
            raise SchemaError("finish exit_code must be an int", code="bad_event")
        return Finish(ts=_num(m.get("ts"), "finish ts"), exit_code=code)
    if k == "meta":
        return RunMeta(data=check_run_meta(m.get("data")))
    if k == "warning":
        message = _req(m, "message", str, "warning")
        if len(message) > MAX_WARNING_CHARS:
            raise SchemaError(f"a warning is at most {MAX_WARNING_CHARS} characters", code="bad_event")
        return ClientWarning(ts=_num(m.get("ts"), "warning ts"), message=message)
    raise SchemaError(f"unknown event kind {k!r:.40}", code="unknown_event")


def _decode_block(m: dict[str, Any], limits: Limits) -> LogBlock:
    keys = _req(m, "keys", list, "logs")
    steps = _req(m, "step", list, "logs")
    commits = _req(m, "commit", list, "logs")
    ts = m.get("ts")
    cols = _req(m, "cols", list, "logs")
    n = len(steps)
    if not isinstance(ts, list | np.ndarray) or len(ts) != n or len(commits) != n or len(cols) != len(keys):
        raise SchemaError("logs block: ts, step, commit and cols lengths disagree", code="bad_event")
    if isinstance(ts, np.ndarray):
        if ts.dtype.kind != "f" or ts.ndim != 1:
            raise SchemaError("logs block: ts must be float", code="bad_event")
    elif not all(type(t) is float or type(t) is int for t in ts):
        raise SchemaError("logs block: ts must be numbers", code="bad_event")
    for s in steps:
        if s is not None and (type(s) is not int or not 0 <= s <= MAX_STEP):
            raise SchemaError(f"logs block: bad step {s!r:.40}", code="bad_step")
    for c in commits:
        if c is not None and type(c) is not bool:
            raise SchemaError(f"logs block: bad commit {c!r:.40}", code="bad_event")
    seen: set[str] = set()
    for key in keys:
        check_key(key, limits)
        if key in seen:
            raise SchemaError(f"logs block: key {key!r} twice", code="key_collision")
        seen.add(key)
    for key, col in zip(keys, cols, strict=True):
        if isinstance(col, np.ndarray):
            if col.ndim != 1 or col.dtype.kind not in "fi" or len(col) != n:
                raise SchemaError("logs block: array columns must be 1-d float or int of length n", code="bad_event")
        elif isinstance(col, list):
            if len(col) != n:
                raise SchemaError("logs block: column length differs from step count", code="bad_event")
            for v in col:
                _check_value(v, key, limits)
        else:
            raise SchemaError("logs block: a column must be a list or an array", code="bad_event")
    return LogBlock(keys=keys, ts=ts, step=steps, commit=commits, cols=cols)


def encode_event(event: AnyEvent, limits: Limits = DEFAULT_LIMITS) -> bytes:
    raw = packb(event.to_wire())
    if len(raw) > limits.max_event_bytes:
        raise LimitError(f"event is {len(raw)} bytes, the limit is {limits.max_event_bytes}", code="event_too_large")
    return raw


@dataclass(eq=False, slots=True)
class Frame:
    project: str
    run: str
    producer: str
    seq: int
    events: list[AnyEvent | BadEvent]
    v: int = FRAME_VERSION

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Frame)
            and (self.v, self.project, self.run, self.producer, self.seq)
            == (other.v, other.project, other.run, other.producer, other.seq)
            and self.events == other.events
        )

    __hash__ = None  # type: ignore[assignment]

    def encode(self, limits: Limits = DEFAULT_LIMITS) -> bytes:
        raws = [e.raw if isinstance(e, BadEvent) else encode_event(e, limits) for e in self.events]
        return encode_frame_raw(self.project, self.run, self.producer, self.seq, raws, limits)


def check_run_id(value: Any, what: str) -> str:
    """A project or run id: a non-empty str of at most 128 characters, no ``/``, no outer spaces, no NUL (the
    metadata database stores it as text, and PostgreSQL text cannot hold NUL), valid Unicode."""
    if type(value) is not str or not value or len(value) > 128 or "/" in value or value != value.strip():
        raise SchemaError(
            f"{what} must be a non-empty str of at most 128 characters without '/' or outer spaces, got {value!r:.60}",
            code="bad_frame",
        )
    if "\x00" in value:
        raise SchemaError(f"{what} must not contain a NUL character, got {value!r:.60}", code="bad_frame")
    return check_text(value, what)


#: Longest run display name (the metadata database's column).
MAX_RUN_NAME = 256


def check_run_name(value: Any) -> str:
    """A run's display name: a str of at most 256 characters without NUL (stored as text), valid Unicode."""
    if type(value) is not str or len(value) > MAX_RUN_NAME or "\x00" in value:
        raise SchemaError(
            f"a run name must be a str of at most {MAX_RUN_NAME} characters without NUL, got {value!r:.60}",
            code="bad_event",
        )
    return check_text(value, "the run name")


def encode_frame_raw(
    project: str, run: str, producer: str, seq: int, events: list[bytes], limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Encode a frame from already-encoded events (what the SDK's sender does)."""
    raw = packb({"v": FRAME_VERSION, "project": project, "run": run, "producer": producer, "seq": seq,
                 "events": events})
    if len(raw) > limits.max_frame_bytes:
        raise LimitError(f"frame is {len(raw)} bytes, the limit is {limits.max_frame_bytes}", code="frame_too_large")
    return raw


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS, *, strict: bool = False) -> Frame:
    """Decode a frame; bad events become :class:`BadEvent` unless ``strict``. Raises :class:`SchemaError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError("a frame must be bytes", code="bad_frame")
    if len(data) > limits.max_frame_bytes:
        raise LimitError(f"frame is {len(data)} bytes, the limit is {limits.max_frame_bytes}", code="frame_too_large")
    m = unpackb(bytes(data), limits)
    if not isinstance(m, dict):
        raise SchemaError("a frame must be a map", code="bad_frame")
    v = m.get("v")
    if type(v) is not int or v != FRAME_VERSION:
        raise SchemaError(f"unknown frame version {v!r:.20}", code="unknown_version")
    project = check_run_id(m.get("project"), "project")
    run = check_run_id(m.get("run"), "run")
    producer = m.get("producer")
    if type(producer) is not str or not producer or len(producer) > 64:
        raise SchemaError("producer must be a non-empty str of at most 64 characters", code="bad_frame")
    seq = m.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise SchemaError(f"seq must be an int within 0..{MAX_SEQ}, got {seq!r:.20}", code="bad_frame")
    raws = m.get("events")
    if not isinstance(raws, list) or not all(isinstance(r, bytes) for r in raws):
        raise SchemaError("events must be a list of encoded events", code="bad_frame")
    events: list[AnyEvent | BadEvent] = []
    for raw in raws:
        try:
            events.append(decode_event(raw, limits))
        except SchemaError as e:
            if strict:
                raise
            events.append(BadEvent(raw=raw, error=e))
    return Frame(project=project, run=run, producer=producer, seq=seq, events=events)


__all__ = [
    "FRAME_FIELD",
    "FRAME_VERSION",
    "META_FIELDS",
    "AnyEvent",
    "BadEvent",
    "ClientWarning",
    "Config",
    "DefineMetric",
    "Event",
    "Finish",
    "Frame",
    "Log",
    "LogBlock",
    "Media",
    "RunMeta",
    "Start",
    "Summary",
    "check_run_meta",
    "decode_event",
    "decode_frame",
    "encode_event",
    "encode_frame_raw",
]
