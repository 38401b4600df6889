"""Serving other peers: space requests (donations) and claims, as the owner of a range.

Theory of operation. A peer with free space donates half of its largest free run inside
the asked range (keeping the lower half: its own allocations grow upwards), never the
asker's network or broadcast address, unless it is short of space there itself (giving
it away would only ping-pong) or holds it while two rings merge (``merge.py``: the asker
retries). A claim is granted as the single address ``[addr, addr + 1)`` unless a
container here uses it; a refused *re*-claim (an address the asker has used since before
its ring gave way to ours) is a duplicate, noted for ``status``. These functions decide
the answer; the allocator sends it, and remembers it per asker so that a repeated request
gets the same answer, not a second grant (``Allocator._answer``).
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from weftnet.proto.peername import PeerName

from .codec import Donation, Refused, RequestClaim, RequestSpace
from .merge import HOLD_REASON
from .ring import RingUpdate

if TYPE_CHECKING:
    from .allocator import Allocator


def serve_space(a: Allocator, src: PeerName, msg: RequestSpace) -> Donation | Refused:
    """The answer to ``src``'s request for space (a Donation granting it, or why not)."""
    if not a.ring.seeded_yet:
        return Refused(msg.req, "the ring is not seeded here yet")
    hold = Refused(msg.req, f"{HOLD_REASON}: {a.nickname} holds its free space there "
                            "until the peers of a ring that met ours have re-claimed theirs")
    if any(op.addr is None and _overlaps(op.net, msg.start, msg.end) for op in a._ops.values()):
        # we are short of space there ourselves: giving it away would only ping-pong
        return hold if a.merges.held(a.now) else Refused(
            msg.req, f"{a.nickname} is short of space there itself")
    # never the requester's network or broadcast address: it could not use them
    lo_ok, hi_ok = (msg.start + 1, msg.end - 1) if msg.end - msg.start > 2 else (msg.start, msg.end)
    usable, on_hold = a.owned_within(lo_ok, hi_ok, a.now)
    runs = [run for p, q in usable if (run := a.space.largest_free_run(p, q)) is not None]
    if not runs:
        if any(a.space.largest_free_run(p, q) is not None for p, q in on_hold):
            return hold
        a._touched.update(e.token for e in a.ring.entries() if e.owner == a.name)
        return Refused(msg.req, f"no free space on {a.nickname}")
    lo, hi = max(runs, key=lambda run: run[1] - run[0])  # the first of the largest
    start = lo + (hi - lo) // 2  # keep the lower half: our own allocations grow upwards
    update = grant(a, start, hi, src)
    a.stats["donations_given"] += 1
    return Donation(msg.req, update)


def _overlaps(net: IPv4Network, lo: int, hi: int) -> bool:
    start = int(net.network_address)
    return start < hi and lo < start + net.num_addresses


def grant(a: Allocator, lo: int, hi: int, to: PeerName) -> RingUpdate:
    """Grant ``[lo, hi)`` (ours, maybe across entries) to ``to``; the combined update."""
    combined: RingUpdate | None = None
    cur = lo
    while cur < hi:
        e = a.ring.entry_at(cur)
        assert e is not None and e.owner == a.name
        stop = min(hi, a.ring.effective_end(e.token))
        update = a.ring.grant(a.name, cur, stop, to, a.space.free_in)
        combined = update if combined is None else combined.merge(update)
        cur = stop
    assert combined is not None
    a._add_news(combined)
    a.dirty = True
    return combined


def serve_claim(a: Allocator, src: PeerName, msg: RequestClaim) -> Donation | Refused:
    """The answer to ``src``'s claim of one address (a Donation granting it, or why not)."""
    e = a.ring.entry_at(msg.addr) if a.ring.seeded_yet else None
    if e is None or e.owner != a.name:
        owner = "unknown" if e is None else a.describe(e.owner)
        return Refused(msg.req, f"not the owner (owner: {owner})")
    holder = a.space.holder(msg.addr)
    if holder is not None:
        a.stats["claims_refused"] += 1
        if msg.reclaim:  # in use here and there since before the rings met
            a.merges.note_duplicate(msg.addr, src, msg.ident, holder, a.now)
        return Refused(msg.req, f"in use by {holder} on {a.nickname}")
    a.merges.drop_duplicate(msg.addr)
    a.stats["claims_granted"] += 1
    return Donation(msg.req, grant(a, msg.addr, msg.addr + 1, src))
