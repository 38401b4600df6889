"""The allocator facade, driven over the in-memory IPAM network in virtual time."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from tests.sim.ipam_scale import IpamNet
from weftnet.ipam.allocator import Allocator
from weftnet.ipam.codec import (
    Donation,
    IpamGossip,
    Released,
    RequestClaim,
    RequestSpace,
    decode_unicast,
    encode_unicast,
)
from weftnet.ipam.gossip import IpamGossiper
from weftnet.ipam.mode import ConsensusInit, ObserverInit, SeedInit
from weftnet.ipam.persist import StateError, decode_state, encode_state
from weftnet.ipam.ring import NO_RING, Ring, RingUpdate
from weftnet.ipam.status import format_status
from weftnet.proto.errors import LocalProtocolError

NAME = (0x02 << 40) | 1


def pair(seed: int = 1, universe: str = "10.32.0.0/12") -> IpamNet:
    net = IpamNet(seed, universe=universe)
    net.add_peer(ConsensusInit(2))
    net.add_peer(ConsensusInit(2))
    net.link(0, 1)
    return net


def addr(net: IpamNet, op: int) -> IPv4Interface:
    result = net.results[op]
    assert result.error is None, result.error
    assert result.address is not None
    return result.address


def test_two_peers_agree_and_allocate_unique_addresses() -> None:
    net = pair()
    ops = [net.allocate(i % 2, f"c{i}") for i in range(10)]
    net.run_for(1.0)
    got = [addr(net, op) for op in ops]
    assert len(set(got)) == 10
    assert all(a.network == IPv4Network("10.32.0.0/12") for a in got)
    assert IPv4Address("10.32.0.0") not in {a.ip for a in got}
    assert net.converged()
    net.check_invariants()
    status = net.nodes[0].alloc.status()
    assert status["status"] == "ready" and status["allocated"] == 5
    assert {p["nickname"] for p in status["peers"]} == {"h0", "h1"}
    assert sum(p["addresses"] for p in status["peers"]) == 1 << 20


def test_allocation_is_idempotent_per_identifier_and_free_returns_it() -> None:
    net = pair()
    first = net.allocate(0, "c1")
    net.run_for(1.0)
    again = net.allocate(0, "c1")
    assert addr(net, again) == addr(net, first)
    assert net.nodes[0].alloc.lookup("c1") == [addr(net, first)]
    assert net.free(0, "c1") == 1 and net.nodes[0].alloc.lookup("c1") == []
    assert addr(net, net.allocate(0, "c2")) == addr(net, first)  # lowest free again


def test_subnet_allocation_skips_network_and_broadcast() -> None:
    net = pair()
    net.allocate(0, "warmup")
    net.run_for(1.0)
    ops = [net.allocate(0, f"c{i}", "10.32.1.0/30") for i in range(3)]
    net.run_for(1.0)
    assert addr(net, ops[0]) == IPv4Interface("10.32.1.1/30")
    assert addr(net, ops[1]) == IPv4Interface("10.32.1.2/30")
    assert "no free address in 10.32.1.0/30" in (net.results[ops[2]].error or "")
    bad = net.allocate(0, "x", "192.168.0.0/24")
    assert "not inside the allocation range" in (net.results[bad].error or "")


def test_waits_are_bounded_and_say_why() -> None:
    net = IpamNet(3, timeout=5.0)
    net.add_peer(ConsensusInit(2))
    op = net.allocate(0, "c1")
    net.run_for(4.0)
    assert op not in net.results
    assert "awaiting consensus: 1 of 2 peers known (h0)" in net.nodes[0].alloc.status()["status"]
    net.run_for(2.0)
    error = net.results[op].error or ""
    assert error.startswith("timed out after 5s: awaiting consensus: 1 of 2 peers known")
    assert "waiting for 1 more peer" in error


def test_status_names_a_connected_peer_that_has_not_joined() -> None:
    alloc = Allocator(NAME, "host1", IPv4Network("10.32.0.0/12"), None, ConsensusInit(2), 0.0,
                      random.Random(1))
    alloc.peers_changed({NAME + 1: "host2"}, 0.0)
    assert alloc.status()["status"] == "awaiting consensus: 1 of 2 peers known (host1); waiting for host2"


def test_seed_and_observer_modes() -> None:
    net = IpamNet(4)
    seeds = ((0x02 << 40) | 1, (0x02 << 40) | 2)
    net.add_peer(SeedInit(seeds))
    net.add_peer(SeedInit(seeds))
    obs = net.add_peer(ObserverInit())
    assert "observer: waiting for the ring" in obs.alloc.status()["status"]
    net.link(0, 2)
    net.run_for(0.5)
    assert net.nodes[0].alloc.ring.seeded_yet and obs.alloc.ring.seeded_yet
    assert net.nodes[1].alloc.ring.seeded_yet  # seeded on its own: the same ring
    assert obs.alloc.owned_ranges() == []
    op = net.allocate(2, "c1")
    net.run_for(0.5)
    got = addr(net, op)
    assert obs.alloc.owned_ranges() and int(got.ip) in range(*obs.alloc.owned_ranges()[0])
    net.link(1, 2)
    net.run_for(0.5)
    assert net.converged()
    net.check_invariants()


def test_seed_mode_without_the_seeds_says_who_it_waits_for() -> None:
    alloc = Allocator(NAME, "h", IPv4Network("10.32.0.0/12"), None, SeedInit((NAME + 5,)), 0.0,
                      random.Random(1))
    expected = "waiting for the ring from seed peers 02:00:00:00:00:06 (none reachable)"
    assert alloc.status()["status"] == expected


def test_space_runs_out_with_a_clear_error() -> None:
    net = pair(universe="10.40.0.0/29")
    ops = [net.allocate(i % 2, f"c{i}") for i in range(7)]
    net.run_for(3.0)
    ok = [net.results[o] for o in ops if net.results[o].error is None]
    failed = [net.results[o] for o in ops if net.results[o].error is not None]
    assert len(ok) == 6 and len(failed) == 1  # 8 addresses less network and broadcast
    assert "no free address in 10.40.0.0/29" in (failed[0].error or "")
    net.check_invariants()


def test_claims_inside_and_outside_our_space() -> None:
    net = pair()
    a = net.allocate(0, "c1")
    net.run_for(1.0)
    taken = addr(net, a)
    # another peer claims an address h0 uses: refused with the holder's name
    refused = net.claim(1, "c9", str(taken))
    net.run_for(1.0)
    assert "in use by c1 on h0" in (net.results[refused].error or "")
    # a free address in h0's space: h0 grants it
    free_ip = IPv4Interface((int(taken.ip) + 7, 12))
    granted = net.claim(1, "c9", str(free_ip))
    net.run_for(1.0)
    assert addr(net, granted) == free_ip
    assert net.nodes[1].alloc.lookup("c9") == [free_ip]
    # in our own space, and outside the range (unmanaged)
    assert addr(net, net.claim(0, "c1", str(taken))) == taken
    assert "already in use by c1" in (net.results[net.claim(0, "c2", str(taken))].error or "")
    assert addr(net, net.claim(0, "c3", "192.168.1.5/24")) == IPv4Interface("192.168.1.5/24")
    net.run_for(1.0)
    net.check_invariants()


def test_rmpeer_takes_over_a_dead_peers_space() -> None:
    net = IpamNet(5)
    for _ in range(3):
        net.add_peer(ConsensusInit(3))
    net.link(0, 1)
    net.link(1, 2)
    net.allocate(0, "c0")
    net.run_for(1.0)
    assert net.all_seeded()
    with pytest.raises(LocalProtocolError, match="is reachable"):
        net.rmpeer(0, "h2")
    net.crash(2)
    net.run_for(0.1)
    status = net.nodes[0].alloc.status()
    assert any("h2 is unreachable" in p and "weft rmpeer h2" in p for p in status["problems"])
    owned = net.nodes[0].alloc.ring.owners()[net.nodes[2].name]
    assert net.rmpeer(0, "h2") == owned > 0
    assert net.rmpeer(0, "h2") == 0
    net.run_for(1.0)
    assert net.nodes[1].alloc.ring.owners().get(net.nodes[2].name) is None
    with pytest.raises(LocalProtocolError, match="unknown peer"):
        net.rmpeer(0, "nobody")


def test_claim_from_an_unreachable_owner_times_out_with_advice() -> None:
    net = IpamNet(6, timeout=3.0)
    for _ in range(2):
        net.add_peer(ConsensusInit(2))
    net.link(0, 1)
    net.allocate(0, "c0")
    net.run_for(1.0)
    lo, _ = net.nodes[1].alloc.owned_ranges()[0]
    net.crash(1)
    op = net.claim(0, "c1", f"{IPv4Address(lo + 3)}/12")
    net.run_for(4.0)
    assert "owned by h1, which is unreachable" in (net.results[op].error or "")
    assert "weft rmpeer h1" in (net.results[op].error or "")


def test_handoff_gives_everything_to_a_live_peer() -> None:
    net = pair()
    net.allocate(0, "c0")
    net.run_for(1.0)
    out = net.handoff(0)
    assert out is not None and out[0] == net.nodes[1].name and out[1] > 0
    net.run_for(1.0)
    assert net.nodes[1].alloc.owned_ranges() == [(net.nodes[1].alloc.ring.start, net.nodes[1].alloc.ring.end)]
    assert net.nodes[0].alloc.lookup("c0") == []
    lonely = IpamNet(7)
    lonely.add_peer(ConsensusInit(1))
    assert lonely.handoff(0) is None


def test_restart_keeps_allocations_and_never_overlaps() -> None:
    net = pair()
    ops = [net.allocate(0, f"c{i}") for i in range(3)]
    net.run_for(1.0)
    before = [addr(net, o) for o in ops]
    net.crash(0)
    net.run_for(0.5)
    net.restart(0)
    net.run_for(1.0)
    assert [net.nodes[0].alloc.lookup(f"c{i}")[0] for i in range(3)] == before
    new = addr(net, net.allocate(0, "c9"))
    assert new not in before
    net.check_invariants()


def test_rival_rings_merge_and_reclaim_addresses_in_use() -> None:
    net = IpamNet(8)
    names = [(0x02 << 40) | (i + 1) for i in range(4)]
    for i in range(4):
        net.add_peer(SeedInit((names[0],)) if i < 2 else SeedInit((names[2], names[3])))
    net.link(0, 1)
    net.link(2, 3)
    ops = {i: net.allocate(i, f"c{i}") for i in range(4)}
    net.run_for(1.0)
    got = {i: addr(net, ops[i]) for i in range(4)}
    net.link(1, 2)  # the rings meet: the two-seed ring wins
    net.run_for(3.0)
    assert net.converged()
    net.check_invariants()
    for i in range(4):
        assert net.nodes[i].alloc.lookup(f"c{i}") == [got[i]]
    loser = net.nodes[0].alloc.status()
    assert any("met another ring" in m["text"] and m["ours_lost"] for m in loser["merges"])
    # h0's 10.32.0.1 collides with h2's: both of them hear "duplicate" (more: test_ipam_merge)
    clash = [p for p in net.nodes[0].alloc.status()["problems"] if "duplicate" in p]
    assert got[0] == got[2] and clash and "in use by c2 on h2" in clash[0]
    there = [p for p in net.nodes[2].alloc.status()["problems"] if "duplicate" in p]
    assert there and f"{got[0].ip} is used by c2 here and by c0 on h0" in there[0]


def test_gossip_for_another_range_is_reported_not_merged() -> None:
    alloc = Allocator(NAME, "h", IPv4Network("10.32.0.0/12"), None, ConsensusInit(1), 0.0,
                      random.Random(1))
    alloc.allocate(1, "c", None, 0.0)
    assert alloc.next_result() is not None
    other = Ring.seeded(0, 256, [NAME + 1])
    gossiper = IpamGossiper(alloc)
    assert gossiper.on_gossip(IpamGossip(other.snapshot()), 0.0) is None
    assert any("every peer must be launched with the same --ipalloc-range" in p
               for p in alloc.status()["problems"])


def test_the_channel_handles_gossip_at_the_now_the_mesh_gives_it() -> None:
    alloc = Allocator(NAME, "h", IPv4Network("10.32.0.0/12"), None, ConsensusInit(2), 0.0,
                      random.Random(1), timeout=30.0)
    gossiper = IpamGossiper(alloc)
    alloc.allocate(1, "c", None, 0.0)  # waits for a second peer
    nothing = IpamGossip(RingUpdate(alloc.ring.start, alloc.ring.end, NO_RING, ()))
    gossiper.on_gossip(nothing, 29.0)
    assert alloc.next_result() is None
    gossiper.on_gossip(nothing, 31.0)   # past the deadline: the operation ends in this call
    result = alloc.next_result()
    assert result is not None and result.op_id == 1 and "timed out" in (result.error or "")
    alloc.allocate(2, "d", None, 31.0)
    gossiper.on_gossip_unicast(NAME + 1, encode_unicast(Released(alloc.ring.start + 9)), 62.0)
    result = alloc.next_result()
    assert result is not None and result.op_id == 2 and "timed out" in (result.error or "")


def test_a_repeated_request_gets_the_same_answer_not_a_second_grant() -> None:
    alloc = Allocator(NAME, "h", IPv4Network("10.32.0.0/12"), None, SeedInit((NAME,)), 0.0,
                      random.Random(1))
    asker = NAME + 1
    alloc.peers_changed({asker: "h2"}, 0.0)
    answers = []
    start, end = alloc.ring.start, alloc.ring.end
    for msg in (RequestSpace(7, start, end), RequestSpace(7, start, end),
                RequestClaim(8, start + 5, "c"), RequestClaim(8, start + 5, "c")):
        alloc.on_unicast(asker, encode_unicast(msg), 1.0)
        answers.append(alloc.messages_to_send())
    assert answers[0] == answers[1] and answers[2] == answers[3]
    assert isinstance(decode_unicast(answers[0][0][1]), Donation)
    assert isinstance(decode_unicast(answers[2][0][1]), Donation)
    assert alloc.stats["donations_given"] == 1 and alloc.stats["claims_granted"] == 1


def test_gossiper_digest_matches_full_gossip() -> None:
    net = pair()
    net.allocate(0, "c")
    net.run_for(1.0)
    g = IpamGossiper(net.nodes[1].alloc)
    full = g.gossip()
    assert full is not None and g.digest() == g.digest_of(full)
    assert g.digest() == net.nodes[0].alloc.digest()
    before = IpamGossiper(Allocator(NAME + 9, "x", IPv4Network("10.32.0.0/12"), None, ConsensusInit(3),
                                    0.0, random.Random(1)))
    early = before.gossip()
    assert early is not None and before.digest() == before.digest_of(early)


def test_persisted_state_round_trip_and_validation() -> None:
    net = pair()
    net.allocate(0, "c1")
    net.run_for(1.0)
    state = net.nodes[0].alloc.to_state()
    assert decode_state(encode_state(state)).allocations[0][1] == "c1"
    fresh = Allocator(net.nodes[0].name, "h0", IPv4Network("10.32.0.0/12"), None, ConsensusInit(2),
                      0.0, random.Random(1))
    assert fresh.load_state(state) == []
    assert fresh.lookup("c1") == net.nodes[0].alloc.lookup("c1")
    assert fresh.digest() == net.nodes[0].alloc.digest()
    moved = Allocator(net.nodes[0].name, "h0", IPv4Network("10.44.0.0/16"), None, ConsensusInit(2),
                      0.0, random.Random(1))
    warnings = moved.load_state(state)
    assert any("range changed from 10.32.0.0/12 to 10.44.0.0/16" in w for w in warnings)
    assert not moved.ring.seeded_yet and moved.lookup("c1") == []
    other = Allocator(NAME + 77, "x", IPv4Network("10.32.0.0/12"), None, ConsensusInit(2), 0.0,
                      random.Random(1))
    assert "discarded" in other.load_state(state)[0]
    for bad in (b"", b"{}", b"[]", b'{"format": 1}', encode_state({**state, "ring": [1]}),
                encode_state({**state, "allocations": [["10.32.0.1/12", "a"], ["10.32.0.1/12", "b"]]}),
                encode_state({**state, "peer": "zz"})):
        with pytest.raises(StateError):
            decode_state(bad)


def test_status_text_shows_every_peer_and_what_to_do() -> None:
    net = pair()
    net.allocate(0, "c0")
    net.run_for(1.0)
    net.crash(1)
    text = format_status(net.nodes[0].alloc.status())
    assert "Status: ready" in text and "Range: 10.32.0.0/12" in text
    assert "(h0)" in text and "524288 IPs (50.0% of total)" in text
    assert "(h1)" in text and "- unreachable!" in text
    assert "problem: h1 is unreachable and owns 524288 addresses" in text


def test_a_peer_back_from_the_dead_after_rmpeer_reclaims_or_reports_duplicates() -> None:
    net = pair()
    ops = [net.allocate(1, f"old{i}") for i in range(2)]
    net.run_for(1.0)
    first, second = (addr(net, o) for o in ops)
    net.crash(1)
    net.run_for(0.1)
    assert net.rmpeer(0, "h1") == 1 << 19
    taken = net.claim(0, "new", str(first))  # h0 now owns it and hands it out again
    net.run_for(0.5)
    assert addr(net, taken) == first
    net.restart(1)  # the admin was wrong: h1 comes back with its containers
    net.run_for(3.0)
    back = net.nodes[1].alloc
    assert back.lookup("old0") == [first] and back.lookup("old1") == [second]
    orphans = back.orphans()
    assert orphans[int(first.ip)][1] == "h0: in use by new on h0"  # reported, not hidden
    assert int(second.ip) not in orphans  # granted back by its new owner
    assert any("duplicate: " + str(first.ip) in p for p in back.status()["problems"])
    net.check_invariants()


def test_a_donor_that_has_not_heard_of_the_ring_yet_is_asked_again() -> None:
    """Found on three real hosts (tests/netns/test_ipv6_overlay.py): a peer seeds the ring
    and at once asks a peer for space there, whose copy of the ring is still on its way;
    "not seeded here yet" is no reason to fail the allocation."""
    a_name, b_name = NAME, NAME + 1
    # a seeds the ring at once (seed=a,b); b learns it by gossip only, which is delayed here
    a = Allocator(a_name, "a", IPv4Network("10.32.0.0/12"), None, SeedInit((a_name, b_name)),
                  0.0, random.Random(1))
    b = Allocator(b_name, "b", IPv4Network("10.32.0.0/12"), None, ObserverInit(), 0.0,
                  random.Random(2))
    a.peers_changed({b_name: "b"}, 0.0)
    b.peers_changed({a_name: "a"}, 0.0)
    a.allocate(1, "c1", IPv4Network("10.40.0.0/24"), 0.0)   # b's half, once seeded

    def unicasts(now: float, rounds: int = 3) -> None:
        for _ in range(rounds):
            for src, dst, src_name in ((a, b, a_name), (b, a, b_name)):
                for _to, payload in src.messages_to_send():
                    dst.on_unicast(src_name, payload, now)

    assert a.ring.seeded_yet and not b.ring.seeded_yet
    unicasts(0.0, rounds=1)                                  # b refuses: not seeded
    assert not b.ring.seeded_yet and a.next_result() is None   # ... which a does not take as final
    news = a.take_news()
    assert news is not None
    b.on_gossip(news, 0.5)
    for now in (1.5, 2.5):
        a.handle_timer(now)
        unicasts(now)
        news = a.take_news()
        if news is not None:
            b.on_gossip(news, now)
    result = a.next_result()
    assert result is not None and result.error is None, result
    assert result.address is not None and result.address.ip in IPv4Network("10.40.0.0/24")
