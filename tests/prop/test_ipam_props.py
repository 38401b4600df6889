"""Properties of the IPAM core under hypothesis.

1. The ring and the gossip payloads form a join-semilattice: merging is commutative,
   associative and idempotent, and coalescing two payloads before merging is the same as
   merging them one after the other.
2. A stateful model of a few allocators whose every message (gossip deltas, anti-entropy
   full states, unicasts) sits in a pool that hypothesis delivers in any order, duplicates
   or drops, with partitions, crashes and restarts from persisted state, and the admin's
   rmpeer (of a peer gone for good), handoff and claims. After every step: no two peers own
   overlapping ranges, no address is held twice, every operation ends by its deadline; after
   healing, every peer holds the same ring.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_interface, ip_network
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from weftnet.ipam.allocator import REQUEST_TIMEOUT, Allocator
from weftnet.ipam.codec import IpamGossip, decode_gossip, encode_gossip
from weftnet.ipam.consensus import NO_BALLOT, Claim
from weftnet.ipam.mode import ConsensusInit, ObserverInit, SeedInit
from weftnet.ipam.ring import Entry, Ring, RingUpdate

START, END = 0, 64
NAMES = (1, 2, 3)

# --- 1. lattice laws ------------------------------------------------------------------------


@st.composite
def ring_updates(draw: Any) -> RingUpdate:
    ring_id = draw(st.sampled_from([(1, 11), (1, 11), (1, 11), (2, 22)]))
    tokens = sorted(draw(st.sets(st.integers(START, END - 1), max_size=6)))
    entries = []
    for t in tokens:
        end = draw(st.integers(t + 1, END))
        entries.append(Entry(t, end, draw(st.sampled_from(NAMES)), draw(st.integers(1, 4)),
                             draw(st.integers(0, end - t))))
    return RingUpdate(START, END, ring_id, tuple(entries))


def state_after(*updates: RingUpdate) -> tuple[Any, ...]:
    r = Ring(START, END)
    for u in updates:
        r.merge(u)
    return (r.ring_id, tuple(r.entries()), r.digest())


@given(ring_updates(), ring_updates(), ring_updates())
def test_ring_merge_is_a_join(a: RingUpdate, b: RingUpdate, c: RingUpdate) -> None:
    assert state_after(a, b) == state_after(b, a)
    assert state_after(a, b, c) == state_after(c, a, b) == state_after(b, c, a)
    assert state_after(a, a, b, a) == state_after(a, b)
    assert state_after(a.merge(b)) == state_after(a, b)
    assert state_after(a.merge(b).merge(c)) == state_after(a.merge(b.merge(c)))


@given(ring_updates(), ring_updates())
def test_merge_returns_exactly_the_news(a: RingUpdate, b: RingUpdate) -> None:
    r = Ring(START, END)
    r.merge(a)
    delta = r.merge(b)
    other = Ring(START, END)
    other.merge(a)
    if delta is None:
        assert state_after(a, b) == state_after(a)
    else:
        other.merge(delta)
        assert (other.ring_id, other.entries()) == (r.ring_id, r.entries())
    assert r.merge(b) is None


claims = st.builds(
    lambda node, p, a: Claim(node, (p, 1), (a, 1) if a else NO_BALLOT, (1, 2) if a else ()),
    st.sampled_from(NAMES), st.integers(1, 3), st.integers(0, 1),
).filter(lambda c: c.accepted <= c.promise)


@given(st.lists(claims, max_size=4), st.lists(claims, max_size=4), st.lists(claims, max_size=4))
def test_gossip_coalescing_is_a_join(x: list[Claim], y: list[Claim], z: list[Claim]) -> None:
    def g(cs: list[Claim]) -> IpamGossip:
        return IpamGossip(RingUpdate(START, END, (0, 0), ()), ()).merge(
            IpamGossip(RingUpdate(START, END, (0, 0), ()), tuple(sorted(
                {c.node: c for c in sorted(cs, key=Claim.rank)}.values(), key=lambda c: c.node))))
    a, b, c = g(x), g(y), g(z)
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    assert decode_gossip(encode_gossip(a.merge(b))) == a.merge(b)


# --- 2. a network of allocators under a hostile scheduler -----------------------------------------

UNIVERSE = IPv4Network("10.9.0.0/27")  # small, so space runs out and peers donate
TIMEOUT = 20.0


@dataclass
class Msg:
    src: int
    dst: int
    kind: str  # "gossip" | "unicast"
    payload: bytes


@dataclass
class Peer:
    index: int
    name: int
    alloc: Allocator
    up: bool = True
    gone: bool = False  # rmpeer'd or reset: never comes back
    saved: dict[str, Any] | None = None


class IpamMachine(RuleBasedStateMachine):
    UNIVERSE: IPv4Network | IPv6Network = UNIVERSE   # test_ipam6_props runs it over IPv6
    SUBNET = "10.9.0.16/28"

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.peers: list[Peer] = []
        self.pool: list[Msg] = []
        self.blocked: set[frozenset[int]] = set()
        self.ops: dict[int, tuple[int, float]] = {}  # op -> (peer, deadline)
        self.done: set[int] = set()
        self.next_op = 1
        self.idents = 0
        self.restarts = 0
        self.deliveries = 0
        self.succeeded = 0

    @initialize(observer=st.booleans(), seeded=st.booleans(), warm=st.integers(0, 4),
                seed=st.integers(0, 2**32))
    def setup(self, observer: bool, seeded: bool, warm: int, seed: int) -> None:
        self.rng = random.Random(seed)
        for i in range(4 if observer else 3):
            init: Any = ConsensusInit(3)
            if i == 3:
                init = ObserverInit()
            elif seeded:
                init = SeedInit((0x100, 0x101, 0x102))
            alloc = self._new(i, init)
            self.peers.append(Peer(i, 0x100 + i, alloc))
        self._topology()
        self._connect_all()
        if warm:  # else consensus runs under the hostile scheduler from the start
            for i in range(warm):
                self.allocate(i, None, 2)
            self.calm(500)

    def _connect_all(self) -> None:
        """New connections: both ends send their complete state (as the mesh does)."""
        for p in self._live():
            for q in self._live():
                if p is not q and self._linked(p.index, q.index):
                    self.pool.append(Msg(p.index, q.index, "gossip", encode_gossip(p.alloc.full_gossip())))

    def _new(self, i: int, init: Any) -> Allocator:
        return Allocator(0x100 + i, f"h{i}", self.UNIVERSE, None, init, self.now,
                         random.Random(self.rng.getrandbits(32)), timeout=TIMEOUT)

    # --- plumbing ----------------------------------------------------------------------------

    def _linked(self, a: int, b: int) -> bool:
        pa, pb = self.peers[a], self.peers[b]
        return pa.up and pb.up and frozenset((a, b)) not in self.blocked

    def _topology(self) -> None:
        for p in self.peers:
            if p.up:
                alive = {q.name: f"h{q.index}" for q in self.peers
                         if q is p or self._linked(p.index, q.index)}
                p.alloc.peers_changed(alive, self.now)
                self._drain(p)

    def _drain(self, p: Peer) -> None:
        a = p.alloc
        if a.dirty:
            p.saved = a.to_state()  # persisted before anything leaves
        news = a.take_news()
        if news is not None:
            self._flood(p.index, news, except_peer=None)
        for dst, payload in a.messages_to_send():
            j = next(q.index for q in self.peers if q.name == dst)
            self.pool.append(Msg(p.index, j, "unicast", payload))
        while (r := a.next_result()) is not None:
            assert r.op_id in self.ops and r.op_id not in self.done, f"stray result {r}"
            self.done.add(r.op_id)
            self.succeeded += r.error is None

    def _flood(self, src: int, data: IpamGossip, except_peer: int | None) -> None:
        payload = encode_gossip(data)
        for q in self.peers:
            if q.index not in (src, except_peer) and self._linked(src, q.index):
                self.pool.append(Msg(src, q.index, "gossip", payload))

    def _deliver(self, m: Msg) -> None:
        self.deliveries += 1
        assert self.deliveries < 20_000, "gossip does not die out (a message storm)"
        if not self._linked(m.src, m.dst):
            return
        p = self.peers[m.dst]
        if m.kind == "gossip":
            delta = p.alloc.on_gossip(decode_gossip(m.payload, p.alloc.limit), self.now)
            if delta is not None:
                self._flood(p.index, delta, except_peer=m.src)
        else:
            p.alloc.on_unicast(self.peers[m.src].name, m.payload, self.now)
        self._drain(p)

    def _live(self) -> list[Peer]:
        return [p for p in self.peers if p.up]

    # --- rules ---------------------------------------------------------------------------------

    @rule(who=st.integers(0, 3), subnet=st.sampled_from([None, "sub"]), count=st.integers(1, 6))
    def allocate(self, who: int, subnet: str | None, count: int) -> None:
        p = self.peers[who % len(self.peers)]
        if not p.up:
            return
        for _ in range(count):
            op, self.next_op = self.next_op, self.next_op + 1
            self.idents += 1
            self.ops[op] = (p.index, self.now + TIMEOUT)
            p.alloc.allocate(op, f"c{self.idents}", ip_network(self.SUBNET) if subnet else None, self.now)
            self._drain(p)

    @rule(who=st.integers(0, 3), offset=st.integers(0, 31))
    def claim(self, who: int, offset: int) -> None:
        p = self.peers[who % len(self.peers)]
        if not p.up:
            return
        op, self.next_op = self.next_op, self.next_op + 1
        self.idents += 1
        self.ops[op] = (p.index, self.now + TIMEOUT)
        ip = ip_address(int(self.UNIVERSE.network_address) + offset)
        p.alloc.claim(op, f"c{self.idents}", ip_interface(f"{ip}/{self.UNIVERSE.prefixlen}"), self.now)
        self._drain(p)

    @rule(who=st.integers(0, 3), pick=st.integers(0, 1000))
    def free(self, who: int, pick: int) -> None:
        p = self.peers[who % len(self.peers)]
        items = p.alloc.space.items()
        if p.up and items:
            p.alloc.free(items[pick % len(items)][1], None, self.now)
            self._drain(p)

    @precondition(lambda self: bool(self.pool))
    @rule(pick=st.integers(0, 10_000), duplicate=st.booleans())
    def deliver(self, pick: int, duplicate: bool) -> None:
        m = self.pool[pick % len(self.pool)] if duplicate else self.pool.pop(pick % len(self.pool))
        self._deliver(m)

    @precondition(lambda self: bool(self.pool))
    @rule(pick=st.integers(0, 10_000))
    def drop(self, pick: int) -> None:
        self.pool.pop(pick % len(self.pool))

    @rule(a=st.integers(0, 3), b=st.integers(0, 3))
    def anti_entropy(self, a: int, b: int) -> None:
        a, b = a % len(self.peers), b % len(self.peers)
        if a != b and self._linked(a, b):
            self.pool.append(Msg(a, b, "gossip", encode_gossip(self.peers[a].alloc.full_gossip())))

    @rule(a=st.integers(0, 3), b=st.integers(0, 3))
    def cut(self, a: int, b: int) -> None:
        a, b = a % len(self.peers), b % len(self.peers)
        if a != b:
            self.blocked.add(frozenset((a, b)))
            self._topology()

    @rule()
    def heal(self) -> None:
        if self.blocked:
            self.blocked.clear()
            self._topology()
            self._connect_all()

    @rule(limit=st.integers(1, 200))
    def calm(self, limit: int) -> None:
        """A quiet spell: messages arrive in order."""
        for _ in range(limit):
            if not self.pool:
                return
            self._deliver(self.pool.pop(0))

    @rule(dt=st.sampled_from([0.5, REQUEST_TIMEOUT, 10.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        for p in self._live():
            p.alloc.handle_timer(self.now)
            self._drain(p)

    @rule(who=st.integers(0, 3), dice=st.integers(0, 1))
    def crash(self, who: int, dice: int) -> None:
        p = self.peers[who % len(self.peers)]
        if p.up and not dice:
            p.up = False
            self._forget_ops(p)
            self._topology()

    def _forget_ops(self, p: Peer) -> None:
        for op, (owner, _) in self.ops.items():
            if owner == p.index:
                self.done.add(op)  # the API call died with the process

    @rule(who=st.integers(0, 3))
    def restart(self, who: int) -> None:
        p = self.peers[who % len(self.peers)]
        if p.up or p.gone:
            return
        p.alloc = self._new(p.index, p.alloc.state.init)
        self.restarts += 1
        if p.saved is not None:
            p.alloc.load_state(p.saved)
        p.up = True
        self._topology()
        for q in self._live():
            if q is not p and self._linked(p.index, q.index):
                self.pool.append(Msg(q.index, p.index, "gossip", encode_gossip(q.alloc.full_gossip())))
                self.pool.append(Msg(p.index, q.index, "gossip", encode_gossip(p.alloc.full_gossip())))

    @rule(who=st.integers(0, 3), victim=st.integers(0, 3), dice=st.integers(0, 2))
    def rmpeer(self, who: int, victim: int, dice: int) -> None:
        p, t = self.peers[who % len(self.peers)], self.peers[victim % len(self.peers)]
        if dice or not p.up or t.up or t.gone or p is t or not p.alloc.ring.seeded_yet:
            return
        t.gone = True  # the admin's promise: it never comes back, and rmpeer runs once
        p.alloc.rmpeer(t.name, self.now)
        self._drain(p)

    @rule(who=st.integers(0, 3), dice=st.integers(0, 2))
    def reset(self, who: int, dice: int) -> None:
        p = self.peers[who % len(self.peers)]
        if dice or not p.up or len(self._live()) < 2:
            return
        p.alloc.handoff(self.now)
        self._drain(p)
        self._forget_ops(p)
        p.up = False
        p.gone = True
        self._topology()

    # --- invariants --------------------------------------------------------------------------------

    @invariant()
    def no_overlap_and_no_duplicates(self) -> None:
        owned = sorted((lo, hi, p.index) for p in self._live() for lo, hi in p.alloc.owned_ranges())
        for (lo1, hi1, p1), (lo2, hi2, p2) in zip(owned, owned[1:], strict=False):
            assert hi1 <= lo2, f"h{p1} [{lo1},{hi1}) overlaps h{p2} [{lo2},{hi2})"
        holders: dict[int, int] = {}
        # a crashed peer still holds its addresses (its containers run): count it too
        for p in self.peers:
            if p.gone:
                continue
            space = p.alloc.space if p.up else None
            items = space.items() if space is not None else [
                (int(ip_interface(a).ip), i) for a, i in (p.saved or {}).get("allocations", [])]
            for addr, _ in items:
                assert addr not in holders, \
                    f"{p.alloc.state.ip(addr)} held by h{holders[addr]} and h{p.index}"
                holders[addr] = p.index

    @invariant()
    def every_operation_ends_by_its_deadline(self) -> None:
        for op, (_, deadline) in self.ops.items():
            assert op in self.done or self.now < deadline, f"operation {op} outlived its deadline"

    def teardown(self) -> None:
        if not self.peers:
            return
        # what this run reached (shown by --hypothesis-show-statistics)
        stats = [p.alloc.stats for p in self.peers]
        event(f"seeded before teardown: {any(p.alloc.ring.seeded_yet for p in self.peers)}")
        event(f"donations: {min(2, sum(s['donations_given'] for s in stats))}")
        event(f"claims granted/refused: {min(1, sum(s['claims_granted'] for s in stats))}/"
              f"{min(1, sum(s['claims_refused'] for s in stats))}")
        event(f"addresses held: {min(3, sum(len(p.alloc.space) for p in self._live()))}")
        event(f"operations succeeded: {min(10, self.succeeded) // 5 * 5}+")
        event(f"gone: {sum(p.gone for p in self.peers)}, restarted: {min(1, self.restarts)}")
        self.heal()
        for _ in range(4):
            live = self._live()
            for p in live:
                for q in live:
                    if p is not q:
                        full = encode_gossip(p.alloc.full_gossip())
                        self.pool.append(Msg(p.index, q.index, "gossip", full))
            while self.pool:
                self._deliver(self.pool.pop(0))
        live = self._live()
        if live:
            digests = {p.alloc.digest() for p in live}
            assert len(digests) == 1, "peers did not converge after healing"
            snaps = {p.alloc.ring.snapshot() for p in live}
            assert len(snaps) == 1
            self.no_overlap_and_no_duplicates()


TestIpamMachine = IpamMachine.TestCase
TestIpamMachine.settings = settings(max_examples=300, stateful_step_count=80, deadline=None)
