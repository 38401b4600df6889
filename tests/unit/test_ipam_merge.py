"""Two rings seeded independently that meet: the merge, its holds and its duplicates.

Driven over the in-memory IPAM network (``tests/sim/ipam_scale.IpamNet``) in virtual
time, plus one allocator fed by hand where the order of messages matters. What the issue
asks: never a crash; both sides say what happened and how to resolve it; allocations go
on working on each side; an address is never handed out twice by a peer that has heard
of the other ring (addresses both rings handed out *before* they met are reported as
duplicates on both sides, and settle once one of the two is detached).
"""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sim.ipam_scale import IpamNet
from weftnet.ipam.allocator import ORPHAN_RETRY, Allocator
from weftnet.ipam.codec import IpamGossip, decode_unicast
from weftnet.ipam.merge import DUPLICATE_TTL, MAX_HOLD, MERGE_HOLD, Meetings, carve, join, within
from weftnet.ipam.mode import ConsensusInit, SeedInit
from weftnet.ipam.ring import Entry, RingUpdate
from weftnet.ipam.status import format_status

UNIVERSE = IPv4Network("10.32.0.0/12")


def two_pairs(seed: int, *, jitter: float = 0.0) -> IpamNet:
    """h0-h1 and h2-h3, each pair seeding its own ring by consensus=2 (as two pairs of
    hosts launched apart would), each peer with two containers."""
    net = IpamNet(seed, jitter=jitter)
    for _ in range(4):
        net.add_peer(ConsensusInit(2))
    net.link(0, 1)
    net.link(2, 3)
    for i in range(4):
        for k in range(2):
            net.allocate(i, f"c{i}{k}")
    net.run_for(2.0)
    assert all(r.error is None for r in net.results.values())
    return net


def held_by(net: IpamNet) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for n in net.live():
        for addr, _ in n.alloc.space.items():
            out.setdefault(addr, []).append(n.index)
    return out


def duplicates(net: IpamNet) -> set[int]:
    return {a for a, who in held_by(net).items() if len(who) > 1}


def problems(net: IpamNet, i: int) -> list[str]:
    return [p for p in net.nodes[i].alloc.status()["problems"] if "duplicate" in p]


