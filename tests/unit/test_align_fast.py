"""The aligner's column-wise block path (``workers/fastpath.py``) must equal the per-call path exactly (rows,
rejections, state), and must really be taken for the blocks the SDK sends.

Three generators of blocks:

- SDK-shaped (:func:`sdk_runs`): what ``ingest.batch`` sends for a training loop: steady keys, one kind per column
  (float64 and int64 arrays, lists of str, lists of bool), and per block one shape: rising explicit steps with
  ``commit`` None, ``step`` + ``commit=True``, no steps (``commit`` None or True); now and then calls that go back
  (a restarted loop: rejected) and short blocks of other keys in between (an eval). Every such block must go
  column-wise.
- Fast shapes (:data:`fast_shape_blocks`): four columns of the four kinds, steps that mostly rise, repeat and go
  back, with a pending row of other keys or step metrics before them.
- Irregular (:data:`irregular_blocks`): mixed shapes, ``commit=False``, None values, several kinds in a column,
  keys that differ only by case, blocks shorter than 4 calls. Such a block must go call by call.

How a test sees the path: the fast path hands a block's leading calls (at most one for the shapes above) to
:meth:`RunAligner.apply_log` and does the rest with numpy; the fallback hands every call to it. So a block went
column-wise exactly when fewer than all its calls reached ``apply_log`` (counted by :class:`Counted`). Each test
asserts, per block, that an ineligible block never went column-wise and that a block that must (its shape, the
run's cursor and pending row before it, computed by the independent oracle) did, and asserts the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.blocks import Counted, column_kind, fast_eligible, must_go_fast, sdk_column, shape_of
from support.history_oracle import Oracle, rows_same

from schemas import DefineMetric, Finish, Log, LogBlock, Start, decode_event, encode_event
from schemas.store import field_name
from workers.align import RowBatch, RunAligner, expand

T0 = 1_700_000_000.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

def feed_oracle(o: Oracle, event: Any) -> None:
    if isinstance(event, Start):
        o.start(event.ts)
    elif isinstance(event, Log):
        o.log(event.ts, event.data, event.step, event.commit)
    elif isinstance(event, LogBlock):
        for call in event.calls():
            o.log(call.ts, call.data, call.step, call.commit)
    elif isinstance(event, Finish):
        o.finish(event.ts)


# --- running both paths ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    rows_block: list[Any]
    rows_calls: list[Any]
    per_call: list[int]  # calls of each block that went through apply_log on the block side
    must: list[bool]  # per block: must_go_fast before it
    elig: list[bool]

    def went_fast(self, blocks: list[LogBlock]) -> list[bool]:
        return [pc < len(b) for pc, b in zip(self.per_call, blocks, strict=True)]


def aligner_rows(r: RunAligner, rows: list[Any]) -> list[tuple[int, float, float, dict[str, Any]]]:
    """Rows keyed by field name (a column the aligner never registered shows as ``?ident:kind``)."""
    return [(x.step, x.ts, x.runtime, {field_name(r.displays.get(c, f"?{c[0]}"), c[1]): v
                                       for c, v in x.values.items()})
            for x in rows]


def typed(rows: list[tuple[int, float, float, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """Rows with values as reprs: 1 vs 1.0 vs True and NaN compare as the segment writer would see them."""
    return [(s, ts, rt, {k: repr(v) for k, v in vals.items()}) for s, ts, rt, vals in rows]


def run_both(prelude: list[Any], blocks: list[LogBlock], finish: bool, split: int | None,
             with_oracle: bool) -> Outcome:
    """Apply the prelude and the blocks (wire round trip) to two aligners, one block at a time on one side and call
    by call on the other; assert identical rows, rejections, saved state and summaries (and, ``with_oracle``, the
    oracle's rows, rejections and cursor). ``split``: dump and load the block side's state before that block."""
    fast, slow, o = Counted(), RunAligner(), Oracle()
    rows_b: list[Any] = []
    rej_b: list[Any] = []
    for e in prelude:
        fast.al.apply(e)
        slow.apply(e)
        feed_oracle(o, e)
    per_call: list[int] = []
    must: list[bool] = []
    elig: list[bool] = []
    for i, block in enumerate(blocks):
        if split is not None and i == split:
            got, rej = fast.al.take_columnar()
            rows_b += got
            rej_b += rej
            fast.reload()
        decoded = decode_event(encode_event(block))
        assert isinstance(decoded, LogBlock)
        elig.append(fast_eligible(block))
        before = fast.calls
        must.append(must_go_fast(block, o))
        fast.al.apply(decoded)
        per_call.append(fast.calls - before)
        for call in block.calls():
            slow.apply(decode_event(encode_event(call)))
        feed_oracle(o, block)
    if finish:
        end = Finish(ts=T0 + 10**6)
        fast.al.apply(end)
        slow.apply(end)
        feed_oracle(o, end)
    got, rej = fast.al.take_columnar()
    rows_b += got
    rej_b += rej
    batches = sum(isinstance(x, RowBatch) for x in rows_b)
    rb = aligner_rows(fast.al, expand(rows_b))
    rc_raw, jc = slow.take()
    rc = aligner_rows(slow, rc_raw)
    assert typed(rb) == typed(rc)
    key = [(x.reason, x.step, x.cursor, x.ts, x.message) for x in rej_b]
    assert key == [(x.reason, x.step, x.cursor, x.ts, x.message) for x in jc]
    assert fast.al.dump() == slow.dump()
    assert repr(fast.al.summary()) == repr(slow.summary())
    assert fast.al.info()["warnings"] == slow.info()["warnings"]
    if with_oracle:
        assert rows_same(rc, o.rows), (rc, o.rows)
        assert [(x.reason, x.step, x.cursor) for x in jc] == o.rejections
        assert slow.cursor == o.cursor
    # Column-wise rows come out as row batches; a block that went per call cannot have made one.
    if not any(pc < len(b) for pc, b in zip(per_call, blocks, strict=True)):
        assert batches == 0
    return Outcome(rb, rc, per_call, must, elig)


def check_paths(out: Outcome, blocks: list[LogBlock]) -> int:
    """Per block: an ineligible block went call by call; a block that must go column-wise did, handing at most
    its first call to the per-call path. Returns how many blocks went column-wise."""
    fast = out.went_fast(blocks)
    for i, b in enumerate(blocks):
        if not out.elig[i]:
            assert not fast[i], f"block {i} is not eligible but went column-wise: {b!r:.300}"
        if out.must[i]:
            assert fast[i], f"block {i} should have gone column-wise: {b!r:.300}"
            assert out.per_call[i] <= 1, f"block {i}: {out.per_call[i]} of {len(b)} calls went per call"
    return sum(fast)


# --- generators ------------------------------------------------------------------------------------------------

NAMES = ["loss", "f/acc", "train/loss", "lr", "epoch", "phase", "ok", "Grad", "ü/x"]
KINDS = ["float", "int", "str", "bool"]
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "float": st.floats(allow_nan=True, allow_infinity=True, width=64),
    "int": st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from([INT64_MIN, INT64_MAX, 0, -1])),
    "str": text,
    "bool": st.booleans(),
}


PRELUDES = {
    "none": [Start(ts=T0)],
    # a pending row of other keys when the first block comes (a log(d, step=5) just before)
    "pending": [Start(ts=T0), Log(ts=T0, data={"other": 1.5}, step=5, commit=None)],
    # step metrics and summaries: fill-ins in column-wise rows
    "metrics": [Start(ts=T0), DefineMetric(name="epoch"),
                DefineMetric(name="f*", step_metric="epoch", summary="min,max,mean"),
                DefineMetric(name="loss", summary="min,max,mean,first,last"),
                Log(ts=T0, data={"epoch": 3}, step=None, commit=None)],
}


@st.composite
def sdk_runs(draw: st.DrawFn, prelude: str) -> tuple[list[LogBlock], list[bool]]:
    """Blocks of one run as the SDK sends them (see the module docstring), and which of them are training blocks
    (eligible by construction; the others are short blocks of other keys). Steps are chosen against an oracle of
    the run so far, as a training script's ``global_step`` would be."""
    o = Oracle()
    for e in PRELUDES[prelude]:
        feed_oracle(o, e)
    cols = draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(KINDS)), min_size=1, max_size=5,
                         unique_by=lambda c: c[0].casefold()))
    keys = [k for k, _ in cols]
    kinds = {(k.casefold(), "number" if kind in ("float", "int") else "string" if kind == "str" else "bool")
             for k, kind in cols}
    t = T0 + 1.0
    blocks: list[LogBlock] = []
    main: list[bool] = []
    for _ in range(draw(st.integers(1, 5))):
        if blocks and draw(st.integers(0, 3)) == 0:  # an eval between training blocks: 1..3 calls, other keys
            m = draw(st.integers(1, 3))
            step_s, commit_s = draw(st.sampled_from([("cursor", None), (None, False), (None, None)]))
            steps = [o.cursor if step_s == "cursor" else None for _ in range(m)]
            vals = draw(st.lists(VALUES["float"], min_size=m, max_size=m))
            ev = LogBlock(keys=["val/loss"], ts=np.array([t + i for i in range(m)]), step=steps,
                          commit=[commit_s] * m, cols=[np.array(vals, dtype=np.float64)])
            t += m
            feed_oracle(o, ev)
            blocks.append(ev)
            main.append(False)
        n = draw(st.integers(4, 64))
        shape = draw(st.sampled_from(["step", "commit", "nostep", "nostep-commit"]))
        values = {k: draw(st.lists(VALUES[kind], min_size=n, max_size=n)) for k, kind in cols}
        steps_out: list[int | None] = []
        commits = [True if shape in ("commit", "nostep-commit") else None] * n
        for i in range(n):
            if shape.startswith("nostep"):
                steps_out.append(None)
            else:
                pending = {(ident, kind) for ident, (kind, _v) in o.pending.items()}
                lo = 1 if shape == "step" and i == 0 and pending and pending != kinds else 0
                if i > 0 and draw(st.integers(0, 15)) == 0:  # a restarted loop: a step the run has passed
                    step = max(0, o.cursor - draw(st.integers(1, 3)))
                else:
                    step = o.cursor + draw(st.sampled_from([lo, max(lo, 1), max(lo, 1), 2, 7]))
                steps_out.append(step)
            o.log(t + i, {k: values[k][i] for k in keys}, steps_out[-1], commits[i])
        ev = LogBlock(keys=list(keys), ts=np.array([t + i for i in range(n)]), step=steps_out, commit=commits,
                      cols=[sdk_column(values[k]) for k, _kind in cols])
        t += n
        blocks.append(ev)
        main.append(True)
    return blocks, main


