"""Fuzz the Ethernet helpers with frames a container or a peer could send.

Invariants: ``macs`` and ``VnetHeader.decode`` either work or raise RemoteProtocolError;
a decoded virtio-net header re-encodes to the same 10 bytes; ``inner_ip_size``,
``segment_size`` and ``frag_needed_reply`` never raise on any frame; a reply, when
there is one, is addressed back to the sender, carries correct IPv4 and ICMP checksums,
the MTU asked for, and quotes the start of the original packet.
"""

from __future__ import annotations

import struct

from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.ethernet import (
    ETH_HLEN,
    VNET_HDR_LEN,
    VnetHeader,
    checksum,
    frag_needed_reply,
    frame_segment_size,
    inner_ip_size,
    macs,
    segment_size,
)


def _frame(ip_payload: bytes, proto: int = 6, df: bool = True) -> bytes:
    total = 20 + len(ip_payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000 if df else 0, 64, proto, 0,
                     bytes([10, 2, 1, 1]), bytes([10, 2, 1, 2]))
    return bytes.fromhex("0a00000000020a0000000001") + b"\x08\x00" + ip + ip_payload


SEEDS = [
    # mtu (2 bytes) + virtio-net header + frame
    b"\x05\x78" + bytes([1, 1, 66, 0, 0xA8, 5, 34, 0, 16, 0])
    + _frame(bytes([0, 80, 0, 81]) + bytes(8) + bytes([0x80, 0x18]) + bytes(18) + bytes(3000)),
    b"\x05\xdc" + bytes(10) + _frame(bytes([8, 0]) + bytes(2000), proto=1),
    b"\x02\x40" + bytes([1, 5, 0, 0, 0xB0, 4, 34, 0, 6, 0]) + _frame(bytes(8 + 3000), proto=17),
    b"\x05\xdc" + bytes(10) + bytes.fromhex("0a00000000020a0000000001") + b"\x86\xdd"
    + bytes([0x60, 0, 0, 0, 0x10, 0, 6, 64]) + bytes(32) + bytes(4096),
]


def test_one_input(data: bytes) -> None:
    mtu = 68 + (int.from_bytes(data[:2], "big") % (65536 - 68)) if len(data) >= 2 else 1500
    rest = data[2:]
    vnet: VnetHeader | None
    try:
        vnet = VnetHeader.decode(rest)
        assert vnet.encode() == rest[:VNET_HDR_LEN]
    except RemoteProtocolError:
        vnet = None
    frame = rest[VNET_HDR_LEN:]
    for buf, offset in ((rest, VNET_HDR_LEN), (frame, 0), (data, 0)):
        try:
            macs(buf, offset)
        except RemoteProtocolError:
            pass
        size = inner_ip_size(buf, offset)
        assert size is None or 0 <= size <= 0xFFFF + 40
    if vnet is not None:
        assert 0 <= segment_size(vnet, len(frame), frame) <= len(frame)
        assert 0 <= segment_size(vnet, len(frame)) <= len(frame)
        assert frame_segment_size(rest) == segment_size(vnet, len(frame), frame, 0)
    for candidate in (frame, data):
        reply = frag_needed_reply(candidate, mtu)
        if reply is not None:
            _check_reply(candidate, reply, mtu)
        reply = frag_needed_reply(memoryview(candidate), mtu, size=len(candidate))
        if reply is not None:
            _check_reply(candidate, reply, mtu)


def _check_reply(frame: bytes, reply: bytes, mtu: int) -> None:
    assert reply[:6] == frame[6:12] and reply[6:12] == frame[:6]
    assert reply[12:14] == b"\x08\x00"
    ip = reply[ETH_HLEN:]
    assert ip[0] == 0x45 and int.from_bytes(ip[2:4], "big") == len(ip)
    assert checksum(ip[:20]) == 0 and checksum(ip[20:]) == 0
    assert ip[12:16] == frame[30:34] and ip[16:20] == frame[26:30]
    icmp = ip[20:]
    assert icmp[:2] == b"\x03\x04" and int.from_bytes(icmp[6:8], "big") == mtu
    quoted = icmp[8:]
    assert frame[ETH_HLEN:].startswith(quoted) and len(quoted) >= 20


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    # the modules under test are imported above already, where instrument_imports() would
    # no longer see them: instrument every loaded function instead
    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
