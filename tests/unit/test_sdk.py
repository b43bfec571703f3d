"""The client SDK without a network: what ``log()`` accepts, captures, groups and numbers.

A :class:`ingest.Run` built directly has no sender; ``sent(run)`` packs its pending calls the way the sender
does and decodes the frames that would be XADDed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.sdk_frames import events, frames, log_calls

import ingest
from ingest.run import Run
from ingest.settings import ClientSettings, SettingsError
from ingest.spill import Entry, Outbox, iter_records
from schemas import (
    Config,
    DefineMetric,
    Finish,
    LimitError,
    Log,
    LogBlock,
    SchemaError,
    Start,
    Summary,
    decode_frame,
    values_equal,
)


def make_run(tmp_path: Path, **settings: Any) -> Run:
    s = ClientSettings(data_dir=tmp_path, **settings)
    return Run(settings=s, project="proj", run_id="run1", config={"lr": 0.1})


# -- validation: a bad call raises naming the key and sends nothing ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"ok": 1.0, "bad": object()}, "bad"),
        ({"ok": 1.0, "big": 1 << 64}, "big"),
        ({"ok": 1.0, "nest": {"deep": {1, 2}}}, "nest.deep"),
        ({"ok": 1.0, "lst": [1.0, object()]}, "lst"),
    ],
)
def test_bad_value_raises_naming_the_key_and_sends_nothing(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    run = make_run(tmp_path)
    with pytest.raises(SchemaError) as e:
        run.log(data)
    assert e.value.key == key and key in str(e.value)
    assert [type(ev) for ev in events(run)] == [Start]
    assert run.step == 0


def test_bad_value_on_the_fast_path_falls_back_and_raises(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.log({"a": 1, "b": 1.0})
    with pytest.raises(SchemaError, match="'a'"):
        run.log({"a": 1 << 63, "b": 2.0})  # same keys, but the int is outside int64
    with pytest.raises(SchemaError, match="'b'"):
        run.log({"a": 1, "b": object()})
    calls = log_calls(events(run))
    assert len(calls) == 1 and run.step == 1


@pytest.mark.parametrize(
    "data",
    [{"a.b": 1, "a": {"b": 2}}, {"_step": 3}, {"": 1.0}, {"x" * 300: 1.0}, {1: 2.0}],
)
def test_bad_keys_raise_and_send_nothing(tmp_path: Path, data: dict[Any, Any]) -> None:
    run = make_run(tmp_path)
    with pytest.raises(SchemaError):
        run.log(data)
    assert log_calls(events(run)) == []


@pytest.mark.parametrize(("step", "commit"), [(-1, None), (True, None), (1.5, None), ("3", None), (None, "yes")])
def test_bad_step_or_commit_raises(tmp_path: Path, step: Any, commit: Any) -> None:
    run = make_run(tmp_path)
    with pytest.raises(SchemaError):
        run.log({"a": 1.0}, step=step, commit=commit)
    run.log({"a": 1.0})
    with pytest.raises(SchemaError):  # also on the fast path
        run.log({"a": 1.0}, step=step, commit=commit)
    assert len(log_calls(events(run))) == 1


def test_numpy_step_and_commit_are_accepted(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.log({"a": 1.0}, step=np.int64(4), commit=np.bool_(True))  # type: ignore[arg-type]
    (call,) = log_calls(events(run))
    assert call.step == 4 and call.commit is True and run.step == 5


def test_oversized_value_is_rejected_at_the_call(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with pytest.raises(LimitError):
        run.log({"s": "x" * (2 << 20)})
    with pytest.raises(LimitError):  # five 900 kB strings: each fits, the call does not fit in one event
        run.log({f"s{i}": "y" * 900_000 for i in range(5)})
    assert log_calls(events(run)) == []


def test_log_after_finish_is_an_error(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.finish(timeout=0)
    with pytest.raises(ingest.SteplineError):
        run.log({"a": 1.0})


# -- capture at call time ----------------------------------------------------------------------------------------


def test_mutating_after_log_does_not_change_what_was_logged(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    lst = [1.0, 2.0]
    arr = np.arange(4, dtype=np.float32)
    nested = {"inner": [1, 2]}
    run.log({"lst": lst, "arr": arr, "n": nested})
    lst.append(3.0)
    arr[:] = 99
    nested["inner"].append(3)
    (call,) = log_calls(events(run))
    assert call.data["lst"] == [1.0, 2.0]
    assert values_equal(call.data["arr"], np.arange(4, dtype=np.float32))
    assert call.data["n.inner"] == [1, 2]


def test_config_and_summary_capture_too(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    layers = [64, 64]
    run.config["layers"] = layers
    layers.append(1)
    run.summary["best"] = 0.5
    cfg = [e for e in events(run) if isinstance(e, Config)]
    assert cfg[0].data == {"layers": [64, 64]}


# -- grouping into blocks, event kinds -------------------------------------------------------------------------


def test_same_key_calls_become_one_block_with_typed_columns(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    for i in range(5):
        run.log({"loss": 1.0 / (i + 1), "epoch": i // 2, "flag": i % 2 == 0, "tag": "x", "mixed": i if i else 0.5})
    run.log({"loss": 0.1})  # new keys: a new block
    evs = events(run)
    assert [type(e) for e in evs] == [Start, LogBlock, LogBlock]
    block = evs[1]
    assert block.keys == ["loss", "epoch", "flag", "tag", "mixed"]
    loss, epoch, flag, tag, mixed = block.cols
    assert isinstance(loss, np.ndarray) and loss.dtype == np.float64
    assert isinstance(epoch, np.ndarray) and epoch.dtype == np.int64
    assert flag == [True, False, True, False, True]  # bools stay bools, never ints
    assert tag == ["x"] * 5
    assert mixed == [0.5, 1, 2, 3, 4]
    assert isinstance(block.ts, np.ndarray) and block.ts.dtype == np.float64 and len(block) == 5


def test_other_events_split_blocks_and_keep_call_order(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.log({"a": 1.0})
    run.log({"a": 2.0})
    run.config.update({"bs": 32})
    run.log({"a": 3.0})
    run.log({"img": np.arange(3)})  # an array: a single Log event
    run.define_metric("val/*", step_metric="epoch", summary="min,max", goal="minimize")
    run.summary["best"] = 1.0
    run.log({"a": 4.0})
    res = run.finish(timeout=0)  # no sender: everything ends up in the spill file
    assert res.spill_path is not None
    spilled = [decode_frame(e.frame, strict=True) for _, e in iter_records(res.spill_path.read_bytes())]
    kinds = [type(e) for f in spilled for e in f.events]
    assert kinds == [Start, LogBlock, Config, LogBlock, Log, DefineMetric, Summary, LogBlock, Finish]


_SCALARS = st.one_of(
    st.floats(allow_nan=True), st.integers(-(1 << 63), (1 << 63) - 1), st.booleans(), st.none(),
    st.text(max_size=5),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_SCALARS, _SCALARS, _SCALARS), min_size=1, max_size=12),
       stable=st.integers(0, 8))
def test_block_columns_keep_every_value_whatever_the_types(
    tmp_path: Path, rows: list[tuple[Any, Any, Any]], stable: int,
) -> None:
    """Rows of one block whose value types agree (the signature the packer trusts) or change from call to call:
    every call comes back as logged, and a column is float64/int64 exactly when all its values are floats/ints."""
    run = make_run(tmp_path)
    rows = [rows[0]] * stable + rows  # runs of one signature, then whatever hypothesis drew
    for a, b, c in rows:
        run.log({"a": a, "b": b, "c": c})
    evs = events(run)
    got = log_calls(evs)
    assert len(got) == len(rows)
    for call, (a, b, c) in zip(got, rows, strict=True):
        want = {k: v for k, v in {"a": a, "b": b, "c": c}.items() if v is not None}
        assert values_equal({k: v for k, v in call.data.items() if v is not None}, want)
    for block in (e for e in evs if isinstance(e, LogBlock)):
        for col in block.cols:
            types = {type(v) for v in (col.tolist() if isinstance(col, np.ndarray) else col)}
            if isinstance(col, np.ndarray):
                assert (col.dtype == np.float64 and types == {float}) or (col.dtype == np.int64 and types == {int})
            else:
                assert types not in ({float}, {int})


def test_blocks_are_cut_at_max_block_rows(tmp_path: Path) -> None:
    run = make_run(tmp_path, max_block_rows=100)
    for i in range(250):
        run.log({"a": float(i)})
    evs = events(run)
    assert [len(e) for e in evs if isinstance(e, LogBlock)] == [100, 100, 50]
    assert [c.data["a"] for c in log_calls(evs)] == [float(i) for i in range(250)]


def test_fast_path_and_slow_path_log_the_same_thing(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    calls = [
        ({"a": 1.0, "b": 2, "c": "s", "d": True, "e": None}, None, None),
        ({"a": float("nan"), "b": -(1 << 63), "c": "", "d": False, "e": 1.0}, 7, None),
        ({"a": np.float32(0.5), "b": np.int16(3), "c": "t", "d": np.bool_(True), "e": 2}, 7, True),
        ({"a": float("inf"), "b": (1 << 63) - 1, "c": "ü", "d": True, "e": None}, None, False),
    ]
    for data, step, commit in calls:
        run.log(data, step=step, commit=commit)
    got = log_calls(events(run))
    assert [(c.step, c.commit) for c in got] == [(s, c) for _, s, c in calls]
    assert values_equal(got[2].data, {"a": 0.5, "b": 3, "c": "t", "d": True, "e": 2})
    assert values_equal(got[1].data, calls[1][0])


def test_nested_dicts_are_flattened(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.log({"train": {"loss": 1.0, "acc": {"top1": 0.5}}})
    run.log({"train": {"loss": 0.5, "acc": {"top1": 0.6}}})
    evs = events(run)
    assert evs[1].keys == ["train.loss", "train.acc.top1"] and len(evs[1]) == 2


# -- sequence numbers --------------------------------------------------------------------------------------------


def test_seq_is_contiguous_across_frames(tmp_path: Path) -> None:
    run = make_run(tmp_path, frame_target_bytes=2048, max_block_rows=16)
    expected = 0
    for round_ in range(3):
        for i in range(300):
            run.log({"a": float(i), "b": i} if i % 7 else {"c": "x" * (i % 50)})
        run.config[f"k{round_}"] = round_
        fs = frames(run)
        assert len(fs) > 1
        for f in fs:
            assert f.seq == expected and f.producer == run.producer and f.run == "run1" and f.project == "proj"
            expected += len(f.events)
    assert expected == run._b.seq


def test_producers_differ_per_run_object(tmp_path: Path) -> None:
    assert make_run(tmp_path).producer != make_run(tmp_path).producer


# -- the client-side cursor (docs/DESIGN.md §2) ------------------------------------------------------------------

CURSOR_TABLE: list[tuple[str, list[tuple[int | None, bool | None]], int]] = [
    ("plain calls advance", [(None, None), (None, None)], 2),
    ("commit=False merges", [(None, False), (None, False)], 0),
    ("commit=False then plain", [(None, False), (None, None)], 1),
    ("higher step moves the cursor, stays pending", [(5, None)], 5),
    ("pending then plain writes at 5", [(5, None), (None, None)], 6),
    ("equal step merges", [(3, None), (3, None)], 3),
    ("step with commit writes and moves past", [(5, True)], 6),
    ("lower step is rejected, cursor unchanged", [(5, True), (5, None)], 6),
    ("lower step after plain calls", [(None, None), (None, None), (0, None)], 2),
    ("step=0 at start", [(0, None)], 0),
    ("commit=True without step", [(None, True)], 1),
]


@pytest.mark.parametrize(("calls", "final"), [(c, f) for _, c, f in CURSOR_TABLE],
                         ids=[name for name, _, _ in CURSOR_TABLE])
def test_client_cursor(tmp_path: Path, calls: list[tuple[int | None, bool | None]], final: int) -> None:
    for fast in (False, True):
        run = make_run(tmp_path)
        if fast:  # prime the fast path with a commit=False call (it does not move the cursor)
            run.log({"a": 0.0}, commit=False)
        for step, commit in calls:
            run.log({"a": 1.0}, step=step, commit=commit)
        assert run.step == final
        sent = log_calls(events(run))
        assert len(sent) == len(calls) + fast  # a lower step is still sent: the worker records the rejection


def test_lower_step_warns_with_logging_and_is_sent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_run(tmp_path)
    run.log({"a": 1.0}, step=10)
    with caplog.at_level(logging.WARNING, logger="ingest"):
        run.log({"a": 2.0}, step=3)
    assert "step 3 below the current step 10" in caplog.text
    assert [c.step for c in log_calls(events(run))] == [10, 3]


# -- config, summary, define_metric ------------------------------------------------------------------------------


def test_config_is_dict_like_with_attributes(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.config["bs"] = 32
    run.config.update({"opt": {"name": "adam", "beta": 0.9}})
    run.config.dropout = 0.2
    assert run.config.lr == 0.1 and run.config["bs"] == 32 and run.config.dropout == 0.2
    assert dict(run.config) == {"lr": 0.1, "bs": 32, "opt": {"name": "adam", "beta": 0.9}, "dropout": 0.2}
    with pytest.raises(AttributeError):
        _ = run.config.missing
    evs = events(run)
    assert isinstance(evs[0], Start) and evs[0].config == {"lr": 0.1}
    assert [e.data for e in evs if isinstance(e, Config)] == [
        {"bs": 32}, {"opt": {"name": "adam", "beta": 0.9}}, {"dropout": 0.2}
    ]


def test_summary_is_dict_like(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.summary["best"] = 0.3
    run.summary.update({"epochs": 3})
    del run.summary["epochs"]
    assert dict(run.summary) == {"best": 0.3}
    assert [e.data for e in events(run) if isinstance(e, Summary)] == [
        {"best": 0.3}, {"epochs": 3}, {"epochs": None}
    ]
    with pytest.raises(SchemaError):
        run.summary["_step"] = 1


def test_define_metric_is_validated_at_the_call(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with pytest.raises(SchemaError):
        run.define_metric("loss", goal="up")
    with pytest.raises(SchemaError):
        run.define_metric("loss", summary="min,best")
    run.define_metric("loss", summary="min", goal="minimize", hidden=True)
    (dm,) = [e for e in events(run) if isinstance(e, DefineMetric)]
    assert (dm.name, dm.summary, dm.goal, dm.hidden, dm.step_sync) == ("loss", "min", "minimize", True, True)


# -- settings and init -------------------------------------------------------------------------------------------


def test_settings_from_env() -> None:
    s = ClientSettings.from_env({"STEPLINE_REDIS_URL": "redis://h:1/2", "STEPLINE_NAMESPACE": "x",
                                 "STEPLINE_PARTITIONS": "4", "STEPLINE_DATA_DIR": "/d"})
    assert (s.redis_url, s.namespace, s.partitions, s.data_dir) == ("redis://h:1/2", "x", 4, Path("/d"))
    d = ClientSettings.from_env({})
    assert (d.redis_url, d.namespace, d.partitions) == ("redis://127.0.0.1:6379/0", "sl", 16)
    with pytest.raises(SettingsError, match="STEPLINE_PARTITIONS"):
        ClientSettings.from_env({"STEPLINE_PARTITIONS": "many"})
    with pytest.raises(ValueError, match="namespace"):
        ClientSettings.from_env({"STEPLINE_NAMESPACE": "a:b"})


def test_bad_gateway_url_is_refused_clearly() -> None:
    with pytest.raises(SettingsError, match="url must start with http"):
        ingest.init(url="ftp://localhost:8080")
    with pytest.raises(TypeError):
        ingest.init(no_such_argument=1)


def test_module_attributes_before_init() -> None:
    assert ingest.run is None or isinstance(ingest.run, Run)
    assert ingest.Histogram is not None and ingest.plot.line_series is not None


# -- the outbox and its spill file -------------------------------------------------------------------------------


def test_outbox_spills_past_its_cap_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "spill" / "p" / "r-x.spill"
    box = Outbox(path, memory_cap=1000)
    entries = [Entry(stream="s", frame=bytes([i]) * 300, blobs={"b": b"z"} if i == 2 else {}) for i in range(10)]
    box.put(entries[:3])  # under the cap
    assert not path.exists()
    box.put(entries[3:5])  # over: everything in memory moves to the file
    assert path.exists() and box.file_frames == 5 and box.memory_frames == 0
    box.put(entries[5:7])
    sent: list[bytes] = []
    while batch := box.peek(max_bytes=700):
        assert len(batch) <= 3
        sent.extend(e.frame for e in batch)
        if len(sent) == 2:  # a spill while a memory batch is in flight must not confuse the acks
            box.spill()
        box.ack(batch[-1].idx)
        # The file lives exactly while it holds unacknowledged frames. (This checked `len(sent) == 5`, which
        # batches of two never reach, so it never ran.)
        assert path.exists() == (box.file_frames > 0), (len(sent), box.file_frames)
    assert not path.exists()  # every spilled frame acknowledged: the file is gone
    assert sent == [e.frame for e in entries[:7]]
    assert len(box) == 0


def test_outbox_close_keeps_unsent_frames_in_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "r.spill"
    box = Outbox(path, memory_cap=1 << 20)
    box.put([Entry(stream="s1", frame=b"f1"), Entry(stream="s1", frame=b"f2", blobs={"k": b"v"})])
    assert box.close() == path
    got = [e for _, e in iter_records(path.read_bytes())]
    assert [(e.stream, e.frame, e.blobs) for e in got] == [("s1", b"f1", {}), ("s1", b"f2", {"k": b"v"})]
    # a torn tail (the process died mid-write) is ignored
    path.write_bytes(path.read_bytes() + b"\x00\x00\x01\x00abc")
    assert len(list(iter_records(path.read_bytes()))) == 2


def test_finish_without_redis_reports_and_keeps_frames(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.log({"a": 1.0})
    res = run.finish(timeout=0)  # no sender: nothing can be acknowledged
    assert not res.ok and res.unsent_frames >= 1 and res.spill_path == run.spill_path
    assert res.spill_path is not None and res.spill_path.exists()
    assert str(res.spill_path).startswith(str(tmp_path / "spill" / "proj" / "run1-"))


@given(st.text(min_size=1, max_size=40))
def test_spill_file_names_stay_in_their_folder_and_are_distinct(name: str) -> None:
    from ingest.spill import file_name

    try:
        name.encode()
    except UnicodeEncodeError:
        return  # not a valid run or project id (ids are checked as Unicode text before they get here)
    component = file_name(name)
    assert component not in ("", ".", "..") and "/" not in component and "\x00" not in component
    assert not component.startswith(".")
    assert Path(component).name == component
    assert file_name(name + "x") != component
