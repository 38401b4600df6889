"""The fast path's shell: drives proto/fastdp.py's FastLinks over the kernel's VXLAN.

Per sleeve link that is up and carries traffic in the clear, a ``FastLink`` decides from
probes whether the VXLAN works to that peer. The engine says which links qualify
(``follow``); this module does the I/O around them:

* the VXLAN devices and their forwarding entries (router/dataplane/vxlan.py, netlink in a
  worker thread: reprogramming takes milliseconds and the data path must not stall
  meanwhile): one device per underlay family, each peer's entries on the device of its
  address's family; without an IPv6 device (refused), IPv6 peers stay on sleeve and say why;
* probes: sent out of the VXLAN device, received on the bridge, answered with a ProbeAck
  on the control connection (gossip channel ``fastdp``, unicast);
* hellos: our bridge MAC and the MACs learnt on container ports, polled (a netlink dump
  through pyroute2, the largest part of an idle router's CPU at once a second) when the
  kernel says the bridge's FDB changed (``fdb_events_socket``), at most every
  ``MAC_POLL_GAP``, and every ``MAC_POLL_IDLE`` seconds besides (every ``MAC_POLL``
  without the events), sent to each direct peer when they change and every
  ``fastdp.hello_refresh(links)`` seconds. Until the peer shows it has our hello (a
  probe from it arrives: it learnt our bridge MAC from the hello) hellos go every
  ``HELLO_RETRY`` seconds, for at most ``HELLO_FAST_FOR``: while the mesh forms, a hello
  can find no route, or a relay without one. A peer's first hello is answered with ours at once.

Idle cost: the links' steady probe interval and hello refresh grow with the number of
links (proto/fastdp.py, "Idle cost"), so a router's idle probes, answers and hellos per
second stay the same whatever the size of the mesh; ``_pace`` hands the interval to the
FastLinks whenever a link comes or goes.

Nothing here writes the engine's state: ``carries(conn_id)`` is the fact the engine's
single writer of ``link.fast`` reads (the FastLink is fast *and* the peer's flood entry is
programmed), and ``take_moved`` names the links whose fact may have moved. Timers are the
engine's (``get_timer``/``handle_timer``); what finishes in a worker thread, and messages
for the mesh, are announced with ``wake`` (which only schedules the daemon's pump). Without
``--no-fastdp`` but with no VXLAN (device refused, port taken), the router runs on sleeve
alone and says why.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from weftnet.proto import fastdp
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.fastdp import FastLink, Hello, ProbeAck
from weftnet.proto.gossip import UnicastChannel
from weftnet.proto.mesh import MeshNode
from weftnet.proto.peername import PeerName, describe_peer
from weftnet.router.dataplane import vxlan
from weftnet.router.host import nlevents
from weftnet.router.host.netdev import VXLAN, VXLAN6, NetdevError

log = logging.getLogger("weft")

SYNC_RETRY = 0.5  # after netlink refused an entry
HELLO_RETRY = 1.0  # hello interval until the peer shows it has ours (or HELLO_FAST_FOR passed)
HELLO_FAST_FOR = 30.0
MAC_POLL = 1.0
MAC_POLL_IDLE = 60.0  # with FDB events: the poll only backs them up (a poll is ~45 ms of CPU)
MAC_POLL_GAP = 0.2    # between polls that events ask for

Tables = tuple[dict[str, str], set[str], set[str]]  # VXLAN entries, bridge entries, flood


@dataclass(slots=True)
class _Entry:
    """One link the fast path follows: what it needs of the engine's link, and its FastLink."""

    peer: PeerName
    nickname: str
    ip: str | None                 # the peer's underlay address (its sleeve address)
    fl: FastLink | None            # None: we do not offer the fast path (hello says why)
    hello_sent: float = -1e9
    refused: str = ""              # why not, when we could offer it to others but not here
    hello_routed: bool = False     # the mesh had a route for the last hello (else: retry soon)
    followed: float = 0.0          # when we started following the link
    heard: bool = False            # a probe came from the peer: it has our hello


def _noop() -> None:
    return None


