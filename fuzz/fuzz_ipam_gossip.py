"""Fuzz the IPAM gossip decoder and merge: any bytes decode or raise RemoteProtocolError;
whatever decodes re-encodes to the same payload, and merging it into a live allocator
(seeded, or still agreeing on the seed peers) never raises, is idempotent, keeps the
allocator's own addresses inside its own ranges or marked for re-claiming, and keeps the
digest of its full state consistent."""

from __future__ import annotations

import random
from ipaddress import IPv4Network

from weftnet.ipam.allocator import Allocator
from weftnet.ipam.codec import LIMIT_V6, IpamGossip, decode_gossip, encode_gossip
from weftnet.ipam.consensus import Claim
from weftnet.ipam.mode import ConsensusInit, SeedInit
from weftnet.ipam.ring import NO_RING, Entry, Ring, RingUpdate, ring_id_of
from weftnet.proto.errors import RemoteProtocolError

UNIVERSE = IPv4Network("10.9.0.0/24")
START = int(UNIVERSE.network_address)
ME, OTHER = 0x0A, 0x0B


def _seeded() -> Allocator:
    a = Allocator(ME, "me", UNIVERSE, None, SeedInit((ME, OTHER)), 0.0, random.Random(1))
    for i in range(3):
        a.allocate(i + 1, f"c{i}", None, 0.0)
    return a


def _agreeing() -> Allocator:
    a = Allocator(ME, "me", UNIVERSE, None, ConsensusInit(3), 0.0, random.Random(1))
    a.allocate(1, "c", None, 0.0)
    return a


def _seeds() -> list[bytes]:
    ring = Ring.seeded(START, START + 256, [ME, OTHER])
    grant = ring.grant(OTHER, START + 200, START + 210, 0x0C, lambda lo, hi: hi - lo)
    rival = Ring.seeded(START, START + 256, [0x0C, 0x0D, 0x0E])
    claims = (Claim(OTHER, (2, OTHER), (2, OTHER), (ME, OTHER, 0x0C)), Claim(0x0C, (2, OTHER), (0, 0), ()))
    return [
        encode_gossip(IpamGossip(ring.snapshot())),
        encode_gossip(IpamGossip(grant)),
        encode_gossip(IpamGossip(rival.snapshot())),
        encode_gossip(IpamGossip(RingUpdate(START, START + 256, NO_RING, ()), claims)),
        encode_gossip(IpamGossip(Ring.seeded(0, 1 << 16, [OTHER]).snapshot())),
    ]


# found by atheris: an entry overlapping ours must not let us allocate inside it
OVERLAP = encode_gossip(IpamGossip(RingUpdate(START, START + 256, ring_id_of([ME, OTHER]), (
    Entry(START, START + 128, ME, 1, 128), Entry(START + 1, START + 200, OTHER, 2, 72),
    Entry(START + 200, START + 210, 0x0C, 2, 10), Entry(START + 210, START + 256, OTHER, 2, 46)))))
WIDE = 1 << 100  # an IPv6 ring: values past 64 bits travel as byte strings
WIDE_RING = Ring.seeded(WIDE, WIDE + (1 << 70), [ME, OTHER]).snapshot()
SEEDS = _seeds() + [OVERLAP, encode_gossip(IpamGossip(WIDE_RING))]


def test_one_input(data: bytes) -> None:
    try:  # the IPv6 channel's decoder: wide values (9..17-byte strings) round-trip too
        wide = decode_gossip(data, LIMIT_V6)
    except RemoteProtocolError:
        wide = None
    if wide is not None:
        assert decode_gossip(encode_gossip(wide), LIMIT_V6) == wide
    try:
        g = decode_gossip(data)
    except RemoteProtocolError:
        return
    assert decode_gossip(encode_gossip(g)) == g
    for alloc in (_seeded(), _agreeing()):
        alloc.on_gossip(g, 1.0)
        assert alloc.on_gossip(g, 1.0) is None or alloc.ring.overlaps()  # idempotent but for repairs
        full = alloc.full_gossip()
        assert alloc.digest() == alloc.digest_of(full)
        orphans = alloc.orphans()
        for addr, _ in alloc.space.items():
            e = alloc.ring.entry_at(addr)
            assert (e is not None and e.owner == ME) or addr in orphans
        alloc.status()
        alloc.handle_timer(100.0)
        alloc.messages_to_send()


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
