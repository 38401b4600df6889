"""The simulator with a data plane: each connection's UDP link is a ``LinkMachine``
(proto/link.py), and a connection joins the topology only once its link is up (the router's
overlay gating, ``require_overlay``), as ``Dataplane._decide`` tells the mesh.

UDP travels beside the TCP bytes, through the same scheduler and latency. Each node has a
UDP address, its control address at first; ``rebind`` makes its datagrams come from another
one (a NAT rebinding: replies to the new address reach it, and so does its forwarded
control address). A datagram carries ``(conn_uid, kind, body)``: sealing is the session's
business (tests/unit/test_sleeve.py), finding the link by ``conn_uid`` is the engine's.
Datagrams are lost with probability ``udp_loss`` (the simulator's seeded rng), always
between ``udp_block``ed pairs and across partitions; probes over ``ROUTE_MTU`` are refused
as the kernel refuses them, the way ``Dataplane._send_probe`` reports it, and probes over a
pair's ``path_mtu`` (a narrower hop on the way) are lost silently, as DF packets are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from weftnet.proto import sleeve
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.link import IP_UDP_OVERHEAD, LinkEvent, LinkMachine, Send
from weftnet.proto.mesh import PeerConnected, PeerDisconnected

from .simnet import SimNet, SimNode

MTU = 1376
ROUTE_MTU = 1500

Address = tuple[str, int]


@dataclass(slots=True, eq=False)
class SimLink:
    machine: LinkMachine
    conn_id: int
    conn_uid: int
    timer_at: float | None = None


def _split(address: str) -> Address:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class LinkSimNet(SimNet):
    def __init__(self, seed: int, **kw: Any) -> None:
        super().__init__(seed, **kw)
        self.links: dict[int, dict[int, SimLink]] = {}  # node index -> conn_id -> link
        self.udp_addr: dict[int, Address] = {}  # where each node's datagrams come from
        self.udp_at: dict[Address, int] = {}  # who receives datagrams sent to an address
        self.udp_loss = 0.0
        self.udp_blocked: set[frozenset[int]] = set()
        self.path_mtu: dict[frozenset[int], int] = {}  # pairs behind a narrower hop
        self.datagrams = 0
        self.lost = 0
        self.link_events: list[tuple[float, int, int, LinkEvent]] = []  # (t, node, conn_id, e)

    def add_node(self, **kw: Any) -> SimNode:
        node = super().add_node(require_overlay=True, **kw)
        self._bind(node.index, _split(node.address))
        return node

    def rebind(self, index: int, addr: Address) -> None:
        """Node ``index``'s datagrams come from ``addr`` from now on."""
        self._bind(index, addr)

    def udp_block(self, a: int, b: int) -> None:
        self.udp_blocked.add(frozenset((a, b)))

    def _bind(self, index: int, addr: Address) -> None:
        self.udp_addr[index] = addr
        self.udp_at[addr] = index

    def links_of(self, node: SimNode) -> dict[int, SimLink]:
        return self.links.setdefault(node.index, {})

    # --- the mesh's events make and end links -----------------------------------------

    def _after_input(self, node: SimNode) -> None:
        while (event := node.mesh.next_event()) is not None:
            if isinstance(event, PeerConnected):
                self._connected(node, event)
            elif isinstance(event, PeerDisconnected):
                self.links_of(node).pop(event.conn_id, None)
        super()._after_input(node)

    def _connected(self, node: SimNode, event: PeerConnected) -> None:
        machine = LinkMachine(
            me=node.mesh.config.name, uid=node.mesh.config.uid, mtu=MTU, port=6783,
            we_trust=False, encrypted=event.encrypted,
            addr=_split(event.remote_address) if event.outbound else None, now=self.now,
            rng=random.Random(self.rng.getrandbits(64)))
        link = SimLink(machine, event.conn_id, event.conn_uid)
        self.links_of(node)[event.conn_id] = link
        self._service(node, link)

    # --- a link's outputs and timers ---------------------------------------------------

    def _service(self, node: SimNode, link: SimLink) -> None:
        m = link.machine
        while sends := m.datagrams_to_send():
            for send in sends:
                self._udp_send(node, link, send)
        changed = False
        while (event := m.next_event()) is not None:
            self.link_events.append((self.now, node.index, link.conn_id, event))
            changed = True
        if changed:
            node.mesh.set_overlay(link.conn_id, ready=m.up, overlay="sleeve" if m.up else None,
                                  reason="sleeve" if m.up else m.down_reason, mtu=m.mtu)
            self._after_input(node)  # gossip of our record, timers
        due = m.get_timer()
        if due is not None and (link.timer_at is None or due < link.timer_at):
            link.timer_at = due
            self.at(due, lambda: self._link_timer(node, link, due))

    def _link_timer(self, node: SimNode, link: SimLink, due: float) -> None:
        if link.timer_at != due or self.links_of(node).get(link.conn_id) is not link:
            return
        link.timer_at = None
        if not node.up:
            return
        current = link.machine.get_timer()
        if current is not None and current <= self.now:
            link.machine.handle_timer(self.now)
        self._service(node, link)

    def _udp_leave(self, node: SimNode, link: SimLink, send: Send) -> tuple[int, Address] | None:
        """The datagram's IP size and source, or None when our own route refuses a probe
        (told to the machine, as the engine tells it of EMSGSIZE)."""
        m = link.machine
        size = (IP_UDP_OVERHEAD + sleeve.HEADER_LEN + len(send.body)
                + (sleeve.TAG_LEN if m.encrypted else 0))
        if send.probe_id is not None and size > ROUTE_MTU:
            m.probe_send_failed(send.probe_id, self.now, ROUTE_MTU)
            return None
        self.datagrams += 1
        # probes leave from the data socket's own address (router/dataplane/pmtu.py), so NATs
        # map and filter them exactly as the data
        return size, self.udp_addr[node.index]

    def _udp_send(self, node: SimNode, link: SimLink, send: Send) -> None:
        if (left := self._udp_leave(node, link, send)) is None:
            return
        size, src = left
        dst = self.udp_at.get(send.addr)
        if (dst is None or not self.nodes[dst].up
                or frozenset((node.index, dst)) in self.udp_blocked
                or frozenset((node.index, dst)) in self.blocked
                or (send.probe_id is not None
                    and size > self.path_mtu.get(frozenset((node.index, dst)), ROUTE_MTU))
                or (self.udp_loss and self.rng.random() < self.udp_loss)):
            self.lost += 1
            return
        self.at(self.now + self.latency,
                lambda: self._udp_deliver(dst, link.conn_uid, send, src))

    def _udp_deliver(self, index: int, conn_uid: int, send: Send, src: Address) -> None:
        node = self.nodes[index]
        if not node.up:
            return
        link = next((lk for lk in self.links_of(node).values() if lk.conn_uid == conn_uid), None)
        if link is None:
            return
        try:
            link.machine.receive(send.kind, send.body, src, self.now)
        except RemoteProtocolError:
            return
        self._service(node, link)

    # --- checks ------------------------------------------------------------------------------

    def established_pairs(self) -> set[frozenset[int]]:
        """Pairs whose connection both ends claim as established in their own record."""
        index = {n.mesh.config.name: n.index for n in self.live()}
        claims: set[tuple[int, int]] = set()
        for node in self.live():
            record = node.mesh.topology.peers.get(node.mesh.config.name)
            if record is None:
                continue
            for conn in record.connections:
                if conn.established and conn.remote in index:
                    claims.add((node.index, index[conn.remote]))
        return {frozenset(p) for p in claims if (p[1], p[0]) in claims}

    def gated(self) -> bool:
        """Every connection a node announces as established has its UDP link up."""
        for node in self.live():
            record = node.mesh.topology.peers.get(node.mesh.config.name)
            if record is None:
                continue
            by_peer = node.mesh.connected_peers()
            for conn in record.connections:
                link = self.links_of(node).get(by_peer.get(conn.remote, -1))
                if conn.established and (link is None or not link.machine.up):
                    return False
        return True
