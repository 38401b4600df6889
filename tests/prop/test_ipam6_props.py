"""The IPAM laws over 128-bit (IPv6) ranges, under hypothesis.

1. Ring merge stays a join when tokens, ends and free counts pass 64 bits (the hashes and
   the codec switch to their wide forms there), and gossip and unicasts round-trip through
   the codec (wide integers as canonical byte strings) and the JSON persistence.
2. ``test_ipam_props``'s hostile-scheduler machine (delivery in any order, duplicates,
   drops, partitions, crashes and restarts from persisted state, rmpeer, handoff, claims)
   run over an IPv6 range placed above 2^64, so every ring value is wide: no two peers own
   overlapping ranges, no address is held twice, operations end by their deadline, and the
   peers converge after healing.
3. Allocation from a /64 (2^64 addresses, more than any 64-bit ring could hold): the
   addresses handed out are distinct, inside the subnet, never its all-zero anycast address.
"""

from __future__ import annotations

import json
import random
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet.ipam.allocator import Allocator
from weftnet.ipam.codec import (
    LIMIT_V6,
    IpamGossip,
    Released,
    RequestClaim,
    RequestSpace,
    decode_gossip,
    decode_ring_obj,
    decode_unicast,
    encode_gossip,
    encode_unicast,
    ring_wire,
)
from weftnet.ipam.mode import SeedInit
from weftnet.ipam.persist import decode_state, encode_state
from weftnet.ipam.ring import Entry, Ring, RingUpdate

from .test_ipam_props import IpamMachine

RANGE6 = IPv6Network("fd32:7765:6674::/48")
START6 = int(RANGE6.network_address)
END6 = START6 + RANGE6.num_addresses
NAMES = (1, 2, 3)


@st.composite
def wide_updates(draw: Any) -> RingUpdate:
    ring_id = draw(st.sampled_from([(1, 11), (1, 11), (2, 22)]))
    # tokens near both ends and in the middle of a 2^80-address range
    spots = st.one_of(st.integers(START6, START6 + 64), st.integers(END6 - 64, END6 - 1),
                      st.integers(START6, END6 - 1))
    tokens = sorted(draw(st.sets(spots, max_size=6)))
    entries = []
    for t in tokens:
        end = draw(st.one_of(st.integers(t + 1, min(END6, t + 64)), st.integers(t + 1, END6)))
        entries.append(Entry(t, end, draw(st.sampled_from(NAMES)), draw(st.integers(1, 4)),
                             draw(st.one_of(st.just(end - t), st.integers(0, end - t)))))
    return RingUpdate(START6, END6, ring_id, tuple(entries))


def state_after(*updates: RingUpdate) -> tuple[Any, ...]:
    r = Ring(START6, END6)
    for u in updates:
        r.merge(u)
    return (r.ring_id, tuple(r.entries()), r.digest())


@given(wide_updates(), wide_updates(), wide_updates())
def test_wide_ring_merge_is_a_join(a: RingUpdate, b: RingUpdate, c: RingUpdate) -> None:
    assert state_after(a, b) == state_after(b, a)
    assert state_after(a, b, c) == state_after(c, a, b) == state_after(b, c, a)
    assert state_after(a, a, b, a) == state_after(a, b)
    assert state_after(a.merge(b)) == state_after(a, b)


@given(wide_updates())
def test_wide_gossip_round_trips_through_codec_and_json(a: RingUpdate) -> None:
    g = IpamGossip(a)
    assert decode_gossip(encode_gossip(g), LIMIT_V6) == g
    as_json = json.loads(json.dumps(ring_wire(a, (), packable=False)))
    assert decode_ring_obj(as_json, LIMIT_V6)[0] == a


@given(st.integers(START6, END6 - 1), st.integers(1, 2**63 - 1))
def test_wide_unicasts_round_trip(addr: int, req: int) -> None:
    for msg in (RequestSpace(req, START6, END6), RequestClaim(req, addr, "c1"),
                RequestClaim(req, addr, "c1", True), Released(addr)):
        assert decode_unicast(encode_unicast(msg), LIMIT_V6) == msg


def test_wide_values_are_canonical_and_bounded() -> None:
    from weftnet.proto.errors import RemoteProtocolError
    from weftnet.proto.framing import pack
    for bad in (b"\x00" + (5).to_bytes(16, "big"), (5).to_bytes(8, "big"), b"\x01" * 18):
        try:
            decode_unicast(pack([6, bad]), LIMIT_V6)
        except RemoteProtocolError:
            continue
        raise AssertionError(f"{bad!r} accepted")
    try:  # an IPv4 channel never takes a wide value
        decode_unicast(encode_unicast(Released(START6)))
    except RemoteProtocolError:
        pass
    else:
        raise AssertionError("IPv4 decoder took a 128-bit address")


class Ipam6Machine(IpamMachine):
    UNIVERSE = IPv6Network("fd32:7765:6674:1::ffe0/123")  # 32 addresses, every one above 2^64
    SUBNET = "fd32:7765:6674:1::fff0/124"


TestIpam6Machine = Ipam6Machine.TestCase
TestIpam6Machine.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 40), st.integers(0, 3))
def test_allocating_from_a_slash_64(seed: int, count: int, subnet_pick: int) -> None:
    subnet = (IPv6Network((START6 + (subnet_pick << 64), 64)) if subnet_pick else None)
    names = (0x100, 0x101)
    allocs = [Allocator(n, f"h{i}", RANGE6, IPv6Network("fd32:7765:6674:0::/64"), SeedInit(names),
                        0.0, random.Random(seed + i)) for i, n in enumerate(names)]
    for a in allocs:
        a.peers_changed({n: f"h{i}" for i, n in enumerate(names)}, 0.0)
    got: list[IPv6Interface] = []
    for k in range(count):
        a = allocs[k % 2]
        a.allocate(k + 1, f"c{k}", subnet, 0.0)
        # a peer asks the other for space when its half lies elsewhere: deliver unicasts
        for _ in range(4):
            for i, src in enumerate(allocs):
                for dst, payload in src.messages_to_send():
                    allocs[names.index(dst)].on_unicast(names[i], payload, 0.0)
                news = src.take_news()
                if news is not None:
                    allocs[1 - i].on_gossip(decode_gossip(encode_gossip(news), LIMIT_V6), 0.0)
        r = a.next_result()
        assert r is not None and r.address is not None, r
        assert isinstance(r.address, IPv6Interface)
        got.append(r.address)
    net = subnet or IPv6Network("fd32:7765:6674:0::/64")
    assert len({g.ip for g in got}) == len(got)
    assert all(g.ip in net and g.network == net for g in got)
    assert all(g.ip != net.network_address for g in got)
    # persistence keeps them (JSON with integers past 64 bits)
    for a in allocs:
        back = decode_state(encode_state(a.to_state()))
        assert {str(i) for i, _ in back.allocations} == {str(i) for i in sum(
            (a.lookup(ident) for ident in {x for _, x in a.space.items()}), [])}
        assert all(isinstance(i.ip, IPv6Address) for i, _ in back.allocations)
