"""The step aligner as a specification: docs/DESIGN.md §2, row by row, plus a property test against an
independent oracle."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.history_oracle import Oracle, rows_same

from schemas import (
    DEFAULT_LIMITS,
    Config,
    DefineMetric,
    Finish,
    Frame,
    Log,
    LogBlock,
    Names,
    Start,
    Summary,
    decode_event,
    encode_event,
)
from schemas.store import field_name
from workers.align import RunAligner
from workers.partition import PartitionProcessor
from workers.segments import rows_to_table

T0 = 1000.0
NMS = "non_monotonic_step"


def L(data: dict[str, Any], step: int | None = None, commit: bool | None = None, ts: float = 0.0) -> Log:
    return Log(ts=ts, data=data, step=step, commit=commit)


def F(ts: float = 0.0) -> Finish:
    return Finish(ts=ts)


def stamp(events: list[Any]) -> list[Any]:
    """Give every event without a timestamp a distinct one (T0 + 1, T0 + 2, ...), after a Start at T0."""
    out: list[Any] = [Start(ts=T0)]
    for i, e in enumerate(events, 1):
        if isinstance(e, Log | Finish) and e.ts == 0.0:
            e.ts = T0 + i
        out.append(e)
    return out


def rows_of(r: RunAligner, rows: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    return [(row.step, {field_name(r.displays[c], c[1]): v for c, v in row.values.items()}) for row in rows]


def run(events: list[Any], split: int | None = None) -> tuple[RunAligner, list[Any], list[tuple[str, Any, Any]]]:
    """Apply events; with ``split``, dump and load the state after that many events (a resumed worker)."""
    r = RunAligner()
    rows: list[Any] = []
    rejections: list[tuple[str, Any, Any]] = []
    for i, e in enumerate(events):
        if split is not None and i == split:
            got, rej = r.take()
            rows += got
            rejections += [(x.reason, x.step, x.cursor) for x in rej]
            r = RunAligner.load(r.dump())
        r.apply(e)
    got, rej = r.take()
    rows += got
    rejections += [(x.reason, x.step, x.cursor) for x in rej]
    return r, rows, rejections


# --- docs/DESIGN.md §2, one row of the table (or one edge of it) per case --------------------------------------

CASES: list[tuple[str, list[Any], list[tuple[int, dict[str, Any]]], list[tuple[str, int, int]], int]] = [
    # (name, events, rows written, rejections (reason, tried step, cursor), cursor after)
    ("log(d) writes at c and advances",
     [L({"a": 1}), L({"a": 2}), L({"b": 3.5})],
     [(0, {"a": 1}), (1, {"a": 2}), (2, {"b": 3.5})], [], 3),
    ("commit=False merges, nothing written",
     [L({"a": 1}, commit=False), L({"b": 2}, commit=False)],
     [], [], 0),
    ("commit=False chain is written by the next plain log, last write wins per leaf",
     [L({"a": 1, "b": 1}, commit=False), L({"a": 2}, commit=False), L({"c": 3})],
     [(0, {"a": 2, "b": 1, "c": 3})], [], 1),
    ("commit=False chain is written by finish",
     [L({"a": 1}, commit=False), L({"b": 2}, commit=False), F()],
     [(0, {"a": 1, "b": 2})], [], 1),
    ("step > c with empty pending: cursor jumps, d stays pending",
     [L({"a": 1}, step=5)],
     [], [], 5),
    ("step > c writes the pending row at c first",
     [L({"a": 1}, commit=False), L({"b": 2}, step=3)],
     [(0, {"a": 1})], [], 3),
    ("explicit steps: written when a higher step comes, and at finish",
     [L({"a": 1}, step=5), L({"b": 2}, step=7), F()],
     [(5, {"a": 1}), (7, {"b": 2})], [], 8),
    ("step == c merges into pending",
     [L({"a": 1}, step=2), L({"b": 2}, step=2), L({"a": 3}, step=2), L({"c": 4}, step=3)],
     [(2, {"a": 3, "b": 2})], [], 3),
    ("step < c rejects the whole call with the tried step and the cursor",
     [L({"a": 1}, step=5), L({"a": 9, "b": 1}, step=4), F()],
     [(5, {"a": 1})], [(NMS, 4, 5)], 6),
    ("a lower step after plain logs is rejected and leaves pending alone",
     [L({"a": 1}), L({"a": 2}), L({"x": 1}, commit=False), L({"a": 9}, step=0), L({"y": 2})],
     [(0, {"a": 1}), (1, {"a": 2}), (2, {"x": 1, "y": 2})], [(NMS, 0, 2)], 3),
    ("step=s, commit=True writes at s and moves c to s + 1",
     [L({"a": 1}, step=3, commit=True)],
     [(3, {"a": 1})], [], 4),
    ("step=k, commit=True then step=k is rejected",
     [L({"a": 1}, step=3, commit=True), L({"a": 2}, step=3), L({"a": 3}, step=4), F()],
     [(3, {"a": 1}), (4, {"a": 3})], [(NMS, 3, 4)], 5),
    ("step=c, commit=True flushes a commit=False chain at c",
     [L({"a": 1}, commit=False), L({"b": 2}, step=0, commit=True), L({"c": 3})],
     [(0, {"a": 1, "b": 2}), (1, {"c": 3})], [], 2),
    ("step > c, commit=True writes pending at c, then d at s",
     [L({"a": 1}, commit=False), L({"b": 2}, step=4, commit=True)],
     [(0, {"a": 1}), (4, {"b": 2})], [], 5),
    ("commit=True without a step is a plain log",
     [L({"a": 1}, commit=True), L({"a": 2}, commit=True)],
     [(0, {"a": 1}), (1, {"a": 2})], [], 2),
    ("commit=False with a step merges at that step and waits",
     [L({"a": 1}, step=2, commit=False), L({"b": 2}, step=2, commit=False), L({"c": 3}, step=2, commit=True)],
     [(2, {"a": 1, "b": 2, "c": 3})], [], 3),
    ("step gap: a plain log after a jump merges into the jumped-to row",
     [L({"a": 1}), L({"a": 2}, step=10), L({"a": 3}), L({"a": 4})],
     [(0, {"a": 1}), (10, {"a": 3}), (11, {"a": 4})], [], 12),
    ("step gaps between explicit steps",
     [L({"a": 1}, step=0), L({"a": 2}, step=100), L({"a": 3}, step=1_000_000), F()],
     [(0, {"a": 1}), (100, {"a": 2}), (1_000_000, {"a": 3})], [], 1_000_001),
    ("finish writes pending at c",
     [L({"a": 1}), L({"b": 2}, commit=False), F()],
     [(0, {"a": 1}), (1, {"b": 2})], [], 2),
    ("finish with nothing pending writes nothing",
     [L({"a": 1}), F()],
     [(0, {"a": 1})], [], 1),
    ("None values log nothing; the call still writes a row",
     [L({"a": None, "b": 1}), L({"a": None}), L({"a": 2})],
     [(0, {"b": 1}), (1, {}), (2, {"a": 2})], [], 3),
    ("None does not erase a pending value",
     [L({"a": 1}, commit=False), L({"a": None})],
     [(0, {"a": 1})], [], 1),
    ("case-insensitive keys: one column, first spelling kept",
     [L({"My-Metric": 1}), L({"my-metric": 2}), L({"MY-METRIC": 3}, commit=False), L({"my-metric": 4})],
     [(0, {"My-Metric": 1}), (1, {"My-Metric": 2}), (2, {"My-Metric": 4})], [], 3),
    ("two kinds give two columns",
     [L({"a": 1}), L({"a": "x"}), L({"a": True}), L({"a": [1, 2]})],
     [(0, {"a": 1}), (1, {"a:string": "x"}), (2, {"a:bool": True}), (3, {"a:other": [1, 2]})], [], 4),
    ("two kinds in one pending row: last write wins per leaf",
     [L({"a": 1}, commit=False), L({"a": "x"}), L({"a": "y"}, commit=False), L({"a": 2.5})],
     [(0, {"a:string": "x"}), (1, {"a": 2.5})], [], 2),
    ("config, summary and define_metric events write nothing",
     [Config(data={"lr": 0.1}), Summary(data={"best": 1}), DefineMetric(name="acc"), L({"a": 1})],
     [(0, {"a": 1})], [], 1),
]


@pytest.mark.parametrize(("events", "rows", "rejections", "cursor"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_semantics_table(events: list[Any], rows: list[Any], rejections: list[Any], cursor: int) -> None:
    events = stamp(events)
    r, got, rej = run(events)
    assert rows_of(r, got) == rows
    assert rej == rejections
    assert r.cursor == cursor
    assert r.rejected == ({NMS: len(rejections)} if rejections else {})
    # The same events must give the same rows from the oracle written straight from the §2 table.
    o = Oracle()
    for e in events:
        if isinstance(e, Start):
            o.start(e.ts)
        elif isinstance(e, Log):
            o.log(e.ts, e.data, e.step, e.commit)
        elif isinstance(e, Finish):
            o.finish(e.ts)
    assert [(s, v) for s, _, _, v in o.rows] == rows
    assert o.rejections == rejections
    # Resume: the state dumped and loaded after any prefix gives the same rows, rejections, cursor and summary.
    for split in range(1, len(events)):
        r2, got2, rej2 = run(events, split=split)
        assert rows_of(r2, got2) == rows, f"split at {split}"
        assert rej2 == rejections, f"split at {split}"
        assert (r2.cursor, r2.summary(), r2.warnings) == (r.cursor, r.summary(), r.warnings), f"split at {split}"


def test_rejection_carries_message_and_timestamp() -> None:
    r, _, _ = run(stamp([L({"a": 1}, step=7, commit=True)]))
    r.apply(Log(ts=T0 + 50, data={"a": 2}, step=3))
    _, rej = r.take()
    assert len(rej) == 1
    assert (rej[0].reason, rej[0].step, rej[0].cursor, rej[0].ts) == (NMS, 3, 8, T0 + 50)
    assert "3" in rej[0].message
    assert "8" in rej[0].message


def test_finish_sets_state_and_exit_code() -> None:
    r, _, _ = run(stamp([L({"a": 1}), F()]))
    assert (r.state, r.exit_code) == ("finished", 0)
    r2, _, _ = run(stamp([L({"a": 1}), Finish(ts=0.0, exit_code=3)]))
    assert (r2.state, r2.exit_code) == ("crashed", 3)


def test_special_columns_step_timestamp_runtime() -> None:
    r = RunAligner()
    r.apply(Start(ts=T0))
    r.apply(Log(ts=T0 + 1.5, data={"a": 1}, commit=False))
    r.apply(Log(ts=T0 + 2.0, data={"b": 2}, commit=False))
    r.apply(Log(ts=T0 + 3.25, data={"c": 3}))  # _timestamp is the last call merged into the row
    r.apply(Log(ts=T0 + 4.0, data={"a": 4}, step=9, commit=True))
    rows, _ = r.take()
    assert [(x.step, x.ts, x.runtime) for x in rows] == [(0, T0 + 3.25, 3.25), (9, T0 + 4.0, 4.0)]
    table = rows_to_table(rows, r.displays)
    assert table.column_names[:3] == ["_step", "_timestamp", "_runtime"]
    assert table.column("_step").to_pylist() == [0, 9]
    assert table.column("_timestamp").to_pylist() == [T0 + 3.25, T0 + 4.0]
    assert table.column("_runtime").to_pylist() == [3.25, 4.0]
    assert str(table.schema.field("_step").type) == "int64"


def test_runtime_without_start_counts_from_first_call() -> None:
    r = RunAligner()
    r.apply(Log(ts=50.0, data={"a": 1}))
    r.apply(Log(ts=52.0, data={"a": 1}))
    rows, _ = r.take()
    assert [x.runtime for x in rows] == [0.0, 2.0]


def test_type_split_columns_and_conflict_warning() -> None:
    r, rows, _ = run(stamp([L({"a": 1}), L({"a": 2}), L({"a": "x"}), L({"b": 1}), L({"b": 2.5})]))
    assert r.conflicts() == ["a"]
    assert sorted((c["key"], c["kind"], c["field"]) for c in r.columns()) == [
        ("a", "number", "a"), ("a", "string", "a:string"), ("b", "number", "b"),
    ]
    assert any("'a' logged as string and as number" in w for w in r.warnings)
    table = rows_to_table(rows, r.displays)
    assert str(table.schema.field("a").type) == "int64"  # int64 while every value is an int
    assert str(table.schema.field("b").type) == "double"
    assert str(table.schema.field("a:string").type) == "string"
    assert table.schema.field("a:string").metadata == {b"key": b"a", b"kind": b"string"}
    assert table.column("a").to_pylist() == [1, 2, None, None, None]
    assert table.column("b").to_pylist() == [None, None, None, 1.0, 2.5]


def test_case_only_collision_is_a_warning_never_a_drop() -> None:
    r, rows, _ = run(stamp([L({"Loss": 1.0}), L({"loss": 2.0}), L({"LOSS": 3.0})]))
    assert [x.values for x in rows] == [{("loss", "number"): v} for v in (1.0, 2.0, 3.0)]
    assert r.displays == {("loss", "number"): "Loss"}
    assert any("'loss' differs from 'Loss' only by case" in w for w in r.warnings)
    assert any("'LOSS' differs from 'Loss' only by case" in w for w in r.warnings)
    assert r.summary() == {"Loss": 3.0}


# --- several producers in one run: sequence numbers and duplicate frames -------------------------------------


def test_check_seq() -> None:
    r = RunAligner()
    assert r.check_seq("A", 0, 2) == 0  # events 0, 1
    assert r.check_seq("A", 0, 2) == 2  # the same frame again: all skipped
    assert r.check_seq("B", 0, 1) == 0  # another producer has its own numbers
    assert r.check_seq("A", 1, 3) == 1  # overlaps 1: skip one, apply 2, 3
    assert r.check_seq("A", 4, 1) == 0
    assert r.check_seq("B", 0, 1) == 1
    assert r.producers == {"A": 5, "B": 1}
    assert r.warnings == []
    assert r.check_seq("A", 9, 1) == 0  # a gap is applied, with a warning
    assert any("events 5..8 are missing" in w for w in r.warnings)
    assert r.check_seq("C", 3, 1) == 0
    assert any("producer C" in w for w in r.warnings)


def _processor() -> PartitionProcessor:
    return PartitionProcessor(p=0, epoch=1, offset="0-0", names=Names("t"), store=None,  # type: ignore[arg-type]
                              data_dir=Path("."), redis=None, limits=DEFAULT_LIMITS)  # type: ignore[arg-type]


def test_producers_interleave_and_duplicate_frames_are_skipped() -> None:
    proc = _processor()
    key = ("proj", "run")
    proc.runs[key] = RunAligner()

    def frame(producer: str, seq: int, events: list[Any]) -> Frame:
        return Frame(project="proj", run="run", producer=producer, seq=seq, events=events)

    a0 = frame("A", 0, [Start(ts=T0), Log(ts=T0 + 1, data={"a": 1}, step=0)])
    b0 = frame("B", 0, [Log(ts=T0 + 2, data={"b": 1}, step=0, commit=True)])
    a2 = frame("A", 2, [Log(ts=T0 + 3, data={"a": 2}, step=1), Log(ts=T0 + 4, data={"a": 3}, step=2)])
    b1 = frame("B", 1, [Log(ts=T0 + 5, data={"b": 2}, step=2)])
    for i, f in enumerate([a0, b0, a0, a2, b0, a2, b1, b1]):  # client resends of frames already applied
        proc._apply(f"1-{i}", f)
    proc.runs[key].apply(Finish(ts=T0 + 6))
    r = proc.runs[key]
    rows, _ = r.take()
    assert rows_of(r, rows) == [(0, {"a": 1, "b": 1}), (1, {"a": 2}), (2, {"a": 3, "b": 2})]
    assert proc.rejections == []
    assert r.producers == {"A": 4, "B": 2}
    # A partially overlapping resend applies only its new tail.
    a3 = frame("A", 3, [Log(ts=T0 + 7, data={"a": 99}, step=2), Log(ts=T0 + 8, data={"a": 4}, step=7, commit=True)])
    proc._apply("2-0", a3)
    rows, _ = r.take()
    assert rows_of(r, rows) == [(7, {"a": 4})]


def test_rejections_and_bad_events_reach_the_partition_output() -> None:
    from schemas import BadEvent, SchemaError

    proc = _processor()
    proc.runs[("p", "r")] = RunAligner()
    bad = BadEvent(raw=b"\xc1", error=SchemaError("malformed msgpack", code="malformed"))
    proc._apply("5-0", Frame(project="p", run="r", producer="A", seq=0, events=[
        Log(ts=T0, data={"a": 1}, step=4, commit=True), Log(ts=T0, data={"a": 2}, step=2), bad,
        Log(ts=T0, data={"a": 3}),
    ]))
    assert [(x.entry_id, x.reason, x.step, x.cursor) for x in proc.rejections] == [
        ("5-0", NMS, 2, 5), ("5-0", "malformed", None, 5)]
    assert [(i, d[b"reason"], d[b"step"], d[b"cursor"]) for i, d in proc.dlq] == [
        ("5-0", NMS.encode(), b"2", b"5"), ("5-1", b"malformed", b"", b"5")]
    rows, _ = proc.runs[("p", "r")].take()
    assert [(x.step, x.values) for x in rows] == [(4, {("a", "number"): 1}), (5, {("a", "number"): 3})]


# --- define_metric: step_sync, globs, summaries ----------------------------------------------------------------


def test_define_metric_step_sync_fills_latest_step_metric() -> None:
    r, rows, _ = run(stamp([
        DefineMetric(name="epoch"),
        DefineMetric(name="val/*", step_metric="epoch"),
        L({"epoch": 1, "train/loss": 0.5}),
        L({"val/acc": 0.9}),           # holds the metric, not the step metric: gets epoch 1
        L({"train/loss": 0.4}),        # not under val/*: nothing added
        L({"epoch": 2}),
        L({"val/acc": 0.95, "epoch": 7}),  # both present: the logged value stays
        L({"val/loss": 0.1}),
    ]))
    assert rows_of(r, rows) == [
        (0, {"epoch": 1, "train/loss": 0.5}),
        (1, {"val/acc": 0.9, "epoch": 1}),
        (2, {"train/loss": 0.4}),
        (3, {"epoch": 2}),
        (4, {"val/acc": 0.95, "epoch": 7}),
        (5, {"val/loss": 0.1, "epoch": 7}),
    ]
    # Summaries see only what was logged, not the fill-ins.
    assert r.summary()["epoch"] == 7


def test_define_metric_step_sync_off_and_no_value_yet() -> None:
    r, rows, _ = run(stamp([
        DefineMetric(name="val/*", step_metric="epoch", step_sync=False),
        DefineMetric(name="test/*", step_metric="batch"),
        L({"val/acc": 0.9}),
        L({"epoch": 3}),
        L({"val/acc": 0.8}),   # step_sync off: no fill
        L({"test/x": 1.0}),    # batch never logged: nothing to fill
    ]))
    assert rows_of(r, rows) == [(0, {"val/acc": 0.9}), (1, {"epoch": 3}), (2, {"val/acc": 0.8}),
                                (3, {"test/x": 1.0})]


def test_define_metric_glob_longest_prefix_wins() -> None:
    nan = float("nan")
    r, _, _ = run(stamp([
        DefineMetric(name="*", summary="first"),
        DefineMetric(name="val/*", summary="max"),
        DefineMetric(name="val/l*", summary="min"),
        DefineMetric(name="val/loss2", summary="mean"),  # an exact name beats every glob
        L({"val/loss": 3.0, "val/acc": 0.1, "val/loss2": 1.0, "other": 5}),
        L({"val/loss": 1.0, "val/acc": 0.7, "val/loss2": 3.0, "other": 6}),
        L({"val/loss": nan, "val/acc": nan, "val/loss2": nan, "other": 7}),
    ]))
    assert r.summary() == {"val/loss": {"min": 1.0}, "val/acc": {"max": 0.7}, "val/loss2": {"mean": 2.0},
                           "other": {"first": 5}}


def test_summary_modes() -> None:
    nan = float("nan")
    r, _, _ = run(stamp([
        DefineMetric(name="acc", summary="min,max,mean,first,last"),
        DefineMetric(name="hidden_one", summary="none"),
        DefineMetric(name="Only-NaN", summary="min,max,mean,last"),
        L({"acc": 0.5, "loss": 2.0, "hidden_one": 1, "only-nan": nan, "s": "a"}),
        L({"acc": nan, "loss": 1.0, "hidden_one": 2, "only-nan": nan, "s": "b"}),
        L({"acc": 0.9, "loss": nan}),
        L({"acc": 0.1}),
    ]))
    s = r.summary()
    assert set(s) == {"acc", "loss", "only-nan", "s"}  # none: absent
    assert s["acc"] == {"min": 0.1, "max": 0.9, "mean": pytest.approx(0.5), "first": 0.5, "last": 0.1}
    assert math.isnan(s["loss"])  # last by default, NaN included: it is the last value
    assert s["s"] == "b"
    assert set(s["only-nan"]) == {"last"}
    assert math.isnan(s["only-nan"]["last"])


def test_explicit_summary_until_the_key_is_logged_again() -> None:
    r, _, _ = run(stamp([L({"a": 1}), Summary(data={"a": 100, "best": 3})]))
    assert r.summary() == {"a": 100, "best": 3}
    r.apply(Log(ts=T0 + 10, data={"a": 2}))
    assert r.summary() == {"a": 2, "best": 3}
    r.apply(Summary(data={"best": None}))
    assert r.summary() == {"a": 2}


# --- property: random call sequences against the oracle, and LogBlock against per-call Log ---------------------

KEYS = ["a", "b", "A", "c"]
value_st = st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=False, width=64), st.sampled_from(["x", "y"]))
call_st = st.tuples(
    st.one_of(st.none(), st.integers(0, 12)),  # step: None or explicit (often lower than the cursor)
    st.sampled_from([None, True, False]),
    st.dictionaries(st.sampled_from(KEYS), value_st, max_size=3),
)


def _oracle_of(calls: list[tuple[Any, Any, Any]], finish: bool) -> Oracle:
    o = Oracle()
    o.start(T0)
    for i, (step, commit, data) in enumerate(calls):
        o.log(T0 + i + 1, data, step, commit)
    if finish:
        o.finish(T0 + len(calls) + 1)
    return o


def _aligner_rows(r: RunAligner, rows: list[Any]) -> list[tuple[int, float, float, dict[str, Any]]]:
    return [(x.step, x.ts, x.runtime, {field_name(r.displays[c], c[1]): v for c, v in x.values.items()})
            for x in rows]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(call_st, max_size=30), finish=st.booleans(), split=st.integers(0, 31))
def test_aligner_matches_oracle(calls: list[tuple[Any, Any, Any]], finish: bool, split: int) -> None:
    events: list[Any] = [Start(ts=T0)]
    events += [Log(ts=T0 + i + 1, data=d, step=s, commit=c) for i, (s, c, d) in enumerate(calls)]
    if finish:
        events.append(Finish(ts=T0 + len(calls) + 1))
    r, rows, rej = run(events, split=min(split, len(events) - 1) or None)
    o = _oracle_of(calls, finish)
    got = _aligner_rows(r, rows)
    assert rows_same(got, o.rows), (got, o.rows)
    assert rej == o.rejections
    assert r.cursor == o.cursor
    steps = [x[0] for x in got]
    assert steps == sorted(set(steps))  # one row per step, ascending


block_st = st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.lists(st.one_of(st.none(), st.integers(0, 10)), min_size=n, max_size=n),
    st.lists(st.sampled_from([None, True, False]), min_size=n, max_size=n),
    st.lists(st.floats(allow_nan=True, width=64), min_size=n, max_size=n),   # an array column
    st.lists(st.integers(-3, 3), min_size=n, max_size=n),                    # an int array column
    st.lists(st.one_of(st.none(), st.sampled_from(["u", "v"]), st.integers(0, 2)), min_size=n, max_size=n),
))


@settings(max_examples=150, deadline=None)
@given(blocks=st.lists(block_st, min_size=1, max_size=4))
def test_logblock_equals_per_call_logs(blocks: list[tuple[Any, ...]]) -> None:
    via_block = RunAligner()
    via_calls = RunAligner()
    t = T0
    for steps, commits, fcol, icol, lcol in blocks:
        n = len(steps)
        ts = [t + i for i in range(n)]
        t += n
        block = LogBlock(keys=["f", "i", "mixed"], ts=np.array(ts), step=steps, commit=commits,
                         cols=[np.array(fcol, dtype=np.float64), np.array(icol, dtype=np.int64), lcol])
        decoded = decode_event(encode_event(block))  # the wire path a worker sees
        assert isinstance(decoded, LogBlock)
        via_block.apply(decoded)
        for call in block.calls():
            via_calls.apply(decode_event(encode_event(call)))
    via_block.apply(Finish(ts=t))
    via_calls.apply(Finish(ts=t))
    rb, jb = via_block.take()
    rc, jc = via_calls.take()
    assert rows_same(_aligner_rows(via_block, rb), _aligner_rows(via_calls, rc))
    assert [(x.reason, x.step, x.cursor) for x in jb] == [(x.reason, x.step, x.cursor) for x in jc]
    assert via_block.dump() == via_calls.dump()
