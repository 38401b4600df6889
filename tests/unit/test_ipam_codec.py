"""IPAM wire formats, consensus, address space and --ipalloc-init parsing."""

from __future__ import annotations

import pytest

from weftnet.ipam.codec import (
    Donation,
    IpamGossip,
    Refused,
    Released,
    RequestClaim,
    RequestSpace,
    decode_gossip,
    decode_unicast,
    encode_gossip,
    encode_unicast,
)
from weftnet.ipam.consensus import NO_BALLOT, Claim, Paxos, digest_of_claims
from weftnet.ipam.mode import ConsensusInit, ObserverInit, SeedInit, parse_init_mode
from weftnet.ipam.ring import NO_RING, Ring, RingUpdate
from weftnet.ipam.space import Space
from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.framing import pack

A, B, C = 0xA, 0xB, 0xC


def ring() -> Ring:
    r = Ring.seeded(0, 1 << 12, [A, B])
    r.grant(A, 10, 20, C, lambda lo, hi: hi - lo)
    return r


def test_gossip_round_trip_with_shared_values() -> None:
    value = (A, B, C)
    claims = (Claim(A, (2, A), (2, A), value), Claim(B, (2, A), (2, A), value),
              Claim(C, (3, C), NO_BALLOT, ()))
    g = IpamGossip(RingUpdate(0, 1 << 12, NO_RING, ()), claims)
    data = encode_gossip(g)
    assert decode_gossip(data) == g
    assert data.count(pack(list(value))) == 1  # the value crosses once
    g2 = IpamGossip(ring().snapshot())
    assert decode_gossip(g2.encode()) == g2


def test_unicast_round_trips() -> None:
    for msg in (RequestSpace(1, 0, 256), Donation(7, ring().snapshot()), Donation(0, ring().snapshot()),
                Refused(3, "no free space on h1"), RequestClaim(4, 10, "c1"),
                RequestClaim(5, 10, "c1", reclaim=True), Released(10)):
        assert decode_unicast(encode_unicast(msg)) == msg


