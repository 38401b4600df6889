"""NAT gateways in the simulator: nodes behind them, as hosts in clouds sit behind theirs.

Theory of operation. A ``NatGateway`` is a pure table, like a Linux gateway's conntrack with
a masquerade rule (../shared/notes/multicloud-lab.md), driven by the simulator with ``now``
and its seeded rng. Per gateway:

- mapping: ENDPOINT_INDEPENDENT keeps one public port per inside address (the inside port
  itself when free, as masquerade does) whatever the destination; SYMMETRIC takes a new
  random public port per (inside address, destination address and port) (``masquerade
  random``);
- filtering: what may come in on a mapped public port. ENDPOINT_INDEPENDENT: anything;
  ADDRESS_DEPENDENT: only from addresses the inside host sent to; ADDRESS_AND_PORT_DEPENDENT:
  only from the very addresses and ports it sent to. Nothing unsolicited ever enters (the
  gateway drops what no mapping asked for, as cloud gateways do);
- timeouts: each permission (inside address, destination) lives ``udp_timeout`` virtual
  seconds after the last datagram out to that destination, and a mapping as long as one of
  its permissions does (conntrack's udp timeout; conntrack also refreshes on replies, RFC
  4787 allows either: refreshing only on the way out is the case keepalives must survive);
- ``flush(public_ip)``: every mapping forgotten (``conntrack -F``), optionally with a new
  public address: a NAT rebinding.

``NatNet`` is ``LinkSimNet`` with gateways on the underlay. A NATed node keeps its private
address; its UDP source is rewritten on the way out (path-MTU probes leave from the data
socket's address, so they share its mapping), and datagrams to the gateway's public address
are translated back, or dropped, when they arrive (a mapping may expire in flight). TCP: a
dial from inside works, and the peer sees the gateway's public address and mapped port as
``remote_address``; a dial to a gateway's public address or to a private address from
outside gets no answer:
``dial_failed(..., "connection timed out")`` after ``DIAL_TIMEOUT`` (the router's). TCP
connections are not tracked per packet: a flush leaves established ones alone. Every
datagram that does not arrive is counted in ``drops`` by reason.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weftnet.proto.connmaker import split_host
from weftnet.proto.link import Send
from weftnet.proto.sleeve import Kind

from .linknet import ROUTE_MTU, Address, LinkSimNet, SimLink, _split
from .simnet import SimNode

UDP_TIMEOUT = 30.0  # nf_conntrack_udp_timeout's default
PUBLIC_NET = ipaddress.ip_network("203.0.113.0/24")  # gateways' public addresses
PORTS = (1024, 65535)

DROP_LOSS = "lost on the way"
DROP_BLOCKED = "blocked pair"
DROP_PMTU = "probe over the path MTU"
DROP_NOBODY = "no host at that address"
DROP_PRIVATE = "private address unreachable from outside its NAT"
DROP_HAIRPIN = "to its own gateway's public address (no hairpinning)"
DROP_NO_MAPPING = "no mapping for that public port"
DROP_FILTERED = "filtered: the inside host never sent there"


class Mapping(enum.Enum):
    ENDPOINT_INDEPENDENT = "one public port per inside address, the same port when free"
    SYMMETRIC = "a new random public port per destination"


class Filtering(enum.Enum):
    ENDPOINT_INDEPENDENT = "anything to a mapped port"
    ADDRESS_DEPENDENT = "only from addresses the inside host sent to"
    ADDRESS_AND_PORT_DEPENDENT = "only from addresses and ports the inside host sent to"


@dataclass(slots=True)
class _Entry:
    proto: str
    inside: Address
    public_port: int
    permits: dict[Address, float] = field(default_factory=dict)  # destination -> expiry

    def expires(self) -> float:
        return max(self.permits.values(), default=float("-inf"))


class NatGateway:
    """One NAT gateway's tables (see the module docstring); pure: ``now`` and rng come in."""

    def __init__(self, public_ip: str, *, mapping: Mapping, filtering: Filtering,
                 rng: random.Random, udp_timeout: float = UDP_TIMEOUT) -> None:
        self.public_ip = public_ip
        self.mapping = mapping
        self.filtering = filtering
        self.udp_timeout = udp_timeout
        self._rng = rng
        self._entries: dict[tuple[str, Address, Address | None], _Entry] = {}
        # indexes, so a gateway with thousands of mappings (a punch's spray) stays fast
        self._by_port: dict[tuple[str, int], _Entry] = {}
        self._next_expiry = float("inf")  # no permission expires before this
        self.flushes = 0
        self.dropped: Counter[str] = Counter()
        self.last_drop = ""  # why ``inbound`` last returned None

    def __repr__(self) -> str:
        return (f"NatGateway({self.public_ip}, {self.mapping.name.lower()} mapping, "
                f"{self.filtering.name.lower()} filtering, udp timeout {self.udp_timeout}s)")

    def outbound(self, src: Address, dst: Address, now: float, proto: str = "udp") -> Address:
        """The public source a packet from ``src`` (inside) to ``dst`` leaves with."""
        self._expire(now)
        key = (proto, src, dst if self.mapping is Mapping.SYMMETRIC else None)
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(proto, src, self._allocate(proto, src[1]))
            self._entries[key] = entry
            self._by_port[(proto, entry.public_port)] = entry
        # TCP lifetimes are not modelled: a TCP mapping lives as long as the connection
        entry.permits[dst] = now + self.udp_timeout if proto == "udp" else float("inf")
        self._next_expiry = min(self._next_expiry, entry.permits[dst])
        return (self.public_ip, entry.public_port)

    def inbound(self, src: Address, public_port: int, now: float,
                proto: str = "udp") -> Address | None:
        """The inside address a packet from ``src`` to our public ``public_port`` goes to,
        or None (dropped, the reason counted in ``dropped``)."""
        self._expire(now)
        entry = self._by_port.get((proto, public_port))  # allocated uniquely per protocol
        if entry is None:
            self._refuse(DROP_NO_MAPPING)
            return None
        if self.filtering is Filtering.ADDRESS_DEPENDENT:
            allowed = any(d[0] == src[0] for d in entry.permits)
        elif self.filtering is Filtering.ADDRESS_AND_PORT_DEPENDENT:
            allowed = src in entry.permits
        else:
            allowed = True
        if not allowed:
            self._refuse(DROP_FILTERED)
            return None
        return entry.inside

    def _refuse(self, reason: str) -> None:
        self.last_drop = reason
        self.dropped[reason] += 1

    def mappings(self, now: float, proto: str = "udp") -> dict[tuple[Address, Address | None],
                                                                Address]:
        """Live mappings: (inside, destination or None) -> public address."""
        self._expire(now)
        return {(k[1], k[2]): (self.public_ip, e.public_port)
                for k, e in sorted(self._entries.items(), key=lambda kv: repr(kv[0]))
                if k[0] == proto}

    def flush(self, public_ip: str | None = None) -> None:
        """Forget every mapping (``conntrack -F``); a new public address if given."""
        self._entries.clear()
        self._by_port.clear()
        self.flushes += 1
        if public_ip is not None:
            self.public_ip = public_ip

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        for key, entry in list(self._entries.items()):
            entry.permits = {d: t for d, t in entry.permits.items() if t > now}
            if not entry.permits:
                del self._entries[key]
                del self._by_port[(entry.proto, entry.public_port)]
        self._next_expiry = min((t for e in self._entries.values() for t in e.permits.values()),
                                default=float("inf"))

    def _allocate(self, proto: str, inside_port: int) -> int:
        if (self.mapping is Mapping.ENDPOINT_INDEPENDENT
                and (proto, inside_port) not in self._by_port):
            return inside_port
        while True:
            port = self._rng.randint(*PORTS)
            if (proto, port) not in self._by_port:
                return port


