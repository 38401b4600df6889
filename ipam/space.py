"""The addresses in use on this peer, and the searches the allocator runs over them.

Theory of operation. A peer allocates only inside the ranges the ring says it owns; this
module does not know the ring: it keeps the set of addresses in use (a sorted list, for
"lowest free address in [lo, hi)" and "free count of [lo, hi)" in O(log n + run)) and
which identifier (container) holds each. Addresses are plain ints (IPv4 as 32-bit).

An address can also be *reserved*: the network and broadcast address of the subnet an
allocation is made in are never handed out (``lowest_free`` takes them as ``skip``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class Space:
    def __init__(self) -> None:
        self._used: list[int] = []
        self._owner: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._used)

    def __contains__(self, addr: object) -> bool:
        return addr in self._owner

    def holder(self, addr: int) -> str | None:
        return self._owner.get(addr)

    def items(self) -> list[tuple[int, str]]:
        return [(a, self._owner[a]) for a in self._used]

    def of(self, ident: str) -> list[int]:
        return [a for a in self._used if self._owner[a] == ident]

    def add(self, addr: int, ident: str) -> None:
        if addr in self._owner:
            raise ValueError(f"address {addr} in use")
        bisect.insort(self._used, addr)
        self._owner[addr] = ident

    def remove(self, addr: int) -> str | None:
        ident = self._owner.pop(addr, None)
        if ident is not None:
            del self._used[bisect.bisect_left(self._used, addr)]
        return ident

    def used_in(self, lo: int, hi: int) -> int:
        return bisect.bisect_left(self._used, hi) - bisect.bisect_left(self._used, lo)

    def free_in(self, lo: int, hi: int) -> int:
        return max(0, hi - lo - self.used_in(lo, hi))

    def lowest_free(self, lo: int, hi: int, skip: Iterable[int] = ()) -> int | None:
        """The lowest address of ``[lo, hi)`` not in use and not in ``skip``."""
        skipped = set(skip)
        cand = lo
        i = bisect.bisect_left(self._used, lo)
        while cand < hi:
            if i < len(self._used) and self._used[i] == cand:
                cand += 1
                i += 1
            elif cand in skipped:
                cand += 1
            else:
                return cand
        return None

    def largest_free_run(self, lo: int, hi: int) -> tuple[int, int] | None:
        """The longest ``[a, b)`` inside ``[lo, hi)`` with no address in use (lowest first)."""
        best: tuple[int, int] | None = None
        prev = lo
        i = bisect.bisect_left(self._used, lo)
        while True:
            nxt = self._used[i] if i < len(self._used) and self._used[i] < hi else hi
            if nxt > prev and (best is None or nxt - prev > best[1] - best[0]):
                best = (prev, nxt)
            if nxt >= hi:
                return best
            prev = nxt + 1
            i += 1
