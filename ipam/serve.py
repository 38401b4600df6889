"""Serving other peers: space requests (donations) and claims, as the owner of a range.

Theory of operation. A peer with free space donates half of its largest free run inside
the asked range (keeping the lower half: its own allocations grow upwards), never the
asker's network or broadcast address, unless it is short of space there itself (giving
it away would only ping-pong) or holds it while two rings merge (``merge.py``: the asker
retries). A claim is granted as the single address ``[addr, addr + 1)`` unless a
container here uses it; a refused *re*-claim (an address the asker has used since before
its ring gave way to ours) is a duplicate, noted for ``status``. These functions decide
the answer (a grant changes the ring in ``IpamState`` and marks it dirty); the allocator
gossips a grant, sends the answer, and remembers it per asker so that a repeated request
gets the same answer, not a second grant (``Allocator._answer``).
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from weftnet.proto.peername import PeerName

from .codec import Donation, Refused, RequestClaim, RequestSpace
from .merge import HOLD_REASON
from .ring import RingUpdate
from .state import IpamState

UNSEEDED_REASON = "the ring is not seeded here yet"   # the asker retries (the ring is on its way)


def serve_space(st: IpamState, src: PeerName, msg: RequestSpace) -> Donation | Refused:
    """The answer to ``src``'s request for space (a Donation granting it, or why not)."""
    if not st.ring.seeded_yet:
        return Refused(msg.req, UNSEEDED_REASON)
    hold = Refused(msg.req, f"{HOLD_REASON}: {st.nickname} holds its free space there "
                            "until the peers of a ring that met ours have re-claimed theirs")
    if any(op.addr is None and _overlaps(op.net, msg.start, msg.end) for op in st.ops.values()):
        # we are short of space there ourselves: giving it away would only ping-pong
        return hold if st.merges.held(st.now) else Refused(
            msg.req, f"{st.nickname} is short of space there itself")
    # never the requester's network or broadcast address: it could not use them
    lo_ok, hi_ok = (msg.start + 1, msg.end - 1) if msg.end - msg.start > 2 else (msg.start, msg.end)
    usable, on_hold = st.owned_within(lo_ok, hi_ok, st.now)
    runs = [run for p, q in usable if (run := st.space.largest_free_run(p, q)) is not None]
    if not runs:
        if any(st.space.largest_free_run(p, q) is not None for p, q in on_hold):
            return hold
        st.touched.update(e.token for e in st.ring.entries() if e.owner == st.name)
        return Refused(msg.req, f"no free space on {st.nickname}")
    lo, hi = max(runs, key=lambda run: run[1] - run[0])  # the first of the largest
    start = lo + (hi - lo) // 2  # keep the lower half: our own allocations grow upwards
    update = grant(st, start, hi, src)
    st.stats["donations_given"] += 1
    return Donation(msg.req, update)


def _overlaps(net: IPv4Network | IPv6Network, lo: int, hi: int) -> bool:
    start = int(net.network_address)
    return start < hi and lo < start + net.num_addresses


def grant(st: IpamState, lo: int, hi: int, to: PeerName) -> RingUpdate:
    """Grant ``[lo, hi)`` (ours, maybe across entries) to ``to``; the combined update."""
    combined: RingUpdate | None = None
    cur = lo
    while cur < hi:
        e = st.ring.entry_at(cur)
        assert e is not None and e.owner == st.name
        stop = min(hi, st.ring.effective_end(e.token))
        update = st.ring.grant(st.name, cur, stop, to, st.space.free_in)
        combined = update if combined is None else combined.merge(update)
        cur = stop
    assert combined is not None
    st.dirty = True
    return combined


def serve_claim(st: IpamState, src: PeerName, msg: RequestClaim) -> Donation | Refused:
    """The answer to ``src``'s claim of one address (a Donation granting it, or why not)."""
    e = st.ring.entry_at(msg.addr) if st.ring.seeded_yet else None
    if e is None or e.owner != st.name:
        owner = "unknown" if e is None else st.describe(e.owner)
        return Refused(msg.req, f"not the owner (owner: {owner})")
    holder = st.space.holder(msg.addr)
    if holder is not None:
        st.stats["claims_refused"] += 1
        if msg.reclaim:  # in use here and there since before the rings met
            st.merges.note_duplicate(msg.addr, src, msg.ident, holder, st.now)
        return Refused(msg.req, f"in use by {holder} on {st.nickname}")
    st.merges.drop_duplicate(msg.addr)
    st.stats["claims_granted"] += 1
    return Donation(msg.req, grant(st, msg.addr, msg.addr + 1, src))
