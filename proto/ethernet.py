r"""Ethernet frames as the data plane sees them: MACs, virtio-net headers, IP sizes, ICMP.

Theory of operation
-------------------
The router reads whole Ethernet frames from its TAP port on the ``weft`` bridge. With
``IFF_VNET_HDR`` each read starts with a 10-byte ``virtio_net_hdr`` telling how the
kernel wants the frame checksummed and segmented; the sleeve carries that header inside
the sealed payload and the receiving router writes it back unchanged, so Python never
computes a checksum nor splits a TCP super-frame (notes/dataplane-facts.md)::

    virtio_net_hdr (10 bytes, little-endian)
    +-------+----------+---------+----------+------------+-------------+
    | flags | gso_type | hdr_len | gso_size | csum_start | csum_offset |
    |  u8   |    u8    |   u16   |   u16    |    u16     |     u16     |
    +-------+----------+---------+----------+------------+-------------+

    Ethernet (14 bytes, big-endian)                     IPv4 header (>= 20 bytes)
    +------------+------------+-----------+             +----+-----+---------+----+
    | dst MAC 6  | src MAC 6  | type u16  | payload ... | VI | TOS | tot_len | .. |
    +------------+------------+-----------+             +----+-----+---------+----+

The forwarding decision needs only the two MACs (``macs``: one struct unpack, no copy).
The MTU check needs the size of the packets the frame will become on the underlay:
the IPv4 total length (IPv6 payload length + 40) of a plain frame, or, for a GSO
super-frame, the size of one segment: headers + ``gso_size`` (``segment_size``, which
counts the Ethernet header like ``hdr_len`` does).

Too big: an IPv4 packet with DF set that does not fit the path gets an ICMP
"fragmentation needed" (type 3 code 4, RFC 1191) back to the sender, forged as if from
the original destination so it reaches the sender's stack through the bridge like any
reply. Never in answer to an ICMP error, a non-first fragment, a group destination MAC
or a source that is not one host (RFC 1812 4.3.2.7)::

    reply: Ethernet(dst = frame.src, src = frame.dst, 0x0800)
           IPv4(src = orig.dst, dst = orig.src, TTL 64, proto 1)
           ICMP(type 3, code 4, csum, unused u16 = 0, next-hop MTU u16,
                orig IP header + first 8 bytes of its payload)

Checksums use the ones'-complement sum computed with one big-integer reduction instead
of a per-byte loop: 2**16 == 1 (mod 0xFFFF), so the sum of the 16-bit words of ``data``
is congruent to ``int.from_bytes(data)`` modulo 0xFFFF.

Failure contract: functions that read frames from the network raise only
RemoteProtocolError (too short, or an unknown virtio-net flag or GSO type).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

VNET_HDR_LEN = 10
ETH_HLEN = 14
BROADCAST = 0xFFFFFFFFFFFF

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
IPV6_HLEN = 40

# virtio_net_hdr flags and GSO types (linux/virtio_net.h)
NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
_KNOWN_FLAGS = NEEDS_CSUM | DATA_VALID
_KNOWN_GSO = frozenset({GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4})

_MACS = struct.Struct(">HIHI")            # dst hi16, dst lo32, src hi16, src lo32
_ETHERTYPE = struct.Struct(">H")
_VNET = struct.Struct("<BBHHHH")
_IPV4_FIXED = struct.Struct(">BBHHHBBH4s4s")  # ver/ihl tos len id frag ttl proto csum src dst
_ICMP_HEAD = struct.Struct(">BBHHH")      # type code csum unused next-hop-mtu

IP_PROTO_ICMP = 1
IP_PROTO_TCP = 6
IP_PROTO_UDP = 17
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
# ICMP types that are errors (never answered with another error)
_ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
_IP_DF = 0x4000
_IP_OFFSET = 0x1FFF
MIN_IPV4_MTU = 68
REPLY_TTL = 64


def macs(frame: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """(dst, src) MACs of the Ethernet frame at ``frame[offset:]`` as 48-bit integers."""
    try:
        dh, dl, sh, sl = _MACS.unpack_from(frame, offset)
    except struct.error:
        raise RemoteProtocolError("malformed: frame shorter than an Ethernet header") from None
    return (dh << 32) | dl, (sh << 32) | sl


def is_group(mac: int) -> bool:
    """True for broadcast and multicast addresses (the I/G bit of the first octet)."""
    return bool(mac & 0x010000000000)


def format_mac(mac: int) -> str:
    return ":".join(f"{b:02x}" for b in mac.to_bytes(6, "big"))


def parse_mac(text: str) -> int:
    """``aa:bb:cc:dd:ee:ff`` (what ``format_mac`` gives, and what the kernel shows) as an
    int; ValueError when it is not six bytes."""
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """The 10-byte ``virtio_net_hdr`` in front of every frame of an IFF_VNET_HDR TAP."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> VnetHeader:
        try:
            fields = _VNET.unpack_from(buf, offset)
        except struct.error:
            raise RemoteProtocolError("malformed: truncated virtio-net header") from None
        flags, gso_type = fields[0], fields[1]
        if flags & ~_KNOWN_FLAGS:
            raise RemoteProtocolError(f"malformed: unknown virtio-net flags {flags:#x}")
        if gso_type & ~GSO_ECN not in _KNOWN_GSO:
            raise RemoteProtocolError(f"malformed: unknown GSO type {gso_type:#x}")
        return cls(*fields)

    def encode(self) -> bytes:
        try:
            return _VNET.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                              self.csum_start, self.csum_offset)
        except struct.error as exc:
            raise LocalProtocolError(f"virtio-net header field out of range: {exc}") from None

    @property
    def is_gso(self) -> bool:
        return self.gso_type & ~GSO_ECN != GSO_NONE


