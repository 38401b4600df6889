"""What the allocator tells people: ``status()`` and the reason an operation waits or fails.

Every message names what we wait for and, where the user can act, what to do: which peer
is missing, which unreachable peer holds space (and the ``weft rmpeer`` that frees it),
which ring won when two met, which addresses are claimed by two peers.
"""

from __future__ import annotations

from ipaddress import IPv4Address, summarize_address_range
from typing import TYPE_CHECKING, Any

from weftnet.proto.peername import format_peer_name

from .mode import ConsensusInit, ObserverInit, SeedInit

if TYPE_CHECKING:
    from .allocator import Allocator, _Op


def _cidr(a: Allocator, lo: int, hi: int) -> str:
    nets = list(summarize_address_range(IPv4Address(lo), IPv4Address(hi - 1)))
    return str(nets[0]) if len(nets) == 1 else f"{IPv4Address(lo)}-{IPv4Address(hi - 1)}"


def init_text(a: Allocator) -> str:
    init = a.init
    if isinstance(init, ConsensusInit):
        return f"consensus={init.count}"
    if isinstance(init, SeedInit):
        return "seed=" + ",".join(format_peer_name(n) for n in init.names)
    return "observer"


def why_unseeded(a: Allocator) -> str:
    init = a.init
    if isinstance(init, ConsensusInit):
        known = a.paxos.participants()
        names = ", ".join(a.describe(n) for n in known)
        head = f"awaiting consensus: {len(known)} of {init.count} peers known ({names})"
        if len(known) >= init.quorum:
            return f"{head}; agreeing on the seed peers"
        silent = sorted(p for p in a.alive if p not in a.paxos.claims)
        if silent:
            return f"{head}; waiting for {', '.join(a.describe(p) for p in silent)}"
        missing = init.quorum - len(known)
        return (f"{head}; waiting for {missing} more peer{'s' if missing > 1 else ''} to connect "
                f"(quorum {init.quorum})")
    if isinstance(init, SeedInit):
        seeds = ", ".join(a.describe(n) for n in init.names)
        reachable = [n for n in init.names if n in a.alive]
        tail = "none reachable" if not reachable else "waiting for their ring"
        return f"waiting for the ring from seed peers {seeds} ({tail})"
    assert isinstance(init, ObserverInit)
    return "observer: waiting for the ring from another peer"


def why_waiting(a: Allocator, op: _Op | None) -> str:
    """Why ``op`` (or, with None, allocation in general) is not served."""
    if not a.ring.seeded_yet:
        return why_unseeded(a)
    if op is None:
        return "ready"
    if op.addr is not None:
        ip = IPv4Address(op.addr)
        e = a.ring.entry_at(op.addr)
        if e is None:
            return f"no peer is known to own {ip} yet (the ring is still arriving)"
        if e.owner not in a.alive:
            who = a.describe(e.owner)
            return (f"{ip} is owned by {who}, which is unreachable; if it is gone for good, "
                    f"run `weft rmpeer {who}`")
        reason = op.asked.get(e.owner, "no answer yet")
        return f"{ip} is owned by {a.describe(e.owner)}, asked for it: {reason}"
    lo = int(op.net.network_address)
    hi = lo + op.net.num_addresses
    parts = [f"no free address in {op.net}"]
    if op.asked:
        parts.append("asked " + ", ".join(f"{a.describe(p)} ({r})" for p, r in sorted(op.asked.items())))
    stranded: dict[int, int] = {}
    for e in a.ring.entries():
        if e.owner not in a.alive and e.free > 0:
            overlap = min(e.end, hi) - max(e.token, lo)
            if overlap > 0:
                stranded[e.owner] = stranded.get(e.owner, 0) + min(e.free, overlap)
    if stranded:
        parts.append("; ".join(f"{a.describe(p)} (unreachable) holds {n} free addresses there: if it "
                               f"is gone for good, run `weft rmpeer {a.describe(p)}`"
                               for p, n in sorted(stranded.items())))
    elif not a.ring.covers(lo, hi):
        parts.append("the ring is still arriving: who owns part of it is not known yet")
    elif not op.asked:
        parts.append("every reachable peer's space there is full")
    return "; ".join(parts)


def describe_status(a: Allocator) -> dict[str, Any]:
    owners = a.ring.owners()
    free: dict[int, int] = {}
    for e in a.ring.entries():
        free[e.owner] = free.get(e.owner, 0) + e.free
    names = sorted(set(owners) | set(a.alive) | {a.name})
    problems: list[str] = []
    for peer in names:
        if peer not in a.alive and owners.get(peer, 0) > 0:
            who = a.describe(peer)
            problems.append(f"{who} is unreachable and owns {owners[peer]} addresses; if it is gone "
                            f"for good, run `weft rmpeer {who}` on one live peer")
    for (lo, hi), n in sorted(a.foreign_ranges.items()):
        problems.append(f"ignored {n} ring update(s) for range {_cidr(a, lo, hi)}: this peer uses "
                        f"{a.universe}; every peer must be launched with the same --ipalloc-range")
    for ea, eb in a.ring.overlaps():
        problems.append(f"ring inconsistency: {a.describe(ea.owner)} and {a.describe(eb.owner)} both "
                        f"claim {_cidr(a, eb.token, min(ea.end, eb.end))} (after an rmpeer of a live "
                        "peer, or lost state)")
    for addr, (ident, conflict) in sorted(a.orphans().items()):
        if conflict:
            problems.append(f"duplicate: {IPv4Address(addr)} is used by {ident} here and refused by "
                            f"{conflict}; detach one of them")
        else:
            problems.append(f"{IPv4Address(addr)} (used by {ident}) is being re-claimed from its owner")
    problems.extend(a.replaced)
    if a.ring.seeded_yet:
        text = "ready"
        if not a.ring.owned(a.name) and isinstance(a.init, ObserverInit):
            text = "ready (observer: asks other peers for space when it needs it)"
    else:
        text = why_unseeded(a)
    total = a.end - a.start
    return {
        "range": str(a.universe),
        "default_subnet": str(a.default_subnet),
        "status": text,
        "init": init_text(a),
        "ring": a._ring_text(),
        "allocated": len(a.space),
        "pending": a.pending(),
        "peers": [{"name": format_peer_name(p), "nickname": a.nicknames.get(p, ""),
                   "addresses": owners.get(p, 0),
                   "share": round(100.0 * owners.get(p, 0) / total, 2),
                   "free": free.get(p, 0),
                   "reachable": p in a.alive} for p in names],
        "problems": problems,
        "warnings": list(a.warnings),
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
    for problem in st["problems"]:
        lines.append(f"problem: {problem}")
    for warning in st["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
