"""Ethernet helpers: MACs, virtio-net headers, IP sizes, ICMP "fragmentation needed"."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.ethernet import (
    BROADCAST,
    DATA_VALID,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    VnetHeader,
    checksum,
    format_mac,
    frag_needed_reply,
    inner_ip_size,
    is_group,
    macs,
    parse_mac,
    segment_size,
)

MAC_A = 0x0A0000000001
MAC_B = 0x0A0000000002


def naive_checksum(data: bytes) -> int:
    """RFC 1071 the slow way: add 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def eth(dst: int, src: int, ethertype: int, payload: bytes) -> bytes:
    return dst.to_bytes(6, "big") + src.to_bytes(6, "big") + ethertype.to_bytes(2, "big") + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, df: bool = True, offset: int = 0,
         options: bytes = b"", total: int | None = None) -> bytes:
    ihl = (20 + len(options)) // 4
    length = total if total is not None else 20 + len(options) + len(payload)
    frag = (0x4000 if df else 0) | offset
    header = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, length, 0x1234, frag, 63, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header += options
    csum = naive_checksum(header)
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + payload


def tcp_payload(size: int) -> bytes:
    # a 32-byte TCP header (data offset 8) and then data
    return struct.pack(">HHIIBBHHH", 1234, 80, 1, 0, 8 << 4, 0x18, 65535, 0, 0) + bytes(12) \
        + bytes(range(256)) * (size // 256) + bytes(size % 256)


def test_macs_and_groups() -> None:
    frame = eth(BROADCAST, MAC_A, 0x0806, bytes(28))
    assert macs(frame) == (BROADCAST, MAC_A)
    assert macs(memoryview(b"\x00" * 10 + frame), 10) == (BROADCAST, MAC_A)
    assert is_group(BROADCAST)
    assert is_group(0x01005E000001)          # IPv4 multicast
    assert is_group(0x333300000001)          # IPv6 multicast
    assert not is_group(MAC_A)
    assert not is_group(0xFEFFFFFFFFFF)      # only the I/G bit counts
    assert format_mac(0x0A1B2C3D4E5F) == "0a:1b:2c:3d:4e:5f"
    assert parse_mac("0A:1b:2c:3d:4e:5f") == 0x0A1B2C3D4E5F
    for bad in ("0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5f:00", "zz:1b:2c:3d:4e:5f", ""):
        with pytest.raises(ValueError):
            parse_mac(bad)
    with pytest.raises(RemoteProtocolError):
        macs(frame[:11])
    with pytest.raises(RemoteProtocolError):
        macs(frame, len(frame) - 11)


def test_vnet_header_is_little_endian_and_round_trips() -> None:
    raw = bytes([NEEDS_CSUM, GSO_TCPV4 | GSO_ECN]) + struct.pack("<HHHH", 66, 1448, 34, 16)
    hdr = VnetHeader.decode(raw)
    assert hdr == VnetHeader(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 66, 1448, 34, 16)
    assert hdr.encode() == raw
    assert hdr.is_gso
    assert not VnetHeader(DATA_VALID).is_gso
    assert VnetHeader.decode(b"xx" + raw, 2) == hdr
    assert len(VnetHeader().encode()) == VNET_HDR_LEN


@pytest.mark.parametrize("raw", [
    bytes(9),                                # truncated
    bytes([4, 0]) + bytes(8),                # unknown flag
    bytes([0, 2]) + bytes(8),                # unknown GSO type
    bytes([0, 0x86]) + bytes(8),             # unknown GSO type with ECN
])
def test_vnet_header_rejects(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        VnetHeader.decode(raw)


def test_vnet_header_encode_out_of_range() -> None:
    with pytest.raises(LocalProtocolError):
        VnetHeader(hdr_len=70000).encode()


def test_inner_ip_size() -> None:
    v4 = eth(MAC_B, MAC_A, 0x0800, ipv4("10.0.0.1", "10.0.0.2", 6, tcp_payload(100)))
    assert inner_ip_size(v4) == 20 + 32 + 100
    assert inner_ip_size(b"\x00" * VNET_HDR_LEN + v4, VNET_HDR_LEN) == 152
    v6 = eth(MAC_B, MAC_A, 0x86DD, bytes([0x60, 0, 0, 0]) + struct.pack(">H", 1000) + bytes(34))
    assert inner_ip_size(v6) == 1040
    assert inner_ip_size(eth(MAC_B, MAC_A, 0x0806, bytes(28))) is None
    assert inner_ip_size(v4[:16]) is None
    assert inner_ip_size(eth(MAC_B, MAC_A, 0x0800, bytes(20))) is None   # version 0


def test_segment_size() -> None:
    frame = eth(MAC_B, MAC_A, 0x0800, ipv4("10.0.0.1", "10.0.0.2", 6, tcp_payload(20000)))
    plain = VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, 34, 16)
    assert segment_size(plain, len(frame)) == len(frame)
    gso = VnetHeader(NEEDS_CSUM, GSO_TCPV4, 14 + 20 + 32, 1448, 34, 16)
    assert segment_size(gso, len(frame)) == 14 + 20 + 32 + 1448
    # the kernel's hdr_len is only a hint (skb_headlen): the frame's own headers win
    hint = VnetHeader(NEEDS_CSUM, GSO_TCPV4, 2000, 1448, 34, 16)
    assert segment_size(hint, len(frame)) == 2000 + 1448
    assert segment_size(hint, len(frame), frame) == 14 + 20 + 32 + 1448
    assert segment_size(hint, len(frame), b"\x00" * 10 + frame, 10) == 14 + 20 + 32 + 1448
    # UDP GSO: 8-byte UDP header
    udp = eth(MAC_B, MAC_A, 0x0800, ipv4("10.0.0.1", "10.0.0.2", 17, bytes(8 + 5000)))
    uso = VnetHeader(NEEDS_CSUM, GSO_UDP_L4, 0, 1200, 34, 6)
    assert segment_size(uso, len(udp), udp) == 14 + 20 + 8 + 1200
    # IPv6 TCP
    v6 = eth(MAC_B, MAC_A, 0x86DD, bytes([0x60, 0, 0, 0]) + struct.pack(">HBB", 5032, 6, 64)
             + bytes(32) + tcp_payload(5000))
    tso6 = VnetHeader(NEEDS_CSUM, GSO_TCPV6, 0, 1428, 54, 16)
    assert segment_size(tso6, len(v6), v6) == 14 + 40 + 32 + 1428
    # never more than the frame
    small = VnetHeader(NEEDS_CSUM, GSO_TCPV4, 66, 60000, 34, 16)
    assert segment_size(small, len(frame), frame) == len(frame)


@given(st.binary(max_size=300))
def test_checksum_matches_the_naive_sum(data: bytes) -> None:
    assert checksum(data) == naive_checksum(data)


def parse_reply(reply: bytes) -> dict[str, object]:
    """An independent reading of the ICMP reply; checks both checksums."""
    dst, src, ethertype = reply[:6], reply[6:12], reply[12:14]
    ip = reply[14:]
    ihl = (ip[0] & 15) * 4
    assert ip[0] >> 4 == 4 and ihl == 20
    assert naive_checksum(ip[:ihl]) == 0, "IP header checksum"
    total = int.from_bytes(ip[2:4], "big")
    assert total == len(ip)
    icmp = ip[ihl:total]
    assert naive_checksum(icmp) == 0, "ICMP checksum"
    return {"dst": int.from_bytes(dst, "big"), "src": int.from_bytes(src, "big"),
            "ethertype": int.from_bytes(ethertype, "big"), "ttl": ip[8], "proto": ip[9],
            "ip_src": str(ipaddress.IPv4Address(ip[12:16])),
            "ip_dst": str(ipaddress.IPv4Address(ip[16:20])),
            "type": icmp[0], "code": icmp[1], "unused": icmp[4:6],
            "mtu": int.from_bytes(icmp[6:8], "big"), "quoted": icmp[8:]}


def test_frag_needed_reply() -> None:
    packet = ipv4("10.2.1.1", "10.2.1.2", 6, tcp_payload(1448))
    frame = eth(MAC_B, MAC_A, 0x0800, packet)
    reply = frag_needed_reply(frame, 1400)
    assert reply is not None
    got = parse_reply(reply)
    assert got == {"dst": MAC_A, "src": MAC_B, "ethertype": 0x0800, "ttl": 64, "proto": 1,
                   "ip_src": "10.2.1.2", "ip_dst": "10.2.1.1", "type": 3, "code": 4,
                   "unused": b"\x00\x00", "mtu": 1400, "quoted": packet[:28]}
    assert frag_needed_reply(memoryview(frame), 1400) == reply
    assert frag_needed_reply(frame, len(packet)) is None       # fits exactly


def test_frag_needed_quotes_options() -> None:
    packet = ipv4("10.2.1.1", "10.2.1.2", 17, bytes(3000), options=b"\x01\x01\x01\x00")
    reply = frag_needed_reply(eth(MAC_B, MAC_A, 0x0800, packet), 1500)
    assert reply is not None
    assert parse_reply(reply)["quoted"] == packet[:24 + 8]


def test_frag_needed_for_a_gso_segment_size() -> None:
    # a super-frame whose total length is large: its segments decide
    frame = eth(MAC_B, MAC_A, 0x0800, ipv4("10.2.1.1", "10.2.1.2", 6, tcp_payload(20000)))
    assert frag_needed_reply(frame, 1400, size=1400) is None
    reply = frag_needed_reply(frame, 1400, size=1500)
    assert reply is not None and parse_reply(reply)["mtu"] == 1400


def echo(icmp_type: int) -> bytes:
    return bytes([icmp_type, 0, 0, 0]) + bytes(4) + bytes(2000)


@pytest.mark.parametrize("frame", [
    eth(MAC_B, MAC_A, 0x0800, ipv4("10.2.1.1", "10.2.1.2", 6, tcp_payload(1448), df=False)),
    eth(MAC_B, MAC_A, 0x0800, ipv4("10.2.1.1", "10.2.1.2", 6, tcp_payload(1448), offset=10)),
    eth(MAC_B, MAC_A, 0x0800, ipv4("10.2.1.1", "10.2.1.2", 1, echo(3))),      # ICMP error
    eth(MAC_B, MAC_A, 0x0800, ipv4("10.2.1.1", "10.2.1.2", 1, echo(11))),
    eth(BROADCAST, MAC_A, 0x0800, ipv4("10.2.1.1", "10.2.1.255", 17, bytes(2000))),
    eth(0x01005E000001, MAC_A, 0x0800, ipv4("10.2.1.1", "224.0.0.1", 17, bytes(2000))),
    eth(MAC_B, 0x010000000001, 0x0800, ipv4("10.2.1.1", "10.2.1.2", 17, bytes(2000))),
    eth(MAC_B, MAC_A, 0x0800, ipv4("0.0.0.0", "10.2.1.2", 17, bytes(2000))),
    eth(MAC_B, MAC_A, 0x0800, ipv4("224.1.1.1", "10.2.1.2", 17, bytes(2000))),
    eth(MAC_B, MAC_A, 0x0800, ipv4("127.0.0.1", "10.2.1.2", 17, bytes(2000))),
    eth(MAC_B, MAC_A, 0x86DD, bytes([0x60]) + bytes(2000)),
    eth(MAC_B, MAC_A, 0x0800, bytes([0x45]) + bytes(10)),                       # truncated
    eth(MAC_B, MAC_A, 0x0800, bytes([0x44]) + bytes(2000)),                     # ihl 4
], ids=["no-df", "fragment", "icmp-unreach", "icmp-timex", "broadcast", "multicast-mac",
        "group-src-mac", "src-any", "src-multicast", "src-loopback", "ipv6", "short", "bad-ihl"])
def test_no_frag_needed_reply(frame: bytes) -> None:
    assert frag_needed_reply(frame, 1400) is None


def test_frag_needed_answers_big_echo_requests() -> None:
    frame = eth(MAC_B, MAC_A, 0x0800, ipv4("10.2.1.1", "10.2.1.2", 1, echo(8)))
    reply = frag_needed_reply(frame, 1400)
    assert reply is not None and parse_reply(reply)["mtu"] == 1400


def test_frag_needed_mtu_is_checked() -> None:
    with pytest.raises(LocalProtocolError):
        frag_needed_reply(b"", 67)


@given(st.integers(min_value=0, max_value=2**48 - 1))
def test_parse_mac_inverts_format_mac(mac: int) -> None:
    assert parse_mac(format_mac(mac)) == mac