def inner_ip_size(frame: bytes | bytearray | memoryview, offset: int = 0) -> int | None:
    """Size of the IP packet in the Ethernet frame at ``frame[offset:]`` as its header
    states it (IPv4 total length, IPv6 payload length + 40); None if not IP or too short."""
    if len(frame) - offset < ETH_HLEN + 4:
        return None
    (ethertype,) = _ETHERTYPE.unpack_from(frame, offset + 12)
    if ethertype == ETHERTYPE_IPV4:
        if frame[offset + ETH_HLEN] >> 4 != 4:
            return None
        (size,) = _ETHERTYPE.unpack_from(frame, offset + ETH_HLEN + 2)
        return int(size)
    if ethertype == ETHERTYPE_IPV6:
        if len(frame) - offset < ETH_HLEN + 6 or frame[offset + ETH_HLEN] >> 4 != 6:
            return None
        (payload,) = _ETHERTYPE.unpack_from(frame, offset + ETH_HLEN + 4)
        return int(payload) + IPV6_HLEN
    return None


def _l4_header_end(frame: bytes | bytearray | memoryview, offset: int) -> int | None:
    """Offset (from the frame start) where the TCP/UDP payload begins, or None."""
    n = len(frame) - offset
    if n < ETH_HLEN + 1:
        return None
    (ethertype,) = _ETHERTYPE.unpack_from(frame, offset + 12)
    ip = offset + ETH_HLEN
    if ethertype == ETHERTYPE_IPV4 and frame[ip] >> 4 == 4 and n >= ETH_HLEN + 20:
        l4 = ip + (frame[ip] & 0x0F) * 4
        proto = frame[ip + 9]
    elif ethertype == ETHERTYPE_IPV6 and frame[ip] >> 4 == 6 and n >= ETH_HLEN + IPV6_HLEN:
        l4 = ip + IPV6_HLEN                  # GSO never carries extension headers here
        proto = frame[ip + 6]
    else:
        return None
    if proto == IP_PROTO_TCP and l4 + 13 <= len(frame):
        return l4 + (frame[l4 + 12] >> 4) * 4 - offset
    if proto == IP_PROTO_UDP:
        return l4 + 8 - offset
    return None


def segment_size(vnet: VnetHeader, frame_len: int,
                 frame: bytes | bytearray | memoryview | None = None, offset: int = 0) -> int:
    """Size of the largest Ethernet frame the frame of ``frame_len`` bytes (without the
    virtio-net header) turns into on the wire: itself, or for a GSO super-frame one
    segment, ``hdr_len + gso_size``. Subtract ETH_HLEN for the IP packet size.

    The kernel fills ``hdr_len`` only as a hint (``skb_headlen``, which can include
    payload, and would make every segment look too big): pass the frame itself (at
    ``frame[offset:]``) to measure the real Ethernet+L3+L4 header length from the packet
    instead. Never more than the frame itself.
    """
    return _segment(vnet.gso_type, vnet.hdr_len, vnet.gso_size, frame_len, frame, offset)


