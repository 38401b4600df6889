"""MeshNode: the whole control plane of one router, as a pure state machine.

Theory of operation. The router (or the simulator) owns sockets and clocks; the
MeshNode owns everything else: one ``Connection`` per TCP connection, our ``Topology``,
the ``Routes`` computed from it, the gossip channels and the ``ConnectionMaker``.

Three inputs, three outputs (aioquic's shape)::

    inputs                                   outputs
    ──────                                   ───────
    connection_made / data_received /        next_action(): Dial(address), Close(conn_id)
      connection_lost / dial_failed          pending_writes() + data_to_send(conn_id, now)
    handle_timer(now)                        get_timer()
    add_targets / forget_targets /           next_event(): PeerConnected / PeerDisconnected
      gossip_* (API calls)

Life of a connection::

    connection_made ──▶ handshake (Connection) ──HandshakeCompleted──▶ established
         │                     │ ConnectionFailed                        │ lost / failed
         ▼                     ▼                                         ▼
      (limit) Close        Close + retry target with backoff     record updated, GC, retry

When two connections join the same pair of peers (both dialled at once), both ends keep
the one with the lower connection UID (the same number at both ends) and close the other
as "duplicate connection". A connection to a newer incarnation of a peer (another UID), or
a second one the same peer dialled (it gave the first up: its NAT forgot the mapping, and
our end of it is half-open), replaces the old one at once.

Every change to our own connections bumps our topology record and floods it as a delta;
a new neighbour receives the complete state of every channel.

Passwords. A router holds 1..MAX_CANDIDATES passwords, preferred first (proto/handshake.py
says how two routers find the first common one). ``set_passwords`` replaces the list
(the router re-read its password file) and moves every established encrypted connection
over, make before break: each runs a new handshake inside itself (proto/connection.py)
with the new list; on success ``KeysAgreed`` (open datagrams with the new sleeve keys too)
then ``KeysSwitched`` (seal with them; the old ones go after an overlap) reach the data
plane, and gossip never stops. A run that finds no common password leaves the connection
on its old keys if their password is still in our list, and otherwise ends it as
PASSWORD_RETIRED. New connections use the new list at once; a peer that knows none of it
is refused with "wrong password", as always.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .admission import REFUSED_RATE, REFUSED_SOURCE, AcceptLimiter
from .connection import (
    Connection,
    ConnectionFailed,
    HandshakeCompleted,
    LocalIdentity,
    MessageReceived,
    PeerSwitchedKeys,
    RekeyCompleted,
    RekeyFailed,
    RemoteIdentity,
)
from .connmaker import ConnectionMaker, LiveConnections, TargetState, join_host_port, split_host
from .errors import LocalProtocolError, RemoteProtocolError
from .gossip import GossipData, Gossiper, SendQueue, UnicastChannel
from .handshake import DEFAULT_AEADS, validate_passwords

# re-exported: what a mesh node hands its host
from .mesh_events import Action as Action
from .mesh_events import Close as Close
from .mesh_events import Dial as Dial
from .mesh_events import KeysAgreed as KeysAgreed
from .mesh_events import KeysSwitched as KeysSwitched
from .mesh_events import MeshEvent as MeshEvent
from .mesh_events import PeerConnected as PeerConnected
from .mesh_events import PeerDisconnected as PeerDisconnected
from .messages import Gossip, GossipKind
from .peername import PeerName, format_peer_name
from .routes import Routes
from .topology import ConnectionInfo, PeerRecord, Topology
from .topology_gossip import CHANNEL as TOPOLOGY_CHANNEL
from .topology_gossip import Records, TopologyGossiper

PERMANENT_FAILURES = ("cannot connect to ourself",)
PASSWORD_RETIRED = "password retired"


MIN_FANOUT = 8  # up to this many neighbours, news goes to all of them


CONTROL_HEARTBEATS_PER_SECOND = 0.5  # a router's control heartbeats over working links
MAX_CONTROL_HEARTBEAT = 120.0  # never slower: NATs and firewalls forget idle TCP (AWS: 350 s)


@dataclass(frozen=True, slots=True)
class MeshConfig:
    name: PeerName
    nickname: str
    uid: int
    password: bytes | None = None
    # all the passwords accepted, preferred first (overrides ``password`` when given)
    passwords: tuple[bytes, ...] = field(default=(), repr=False)
    # what the report calls each of them (their lines in the password file); () = 1, 2...
    password_labels: tuple[int, ...] = ()
    port: int = 6783
    conn_limit: int = 200
    discovery: bool = True
    heartbeat_interval: float = 5.0
    timeout: float = 15.0
    # with a data plane (require_overlay), a connection whose overlay works (its link's own
    # heartbeats watch the peer) sends control heartbeats only this often, timing out after
    # three of them; None: never slower. See set_overlay.
    overlay_heartbeat_interval: float | None = None
    gossip_interval: float = 30.0
    initial_version: int = 1
    # with a data plane, a connection is only "established" once the data plane says its
    # overlay works both ways (set_overlay); until then it is "pending"
    require_overlay: bool = False
    # the sleeve ciphers we offer, preferred first (proto/handshake.py preferred_aeads)
    aeads: tuple[str, ...] = DEFAULT_AEADS


@dataclass(slots=True)
class _Conn:
    conn_id: int
    conn: Connection
    outbound: bool
    remote_address: str
    target: str | None
    started: float
    queue: SendQueue = field(default_factory=SendQueue)
    remote: RemoteIdentity | None = None
    conn_uid: int = 0
    overlay_ready: bool = False
    paced: bool = True  # control heartbeats may slow down while the overlay works
    overlay: str | None = None
    overlay_reason: str = ""
    mtu: int | None = None

    @property
    def ready(self) -> bool:
        return self.remote is not None and not self.conn.closed


@dataclass(slots=True)
class MeshStats:
    gossip_messages_sent: int = 0
    gossip_bytes_sent: int = 0
    gossip_messages_received: int = 0
    dropped_no_route: int = 0
    dropped_unknown_channel: int = 0
    handshake_failures: dict[str, int] = field(default_factory=dict)
    # --- inbound connections refused before authentication (proto/admission.py) ---
    accepts_refused_rate: int = 0        # the source's token bucket was empty
    accepts_refused_source: int = 0      # the source has too many connections in handshake
    accepts_refused_pending: int = 0     # too many connections in handshake altogether
    rekeys_completed: int = 0            # established connections moved to new keys
    rekeys_failed: int = 0               # rekey runs that found no common password


class MeshNode:
    def __init__(self, config: MeshConfig, *, now: float, random_bytes: Callable[[int], bytes],
                 rng: random.Random) -> None:
        self.config = config
        self.local = LocalIdentity(config.name, config.nickname, config.uid)
        self.passwords: tuple[bytes, ...] = config.passwords or (
            (config.password,) if config.password is not None else ())
        validate_passwords(self.passwords, allow_none=True)
        self.password_labels = self._labels(self.passwords, config.password_labels)
        self._random_bytes = random_bytes
        self._rng = rng
        self.topology = Topology(PeerRecord(config.name, config.nickname, config.uid,
                                            config.initial_version, ()))
        self.maker = ConnectionMaker(conn_limit=config.conn_limit, discovery=config.discovery,
                                     rng=rng)
        self.stats = MeshStats()
        self.admission = AcceptLimiter()  # inbound connections, before authentication
        self._conns: dict[int, _Conn] = {}
        self._actions: deque[Action] = deque()
        self._events: deque[MeshEvent] = deque()
        self._dirty: set[int] = set()
        self._final: dict[int, bytes] = {}  # last bytes (a Goodbye) of connections we closed
        self._channels: dict[str, Gossiper] = {}
        self._routes: Routes | None = None
        self._routes_generation = -1
        self._discovery_generation = -1
        self._next_gossip = now + config.gossip_interval * rng.uniform(0.5, 1.0)
        self.register_channel(TOPOLOGY_CHANNEL, TopologyGossiper(self.topology, self._topology_changed))

    # --- channels ---------------------------------------------------------------------

    def register_channel(self, name: str, gossiper: Gossiper) -> None:
        if name in self._channels:
            raise LocalProtocolError(f"gossip channel {name!r} registered twice")
        self._channels[name] = gossiper

    def gossip_news(self, channel: str, data: GossipData) -> None:
        """A local change on ``channel``: send it to every neighbour."""
        self._flood(channel, data, except_conn=None)

    def gossip_broadcast(self, channel: str, payload: bytes, now: float) -> None:
        for hop in self.routes.broadcast_next_hops(self.config.name):
            self._send_raw(hop, Gossip(channel, GossipKind.BROADCAST, self.config.name, 0, payload), now)

    def gossip_unicast(self, channel: str, dst: PeerName, payload: bytes, now: float) -> bool:
        hop = self.routes.unicast.get(dst)
        if hop is None:
            self.stats.dropped_no_route += 1
            return False
        return self._send_raw(hop, Gossip(channel, GossipKind.UNICAST, self.config.name, dst, payload), now)

    # --- API: targets -------------------------------------------------------------------

    def add_targets(self, addresses: Iterable[str], now: float, *, replace: bool = False) -> None:
        self.maker.add(addresses, replace=replace)
        self._dial_due(now)

    def forget_targets(self, addresses: Iterable[str]) -> None:
        self.maker.forget(addresses)

    # --- inputs ---------------------------------------------------------------------------

    # --- hostile input: admission before authentication (proto/admission.py) ----------

    def admit_inbound(self, remote_address: str, now: float) -> str | None:
        """Whether to take an inbound connection from ``remote_address`` at all (None) or
        drop it before reading a byte (the reason); ask before ``connection_made``."""
        source = split_host(remote_address)
        pending = from_source = 0
        for entry in self._conns.values():
            if entry.remote is None and not entry.outbound:
                pending += 1
                if split_host(entry.remote_address) == source:
                    from_source += 1
        reason = self.admission.admit(source, now, pending=pending, pending_from_source=from_source)
        if reason == REFUSED_RATE:
            self.stats.accepts_refused_rate += 1
        elif reason == REFUSED_SOURCE:
            self.stats.accepts_refused_source += 1
        elif reason is not None:
            self.stats.accepts_refused_pending += 1
        return reason

    def handshakes_pending(self) -> int:
        return sum(1 for e in self._conns.values() if e.remote is None)

    # --- end of admission ----------------------------------------------------------------

    def connection_made(self, conn_id: int, *, outbound: bool, remote_address: str,
                        target: str | None, now: float, paced: bool = True) -> None:
        """A new transport for a connection. ``paced=False``: its control heartbeats keep
        the usual pace whatever the overlay (a transport that relies on them to know the
        peer is there, as a punched path's stream does: proto/ustream.py)."""
        if conn_id in self._conns:
            raise LocalProtocolError(f"connection id {conn_id} in use")
        if not outbound and len(self._conns) >= self.config.conn_limit:
            self._actions.append(Close(conn_id, f"connection limit of {self.config.conn_limit} reached"))
            return
        conn = Connection(outbound=outbound, local=self.local, passwords=self.passwords,
                          now=now, random_bytes=self._random_bytes,
                          heartbeat_interval=self.config.heartbeat_interval,
                          timeout=self.config.timeout, aeads=self.config.aeads)
        self._conns[conn_id] = _Conn(conn_id, conn, outbound, remote_address, target, now,
                                     paced=paced)
        self._dirty.add(conn_id)

    def set_passwords(self, passwords: Iterable[bytes], now: float, *,
                      labels: Iterable[int] = ()) -> None:
        """Accept these passwords from now on, preferred first, and move every
        established encrypted connection over to the first common one (see the module
        docstring). ``labels`` name them in the report (their lines in the password
        file; default 1, 2, ...). Encryption itself cannot be turned on or off this way."""
        new = tuple(passwords)
        validate_passwords(new)
        if not self.passwords:
            raise LocalProtocolError("this router runs without encryption")
        self.password_labels = self._labels(new, tuple(labels))
        if new == self.passwords:
            return
        self.passwords = new
        for conn_id in sorted(self._conns):
            entry = self._conns[conn_id]
            if entry.ready and entry.conn.encrypted:
                entry.conn.rekey(new, now)
                self._process(entry, now)

    def dial_failed(self, address: str, reason: str, now: float) -> None:
        self.maker.attempt_failed(address, now, reason)

    def data_received(self, conn_id: int, data: bytes, now: float) -> None:
        entry = self._conns.get(conn_id)
        if entry is None:
            return
        entry.conn.receive_data(data, now)
        self._process(entry, now)
        if self._update_discovery():  # dial newly discovered peers now, not at the next tick
            self._dial_due(now)

    def connection_lost(self, conn_id: int, reason: str, now: float) -> None:
        self._final.pop(conn_id, None)
        entry = self._conns.get(conn_id)
        if entry is not None:
            self._drop(entry, reason, now, close=False)

    def shutdown(self, reason: str, now: float) -> None:
        """Close every connection, telling established peers why (the router is stopping)."""
        for entry in [self._conns[c] for c in sorted(self._conns)]:
            self._drop(entry, reason, now, close=True)

    def handle_timer(self, now: float) -> None:
        for entry in list(self._conns.values()):
            deadline = entry.conn.get_timer()
            if deadline is not None and deadline <= now:
                entry.conn.handle_timer(now)
                self._process(entry, now)
        if now >= self._next_gossip:
            self._periodic_gossip(now)
        self._update_discovery()
        self._dial_due(now)

    # --- outputs --------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def next_event(self) -> MeshEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def has_work(self) -> bool:
        """Actions, events or writes are waiting for the caller."""
        return bool(self._actions or self._events or self._dirty)

    def pending_writes(self) -> list[int]:
        dirty = sorted(self._dirty)
        self._dirty.clear()
        return dirty

    def data_to_send(self, conn_id: int, now: float) -> bytes:
        entry = self._conns.get(conn_id)
        if entry is None:
            return self._final.pop(conn_id, b"")
        if entry.ready and entry.queue:
            for channel, kind, data in entry.queue.take():
                payload = data.encode()
                entry.conn.send_message(Gossip(channel, GossipKind(kind), self.config.name, 0, payload), now)
                self.stats.gossip_messages_sent += 1
                self.stats.gossip_bytes_sent += len(payload)
        return entry.conn.data_to_send()

    def get_timer(self) -> float | None:
        times = [self._next_gossip]
        for entry in self._conns.values():
            t = entry.conn.get_timer()
            if t is not None:
                times.append(t)
        t = self.maker.get_timer()
        if t is not None:
            times.append(t)
        return min(times)

    # --- queries ----------------------------------------------------------------------------

    @property
    def routes(self) -> Routes:
        if self._routes is None or self._routes_generation != self.topology.generation:
            self._routes = Routes.compute(self.topology.peers, self.config.name)
            self._routes_generation = self.topology.generation
        return self._routes

    def _pace_control(self, entry: _Conn, ready: bool, now: float | None) -> None:
        """Idle cost: while the data link watches the peer (its heartbeats are answered, and
        take routes around a silent peer), the control connection only keeps middleboxes'
        state alive, so it goes quiet: ``overlay_heartbeat_interval``, timeout three of
        them, per connection; the link's heartbeats stay a constant rate per router
        (proto/link.py), and so does the sum of these (``CONTROL_HEARTBEATS_PER_SECOND``,
        up to ``MAX_CONTROL_HEARTBEAT`` per connection). When the link goes down, the usual
        pace at once, with a grace of half a timeout to hear from the peer (it answers a
        Heartbeat when silent: ``answer_after``), so a peer still on the slow pace is not
        taken for dead."""
        c = self.config
        slow = c.overlay_heartbeat_interval
        assert slow is not None
        conn = entry.conn
        conn.answer_after = c.heartbeat_interval / 2
        if ready:
            # the more connections, the slower each, so that the router's total stays put
            working = sum(1 for e in self._conns.values() if e.overlay_ready and e.ready)
            pace = min(MAX_CONTROL_HEARTBEAT, max(slow, working / CONTROL_HEARTBEATS_PER_SECOND))
            conn.set_timers(heartbeat_interval=pace, timeout=max(c.timeout, 3 * pace))
        else:
            conn.set_timers(heartbeat_interval=c.heartbeat_interval, timeout=c.timeout)
            if now is not None:
                conn.grace(now, c.timeout / 2)
                self._dirty.add(entry.conn_id)

    def connected_peers(self) -> dict[PeerName, int]:
        return {e.remote.name: e.conn_id for e in self._conns.values() if e.ready and e.remote}

    def set_overlay(self, conn_id: int, *, ready: bool, overlay: str | None, reason: str = "",
                    mtu: int | None = None, now: float | None = None) -> None:
        """The data plane's verdict on a connection: which overlay carries it, and whether
        it works both ways (only then is the connection established in the topology)."""
        entry = self._conns.get(conn_id)
        if entry is None:
            return
        changed = entry.overlay_ready != ready
        entry.overlay_ready, entry.overlay, entry.overlay_reason, entry.mtu = ready, overlay, reason, mtu
        if changed and entry.paced and self.config.overlay_heartbeat_interval is not None:
            self._pace_control(entry, ready, now)
        if changed and entry.ready:
            self._update_our_record()

    def _established(self, entry: _Conn) -> bool:
        return entry.ready and (entry.overlay_ready or not self.config.require_overlay)

    # --- internals: connections -----------------------------------------------------------

    def _process(self, entry: _Conn, now: float) -> None:
        while (event := entry.conn.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._handshake_completed(entry, event, now)
            elif isinstance(event, MessageReceived):
                if isinstance(event.message, Gossip) and entry.ready:
                    self._on_gossip(entry, event.message, now)
            elif isinstance(event, ConnectionFailed):
                self._drop(entry, event.reason, now, close=True)
                return
            elif isinstance(event, RekeyCompleted):
                self.stats.rekeys_completed += 1
                self._events.append(KeysAgreed(entry.conn_id, event.sleeve_uid, event.sleeve_keys))
            elif isinstance(event, PeerSwitchedKeys):
                self._events.append(KeysSwitched(entry.conn_id))
            elif isinstance(event, RekeyFailed):
                self.stats.rekeys_failed += 1
                if not entry.conn.rekeying and entry.conn.password not in self.passwords:
                    self._drop(entry, PASSWORD_RETIRED, now, close=True)
                    return
            if entry.conn_id not in self._conns:
                return
        self._dirty.add(entry.conn_id)  # a heartbeat, handshake reply or gossip may be waiting

    def _handshake_completed(self, entry: _Conn, event: HandshakeCompleted, now: float) -> None:
        remote = event.remote
        for other in list(self._conns.values()):
            if other is entry or other.remote is None or other.remote.name != remote.name:
                continue
            if other.remote.uid != remote.uid:
                self._drop(other, "peer restarted", now, close=True)
            elif not other.outbound and not entry.outbound:
                # it dialled us again: it gave the older one up (a NAT forgot the mapping)
                self._drop(other, "peer dialled again", now, close=True)
            elif other.conn_uid < event.conn_uid:
                self._drop(entry, "duplicate connection", now, close=True, duplicate_of=other)
                return
            else:
                self._drop(other, "duplicate connection", now, close=True, duplicate_of=entry)
        entry.remote, entry.conn_uid = remote, event.conn_uid
        if entry.target is not None:
            self.maker.connected(entry.target, remote.name, now)
        self._events.append(PeerConnected(entry.conn_id, remote, event.conn_uid, entry.outbound,
                                          entry.remote_address, event.encrypted, event.sleeve_keys,
                                          entry.target))
        self._update_our_record()
        for name in sorted(self._channels):
            full = self._channels[name].gossip()
            if full is not None:
                entry.queue.put(name, GossipKind.DELTA, full)
        if event.encrypted and entry.conn.passwords != self.passwords:
            # our list changed while this handshake ran: move it over as the others were
            entry.conn.rekey(self.passwords, now)
        self._dirty.add(entry.conn_id)

    def _drop(self, entry: _Conn, reason: str, now: float, *, close: bool,
              duplicate_of: _Conn | None = None) -> None:
        del self._conns[entry.conn_id]
        self._dirty.discard(entry.conn_id)
        if close:
            entry.conn.close(reason, now)
            final = entry.conn.data_to_send()
            if final:
                self._final[entry.conn_id] = final
            self._actions.append(Close(entry.conn_id, reason))
        if entry.remote is None and not entry.outbound:
            self._count_failure(reason)
        if entry.target is not None:
            if duplicate_of is not None and entry.remote is not None:
                # the pair is connected through the other connection: not a failure
                self.maker.connected(entry.target, entry.remote.name, now)
            else:
                if entry.remote is None:
                    self._count_failure(reason)
                permanent = any(reason.startswith(p) for p in PERMANENT_FAILURES)
                self.maker.attempt_failed(entry.target, now, reason, permanent=permanent)
        if entry.remote is not None:
            self._events.append(PeerDisconnected(entry.conn_id, entry.remote, reason))
            self._update_our_record()
            self.topology.gc()

    def _count_failure(self, reason: str) -> None:
        key = reason.split(":")[0]
        self.stats.handshake_failures[key] = self.stats.handshake_failures.get(key, 0) + 1

    def _update_our_record(self) -> None:
        infos = []
        for entry in self._conns.values():
            if entry.ready and entry.remote is not None:
                infos.append(ConnectionInfo(entry.remote.name, entry.remote_address,
                                            entry.outbound, self._established(entry)))
        infos.sort(key=lambda c: c.remote)
        record = self.topology.update_ourself(connections=infos)
        if record is not None:
            self._flood(TOPOLOGY_CHANNEL, Records((record,)), except_conn=None)

    def _topology_changed(self, delta: list[PeerRecord]) -> None:
        if any(r.name == self.config.name for r in delta):
            return  # our own record was bumped over a stale copy: it is in the delta already
        self.topology.gc()

    def _live(self) -> LiveConnections:
        entries = self._conns.values()
        return LiveConnections(
            targets=frozenset(e.target for e in entries if e.target is not None),
            inbound_ips=frozenset(split_host(e.remote_address) for e in entries if not e.outbound),
            peers=frozenset(self.connected_peers()), count=len(self._conns))

    def _dial_due(self, now: float) -> None:
        for address in self.maker.due(now, self._live()):
            self._actions.append(Dial(address))

    def _update_discovery(self) -> bool:
        """Refresh the discovered targets from the topology; True if it looked again."""
        if not self.config.discovery or self._discovery_generation == self.topology.generation:
            return False
        self._discovery_generation = self.topology.generation
        ours = self.config.name
        connected = set(self.connected_peers())
        found: dict[str, PeerName] = {}   # address -> the peer it leads to
        peers = self.topology.peers
        for name in sorted(peers):
            for info in peers[name].connections:
                if info.remote == ours or info.remote in connected:
                    continue
                if info.outbound:
                    found.setdefault(info.address, info.remote)
                else:  # it dialled in from an ephemeral port: assume it listens on ours
                    found.setdefault(join_host_port(split_host(info.address), self.config.port),
                                     info.remote)
        self.maker.set_discovered(found)
        return True

    # --- internals: gossip -------------------------------------------------------------------

    def _neighbours(self, except_conn: int | None) -> list[_Conn]:
        return [self._conns[c] for c in sorted(self._conns)
                if c != except_conn and self._conns[c].ready]

    def _flood(self, channel: str, data: GossipData, except_conn: int | None) -> None:
        """News goes to every neighbour of a sparsely connected peer (at most MIN_FANOUT),
        else to every sparsely connected neighbour (it may hear it from nobody else) plus a
        topology-sensitive subset of the others (Weave mesh's ``randomNeighbours``):
        the next hops towards log2(N)+1 random destinations, so a
        neighbour behind which many peers sit (a bottleneck link) is picked more often, and
        a neighbour that is the only way to some peers is picked whenever those are. Every
        peer forwarding news this way reaches all peers with high probability in O(log N)
        hops at O(N log N) messages per change, not O(links); the periodic digest
        exchange repairs what chance missed."""
        for entry in self._gossip_targets(except_conn):
            entry.queue.put(channel, GossipKind.DELTA, data)
            self._dirty.add(entry.conn_id)

    def _gossip_targets(self, except_conn: int | None) -> list[_Conn]:
        neighbours = self._neighbours(except_conn)
        peers = len(self.topology.peers)
        count = max(MIN_FANOUT, math.ceil(math.log2(peers)) + 1 if peers > 1 else 1)
        if len(neighbours) <= count:  # sparse meshes: every neighbour, deterministic
            return neighbours
        by_peer = {e.remote.name: e for e in neighbours if e.remote is not None}
        records = self.topology.peers
        chosen: dict[int, _Conn] = {}
        for name, entry in by_peer.items():
            rec = records.get(name)
            if rec is None or len(rec.connections) <= MIN_FANOUT:
                chosen[entry.conn_id] = entry  # a sparsely connected neighbour relies on us
        routes = self.routes.unicast
        destinations = [d for d in routes if routes[d] in by_peer]
        self._rng.shuffle(destinations)
        count += len(chosen)
        for dst in destinations:
            entry = by_peer[routes[dst]]
            chosen[entry.conn_id] = entry
            if len(chosen) >= count:
                break
        if len(chosen) < count:  # too few routed destinations (routes lag a new link)
            rest = [e for e in neighbours if e.conn_id not in chosen]
            for entry in self._rng.sample(rest, min(len(rest), count - len(chosen))):
                chosen[entry.conn_id] = entry
        return [chosen[c] for c in sorted(chosen)]

    def _send_raw(self, peer: PeerName, msg: Gossip, now: float) -> bool:
        conn_id = self.connected_peers().get(peer)
        if conn_id is None:
            self.stats.dropped_no_route += 1
            return False
        entry = self._conns[conn_id]
        entry.conn.send_message(msg, now)
        self.stats.gossip_messages_sent += 1
        self.stats.gossip_bytes_sent += len(msg.payload)
        self._dirty.add(conn_id)
        return True

    def _periodic_gossip(self, now: float) -> None:
        self._next_gossip = now + self.config.gossip_interval * self._rng.uniform(0.8, 1.2)
        neighbours = self._neighbours(None)
        if not neighbours:
            return
        k = min(len(neighbours), max(1, math.ceil(math.log2(len(neighbours) + 1))))
        chosen = self._rng.sample(neighbours, k)
        for name in sorted(self._channels):
            if isinstance(self._channels[name], UnicastChannel):
                continue  # no state to reconcile: a digest would be an empty message
            digest = self._channels[name].digest()
            for entry in chosen:
                entry.conn.send_message(Gossip(name, GossipKind.DIGEST, self.config.name, 0, digest), now)
                self.stats.gossip_messages_sent += 1
                self.stats.gossip_bytes_sent += len(digest)
                self._dirty.add(entry.conn_id)

    def _on_gossip(self, entry: _Conn, msg: Gossip, now: float) -> None:
        self.stats.gossip_messages_received += 1
        channel = self._channels.get(msg.channel)
        if channel is None:
            self.stats.dropped_unknown_channel += 1
            return
        try:
            if msg.kind in (GossipKind.DELTA, GossipKind.PERIODIC):
                data = channel.decode(msg.payload)
                delta = channel.on_gossip(data, now)
                if delta is not None:
                    self._flood(msg.channel, delta, except_conn=entry.conn_id)
                if msg.kind is GossipKind.PERIODIC and channel.digest() != channel.digest_of(data):
                    full = channel.gossip()
                    if full is not None:
                        entry.queue.put(msg.channel, GossipKind.DELTA, full)
                        self._dirty.add(entry.conn_id)
            elif msg.kind is GossipKind.DIGEST:
                if msg.payload != channel.digest():
                    full = channel.gossip()
                    if full is not None:
                        entry.queue.put(msg.channel, GossipKind.PERIODIC, full)
                        self._dirty.add(entry.conn_id)
            elif msg.kind is GossipKind.BROADCAST:
                if msg.src != self.config.name:
                    channel.on_gossip_broadcast(msg.src, msg.payload, now)
                    for hop in self.routes.broadcast_next_hops(msg.src):
                        if entry.remote is None or hop != entry.remote.name:
                            self._send_raw(hop, msg, now)
            elif msg.kind is GossipKind.UNICAST:
                if msg.dst == self.config.name:
                    channel.on_gossip_unicast(msg.src, msg.payload, now)
                else:
                    next_hop = self.routes.unicast.get(msg.dst)
                    if next_hop is None:
                        self.stats.dropped_no_route += 1
                    else:
                        self._send_raw(next_hop, msg, now)
        except RemoteProtocolError as exc:
            self._drop(entry, f"bad gossip on channel {msg.channel}: {exc.reason}", now, close=True)

    # --- report ---------------------------------------------------------------------------------

    def password_number(self, password: bytes | None) -> int | None:
        """Which of our passwords this is: its label, by default its place in the list
        (1 = preferred), the router's are lines of the password file (None: unencrypted,
        not established yet, or no longer in our list). Nothing secret."""
        if password is None or password not in self.passwords:
            return None
        return self.password_labels[self.passwords.index(password)]

    @staticmethod
    def _labels(passwords: tuple[bytes, ...], labels: tuple[int, ...]) -> tuple[int, ...]:
        if not labels:
            return tuple(range(1, len(passwords) + 1))
        if len(labels) != len(passwords):
            raise LocalProtocolError("one label per password")
        return labels

    def report(self, now: float) -> dict[str, Any]:
        peers = self.topology.peers

        def nick(name: PeerName) -> str:
            rec = peers.get(name)
            return rec.nickname if rec is not None else ""

        peer_list = []
        for name in sorted(peers):
            rec = peers[name]
            peer_list.append({
                "name": format_peer_name(name), "nickname": rec.nickname,
                "connections": [{"name": format_peer_name(c.remote), "nickname": nick(c.remote),
                                 "address": c.address, "outbound": c.outbound,
                                 "established": c.established} for c in rec.connections],
            })
        conns: list[dict[str, Any]] = []
        for conn_id in sorted(self._conns):
            entry = self._conns[conn_id]
            remote = entry.remote
            conns.append({
                "address": entry.target if entry.outbound and entry.target else entry.remote_address,
                "outbound": entry.outbound,
                "state": ("established" if self._established(entry)
                          else "pending" if entry.ready else "connecting"),
                "info": "" if self._established(entry) or not entry.ready
                        else entry.overlay_reason or "waiting for the data plane",
                "peer": None if remote is None else {"name": format_peer_name(remote.name),
                                                     "nickname": remote.nickname},
                "encrypted": entry.conn.encrypted,
                "overlay": entry.overlay, "overlay_reason": entry.overlay_reason, "mtu": entry.mtu,
                "password": self.password_number(entry.conn.password),
            })
        live = self._live()
        for target in self.maker.waiting(live):
            retry = ("never" if target.state is TargetState.FAILED
                     else f"in {max(0.0, target.next_try - now):.0f}s")
            conns.append({
                "address": target.address, "outbound": True, "state": target.state.value,
                "info": f"{target.last_error}; retry {retry}",
                "peer": None, "encrypted": bool(self.passwords),
                "overlay": None, "overlay_reason": "", "mtu": None, "password": None,
            })
        for target in self.maker.dialling(live):
            # discovered dials too: without them a dial that keeps timing out vanished from
            # status for the whole of each try and showed only between tries
            since = now - (target.dialled_at if target.dialled_at is not None else now)
            info = f"dialling for {max(0.0, since):.0f}s" + (
                f"; last try: {target.last_error}" if target.last_error else "")
            conns.append({"address": target.address, "outbound": True, "state": "connecting",
                          "info": info, "peer": None,
                          "encrypted": bool(self.passwords),
                          "overlay": None, "overlay_reason": "", "mtu": None,
                          "password": None})
        return {
            "name": format_peer_name(self.config.name),
            "nickname": self.config.nickname,
            "encryption": bool(self.passwords),
            "passwords": len(self.passwords),
            "peers": peer_list,
            "connections": conns,
            "targets": self.maker.direct_targets(),
            "stats": {**asdict(self.stats), "handshakes_pending": self.handshakes_pending(),
                      "admission_sources": self.admission.sources},
        }
