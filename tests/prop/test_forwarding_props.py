"""Forwarding decisions against a naive oracle, and whole networks of forwarders.

Topologies are real ``PeerRecord``s and routes are the real ``Routes`` (some links
one-sided or not established, so they do not count, and some networks split into
components). Two properties:

* one forwarder fed a random sequence of local frames, remote frames, route changes,
  forgets and expiries decides exactly as a naive re-implementation (a list scanned
  linearly, no caches, no ordering tricks) and ends with the same MAC table;
* a network of forwarders, one per peer, relaying each other's output: every flood
  reaches every peer of the source's component exactly once and nobody else, a frame
  for a learned MAC reaches exactly its peer, along a shortest path, and every hop is a
  usable link.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet.proto.ethernet import BROADCAST
from weftnet.proto.forwarding import Forwarder
from weftnet.proto.routes import Routes
from weftnet.proto.topology import ConnectionInfo, PeerRecord

GROUP = 0x010000000000
Topology = dict[int, PeerRecord]


@st.composite
def topologies(draw: st.DrawFn, max_nodes: int = 8) -> tuple[Topology, list[int]]:
    n = draw(st.integers(1, max_nodes))
    names = sorted(draw(st.lists(st.integers(1, 60), min_size=n, max_size=n, unique=True)))
    density = draw(st.sampled_from([0.25, 0.5, 0.8]))
    claims: dict[tuple[int, int], bool] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if draw(st.floats(0, 1)) < density:
                kind = draw(st.sampled_from(["sym"] * 6 + ["ab", "half"]))
                claims[a, b] = True
                if kind == "sym":
                    claims[b, a] = True
                elif kind == "half":
                    claims[b, a] = False
    peers = {a: PeerRecord(a, f"n{a}", 1, 1, tuple(
        ConnectionInfo(b, "", a < b, claims[a, b]) for b in names if (a, b) in claims))
        for a in names}
    return peers, names


# -- the oracle ----------------------------------------------------------------------------

class Naive:
    """The forwarding rules, written as plainly as possible (refresh = 0, no bound)."""

    def __init__(self, us: int, expiry: float) -> None:
        self.us = us
        self.expiry = expiry
        self.table: list[list[float]] = []       # [mac, peer, seen]
        self.unicast: dict[int, int] = {}
        self.routes: Routes | None = None

    def find(self, mac: int) -> list[float] | None:
        for row in self.table:
            if row[0] == mac:
                return row
        return None

    def where(self, mac: int, now: float) -> int | None:
        row = self.find(mac)
        if row is None or now - row[2] >= self.expiry:
            return None
        return int(row[1])

    def learn(self, mac: int, peer: int, now: float) -> bool:
        row = self.find(mac)
        if row is not None and row[1] == self.us and peer != self.us \
                and now - row[2] < self.expiry:
            return False
        if row is not None:
            self.table.remove(row)
        self.table.append([mac, peer, now])
        return True

    def flood(self, source: int) -> tuple[tuple[int, int], ...]:
        hops = self.routes.broadcast_next_hops(source) if self.routes else ()
        return tuple((h, 0) for h in hops)

    def to(self, peer: int) -> tuple[tuple[int, int], ...] | None:
        return ((self.unicast[peer], peer),) if peer in self.unicast else None

    def from_local(self, dst: int, src: int, now: float) -> object:
        if src & GROUP:
            return "invalid source"
        self.learn(src, self.us, now)
        if dst & GROUP:
            return self.flood(self.us)
        peer = self.where(dst, now)
        if peer is None:
            return self.flood(self.us)
        if peer == self.us:
            return "local destination"
        return self.to(peer) or "no route"

    def from_remote(self, src_peer: int, dst_peer: int, dst: int, src: int, now: float) -> object:
        if src_peer == self.us:
            return "loop"
        if src & GROUP:
            return "invalid source"
        if not self.learn(src, src_peer, now):
            if dst_peer == self.us:
                return "mac conflict"
            relays = self.flood(src_peer) if dst_peer == 0 else self.to(dst_peer)
            return (False, relays) if relays else "mac conflict"
        if dst_peer == 0:
            return True, self.flood(src_peer)
        if dst_peer == self.us:
            return True, ()
        relays = self.to(dst_peer)
        return (False, relays) if relays else "no route"

    def macs(self, now: float) -> dict[int, tuple[int, float]]:
        return {int(m): (int(p), now - s) for m, p, s in sorted(self.table)}


@settings(max_examples=150, deadline=None)
@given(st.lists(topologies(), min_size=1, max_size=3), st.integers(0, 2**32 - 1))
def test_decisions_match_the_naive_oracle(topos: list[tuple[Topology, list[int]]],
                                          seed: int) -> None:
    rng = random.Random(seed)
    names = sorted({n for _, ns in topos for n in ns})
    us = rng.choice(names)
    macs = [0x0A0000000000 + i for i in range(12)] + [BROADCAST, 0x01005E000001, 0x333300000002]
    expiry = 5.0
    real = Forwarder(us, mac_expiry=expiry, refresh=0.0)
    naive = Naive(us, expiry)
    now = 0.0
    for step in range(300):
        now += rng.choice([0.0, 0.01, 0.5, 1.0, 3.0])
        op = rng.random()
        if op < 0.05 or step == 0:
            peers, _ = rng.choice(topos)
            routes = Routes.compute(peers, us) if us in peers else Routes.compute({}, us)
            real.set_routes(routes.unicast, routes.broadcast_next_hops)
            naive.unicast = dict(routes.unicast)
            naive.routes = routes
        elif op < 0.45:
            dst, src = rng.choice(macs), rng.choice(macs[:12] + macs[:12] + [BROADCAST])
            assert real.from_local(dst, src, now) == naive.from_local(dst, src, now), (seed, step)
        elif op < 0.9:
            src_peer = rng.choice(names)
            dst_peer = rng.choice([0, 0, us, *names, 99])
            if dst_peer == src_peer:
                continue                      # the codec never yields these
            dst, src = rng.choice(macs), rng.choice(macs[:12] + [0x01005E000001])
            got = real.from_remote(src_peer, dst_peer, dst, src, now)
            assert got == naive.from_remote(src_peer, dst_peer, dst, src, now), (seed, step)
        elif op < 0.93:
            peer = rng.choice(names)
            real.forget_peer(peer)
            naive.table = [row for row in naive.table if row[1] != peer]
        elif op < 0.96:
            mac = rng.choice(macs[:12])
            row = naive.find(mac)
            if row is not None and now - row[2] < expiry:
                assert real.forget_mac(mac)       # (a dead entry may be gone already)
            else:
                real.forget_mac(mac)
            naive.table = [row for row in naive.table if row[0] != mac]
        else:
            real.expire(now)
            naive.table = [row for row in naive.table if now - row[2] < expiry]
            assert real.macs(now) == naive.macs(now), (seed, step)
            timer = real.get_timer()
            assert timer == (min(row[2] for row in naive.table) + expiry
                             if naive.table else None)
    live = {m: v for m, v in naive.macs(now).items() if v[1] < expiry}
    real.expire(now)
    assert real.macs(now) == live


@given(st.integers(1, 40), st.lists(st.integers(0, 60), min_size=1, max_size=400))
def test_bounded_cache_keeps_the_most_recently_learned(bound: int, sources: list[int]) -> None:
    f = Forwarder(1, max_macs=bound, refresh=0.0)
    order: list[int] = []                 # oracle: least recently learned first
    for t, s in enumerate(sources):
        mac = 0x0A0000000000 + s
        f.from_local(BROADCAST, mac, float(t) / 1000)
        if mac in order:
            order.remove(mac)
        order.append(mac)
        del order[:-bound]
        assert sorted(f.macs()) == sorted(order)


# -- networks of forwarders ------------------------------------------------------------------

def shortest(routes: dict[int, Routes], a: int, b: int) -> int | None:
    """Hop count between a and b by plain BFS over the usable links Routes reports."""
    seen, frontier, d = {a}, [a], 0
    while frontier:
        if b in frontier:
            return d
        d += 1
        frontier = [m for n in frontier for m in routes[n].neighbours if m not in seen
                    and not seen.add(m)]  # type: ignore[func-returns-value]
    return None


def deliver(nets: dict[int, Forwarder], routes: dict[int, Routes], source: int, dst_mac: int,
            src_mac: int, now: float) -> tuple[dict[int, int], set[int], int, object]:
    """Inject a local frame at ``source`` and relay it until quiet: (local deliveries per
    peer, peers it passed through, datagrams sent, the source's own decision)."""
    decision = nets[source].from_local(dst_mac, src_mac, now)
    got: dict[int, int] = {}
    visited: set[int] = set()
    sent = 0
    pending: list[tuple[int, int, int]] = []
    if not isinstance(decision, str):
        pending = [(source, hop, dst) for hop, dst in decision]
    while pending:
        sender, hop, dst_peer = pending.pop()
        sent += 1
        assert hop in routes[sender].neighbours, "a send over a link that is not usable"
        assert sent <= 4 * len(nets), "looping"
        visited.add(hop)
        result = nets[hop].from_remote(source, dst_peer, dst_mac, src_mac, now)
        assert not isinstance(result, str), result
        local, relays = result
        if local:
            got[hop] = got.get(hop, 0) + 1
        pending.extend((hop, h, d) for h, d in relays)
    return got, visited, sent, decision


@settings(max_examples=120, deadline=None)
@given(topologies(max_nodes=10), st.integers(0, 2**32 - 1))
def test_frames_in_a_network_reach_the_right_peers_once(topo: tuple[Topology, list[int]],
                                                        seed: int) -> None:
    peers, names = topo
    rng = random.Random(seed)
    routes = {n: Routes.compute(peers, n) for n in names}
    nets = {n: Forwarder(n) for n in names}
    for n in names:
        nets[n].set_routes(routes[n].unicast, routes[n].broadcast_next_hops)
    home = {0x0A0000000000 + (n << 8) + i: n for n in names for i in range(2)}
    known: dict[int, set[int]] = {n: set() for n in names}   # MACs each peer has learned
    component = {n: {n, *routes[n].reachable} for n in names}
    for step in range(60):
        src_mac = rng.choice(sorted(home))
        source = home[src_mac]
        dst_mac = rng.choice([BROADCAST, 0x01005E0000FB, 0x0B0000000001, *sorted(home)])
        got, visited, sent, decision = deliver(nets, routes, source, dst_mac, src_mac, float(step))
        at = home.get(dst_mac)
        everyone = component[source] - {source}
        known[source].add(src_mac)               # learned before the lookup
        if at == source and dst_mac in known[source]:
            assert decision == "local destination"
            assert got == {}
        elif at is not None and dst_mac in known[source]:
            # learned: unicast straight to its peer along a shortest path
            assert got == {at: 1}, (seed, step)
            assert sent == shortest(routes, source, at)
        else:
            # group, or not learned yet: a flood along the source's tree
            assert got == dict.fromkeys(everyone, 1), (seed, step)
            assert sent == len(everyone)
        for n in visited:                                 # every hop learns the source
            known[n].add(src_mac)
        for n in names:                                   # what was learned is true
            table = nets[n].macs()
            assert {m for m in table if table[m][0] == n} <= {m for m in home if home[m] == n}
            assert set(table) == known[n], (seed, step, n)
            assert all(home[m] == p for m, (p, _) in table.items())


def test_shortest_helper_agrees_on_a_line() -> None:
    peers = {n: PeerRecord(n, "", 1, 1, tuple(ConnectionInfo(r, "", True, True) for r in rs))
             for n, rs in {1: [2], 2: [1, 3], 3: [2]}.items()}
    routes = {n: Routes.compute(peers, n) for n in peers}
    assert shortest(routes, 1, 3) == 2 and shortest(routes, 3, 3) == 0
    lone: Sequence[int] = routes[1].neighbours
    assert lone == (2,)
