"""Cutting TCP super-frames into smaller ones (proto/gsosplit.py), checked against an oracle:
the segments a kernel would make of every piece, put end to end, are exactly the segments
of the original frame, each with a TCP checksum computed from scratch."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet.proto.ethernet import (
    ETH_HLEN,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    checksum,
)
from weftnet.proto.gsosplit import split

_VNET = struct.Struct("<BBHHHH")
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
                ip_id: int = 0x1234, options: bytes = b"", ecn: bool = False) -> bytes:
    """A super-frame as a container's stack hands it to the bridge: NEEDS_CSUM, the TCP
    checksum field holding the pseudo-header sum over the whole TCP length."""
    tcp_hlen = 20 + len(options)
    tcp = bytearray(struct.pack(">HHIIBBHHH", 40000, 5201, seq, 77, (tcp_hlen // 4) << 4,
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
    vnet = _VNET.pack(NEEDS_CSUM, gso | (GSO_ECN if ecn else 0), csum_start + tcp_hlen, mss,
                      csum_start, 16)
    return vnet + eth + ip + bytes(tcp) + payload


def kernel_segments(frame: bytes) -> list[bytes]:
    """What the receiving kernel makes of a frame written to its TAP: for GSO, one segment
    per gso_size (lengths, IDs, sequence numbers, flags, IPv4 checksum set again, the
    pseudo-header sum moved to the segment's length); then the checksum completed."""
    flags, gso_type, _hl, mss, cs, _co = _VNET.unpack_from(frame)
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


@settings(max_examples=300, deadline=None)
@given(v6=st.booleans(), mss=st.integers(1, 1460), size=st.integers(1, 65000),
       max_segs=st.integers(1, 64), tcp_flags=st.sampled_from([0x10, 0x18, 0x19, 0x98, 0x11]),
       seq=st.integers(0, 2**32 - 1), ip_id=st.integers(0, 0xFFFF), ecn=st.booleans(),
       options=st.sampled_from([b"", bytes([1, 1, 8, 10]) + bytes(8)]), seed=st.integers(0, 255))
def test_pieces_segment_exactly_as_the_original(v6: bool, mss: int, size: int, max_segs: int,
                                                tcp_flags: int, seq: int, ip_id: int,
                                                ecn: bool, options: bytes, seed: int) -> None:
    payload = bytes((seed + i * 7) & 0xFF for i in range(size))
    frame = super_frame(v6, payload, mss, tcp_flags=tcp_flags, seq=seq, ip_id=ip_id,
                        options=options, ecn=ecn)
    pieces = split(frame, max_segs)
    segments = -(-size // mss)
    if segments <= max_segs:
        assert pieces is None
        return
    assert pieces is not None
    assert len(pieces) == -(-segments // max_segs)
    got = [seg for piece in pieces for seg in kernel_segments(piece)]
    assert got == scratch_segments(frame)
    for piece in pieces:
        _f, gso_type, _hl, gso_size, _cs, _co = _VNET.unpack_from(piece)
        n = -(-(len(piece) - len(frame) + size) // mss)  # its payload's segments (bound)
        assert (gso_type == GSO_NONE) == (len(kernel_segments(piece)) == 1)
        assert gso_size == (0 if gso_type == GSO_NONE else mss) and n >= 1


def test_a_typical_super_frame_in_eight_segment_pieces() -> None:
    frame = super_frame(False, bytes(range(256)) * 250, 1448)  # 64000 B: 45 segments
    pieces = split(frame, 8)
    assert pieces is not None and len(pieces) == 6
    assert sum(len(p) for p in pieces) == len(frame) + 5 * (len(frame) - 64000)
    assert [seg for p in pieces for seg in kernel_segments(p)] == scratch_segments(frame)


def test_what_is_not_cut() -> None:
    tcp = super_frame(False, bytes(20000), 1000)
    assert split(tcp, 20) is None and split(tcp, 0) is None          # fits / nonsense cap
    no_csum = bytes([0]) + tcp[1:]
    assert split(no_csum, 4) is None                                  # no NEEDS_CSUM
    udp = tcp[:1] + bytes([GSO_UDP_L4]) + tcp[2:]
    assert split(udp, 4) is None                                      # USO: not ours to cut
    not_gso = tcp[:1] + bytes([GSO_NONE]) + tcp[2:]
    assert split(not_gso, 4) is None
    wrong_start = tcp[:6] + struct.pack("<H", 40) + tcp[8:]
    assert split(wrong_start, 4) is None                              # IPv4 options / odd
    v6_as_v4 = tcp[:1] + bytes([GSO_TCPV6]) + tcp[2:]
    assert split(v6_as_v4, 4) is None
    assert split(tcp[:40], 1) is None and split(b"", 1) is None      # truncated


@given(st.binary(max_size=300), st.integers(0, 70))
def test_never_raises(data: bytes, max_segs: int) -> None:
    pieces = split(data, max_segs)
    assert pieces is None or len(pieces) >= 2