def test_two_pairs_meet_merge_report_duplicates_and_keep_allocating() -> None:
    net = two_pairs(11)
    before = duplicates(net)
    assert before, "both rings start at the bottom of each half: they collide"
    net.link(1, 2)  # the pairs meet
    net.run_for(0.2)
    assert net.converged()
    net.check_invariants()
    lost = [n.index for n in net.nodes if any(m.ours_lost for m in n.alloc.state.merges.records())]
    won = [n.index for n in net.nodes if n.index not in lost]
    assert len(lost) == 2 and len(won) == 2 and {lost[0] // 2} == {lost[1] // 2}
    for i in range(4):
        st = net.nodes[i].alloc.status()
        assert len(st["merges"]) == 1 and st["status"] == "ready"
        text = format_status(st)
        assert "rings met: " in text
        if i in lost:
            assert "this peer's ring" in text and "which won" in text
        else:
            assert "gave way" in text and "re-claim their addresses in use from our owners" in text
    # every duplicate is reported on both sides, with the fix
    for addr in before:
        ip = str(IPv4Address(addr))
        for i in held_by(net)[addr]:
            assert any(ip in p and "detach one of them" in p for p in problems(net, i)), (i, ip)
    # allocations go on on both sides (the holds make them wait a few seconds, no more)
    ops = {i: net.allocate(i, f"new{i}") for i in range(4)}
    net.run_for(MERGE_HOLD + 3.0)
    new = {i: net.results[op].address for i, op in ops.items()}
    assert all(a is not None for a in new.values()), [net.results[op].error for op in ops.values()]
    assert duplicates(net) == before  # nothing handed out twice since they met
    # detach one of each duplicate (one on the losing side, one on the winning side): settled
    for k, addr in enumerate(sorted(before)):
        side = lost if k % 2 == 0 else won
        holder = next(i for i in held_by(net)[addr] if i in side)
        ident = net.nodes[holder].alloc.space.holder(addr)
        assert ident is not None and net.free(holder, ident) == 1
    net.run_for(ORPHAN_RETRY + 2.0)
    assert not duplicates(net)
    for i in range(4):
        assert not problems(net, i), problems(net, i)
        assert not net.nodes[i].alloc.orphans()
    net.check_invariants()
    assert net.converged()


def test_a_peer_two_hops_away_hears_of_the_meeting_and_holds() -> None:
    net = two_pairs(12)
    net.link(1, 2)
    net.run_for(0.05)
    for i in range(4):
        assert net.nodes[i].alloc.state.merges.records(), f"h{i} never heard of the other ring"
        assert net.nodes[i].alloc.state.merges.held(net.now)
    net.run_for(MAX_HOLD)
    assert all(not n.alloc.state.merges.held(net.now) for n in net.nodes)
    assert all(n.alloc.get_timer() is None or n.alloc.get_timer() > net.now for n in net.nodes)  # type: ignore[operator]


def test_the_owner_holds_until_the_losing_peer_has_reclaimed() -> None:
    """The race the hold closes: the winner hears the losing ring, and is asked for an
    address, before the loser's re-claims reach it."""
    w, w2, l_name = 0x0A, 0x0B, 0x01
    winner = Allocator(w, "w", UNIVERSE, None, SeedInit((w, w2)), 0.0, random.Random(1))
    loser = Allocator(l_name, "l", UNIVERSE, None, SeedInit((l_name,)), 0.0, random.Random(2))
    for k in range(3):
        loser.allocate(k + 1, f"l{k}", None, 0.0)
    theirs = {r.address for r in iter(loser.next_result, None)}
    assert IPv4Interface("10.32.0.1/12") in theirs
    for a in (winner, loser):
        a.peers_changed({w: "w", l_name: "l", w2: "w2"}, 0.0)
    relay = winner.on_gossip(loser.full_gossip(), 0.0)
    assert isinstance(relay, IpamGossip) and relay.ring.ring_id == loser.ring.ring_id
    winner.allocate(10, "w1", None, 0.1)
    assert winner.next_result() is None  # held: 10.32.0.1 may be in use over there
    assert "allocation there waits" in winner.why(winner.state.ops[10])
    # the loser hears the winner, adopts its ring and re-claims; the winner grants
    loser.on_gossip(winner.full_gossip(), 0.1)
    assert loser.ring.ring_id == winner.ring.ring_id
    for dst, payload in loser.messages_to_send():
        if dst == w:
            assert decode_unicast(payload).reclaim  # type: ignore[union-attr]
            winner.on_unicast(l_name, payload, 0.2)
    for dst, payload in winner.messages_to_send():
        if dst == l_name:
            loser.on_unicast(w, payload, 0.3)
    assert not loser.orphans()
    winner.handle_timer(0.1 + MERGE_HOLD)
    result = winner.next_result()
    assert result is not None and result.address is not None
    assert result.address not in theirs


def test_seed_peer_restarting_after_its_ring_gave_way_starts_no_new_meeting() -> None:
    net = IpamNet(13)
    names = [(0x02 << 40) | (i + 1) for i in range(3)]
    net.add_peer(SeedInit((names[0],)))
    net.add_peer(SeedInit((names[1], names[2])))
    net.add_peer(SeedInit((names[1], names[2])))
    net.link(1, 2)
    net.allocate(0, "c0")
    net.run_for(0.5)
    net.link(0, 1)
    net.run_for(MAX_HOLD)
    met = {n.index: dict(n.alloc.stats) for n in net.nodes}
    net.crash(0)
    net.run_for(0.5)
    net.restart(0)  # re-seeds its own ring at construction, then loads the winner's
    net.run_for(1.0)
    assert not net.nodes[0].alloc.state.merges.records()  # its past, not a meeting
    for n in net.nodes[1:]:
        assert n.alloc.stats["rings_met"] == met[n.index]["rings_met"]
        assert not n.alloc.state.merges.held(net.now)
    assert net.nodes[0].alloc.lookup("c0") and net.converged()


def test_holds_follow_the_losing_ring_and_are_capped() -> None:
    m = Meetings()
    lower = RingUpdate(0, 256, (1, 5), (Entry(0, 128, 1, 1, 100), Entry(128, 256, 2, 1, 128)))
    assert m.heard(lower, (2, 9), 0.0) == lower
    assert m.held(1.0) == [(0, 128)]  # only where it had addresses in use
    assert m.heard(lower, (2, 9), 1.0) is None  # no news: nothing to relay, but heard again
    assert m.held(0.5 + MERGE_HOLD) == [(0, 128)] and m.hold_ends(2.0) == 1.0 + MERGE_HOLD
    assert m.held(1.0 + MERGE_HOLD) == [] and m.hold_ends(1.0 + MERGE_HOLD) is None
    for t in range(2, 40):  # a peer that never stops sending it: the hold is capped
        m.heard(lower, (2, 9), float(t))
    assert m.held(MAX_HOLD + 0.5) == []
    m.heard(lower, (2, 9), 100.0)  # back after a silence: a new stretch
    assert m.held(101.0) == [(0, 128)]
    m.note_duplicate(7, 0xB, "theirs", "ours", 0.0)
    assert m.drop_duplicate(7, 0xC) is None  # only the peer that uses it can settle it
    m.expire(DUPLICATE_TTL - 1)
    assert 7 in m.duplicates and m.next_expiry() == DUPLICATE_TTL
    m.expire(DUPLICATE_TTL)
    assert not m.duplicates


def test_range_helpers() -> None:
    assert join([(5, 8), (1, 3), (3, 4), (7, 9)]) == [(1, 4), (5, 9)]
    held = [(2, 4), (6, 8)]
    assert carve(0, 10, held) == [(0, 2), (4, 6), (8, 10)]
    assert carve(2, 4, held) == []
    assert carve(3, 7, held) == [(4, 6)]
    assert within(3, 7, held) == [(3, 4), (6, 7)]
    assert within(0, 2, held) == []


# --- the property: rings of random sizes meet at random moments -------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), sizes=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       before=st.lists(st.integers(0, 5), min_size=6, max_size=6),
       bridges=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=3),
       after=st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 0.008)), max_size=16),
       jitter=st.sampled_from([0.0, 0.01, 0.05]))
