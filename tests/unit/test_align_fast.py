"""The aligner's column-wise block path must equal the per-call path exactly (rows, rejections, state)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import DefineMetric, Finish, Log, LogBlock, Start, decode_event, encode_event
from schemas.store import field_name
from workers.align import RowBatch, RunAligner

T0 = 1_700_000_000.0


def shapes(n: int) -> st.SearchStrategy[tuple[list[Any], list[Any]]]:
    """Steps and commits of one of the fast shapes (explicit+None, explicit+True, none), mostly increasing."""
    explicit = st.lists(st.integers(0, 3), min_size=n, max_size=n).map(_walk)
    return st.one_of(
        st.tuples(explicit, st.just([None] * n)),
        st.tuples(explicit, st.just([True] * n)),
        st.tuples(st.just([None] * n), st.sampled_from([[None] * n, [True] * n])),
    )


def _walk(deltas: list[int]) -> list[int]:
    """Steps that mostly rise, sometimes repeat, and sometimes go back (rejected calls)."""
    out, s = [], 5
    for d in deltas:
        s = s + d - 1 if d != 3 else s - 4
        out.append(max(s, 0))
    return out


block_st = st.integers(4, 40).flatmap(lambda n: st.tuples(
    shapes(n),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=n, max_size=n),
    st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n),
    st.lists(st.sampled_from(["u", "v", "ü"]), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n),
))


def flat_rows(r: RunAligner, rows: list[Any]) -> list[tuple[Any, ...]]:
    out = []
    for x in rows:
        vals = {field_name(r.displays[c], c[1]): repr(v) for c, v in x.values.items()}
        out.append((x.step, x.ts, x.runtime, vals))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(block_st, min_size=1, max_size=4), prelude=st.sampled_from(["none", "pending", "metrics"]),
       finish=st.booleans())
def test_fast_block_path_equals_per_call_path(blocks: list[Any], prelude: str, finish: bool) -> None:
    via_block, via_calls = RunAligner(), RunAligner()
    pre: list[Any] = [Start(ts=T0)]
    if prelude == "pending":  # a pending row with other keys when the first block arrives
        pre.append(Log(ts=T0, data={"other": 1.5}, step=5, commit=None))
    if prelude == "metrics":
        pre += [DefineMetric(name="epoch"), DefineMetric(name="f*", step_metric="epoch", summary="min,max,mean"),
                Log(ts=T0, data={"epoch": 3}, step=None, commit=None)]
    for e in pre:
        via_block.apply(e)
        via_calls.apply(e)
    t = T0 + 1
    fast_batches = 0
    for (steps, commits), fcol, icol, scol, bcol in blocks:
        n = len(steps)
        block = LogBlock(keys=["f", "i", "s", "B"], ts=np.array([t + i for i in range(n)]), step=steps,
                         commit=commits, cols=[np.array(fcol), np.array(icol, dtype=np.int64), scol, bcol])
        t += n
        decoded = decode_event(encode_event(block))
        assert isinstance(decoded, LogBlock)
        via_block.apply(decoded)
        fast_batches += sum(isinstance(x, RowBatch) for x in via_block.out_rows)
        for call in block.calls():
            via_calls.apply(decode_event(encode_event(call)))
    if finish:
        via_block.apply(Finish(ts=t))
        via_calls.apply(Finish(ts=t))
    rb, jb = via_block.take()
    rc, jc = via_calls.take()
    assert flat_rows(via_block, rb) == flat_rows(via_calls, rc)
    assert [(x.reason, x.step, x.cursor, x.ts) for x in jb] == [(x.reason, x.step, x.cursor, x.ts) for x in jc]
    assert via_block.dump() == via_calls.dump()
    assert repr(via_block.summary()) == repr(via_calls.summary())


def test_fast_path_is_taken_for_the_common_shape() -> None:
    r = RunAligner()
    n = 1000
    block = LogBlock(keys=["loss", "acc"], ts=np.arange(n, dtype=np.float64), step=list(range(n)),
                     commit=[None] * n, cols=[np.linspace(1, 0, n), np.linspace(0, 1, n)])
    r.apply(block)
    rows, _ = r.take_columnar()
    assert [len(x) for x in rows if isinstance(x, RowBatch)] == [n - 1]  # the last call stays pending
    assert r.cursor == n - 1 and r.rows == n - 1
