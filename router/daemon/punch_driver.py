"""Hole punching on the daemon's side: the pure ``Rendezvous`` on the mesh and the data
plane's socket, and control connections over punched paths.

Theory of operation. Peers behind NAT gateways reach a public peer but not each other;
the mesh still routes between them (relayed). This driver asks for a direct path to every
peer the mesh reaches only through others, once it has been so for ``PUNCH_AFTER`` (a TCP
dial gets its chance first), and carries out what ``proto/rendezvous.py`` decides::

    mesh unicast "punch" ──on_message──▶ ┌────────────┐ ──messages──▶ mesh.gossip_unicast
    engine's UDP socket ──take_punch───▶ │ Rendezvous │ ──datagrams─▶ engine.send_punch
    links' UDP addresses ──link_address▶ │   (pure)   │ ──PathPunched──▶ a control connection
    peers relayed / direct ──want/direct▶└────────────┘                  over a DatagramStream

A punched path carries an ordinary control ``Connection`` (the usual SPAKE2 + X25519
handshake, the offerer dials) inside a ``DatagramStream`` (proto/ustream.py) on the sleeve's
own socket, so it needs no TCP and outlives the peer that introduced the two: the mesh sees a
connection like any other (``remote_address`` the punched UDP address), and the data
plane's link for it uses that address at both ends and never the kernel's VXLAN. Its
sleeve heartbeats (every 2-10 s, on the same socket) keep the NAT mappings alive, inside
the usual 30 s UDP timeouts; its control heartbeats keep their 5 s pace even once the link
works (``paced=False``: the stream has no keepalives of its own and ends after 15 s of
silence, proto/ustream.py).

Everything runs on the trio thread, from the pump or the timer task (this driver is a
timer source); the engine only queues punch-family datagrams for us (``take_punch``).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from weftnet.proto import punchwire
from weftnet.proto.connmaker import join_host_port
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.gossip import UnicastChannel
from weftnet.proto.mesh import MeshNode
from weftnet.proto.peername import PeerName, describe_peer
from weftnet.proto.rendezvous import CHANNEL, PathPunched, PunchFailed, Rendezvous
from weftnet.proto.ustream import DatagramStream
from weftnet.router.dataplane import udpsock
from weftnet.router.dataplane.engine import Dataplane
from weftnet.router.dataplane.ports import UdpPort, UdpSocketPort
from weftnet.router.host import netdev

log = logging.getLogger("weft")

Address = tuple[str, int]

PUNCH_AFTER = 2.0        # a peer relayed this long (its dial failing or in flight): punch
CANDIDATES_EVERY = 300.0  # host addresses are looked at again this often (a backstop) and
CANDIDATES_SETTLE = 1.0   # this long after the kernel says an address or link changed
CLOSE_GRACE = 1.0        # a closing stream gets this long to deliver its Goodbye
SPRAY_BUFFER = 256 * 1024  # a spray socket carries probes, or one punched link's traffic


@dataclass(slots=True, eq=False)
class _Punched:
    """A control connection over a punched path."""

    conn_id: int
    peer: PeerName
    session: int
    stream: DatagramStream
    addr: Address
    sock: int  # our socket the path starts from (0: the main one; else a spray socket)
    how: str
    closing: str | None = None
    close_by: float = 0.0


class PunchDriver:
    """One per router (unless discovery is off): see the module docstring."""

    def __init__(self, mesh: MeshNode, dataplane: Dataplane, *, port: int, host: str,
                 new_conn_id: Callable[[], int], now: float,
                 host_addresses: Callable[[], list[str]] | None = None,
                 open_socket: Callable[[], UdpPort] | None = None) -> None:
        self.mesh = mesh
        self.dataplane = dataplane
        self.port = port
        self.host = host
        self._new_conn_id = new_conn_id
        self._host_addresses = host_addresses or netdev.host_addresses
        self._open_socket = open_socket or self._open_spray_socket
        self._spray: set[int] = set()  # extra sockets open for a birthday spray, by index
        self.rendezvous = Rendezvous(me=mesh.config.name, port=port,
                                     rng=random.Random(os.urandom(16)),
                                     random_bytes=os.urandom, now=now)
        mesh.register_channel(CHANNEL, UnicastChannel(CHANNEL, self.rendezvous.on_message))
        self.punched: dict[int, _Punched] = {}   # by conn_id
        self._by_session: dict[int, _Punched] = {}
        self._relayed_since: dict[PeerName, float] = {}
        self._link_addrs: dict[PeerName, Address | None] = {}
        self._next_candidates = now
        self._first_address: dict[int, str] = {}   # what the mesh knows as its address
        self.drops: dict[str, int] = {}

    # --- the daemon's pump and timer task ----------------------------------------------

    def owns(self, conn_id: int) -> bool:
        return conn_id in self.punched

    def pump(self, now: float) -> None:
        """Take what arrived, tell the machine what changed, carry out what it asks."""
        for datagram, addr, sock in self.dataplane.take_punch():
            self._datagram(datagram, addr, sock, now)
        self._observe(now)
        self._outputs(now)

    def get_timer(self) -> float | None:
        times = [self.rendezvous.get_timer(), self._next_candidates]
        for p in self.punched.values():
            times.append(p.stream.get_timer())
            if p.closing is not None:
                times.append(p.close_by)
        # a relayed peer becomes worth punching PUNCH_AFTER after it was first seen so
        times += [since + PUNCH_AFTER for since in self._relayed_since.values()]
        return min((t for t in times if t is not None), default=None)

    def addresses_changed(self, now: float) -> None:
        """The kernel announced an address or link change (router/host/nlevents.py): look
        at the host candidates again once the burst settled."""
        self._next_candidates = min(self._next_candidates, now + CANDIDATES_SETTLE)

    def handle_timer(self, now: float) -> None:
        if now >= self._next_candidates:
            self._next_candidates = now + CANDIDATES_EVERY
            self._refresh_candidates()
        self.rendezvous.handle_timer(now)
        for p in list(self.punched.values()):
            p.stream.handle_timer(now)
            self._service(p, now)
        self._observe(now)
        self._outputs(now)

    # --- what the mesh asks of our connections (from the pump) -------------------------

    def wake(self, conn_id: int, now: float) -> None:
        p = self.punched.get(conn_id)
        if p is None:
            return
        data = self.mesh.data_to_send(conn_id, now)
        if data and p.closing is None:
            try:
                p.stream.send(data, now)
            except LocalProtocolError as exc:   # the peer stopped reading: give up on it
                self._lost(p, f"punched path stalled: {exc.reason}", now)
                return
        self._service(p, now)

    def close(self, conn_id: int, reason: str, now: float) -> None:
        p = self.punched.get(conn_id)
        if p is None or p.closing is not None:
            return
        data = self.mesh.data_to_send(conn_id, now)   # the Goodbye, if any
        if data:
            try:
                p.stream.send(data, now)
            except LocalProtocolError:
                pass
        p.stream.close(now)
        p.closing, p.close_by = reason, now + CLOSE_GRACE
        self._service(p, now)

    # --- internals ------------------------------------------------------------------------

    def _refresh_candidates(self) -> None:
        try:
            hosts = [self.host] if self.host else self._host_addresses()
        except netdev.NetdevError as exc:
            log.warning("hole punching: %s", exc)
            return
        self.rendezvous.set_host_candidates([(h, self.port) for h in hosts])

    def _datagram(self, datagram: bytes, addr: Address, sock: int, now: float) -> None:
        try:
            kind, session = punchwire.peek_datagram(datagram)
        except punchwire.PunchDrop as exc:
            self._drop(exc.reason)
            return
        if kind is not punchwire.PunchKind.STREAM:
            self.rendezvous.receive(datagram, addr, sock, now)
            return
        p = self._by_session.get(session)
        if p is None or p.sock != sock:
            self._drop("unknown session")
            return
        if p.stream.receive_datagram(datagram, now) and addr != p.addr:
            # authentic and new from another address: the peer's NAT rebound it
            log.info("punched path to %s moved from %s to %s",
                     self._describe(p.peer), join_host_port(*p.addr), join_host_port(*addr))
            p.addr = addr
            self.dataplane.punched_path(p.conn_id, addr, p.sock)
        data = p.stream.read()
        if data and p.closing is None:
            self.mesh.data_received(p.conn_id, data, now)
        self._service(p, now)

    def _service(self, p: _Punched, now: float) -> None:
        """Send what the stream has; end the connection when the stream failed or,
        closing, has delivered everything (or run out of grace)."""
        for datagram in p.stream.datagrams_to_send(now):
            self.dataplane.send_punch(datagram, p.addr, p.sock)
        if p.closing is not None:
            if p.stream.flushed or now >= p.close_by:
                self._lost(p, p.closing, now)
        elif p.stream.failed is not None:
            self._lost(p, p.stream.failed, now)

    def _lost(self, p: _Punched, reason: str, now: float) -> None:
        if self.punched.pop(p.conn_id, None) is None:
            return
        self._by_session.pop(p.session, None)
        self._first_address.pop(p.conn_id, None)
        self.mesh.connection_lost(p.conn_id, reason, now)
        self.dataplane.punched_path(p.conn_id, None)

    def _observe(self, now: float) -> None:
        """Tell the machine which peers are direct, which relayed, and where our direct
        peers' datagrams come from (they learn their reflexive candidates from that)."""
        me = self.mesh.config.name
        direct = set(self.mesh.connected_peers())
        reachable = set(self.mesh.routes.unicast) - {me}
        relayed = reachable - direct
        for peer in list(self._relayed_since):
            if peer not in relayed:
                del self._relayed_since[peer]
        for peer in relayed:
            self._relayed_since.setdefault(peer, now)
        self.rendezvous.direct(direct, now)
        self.rendezvous.want({p for p, since in self._relayed_since.items()
                              if now >= since + PUNCH_AFTER}, now)
        seen: dict[PeerName, Address | None] = {}
        for link in self.dataplane.links.values():
            # only once the mesh routes to the peer: before, a SEEN would find no route
            if (link.machine.up and link.machine.udp_addr is not None
                    and link.peer in self.mesh.routes.unicast):
                seen[link.peer] = link.machine.udp_addr
        for peer in set(self._link_addrs) | set(seen):
            addr = seen.get(peer)
            if self._link_addrs.get(peer) != addr:
                self.rendezvous.link_address(peer, addr, now)
        self._link_addrs = seen

    def _outputs(self, now: float) -> None:
        r = self.rendezvous
        for dst, payload in r.messages_to_send():
            self.mesh.gossip_unicast(CHANNEL, dst, payload, now)
        # events first: a path punched from a spray socket keeps that socket open
        while (event := r.next_event()) is not None:
            if isinstance(event, PathPunched):
                self._punched(event, now)
            elif isinstance(event, PunchFailed):
                log.info("no direct path to %s: %s; relayed, next try in %.0fs",
                         self._describe(event.peer), event.reason,
                         max(0.0, event.retry_at - now))
        self._sync_sockets(r.sockets_wanted())
        for datagram, addr, sock in r.datagrams_to_send():
            self.dataplane.send_punch(datagram, addr, sock)

    def _sync_sockets(self, wanted: int) -> None:
        """Keep spray sockets 1..``wanted`` open, and those a punched path uses."""
        keep = set(range(1, wanted + 1)) | self.dataplane.sockets_in_use() | {
            p.sock for p in self.punched.values() if p.sock}
        for sock in sorted(self._spray - keep):
            self.dataplane.release_socket(sock)
            self._spray.discard(sock)
        for sock in range(1, wanted + 1):
            if sock in self._spray:
                continue
            try:
                udp = self._open_socket()
            except (OSError, netdev.NetdevError) as exc:
                log.warning("hole punching: cannot open spray socket %d: %s", sock, exc)
                return
            self.dataplane.adopt_socket(sock, udp)
            self._spray.add(sock)

    def _open_spray_socket(self) -> UdpPort:
        return UdpSocketPort(udpsock.open_udp(0, self.host, buffer=SPRAY_BUFFER, dual=True), False)

    def _punched(self, event: PathPunched, now: float) -> None:
        if event.peer in self.mesh.connected_peers():
            return   # a dial got there meanwhile
        conn_id = self._new_conn_id()
        stream = DatagramStream(session=event.session, keys=event.keys, now=now)
        p = _Punched(conn_id, event.peer, event.session, stream, event.addr, event.sock,
                     event.how)
        self.punched[conn_id] = p
        self._by_session[event.session] = p
        log.info("punched a path to %s at %s (%s candidate%s, rtt %.1f ms)",
                 self._describe(event.peer), join_host_port(*event.addr), event.how,
                 f", from spray socket {event.sock}" if event.sock else "", event.rtt * 1000)
        self.dataplane.punched_path(conn_id, event.addr, event.sock)
        self._first_address[conn_id] = join_host_port(*event.addr)
        self.mesh.connection_made(conn_id, outbound=event.initiator,
                                  remote_address=join_host_port(*event.addr), target=None,
                                  now=now, paced=False)
        self.wake(conn_id, now)

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _describe(self, peer: PeerName) -> str:
        rec = self.mesh.topology.peers.get(peer)
        return describe_peer(peer, rec.nickname if rec is not None else "")

    # --- report -------------------------------------------------------------------------

    def report(self, now: float) -> dict[str, Any]:
        out = self.rendezvous.report()
        out.update(out.pop("counters", {}))
        status = self.rendezvous.status(now)
        routes = self.mesh.routes.unicast
        peers = {}
        for peer, since in sorted(self._relayed_since.items()):
            hop = routes.get(peer)
            entry = dict(status.get(peer, {}))
            entry["retry_in"] = entry.pop("next_retry", None)
            entry["via"] = None if hop is None else self._describe(hop)
            entry["relayed_for"] = round(now - since, 1)
            peers[self._describe(peer)] = entry
        out["relayed"] = peers
        out["punched_connections"] = len(self.punched)
        drops = dict(out.get("drops", {}))
        for reason, n in self.drops.items():
            drops[reason] = drops.get(reason, 0) + n
        out["drops"] = dict(sorted(drops.items()))
        return out

    def how(self, address: str) -> str | None:
        """How the connection at ``address`` was found, if it is a punched one."""
        for conn_id, first in self._first_address.items():
            if first == address:
                return f"punched ({self.punched[conn_id].how} candidate)"
        return None

