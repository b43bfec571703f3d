"""The poison-entry bookkeeping of :mod:`workers.attempts`, step by step (docs/DESIGN.md §6, "Poison entries").

Owners come and go as :class:`Attempt` objects on a stand-in processor; a "crash" is an attempt that simply ends
without being closed, as a killed process leaves it. The real-process version is ``tests/faults/test_poison.py``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import fakeredis

from schemas import Names
from workers.attempts import ALONE_FAILS, RANGE_FAILS, AttemptGuard, Marker, attempts_key

NAMES = Names("t", 4)
P = 2


def entries(*ids: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return [(i.encode(), {b"f": i.encode()}) for i in ids]


class Owner:
    """One owner of partition P: a guard (one per worker process) and its processor's attempt."""

    def __init__(self, guard: AttemptGuard) -> None:
        self.guard = guard
        self.proc: Any = SimpleNamespace(p=P, attempt=guard.new_attempt())

    async def first_batch(self, *ids: str) -> bool:
        """Record the first batch; True when it may be processed (False: its entries are to be isolated)."""
        held = await self.guard.before([(self.proc, entries(*ids))])
        return self.proc not in held


async def marker(r: fakeredis.FakeAsyncRedis) -> Marker:
    return Marker.parse(await r.hgetall(attempts_key(NAMES, P)))


async def test_an_entry_that_fails_every_time_is_isolated_then_poisoned() -> None:
    r = fakeredis.FakeAsyncRedis()
    for i in range(RANGE_FAILS):  # the batch from 1-0 is attempted and the worker dies each time
        o = Owner(AttemptGuard(r, NAMES, f"w{i}"))
        assert await o.first_batch("1-0", "2-0", "3-0")
    o = Owner(AttemptGuard(r, NAMES, "w-next"))
    assert not await o.first_batch("1-0", "2-0")  # the range failed RANGE_FAILS times: isolate up to 3-0
    assert o.proc.attempt.until == "3-0"
    assert (await marker(r)).open == ""  # no window open yet: dying now is no entry's fault
    assert await o.guard.alone(o.proc, entries("1-0")[0]) is None
    o.guard.alone_done(o.proc, "1-0")  # 1-0 alone was fine and is committed
    assert await o.guard.alone(o.proc, entries("2-0")[0]) is None  # ...and 2-0 kills the worker in its window
    for n in range(1, ALONE_FAILS + 1):
        o = Owner(AttemptGuard(r, NAMES, f"w-alone-{n}"))
        assert not await o.first_batch("2-0", "3-0")
        poison = await o.guard.alone(o.proc, entries("2-0")[0])
        if n < ALONE_FAILS:
            assert poison is None  # tried alone again
        else:
            assert poison is not None and poison.fails == ALONE_FAILS and poison.entry[0] == b"2-0"
            assert "died" in poison.message()
    o.guard.alone_done(o.proc, "2-0")  # dead-lettered and committed
    assert await o.guard.alone(o.proc, entries("3-0")[0]) is None
    o.guard.alone_done(o.proc, "3-0")
    assert not o.proc.attempt.isolating  # past the suspect range: batches again
    assert await o.first_batch("4-0", "5-0")
    m = await marker(r)
    assert (m.first, m.fails, m.alone) == ("4-0", 0, False)


async def test_clean_ends_and_progress_do_not_count() -> None:
    r = fakeredis.FakeAsyncRedis()
    for i in range(RANGE_FAILS + 2):  # hand-overs: each attempt closed in Redis
        o = Owner(AttemptGuard(r, NAMES, f"w{i}"))
        assert await o.first_batch("1-0", "2-0")
        await o.guard.close(o.proc)
    assert (await marker(r)).fails == 0
    guard = AttemptGuard(r, NAMES, "same-process")
    for _ in range(RANGE_FAILS + 2):  # outages: Redis could not be told, the process remembers
        o = Owner(guard)
        assert await o.first_batch("1-0", "2-0")
        guard.ended_clean(o.proc)
    assert (await marker(r)).fails == 0
    for i in range(RANGE_FAILS + 2):  # crashes, but each owner committed past the first entry before dying
        o = Owner(AttemptGuard(r, NAMES, f"c{i}"))
        assert await o.first_batch(f"{10 + i}-0", f"{11 + i}-0")
    assert (await marker(r)).fails == 0


async def test_a_crash_outside_an_isolated_entrys_window_does_not_count_against_it() -> None:
    r = fakeredis.FakeAsyncRedis()
    for i in range(RANGE_FAILS):
        assert await Owner(AttemptGuard(r, NAMES, f"w{i}")).first_batch("1-0", "2-0", "3-0")
    o = Owner(AttemptGuard(r, NAMES, "iso"))
    assert not await o.first_batch("1-0")
    for _ in range(ALONE_FAILS + 1):  # killed each time before the window of 1-0 opened (another partition's fault)
        o = Owner(AttemptGuard(r, NAMES, "iso-again"))
        assert not await o.first_batch("1-0")
    assert await o.guard.alone(o.proc, entries("1-0")[0]) is None
    o.guard.alone_done(o.proc, "1-0")
    for _ in range(ALONE_FAILS + 1):  # 1-0 committed, then killed before the window of 2-0: still isolating 2-0
        o = Owner(AttemptGuard(r, NAMES, "iso-more"))
        assert not await o.first_batch("2-0", "3-0")
        assert o.proc.attempt.until == "3-0"
    assert await o.guard.alone(o.proc, entries("2-0")[0]) is None


async def test_a_failed_commit_counts_and_its_error_is_the_dead_letters_message() -> None:
    r = fakeredis.FakeAsyncRedis()
    guard = AttemptGuard(r, NAMES, "one-worker")  # one worker retrying in-process, no crash
    o = Owner(guard)
    for _ in range(RANGE_FAILS):
        assert await o.first_batch("1-0")
        await guard.failed(o.proc, "OverflowError: int too big")
        o = Owner(guard)
    assert not await o.first_batch("1-0")
    for _ in range(ALONE_FAILS):
        assert await guard.alone(o.proc, entries("1-0")[0]) is None
        await guard.failed(o.proc, "OverflowError: int too big")
        o = Owner(guard)
        assert not await o.first_batch("1-0")
    poison = await guard.alone(o.proc, entries("1-0")[0])
    assert poison is not None
    assert "OverflowError: int too big" in poison.message()