def _kind(ip: str | None) -> tuple[bool, bool]:
    """(IPv6, scoped): what decides an address's VXLAN device and overhead."""
    return ip is not None and ":" in ip, ip is not None and "%" in ip


@dataclass(slots=True)
class FastPath:
    mesh: MeshNode
    enabled: bool
    disabled_reason: str
    port: int                      # the VXLAN's UDP port (sleeve port + 1)
    mtu: int
    wake: Callable[[], None] = _noop  # news for the pump (mesh messages, moved links)
    rng: random.Random = field(default_factory=lambda: random.Random())
    entries: dict[int, _Entry] = field(default_factory=dict)  # by conn_id
    hellos: dict[PeerName, Hello] = field(default_factory=dict)  # received, by peer
    local: frozenset[bytes] = frozenset()
    bridge_mac: bytes = bytes(6)
    fdb: vxlan.FdbState = field(default_factory=vxlan.FdbState)
    fdb_errors: list[str] = field(default_factory=list)
    probes_sent: int = 0
    probes_answered: int = 0
    moved: set[int] = field(default_factory=set)  # conn_ids whose carries() may have changed
    _want: Tables | None = None    # what the last sync was started for
    _syncing: bool = False
    _retry_at: float | None = None
    _polling: bool = False
    _last_poll: float = -1e9
    _next_poll: float = -1e9
    _fdb_events: socket.socket | None = None
    _tx: socket.socket | None = None
    _tx6: socket.socket | None = None
    _rx: socket.socket | None = None
    v6_reason: str = ""            # why there is no IPv6 VXLAN device ("" when there is)
    _nursery: trio.Nursery | None = None

    # --- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        if not self.enabled:
            return
        try:
            vxlan.ensure_vxlan(self.mtu, self.port)
            self.bridge_mac = fastdp.mac_bytes(vxlan.bridge_mac())
            self._tx, self._rx = vxlan.probe_sockets(fastdp.ETHERTYPE)
            try:
                self._fdb_events = vxlan.fdb_events_socket()
            except OSError as exc:
                log.debug("no FDB events (polling the bridge's MACs every %.0f s): %s",
                          MAC_POLL, exc)
        except (NetdevError, OSError) as exc:
            self.enabled = False
            self.disabled_reason = f"no kernel VXLAN here: {exc}"
            log.warning("fast path off: %s", self.disabled_reason)
            return
        try:
            vxlan.ensure_vxlan(self.mtu, self.port, ipv6=True)
            self._tx6 = vxlan.probe_sender(True)
        except (NetdevError, OSError) as exc:
            self.v6_reason = f"no kernel VXLAN over IPv6 here: {exc}"
            log.info("fast path: %s", self.v6_reason)
        log.info("fast path: kernel VXLAN %s%s on UDP port %d, MTU %d", VXLAN,
                 "" if self.v6_reason else f" and {VXLAN6} (IPv6)", self.port, self.mtu)

    def close(self) -> None:
        for sock in (self._tx, self._tx6, self._rx, self._fdb_events):
            if sock is not None:
                sock.close()
        if self.enabled:
            for v6 in (False, True):
                try:
                    vxlan.remove_vxlan(ipv6=v6)
                except NetdevError as exc:
                    log.warning("%s", exc)

    async def run(self) -> None:
        """The probe receiver, and the nursery of the netlink workers."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._rx is not None:
                nursery.start_soon(self._rx_loop, self._rx)
            if self._fdb_events is not None:
                nursery.start_soon(self._fdb_loop, self._fdb_events)
            await trio.sleep_forever()

    # --- what the engine tells us ---------------------------------------------------------

    def follow(self, conn_id: int, peer: PeerName, nickname: str, ip: str | None,
               eligible: bool, now: float) -> None:
        """The engine's link ``conn_id``: ``eligible`` while it is up and in the clear (then
        the fast path may carry it); ``ip`` is where its datagrams come from."""
        entry = self.entries.get(conn_id)
        if not eligible:
            self.forget(conn_id)
            return
        if entry is not None and entry.peer == peer:
            if entry.ip == ip:
                return
            if _kind(entry.ip) == _kind(ip):
                entry.ip = ip
                self.moved.add(conn_id)
                self._sync()
                return
            self.forget(conn_id)  # another family: another device, overhead, or none
        fl = None
        v6 = ip is not None and ":" in ip
        refused = ""
        if v6 and self.v6_reason:
            refused = self.v6_reason
        elif ip is not None and "%" in ip:  # a VXLAN device sends from one interface only
            refused = "no fast path over link-local IPv6 (reach the peer at a global address)"
        if self.enabled and not refused:
            fl = FastLink(self.mtu, now, lambda: self.rng.getrandbits(64),
                          overhead=fastdp.VXLAN6_OVERHEAD if v6 else fastdp.VXLAN_OVERHEAD)
            hello = self.hellos.get(peer)
            if hello is not None:
                fl.on_hello(hello, now)
        self.entries[conn_id] = entry = _Entry(peer, nickname, ip, fl, refused=refused,
                                               followed=now)
        self._pace()
        self._send_hello(entry, now)
        self._changed(conn_id, entry)
        self.moved.add(conn_id)
        self._sync()
        self.wake()

    def forget(self, conn_id: int) -> None:
        """Link ``conn_id`` is gone or no longer qualifies."""
        if self.entries.pop(conn_id, None) is not None:
            self._pace()
            self.moved.add(conn_id)
            self._sync()

    def _pace(self) -> None:
        """Spread this router's idle probing over its links (proto/fastdp.py, "Idle cost")."""
        steady = fastdp.steady_interval(len(self.entries))
        for entry in self.entries.values():
            if entry.fl is not None:
                entry.fl.steady = steady

    def carries(self, conn_id: int) -> bool:
        """The VXLAN carries this link's traffic: probes say it works, and the peer's flood
        entry is programmed."""
        entry = self.entries.get(conn_id)
        if entry is None or entry.fl is None or not entry.fl.fast:
            return False
        return self._flooded(entry)

    def deciding(self, conn_id: int) -> bool:
        """The fast path may take link ``conn_id`` over within seconds (its first verdict is
        pending). Meanwhile the engine carries frames too big for the sleeve's path MTU
        instead of answering "fragmentation needed": a container would keep that smaller
        MTU for 10 minutes (the kernel's PMTU cache), long after the VXLAN took over."""
        entry = self.entries.get(conn_id)
        return entry is not None and entry.fl is not None and entry.fl.deciding

    def _flooded(self, entry: _Entry) -> bool:
        """The peer's flood entry is programmed in the VXLAN device."""
        return entry.ip is not None and entry.ip in self.fdb.flood

    def take_moved(self) -> list[int]:
        moved = sorted(self.moved)
        self.moved.clear()
        return moved

    def why_not(self, conn_id: int, clear: bool) -> str:
        """Why link ``conn_id``'s traffic does not take the VXLAN (while it does not)."""
        if not self.enabled:
            return self.disabled_reason
        if not clear:
            return "the fast path carries only unencrypted traffic"
        entry = self.entries.get(conn_id)
        if entry is not None and entry.refused:
            return entry.refused
        fl = entry.fl if entry is not None else None
        return f"fast path not used: {fl.reason if fl is not None else 'waiting for the link'}"

    # --- messages from peers ----------------------------------------------------------

    def on_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        try:
            msg = fastdp.decode_message(payload)
        except RemoteProtocolError as exc:
            log.debug("from %x: %s", src, exc)
            return
        found = self._entry_of(src)
        if isinstance(msg, Hello):
            first = src not in self.hellos
            self.hellos[src] = msg
            if first and found is not None:
                self._send_hello(found[1], now)  # ours may have been lost: theirs came
            if found is not None and found[1].fl is not None:
                found[1].fl.on_hello(msg, now)
                self._changed(*found)
        elif found is not None and found[1].fl is not None and found[1].fl.on_ack(msg.probe_id):
            self.probes_answered += 1
            fl = found[1].fl
            fl.handle_timer(now)
            if not fl.changed:
                return  # the usual answer of a healthy link: nothing to program or schedule
            self._changed(*found)
        self._sync()
        self.wake()  # a hello may have made probes due

    def _entry_of(self, peer: PeerName) -> tuple[int, _Entry] | None:
        for conn_id, entry in self.entries.items():
            if entry.peer == peer:
                return conn_id, entry
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
                found = self._entry_of(sender)
                if found is not None:
                    found[1].heard = True
                    self.mesh.gossip_unicast(fastdp.CHANNEL, sender, ProbeAck(probe_id).encode(),
                                             trio.current_time())
                    self.wake()

    async def _fdb_loop(self, sock: socket.socket) -> None:
        """The bridge learnt or forgot a MAC: poll soon (a poll running now may have read
        before the change, so this also moves the next one forward)."""
        def changed() -> None:
            soon = max(trio.current_time(), self._last_poll + MAC_POLL_GAP)
            if soon < self._next_poll:
                self._next_poll = soon
                self.wake()

        await nlevents.watch(sock, changed, vxlan.bridge_fdb_changed)

    # --- timers -----------------------------------------------------------------------

    def _probes_ready(self, entry: _Entry) -> bool:
        """Probes can find the peer's bridge: its MAC is programmed in the VXLAN device."""
        fl = entry.fl
        return (fl is not None and fl.remote is not None
                and fastdp.mac_text(fl.remote.bridge_mac) in self.fdb.vxlan)

    def get_timer(self) -> float | None:
        times: list[float] = []
        if self.enabled and self._nursery is not None and not self._polling:
            times.append(self._next_poll)
        if self._retry_at is not None:
            times.append(self._retry_at)
        refresh = fastdp.hello_refresh(len(self.entries))
        for entry in self.entries.values():
            times.append(entry.hello_sent + self._hello_interval(entry, refresh))
            fl = entry.fl
            if fl is None:
                continue
            if self._probes_ready(entry) or fl.remote is None:
                t = fl.get_timer()
            else:  # rounds wait for the bridge MAC's entry: the sync's end wakes us
                t = min((r.sent + fastdp.PROBE_TIMEOUT for r in fl.rounds), default=None)
            if t is not None:
                times.append(t)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        if (self.enabled and self._nursery is not None and not self._polling
                and now >= self._next_poll):  # get_timer's sums, exactly
            self._last_poll = now
            self._next_poll = now + (MAC_POLL_IDLE if self._fdb_events is not None else MAC_POLL)
            self._polling = True
            self._nursery.start_soon(self._poll_macs)
        sent = False
        refresh = fastdp.hello_refresh(len(self.entries))
        for conn_id, entry in self.entries.items():
            if now >= entry.hello_sent + self._hello_interval(entry, refresh):
                self._send_hello(entry, now)
                sent = True
            fl = entry.fl
            if fl is None:
                continue
            fl.handle_timer(now)
            if self._probes_ready(entry):
                for probe in fl.probes_due(now):
                    self._send_probe(entry, probe)
            self._changed(conn_id, entry)
        if sent:
            self.wake()
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
        self._sync()

    def _hello_interval(self, entry: _Entry, refresh: float) -> float:
        """Seconds from the last hello to the next (a function of the entry and the hellos
        we have, so that get_timer and handle_timer compute the same sum): HELLO_RETRY for
        at most HELLO_FAST_FOR while the peer has not shown that it has ours (no probe from
        it yet) or, when we refuse it the fast path, until its hello came; and when the mesh
        had no route for the last."""
        fl = entry.fl
        offered = fl is not None and not entry.heard and (fl.remote is None or fl.remote.enabled)
        refusing = fl is None and entry.peer not in self.hellos  # it must hear why, once
        waiting = entry.hello_sent < entry.followed + HELLO_FAST_FOR and (offered or refusing)
        return HELLO_RETRY if waiting or not entry.hello_routed else refresh

    def _send_hello(self, entry: _Entry, now: float) -> None:
        entry.hello_sent = now
        hello = Hello(entry.fl is not None, self.bridge_mac, self.local,
                      self.disabled_reason or entry.refused)
        entry.hello_routed = self.mesh.gossip_unicast(fastdp.CHANNEL, entry.peer, hello.encode(),
                                                      now)

    def _send_probe(self, entry: _Entry, probe: fastdp.Probe) -> None:
        tx = self._tx6 if entry.ip is not None and ":" in entry.ip else self._tx
        assert entry.fl is not None and entry.fl.remote is not None and tx is not None
        frame = fastdp.encode_probe(entry.fl.remote.bridge_mac, self.bridge_mac,
                                    self.mesh.config.name, probe.probe_id, probe.size)
        try:
            tx.send(frame)
            self.probes_sent += 1
        except OSError as exc:
            why = ("the VXLAN device's MTU is smaller than the probe" if exc.errno == errno.EMSGSIZE
                   else exc.strerror or str(exc))
            entry.fl.send_failed(probe.probe_id, why)

    def _changed(self, conn_id: int, entry: _Entry) -> None:
        """Log when the FastLink moved, and name the link for the engine."""
        fl = entry.fl
        if fl is None or not fl.changed:
            return
        fl.changed = False
        who = describe_peer(entry.peer, entry.nickname)
        if fl.fast:
            log.info("%s: fast path works (VXLAN probes answered)", who)
        else:
            log.log(logging.WARNING if self._flooded(entry) else logging.INFO, "%s: %s", who,
                    fl.reason)
        self.moved.add(conn_id)

    # --- netlink, in a worker thread ----------------------------------------------------

    async def _poll_macs(self) -> None:
        try:
            macs = await trio.to_thread.run_sync(vxlan.local_macs)
        except (NetdevError, OSError) as exc:
            log.debug("cannot list the bridge's MACs: %s", exc)
            return
        finally:
            self._polling = False
            self.wake()  # the next poll's timer
        local = frozenset(fastdp.mac_bytes(m) for m in macs)
        if local != self.local:
            self.local = local
            now = trio.current_time()
            for entry in self.entries.values():
                self._send_hello(entry, now)

    def _desired(self) -> Tables:
        rows = []
        for entry in self.entries.values():
            if entry.fl is None or entry.ip is None:
                continue
            rows.append((entry.ip, entry.fl.remote, entry.fl.fast))
        return fastdp.desired_fdb(rows)

    def _sync(self) -> None:
        if not self.enabled or self._nursery is None or self._syncing:
            return
        want = self._desired()
        if want == self._want:
            return
        self._want = want
        self._syncing = True
        self._nursery.start_soon(self._run_sync, want)

    async def _run_sync(self, want: Tables) -> None:
        # the worker updates a copy: report() and the timers read self.fdb meanwhile
        fdb = self.fdb.copy()
        try:
            errors = await trio.to_thread.run_sync(vxlan.sync_fdb, fdb, *want)
        except (NetdevError, OSError) as exc:
            errors = [str(exc)]
        finally:
            self.fdb = fdb  # what was programmed, also when it stopped half-way
            self._syncing = False
        now = trio.current_time()
        if errors:
            self._want = None
            self._retry_at = now + SYNC_RETRY
            if errors != self.fdb_errors:
                log.warning("fast path: cannot program %d forwarding entries: %s", len(errors), errors[0])
        self.fdb_errors = errors
        self.moved.update(self.entries)  # flood entries decide whether links are fast
        if not errors:
            self._sync()  # what changed while the worker ran
        self.wake()

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
            "device6": VXLAN6 if self.enabled and not self.v6_reason else None,
            "udp_port": self.port,
            "mtu": self.mtu,
            "local_macs": len(self.local),
            "forwarding_entries": len(self.fdb.vxlan),
            "flood_to": sorted(self.fdb.flood),
            "probes_sent": self.probes_sent,
            "probes_answered": self.probes_answered,
            "errors": list(self.fdb_errors),
        }


def fastdp_channel(fast: FastPath) -> UnicastChannel:
    """The ``fastdp`` channel: unicast only (hellos and probe answers to direct peers)."""
    return UnicastChannel(fastdp.CHANNEL, fast.on_unicast)
