"""``log()`` refuses at once what the pipeline could not store and serve back exactly (issue 15, item 3).

- Strings that are not valid Unicode (lone surrogates) anywhere in a value, its dict keys or a media payload;
  NUL or lone surrogates in keys, project and run ids and run names; complex numbers; numpy datetime64 and
  timedelta64; object arrays: each raises :class:`SchemaError` naming the key, on the fast path too, and nothing
  of the call is sent.
- A call that slips past ``log()`` and fails when the sender packs it costs only that call: the valid calls
  around it are sent in order, ``finish()`` counts it (``dropped_calls``) and a ``warning`` event carries it to
  the run's warnings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.sdk_frames import events
from support.sdk_frames import log_calls as calls

from ingest.run import Run
from ingest.settings import ClientSettings
from schemas import (
    ClientWarning,
    Image,
    Media,
    SchemaError,
    Start,
    Table,
    capture,
)
from workers.align import RunAligner

BAD_TEXT = "ok\ud800"  # a lone surrogate, as errors="surrogateescape" makes them


def make_run(tmp_path: Path, **kwargs: Any) -> Run:
    args: dict[str, Any] = {"project": "proj", "run_id": "run1"} | kwargs
    return Run(settings=ClientSettings(data_dir=tmp_path), **args)


def _table_with_bad_cell() -> Any:
    t = Table(columns=["a"])
    t.data.append([BAD_TEXT])  # past add_data's own capture, as a user mutating .data would
    return t


BAD_VALUES: dict[str, Any] = {
    "lone surrogate": BAD_TEXT,
    "lone surrogate, non-ASCII around it": "é" + BAD_TEXT,
    "surrogate in a list": [1.0, [BAD_TEXT]],
    "surrogate in a tuple": ("a", BAD_TEXT),
    "surrogate in a dict key inside a list": [{BAD_TEXT: 1.0}],
    "surrogate in a dict value inside a list": [{"a": BAD_TEXT}],
    "surrogate in a table cell": _table_with_bad_cell(),
    "surrogate in an image caption": Image(np.zeros((2, 2), dtype=np.uint8), caption=BAD_TEXT),
    "surrogate in a media payload": Media("plot", {"keys": [BAD_TEXT]}),
    "surrogate in a str array": np.array([BAD_TEXT]),
    "complex": 1 + 2j,
    "complex in a list": [1.0, 1j],
    "numpy complex scalar": np.complex64(1j),
    "numpy complex array": np.ones(3, dtype=np.complex128),
    "numpy complex array (histogram size)": np.ones(100, dtype=np.complex64),
    "timedelta64 (ns: an np.integer)": np.timedelta64(5, "ns"),
    "timedelta64 (s)": np.timedelta64(5, "s"),
    "datetime64": np.datetime64("2024-01-01"),
    "timedelta64 array": np.array([1, 2], dtype="m8[s]"),
    "datetime64 array": np.array(["2024-01-01"], dtype="M8[D]"),
    "object array": np.array([1.0, "a"], dtype=object),
    "object array of floats": np.array([1.0, 2.0], dtype=object),
    "bytes": b"raw",
    "structured array": np.zeros(2, dtype=[("a", "f8")]),
}


@pytest.mark.parametrize("what", sorted(BAD_VALUES))
def test_capture_refuses_values_with_no_exact_stored_form(what: str) -> None:
    with pytest.raises(SchemaError) as e:
        capture(BAD_VALUES[what], "my/key")
    assert e.value.key == "my/key" and "'my/key'" in str(e.value)


@pytest.mark.parametrize("what", sorted(BAD_VALUES))
def test_log_refuses_them_naming_the_key_and_sends_nothing_of_the_call(tmp_path: Path, what: str) -> None:
    run = make_run(tmp_path)
    run.log({"ok": 1.0, "s": "fine"})
    with pytest.raises(SchemaError) as e:
        run.log({"ok": 2.0, "bad": BAD_VALUES[what]})
    assert e.value.key == "bad"
    run.log({"ok": 3.0, "s": "fine"})
    assert [c.data["ok"] for c in calls(events(run))] == [1.0, 3.0]
    assert run.step == 2


def test_fast_path_checks_strings(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.log({"a": 1.0, "s": "ascii"})
    run.log({"a": 2.0, "s": "ünïcødé ✓"})  # same keys and types: the fast path, non-ASCII but valid
    with pytest.raises(SchemaError, match="'s'") as e:
        run.log({"a": 3.0, "s": BAD_TEXT})
    assert e.value.code == "bad_text"
    run.log({"a": 4.0, "s": "ascii"})
    got = calls(events(run))
    assert [c.data["a"] for c in got] == [1.0, 2.0, 4.0]
    assert got[1].data["s"] == "ünïcødé ✓"


@pytest.mark.parametrize("data", [{"a\x00b": 1.0}, {"a": {"b\x00": 1.0}}, {"k" + BAD_TEXT: 1.0}])
def test_bad_keys_are_refused(tmp_path: Path, data: dict[str, Any]) -> None:
    run = make_run(tmp_path)
    with pytest.raises(SchemaError, match=r"NUL|Unicode"):
        run.log(data)
    with pytest.raises(SchemaError):
        run.summary.update(data)
    assert calls(events(run)) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"project": "p\x00"}, {"run_id": "r\x00un"}, {"project": "p" + BAD_TEXT}, {"run_id": BAD_TEXT},
     {"name": "n\x00"}, {"name": BAD_TEXT}, {"name": "n" * 257}, {"config": {BAD_TEXT: 1}},
     {"config": {"c": BAD_TEXT}}, {"config": {"c": 1j}}],
)
def test_bad_names_and_config_are_refused_at_init(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        make_run(tmp_path, **kwargs)


def test_config_updates_refuse_bad_keys_and_values(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with pytest.raises(SchemaError):
        run.config[BAD_TEXT] = 1
    with pytest.raises(SchemaError):
        run.config["x"] = np.timedelta64(1, "s")
    assert [type(e) for e in events(run)] == [Start]


# --- a call that fails in the sender is counted and reported, the rest of the batch is sent ---------------------


def _slip_past_log(run: Run, value: Any) -> None:
    """Queue a call whose value log() would refuse, as a bug on the fast path would (white box)."""
    b = run._b
    keys = b.block_keys
    assert keys is not None
    vals = tuple(value if k == "s" else 0.0 for k in keys)
    with b.lock:
        run._step += 1
        b.add_row_locked(keys, (vals, None, None, 123.0), tuple(map(type, vals)))


def test_a_call_failing_in_the_packer_costs_only_itself(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_run(tmp_path)
    for i in range(5):
        run.log({"i": float(i), "s": "ok"})
    _slip_past_log(run, BAD_TEXT)
    for i in range(5, 10):
        run.log({"i": float(i), "s": "ok"})
    with caplog.at_level(logging.ERROR, logger="ingest"):
        evs = events(run)
    got = calls(evs)
    # Every valid call is sent, in order, with its step.
    assert [c.data["i"] for c in got] == [float(i) for i in range(10)]
    warnings = [e for e in evs if isinstance(e, ClientWarning)]
    assert len(warnings) == 1 and "1 log() call(s) dropped" in warnings[0].message
    assert "'s'" in warnings[0].message  # names the key whose value does not encode
    assert run._b.dropped_calls == 1
    assert "dropped" in caplog.text
    res = run.finish(timeout=0)
    assert res.dropped_calls == 1 and not res.ok


def test_the_run_warnings_get_the_client_warning() -> None:
    r = RunAligner()
    r.apply(ClientWarning(ts=1.0, message="2 log() call(s) dropped by the client: ..."))
    assert r.warnings == ["client: 2 log() call(s) dropped by the client: ..."]