class NatNet(LinkSimNet):
    """``LinkSimNet`` with NAT gateways (see the module docstring)."""

    def __init__(self, seed: int, **kw: Any) -> None:
        super().__init__(seed, **kw)
        self.gateways: list[NatGateway] = []
        self.behind: dict[int, NatGateway] = {}  # node index -> its gateway
        self.drops: Counter[str] = Counter()
        self.arrived: Counter[Kind] = Counter()  # datagrams handed to a link, by kind
        self.dials_timed_out: list[tuple[int, str, float, float]] = []  # node, addr, from, to

    # --- building -----------------------------------------------------------------------

    def add_gateway(self, mapping: Mapping = Mapping.ENDPOINT_INDEPENDENT,
                    filtering: Filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT,
                    udp_timeout: float = UDP_TIMEOUT) -> NatGateway:
        ip = str(PUBLIC_NET[len(self.gateways) + 1])
        gw = NatGateway(ip, mapping=mapping, filtering=filtering, udp_timeout=udp_timeout,
                        rng=random.Random(self.rng.getrandbits(64)))
        self.gateways.append(gw)
        return gw

    def add_node(self, *, nat: NatGateway | None = None, **kw: Any) -> SimNode:
        if nat is not None:  # before the node's first dial is made
            self.behind[len(self.nodes)] = nat
        return super().add_node(**kw)

    def gateway_at(self, host: str) -> NatGateway | None:
        return next((g for g in self.gateways if g.public_ip == host), None)

    def _outside(self, a: int, b: int) -> bool:
        """Whether traffic from node a to node b leaves a's NAT or enters b's."""
        return self.behind.get(a) is not self.behind.get(b) or a not in self.behind

    # --- TCP --------------------------------------------------------------------------

    def _unanswered(self, node: SimNode, address: str, target: int | None) -> bool:
        """A gateway drops unsolicited SYNs: dials to its public address, and from outside
        to a host behind it, are never answered."""
        return self.gateway_at(split_host(address)) is not None or (
            target is not None and target in self.behind and self._outside(node.index, target))

    def _seen_from(self, node: SimNode, conn_id: int, address: str, target: int) -> str:
        src = _split(super()._seen_from(node, conn_id, address, target))
        gw = self.behind.get(node.index)
        if gw is not None and self._outside(node.index, target):
            src = gw.outbound(src, _split(address), self.now, proto="tcp")
        return f"{src[0]}:{src[1]}"

    def _timed_out(self, node: SimNode, address: str, started: float) -> None:
        self.dials_timed_out.append((node.index, address, started, self.now))
        super()._timed_out(node, address, started)

    # --- UDP --------------------------------------------------------------------------

    def _udp_send(self, node: SimNode, link: SimLink, send: Send) -> None:
        if (left := self._udp_leave(node, link, send)) is None:
            return
        size, src = left
        mine = self.behind.get(node.index)
        to_gw = self.gateway_at(send.addr[0])
        dst = self.udp_at.get(send.addr)
        if mine is not None and to_gw is mine:
            return self._drop(DROP_HAIRPIN)
        if to_gw is None and (dst is None or not self.nodes[dst].up):
            return self._drop(DROP_NOBODY)
        if to_gw is None and dst is not None and dst in self.behind \
                and self._outside(node.index, dst):
            return self._drop(DROP_PRIVATE)
        if mine is not None and (to_gw is not None
                                 or (dst is not None and self._outside(node.index, dst))):
            src = mine.outbound(src, send.addr, self.now)
        if self.udp_loss and self.rng.random() < self.udp_loss:
            return self._drop(DROP_LOSS)
        self.at(self.now + self.latency,
                lambda: self._udp_arrive(node.index, link, send, src, to_gw, size))

    def _udp_arrive(self, sender: int, link: SimLink, send: Send, src: Address,
                    gw: NatGateway | None, size: int) -> None:
        inside: Address | None = send.addr
        if gw is not None:
            inside = gw.inbound(src, send.addr[1], self.now)
            if inside is None:
                return self._drop(gw.last_drop)
        dst = self.udp_at.get(inside) if inside is not None else None
        if dst is None or not self.nodes[dst].up:
            return self._drop(DROP_NOBODY)
        pair = frozenset((sender, dst))
        if pair in self.udp_blocked or pair in self.blocked:
            return self._drop(DROP_BLOCKED)
        if send.probe_id is not None and size > self.path_mtu.get(pair, ROUTE_MTU):
            return self._drop(DROP_PMTU)
        self.arrived[send.kind] += 1
        self._udp_deliver(dst, link.conn_uid, send, src)

    def _drop(self, reason: str) -> None:
        self.lost += 1
        self.drops[reason] += 1

    # --- checks ----------------------------------------------------------------------------

    def run_until(self, limit: float, check: Callable[[], bool], expected: str,
                  state: Callable[[], str]) -> float:
        """Run until ``check`` holds; on failure say what was expected and what there is."""
        start = self.now
        while self.now - start < limit:
            self.run_for(0.05)
            if check():
                return self.now - start
        raise AssertionError(f"expected {expected} within {limit} virtual seconds; "
                             f"at t={self.now:.2f}: {state()}")
