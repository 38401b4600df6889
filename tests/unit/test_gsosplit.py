"""Cutting TCP super-frames into smaller ones (proto/gsosplit.py), checked against an oracle:
the segments a kernel would make of every piece, put end to end, are exactly the segments
of the original frame, each with a TCP checksum computed from scratch (tests/gsoframes.py)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gsoframes import VNET, kernel_segments, scratch_segments, super_frame
from weftnet.proto.ethernet import GSO_NONE, GSO_TCPV6, GSO_UDP_L4
from weftnet.proto.gsosplit import split


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
    for piece in pieces:  # a piece of one segment is no longer GSO
        _f, gso_type, _hl, gso_size, _cs, _co = VNET.unpack_from(piece)
        assert (gso_type == GSO_NONE) == (len(kernel_segments(piece)) == 1)
        assert gso_size == (0 if gso_type == GSO_NONE else mss)


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