def test_meeting_rings_never_hand_out_an_address_twice(
        seed: int, sizes: tuple[int, int], before: list[int], bridges: list[tuple[int, int]],
        after: list[tuple[int, float]], jitter: float) -> None:
    """Whatever the sizes, links and timing: every peer that has heard of the other ring
    hands out only addresses nobody uses; the pre-existing duplicates are reported on both
    sides; everyone converges; allocations asked for after the meeting all succeed."""
    net = IpamNet(seed, jitter=jitter)
    groups = ([], [])  # type: tuple[list[int], list[int]]
    for g, size in enumerate(sizes):
        for _ in range(size):
            groups[g].append(net.add_peer(ConsensusInit(size)).index)
        for a, b in zip(groups[g], groups[g][1:], strict=False):
            net.link(a, b)
    n = len(net.nodes)
    for i in range(n):
        for k in range(before[i % 6]):
            net.allocate(i, f"p{i}-{k}")
    net.run_for(3.0)
    dup_before = duplicates(net)
    for a, b in bridges:
        net.link(groups[0][a % sizes[0]], groups[1][b % sizes[1]])
    ops = []
    for k, (who, gap) in enumerate(after):  # a burst while the rings merge
        net.run_for(gap)
        node = net.nodes[who % n]
        heard = bool(node.alloc.state.merges.records())
        if heard:  # before a peer has heard, nobody can help it: that window is not ours
            ops.append(net.allocate(node.index, f"a{k}"))
            assert duplicates(net) <= dup_before, f"seed {seed}: handed out twice"
    net.run_for(MAX_HOLD + 5.0)
    assert duplicates(net) <= dup_before, f"seed {seed}: handed out twice"
    assert all(net.results[op].error is None for op in ops), [net.results[op].error for op in ops]
    assert net.converged()
    net.check_invariants()
    holders = held_by(net)
    for addr in dup_before:
        for i in holders[addr]:
            assert any(str(IPv4Address(addr)) in p for p in problems(net, i)), f"seed {seed}: h{i}"