def _walk(deltas: list[int]) -> list[int]:
    """Steps that mostly rise, sometimes repeat, and sometimes go back (rejected calls)."""
    out, s = [], 5
    for d in deltas:
        s = s + d - 1 if d != 3 else s - 4
        out.append(max(s, 0))
    return out


def _shapes(n: int) -> st.SearchStrategy[tuple[list[Any], list[Any]]]:
    explicit = st.lists(st.integers(0, 3), min_size=n, max_size=n).map(_walk)
    return st.one_of(
        st.tuples(explicit, st.just([None] * n)),
        st.tuples(explicit, st.just([True] * n)),
        st.tuples(st.just([None] * n), st.sampled_from([[None] * n, [True] * n])),
    )


fast_shape_blocks = st.integers(4, 40).flatmap(lambda n: st.tuples(
    _shapes(n),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=n, max_size=n),
    st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n),
    st.lists(st.sampled_from(["u", "v", "ü"]), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n),
).map(lambda x: LogBlock(keys=["f", "i", "s", "B"], ts=np.zeros(n), step=x[0][0], commit=x[0][1],
                         cols=[np.array(x[1], dtype=np.float64), np.array(x[2], dtype=np.int64), x[3], x[4]])))

mixed_value = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(width=64), st.sampled_from(["u", "v"]))


