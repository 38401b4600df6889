"""MeshNode end to end over an in-memory network with zero latency, in virtual time.

``MiniNet`` is the smallest driver of the MeshNode contract: it carries out every
action at once, carries every byte in order within one ``pump``, keeps every event per
host, and can drop bytes in flight. It differs from ``tests/sim/simnet`` in what it
keeps (events, both ends of each link) rather than in what it models: timing here is
all-or-nothing, so a test decides exactly what has happened before each assertion.

Every test is seeded (the seed is in the test id or the assertion message).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.pairs import connection
from weftnet.proto.connection import (
    Connection,
    ConnectionFailed,
    HandshakeCompleted,
    LocalIdentity,
    drain_events,
)
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.framing import pack, unpack
from weftnet.proto.gossip import GossipData, UnicastChannel
from weftnet.proto.mesh import (
    Close,
    Dial,
    MeshConfig,
    MeshEvent,
    MeshNode,
    PeerConnected,
    PeerDisconnected,
)
from weftnet.proto.messages import Gossip, GossipKind
from weftnet.proto.peername import PeerName
from weftnet.proto.topology_gossip import CHANNEL as TOPOLOGY
from weftnet.proto.topology_gossip import Records

NAME_BASE = 0x02 << 40
TEST = "test"


# --- a small gossip channel: a grow-only set of byte strings --------------------------------


@dataclass(frozen=True, slots=True)
class Items:
    items: frozenset[bytes]

    def encode(self) -> bytes:
        return pack(sorted(self.items))

    def merge(self, other: GossipData) -> GossipData:
        assert isinstance(other, Items)
        return Items(self.items | other.items)


def _digest(items: Iterable[bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for item in sorted(items):
        h.update(len(item).to_bytes(4, "big") + item)
    return h.digest()


class SetChannel:
    """The smallest CRDT that exercises every gossip path; records what reached it."""

    def __init__(self) -> None:
        self.items: set[bytes] = set()
        self.broadcasts: list[tuple[PeerName, bytes]] = []
        self.unicasts: list[tuple[PeerName, bytes]] = []
        self.times: list[tuple[str, float]] = []   # (call, the now it was given)

    def add(self, item: bytes) -> Items:
        self.items.add(item)
        return Items(frozenset({item}))

    def decode(self, payload: bytes) -> GossipData:
        obj = unpack(payload)
        if not isinstance(obj, list) or not all(isinstance(i, bytes) for i in obj):
            raise RemoteProtocolError("malformed set")
        return Items(frozenset(obj))

    def on_gossip(self, data: GossipData, now: float) -> GossipData | None:
        assert isinstance(data, Items)
        self.times.append(("gossip", now))
        new = data.items - self.items
        if not new:
            return None
        self.items |= new
        return Items(frozenset(new))

    def gossip(self) -> GossipData | None:
        return Items(frozenset(self.items))

    def digest(self) -> bytes:
        return _digest(self.items)

    def digest_of(self, data: GossipData) -> bytes:
        assert isinstance(data, Items)
        return _digest(data.items)

    def on_gossip_broadcast(self, src: PeerName, payload: bytes, now: float) -> None:
        self.broadcasts.append((src, payload))
        self.times.append(("broadcast", now))

    def on_gossip_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        self.unicasts.append((src, payload))
        self.times.append(("unicast", now))


# --- the in-memory network --------------------------------------------------------------------


@dataclass(eq=False)
class Host:
    index: int
    address: str
    mesh: MeshNode
    events: list[MeshEvent] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)
    up: bool = True

    @property
    def name(self) -> PeerName:
        return self.mesh.config.name

    def channel(self) -> SetChannel:
        channel = SetChannel()
        self.mesh.register_channel(TEST, channel)
        return channel

    def connected(self) -> list[PeerConnected]:
        return [e for e in self.events if isinstance(e, PeerConnected)]

    def disconnected(self) -> list[PeerDisconnected]:
        return [e for e in self.events if isinstance(e, PeerDisconnected)]


End = tuple[Host, int]


class MiniNet:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.hosts: dict[str, Host] = {}
        self.ends: dict[End, End] = {}
        self.drop: Callable[[Host, Host, bytes], bool] | None = None
        self.dropped = 0
        self._next_id = 1
        self._dials: list[tuple[Host, str]] = []

    def add(self, index: int, *, targets: Iterable[str] = (), uid: int | None = None,
            channel: bool = False, **config: Any) -> Host:
        """A router at 10.0.0.<index>; the same index again is a restart (same name)."""
        cfg = MeshConfig(name=NAME_BASE | index, nickname=f"n{index}",
                         uid=uid if uid is not None else self.rng.getrandbits(64) or 1, **config)
        mesh = MeshNode(cfg, now=self.now, random_bytes=self.rng.randbytes,
                        rng=random.Random(self.rng.getrandbits(64)))
        host = Host(index, f"10.0.0.{index}:6783", mesh)
        self.hosts[host.address] = host
        if channel:
            host.channel()
        mesh.add_targets(list(targets), self.now)
        return host

    def live(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.up]

    # --- moving things ------------------------------------------------------------------------

    def pump(self) -> None:
        """Carry out actions, connect dials and carry bytes until nothing moves."""
        for _ in range(10_000):
            moved = False
            for host in self.live():
                moved |= self._drain(host)
            while self._dials:
                moved = True
                self._connect(*self._dials.pop(0))
            for host in self.live():
                for conn_id in host.mesh.pending_writes():
                    data = host.mesh.data_to_send(conn_id, self.now)
                    if data:
                        moved = True
                        self._carry((host, conn_id), data)
            if not moved:
                return
        raise AssertionError(f"seed {self.seed}: the pump never settled")

    def advance(self, seconds: float) -> None:
        """Run timers (and pump after each) until ``seconds`` of virtual time have passed."""
        end = self.now + seconds
        stuck = 0
        while True:
            self.pump()
            timers = [t for h in self.live() if (t := h.mesh.get_timer()) is not None]
            if not timers or min(timers) > end:
                break
            t = min(timers)
            stuck = stuck + 1 if t <= self.now else 0
            if stuck > 100:
                raise AssertionError(f"seed {self.seed}: a timer stays due at {self.now}: it spins")
            self.now = max(self.now, t)
            for host in self.live():
                timer = host.mesh.get_timer()
                if timer is not None and timer <= self.now:
                    host.mesh.handle_timer(self.now)
        self.now = end

    def vanish(self, host: Host) -> None:
        """The host is gone without a word: its peers see nothing until they time out."""
        host.up = False

    def _drain(self, host: Host) -> bool:
        moved = False
        while (action := host.mesh.next_action()) is not None:
            moved = True
            if isinstance(action, Dial):
                self._dials.append((host, action.address))
            else:
                host.closes.append(action)
                self._close((host, action.conn_id), action.reason)
        while (event := host.mesh.next_event()) is not None:
            host.events.append(event)
        return moved

    def _connect(self, src: Host, address: str) -> None:
        dst = self.hosts.get(address)
        if dst is None or not dst.up:
            src.mesh.dial_failed(address, "connection refused", self.now)
            return
        a, b = self._next_id, self._next_id + 1
        self._next_id += 2
        self.ends[(src, a)], self.ends[(dst, b)] = (dst, b), (src, a)
        ip = src.address.rsplit(":", 1)[0]
        src.mesh.connection_made(a, outbound=True, remote_address=address, target=address,
                                 now=self.now)
        dst.mesh.connection_made(b, outbound=False, remote_address=f"{ip}:{40000 + a}",
                                 target=None, now=self.now)

    def _carry(self, src: End, data: bytes) -> None:
        dst = self.ends.get(src)
        if dst is None or not dst[0].up:
            return
        if self.drop is not None and self.drop(src[0], dst[0], data):
            self.dropped += 1
            return
        dst[0].mesh.data_received(dst[1], data, self.now)

    def _close(self, end: End, reason: str) -> None:
        last = end[0].mesh.data_to_send(end[1], self.now)  # the goodbye, if any
        if last:
            self._carry(end, last)
        other = self.ends.pop(end, None)
        if other is not None:
            self.ends.pop(other, None)
            if other[0].up:
                other[0].mesh.connection_lost(other[1], "connection closed by peer", self.now)

    # --- looking -----------------------------------------------------------------------------

    def link_of(self, host: Host, conn_id: int) -> frozenset[End]:
        other = self.ends[(host, conn_id)]
        return frozenset({(host, conn_id), other})

    def converged(self) -> bool:
        return len({h.mesh.topology.digest() for h in self.live()}) == 1


def peer_conn(a: Host, b: Host) -> int:
    return a.mesh.connected_peers()[b.name]


# --- connections ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pair_connects_with_one_conn_uid_at_both_ends(seed: int) -> None:
    net = MiniNet(seed)
    a = net.add(1)
    b = net.add(2, targets=[a.address])
    net.pump()
    (ea,), (eb,) = a.connected(), b.connected()
    assert ea.conn_uid == eb.conn_uid and not ea.outbound and eb.outbound
    assert ea.peer.name == b.name and eb.peer.name == a.name
    assert net.link_of(a, ea.conn_id) == net.link_of(b, eb.conn_id)
    assert net.converged() and len(a.mesh.topology.peers) == 2
    assert b.mesh.routes.unicast == {a.name: a.name}


@pytest.mark.parametrize("password", [None, b"secret"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_simultaneous_dials_leave_one_connection_with_the_same_uid(
        seed: int, password: bytes | None) -> None:
    net = MiniNet(seed)
    a = net.add(1, password=password)
    b = net.add(2, password=password, targets=[a.address])
    a.mesh.add_targets([b.address], net.now)  # both dials are out before any byte moves
    net.pump()
    for host in (a, b):
        # a duplicate is either closed before it is reported, or reported and then
        # disconnected as a duplicate: exactly one connection is live afterwards
        live = {e.conn_id for e in host.connected()} - {e.conn_id for e in host.disconnected()}
        assert len(live) == 1, f"seed {seed}"
        # (either end may be the first to see it; the other is told by the goodbye)
        assert all(e.reason.endswith("duplicate connection") for e in host.disconnected())
        assert [c.reason.endswith("duplicate connection") for c in host.closes] == [True]
        assert len(host.mesh.connected_peers()) == 1
    kept_a, kept_b = peer_conn(a, b), peer_conn(b, a)
    assert net.link_of(a, kept_a) == net.link_of(b, kept_b)  # the same link at both ends
    uid_a = {e.conn_id: e.conn_uid for e in a.connected()}
    uid_b = {e.conn_id: e.conn_uid for e in b.connected()}
    assert uid_a[kept_a] == uid_b[kept_b]  # both ends keep the same connection
    assert uid_a[kept_a] == min(set(uid_a.values()) | set(uid_b.values()))  # the lower uid wins
    assert len(net.ends) == 2  # the duplicate is closed at the wire too
    # no retries follow: the duplicate was a success, not a failure
    events = (len(a.events), len(b.events))
    net.advance(120)
    assert (len(a.events), len(b.events)) == events
    for host in (a, b):
        report = host.mesh.report(net.now)
        assert [c["state"] for c in report["connections"]] == ["established"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_restarted_peer_replaces_the_old_connection(seed: int) -> None:
    net = MiniNet(seed)
    a = net.add(1)
    b1 = net.add(2, targets=[a.address])
    net.pump()
    old_conn = peer_conn(a, b1)
    net.vanish(b1)  # a still holds a half-open connection to the old incarnation
    b2 = net.add(2, targets=[a.address], uid=b1.mesh.config.uid ^ 0xFFFF)
    net.pump()
    assert [(e.conn_id, e.reason) for e in a.disconnected()] == [(old_conn, "peer restarted")]
    assert Close(old_conn, "peer restarted") in a.closes
    new_conn = peer_conn(a, b2)
    assert new_conn != old_conn and net.ends[(a, new_conn)][0] is b2
    assert a.connected()[-1].peer.uid == b2.mesh.config.uid
    # whichever record ranked higher before, the new incarnation's record wins everywhere
    record = a.mesh.topology.get(b2.name)
    assert record is not None and record.uid == b2.mesh.config.uid, f"seed {seed}"
    assert net.converged()
    assert [c["state"] for c in a.mesh.report(net.now)["connections"]] == ["established"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_peer_that_dials_again_replaces_its_half_open_connection(seed: int) -> None:
    """b's NAT forgot the mapping of its connection to a: b sees a reset and dials again,
    while a, which heard nothing, still holds the old one. a takes the new connection at
    once (it used to refuse it as a duplicate until the old one timed out)."""
    net = MiniNet(seed)
    a = net.add(1)
    b = net.add(2, targets=[a.address])
    net.pump()
    old_a, old_b = peer_conn(a, b), peer_conn(b, a)
    net.ends.pop((a, old_a))
    net.ends.pop((b, old_b))  # nothing more crosses it, and a is told nothing
    b.mesh.connection_lost(old_b, "connection reset by peer", net.now)
    net.advance(5)  # b's retry is due within its first backoff
    assert [(e.conn_id, e.reason) for e in a.disconnected()] == [(old_a, "peer dialled again")]
    new_a, new_b = peer_conn(a, b), peer_conn(b, a)
    assert new_a != old_a and net.link_of(a, new_a) == net.link_of(b, new_b)
    assert len(a.mesh.connected_peers()) == 1 and net.converged()
    events = (len(a.events), len(b.events))
    net.advance(120)
    assert (len(a.events), len(b.events)) == events  # and it stays


def test_connection_to_ourself_fails_for_good() -> None:
    net = MiniNet(9)
    a = net.add(1, targets=["10.0.0.1:6783"])
    net.pump()
    net.advance(300)
    target = a.mesh.maker.target(a.address)
    assert target is not None and target.state.value == "failed"
    assert target.last_error.startswith("cannot connect to ourself")
    assert a.mesh.connected_peers() == {}


def test_covered_target_does_not_spin_the_timer() -> None:
    """Regression: b's retry of a, skipped because a dialled b meanwhile, left a deadline
    in the past and every driver's timer loop spun on it."""
    net = MiniNet(4)
    b = net.add(2, targets=["10.0.0.1:6783"])  # nobody there yet: refused, retrying
    net.pump()
    a = net.add(1, targets=[b.address])
    net.pump()
    assert peer_conn(b, a)
    net.advance(30)  # raises if a timer stays due
    assert len(b.mesh.connected_peers()) == 1
    # status shows the connection a made, not b's covered retry beside it
    target = b.mesh.maker.target(a.address)
    assert target is not None and target.state.value == "retrying"
    assert [c["state"] for c in b.mesh.report(net.now)["connections"]] == ["established"]


