"""The commit announcements' format and the waiting side's decision (schemas.commits), against a plain model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.commits import announcement, id_tuple, live_workers, reached

_id = st.tuples(st.integers(0, 2**48), st.integers(0, 2**20))


def _s(i: tuple[int, int]) -> str:
    return f"{i[0]}-{i[1]}"


@given(st.lists(_id, max_size=20, unique=True), _id, st.data())
def test_reached_iff_an_entry_is_at_or_past_the_target(ids: list[tuple[int, int]], target: tuple[int, int],
                                                        data: st.DataObject) -> None:
    ids.sort()
    named = data.draw(st.sets(st.sampled_from(ids)) if ids else st.just(set()))
    entries = [(_s(i).encode(), announcement(_s(i), [("p", "r", 10 * k, k)] if i in named else []))
               for k, i in enumerate(ids)]
    got = reached(entries, _s(target), "p", "r")
    past = [(k, i) for k, i in enumerate(ids) if i >= target]
    assert (got is not None) == bool(past)
    if got is not None:
        first_named = next(((k, i) for k, i in past if i in named), None)
        want = (None, None) if first_named is None else (10 * first_named[0], first_named[0])
        assert (got.rows, got.rejected) == want


def test_ids_compare_numerically() -> None:
    assert id_tuple("10-2") > id_tuple("9-99") and id_tuple(b"5") == (5, 0)
    assert reached([(b"10-0", {b"o": b"10-0"})], "9-99", "p", "r") is not None
    assert reached([(b"9-99", {b"o": b"9-99"})], "10-0", "p", "r") is None


def test_another_runs_counts_are_not_taken() -> None:
    e = [(b"5-0", announcement("5-0", [("p", "other", 7, 1)]))]
    got = reached(e, "5-0", "p", "r")
    assert got is not None and (got.rows, got.rejected) == (None, None)


def test_live_workers_counts_recent_heartbeats() -> None:
    now = 1_000_000.0
    assert live_workers({b"a": b"999000", b"b": b"980000", b"c": str(int(now)).encode()}, now) == 2
