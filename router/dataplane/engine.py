"""The sleeve data plane: TAP port <-> forwarding decision <-> sealed UDP datagrams.

Theory of operation
-------------------
One TAP device (``weft-tap``) is a port of the host's ``weft`` bridge; containers are
other ports. The TAP is opened with ``IFF_VNET_HDR`` and TSO/checksum offloads, so a bulk
TCP flow reaches us as ~64 KiB *super-frames* each led by a 10-byte virtio-net header,
and we never compute a checksum or cut a segment: the header travels inside the sealed
datagram and the receiving router writes the frame back to its own TAP unchanged.

The engine only moves bytes, between two ports (router/dataplane/ports.py: the TAP and the
UDP socket in production, router/dataplane/doubles.py in tests). Per mesh connection there
is a *link*: a ``SleeveSession`` (keys from the handshake, separate from the control keys;
plain without a password or when both ends trust each other's subnet), counters, and a
``LinkMachine`` (proto/link.py) that decides everything else: heartbeats, trust, up or down
and why, the path MTU, the peer's current UDP address. The engine seals and sends what the
machine asks and feeds it what arrives (a password change gives a link new keys without a
break: ``keys_agreed`` then ``keys_switched``, proto/sleeve_rotation.py)::

    TAP readable ─▶ drain reads ─▶ Forwarder.from_local ─▶ per next hop: entries ─▶ seal ─▶ UDP
    UDP readable ─▶ drain recvs ─▶ peek conn_uid ─▶ link ─▶ open (AEAD, replay window)
                     ─▶ machine.receive ─▶ DATA: entries ─▶ Forwarder.from_remote
                     ─▶ TAP write and/or relay (reseal)

Each direction waits for readiness once and then drains with non-blocking calls, so a
burst costs one wake, not one per packet: on a thread of its own with the host's ports
(router/dataplane/readers.py; the daemon's entries take the engine's lock, ``locked``).
Frames for the same next hop read in one drain share a datagram (router/dataplane/outbox.py:
a newer pure TCP ACK of a flow takes an older one's place there); a super-frame fills one.
A TAP read makes one fresh ``bytes`` (the frame waits in its batch until sealed: a reused
buffer would cost a copy, and an arena cycling through a megabyte measured slower than the
allocator's hot 64 KiB chunk); UDP reads reuse one buffer, and a plain datagram's frames
stay views into it (no copy on open).

Nothing here calls back into the daemon. What the mesh must hear (a link's overlay: ready
or not, which one, why, its MTU) is decided by ``_decide``, the single writer of
``link.fast``, from the facts (machine up and clear, the fast path's verdict), and queued;
the daemon's pump hands it to ``MeshNode.set_overlay`` with ``drain``. ``wake`` only asks the
daemon's timer task to look again: ``get_timer`` is in the past while news waits, and
``handle_timer`` runs the machines', sessions' and fast path's timers.

A frame larger than the link's MTU that carries IPv4 with DF gets an ICMP "fragmentation
needed" back to the sender; anything else is carried (the kernel fragments the datagram).
So is any frame while the fast path's first verdict on the link is pending (``deciding``):
its MTU is larger, and a container keeps a smaller one it was told for 10 minutes.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Iterable
from typing import Any

import trio

from weftnet.proto import ethernet, gsosplit, punchwire, sleeve, sleeve_frag
from weftnet.proto.connmaker import join_host_port
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.forwarding import Forwarder
from weftnet.proto.link import (
    AddressMoved,
    LinkMachine,
    LinkWentDown,
    LinkWentUp,
    PathMtuFound,
    heartbeat_interval,
    ip_udp_overhead,
    standby_interval,
)
from weftnet.proto.mesh import KeysAgreed, KeysSwitched, MeshNode, PeerConnected, PeerDisconnected
from weftnet.proto.peername import describe_peer
from weftnet.proto.routes import Routes
from weftnet.proto.sleeve import Kind, SleeveDrop
from weftnet.proto.sleeve_rotation import SessionRotation
from weftnet.router.dataplane import pmtu, udpsock
from weftnet.router.dataplane.fastpath import FastPath
from weftnet.router.dataplane.links import Link, Overlay, Trusted, new_link
from weftnet.router.dataplane.outbox import Outbox
from weftnet.router.dataplane.pmtu import PathProbes
from weftnet.router.dataplane.ports import Address, TapPort, UdpPort, UdpSocketPort
from weftnet.router.dataplane.readers import ThreadReaders, TrioReaders, locked
from weftnet.router.dataplane.tap import PLAIN_VNET_HDR, Tap
from weftnet.router.host import netdev

log = logging.getLogger("weft")

DEFAULT_PMTU = 1500  # until probes found the path's
DRAIN_BATCH = 512  # datagrams or frames per wake before letting other tasks run
READ_SIZE = 65536 + 64
SWEEP_INTERVAL = 0.5  # expired MACs and fragments are looked for at most this often
ENTRY_VNET = sleeve.FLAG_VNET
ENTRY_RELAY_ONLY = sleeve.FLAG_RELAY_ONLY
GROUP_BIT = 0x010000000000  # of a MAC as an int: broadcast or multicast
# on a link whose peer loses whole messages (proto/link.py: lossy), a TCP super-frame is
# sealed as pieces of at most this many segments (proto/gsosplit.py), each led by parity.
# Plain sleeve at 1% loss per datagram on the wire (router/tools/wireloss.py), iperf3 8 s,
# Gbit/s in ABBA order: 8 segments 1.06/1.07/1.05/1.01 against 16: 1.49/1.21/1.22/1.31;
# 16: 1.36/1.29/1.15 against 24: 1.40/1.60/1.67; 24: 1.49/1.88/1.34 against whole
# super-frames (48): 1.30/1.42/1.36. Bound by the routers' CPU per unit (8: 12.9, 24: 8.5
# CPU s/GB), not by the TCP retransmissions (8: 10k, 24: 33-46k, whole: 80k in 8 s).
LOSSY_UNIT_SEGS = 24
MAX_PUNCH_INBOX = 4096  # punch datagrams waiting for the daemon; beyond: dropped, counted
PUNCHED_NO_FASTDP = ("the peer is reached through NAT (a punched UDP path): the kernel's "
                     "VXLAN sends from other ports, which the NATs do not let through")



class Dataplane:
    """Owns the bridge's TAP port, the UDP port and one Link per mesh connection."""

    def __init__(self, mesh: MeshNode, *, port: int, host: str, mtu: int,
                 trusted_subnets: Iterable[str], fastdp: bool,
                 wake: Callable[[], None] = lambda: None, rng: random.Random | None = None) -> None:
        self.mesh = mesh
        self.port = port
        self.host = host
        self.mtu = mtu
        self.trusted = Trusted(trusted_subnets)
        self._wake = wake  # asks the daemon's timer task to look at get_timer again
        self._rng = rng if rng is not None else random.Random(os.urandom(16))
        self.me = mesh.config.name
        self.forwarder = Forwarder(self.me)
        self.links: dict[int, Link] = {}  # by conn_id
        self._by_uid: dict[int, Link] = {}
        self._by_peer: dict[int, Link] = {}
        self._routes: Routes | None = None
        self.tap: TapPort | None = None
        self.udp: UdpPort | None = None
        self.drops: dict[str, int] = {}
        self._outbox = Outbox()  # entries per link until the flush seals them
        self._max_body = {True: sleeve.max_body(True), False: sleeve.max_body(False)}
        self._rx = bytearray(READ_SIZE)
        self._rx_view = memoryview(self._rx)
        self._lock = threading.RLock()  # held by whichever thread is in the engine
        self._now: Callable[[], float] = trio.current_time  # readers.py: either thread's
        self._readers: ThreadReaders | TrioReaders = TrioReaders()
        self._later: set[int] = set()  # conn_ids the data thread left to _service
        self._reassembler = sleeve_frag.Reassembler()
        self._last_sweep = -math.inf  # of incomplete fragmented messages
        self._mac_sweep = -math.inf  # of expired MACs
        self._msg_id = self._rng.getrandbits(32)
        self._unpublished: set[int] = set()  # conn_ids whose overlay the mesh must hear
        self._news = False  # something for the pump: get_timer says "now"
        self._armed = math.inf  # the deadline get_timer last gave the daemon
        # hole punching (router/daemon/punch_driver.py): punch-family datagrams wait here for
        # the daemon, and connections it made over punched paths say where their peer is
        self._punch_inbox: list[tuple[bytes, Address, int]] = []
        self._paths: dict[int, tuple[Address, int]] = {}
        self._socks: dict[int, UdpPort] = {}  # extra sockets (hole punching's spray), by index
        self.probes = PathProbes(port=self._port, deliver=self._receive, service=self._service,
                                 flush=self._flush, lock=self._lock)
        self.fast = FastPath(mesh, enabled=fastdp,
                             disabled_reason="" if fastdp else "fast path disabled (--no-fastdp)",
                             port=port + 1, mtu=mtu, wake=self._notify,
                             rng=random.Random(self._rng.getrandbits(64)))

    # --- life cycle -------------------------------------------------------------------

    def open(self, tap: TapPort | None = None, udp: UdpPort | None = None, *,
             threaded: bool | None = None) -> None:
        """Take the ports given, or create (or adopt) the bridge and our TAP port and bind
        the UDP socket. ``threaded``: read the ports on a thread (readers.py), by default
        when they are the host's."""
        if threaded if threaded is not None else tap is None and udp is None:
            self._readers = ThreadReaders(self._lock)
        if tap is None:
            netdev.ensure_bridge(self.mtu)
            tap = Tap.open(netdev.TAP, bridge=netdev.BRIDGE, mtu=self.mtu)
        if udp is None:
            try:
                sock = udpsock.open_udp(self.port, self.host, dual=True)
                udp = UdpSocketPort(sock, udpsock.enable_gro(sock))
            except OSError as exc:
                tap.close()
                raise OSError(exc.errno, f"cannot listen on UDP port {self.port}: "
                              f"{exc.strerror or exc}") from None
        self.tap, self.udp = tap, udp
        self.fast.open()
        log.info("sleeve data plane on UDP port %d, TAP %s (offloads: %s), MTU %d", self.port,
                 tap.name, ",".join(sorted(tap.offloads)) or "none", self.mtu)

    def close(self) -> None:
        self.fast.close()
        for link in self.links.values():
            self.probes.close(link)
        for sock in list(self._socks):
            self.release_socket(sock)
        if self.udp is not None:
            self.udp.close()
        if self.tap is not None:
            self.tap.close()

    async def run(self) -> None:
        tap, udp, readers = self.tap, self.udp, self._readers
        assert tap is not None and udp is not None, "open() first"
        if isinstance(readers, ThreadReaders):
            self._now = trio.lowlevel.current_clock().current_time
            token, wake = trio.lowlevel.current_trio_token(), self._wake
            self._wake = lambda: token.run_sync_soon(wake)  # from either thread
        readers.add(tap, lambda: self._drain_tap(tap))
        readers.add(udp, lambda: self._drain_udp(udp))
        async with trio.open_nursery() as nursery:
            self.probes.nursery = nursery
            for sock, extra in self._socks.items():
                self._read_socket(sock, extra)
            nursery.start_soon(readers.run)
            nursery.start_soon(self.fast.run)

    def _read_socket(self, sock: int, udp: UdpPort) -> None:
        self._readers.add(udp, lambda: self._drain_udp(udp, sock),
                          alive=lambda: self._socks.get(sock) is udp)

    # --- what the mesh tells us, and what we tell it --------------------------------------

    @locked
    def peer_connected(self, event: PeerConnected, now: float) -> None:
        path, sock = self._paths.get(event.conn_id, (None, 0))
        link = new_link(event, me=self.me, uid=self.mesh.config.uid, mtu=self.mtu,
                        port=self.port, trusts=self.trusted, path=path, sock=sock, now=now,
                        rng=self._rng)
        old = self.links.pop(event.conn_id, None)
        if old is not None:
            self._unindex(old)
        self.links[event.conn_id] = link
        self._by_uid[event.conn_uid] = link
        self._pace()
        self._service(link, now)

    @locked
    def peer_disconnected(self, event: PeerDisconnected) -> None:
        self._paths.pop(event.conn_id, None)
        link = self.links.pop(event.conn_id, None)
        if link is not None:
            self._unindex(link)
            self._pace()

    def _pace(self) -> None:
        """Heartbeats per second that do not grow with the links (proto/link.py, "Idle cost");
        a fast link's sleeve stands by."""
        standing_by = sum(link.fast for link in self.links.values())
        slow = heartbeat_interval(len(self.links) - standing_by)
        standby = standby_interval(standing_by)
        for link in self.links.values():
            m = link.machine
            pace = standby if link.fast else slow
            if m.slow != pace:
                m.slow = pace
                self._rearm(m)

    # --- hole punching: the daemon's punch driver reads and sends through our socket ------

    @locked
    def punched_path(self, conn_id: int, addr: Address | None, sock: int = 0) -> None:
        """Connection ``conn_id`` runs over a punched path to ``addr`` from our socket
        ``sock`` (None: forget it)."""
        if addr is None:
            self._paths.pop(conn_id, None)
        else:
            self._paths[conn_id] = (addr, sock)

    @locked
    def adopt_socket(self, sock: int, udp: UdpPort) -> None:
        """Read (and send through) an extra UDP socket, index ``sock`` >= 1: what arrives
        there goes where the main socket's datagrams go, punch datagrams tagged with it."""
        assert sock >= 1
        self.release_socket(sock)
        self._socks[sock] = udp
        if self.probes.nursery is not None:  # else run() starts its reader
            self._read_socket(sock, udp)

    @locked
    def release_socket(self, sock: int) -> None:
        udp = self._socks.pop(sock, None)
        if udp is not None:
            self._readers.remove(udp)
            udp.close()

    @locked
    def sockets_in_use(self) -> set[int]:
        """Extra sockets that links use (a punched path from a spray socket)."""
        return {link.sock for link in self.links.values() if link.sock} | {
            s for _, s in self._paths.values() if s}

    @locked
    def take_punch(self) -> list[tuple[bytes, Address, int]]:
        """The punch-family datagrams that arrived since the last call, with the index of
        the socket each came in on."""
        inbox, self._punch_inbox = self._punch_inbox, []
        return inbox

    def _port(self, sock: int) -> UdpPort | None:
        return self.udp if sock == 0 else self._socks.get(sock)

    @locked
    def send_punch(self, datagram: bytes, addr: Address, sock: int = 0) -> None:
        udp = self._port(sock)
        if udp is None:
            self._drop("no such socket")
            return
        try:
            udp.sendto(datagram, addr)
        except BlockingIOError:
            self._drop("send buffer full")
        except OSError as exc:
            self._drop(f"send error: {exc.strerror}")

    @locked
    def keys_agreed(self, event: KeysAgreed, now: float) -> None:
        """A rekey completed on our side: open the new session's datagrams from now on,
        keep sealing with the current one (make before break)."""
        link = self.links.get(event.conn_id)
        if link is None:
            return
        if link.rotation is None:
            link.rotation = SessionRotation(link.session)
        link.rotation.agreed(event.sleeve_uid, event.sleeve_keys, now)
        self._by_uid[event.sleeve_uid] = link
        self._wake()

    @locked
    def keys_switched(self, event: KeysSwitched, now: float) -> None:
        """The peer opens the new keys: seal with them; the old session keeps opening
        until its overlap is over (its timer), then it is erased."""
        link = self.links.get(event.conn_id)
        if link is None or link.rotation is None:
            return
        link.session = link.rotation.switched(now)
        log.info("new keys with %s in use (password change)",
                 describe_peer(link.peer, link.nickname))
        self._wake()

    def _unindex(self, link: Link) -> None:
        for uid in link.rotation.uids if link.rotation is not None else ():
            if self._by_uid.get(uid) is link:
                del self._by_uid[uid]
        if self._by_uid.get(link.conn_uid) is link:
            del self._by_uid[link.conn_uid]
        if self._by_peer.get(link.peer) is link:
            del self._by_peer[link.peer]
        self.probes.close(link)
        self.fast.forget(link.conn_id)
        self._unpublished.discard(link.conn_id)

    @locked
    def forget_mac(self, mac: int) -> bool:
        """A container left: its MAC is nobody's from now on."""
        return self.forwarder.forget_mac(mac)

    @locked
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

    @locked
    def drain(self, now: float) -> None:
        """Tell the mesh each changed link's overlay (the daemon's pump calls this first)."""
        for conn_id in self.fast.take_moved():
            link = self.links.get(conn_id)
            if link is not None:
                self._decide(link, now)
        self._news = False  # what _decide queued is published right here
        for conn_id in sorted(self._unpublished):
            link = self.links.get(conn_id)
            if link is None or link.published is None:
                continue
            ready, overlay, reason, mtu = link.published
            self.mesh.set_overlay(conn_id, ready=ready, overlay=overlay, reason=reason, mtu=mtu,
                                  now=now)
        self._unpublished.clear()

    def _notify(self) -> None:
        self._news = True
        self._wake()

    def _decide(self, link: Link, now: float) -> None:
        """The one writer of ``link.fast`` and of what the mesh hears about the link."""
        m = link.machine
        eligible = m.up and m.clear and not link.punched
        self.fast.follow(link.conn_id, link.peer, link.nickname,
                         m.udp_addr[0] if m.udp_addr is not None else None, eligible, now)
        fast = eligible and self.fast.carries(link.conn_id)
        if fast != link.fast:
            link.fast = fast
            self._pace()
        overlay: Overlay
        if m.up:
            overlay = (True, "fastdp" if fast else "sleeve", self._overlay_reason(link),
                       self.mtu if fast else m.mtu)
        else:
            overlay = (False, None, m.down_reason, m.mtu)
        if overlay != link.published:
            link.published = overlay
            self._unpublished.add(link.conn_id)
            self._notify()

    def _overlay_reason(self, link: Link) -> str:
        if link.fast:
            return "fast path: kernel VXLAN, probes answered"
        if not link.session.encrypted:
            why = "sleeve without encryption"
        elif link.clear:
            why = "sleeve in the clear: both ends trust each other's subnet"
        else:
            why = "encrypted sleeve"
        if link.punched and link.clear:
            return f"{why}; {PUNCHED_NO_FASTDP}"
        return f"{why}; {self.fast.why_not(link.conn_id, link.clear)}"

    # --- the link machines: their outputs, their timers ---------------------------------

    def _service(self, link: Link, now: float) -> None:
        """Send what the link's machine asks, act on its events. The data thread only sends:
        events and path MTU probes (probe tasks, the mesh) wait for the trio thread's timers."""
        m, data_thread = link.machine, threading.get_ident() == self._readers.ident
        while sends := m.datagrams_to_send(probes=not data_thread):
            for send in sends:
                if send.probe_id is None:
                    self._send(link, link.session.seal(send.kind, send.body, now), send.addr)
                else:
                    self.probes.send(link, send, now)
        if data_thread:
            if m.has_news or link.probe is not None and not m.probing:
                self._later.add(link.conn_id)
                self._wake()
            self._rearm(m)
            return
        moved = False
        while (event := m.next_event()) is not None:
            moved = True
            if isinstance(event, LinkWentUp):
                self._by_peer[link.peer] = link
            elif isinstance(event, LinkWentDown):
                if self._by_peer.get(link.peer) is link:
                    del self._by_peer[link.peer]
                if event.silent is not None:
                    log.warning("no UDP from %s for %.0fs: connection unusable until it answers",
                                describe_peer(link.peer, link.nickname), event.silent)
            elif isinstance(event, AddressMoved):
                if event.old is not None:
                    log.info("%s now sends from %s",
                             describe_peer(link.peer, link.nickname), join_host_port(*event.new))
            elif isinstance(event, PathMtuFound):
                log.info("path MTU to %s is %d: overlay MTU %d",
                         describe_peer(link.peer, link.nickname), event.pmtu, event.mtu)
        if link.probe is not None and not m.probing:
            self.probes.close(link)
        if moved:
            self._decide(link, now)
        self._rearm(m)

    def _rearm(self, m: LinkMachine) -> None:
        """The machine's timer may have moved: wake the timer task if it is now sooner."""
        due = m.get_timer()
        if due is not None and due < self._armed:
            self._wake()

    @locked
    def get_timer(self) -> float | None:
        """When ``handle_timer`` has work; in the past while news waits for the pump."""
        if self._news or self.fast.moved or self._later:
            due = -math.inf
        else:
            times = [self.fast.get_timer(), self._mac_timer()]
            for link in self.links.values():
                times += (link.machine.get_timer(), link.session.get_timer(),
                          link.plain.get_timer())
                if link.rotation is not None:
                    times.append(link.rotation.get_timer())
            if len(self._reassembler):
                times.append(self._last_sweep + SWEEP_INTERVAL)
            due = min((t for t in times if t is not None), default=math.inf)
        self._armed = due
        return None if due == math.inf else due

    @locked
    def handle_timer(self, now: float) -> None:
        self._armed = math.inf  # the daemon asks get_timer again after this
        for conn_id in sorted(self._later):
            if (later := self.links.get(conn_id)) is not None:
                self._service(later, now)
        self._later.clear()
        for link in list(self.links.values()):
            due = link.machine.get_timer()
            if due is not None and due <= now:
                link.machine.handle_timer(now)
                self._service(link, now)
            link.session.handle_timer(now)  # erase old keys while idle (forward secrecy)
            link.plain.handle_timer(now)
            if link.rotation is not None:
                link.rotation.handle_timer(now)  # the old keys of a rekey go after the overlap
        self.fast.handle_timer(now)
        due = self._mac_timer()
        if due is not None and due <= now:
            self._mac_sweep = now
            self.forwarder.expire(now)
        if len(self._reassembler) and now >= self._last_sweep + SWEEP_INTERVAL:
            self._last_sweep = now
            if self._reassembler.expire(now):
                self._tell_loss(now)

    def _mac_timer(self) -> float | None:
        """When to sweep expired MACs: when the oldest expires, but never twice within a
        SWEEP_INTERVAL (its expiry test may round the other way at the very deadline)."""
        due = self.forwarder.get_timer()
        return None if due is None else max(due, self._mac_sweep + SWEEP_INTERVAL)

    # --- TAP -> UDP ---------------------------------------------------------------------

    def _drain_tap(self, tap: TapPort) -> bool:
        """Read what the TAP has (up to a batch); True if there may be more."""
        now = self._now()
        fwd = self.forwarder
        vnet = ethernet.VNET_HDR_LEN if tap.vnet_hdr else 0
        flags = ENTRY_VNET if vnet else 0
        shortest = vnet + ethernet.ETH_HLEN
        me = self.me
        by_peer = self._by_peer
        read = tap.read
        more = True
        for _ in range(DRAIN_BATCH):
            try:
                frame = read(READ_SIZE)
            except BlockingIOError:
                more = False
                break
            except OSError as exc:
                self._drop(f"tap read error: {exc.strerror}")
                more = False
                break
            n = len(frame)
            if n < shortest:
                self._drop("malformed")
                continue
            dst, src = ethernet.macs(frame, vnet)
            sends = fwd.from_local(dst, src, now)
            if isinstance(sends, str):
                self._drop(sends)
                continue
            for hop, dst_peer in sends:
                link = by_peer.get(hop)
                if link is None:
                    self._drop("no route")
                    continue
                mtu = link.machine.mtu
                if mtu is not None and n - shortest > mtu and not self.fast.deciding(link.conn_id) \
                        and pmtu.too_big(tap, frame, vnet, mtu):
                    self._drop("too big")
                    continue
                if link.fast and dst & GROUP_BIT:
                    self._queue(link, (me, dst_peer, flags | ENTRY_RELAY_ONLY, frame))
                elif vnet and link.machine.lossy(now) and (
                        pieces := gsosplit.split(frame, LOSSY_UNIT_SEGS)) is not None:
                    for piece in pieces:  # a message each: a lost datagram costs one piece
                        self._queue(link, (me, dst_peer, flags, piece))
                        self._flush_link(link, now)
                    self._sent_unicast(link)
                else:
                    self._queue(link, (me, dst_peer, flags, frame))
                    if not dst & GROUP_BIT:
                        self._sent_unicast(link)
        self._flush(now)
        return more

    def _queue(self, link: Link, entry: tuple[int, int, int, Any]) -> None:
        size = sleeve.ENTRY_OVERHEAD + len(entry[3])
        limit = self._max_body[link.data_session().encrypted]
        if size > limit:
            self._drop("too big")
            return
        if not self._outbox.room(link.conn_id, size, limit):
            self._flush_link(link, self._now())
        if not self._outbox.add(link.conn_id, entry):
            link.counters.acks_thinned += 1
        link.counters.frames_out += 1
        link.counters.bytes_out += len(entry[3])

    def _flush(self, now: float) -> None:
        for conn_id in self._outbox.waiting():
            link = self.links.get(conn_id)
            if link is None:
                self._outbox.take(conn_id)
                continue
            self._flush_link(link, now)

    def _flush_link(self, link: Link, now: float) -> None:
        entries = self._outbox.take(link.conn_id)
        addr = link.machine.udp_addr
        if not entries or addr is None:
            return
        body = sleeve.encode_entries(entries)
        self._send(link, link.data_session().seal(Kind.DATA, body, now), addr)

    def _sent_unicast(self, link: Link) -> None:
        """A unicast frame left by ``link``: watch the silence after it (not a broadcast's)."""
        if link.machine.data_sent():
            self._rearm(link.machine)

    def _send(self, link: Link, datagram: bytes | bytearray, addr: Address) -> None:
        """One sealed message: a datagram if it fits the path, else our own fragments in
        one GSO send (see proto/sleeve_frag.py for why not IP fragmentation)."""
        udp = self._port(link.sock)
        if udp is None:
            self._drop("no such socket")
            return
        seg = (link.machine.pmtu or DEFAULT_PMTU) - ip_udp_overhead(addr)
        try:
            if len(datagram) <= seg or len(datagram) > sleeve_frag.max_message(seg):
                udp.sendto(datagram, addr)
                link.counters.datagrams_out += 1
            else:
                self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
                buf = sleeve_frag.fragment(datagram, seg, self._msg_id,  # a lossy path: parity
                                           parity=link.machine.lossy(self._now()))
                udp.send_segments(buf, seg, addr)
                link.counters.datagrams_out += -(-len(buf) // seg)
        except BlockingIOError:
            self._drop("send buffer full")
        except OSError as exc:
            self._drop("too big" if exc.errno == errno.EMSGSIZE else f"send error: {exc.strerror}")

    def _drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    # --- UDP -> TAP ---------------------------------------------------------------------

    def _drain_udp(self, udp: UdpPort, sock: int = 0) -> bool:
        now = self._now()
        view = self._rx_view
        rx = self._rx
        recv_into = udp.recv_into
        more = True
        for _ in range(DRAIN_BATCH):
            try:
                n, seg, addr = recv_into(rx)
            except BlockingIOError:
                more = False
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                self._drop(f"receive error: {exc.strerror}")
                continue
            if seg is None:
                self._receive(view[:n], addr, now, sock)
            else:  # GRO: consecutive datagrams of `seg` bytes
                reasm = self._reassembler
                bad = reasm.malformed
                for item in reasm.add_batch(addr, view[:n], seg, now):
                    self._datagram(item if isinstance(item, memoryview) else memoryview(item),
                                   addr, now, sock)
                if reasm.malformed != bad:
                    self._drop("malformed", reasm.malformed - bad)
        if self._reassembler.lost or self._reassembler.recovered:
            self._tell_loss(now)
        self._flush(now)
        return more

    def _tell_loss(self, now: float) -> None:
        """Messages whose fragments never all came, or came rebuilt from parity: their
        senders' links hear of it (and so keep sending small units with parity)."""
        lost, rebuilt = self._reassembler.take_lost(), self._reassembler.take_recovered()
        if lost:
            self._drop("incomplete message", sum(lost.values()))
        for link in self.links.values():
            if (addr := link.machine.udp_addr) in lost or addr in rebuilt:
                link.counters.messages_rebuilt += rebuilt.get(addr, 0)
                link.machine.note_loss(lost.get(addr, 0), now)
                self._service(link, now)

    def _receive(self, data: memoryview, addr: Address, now: float, sock: int = 0) -> None:
        if sleeve_frag.is_fragment(data):
            try:
                message = self._reassembler.add(addr, data, now)
            except RemoteProtocolError:
                self._drop("malformed")
                return
            if message is None:
                return
            data = memoryview(message)
        self._datagram(data, addr, now, sock)

    def _datagram(self, data: memoryview, addr: Address, now: float, sock: int = 0) -> None:
        if punchwire.is_punch(data):  # the daemon's business: authenticated there
            if len(self._punch_inbox) >= MAX_PUNCH_INBOX:
                self._drop("punch queue full")
            else:
                self._punch_inbox.append((bytes(data), addr, sock))
                self._notify()
            return
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
        if session.conn_uid != conn_uid:  # the next or old keys of a rekey
            other = link.rotation.session_for(conn_uid) if link.rotation is not None else None
            if other is None:
                self._drop("wrong connection")
                return
            session = other
        try:
            kind, body = session.open(data, now)
        except SleeveDrop as exc:
            self._drop(exc.reason)
            return
        except RemoteProtocolError:
            self._drop("malformed")
            return
        link.counters.datagrams_in += 1
        if kind is Kind.DATA:
            if link.machine.receive(kind, body, addr, now):
                self._service(link, now)  # it moved: any authenticated datagram says where
            try:
                self._on_data(link, body, now)
            except RemoteProtocolError:
                self._drop("malformed")
            return
        try:
            link.machine.receive(kind, body, addr, now)
        except RemoteProtocolError:
            self._drop("malformed")
        self._service(link, now)

    def _on_data(self, link: Link, body: bytes | memoryview, now: float) -> None:
        if not link.machine.up:
            self._drop("link not up")
            return
        fwd = self.forwarder
        tap = self.tap
        assert tap is not None
        vnet = tap.vnet_hdr
        # a plain body is a view into the receive buffer, which the next datagram reuses:
        # relays (sealed after the drain) keep a copy; a decrypted body is ours to keep
        borrowed = isinstance(body, memoryview) and body.obj is self._rx
        for src_peer, dst_peer, flags, frame in sleeve.decode_entries(body):
            off = ethernet.VNET_HDR_LEN if flags & ENTRY_VNET else 0
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
                        tap.writev((PLAIN_VNET_HDR, frame))
                    else:
                        tap.write(frame[off:])
                except OSError as exc:
                    self._drop(f"tap write error: {exc.strerror}")
            for hop, relay_dst in relays:
                out = self._by_peer.get(hop)
                if out is None:
                    self._drop("no route")
                    continue
                self._queue(out, (src_peer, relay_dst, flags, bytes(frame) if borrowed else frame))

    # --- report -----------------------------------------------------------------------------

    @locked
    def connection_report(self, address: str, outbound: bool) -> dict[str, Any] | None:
        return next((link.report(self._now()) for link in self.links.values()
                     if link.report_address == address and link.outbound == outbound), None)

    @locked
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
