"""One timer task for every pure machine the daemon drives.

Theory of operation. Each core says when it wants to be woken (aioquic's ``get_timer()``:
a deadline on trio's monotonic clock, or None) and what to do then (``handle_timer(now)``).
``TimerLoop`` sleeps until the earliest deadline of its sources, or until the pump says
that deadlines may have moved (``changed()``, at the end of every pump), then hands ``now``
to every source whose deadline (as read before the sleep) has passed, in the order the
sources were added, and pumps once if any fired::

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
        self._changed = trio.Event()

    def add(self, source: TimerSource) -> None:
        self.sources.append(source)
        self._changed.set()

    def changed(self) -> None:
        """Deadlines may have moved (the pump calls this after every round)."""
        self._changed.set()

    async def run(self) -> None:
        while True:
            deadlines = [(source, source.get_timer()) for source in self.sources]
            self._changed = trio.Event()
            wake = min((t for _, t in deadlines if t is not None), default=math.inf)
            with trio.move_on_at(wake):
                await self._changed.wait()
            now = trio.current_time()
            due = False
            for source, deadline in deadlines:
                if deadline is not None and now >= deadline:
                    source.handle_timer(now)
                    due = True
            if due:
                self._pump()
