"""What one peer's IPAM knows: the state the allocator owns and its helpers share.

Theory of operation. ``Allocator`` (``allocator.py``) decides: it runs operations, asks
other peers for space and drives consensus. What it knows lives here, in one
``IpamState`` it owns and hands to the helpers that read or extend it: ``persist`` (what
is saved and restored), ``serve`` (answers to other peers' requests) and ``status``
(what we tell people). The helpers import this module, never the allocator, so the
arrows run one way::

    allocator ──▶ persist, serve, status ──▶ state ──▶ ring, space, consensus, merge, release

The queries here (``owned_within``, ``describe``, ...) are the ones more than one of
them needs. ``dirty`` and ``touched`` are the helpers' way of telling the allocator
"persist this" and "the ring's free count of these addresses' ranges is stale".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.peername import PeerName, format_peer_name, parse_peer_name

from .consensus import Paxos
from .merge import Meetings, carve, within
from .mode import InitMode
from .release import Releases
from .ring import Ring
from .space import Space


@dataclass(slots=True)
class Op:
    """An allocation or claim waiting for its answer."""

    op_id: int
    ident: str
    net: IPv4Network | IPv6Network
    addr: int | None          # a claim's address; None for an allocation
    deadline: float
    asked: dict[PeerName, str] = field(default_factory=dict)
    retry_at: float = 0.0     # a donor held its space for a merge: ask again then


@dataclass(slots=True)
class Orphan:
    """An address in use here that the ring gives another peer: we re-claim it."""

    ident: str
    retry_at: float = 0.0
    conflict: str = ""
    owner: PeerName | None = None   # who refused it (a duplicate): told when we let it go


def _counters() -> dict[str, int]:
    return {"gossip_merged": 0, "unicast_received": 0, "bad_unicast": 0, "donations_given": 0,
            "donations_received": 0, "claims_granted": 0, "claims_refused": 0,
            "released_after_grace": 0, "rings_met": 0}


@dataclass(slots=True, eq=False)
class IpamState:
    name: PeerName
    nickname: str
    universe: IPv4Network | IPv6Network
    default_subnet: IPv4Network | IPv6Network
    init: InitMode
    now: float                # the latest ``now`` any input carried
    grace: float              # seconds a vanished container keeps its addresses
    wall_offset: float        # wall clock minus ``now`` (persisted release deadlines)
    ring: Ring
    paxos: Paxos
    space: Space = field(default_factory=Space)
    prefix: dict[int, int] = field(default_factory=dict)  # address in use -> its prefix length
    alive: dict[PeerName, str] = field(default_factory=dict)      # reachable: name -> nickname
    nicknames: dict[PeerName, str] = field(default_factory=dict)  # every peer heard of
    ops: dict[int, Op] = field(default_factory=dict)
    orphans: dict[int, Orphan] = field(default_factory=dict)
    merges: Meetings = field(default_factory=Meetings)
    releases: Releases = field(default_factory=Releases)
    touched: set[int] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=_counters)
    warnings: list[str] = field(default_factory=list)
    foreign_ranges: dict[tuple[int, int], int] = field(default_factory=dict)
    dirty: bool = True        # something others may have seen changed: persist it

    @property
    def start(self) -> int:
        return self.ring.start

    @property
    def end(self) -> int:
        return self.ring.end

    def ip(self, addr: int) -> IPv4Address | IPv6Address:
        """An address of the universe's family (the ring's integers carry no family)."""
        return IPv6Address(addr) if self.universe.version == 6 else IPv4Address(addr)

    def iface_of(self, addr: int, prefixlen: int) -> IPv4Interface | IPv6Interface:
        return (IPv6Interface((addr, prefixlen)) if self.universe.version == 6
                else IPv4Interface((addr, prefixlen)))

    def iface(self, addr: int) -> IPv4Interface | IPv6Interface:
        """An address in use, with the prefix length it was handed out with."""
        return self.iface_of(addr, self.prefix.get(addr, self.universe.prefixlen))

    def lookup(self, ident: str) -> list[IPv4Interface | IPv6Interface]:
        return [self.iface(a) for a in self.space.of(ident)]

    def releasing(self) -> list[tuple[str, list[IPv4Interface | IPv6Interface], float]]:
        """(identifier, addresses, when they are freed) of vanished containers, soonest first."""
        return [(ident, self.lookup(ident), at) for ident, at in self.releases.items()]

    def describe(self, peer: PeerName) -> str:
        nick = self.nicknames.get(peer)
        return nick if nick else format_peer_name(peer)

    def resolve_peer(self, peer: str | PeerName) -> PeerName:
        """A peer by name or unambiguous nickname; LocalProtocolError saying why not."""
        if isinstance(peer, int):
            return peer
        try:
            return parse_peer_name(peer)
        except LocalProtocolError:
            pass
        matches = sorted(n for n, nick in self.nicknames.items() if nick == peer)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise LocalProtocolError(f"nickname {peer!r} is ambiguous: use one of "
                                     + ", ".join(format_peer_name(m) for m in matches))
        raise LocalProtocolError(f"unknown peer {peer!r}")

    def owned_within(self, lo: int, hi: int, now: float) -> tuple[list[tuple[int, int]],
                                                                  list[tuple[int, int]]]:
        """Our ranges clipped to ``[lo, hi)``, carved around merge holds: (the parts we may
        hand out or donate, the parts on hold while a ring that met ours re-claims)."""
        held = self.merges.held(now)
        usable: list[tuple[int, int]] = []
        on_hold: list[tuple[int, int]] = []
        for r_lo, r_hi in self.ring.owned(self.name):
            a, b = max(lo, r_lo), min(hi, r_hi)
            if a < b:
                usable += carve(a, b, held)
                on_hold += within(a, b, held)
        return usable, on_hold

    def orphan_conflicts(self) -> dict[int, tuple[str, str]]:
        """Addresses in use here but not (yet) ours in the ring: addr -> (ident, conflict)."""
        return {a: (o.ident, o.conflict) for a, o in self.orphans.items()}
