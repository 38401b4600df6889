"""Fuzz the super-frame cutter (proto/gsosplit.py) with frames a container could hand the
bridge: the first byte is the cap on segments per piece, the rest a virtio-net header and
a frame.

Invariants: ``split`` never raises; it cuts only when it returns two pieces or more, each
with a virtio-net header that decodes, no piece longer than the frame, and the payload
bytes of the pieces, put end to end, are those of the frame.
"""

from __future__ import annotations

import struct

from weftnet.proto.ethernet import VNET_HDR_LEN, VnetHeader
from weftnet.proto.gsosplit import split


def _seed(v6: bool, payload: int, mss: int) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 1, 2, 0x50, 0x18, 512, 0x1234, 0)
    if v6:
        ip = struct.pack(">IHBB16s16s", 6 << 28, 20 + payload, 6, 64, bytes(16), bytes(16))
        eth, gso, start = bytes(12) + b"\x86\xdd", 4, 54
    else:
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40 + payload, 1, 0x4000, 64, 6, 0,
                         bytes(4), bytes(4))
        eth, gso, start = bytes(12) + b"\x08\x00", 1, 34
    vnet = struct.pack("<BBHHHH", 1, gso, start + 20, mss, start, 16)
    return vnet + eth + ip + tcp + bytes(payload)


SEEDS = [b"\x04" + _seed(False, 20000, 1448), b"\x02" + _seed(True, 9000, 1000),
         b"\x01" + _seed(False, 3000, 1)]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    frame = data[1:]
    pieces = split(frame, data[0] % 70)
    if pieces is None:
        return
    assert len(pieces) >= 2
    # each piece: a virtio-net header, the frame's headers (the same length), its payload
    extra, rest = divmod(sum(len(p) for p in pieces) - len(frame), len(pieces) - 1)
    headers = extra - VNET_HDR_LEN
    assert rest == 0 and headers > 0
    for piece in pieces:
        VnetHeader.decode(piece)
        assert len(piece) < len(frame)
    body = b"".join(p[VNET_HDR_LEN + headers:] for p in pieces)
    assert body == frame[VNET_HDR_LEN + headers:]

if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