@pytest.mark.parametrize("obj", [
    [1, 0, 10, [0, 0], [[1, 2, A, 1, 1]], [], []],            # entries of an unseeded ring
    [1, 0, 10, [1, 5], [[5, 11, A, 1, 1]], [], []],           # entry past the ring end
    [1, 0, 10, [1, 5], [[5, 6, A, 1, 1], [5, 7, A, 1, 1]], [], []],  # repeated token
    [1, 0, 10, [1, 5], [[5, 6, A, 0, 1]], [], []],            # version 0
    [1, 0, 10, [1, 5], [[5, 6, A, 1, 2]], [], []],            # free > size
    [1, 0, 10, [1, 5], [[5, 6, True, 1, 1]], [], []],         # bool is not a name
    [1, 0, 10, [1, 0], [], [], []],                           # half-empty ring id
    [1, 10, 10, [0, 0], [], [], []],                          # empty range
    [1, 0, 10, [0, 0], [], [[A, 1, A, 2, A, 1]], [[A]]],      # accepted above promise
    [1, 0, 10, [0, 0], [], [[A, 1, A, 1, A, 0]], []],         # accepted without value
    [1, 0, 10, [0, 0], [], [[A, 1, A, 0, 0, 1]], [[A]]],      # value without acceptance
    [1, 0, 10, [0, 0], [], [[A, 1, 0, 0, 0, 0]], []],         # half-empty ballot
    [1, 0, 10, [0, 0], [], [[A, 1, A, 1, A, 2]], [[A]]],      # value index out of range
    [1, 0, 10, [0, 0], [], [], [[B, A]]],                     # value not ascending
    [2, 0, 10, [0, 0], [], [], []],                           # unknown format
    [1, 0, 10, [0, 0], [], []],                               # wrong arity
])
def test_gossip_decoder_refuses_malformed_payloads(obj: list[object]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_gossip(pack(obj))


@pytest.mark.parametrize("obj", [
    [1, 0, 0, 10], [1, 1, 10, 10], [2, 1, [1, 0, 10, [0, 0], [], [], []]],
    [3, 1, 5], [4, 1, 10, ""], [4, 1, 1 << 32, "c"], [5, 0, 10, "c"], [6, -1], [6, 1 << 32],
    [6, 1, 2], [9], [], "x",
])
def test_unicast_decoder_refuses_malformed_payloads(obj: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_unicast(pack(obj))


def test_gossip_coalescing_is_a_join() -> None:
    r1, r2 = ring(), ring()
    u1 = r1.grant(A, 100, 200, C, lambda lo, hi: hi - lo)
    u2 = r2.grant(B, 3000, 3010, C, lambda lo, hi: hi - lo)
    c1, c2 = Claim(A, (1, A), NO_BALLOT, ()), Claim(A, (2, B), NO_BALLOT, ())
    g1, g2 = IpamGossip(u1, (c1,)), IpamGossip(u2, (c2,))
    m = g1.merge(g2)
    assert m == g2.merge(g1)
    assert m.claims == (c2,)
    assert {e.token for e in m.ring.entries} == {e.token for e in u1.entries + u2.entries}


def paxos_round(nodes: list[Paxos]) -> None:
    """Everyone learns everyone's claims, then thinks, until nothing moves."""
    for _ in range(20):
        moved = False
        for p in nodes:
            for q in nodes:
                p.merge(q.claims.values())
        for p in nodes:
            moved |= p.think() is not None
        if not moved:
            return


def test_paxos_decides_one_value_even_with_duelling_proposers() -> None:
    nodes = [Paxos(n, 2) for n in (A, B, C)]
    nodes[0].propose([A, B])
    nodes[2].propose([B, C])
    paxos_round(nodes)
    values = {p.decided() for p in nodes}
    assert len(values) == 1 and None not in values


def test_paxos_needs_a_quorum_and_keeps_a_chosen_value() -> None:
    a, b, c = Paxos(A, 2), Paxos(B, 2), Paxos(C, 2)
    a.propose([A])
    paxos_round([a])
    assert a.decided() is None  # alone: no quorum
    paxos_round([a, b])
    chosen = a.decided()
    assert chosen == (A,) and b.decided() == chosen
    # a later proposer must re-propose the chosen value
    c.propose([B, C])
    paxos_round([a, b, c])
    assert c.decided() == chosen


def test_non_participants_relay_but_never_vote() -> None:
    relay = Paxos(C, 2, participate=False)
    assert relay.claims == {} and relay.think() is None
    with pytest.raises(LocalProtocolError):
        relay.propose([C])
    a = Paxos(A, 2)
    a.propose([A])
    assert relay.merge(a.claims.values()) == [a.ours]
    assert relay.digest(0, 10) == digest_of_claims(0, 10, a.claims.values())


def test_space_searches() -> None:
    s = Space()
    for addr in (10, 11, 13):
        s.add(addr, "c")
    assert s.lowest_free(10, 20) == 12
    assert s.lowest_free(10, 20, skip=(12,)) == 14
    assert s.lowest_free(10, 12) is None
    assert s.free_in(10, 20) == 7 and s.used_in(0, 100) == 3
    assert s.largest_free_run(10, 20) == (14, 20)
    assert s.largest_free_run(10, 12) is None
    assert s.largest_free_run(0, 10) == (0, 10)
    assert s.remove(11) == "c" and s.remove(11) is None
    assert s.of("c") == [10, 13]
    with pytest.raises(ValueError):
        s.add(10, "d")


def test_parse_init_mode() -> None:
    assert parse_init_mode(None, 3) == ConsensusInit(3)
    assert parse_init_mode("consensus", 1) == ConsensusInit(1)
    assert parse_init_mode("consensus=5", 1) == ConsensusInit(5)
    assert ConsensusInit(5).quorum == 3 and ConsensusInit(2).quorum == 2
    assert parse_init_mode("seed=0a:00:00:00:00:02,0a:00:00:00:00:01", 1) == SeedInit(
        (0x0A0000000001, 0x0A0000000002))
    assert parse_init_mode("observer", 4) == ObserverInit()
    for bad in ("consensus=0", "consensus=x", "seed=", "seed=zz", "paxos"):
        with pytest.raises(LocalProtocolError):
            parse_init_mode(bad, 1)
