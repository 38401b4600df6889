"""Fuzz the persisted IPAM state decoder and loader: any bytes decode or raise StateError
(a RemoteProtocolError); whatever decodes loads into a fresh allocator without raising,
and the loaded allocator persists again to something that decodes."""

from __future__ import annotations

import random
from ipaddress import IPv4Network

from weftnet.ipam.allocator import Allocator
from weftnet.ipam.mode import ConsensusInit, SeedInit
from weftnet.ipam.persist import decode_state, encode_state
from weftnet.proto.errors import RemoteProtocolError

UNIVERSE = IPv4Network("10.9.0.0/24")
ME, OTHER = 0x0A, 0x0B


def _seeds() -> list[bytes]:
    a = Allocator(ME, "me", UNIVERSE, None, SeedInit((ME, OTHER)), 0.0, random.Random(1))
    for i in range(3):
        a.allocate(i + 1, f"c{i}", None, 0.0)
    b = Allocator(ME, "me", UNIVERSE, None, ConsensusInit(2), 0.0, random.Random(1))
    b.allocate(1, "c", None, 0.0)
    return [encode_state(a.to_state()), encode_state(b.to_state())]


SEEDS = _seeds()


def test_one_input(data: bytes) -> None:
    try:
        state = decode_state(data)
    except RemoteProtocolError:
        return
    for init in (SeedInit((ME, OTHER)), ConsensusInit(3)):
        a = Allocator(ME, "me", UNIVERSE, None, init, 0.0, random.Random(1))
        a.load_state(state)
        a.allocate(99, "new", None, 1.0)
        a.status()
        decode_state(encode_state(a.to_state()))


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
