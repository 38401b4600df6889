"""Addresses of containers whose namespace disappeared: freed after a grace period.

Theory of operation (after Weave's ``containerDiedTimeout``). When the router finds a
container's network namespace gone without a ``weft detach`` (the container exited, the
namespace was deleted, the router was down when it happened), its addresses are not
freed at once but ``grace`` seconds later (``RELEASE_GRACE``, 30 s, as in Weave Net; the
router takes ``WEFT_IPAM_GRACE`` from its environment; 0 frees at once). A container
that comes back meanwhile under the same name (a restart, a runtime re-creating the
namespace) and asks again gets the same addresses; ``weft detach`` (or a CNI DEL) frees
at once, pending or not.

Deadlines are kept in the allocator's clock (``now``, monotonic in the router). To
survive a restart they are persisted in wall-clock time: the router passes the offset
``wall - now`` (``wall_offset``) when it builds the allocator, and a deadline that passed
while the router was down is met as soon as the state is loaded. One more than ``grace``
ahead (the wall clock was set back while the router was down) is cut to ``grace`` from
the load: a clock step never holds addresses longer than one grace period.
"""

from __future__ import annotations

import math

RELEASE_GRACE = 30.0
MAX_GRACE = 7 * 24 * 3600.0


def check_grace(value: float) -> float:
    """A grace period in seconds (0 .. one week); ValueError with a one-line reason."""
    if not math.isfinite(value) or not 0 <= value <= MAX_GRACE:
        raise ValueError(f"grace period {value!r} s is out of range (0 to {MAX_GRACE:.0f} s)")
    return float(value)


class Releases:
    """Identifier -> when its addresses are freed (allocator time)."""

    def __init__(self) -> None:
        self.due: dict[str, float] = {}

    def __contains__(self, ident: object) -> bool:
        return ident in self.due

    def __len__(self) -> int:
        return len(self.due)

    def mark(self, ident: str, at: float) -> bool:
        """Free ``ident`` at ``at`` (an earlier mark stands); True when newly marked."""
        if ident in self.due:
            return False
        self.due[ident] = at
        return True

    def cancel(self, ident: str) -> bool:
        return self.due.pop(ident, None) is not None

    def clear(self) -> None:
        self.due.clear()

    def expired(self, now: float) -> list[str]:
        """Identifiers whose time has come (sorted), no longer marked."""
        out = sorted(i for i, at in self.due.items() if at <= now)
        for ident in out:
            del self.due[ident]
        return out

    def next_time(self) -> float | None:
        return min(self.due.values(), default=None)

    def items(self) -> list[tuple[str, float]]:
        """(identifier, when), soonest first."""
        return sorted(self.due.items(), key=lambda kv: (kv[1], kv[0]))

    def to_wall(self, wall_offset: float) -> list[list[object]]:
        return [[ident, round(at + wall_offset, 3)] for ident, at in self.items()]