def test_conn_limit_counts_dials_in_flight() -> None:
    net = MiniNet(6)
    a = net.add(1, conn_limit=2)
    for i in range(2, 6):
        net.add(i)
    a.mesh.add_targets(["10.0.0.2:6783", "10.0.0.3:6783"], net.now)
    a.mesh.add_targets(["10.0.0.4:6783", "10.0.0.5:6783"], net.now)  # before any dial lands
    net.pump()
    assert len(a.mesh.connected_peers()) == 2
    assert sum(1 for host, _ in net.ends if host is a) == 2


# --- the report ------------------------------------------------------------------------------------


class Nullable:
    def __init__(self, schema: Any) -> None:
        self.schema = schema


ROUTER_SCHEMA: dict[str, Any] = {
    "name": str, "nickname": str, "encryption": bool,
    "peers": [{"name": str, "nickname": str,
               "connections": [{"name": str, "nickname": str, "address": str,
                                "outbound": bool, "established": bool}]}],
    "connections": [{"address": str, "outbound": bool, "state": str, "info": str,
                     "peer": Nullable({"name": str, "nickname": str}),
                     "encrypted": bool, "overlay": Nullable(str), "overlay_reason": str,
                     "mtu": Nullable(int)}],
    "targets": [str],
}
STATES = {"connecting", "pending", "established", "retrying", "failed"}
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
ADDRESS = re.compile(r"^(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):\d+$")


