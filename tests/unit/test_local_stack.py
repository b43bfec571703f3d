"""The local stack record (schemas.local): where it lives, its format, and when it counts as stale. No servers."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import local
from schemas.local import LocalStack, encode_stack, local_stack, parse_stack, stack_path


def record(**kw: object) -> LocalStack:
    base: dict[str, object] = {"pid": os.getpid(), "redis_url": "redis://127.0.0.1:1/0", "data_dir": "/tmp/sl-data",
                               "gateway_url": "http://127.0.0.1:8080", "started_at": 1.5}
    base.update(kw)
    return LocalStack(**base)  # type: ignore[arg-type]


def test_where_the_record_lives() -> None:
    assert stack_path({"STEPLINE_HOME": "/a", "XDG_RUNTIME_DIR": "/r", "HOME": "/h"}) == Path("/a/stack.json")
    assert stack_path({"XDG_RUNTIME_DIR": "/r", "HOME": "/h"}) == Path("/r/stepline/stack.json")
    assert stack_path({"HOME": "/h"}) == Path("/h/.stepline/stack.json")
    assert stack_path({"STEPLINE_HOME": "", "HOME": "/h"}) == Path("/h/.stepline/stack.json")  # empty = unset


def test_round_trip() -> None:
    r = record(db_url="postgresql://x/y", namespace="ns1", partitions=4)
    assert parse_stack(encode_stack(r)) == r
    assert parse_stack(encode_stack(record(gateway_url=None))).gateway_url is None


@pytest.mark.parametrize(("data", "why"), [
    (b"{", "not JSON"),
    (b"[]", "version"),
    (b'{"v": 2}', "version"),
    (b'{"v": 1, "pid": 1}', "redis_url"),
    (b'{"v": 1, "pid": true, "redis_url": "r", "data_dir": "/d", "namespace": "sl", "partitions": 16, '
     b'"started_at": 0}', "pid"),
])
def test_malformed_records_are_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_stack(data)


def test_relative_data_dir_and_bad_namespace_are_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        parse_stack(encode_stack(record(data_dir="rel/dir")))
    with pytest.raises(ValueError, match="namespace"):
        parse_stack(encode_stack(record(namespace="a:b")))


def dead_pid() -> int:
    """A pid no process has (the highest pid the kernel would hand out is far below this)."""
    return 2**22 + 12345


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_record_is_no_stack(tmp_path: Path) -> None:
    assert local_stack({"STEPLINE_HOME": str(tmp_path)}) is None


@pytest.mark.parametrize("kind", ["dead pid", "redis gone", "garbage"])
def test_a_stale_record_is_ignored_and_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 kind: str) -> None:
    home = tmp_path / kind.replace(" ", "-")
    home.mkdir()
    if kind == "dead pid":
        (home / "stack.json").write_bytes(encode_stack(record(pid=dead_pid())))
    elif kind == "redis gone":
        (home / "stack.json").write_bytes(encode_stack(record(redis_url=f"redis://127.0.0.1:{closed_port()}/0")))
    else:
        (home / "stack.json").write_bytes(b"\x00garbage")
    env = {"STEPLINE_HOME": str(home)}
    with caplog.at_level(logging.WARNING, logger="stepline"):
        assert local_stack(env) is None
        assert local_stack(env) is None
    said = [r.getMessage() for r in caplog.records if str(home) in r.getMessage()]
    assert len(said) == 1, said
    assert {"dead pid": "is gone", "redis gone": "does not answer", "garbage": "not JSON"}[kind] in said[0]
    local._warned.discard(str(home / "stack.json"))


_ids = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
               min_size=1, max_size=20).filter(lambda s: all(c not in s for c in "{}: "))


@given(pid=st.integers(1, 2**31), port=st.integers(1, 65535), data=st.text(min_size=1, max_size=40),
       namespace=_ids, partitions=st.integers(1, 4096), gateway=st.none() | st.just("http://127.0.0.1:8080"),
       db=st.none() | st.text(max_size=40), started=st.floats(0, 2e9))
def test_every_record_round_trips(pid: int, port: int, data: str, namespace: str, partitions: int,
                                  gateway: str | None, db: str | None, started: float) -> None:
    r = LocalStack(pid=pid, redis_url=f"redis://127.0.0.1:{port}/0", data_dir="/" + data, db_url=db,
                   gateway_url=gateway, namespace=namespace, partitions=partitions, started_at=started)
    assert parse_stack(encode_stack(r)) == r


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_parse_or_raise_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_stack(data)