def frame_segment_size(frame: bytes | bytearray | memoryview) -> int:
    """``segment_size`` of a frame read from a TAP with its virtio-net header in front (the
    kernel's: not validated; no VnetHeader built, this runs for every super-frame sent)."""
    _flags, gso_type, hdr_len, gso_size, _start, _off = _VNET.unpack_from(frame)
    return _segment(gso_type, hdr_len, gso_size, len(frame) - VNET_HDR_LEN, frame,
                    VNET_HDR_LEN)


def _segment(gso_type: int, hdr_len: int, gso_size: int, frame_len: int,
             frame: bytes | bytearray | memoryview | None, offset: int) -> int:
    whole = max(frame_len, 0)
    if gso_type & ~GSO_ECN == GSO_NONE:
        return whole
    headers = _l4_header_end(frame, offset) if frame is not None else None
    if headers is None:
        headers = hdr_len
    return min(headers + gso_size, whole)


def seq_after(a: int, b: int) -> bool:
    """32-bit sequence number ``a`` comes after ``b`` (wrapping, RFC 1982): TCP's sequence
    and acknowledgement numbers, the sleeve's fragment message ids."""
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000


def checksum(data: bytes | bytearray | memoryview) -> int:
    """Internet checksum (RFC 1071) of ``data``: the ones' complement of the
    ones'-complement sum of its big-endian 16-bit words (odd length: zero-padded)."""
    n = len(data)
    value = int.from_bytes(data, "big")
    if n & 1:
        value <<= 8
    if value == 0:
        return 0xFFFF
    total = value % 0xFFFF or 0xFFFF     # a non-zero sum of words is never +0
    return 0xFFFF - total


def frag_needed_reply(frame: bytes | bytearray | memoryview, mtu: int,
                      size: int | None = None) -> bytes | None:
    """The ICMP "fragmentation needed" frame answering ``frame`` (a plain Ethernet frame,
    no virtio-net header) if it is IPv4 with DF set and bigger than ``mtu``, else None.

    ``size`` overrides the IP packet size read from the IP header: pass
    ``segment_size(...) - ETH_HLEN`` for a GSO super-frame, whose segments must fit.
    """
    if not MIN_IPV4_MTU <= mtu <= 0xFFFF:
        raise LocalProtocolError(f"MTU {mtu} out of range")
    n = len(frame)
    if n < ETH_HLEN + 20:
        return None
    dh, dl, sh, sl = _MACS.unpack_from(frame, 0)
    if dh & 0x0100 or sh & 0x0100:           # group destination, or a bogus group source
        return None
    (ethertype,) = _ETHERTYPE.unpack_from(frame, 12)
    if ethertype != ETHERTYPE_IPV4:
        return None
    vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = _IPV4_FIXED.unpack_from(
        frame, ETH_HLEN)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or ETH_HLEN + ihl > n:
        return None
    if not frag & _IP_DF or frag & _IP_OFFSET:
        return None
    if (size if size is not None else total) <= mtu:
        return None
    if proto == IP_PROTO_ICMP:
        if ETH_HLEN + ihl >= n or frame[ETH_HLEN + ihl] in _ICMP_ERRORS:
            return None                      # an ICMP error, or one too short to tell
    first = src[0]
    if src == b"\x00\x00\x00\x00" or first >= 224 or first == 127 or src == b"\xff" * 4:
        return None                          # not one host: 0/8 any, loopback, multicast
    quoted = bytes(frame[ETH_HLEN:ETH_HLEN + min(ihl + 8, max(total, ihl))])
    icmp_len = _ICMP_HEAD.size + len(quoted)
    icmp = _ICMP_HEAD.pack(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu) + quoted
    icmp_csum = checksum(icmp)
    ip = _IPV4_FIXED.pack(0x45, 0, 20 + icmp_len, 0, 0, REPLY_TTL, IP_PROTO_ICMP, 0, dst, src)
    ip_csum = checksum(ip)
    return b"".join((
        _MACS.pack(sh, sl, dh, dl), b"\x08\x00",
        ip[:10], ip_csum.to_bytes(2, "big"), ip[12:],
        icmp[:2], icmp_csum.to_bytes(2, "big"), icmp[4:],
    ))
