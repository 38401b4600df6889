"""The sleeve data plane: TAP device <-> forwarding decision <-> sealed UDP datagrams.

Theory of operation
-------------------
One TAP device (``weft-tap``) is a port of the host's ``weft`` bridge; containers are
other ports. The TAP is opened with ``IFF_VNET_HDR`` and TSO/checksum offloads, so a bulk
TCP flow reaches us as ~64 KiB *super-frames* each led by a 10-byte virtio-net header,
and we never compute a checksum or cut a segment: the header travels inside the sealed
datagram and the receiving router writes the frame back to its own TAP unchanged.

Per mesh connection there is a *link*: the peer's UDP address, a ``SleeveSession`` (keys
from the handshake, separate from the control keys; plain without a password or when both
ends trust each other's subnet), heartbeats and counters::

    TAP readable ─▶ drain reads ─▶ Forwarder.from_local ─▶ per next hop: entries ─▶ seal ─▶ UDP
    UDP readable ─▶ drain recvs ─▶ peek conn_uid ─▶ link ─▶ open (AEAD, replay window)
                     ─▶ entries ─▶ Forwarder.from_remote ─▶ TAP write and/or relay (reseal)

Each direction waits for readiness once and then drains with non-blocking calls, so a
burst costs one ``await``, not one per packet. Frames for the same next hop read in one
drain share a datagram; a super-frame fills one (a large UDP datagram the kernel
fragments; ``IP_PMTUDISC_DONT``).

A connection counts as established in the topology only once UDP works both ways: the
dialling side sends heartbeats to the address it dialled, the other side learns the
dialler's UDP address from them and answers; an answer (HEARTBEAT_ACK) proves both
directions. Any authenticated datagram from a new address moves the link there (NAT
rebinding). Silence for ``LINK_TIMEOUT`` takes the connection out of the topology again
(routes go around it) until heartbeats flow once more.

Path MTU: once a link is up, DF-marked probes of decreasing size find the largest IP
packet that reaches the peer; the overlay MTU of the link is that minus our overheads.
A frame larger than the link's MTU that carries IPv4 with DF gets an ICMP "fragmentation
needed" back to the sender; anything else is carried (the kernel fragments the datagram).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from weftnet.proto import ethernet, sleeve, sleeve_frag
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.forwarding import Forwarder
from weftnet.proto.mesh import MeshNode, PeerConnected, PeerDisconnected
from weftnet.proto.peername import describe_peer
from weftnet.proto.routes import Routes
from weftnet.proto.sleeve import Kind, SleeveDrop, SleeveSession
from weftnet.router.dataplane import udpsock
from weftnet.router.dataplane.fastpath import FastPath
from weftnet.router.dataplane.tap import Tap
from weftnet.router.host import netdev

log = logging.getLogger("weft")

HEARTBEAT_FAST = 0.5  # until the link is up
HEARTBEAT_SLOW = 2.0  # once it is
LINK_TIMEOUT = 10.0  # no authenticated datagram for this long: the link is down
NO_ANSWER_AFTER = 3.0  # say why a link is not up yet
PMTU_REPROBE = 600.0
DEFAULT_PMTU = 1500  # until probes found the path's
PROBE_WAIT = 0.5
PROBE_SIZES = (9000, 1500, 1480, 1460, 1440, 1420, 1400, 1380, 1280, 576)
DRAIN_BATCH = 512  # datagrams or frames per wake before letting other tasks run
READ_SIZE = 65536 + 64
IP_UDP_OVERHEAD = 28
# inner IP packet -> UDP payload: Ethernet + virtio-net header + entry + sleeve header + tag
OVERLAY_OVERHEAD = (ethernet.ETH_HLEN + ethernet.VNET_HDR_LEN + sleeve.ENTRY_OVERHEAD
                    + sleeve.HEADER_LEN + sleeve.TAG_LEN + IP_UDP_OVERHEAD)
ENTRY_VNET = sleeve.FLAG_VNET
ENTRY_RELAY_ONLY = sleeve.FLAG_RELAY_ONLY
GROUP_BIT = 0x010000000000  # of a MAC as an int: broadcast or multicast
HB_FLAG_TRUST = 1  # "I trust your underlay address: send to me in the clear if you trust me"


@dataclass(slots=True)
class Counters:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"packets_in": self.frames_in, "bytes_in": self.bytes_in,
                "packets_out": self.frames_out, "bytes_out": self.bytes_out,
                "datagrams_in": self.datagrams_in, "datagrams_out": self.datagrams_out}


@dataclass(slots=True)
class Link:
    """The data plane's side of one mesh connection."""

    conn_id: int
    peer: int
    nickname: str
    conn_uid: int
    outbound: bool
    remote_address: str
    session: SleeveSession  # keyed (or plain without a password)
    plain: SleeveSession  # used for DATA when both ends trust each other
    created: float
    we_trust: bool
    they_trust: bool = False
    udp_addr: tuple[str, int] | None = None
    last_rx: float | None = None
    last_hb: float = -1e9
    acked: bool = False  # our heartbeat was answered: UDP works both ways
    up: bool = False  # what we last told the mesh
    down_reason: str = ""  # why not up, as last told (said again only when it changes)
    mtu: int | None = None
    pmtu: int | None = None
    next_probe: float = 0.0
    probing: bool = False
    fast: bool = False  # the kernel VXLAN carries this peer's traffic (router/dataplane/fastpath.py)
    counters: Counters = field(default_factory=Counters)

    @property
    def clear(self) -> bool:
        """DATA travels unencrypted (both ends trust each other, or no password at all)."""
        return not self.session.encrypted or (self.we_trust and self.they_trust)

    def data_session(self) -> SleeveSession:
        return self.plain if self.session.encrypted and self.clear else self.session


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Dataplane:
    """Owns the bridge's TAP port, the UDP socket and one Link per mesh connection."""

    def __init__(self, mesh: MeshNode, *, port: int, host: str, mtu: int,
                 trusted_subnets: Iterable[str], fastdp: bool,
                 on_change: Callable[[], None]) -> None:
        self.mesh = mesh
        self.port = port
        self.host = host
        self.mtu = mtu
        self.trusted = [ipaddress.ip_network(s, strict=False) for s in trusted_subnets]
        self._on_change = on_change  # the router pumps the mesh after we change it
        self.me = mesh.config.name
        self.forwarder = Forwarder(self.me)
        self.links: dict[int, Link] = {}  # by conn_id
        self._by_uid: dict[int, Link] = {}
        self._by_peer: dict[int, Link] = {}
        self._routes: Routes | None = None
        self.tap: Tap | None = None
        self.sock: socket.socket | None = None
        self.drops: dict[str, int] = {}
        self._pending: dict[int, list[tuple[int, int, int, Any]]] = {}
        self._pending_size: dict[int, int] = {}
        self._max_body = {True: sleeve.max_body(True), False: sleeve.max_body(False)}
        self._rx = bytearray(READ_SIZE)
        self._rx_view = memoryview(self._rx)
        self._nursery: trio.Nursery | None = None
        self._reassembler = sleeve_frag.Reassembler()
        self._msg_id = int.from_bytes(os.urandom(4), "big")
        self._gro = False
        self.fast = FastPath(mesh, enabled=fastdp,
                             disabled_reason="" if fastdp else "fast path disabled (--no-fastdp)",
                             port=port + 1, mtu=mtu, links=lambda: list(self.links.values()),
                             publish=self._publish, pump=on_change,
                             rng=random.Random(os.urandom(16)))

    # --- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        """Create (or adopt) the bridge and our TAP port, and bind the UDP socket."""
        netdev.ensure_bridge(self.mtu)
        self.tap = Tap.open(netdev.TAP, bridge=netdev.BRIDGE, mtu=self.mtu)
        try:
            self.sock = udpsock.open_udp(self.port, self.host)
            self._gro = udpsock.enable_gro(self.sock)
        except OSError as exc:
            self.tap.close()
            raise OSError(exc.errno, f"cannot listen on UDP port {self.port}: "
                          f"{exc.strerror or exc}") from None
        self.fast.open()
        log.info("sleeve data plane on UDP port %d, TAP %s (offloads: %s), MTU %d", self.port,
                 self.tap.name, ",".join(sorted(self.tap.offloads)) or "none", self.mtu)

    def close(self) -> None:
        self.fast.close()
        if self.sock is not None:
            self.sock.close()
        if self.tap is not None:
            self.tap.close()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._tap_loop)
            nursery.start_soon(self._udp_loop)
            nursery.start_soon(self._tick_loop)
            nursery.start_soon(self.fast.run)

    # --- what the mesh tells us -------------------------------------------------------

    def peer_connected(self, event: PeerConnected, now: float) -> None:
        keys = event.sleeve_keys
        host, port = _split_address(event.remote_address)
        session = SleeveSession(conn_uid=event.conn_uid,
                                send_key=keys.sleeve_send if keys else None,
                                recv_key=keys.sleeve_recv if keys else None, now=now)
        plain = SleeveSession(conn_uid=event.conn_uid, send_key=None, recv_key=None, now=now)
        link = Link(conn_id=event.conn_id, peer=event.peer.name, nickname=event.peer.nickname,
                    conn_uid=event.conn_uid, outbound=event.outbound,
                    remote_address=event.remote_address, session=session, plain=plain,
                    created=now, we_trust=self._trusts(host))
        if event.outbound:
            link.udp_addr = (host, port)  # the control port is the sleeve port too
        old = self.links.pop(event.conn_id, None)
        if old is not None:
            self._unindex(old)
        self.links[event.conn_id] = link
        self._by_uid[event.conn_uid] = link
        self._send_heartbeat(link, now)
        self._link_down(link, "waiting for the peer's UDP heartbeat"
                        if not event.outbound else "no answer to UDP heartbeats yet")

    def peer_disconnected(self, event: PeerDisconnected) -> None:
        link = self.links.pop(event.conn_id, None)
        if link is not None:
            self._unindex(link)

    def _unindex(self, link: Link) -> None:
        if self._by_uid.get(link.conn_uid) is link:
            del self._by_uid[link.conn_uid]
        if self._by_peer.get(link.peer) is link:
            del self._by_peer[link.peer]

    def routes_changed(self) -> None:
        routes = self.mesh.routes
        if routes is self._routes:
            return
        old = self._routes
        self._routes = routes
        self.forwarder.set_routes(routes.unicast, routes.broadcast_next_hops)
        if old is not None:
            for peer in set(old.unicast) - set(routes.unicast):
                self.forwarder.forget_peer(peer)

    def _trusts(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def _link_up(self, link: Link) -> None:
        """UDP works both ways: the connection may join the topology."""
        link.up = True
        self._by_peer[link.peer] = link
        self._publish(link)

    def _link_down(self, link: Link, reason: str) -> None:
        """The link cannot carry traffic (``reason`` says why): out of the topology."""
        link.fast = False
        if not link.up and link.down_reason == reason:
            return
        link.up, link.down_reason = False, reason
        if self._by_peer.get(link.peer) is link:
            del self._by_peer[link.peer]
        self.mesh.set_overlay(link.conn_id, ready=False, overlay=None, reason=reason, mtu=link.mtu)
        self._on_change()

    def _publish(self, link: Link) -> None:
        """Tell the mesh which overlay an up link uses, why, and its MTU."""
        if not link.up:
            return
        self.mesh.set_overlay(link.conn_id, ready=True, overlay="fastdp" if link.fast else "sleeve",
                              reason=self._overlay_reason(link),
                              mtu=self.mtu if link.fast else link.mtu)
        self._on_change()

    def _overlay_reason(self, link: Link) -> str:
        if link.fast:
            return "fast path: kernel VXLAN, probes answered"
        if not link.session.encrypted:
            why = "sleeve without encryption"
        elif link.clear:
            why = "sleeve in the clear: both ends trust each other's subnet"
        else:
            why = "encrypted sleeve"
        return f"{why}; {self.fast.why_not(link)}"

    # --- heartbeats, timeouts, path MTU ------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(0.25)
            self.tick(trio.current_time())

    def tick(self, now: float) -> None:
        for link in list(self.links.values()):
            interval = HEARTBEAT_SLOW if link.acked else HEARTBEAT_FAST
            if now - link.last_hb >= interval:
                self._send_heartbeat(link, now)
            silent = now - (link.last_rx if link.last_rx is not None else link.created)
            if link.up and silent >= LINK_TIMEOUT:
                link.acked = False
                log.warning("no UDP from %s for %.0fs: connection unusable until it answers",
                            describe_peer(link.peer, link.nickname), silent)
                self._link_down(link, f"no UDP heartbeat from the peer for "
                                f"{silent:.0f}s (is UDP port {self.port} blocked?)")
            elif not link.up and silent >= NO_ANSWER_AFTER and link.last_rx is None:
                self._link_down(link, f"no UDP heartbeat from the peer for {silent:.0f}s "
                                f"(is UDP port {self.port} blocked?)")
            if link.up and not link.probing and now >= link.next_probe:
                link.probing = True
                assert self._nursery is not None
                self._nursery.start_soon(self._probe_pmtu, link)
            link.session.handle_timer(now)  # erase old keys while idle (forward secrecy)
            link.plain.handle_timer(now)
        self.forwarder.expire(now)
        lost = self._reassembler.expire(now)
        if lost:
            self._drop("incomplete message", lost)

    def _send_heartbeat(self, link: Link, now: float) -> None:
        if link.udp_addr is None:
            return
        link.last_hb = now
        body = sleeve.encode_heartbeat(self.me, self.mesh.config.uid, 0, self.mtu,
                                       flags=HB_FLAG_TRUST if link.we_trust else 0)
        self._send(link, link.session.seal(Kind.HEARTBEAT, body, now), link.udp_addr)

    def _on_heartbeat(self, link: Link, kind: Kind, body: bytes, addr: tuple[str, int],
                      now: float) -> None:
        hb = sleeve.decode_heartbeat(body)
        trust = bool(hb.flags & HB_FLAG_TRUST)
        if trust != link.they_trust:
            link.they_trust = trust
        if kind is Kind.HEARTBEAT:
            reply = sleeve.encode_heartbeat(self.me, self.mesh.config.uid, hb.nonce, self.mtu,
                                            flags=HB_FLAG_TRUST if link.we_trust else 0)
            self._send(link, link.session.seal(Kind.HEARTBEAT_ACK, reply, now), addr)
            if not link.acked and now - link.last_hb >= HEARTBEAT_FAST / 2:
                self._send_heartbeat(link, now)  # the inbound side answers with its own at once
        else:
            if not link.acked:
                link.acked = True
                link.next_probe = now
            if not link.up:
                link.mtu = link.mtu or self.mtu
                self._link_up(link)

    async def _probe_pmtu(self, link: Link) -> None:
        """Find the largest DF packet that reaches the peer; the link's MTU follows."""
        try:
            addr = link.udp_addr
            if addr is None:
                return
            try:
                probe = udpsock.probe_sender(addr)
            except OSError as exc:
                log.debug("cannot probe the path to %s: %s", addr, exc)
                return
            with probe:
                route = udpsock.route_mtu(probe)
                found = None
                for size in sorted({s for s in PROBE_SIZES if s <= route} | {route}, reverse=True):
                    if await self._probe_once(link, probe, size):
                        found = size
                        break
            if found is not None and found != link.pmtu:
                link.pmtu = found
                link.mtu = min(self.mtu, found - OVERLAY_OVERHEAD)
                log.info("path MTU to %s is %d: overlay MTU %d",
                         describe_peer(link.peer, link.nickname), found, link.mtu)
                self._publish(link)
        finally:
            link.probing = False
            link.next_probe = trio.current_time() + PMTU_REPROBE

    async def _probe_once(self, link: Link, probe: socket.socket, size: int) -> bool:
        now = trio.current_time()
        body_size = size - IP_UDP_OVERHEAD - sleeve.HEADER_LEN - (
            sleeve.TAG_LEN if link.session.encrypted else 0)
        probe_id = int.from_bytes(os.urandom(4), "big")
        datagram = link.session.seal(Kind.PROBE, sleeve.encode_probe(probe_id, body_size), now)
        try:
            probe.send(datagram)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return False
            raise
        with trio.move_on_after(PROBE_WAIT):
            while True:
                await trio.lowlevel.wait_readable(probe)
                try:
                    data = probe.recv(2048)
                except BlockingIOError:
                    continue
                except OSError:
                    return False
                try:
                    kind, body = link.session.open(data, trio.current_time())
                    got_id, _ = sleeve.decode_probe(body)
                except RemoteProtocolError:
                    continue
                if kind is Kind.PROBE_ACK and got_id == probe_id:
                    return True
        return False

    # --- TAP -> UDP ---------------------------------------------------------------------

    async def _tap_loop(self) -> None:
        assert self.tap is not None
        fd = self.tap.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            while self._drain_tap(fd):
                await trio.sleep(0)

    def _drain_tap(self, fd: int) -> bool:
        """Read what the TAP has (up to a batch); True if there may be more."""
        now = trio.current_time()
        fwd = self.forwarder
        vnet = ethernet.VNET_HDR_LEN if self.tap is not None and self.tap.vnet_hdr else 0
        flags = ENTRY_VNET if vnet else 0
        me = self.me
        more = True
        for _ in range(DRAIN_BATCH):
            try:
                frame = os.read(fd, READ_SIZE)
            except BlockingIOError:
                more = False
                break
            except OSError as exc:
                self._drop(f"tap read error: {exc.strerror}")
                more = False
                break
            if len(frame) < vnet + ethernet.ETH_HLEN:
                self._drop("malformed")
                continue
            dst, src = ethernet.macs(frame, vnet)
            sends = fwd.from_local(dst, src, now)
            if isinstance(sends, str):
                self._drop(sends)
                continue
            for hop, dst_peer in sends:
                link = self._by_peer.get(hop)
                if link is None:
                    self._drop("no route")
                    continue
                if link.mtu is not None and self._too_big(frame, vnet, link.mtu):
                    continue
                if link.fast and dst & GROUP_BIT:
                    self._queue(link, (me, dst_peer, flags | ENTRY_RELAY_ONLY, frame))
                else:
                    self._queue(link, (me, dst_peer, flags, frame))
        self._flush(now)
        return more

    def _too_big(self, frame: bytes, vnet: int, mtu: int) -> bool:
        """A frame whose IP packets exceed the link MTU: ICMP back if DF, else carry it."""
        if vnet:
            hdr = ethernet.VnetHeader.decode(frame, 0)
            size = ethernet.segment_size(hdr, len(frame) - vnet, frame, vnet) - ethernet.ETH_HLEN
        else:
            size = len(frame) - ethernet.ETH_HLEN
        if size <= mtu:
            return False
        plain = bytes(frame[vnet:]) if vnet else frame
        reply = ethernet.frag_needed_reply(plain, mtu, size)
        if reply is None:
            return False  # no DF (or not IPv4): the kernel fragments the datagram
        self._drop("too big")
        if self.tap is not None:
            out = (bytes(ethernet.VNET_HDR_LEN) + reply) if vnet else reply
            try:
                self.tap.write(out)
            except OSError:
                pass
        return True

    def _queue(self, link: Link, entry: tuple[int, int, int, Any]) -> None:
        size = sleeve.ENTRY_OVERHEAD + len(entry[3])
        limit = self._max_body[link.session.encrypted and not link.clear]
        if size > limit:
            self._drop("too big")
            return
        pending = self._pending.get(link.conn_id)
        if pending is None:
            pending = self._pending[link.conn_id] = []
            self._pending_size[link.conn_id] = 0
        elif self._pending_size[link.conn_id] + size > limit:
            self._flush_link(link, trio.current_time())
            pending = self._pending[link.conn_id] = []
            self._pending_size[link.conn_id] = 0
        pending.append(entry)
        self._pending_size[link.conn_id] += size
        link.counters.frames_out += 1
        link.counters.bytes_out += len(entry[3])

    def _flush(self, now: float) -> None:
        for conn_id in list(self._pending):
            link = self.links.get(conn_id)
            if link is None:
                self._pending.pop(conn_id, None)
                continue
            self._flush_link(link, now)

    def _flush_link(self, link: Link, now: float) -> None:
        entries = self._pending.pop(link.conn_id, None)
        self._pending_size.pop(link.conn_id, None)
        if not entries or link.udp_addr is None:
            return
        body = sleeve.encode_entries(entries)
        self._send(link, link.data_session().seal(Kind.DATA, body, now), link.udp_addr)

    def _send(self, link: Link, datagram: bytes, addr: tuple[str, int]) -> None:
        """One sealed message: a datagram if it fits the path, else our own fragments in
        one GSO send (see proto/sleeve_frag.py for why not IP fragmentation)."""
        assert self.sock is not None
        seg = (link.pmtu or DEFAULT_PMTU) - IP_UDP_OVERHEAD
        try:
            if len(datagram) <= seg or len(datagram) > sleeve_frag.max_message(seg):
                self.sock.sendto(datagram, addr)
                link.counters.datagrams_out += 1
            else:
                self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
                buf = sleeve_frag.fragment(datagram, seg, self._msg_id)
                udpsock.send_segments(self.sock, buf, seg, addr)
                link.counters.datagrams_out += sleeve_frag.fragment_count(len(datagram), seg)
        except BlockingIOError:
            self._drop("send buffer full")
        except OSError as exc:
            self._drop("too big" if exc.errno == errno.EMSGSIZE else f"send error: {exc.strerror}")

    def _drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    # --- UDP -> TAP ---------------------------------------------------------------------

    async def _udp_loop(self) -> None:
        assert self.sock is not None
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            while self._drain_udp(sock):
                await trio.sleep(0)

    def _drain_udp(self, sock: socket.socket) -> bool:
        now = trio.current_time()
        view = self._rx_view
        rx = self._rx
        more = True
        for _ in range(DRAIN_BATCH):
            try:
                if self._gro:
                    n, seg, addr = udpsock.recv_batch(sock, rx)
                else:
                    n, addr = sock.recvfrom_into(rx)
                    seg = None
            except BlockingIOError:
                more = False
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                self._drop(f"receive error: {exc.strerror}")
                continue
            if seg is None:
                self._receive(view[:n], addr, now)
            else:  # GRO: consecutive datagrams of `seg` bytes
                reasm = self._reassembler
                bad = reasm.malformed
                for item in reasm.add_batch(addr, view[:n], seg, now):
                    self._datagram(item if isinstance(item, memoryview) else memoryview(item),
                                   addr, now)
                if reasm.malformed != bad:
                    self._drop("malformed", reasm.malformed - bad)
        self._flush(now)
        return more

    def _receive(self, data: memoryview, addr: tuple[str, int], now: float) -> None:
        if sleeve_frag.is_fragment(data):
            try:
                message = self._reassembler.add(addr, data, now)
            except RemoteProtocolError:
                self._drop("malformed")
                return
            if message is None:
                return
            data = memoryview(message)
        self._datagram(data, addr, now)

    def _datagram(self, data: memoryview, addr: tuple[str, int], now: float) -> None:
        try:
            kind, _epoch, conn_uid, _counter = sleeve.peek(data)
        except RemoteProtocolError:
            self._drop("malformed")
            return
        link = self._by_uid.get(conn_uid)
        if link is None:
            self._drop("unknown connection")
            return
        session = link.data_session() if kind is Kind.DATA else link.session
        try:
            kind, body = session.open(data, now)
        except SleeveDrop as exc:
            self._drop(exc.reason)
            return
        except RemoteProtocolError:
            self._drop("malformed")
            return
        link.counters.datagrams_in += 1
        link.last_rx = now
        if kind is not Kind.PROBE and kind is not Kind.PROBE_ACK and link.udp_addr != addr:
            if link.udp_addr is not None:
                log.info("%s now sends from %s:%d", describe_peer(link.peer, link.nickname), *addr)
            link.udp_addr = addr  # learnt, or NAT rebinding: authenticated, so follow it
        try:
            if kind is Kind.DATA:
                self._on_data(link, body, now)
            elif kind is Kind.HEARTBEAT or kind is Kind.HEARTBEAT_ACK:
                self._on_heartbeat(link, kind, body, addr, now)
            elif kind is Kind.PROBE:
                probe_id, _ = sleeve.decode_probe(body)
                self._send(link, link.session.seal(Kind.PROBE_ACK,
                                                   sleeve.encode_probe(probe_id, 8), now), addr)
        except RemoteProtocolError:
            self._drop("malformed")

    def _on_data(self, link: Link, body: bytes, now: float) -> None:
        if not link.up:
            self._drop("link not up")
            return
        fwd = self.forwarder
        tap = self.tap
        assert tap is not None
        vnet = tap.vnet_hdr
        for src_peer, dst_peer, flags, frame in sleeve.decode_entries(body):
            off = ethernet.VNET_HDR_LEN if flags & ENTRY_VNET else 0
            if len(frame) < off + ethernet.ETH_HLEN:
                self._drop("malformed")
                continue
            dst, src = ethernet.macs(frame, off)
            verdict = fwd.from_remote(src_peer, dst_peer, dst, src, now)
            if isinstance(verdict, str):
                self._drop(verdict)
                continue
            deliver, relays = verdict
            if flags & ENTRY_RELAY_ONLY:
                deliver, flags = False, flags & ~ENTRY_RELAY_ONLY
            link.counters.frames_in += 1
            link.counters.bytes_in += len(frame)
            if deliver:
                try:
                    if vnet == bool(off):
                        tap.write(frame)
                    elif vnet:
                        tap.write(bytes(ethernet.VNET_HDR_LEN) + bytes(frame))
                    else:
                        tap.write(frame[off:])
                except OSError as exc:
                    self._drop(f"tap write error: {exc.strerror}")
            for hop, relay_dst in relays:
                out = self._by_peer.get(hop)
                if out is None:
                    self._drop("no route")
                    continue
                self._queue(out, (src_peer, relay_dst, flags, bytes(frame)))

    # --- report -----------------------------------------------------------------------------

    def connection_report(self, address: str, outbound: bool) -> dict[str, Any] | None:
        for link in self.links.values():
            if link.remote_address == address and link.outbound == outbound:
                return {
                    "udp_address": (f"{link.udp_addr[0]}:{link.udp_addr[1]}"
                                    if link.udp_addr else None),
                    "heartbeat_answered": link.acked,
                    "encrypted_data": not link.clear,
                    "fastdp": link.fast,
                    "path_mtu": link.pmtu,
                    "epoch": link.session.epoch_send,
                    **link.counters.as_dict(),
                }
        return None

    def report(self) -> dict[str, Any]:
        return {
            "bridge": netdev.BRIDGE,
            "tap": None if self.tap is None else {"name": self.tap.name,
                                                  "vnet_hdr": self.tap.vnet_hdr,
                                                  "offloads": sorted(self.tap.offloads)},
            "udp_port": self.port,
            "mtu": self.mtu,
            "drops": dict(sorted(self.drops.items())),
            "macs": len(self.forwarder.macs()),
            "fastdp": self.fast.report(),
        }
