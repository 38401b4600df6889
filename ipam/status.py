"""What the allocator tells people: ``status()`` and the reason an operation waits or fails.

Every message names what we wait for and, where the user can act, what to do: which peer
is missing, which unreachable peer holds space (and the ``weft rmpeer`` that frees it),
which ring won when two met and how far their merge got, which addresses are used by two
containers (and that detaching one settles it), which vanished containers' addresses are
about to be freed.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, summarize_address_range
from typing import Any

from weftnet.proto.peername import PeerName, format_peer_name

from .merge import Meeting, within
from .mode import ConsensusInit, ObserverInit, SeedInit
from .ring import RingId, ring_id_of
from .state import IpamState, Op

DUPLICATE_FIX = "detach one of them (the other keeps the address)"


def _ip(addr: int) -> IPv4Address | IPv6Address:
    # an IPv6 ring lies above 2^32 (the Allocator refuses IPv6 ranges inside ::/96)
    return IPv4Address(addr) if addr < 1 << 32 else IPv6Address(addr)


def _cidr(lo: int, hi: int) -> str:
    a, b = _ip(lo), _ip(hi - 1)
    nets = list(summarize_address_range(a, b))
    return str(nets[0]) if len(nets) == 1 else f"{a}-{b}"


def _ranges(ranges: list[tuple[int, int]], limit: int = 4) -> str:
    text = ", ".join(_cidr(lo, hi) for lo, hi in ranges[:limit])
    return text + (f" and {len(ranges) - limit} more" if len(ranges) > limit else "")


def _names(st: IpamState, names: Iterable[PeerName], limit: int = 8) -> str:
    names = sorted(names)
    text = ", ".join(st.describe(n) for n in names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def ring_text(st: IpamState, ring_id: RingId, seed_names: tuple[PeerName, ...],
              owners: Iterable[PeerName], owned: str = "now owned by") -> str:
    """``seeded among 2 peers [tag]: h1, h2`` (the seed names when known, else its owners)."""
    count, tag = ring_id
    if count == 0:
        return "not seeded"
    if not seed_names and isinstance(st.init, SeedInit) and ring_id_of(st.init.names) == ring_id:
        seed_names = st.init.names
    who = _names(st, seed_names) if seed_names else f"{owned} {_names(st, owners)}"
    return f"seeded among {count} peer{'s' if count > 1 else ''} [{tag:016x}]: {who}"


def _our_ring(st: IpamState) -> str:
    return ring_text(st, st.ring.ring_id, st.ring.seed_names, st.ring.owners())


def _be(n: int) -> str:
    return "is" if n == 1 else "are"


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 'es' if what.endswith('s') else 's'}"


def describe_meeting(st: IpamState, m: Meeting, now: float) -> dict[str, Any]:
    """One ring meeting, for ``status()["merges"]``: what happened and how far it got."""
    theirs = ring_text(st, m.ring_id, m.seed_names, m.owners(), owned="owned by")
    if m.winner == st.ring.ring_id:
        winner = _our_ring(st)
    else:
        winner = ring_text(st, m.winner, (), (), owned="")
    ago = f"{max(0.0, now - m.first_seen):.0f}s ago"
    left = m.hold_end() - now
    if m.ours_lost:
        orphans = st.orphan_conflicts()
        conflicts = sum(1 for _, c in orphans.values() if c)
        if not m.in_use_here:
            progress = "it had no address in use"
        elif not orphans:
            progress = f"all {_plural(m.in_use_here, 'address')} it had in use are its own again"
        else:
            progress = (f"{len(orphans) - conflicts} of its addresses in use are still being re-claimed"
                        if len(orphans) > conflicts else "")
            if conflicts:
                progress += ("; " if progress else "") + (
                    f"{_plural(conflicts, 'address')} in use here {_be(conflicts)} in use on the "
                    "other side too (duplicates: see problems)")
        text = (f"{ago}, this peer's ring ({theirs}) met another ring ({winner}), which won "
                f"(more seed peers, or as many and a higher hash): this peer now uses the winning "
                f"ring and re-claims its addresses in use from their new owners; {progress}")
    else:
        dups = len(st.merges.duplicates)
        text = (f"{ago}, a ring {theirs} ({_plural(m.in_use(), 'address')} in use) met ours "
                f"({winner}) and gave way (ours has more seed peers, or as many and a higher "
                f"hash): its peers now use our ring and re-claim their addresses in use from "
                f"our owners")
        if dups:
            text += (f"; {_plural(dups, 'address')} in use here {_be(dups)} in use there too "
                     "(duplicates: see problems)")
    held = m.busy() if left > 0 else []
    if held:
        text += (f"; allocations in {_ranges(held)} wait up to {left:.0f}s more, until "
                 "that ring's peers have re-claimed their addresses")
    return {"ring": theirs, "winner": winner, "ours_lost": m.ours_lost,
            "owners": [st.describe(n) for n in m.owners()], "in_use": m.in_use(),
            "since": round(max(0.0, now - m.first_seen), 1),
            "hold": round(max(0.0, left), 1) if held else 0.0, "text": text}


def init_text(st: IpamState) -> str:
    init = st.init
    if isinstance(init, ConsensusInit):
        return f"consensus={init.count}"
    if isinstance(init, SeedInit):
        return "seed=" + ",".join(format_peer_name(n) for n in init.names)
    return "observer"


def why_unseeded(st: IpamState) -> str:
    init = st.init
    if isinstance(init, ConsensusInit):
        known = st.paxos.participants()
        names = ", ".join(st.describe(n) for n in known)
        head = f"awaiting consensus: {len(known)} of {init.count} peers known ({names})"
        if len(known) >= init.quorum:
            return f"{head}; agreeing on the seed peers"
        silent = sorted(p for p in st.alive if p not in st.paxos.claims)
        if silent:
            return f"{head}; waiting for {', '.join(st.describe(p) for p in silent)}"
        missing = init.quorum - len(known)
        return (f"{head}; waiting for {missing} more peer{'s' if missing > 1 else ''} to connect "
                f"(quorum {init.quorum})")
    if isinstance(init, SeedInit):
        seeds = ", ".join(st.describe(n) for n in init.names)
        reachable = [n for n in init.names if n in st.alive]
        tail = "none reachable" if not reachable else "waiting for their ring"
        return f"waiting for the ring from seed peers {seeds} ({tail})"
    assert isinstance(init, ObserverInit)
    return "observer: waiting for the ring from another peer"


def why_waiting(st: IpamState, op: Op | None) -> str:
    """Why ``op`` (or, with None, allocation in general) is not served."""
    if not st.ring.seeded_yet:
        return why_unseeded(st)
    if op is None:
        return "ready"
    if op.addr is not None:
        ip = st.ip(op.addr)
        e = st.ring.entry_at(op.addr)
        if e is None:
            return f"no peer is known to own {ip} yet (the ring is still arriving)"
        if e.owner not in st.alive:
            who = st.describe(e.owner)
            return (f"{ip} is owned by {who}, which is unreachable; if it is gone for good, "
                    f"run `weft rmpeer {who}`")
        reason = op.asked.get(e.owner, "no answer yet")
        return f"{ip} is owned by {st.describe(e.owner)}, asked for it: {reason}"
    lo = int(op.net.network_address)
    hi = lo + op.net.num_addresses
    on_hold = st.owned_within(lo, hi, st.now)[1]
    if any(st.space.lowest_free(p, q) is not None for p, q in on_hold):
        held = within(lo, hi, st.merges.held(st.now))
        return (f"a ring that met ours had addresses in use in {_ranges(held)}: allocation "
                "there waits until its peers have re-claimed them (a few seconds)")
    parts = [f"no free address in {op.net}"]
    if op.asked:
        parts.append("asked " + ", ".join(f"{st.describe(p)} ({r})" for p, r in sorted(op.asked.items())))
    stranded: dict[int, int] = {}
    for e in st.ring.entries():
        if e.owner not in st.alive and e.free > 0:
            overlap = min(e.end, hi) - max(e.token, lo)
            if overlap > 0:
                stranded[e.owner] = stranded.get(e.owner, 0) + min(e.free, overlap)
    if stranded:
        parts.append("; ".join(f"{st.describe(p)} (unreachable) holds {n} free addresses there: if it "
                               f"is gone for good, run `weft rmpeer {st.describe(p)}`"
                               for p, n in sorted(stranded.items())))
    elif not st.ring.covers(lo, hi):
        parts.append("the ring is still arriving: who owns part of it is not known yet")
    elif not op.asked:
        parts.append("every reachable peer's space there is full")
    return "; ".join(parts)


def describe_status(st: IpamState, now: float | None = None) -> dict[str, Any]:
    now = st.now if now is None else max(st.now, now)
    owners = st.ring.owners()
    free: dict[int, int] = {}
    for e in st.ring.entries():
        free[e.owner] = free.get(e.owner, 0) + e.free
    names = sorted(set(owners) | set(st.alive) | {st.name})
    problems: list[str] = []
    for peer in names:
        if peer not in st.alive and owners.get(peer, 0) > 0:
            who = st.describe(peer)
            problems.append(f"{who} is unreachable and owns {owners[peer]} addresses; if it is gone "
                            f"for good, run `weft rmpeer {who}` on one live peer")
    for (lo, hi), n in sorted(st.foreign_ranges.items()):
        problems.append(f"ignored {n} ring update(s) for range {_cidr(lo, hi)}: this peer uses "
                        f"{st.universe}; every peer must be launched with the same --ipalloc-range")
    for ea, eb in st.ring.overlaps():
        problems.append(f"ring inconsistency: {st.describe(ea.owner)} and {st.describe(eb.owner)} both "
                        f"claim {_cidr(eb.token, min(ea.end, eb.end))} (after an rmpeer of a live "
                        "peer, or lost state)")
    met = [m for m in st.merges.records() if m.ours_lost]
    for addr, (ident, conflict) in sorted(st.orphan_conflicts().items()):
        ip = st.ip(addr)
        if conflict:
            why = ("both rings handed it out before they met" if any(m.covers(addr) for m in met)
                   else "handed out twice")
            problems.append(f"duplicate: {ip} is used by {ident} here and refused by {conflict} "
                            f"({why}): {DUPLICATE_FIX}")
        else:
            problems.append(f"{ip} (used by {ident}) is being re-claimed from its owner")
    for addr, d in sorted(st.merges.duplicates.items()):
        problems.append(f"duplicate: {st.ip(addr)} is used by {d.ours} here and by {d.theirs} "
                        f"on {st.describe(d.peer)} (both rings handed it out before they met): "
                        f"{DUPLICATE_FIX}")
    if st.ring.seeded_yet:
        text = "ready"
        if not st.ring.owned(st.name) and isinstance(st.init, ObserverInit):
            text = "ready (observer: asks other peers for space when it needs it)"
    else:
        text = why_unseeded(st)
    total = st.end - st.start
    return {
        "range": str(st.universe),
        "default_subnet": str(st.default_subnet),
        "status": text,
        "init": init_text(st),
        "ring": _our_ring(st),
        "allocated": len(st.space),
        "pending": len(st.ops),
        "releasing": [{"container": ident, "addresses": [str(i) for i in ifaces],
                       "in": round(max(0.0, at - now), 1)}
                      for ident, ifaces, at in st.releasing()],
        "merges": [describe_meeting(st, m, now) for m in st.merges.records()],
        "peers": [{"name": format_peer_name(p), "nickname": st.nicknames.get(p, ""),
                   "addresses": owners.get(p, 0),
                   "share": round(100.0 * owners.get(p, 0) / total, 2),
                   "free": free.get(p, 0),
                   "reachable": p in st.alive} for p in names],
        "problems": problems,
        "warnings": list(st.warnings),
    }


def format_status(st: dict[str, Any]) -> str:
    """``weft status ipam``: Weave's layout, one line per peer, then what needs doing."""
    lines = [f"{'Status':>14}: {st['status']}",
             f"{'Range':>14}: {st['range']}",
             f"{'DefaultSubnet':>14}: {st['default_subnet']}",
             f"{'Init':>14}: {st['init']}",
             ""]
    for p in st["peers"]:
        who = f"{p['name']}({p['nickname']})"
        tail = "" if p["reachable"] else " - unreachable!"
        lines.append(f"{who:<40} {p['addresses']:>9} IPs ({p['share']:.1f}% of total) "
                     f"({p['free']} free){tail}")
    for merge in st.get("merges", []):
        lines.append(f"rings met: {merge['text']}")
    for rel in st.get("releasing", []):
        lines.append(f"releasing: {' '.join(rel['addresses'])} of {rel['container']} (its namespace "
                     f"is gone) in {rel['in']:.0f}s unless it comes back; `weft detach "
                     f"{rel['container']}` frees them now")
    for problem in st["problems"]:
        lines.append(f"problem: {problem}")
    for warning in st["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
