"""TCP super-frames as a container's stack hands them to the bridge, and what a receiving
kernel makes of them: the oracle for proto/gsosplit.py (tests/unit/test_gsosplit.py) and the
sleeve engine's lossy mode (tests/unit/test_engine.py)."""

from __future__ import annotations

import ipaddress
import struct

from weftnet.proto.ethernet import (
    ETH_HLEN,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    checksum,
)

VNET = struct.Struct("<BBHHHH")
SRC4, DST4 = ipaddress.IPv4Address("10.32.0.1"), ipaddress.IPv4Address("10.40.0.2")
SRC6, DST6 = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::2")
MACS = bytes.fromhex("0a00000000020a0000000001")


def _sum16(data: bytes) -> int:
    """Ones'-complement sum (not inverted) of big-endian 16-bit words."""
    return 0xFFFF - checksum(data) if data else 0


def _pseudo(v6: bool, tcp_len: int) -> bytes:
    if v6:
        return SRC6.packed + DST6.packed + struct.pack(">IxxxB", tcp_len, 6)
    return SRC4.packed + DST4.packed + struct.pack(">xBH", 6, tcp_len)


def super_frame(v6: bool, payload: bytes, mss: int, *, tcp_flags: int = 0x18, seq: int = 1000,
                ip_id: int = 0x1234, options: bytes = b"", ecn: bool = False,
                ack: int = 77, ports: tuple[int, int] = (40000, 5201)) -> bytes:
    """A super-frame as a container's stack hands it to the bridge: NEEDS_CSUM, the TCP
    checksum field holding the pseudo-header sum over the whole TCP length."""
    tcp_hlen = 20 + len(options)
    tcp = bytearray(struct.pack(">HHIIBBHHH", *ports, seq, ack, (tcp_hlen // 4) << 4,
                                tcp_flags, 512, 0, 0) + options)
    struct.pack_into(">H", tcp, 16, _sum16(_pseudo(v6, tcp_hlen + len(payload))))
    if v6:
        ip = struct.pack(">IHBB16s16s", 6 << 28, tcp_hlen + len(payload), 6, 64,
                         SRC6.packed, DST6.packed)
        eth = MACS + b"\x86\xdd"
        gso = GSO_TCPV6
    else:
        iph = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + tcp_hlen + len(payload),
                                    ip_id, 0x4000, 64, 6, 0, SRC4.packed, DST4.packed))
        struct.pack_into(">H", iph, 10, checksum(iph))
        ip = bytes(iph)
        eth = MACS + b"\x08\x00"
        gso = GSO_TCPV4
    csum_start = ETH_HLEN + len(ip)
    vnet = VNET.pack(NEEDS_CSUM, gso | (GSO_ECN if ecn else 0), csum_start + tcp_hlen, mss,
                      csum_start, 16)
    return vnet + eth + ip + bytes(tcp) + payload


TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(range(8))  # NOP NOP TS: what Linux puts on an ACK


def ack_frame(v6: bool, ack: int, *, options: bytes = TIMESTAMPS, tcp_flags: int = 0x10,
              payload: bytes = b"", ports: tuple[int, int] = (5201, 40000)) -> bytes:
    """A TCP segment as the TAP hands it over (virtio-net header, no GSO): by default a pure
    ACK with timestamps, from the receiving side of super_frame's flow."""
    raw = super_frame(v6, payload, 0, tcp_flags=tcp_flags, ack=ack, options=options, ports=ports)
    return VNET.pack(NEEDS_CSUM, GSO_NONE, 0, 0, *VNET.unpack_from(raw)[4:]) + raw[VNET_HDR_LEN:]


def kernel_segments(frame: bytes) -> list[bytes]:
    """What the receiving kernel makes of a frame written to its TAP: for GSO, one segment
    per gso_size (lengths, IDs, sequence numbers, flags, IPv4 checksum set again, the
    pseudo-header sum moved to the segment's length); then the checksum completed."""
    flags, gso_type, _hl, mss, cs, _co = VNET.unpack_from(frame)
    body = frame[VNET_HDR_LEN:]
    v6 = body[12:14] == b"\x86\xdd"
    ip_len = 40 if v6 else (body[ETH_HLEN] & 0x0F) * 4
    l4 = ETH_HLEN + ip_len
    assert l4 == cs and flags & NEEDS_CSUM
    end = l4 + (body[l4 + 12] >> 4) * 4
    payload = body[end:]
    total = end - l4 + len(payload)
    gso = gso_type & ~GSO_ECN != GSO_NONE
    step = mss if gso else len(payload) or 1
    out = []
    for a in range(0, max(len(payload), 1), step):
        b = min(a + step, len(payload))
        h = bytearray(body[:end])
        seg_len = end - l4 + b - a
        if gso:
            if v6:
                struct.pack_into(">H", h, ETH_HLEN + 4, seg_len)
            else:
                struct.pack_into(">H", h, ETH_HLEN + 2, ip_len + seg_len)
                (ip_id,) = struct.unpack_from(">H", h, ETH_HLEN + 4)
                struct.pack_into(">H", h, ETH_HLEN + 4, (ip_id + a // mss) & 0xFFFF)
                struct.pack_into(">H", h, ETH_HLEN + 10, 0)
                struct.pack_into(">H", h, ETH_HLEN + 10, checksum(h[ETH_HLEN:l4]))
            (seq,) = struct.unpack_from(">I", h, l4 + 4)
            struct.pack_into(">I", h, l4 + 4, (seq + a) & 0xFFFFFFFF)
            if b < len(payload):
                h[l4 + 13] &= ~0x09
            if a:
                h[l4 + 13] &= ~0x80
            (field,) = struct.unpack_from(">H", h, l4 + 16)
            s = field + (~total & 0xFFFF) + seg_len
            while s >> 16:
                s = (s & 0xFFFF) + (s >> 16)
            struct.pack_into(">H", h, l4 + 16, s)
        seg = h + payload[a:b]
        struct.pack_into(">H", seg, l4 + 16, checksum(seg[l4:]) if seg[l4 + 16:l4 + 18] else 0)
        out.append(bytes(seg))
    return out


def scratch_segments(frame: bytes) -> list[bytes]:
    """The original's segments with every checksum computed from nothing (the oracle)."""
    out = []
    for seg in kernel_segments(frame):
        s = bytearray(seg)
        v6 = s[12:14] == b"\x86\xdd"
        l4 = ETH_HLEN + (40 if v6 else (s[ETH_HLEN] & 0x0F) * 4)
        struct.pack_into(">H", s, l4 + 16, 0)
        struct.pack_into(">H", s, l4 + 16, checksum(_pseudo(v6, len(s) - l4) + s[l4:]))
        if not v6:
            assert checksum(s[ETH_HLEN:l4]) == 0
        out.append(bytes(s))
    return out