def check_schema(value: Any, schema: Any, path: str = "router") -> None:
    if isinstance(schema, Nullable):
        if value is not None:
            check_schema(value, schema.schema, path)
    elif isinstance(schema, dict):
        assert isinstance(value, dict), path
        for key, sub in schema.items():
            assert key in value, f"{path} lacks {key!r}"
            check_schema(value[key], sub, f"{path}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            check_schema(item, schema[0], f"{path}[{i}]")
    else:
        # bool is an int in Python; the contract's JSON types are not
        assert type(value) is schema, f"{path}: {value!r} is not {schema.__name__}"


def check_router_report(report: dict[str, Any]) -> None:
    check_schema(report, ROUTER_SCHEMA)
    assert json.loads(json.dumps(report)) == report
    assert MAC.match(report["name"])
    assert report["name"] in [p["name"] for p in report["peers"]]  # peers include ourselves
    for peer in report["peers"]:
        assert MAC.match(peer["name"])
        for c in peer["connections"]:
            assert MAC.match(c["name"])
    for c in report["connections"]:
        assert c["state"] in STATES and ADDRESS.match(c["address"]), c
        assert c["overlay"] in (None, "sleeve", "fastdp")
        if c["state"] in ("retrying", "failed"):
            assert c["info"], f"{c['state']} without a reason: {c}"


@pytest.mark.parametrize("password", [None, b"secret"])
def test_report_has_every_key_the_contract_requires(password: bytes | None) -> None:
    net = MiniNet(12)
    a = net.add(1, password=password, targets=["10.0.0.99:6783", "10.0.0.1:6783"])
    net.add(2, password=password, targets=[a.address])
    net.pump()
    report = a.mesh.report(net.now)
    check_router_report(report)
    assert report["encryption"] is (password is not None)
    assert report["targets"] == ["10.0.0.1:6783", "10.0.0.99:6783"]
    by_state = {c["state"]: c for c in report["connections"]}
    assert set(by_state) == {"established", "retrying", "failed"}
    assert by_state["established"]["peer"] == {"name": "02:00:00:00:00:02", "nickname": "n2"}
    assert by_state["established"]["encrypted"] is (password is not None)
    retrying, failed = by_state["retrying"], by_state["failed"]
    assert retrying["address"] == "10.0.0.99:6783" and retrying["peer"] is None
    assert retrying["info"].startswith("connection refused; retry in ")
    assert failed["address"] == "10.0.0.1:6783"
    assert failed["info"].startswith("cannot connect to ourself") and failed["info"].endswith(
        "retry never")
    assert sorted(p["nickname"] for p in report["peers"]) == ["n1", "n2"]


def test_report_of_a_pending_connection_and_its_overlay() -> None:
    net = MiniNet(13)
    a = net.add(1, require_overlay=True)
    b = net.add(2, require_overlay=True, targets=[a.address])
    net.pump()
    (conn,) = a.mesh.report(net.now)["connections"]
    assert conn["state"] == "pending" and conn["info"]
    for host, peer in ((a, b), (b, a)):
        host.mesh.set_overlay(peer_conn(host, peer), ready=True, overlay="sleeve",
                              reason="fast path refused: test", mtu=1376)
    net.pump()
    report = a.mesh.report(net.now)
    check_router_report(report)
    (conn,) = report["connections"]
    assert (conn["state"], conn["overlay"], conn["mtu"]) == ("established", "sleeve", 1376)
    assert conn["overlay_reason"] == "fast path refused: test"
    assert b.mesh.routes.unicast == {a.name: a.name}


def test_control_heartbeats_slow_down_while_the_overlay_works_and_resume_with_grace() -> None:
    """With overlay_heartbeat_interval, a connection whose overlay works sends control
    heartbeats rarely and tolerates three missed; when the overlay goes, the usual pace at
    once and half a timeout of grace, so the peer (still slow) is not taken for dead: it
    answers our heartbeats. Nothing is closed throughout."""
    net = MiniNet(17)
    a = net.add(1, require_overlay=True, overlay_heartbeat_interval=20.0)
    b = net.add(2, require_overlay=True, overlay_heartbeat_interval=20.0, targets=[a.address])
    net.pump()
    for host, peer in ((a, b), (b, a)):
        host.mesh.set_overlay(peer_conn(host, peer), ready=True, overlay="sleeve", now=net.now)
    net.pump()
    conn_a = a.mesh._conns[peer_conn(a, b)].conn
    assert (conn_a.heartbeat_interval, conn_a.timeout) == (20.0, 60.0)
    frames = {"a": 0, "b": 0}

    def count(src: Host, dst: Host, data: bytes) -> bool:
        frames["a" if src is a else "b"] += 1
        return False

    net.drop = count
    net.advance(100.0)
    slow = dict(frames)
    a.mesh.set_overlay(peer_conn(a, b), ready=False, overlay=None, reason="link down",
                       now=net.now)
    assert (conn_a.heartbeat_interval, conn_a.timeout) == (5.0, 15.0)
    frames.update(a=0, b=0)
    net.advance(100.0)
    # slow: a few heartbeats (and gossip digests) each way in 100 s; then A every 5 s and B
    # answering those it was silent for
    assert 0 < slow["a"] <= 12 and 0 < slow["b"] <= 12
    assert frames["a"] >= 18 and frames["b"] >= 18
    assert not a.disconnected() and not b.disconnected()
    assert a.mesh.report(net.now)["connections"][0]["state"] == "pending"


def test_an_unpaced_transport_keeps_the_usual_heartbeats() -> None:
    """A punched path's stream knows the peer is there only from the control heartbeats:
    its connection (paced=False) keeps them at 5 s whatever the overlay."""
    mesh = MiniNet(23).add(1, require_overlay=True, overlay_heartbeat_interval=20.0).mesh
    mesh.connection_made(7, outbound=True, remote_address="10.0.0.9:6783", target=None,
                         now=0.0, paced=False)
    mesh.set_overlay(7, ready=True, overlay="sleeve", now=0.0)
    conn = mesh._conns[7].conn
    assert (conn.heartbeat_interval, conn.timeout) == (5.0, 15.0)


def test_periodic_digests_skip_unicast_only_channels() -> None:
    """A channel with no state (UnicastChannel) never costs a periodic digest: B, which does
    not know the channel, would count each one as an unknown channel."""
    net = MiniNet(19)
    a = net.add(1, gossip_interval=5.0)
    b = net.add(2, targets=[a.address])
    a.mesh.register_channel("only-a", UnicastChannel("only-a", lambda *_: None))
    net.pump()
    sent = a.mesh.stats.gossip_messages_sent
    net.advance(100.0)
    assert a.mesh.stats.gossip_messages_sent >= sent + 15  # topology digests every ~5 s
    assert b.mesh.stats.dropped_unknown_channel == 0


# --- gossip ----------------------------------------------------------------------------------------

LADDER = [(1, 0), (2, 0), (2, 1), (3, 1), (4, 2), (4, 3), (5, 3), (5, 4)]  # 6 nodes, 8 links


def build(net: MiniNet, n: int, edges: list[tuple[int, int]]) -> list[Host]:
    hosts: list[Host] = []
    for i in range(n):
        targets = [f"10.0.0.{j + 1}:6783" for k, j in edges if k == i]
        hosts.append(net.add(i + 1, targets=targets, discovery=False, channel=True))
    net.pump()
    assert net.converged() and all(len(h.mesh.topology.peers) == n for h in hosts)
    return hosts


def channel(host: Host) -> SetChannel:
    ch = host.mesh._channels[TEST]  # the instance Host.channel registered
    assert isinstance(ch, SetChannel)
    return ch


@pytest.mark.parametrize("seed", [1, 2])
def test_unicast_two_hops_away_arrives(seed: int) -> None:
    net = MiniNet(seed)
    a, b, c = build(net, 3, [(1, 0), (2, 1)])  # a - b - c
    assert a.mesh.routes.unicast[c.name] == b.name
    assert a.mesh.gossip_unicast(TEST, c.name, b"hello c", net.now)
    net.pump()
    assert channel(c).unicasts == [(a.name, b"hello c")]
    assert channel(b).unicasts == [] and channel(a).unicasts == []
    # and back
    assert c.mesh.gossip_unicast(TEST, a.name, b"hello a", net.now)
    net.pump()
    assert channel(a).unicasts == [(c.name, b"hello a")]


def test_unicast_without_a_route_is_counted_not_sent() -> None:
    net = MiniNet(3)
    (a,) = build(net, 1, [])
    assert not a.mesh.gossip_unicast(TEST, NAME_BASE | 77, b"x", net.now)
    assert a.mesh.stats.dropped_no_route == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_unicast_between_every_pair_of_a_six_node_graph(seed: int) -> None:
    net = MiniNet(seed)
    hosts = build(net, 6, LADDER)
    for src in hosts:
        for dst in hosts:
            if dst is not src:
                assert src.mesh.gossip_unicast(TEST, dst.name, b"%d" % src.index, net.now)
    net.pump()
    for dst in hosts:
        assert sorted(channel(dst).unicasts) == sorted(
            (src.name, b"%d" % src.index) for src in hosts if src is not dst)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_broadcast_reaches_every_peer_exactly_once(seed: int) -> None:
    net = MiniNet(seed)
    hosts = build(net, 6, LADDER)
    for src in hosts:
        sent_before = sum(h.mesh.stats.gossip_messages_sent for h in hosts)
        payload = b"from %d" % src.index
        src.mesh.gossip_broadcast(TEST, payload, net.now)
        net.pump()
        for h in hosts:
            got = [m for m in channel(h).broadcasts if m == (src.name, payload)]
            assert len(got) == (0 if h is src else 1), f"seed {seed} src {src.index} at {h.index}"
        # one spanning tree: five links carried it, none twice
        assert sum(h.mesh.stats.gossip_messages_sent for h in hosts) - sent_before == 5
    assert all(len(channel(h).broadcasts) == 5 for h in hosts)


def test_channels_get_the_now_of_the_input_that_carried_their_gossip() -> None:
    net = MiniNet(5)
    a, b, c = build(net, 3, [(1, 0), (2, 1)])  # a - b - c
    for h in (a, b, c):
        channel(h).times.clear()  # the full states exchanged on connecting, at 0.0
    net.now = 42.5
    a.mesh.gossip_news(TEST, channel(a).add(b"one"))
    a.mesh.gossip_broadcast(TEST, b"all", net.now)
    a.mesh.gossip_unicast(TEST, c.name, b"c", net.now)
    net.pump()
    assert sorted(channel(c).times) == [("broadcast", 42.5), ("gossip", 42.5), ("unicast", 42.5)]
    net.now = 77.0
    c.mesh.gossip_news(TEST, channel(c).add(b"two"))
    net.pump()
    assert channel(b).times[-1] == channel(a).times[-1] == ("gossip", 77.0)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_news_floods_once_and_a_missed_delta_is_repaired_by_digest(seed: int) -> None:
    net = MiniNet(seed)
    interval = 10.0
    hosts = []
    for i, targets in enumerate([[], ["10.0.0.1:6783"], ["10.0.0.2:6783"]]):  # a - b - c
        hosts.append(net.add(i + 1, targets=targets, discovery=False, channel=True,
                             gossip_interval=interval))
    net.pump()
    a, b, c = hosts
    # news reaches everyone
    a.mesh.gossip_news(TEST, channel(a).add(b"one"))
    net.pump()
    assert all(channel(h).items == {b"one"} for h in hosts)
    # the next news from a to b is lost on the wire
    armed = [True]

    def drop_once(src: Host, dst: Host, data: bytes) -> bool:
        if armed[0] and src is a and dst is b:
            armed[0] = False
            return True
        return False

    net.drop = drop_once
    a.mesh.gossip_news(TEST, channel(a).add(b"two"))
    net.pump()
    assert net.dropped == 1
    assert channel(b).items == channel(c).items == {b"one"}
    # within two gossip intervals a digest exchange finds the difference and repairs it
    net.advance(2 * interval)
    assert all(channel(h).items == {b"one", b"two"} for h in hosts), f"seed {seed}"
    assert all(h.mesh.connected_peers() for h in hosts)  # no connection paid for it


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_missed_topology_delta_is_repaired_by_digest(seed: int) -> None:
    net = MiniNet(seed)
    a = net.add(1, discovery=False, gossip_interval=10.0)
    b = net.add(2, targets=[a.address], discovery=False, gossip_interval=10.0)
    net.pump()
    net.drop = lambda src, dst, data: src is a
    record = a.mesh.topology.update_ourself(meta={"ipam": "ready"})
    assert record is not None
    a.mesh.gossip_news(TOPOLOGY, Records((record,)))
    net.pump()
    net.drop = None
    assert not net.converged()
    net.advance(20.0)
    assert net.converged(), f"seed {seed}"
    got = b.mesh.topology.get(a.name)
    assert got is not None and got.meta == (("ipam", "ready"),)


# --- a misbehaving peer ------------------------------------------------------------------------------

MALLORY = LocalIdentity(name=NAME_BASE | 0x66, nickname="mallory", uid=6666)


def _bad_record(**fields: Any) -> list[Any]:
    rec: dict[str, Any] = {"name": MALLORY.name, "nick": "mallory", "uid": 1, "version": 5,
                           "conns": [], "meta": []}
    rec.update(fields)
    return [rec["name"], rec["nick"], rec["uid"], rec["version"], rec["conns"], rec["meta"]]


BAD_TOPOLOGY = {
    "not msgpack": b"\xc1",
    "not an array": pack({"records": 1}),
    "record not an array": pack([7]),
    "bad name": pack([_bad_record(name=0)]),
    "bad version": pack([_bad_record(version=0)]),
    "connection to itself": pack([_bad_record(conns=[[MALLORY.name, "10.0.0.66:6783", 3]])]),
    "unsorted connections": pack([_bad_record(conns=[[9, "10.0.0.9:6783", 3],
                                                     [8, "10.0.0.8:6783", 3]])]),
    "bad flags": pack([_bad_record(conns=[[9, "10.0.0.9:6783", 99]])]),
}


def _mallory_connected(net: MiniNet, a: Host) -> Connection:
    """A hand-driven peer that speaks the handshake properly, then misbehaves."""
    m = connection(True, local=MALLORY, seed=net.seed, now=net.now)
    a.mesh.connection_made(500, outbound=False, remote_address="10.0.0.66:40500", target=None,
                           now=net.now)
    _shuttle(net, a, m)
    assert isinstance(drain_events(m)[0], HandshakeCompleted)
    assert MALLORY.name in a.mesh.connected_peers()
    return m


def _shuttle(net: MiniNet, a: Host, m: Connection) -> None:
    for _ in range(100):
        net._drain(a)
        a.mesh.pending_writes()
        to_m = a.mesh.data_to_send(500, net.now)
        to_a = m.data_to_send()
        if not to_m and not to_a:
            return
        m.receive_data(to_m, net.now)
        a.mesh.data_received(500, to_a, net.now)
    raise AssertionError("shuttle never settled")


@pytest.mark.parametrize("kind", [GossipKind.DELTA, GossipKind.PERIODIC])
@pytest.mark.parametrize("what", sorted(BAD_TOPOLOGY))
def test_malformed_topology_closes_the_connection(what: str, kind: GossipKind) -> None:
    net = MiniNet(21)
    a = net.add(1)
    m = _mallory_connected(net, a)
    digest = a.mesh.topology.digest()
    m.send_message(Gossip(TOPOLOGY, kind, MALLORY.name, 0, BAD_TOPOLOGY[what]), net.now)
    a.mesh.data_received(500, m.data_to_send(), net.now)
    close = a.mesh.next_action()
    assert isinstance(close, Close) and a.mesh.next_action() is None
    assert close.conn_id == 500 and close.reason.startswith("bad gossip"), close
    goodbye = a.mesh.data_to_send(500, net.now)  # what the shell writes before closing
    net._drain(a)
    (gone,) = a.disconnected()
    assert gone.reason == close.reason and gone.peer.name == MALLORY.name
    assert MALLORY.name not in a.mesh.topology.peers  # nothing of mallory's stays
    assert a.mesh.topology.digest() != digest  # our record dropped the connection
    # mallory is told why before the socket closes
    m.receive_data(goodbye, net.now)
    (failed,) = drain_events(m)
    assert isinstance(failed, ConnectionFailed)
    assert failed.reason == f"peer closed the connection: {close.reason}"


def test_unknown_channel_is_counted_and_the_connection_kept() -> None:
    net = MiniNet(22)
    a = net.add(1)
    m = _mallory_connected(net, a)
    m.send_message(Gossip("no-such-channel", GossipKind.DELTA, MALLORY.name, 0, b"\xc1"), net.now)
    a.mesh.data_received(500, m.data_to_send(), net.now)
    net._drain(a)
    assert a.closes == [] and a.mesh.stats.dropped_unknown_channel == 1
    assert MALLORY.name in a.mesh.connected_peers()
