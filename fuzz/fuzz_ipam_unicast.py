"""Fuzz the IPAM unicast decoder and the allocator's handling of it: any bytes decode or
raise RemoteProtocolError (and ``on_unicast`` counts and drops them); whatever decodes
re-encodes to the same message and, sent by a peer, never raises, never gives away an
address in use, and leaves every address in use inside our ranges or marked for
re-claiming."""

from __future__ import annotations

import random
from ipaddress import IPv4Network

from weftnet.ipam.allocator import Allocator
from weftnet.ipam.codec import (
    LIMIT_V6,
    Donation,
    Refused,
    Released,
    RequestClaim,
    RequestSpace,
    decode_unicast,
    encode_unicast,
)
from weftnet.ipam.mode import SeedInit
from weftnet.ipam.ring import Ring
from weftnet.proto.errors import RemoteProtocolError

UNIVERSE = IPv4Network("10.9.0.0/24")
START = int(UNIVERSE.network_address)
ME, OTHER = 0x0A, 0x0B

SEEDS = [
    encode_unicast(RequestSpace(1, START, START + 256)),
    encode_unicast(RequestClaim(2, START + 1, "c9")),
    encode_unicast(RequestClaim(3, START + 200, "c9")),
    encode_unicast(Donation(1, Ring.seeded(START, START + 256, [OTHER]).snapshot())),
    encode_unicast(Refused(1, "no free space")),
    encode_unicast(Released(1 << 100)),     # an IPv6 ring's address (a wide byte string)
]


def test_one_input(data: bytes) -> None:
    try:  # the IPv6 channel's decoder: wide values (9..17-byte strings) round-trip too
        wide = decode_unicast(data, LIMIT_V6)
    except RemoteProtocolError:
        wide = None
    if wide is not None:
        assert decode_unicast(encode_unicast(wide), LIMIT_V6) == wide
    a = Allocator(ME, "me", UNIVERSE, None, SeedInit((ME, OTHER)), 0.0, random.Random(1))
    a.peers_changed({OTHER: "other"}, 0.0)
    for i in range(3):
        a.allocate(i + 1, f"c{i}", None, 0.0)
    in_use = dict(a.space.items())
    try:
        msg = decode_unicast(data)
    except RemoteProtocolError:
        a.on_unicast(OTHER, data, 1.0)
        assert a.stats["bad_unicast"] == 1
        return
    assert decode_unicast(encode_unicast(msg)) == msg
    a.on_unicast(OTHER, data, 1.0)
    a.on_unicast(OTHER, data, 1.0)  # duplicated
    for addr in in_use:
        e = a.ring.entry_at(addr)
        assert (e is not None and e.owner == ME) or addr in a.orphans()
    for _, payload in a.messages_to_send():
        decode_unicast(payload)
    a.status()


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
