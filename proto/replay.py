r"""Sliding replay window over 64-bit packet counters (RFC 6479, as in WireGuard).

Theory of operation
-------------------
A counter is fresh if it is above the highest counter recorded so far, or within the
last ``size`` counters below it and not recorded yet; anything older is rejected
because we cannot remember it. ``check`` only asks; ``update`` records, and is called
only once the packet authenticated, so forged packets never move the window.

The bitmap is a ring of 64-bit blocks; counter ``c`` lives in bit ``c % 64`` of block
``(c // 64) % blocks``. Moving the top up clears the blocks between the old and the new
top (at most the whole ring, so a jump of 2**60 costs the same as one of 64), one block
per 64 counters in steady state: O(1) amortised, no shifting of a big bitset::

    blocks (ring)     ... | b(k-2) | b(k-1) |  b(k)   | (cleared ahead of the top)
    counters              ....................^ highest - size + 1 ... ^ highest
                          \______________ size counters _______________/

The ring holds one block more than ``size`` needs, so the block where the window's
lowest counter lives is never the one being cleared for the top. The result is exact:
accepted iff ``c > highest`` or ``highest - size < c`` and not seen (the property tests
compare against a set).
"""

from __future__ import annotations

from .errors import LocalProtocolError

COUNTER_MAX = (1 << 64) - 1
_BLOCK_BITS = 6                    # 64 counters per block
_BLOCK_MASK = (1 << _BLOCK_BITS) - 1


class ReplayWindow:
    """Which counters of one key were already seen; ``highest`` is -1 before the first."""

    __slots__ = ("_size", "_ring", "_ring_mask", "_highest")

    def __init__(self, size: int = 8192) -> None:
        if size < 1:
            raise LocalProtocolError(f"replay window size {size} must be positive")
        self._size = size
        needed = ((size + _BLOCK_MASK) >> _BLOCK_BITS) + 1
        blocks = 1 << (needed - 1).bit_length()
        self._ring = [0] * blocks
        self._ring_mask = blocks - 1
        self._highest = -1

    @property
    def size(self) -> int:
        return self._size

    @property
    def highest(self) -> int:
        return self._highest

    def check(self, counter: int) -> bool:
        """True if ``counter`` is new and not too old; records nothing."""
        highest = self._highest
        if counter > highest:
            return counter <= COUNTER_MAX
        if counter + self._size <= highest or counter < 0:
            return False
        return not (self._ring[(counter >> _BLOCK_BITS) & self._ring_mask]
                    >> (counter & _BLOCK_MASK)) & 1

    def update(self, counter: int) -> None:
        """Record ``counter`` (after its packet authenticated); a counter below the
        window is ignored, one already recorded stays recorded."""
        if not 0 <= counter <= COUNTER_MAX:
            raise LocalProtocolError(f"counter {counter} out of range")
        highest = self._highest
        ring = self._ring
        mask = self._ring_mask
        if counter > highest:
            top = counter >> _BLOCK_BITS
            old = highest >> _BLOCK_BITS           # -1 before the first update
            if top != old:
                steps = min(top - old, mask + 1)
                for i in range(top - steps + 1, top + 1):
                    ring[i & mask] = 0
            self._highest = counter
        elif counter + self._size <= highest:
            return
        ring[(counter >> _BLOCK_BITS) & mask] |= 1 << (counter & _BLOCK_MASK)
