"""One timer task for every pure machine the daemon drives.

Theory of operation. Each core says when it wants to be woken (aioquic's ``get_timer()``:
a deadline on trio's monotonic clock, or None) and what to do then (``handle_timer(now)``).
``TimerLoop`` sleeps until the earliest deadline of its sources; when the pump says that
deadlines may have moved (``changed()``, at the end of every pump) it looks at them at once
and moves its wake-up earlier if one is, never later (waking early costs one look). Awake,
it hands ``now`` to every source whose deadline has passed, in the order the sources were
added, and pumps once if any fired::

    sources: mesh, data plane, IPAM/DNS drivers  ──get_timer()──▶ earliest deadline
    sleep until then, or until changed()         ──handle_timer(now)──▶ each due source
                                                 ──pump()──▶ carry out what they asked for

A source that works on another clock converts in its own ``get_timer`` (the DNS driver:
wall-clock seconds, offset fixed at start). Adding a source is one ``add`` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Protocol

import trio


class TimerSource(Protocol):
    """A machine that wants to be woken: ``MeshNode``, the data plane and the drivers."""

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class TimerLoop:
    """Wakes each source at its deadline, then pumps; run ``run()`` as a task."""

    def __init__(self, sources: Iterable[TimerSource], pump: Callable[[], None]) -> None:
        self.sources: list[TimerSource] = list(sources)
        self._pump = pump
        self._sleep: trio.CancelScope | None = None  # while run() sleeps
        self.wakeups = 0  # times run() woke up (for tests and measurements)

    def add(self, source: TimerSource) -> None:
        self.sources.append(source)
        self.changed()

    def earliest(self) -> float:
        return min((t for source in self.sources if (t := source.get_timer()) is not None),
                   default=math.inf)

    def changed(self) -> None:
        """Deadlines may have moved (the pump calls this after every round). Only an
        earlier deadline moves the wake-up; a later one is found on waking, when nothing
        is due yet: an idle router's pumps then cost no extra scheduling round each."""
        scope = self._sleep
        if scope is not None:
            wake = self.earliest()
            if wake < scope.deadline:
                scope.deadline = wake

    async def run(self) -> None:
        while True:
            with trio.CancelScope(deadline=self.earliest()) as scope:
                self._sleep = scope
                await trio.sleep_forever()
            self._sleep = None
            self.wakeups += 1
            now = trio.current_time()
            due = False
            for source in list(self.sources):
                deadline = source.get_timer()
                if deadline is not None and now >= deadline:
                    source.handle_timer(now)
                    due = True
            if due:
                self._pump()
