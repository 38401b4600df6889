"""The fast path's shell: drives proto/fastdp.py's FastLinks over the kernel's VXLAN.

Per sleeve link that is up and carries traffic in the clear, a ``FastLink`` decides from
probes whether the VXLAN works to that peer. This module does the I/O around it:

* the VXLAN device and its forwarding entries (router/dataplane/vxlan.py, netlink in a worker
  thread: reprogramming takes milliseconds and the data path must not stall meanwhile);
* probes: sent out of the VXLAN device, received on the bridge, answered with a ProbeAck
  on the control connection (gossip channel ``fastdp``, unicast);
* hellos: our bridge MAC and the MACs learnt on container ports, polled every
  ``MAC_POLL`` seconds, sent to each direct peer when they change and every
  ``HELLO_REFRESH`` seconds.

A link's ``fast`` flag (what the data plane acts on) is raised only once the peer's flood
entry is programmed, and dropped at once when the FastLink falls; the data plane then
marks broadcasts it sends over sleeve to a fast peer "relay only" (the VXLAN delivered
them already). Without ``--no-fastdp`` but with no VXLAN (device refused, port taken),
the router runs on sleeve alone and says why.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from weftnet.proto import fastdp
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.fastdp import FastLink, Hello, ProbeAck
from weftnet.proto.gossip import GossipData
from weftnet.proto.mesh import MeshNode
from weftnet.proto.peername import PeerName, describe_peer
from weftnet.router.dataplane import vxlan
from weftnet.router.host.netdev import VXLAN, NetdevError

if TYPE_CHECKING:
    from weftnet.router.dataplane.engine import Link

log = logging.getLogger("weft")

TICK = 0.5
MAC_POLL = 1.0

Tables = tuple[dict[str, str], set[str], set[str]]  # VXLAN entries, bridge entries, flood


@dataclass(slots=True)
class _Entry:
    link: Link
    fl: FastLink | None            # None: we do not offer the fast path (hello says why)
    hello_sent: float = -1e9


@dataclass(slots=True)
class FastPath:
    mesh: MeshNode
    enabled: bool
    disabled_reason: str
    port: int                      # the VXLAN's UDP port (sleeve port + 1)
    mtu: int
    links: Callable[[], list[Link]]
    publish: Callable[[Link], None]  # the link's overlay or reason changed
    pump: Callable[[], None]         # messages are waiting in the mesh
    rng: random.Random = field(default_factory=lambda: random.Random())
    entries: dict[int, _Entry] = field(default_factory=dict)
    hellos: dict[PeerName, Hello] = field(default_factory=dict)  # received, by peer
    local: frozenset[bytes] = frozenset()
    bridge_mac: bytes = bytes(6)
    fdb: vxlan.FdbState = field(default_factory=vxlan.FdbState)
    fdb_errors: list[str] = field(default_factory=list)
    probes_sent: int = 0
    probes_answered: int = 0
    _want: Tables | None = None    # what the last sync was started for
    _syncing: bool = False
    _last_poll: float = -1e9
    _tx: socket.socket | None = None
    _rx: socket.socket | None = None
    _nursery: trio.Nursery | None = None

    # --- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        if not self.enabled:
            return
        try:
            vxlan.ensure_vxlan(self.mtu, self.port)
            self.bridge_mac = fastdp.mac_bytes(vxlan.bridge_mac())
            self._tx, self._rx = vxlan.probe_sockets(fastdp.ETHERTYPE)
        except (NetdevError, OSError) as exc:
            self.enabled = False
            self.disabled_reason = f"no kernel VXLAN here: {exc}"
            log.warning("fast path off: %s", self.disabled_reason)
            return
        log.info("fast path: kernel VXLAN %s on UDP port %d, MTU %d", VXLAN, self.port, self.mtu)

    def close(self) -> None:
        for sock in (self._tx, self._rx):
            if sock is not None:
                sock.close()
        if self.enabled:
            try:
                vxlan.remove_vxlan()
            except NetdevError as exc:
                log.warning("%s", exc)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._rx is not None:
                nursery.start_soon(self._rx_loop, self._rx)
            while True:
                self.tick(trio.current_time())
                await trio.sleep(TICK)

    # --- messages from peers ----------------------------------------------------------

    def on_unicast(self, src: PeerName, payload: bytes) -> None:
        try:
            msg = fastdp.decode_message(payload)
        except RemoteProtocolError as exc:
            log.debug("from %x: %s", src, exc)
            return
        now = trio.current_time()
        entry = self._entry_of(src)
        if isinstance(msg, Hello):
            self.hellos[src] = msg
            if entry is not None and entry.fl is not None:
                entry.fl.on_hello(msg, now)
                self._changed(entry)
        elif entry is not None and entry.fl is not None and entry.fl.on_ack(msg.probe_id):
            self.probes_answered += 1
            entry.fl.handle_timer(now)
            self._changed(entry)

    def _entry_of(self, peer: PeerName) -> _Entry | None:
        for entry in self.entries.values():
            if entry.link.peer == peer:
                return entry
        return None

    async def _rx_loop(self, sock: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    frame = sock.recv(256)
                except OSError:  # drained (EAGAIN), or an error the socket reported once
                    break
                try:
                    sender, probe_id = fastdp.decode_probe(frame)
                except RemoteProtocolError:
                    continue
                if self._entry_of(sender) is not None:
                    self.mesh.gossip_unicast(fastdp.CHANNEL, sender, ProbeAck(probe_id).encode(),
                                             trio.current_time())
                    self.pump()

    # --- the periodic work ------------------------------------------------------------

    def tick(self, now: float) -> None:
        self._follow_links(now)
        if self.enabled and now - self._last_poll >= MAC_POLL and self._nursery is not None:
            self._last_poll = now
            self._nursery.start_soon(self._poll_macs)
        sent = False
        for entry in self.entries.values():
            if now - entry.hello_sent >= fastdp.HELLO_REFRESH:
                self._send_hello(entry, now)
                sent = True
            fl = entry.fl
            if fl is None:
                continue
            fl.handle_timer(now)
            if fl.remote is not None and fastdp.mac_text(fl.remote.bridge_mac) in self.fdb.vxlan:
                for probe in fl.probes_due(now):  # once probes can find the peer's bridge
                    self._send_probe(entry, probe)
            self._changed(entry)
        if sent:
            self.pump()
        self._sync(now)

    def _follow_links(self, now: float) -> None:
        current = {link.conn_id: link for link in self.links() if link.up and link.clear}
        for conn_id in [c for c in self.entries if c not in current]:
            entry = self.entries.pop(conn_id)
            if entry.link.fast:
                entry.link.fast = False
                self.publish(entry.link)
        for conn_id, link in current.items():
            old = self.entries.get(conn_id)
            if old is not None and old.link is link:
                continue
            fl = None
            if self.enabled:
                fl = FastLink(self.mtu, now, lambda: self.rng.getrandbits(64))
                hello = self.hellos.get(link.peer)
                if hello is not None:
                    fl.on_hello(hello, now)
            self.entries[conn_id] = entry = _Entry(link, fl)
            self._send_hello(entry, now)
            self._changed(entry)
            self.pump()

    def _send_hello(self, entry: _Entry, now: float) -> None:
        entry.hello_sent = now
        hello = Hello(self.enabled, self.bridge_mac, self.local, self.disabled_reason)
        self.mesh.gossip_unicast(fastdp.CHANNEL, entry.link.peer, hello.encode(), now)

    def _send_probe(self, entry: _Entry, probe: fastdp.Probe) -> None:
        assert entry.fl is not None and entry.fl.remote is not None and self._tx is not None
        frame = fastdp.encode_probe(entry.fl.remote.bridge_mac, self.bridge_mac,
                                    self.mesh.config.name, probe.probe_id, probe.size)
        try:
            self._tx.send(frame)
            self.probes_sent += 1
        except OSError as exc:
            why = ("the VXLAN device's MTU is smaller than the probe" if exc.errno == errno.EMSGSIZE
                   else exc.strerror or str(exc))
            entry.fl.send_failed(probe.probe_id, why)

    def _changed(self, entry: _Entry) -> None:
        """Tell the data plane when the FastLink moved; the fast flag itself follows the
        programmed flood entries (see _sync), except that a fall takes effect at once."""
        fl = entry.fl
        if fl is None or not fl.changed:
            return
        fl.changed = False
        link = entry.link
        if fl.fast:
            log.info("%s: fast path works (VXLAN probes answered)", describe_peer(link.peer, link.nickname))
        else:
            log.log(logging.WARNING if link.fast else logging.INFO, "%s: %s",
                    describe_peer(link.peer, link.nickname), fl.reason)
            link.fast = False
        self.publish(link)

    def why_not(self, link: Link) -> str:
        """Why ``link``'s traffic does not take the VXLAN (while it does not)."""
        if not self.enabled:
            return self.disabled_reason
        if not link.clear:
            return "the fast path carries only unencrypted traffic"
        entry = self.entries.get(link.conn_id)
        fl = entry.fl if entry is not None else None
        return f"fast path not used: {fl.reason if fl is not None else 'waiting for the link'}"

    # --- netlink, in a worker thread ----------------------------------------------------

    async def _poll_macs(self) -> None:
        try:
            macs = await trio.to_thread.run_sync(vxlan.local_macs)
        except (NetdevError, OSError) as exc:
            log.debug("cannot list the bridge's MACs: %s", exc)
            return
        local = frozenset(fastdp.mac_bytes(m) for m in macs)
        if local != self.local:
            self.local = local
            now = trio.current_time()
            for entry in self.entries.values():
                self._send_hello(entry, now)
            self.pump()

    def _desired(self) -> Tables:
        rows = []
        for entry in self.entries.values():
            link, fl = entry.link, entry.fl
            if fl is None or link.udp_addr is None:
                continue
            rows.append((link.udp_addr[0], fl.remote, fl.fast))
        return fastdp.desired_fdb(rows)

    def _sync(self, now: float) -> None:
        if not self.enabled or self._nursery is None:
            return
        want = self._desired()
        if want == self._want or self._syncing:
            return
        self._want = want
        self._syncing = True
        self._nursery.start_soon(self._run_sync, want)

    async def _run_sync(self, want: Tables) -> None:
        # the worker updates a copy: report() and tick() read self.fdb meanwhile
        fdb = self.fdb.copy()
        try:
            errors = await trio.to_thread.run_sync(vxlan.sync_fdb, fdb, *want)
        except (NetdevError, OSError) as exc:
            errors = [str(exc)]
        finally:
            self.fdb = fdb  # what was programmed, also when it stopped half-way
            self._syncing = False
        if errors:
            self._want = None  # retry at the next tick
            if errors != self.fdb_errors:
                log.warning("fast path: cannot program %d forwarding entries: %s", len(errors), errors[0])
        self.fdb_errors = errors
        for entry in self.entries.values():
            link, fl = entry.link, entry.fl
            fast = (fl is not None and fl.fast and link.udp_addr is not None
                    and link.udp_addr[0] in self.fdb.flood)
            if fast != link.fast:
                link.fast = fast
                self.publish(link)

    # --- report -----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        stats = None
        if self.enabled:
            try:
                stats = vxlan.device_stats()
            except (NetdevError, OSError):
                stats = None
        s = stats or {}
        return {
            "counters": {"packets_in": s.get("rx_packets", 0), "bytes_in": s.get("rx_bytes", 0),
                         "packets_out": s.get("tx_packets", 0), "bytes_out": s.get("tx_bytes", 0)},
            "drops": {"kernel rx dropped": s.get("rx_dropped", 0) + s.get("rx_errors", 0),
                      "kernel tx dropped": s.get("tx_dropped", 0) + s.get("tx_errors", 0)},
            "enabled": self.enabled,
            "reason": self.disabled_reason,
            "device": VXLAN if self.enabled else None,
            "udp_port": self.port,
            "mtu": self.mtu,
            "local_macs": len(self.local),
            "forwarding_entries": len(self.fdb.vxlan),
            "flood_to": sorted(self.fdb.flood),
            "probes_sent": self.probes_sent,
            "probes_answered": self.probes_answered,
            "errors": list(self.fdb_errors),
        }


class FastdpGossiper:
    """The ``fastdp`` channel: unicast only (hellos and probe answers to direct peers)."""

    def __init__(self, fast: FastPath) -> None:
        self.fast = fast

    def decode(self, payload: bytes) -> GossipData:
        raise RemoteProtocolError("the fastdp channel carries no gossip")

    def on_gossip(self, data: GossipData, now: float) -> GossipData | None:
        return None

    def gossip(self) -> GossipData | None:
        return None

    def digest(self) -> bytes:
        return b""

    def digest_of(self, data: GossipData) -> bytes:
        return b""

    def on_gossip_broadcast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None

    def on_gossip_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        self.fast.on_unicast(src, payload)
