"""Fuzz ACK thinning (proto/ackfilter.py, router/dataplane/outbox.py) with frames a container
could hand the bridge: the first byte says which flags the entries carry, the rest is cut
into frames at the bytes 0xFF 0xFE (so a corpus can hold several).

Invariants: ``pure_ack`` never raises and names only frames it fully parsed (within the
frame); the outbox keeps every frame that is not a pure ACK, in order, never more entries
than it was given, and its size is that of what it hands back.
"""

from __future__ import annotations

from weftnet.proto import ackfilter, sleeve
from weftnet.proto.ethernet import VNET_HDR_LEN
from weftnet.router.dataplane.outbox import Outbox


def _seed(ack: int) -> bytes:
    eth = bytes(12) + b"\x08\x00"
    ip = bytes([0x45, 0, 0, 52, 0, 1, 0x40, 0, 64, 6, 0, 0]) + bytes(8)
    tcp = (b"\x14\x51\x9c\x40" + bytes(4) + ack.to_bytes(4, "big") + b"\x80\x10\x01\x00"
           + bytes(4) + b"\x01\x01\x08\x0a" + bytes(8))
    return bytes(VNET_HDR_LEN) + eth + ip + tcp


SEEDS = [b"\x01" + _seed(5) + b"\xff\xfe" + _seed(9) + b"\xff\xfe" + _seed(7),
         b"\x00" + _seed(1)[VNET_HDR_LEN:]]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    flags = data[0] & sleeve.FLAG_VNET
    off = VNET_HDR_LEN if flags else 0
    frames = [f for f in data[1:].split(b"\xff\xfe") if f]
    box = Outbox()
    for frame in frames:
        got = ackfilter.pure_ack(frame, off)
        if got is not None:
            assert len(got[0]) in (12 + 8 + 4, 12 + 32 + 4) and 0 <= got[1] < 2**32
        box.add(1, (1, 2, flags, frame))
    taken = box.take(1) or []
    assert len(taken) <= len(frames)
    others = [f for f in frames if ackfilter.pure_ack(f, off) is None]
    assert [e[3] for e in taken if ackfilter.pure_ack(e[3], off) is None] == others
    size = sum(sleeve.ENTRY_OVERHEAD + len(e[3]) for e in taken)
    again = Outbox()
    for frame in frames:
        again.add(1, (1, 2, flags, frame))
    assert again.room(1, 0, size) and not again.room(1, 1, size)


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
