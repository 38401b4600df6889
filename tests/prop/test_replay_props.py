"""The replay window against a set-based oracle that remembers everything.

Oracle: a counter is accepted iff it was never recorded and it is above the highest
recorded counter or within ``size`` below it (``highest - size < c``).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.replay import COUNTER_MAX, ReplayWindow


class Oracle:
    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.highest = -1

    def check(self, c: int) -> bool:
        return c not in self.seen and (c > self.highest or self.highest - self.size < c)

    def update(self, c: int) -> None:
        if c > self.highest or self.highest - self.size < c:
            self.seen.add(c)
            self.highest = max(self.highest, c)


def counter_runs(size: int) -> st.SearchStrategy[list[tuple[int, bool]]]:
    """Counters near a moving base: in-order runs, reordering, duplicates, big jumps and
    the extremes; each paired with whether the packet "authenticates" (update or not)."""
    near = st.integers(-2 * size - 70, 2 * size + 70)
    step = st.one_of(
        near.map(lambda d: ("rel", d)),
        st.integers(0, COUNTER_MAX).map(lambda c: ("abs", c)),
        st.integers(1, 5 * size + 300).map(lambda d: ("jump", d)),
        st.sampled_from([("abs", 0), ("abs", COUNTER_MAX), ("abs", COUNTER_MAX - 1),
                         ("jump", size), ("jump", size + 1), ("jump", 1 << 40)]),
    )
    return st.lists(st.tuples(step, st.booleans()), max_size=300).map(
        lambda ops: _materialise(ops))


def _materialise(ops: list[tuple[tuple[str, int], bool]]) -> list[tuple[int, bool]]:
    base = 0
    out = []
    for (how, value), authentic in ops:
        if how == "rel":
            c = base + value
        elif how == "jump":
            base += value
            c = base
        else:
            c = value
        c = min(max(c, 0), COUNTER_MAX)
        base = max(base, c) if authentic else base
        out.append((c, authentic))
    return out


@pytest.mark.parametrize("size", [1, 5, 63, 64, 65, 100, 1000, 8192])
def test_window_matches_the_oracle(size: int) -> None:
    @given(counter_runs(size))
    def run(ops: list[tuple[int, bool]]) -> None:
        window, oracle = ReplayWindow(size), Oracle(size)
        for c, authentic in ops:
            assert window.check(c) == oracle.check(c), (c, window.highest)
            if authentic and oracle.check(c):
                window.update(c)
                oracle.update(c)
            assert window.highest == oracle.highest
        sweep(window, oracle)
    run()


def sweep(window: ReplayWindow, oracle: Oracle) -> None:
    """Every counter from below the window to above the top answers like the oracle."""
    low = max(0, oracle.highest - oracle.size - 70)
    for c in range(low, min(oracle.highest + 70, COUNTER_MAX) + 1):
        assert window.check(c) == oracle.check(c), (c, oracle.highest)


@given(st.integers(1, 300), st.integers(0, 700), st.integers(1, 2000), st.data())
def test_dense_window_then_jump(size: int, filled: int, jump: int, data: st.DataObject) -> None:
    """A full window, a jump of any length, then more: stale bits must never survive."""
    window, oracle = ReplayWindow(size), Oracle(size)
    for c in range(filled):
        window.update(c)
        oracle.update(c)
    top = max(filled - 1, 0) + jump
    window.update(top)
    oracle.update(top)
    sweep(window, oracle)
    for c in data.draw(st.lists(st.integers(max(0, top - size), top + 3 * size), max_size=50)):
        window.update(c)
        oracle.update(c)
    sweep(window, oracle)


@given(st.lists(st.integers(0, 20000), max_size=400), st.integers(1, 9000))
def test_update_of_anything_matches_the_oracle(counters: list[int], size: int) -> None:
    """``update`` without a prior ``check`` (duplicates, too old) keeps the same answers."""
    window, oracle = ReplayWindow(size), Oracle(size)
    for c in counters:
        window.update(c)
        oracle.update(c)
    for c in range(max(0, oracle.highest - size - 70), oracle.highest + 70):
        assert window.check(c) == oracle.check(c), c


@given(st.permutations(range(300)))
def test_every_counter_once_in_any_order_within_the_window(order: list[int]) -> None:
    window = ReplayWindow(512)
    for c in order:
        assert window.check(c)
        window.update(c)
        assert not window.check(c)
    assert window.highest == 299


def test_extremes() -> None:
    window = ReplayWindow()
    assert window.highest == -1
    assert window.check(0) and window.check(COUNTER_MAX)
    assert not window.check(-1) and not window.check(COUNTER_MAX + 1)
    window.update(COUNTER_MAX)
    assert not window.check(COUNTER_MAX)
    assert window.check(COUNTER_MAX - 8191) and not window.check(COUNTER_MAX - 8192)
    with pytest.raises(LocalProtocolError):
        window.update(COUNTER_MAX + 1)
    with pytest.raises(LocalProtocolError):
        window.update(-1)
    with pytest.raises(LocalProtocolError):
        ReplayWindow(0)
