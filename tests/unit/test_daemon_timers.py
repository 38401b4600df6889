"""The daemon's one timer task (router/daemon/timers.py) over fake sources, in virtual time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from weftnet.router.daemon.timers import TimerLoop


class Source:
    """Wants to be woken at each of ``deadlines`` in turn; notes when it was."""

    def __init__(self, *deadlines: float) -> None:
        self.deadlines = list(deadlines)
        self.fired: list[float] = []

    def get_timer(self) -> float | None:
        return self.deadlines[0] if self.deadlines else None

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        while self.deadlines and self.deadlines[0] <= now:
            self.deadlines.pop(0)


def run(test: Callable[[TimerLoop, list[float]], Awaitable[None]],
        *sources: Source) -> None:
    """Run ``test(loop, pumps)`` with the loop running over ``sources`` from t=0;
    ``pumps`` collects the times the loop pumped."""
    pumps: list[float] = []

    async def main() -> None:
        loop = TimerLoop(sources, lambda: pumps.append(trio.current_time()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.run)
            await test(loop, pumps)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_each_source_is_woken_at_its_deadlines_then_the_loop_pumps() -> None:
    a, b, idle = Source(1.0, 5.0), Source(3.0), Source()

    async def test(loop: TimerLoop, pumps: list[float]) -> None:
        await trio.sleep_until(10.0)
        assert a.fired == [1.0, 5.0] and b.fired == [3.0] and idle.fired == []
        assert pumps == [1.0, 3.0, 5.0]

    run(test, a, b, idle)


def test_sources_due_together_fire_in_order_with_one_pump() -> None:
    order: list[str] = []

    class Named(Source):
        def __init__(self, name: str, *deadlines: float) -> None:
            super().__init__(*deadlines)
            self.name = name

        def handle_timer(self, now: float) -> None:
            order.append(self.name)
            super().handle_timer(now)

    async def test(loop: TimerLoop, pumps: list[float]) -> None:
        await trio.sleep_until(3.0)
        assert order == ["mesh", "ipam", "dns"] and pumps == [2.0]

    run(test, Named("mesh", 2.0), Named("ipam", 2.0), Named("dns", 2.0))


def test_a_moved_deadline_counts_once_the_pump_says_so() -> None:
    late = Source(100.0)

    async def test(loop: TimerLoop, pumps: list[float]) -> None:
        await trio.sleep_until(1.0)
        late.deadlines = [4.0]      # moved earlier, e.g. by an API call ...
        await trio.sleep_until(8.0)
        assert late.fired == []     # ... unseen while nobody says deadlines changed
        late.deadlines = [9.0]
        loop.changed()              # what the pump does after every round
        await trio.sleep_until(20.0)
        assert late.fired == [9.0] and pumps == [9.0]

    run(test, late)


def test_a_source_not_yet_due_is_not_handled() -> None:
    early, later = Source(1.0), Source(50.0)

    async def test(loop: TimerLoop, pumps: list[float]) -> None:
        await trio.sleep_until(2.0)
        assert early.fired == [1.0] and later.fired == []

    run(test, early, later)


def test_a_source_added_while_running_is_served() -> None:
    added = Source(7.0)

    async def test(loop: TimerLoop, pumps: list[float]) -> None:
        await trio.sleep_until(2.0)
        assert pumps == []          # nothing to wait for: the loop sleeps
        loop.add(added)
        await trio.sleep_until(10.0)
        assert added.fired == [7.0] and pumps == [7.0]

    run(test)


def test_changed_wakes_the_loop_only_for_an_earlier_deadline() -> None:
    """An idle router pumps after every message; each pump says changed(). Unless a
    deadline moved earlier, the loop sleeps on: no wake-up per pump."""
    src = Source(5.0)

    async def test(loop: TimerLoop, pumps: list[float]) -> None:
        for i in range(100):
            await trio.sleep_until(1.0 + i * 0.03)
            loop.changed()
        assert loop.wakeups == 0
        src.deadlines = [8.0]       # later: found when the loop wakes at 5, nothing due
        loop.changed()
        await trio.sleep_until(6.0)
        assert loop.wakeups == 1 and src.fired == [] and pumps == []
        src.deadlines = [7.0, 9.0]  # earlier than the 8 now armed: moves the wake-up
        loop.changed()
        await trio.sleep_until(10.0)
        assert src.fired == [7.0, 9.0] and pumps == [7.0, 9.0] and loop.wakeups == 3

    run(test, src)