@st.composite
def irregular_blocks(draw: st.DrawFn) -> LogBlock:
    n = draw(st.integers(1, 8))
    keys = draw(st.lists(st.sampled_from(["a", "A", "b", "c"]), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        steps, commits = draw(_shapes(n))
    else:
        steps = draw(st.lists(st.one_of(st.none(), st.integers(0, 12)), min_size=n, max_size=n))
        commits = draw(st.lists(st.sampled_from([None, True, False]), min_size=n, max_size=n))
    cols: list[Any] = []
    for _ in keys:
        kind = draw(st.sampled_from(["float", "int", "str", "bool", "mixed"]))
        if kind == "mixed":
            cols.append(draw(st.lists(mixed_value, min_size=n, max_size=n)))
        else:
            cols.append(sdk_column(draw(st.lists(VALUES[kind] if kind != "str" else st.sampled_from("uvw"),
                                                 min_size=n, max_size=n))))
    return LogBlock(keys=keys, ts=np.zeros(n), step=steps, commit=commits, cols=cols)


def stamped(blocks: list[LogBlock]) -> list[LogBlock]:
    """Give the calls rising timestamps across blocks."""
    t = T0 + 1.0
    for b in blocks:
        b.ts = np.array([t + i for i in range(len(b))], dtype=np.float64)
        t += len(b)
    return blocks


# --- the tests -------------------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.data(), prelude=st.sampled_from(sorted(PRELUDES)), finish=st.booleans(),
       split=st.one_of(st.none(), st.integers(0, 10)))
def test_sdk_shaped_blocks_go_column_wise_and_equal_per_call(data: st.DataObject, prelude: str, finish: bool,
                                                             split: int | None) -> None:
    blocks, main = data.draw(sdk_runs(prelude))
    out = run_both(PRELUDES[prelude], blocks, finish, split, with_oracle=prelude != "metrics")
    assert all(out.must[i] for i in range(len(blocks)) if main[i]), "the generator made a block of another shape"
    fast = check_paths(out, blocks)
    assert fast == sum(main), (fast, main, out.per_call)  # every training block, and no eval block (< 4 calls)


@SETTINGS
@given(blocks=st.lists(fast_shape_blocks, min_size=1, max_size=4), prelude=st.sampled_from(sorted(PRELUDES)),
       finish=st.booleans(), split=st.one_of(st.none(), st.integers(0, 4)))
def test_fast_shapes_with_back_steps_equal_per_call(blocks: list[LogBlock], prelude: str, finish: bool,
                                                    split: int | None) -> None:
    blocks = stamped(blocks)
    out = run_both(PRELUDES[prelude], blocks, finish, split, with_oracle=prelude != "metrics")
    fast = check_paths(out, blocks)
    assert all(out.elig)
    assert sum(out.must) <= fast <= len(blocks)
    assert out.must[0] or prelude == "pending"  # a fresh run takes the first block column-wise


@SETTINGS
@given(blocks=st.lists(st.one_of(irregular_blocks(), fast_shape_blocks), min_size=1, max_size=6),
       finish=st.booleans(), split=st.one_of(st.none(), st.integers(0, 6)))
def test_irregular_blocks_equal_per_call(blocks: list[LogBlock], finish: bool, split: int | None) -> None:
    blocks = stamped(blocks)
    out = run_both([Start(ts=T0)], blocks, finish, split, with_oracle=True)
    fast = check_paths(out, blocks)
    assert sum(out.must) <= fast <= sum(out.elig)


def test_generators_reach_every_shape() -> None:
    """The SDK-shaped generator really makes each shape and kind (a guard against a generator that drifts into
    producing only one of them, which the property tests could not notice)."""
    seen_shapes: set[str | None] = set()
    seen_kinds: set[str | None] = set()

    @settings(max_examples=100, deadline=None, database=None)
    @given(run=sdk_runs("none"))
    def collect(run: tuple[list[LogBlock], list[bool]]) -> None:
        for b, is_main in zip(*run, strict=True):
            if is_main:
                seen_shapes.add(shape_of(b.step, b.commit))
                seen_kinds.update(column_kind(c) for c in b.cols)

    collect()
    assert seen_shapes == {"step", "commit", "nostep"}
    assert seen_kinds == {"number", "string", "bool"}


def test_commit_block_whose_first_call_is_rejected_registers_its_columns() -> None:
    """Found by the generators: a commit=True block whose first call was rejected went column-wise without
    registering its new columns, so the segment writer had no name for them (the commit failed every time)."""
    blocks = [LogBlock(keys=["x"], ts=np.array([2.0, 3.0, 4.0, 5.0]), step=[0, 6, 7, 8], commit=[True] * 4,
                       cols=[np.array([0.5, 1.5, 2.5, 3.5])])]
    prelude = [Start(ts=T0), Log(ts=T0, data={"y": 1.0}, step=4, commit=True)]  # cursor 5, nothing pending
    fast = Counted()
    for e in prelude:
        fast.al.apply(e)
    fast.al.apply(blocks[0])
    slow = RunAligner()
    for e in [*prelude, *blocks[0].calls()]:
        slow.apply(e)
    assert fast.al.displays == slow.displays == {("y", "number"): "y", ("x", "number"): "x"}


def test_fast_path_is_taken_for_the_common_shape() -> None:
    r = Counted()
    n = 1000
    block = LogBlock(keys=["loss", "acc"], ts=np.arange(n, dtype=np.float64), step=list(range(n)),
                     commit=[None] * n, cols=[np.linspace(1, 0, n), np.linspace(0, 1, n)])
    r.al.apply(block)
    rows, _ = r.al.take_columnar()
    assert r.calls == 1  # the first call sets up the pending row; the other 999 go column-wise
    assert [len(x) for x in rows if isinstance(x, RowBatch)] == [n - 1]  # the last call stays pending
    assert r.al.cursor == n - 1 and r.al.rows == n - 1
    # The next block of the same run continues column-wise from its first call.
    block2 = LogBlock(keys=["loss", "acc"], ts=np.arange(n, 2 * n, dtype=np.float64), step=list(range(n, 2 * n)),
                      commit=[None] * n, cols=[np.linspace(1, 0, n), np.linspace(0, 1, n)])
    r.al.apply(block2)
    assert r.calls == 1  # the row left pending by the first block is written, then 1000 calls column-wise
    rows, _ = r.al.take_columnar()
    assert [(type(x).__name__, len(x) if isinstance(x, RowBatch) else x.step) for x in rows] == [
        ("Row", n - 1), ("RowBatch", n - 1)]
    assert r.al.cursor == 2 * n - 1 and r.al.rows == 2 * n - 1
