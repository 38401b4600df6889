r"""Cut a TCP super-frame into smaller super-frames, as the kernel would cut it anyway.

Why: the sleeve carries a ~64 KiB TSO super-frame as one sealed message, cut into ~45
datagrams of the path's size. On an underlay that loses 1% of its datagrams, a whole
message (~45 TCP segments) is lost with any one of them: 36% of the messages. TCP then
sees bursts of loss, its retransmissions are lost as often, and it falls back to its
200 ms retransmission timeout. A link that sees loss (router/dataplane/engine.py, told by
its peer's heartbeats) seals smaller units instead: each piece here is a valid super-frame
of at most ``max_segs`` segments, so losing a datagram costs a few segments, not 45.

The pieces are what the receiving kernel's segmentation (``tcp_gso_segment``) would make
of the original, grouped: concatenating the segments of every piece gives exactly the
segments of the original frame (tests/unit/test_gsosplit.py checks this against a
software segmenter, checksums included). For piece ``i`` holding payload bytes [a, b):

* IPv4: total length for its size, the ID advanced by ``a / gso_size`` (the kernel gives
  each segment the next ID), the header checksum computed again; IPv6: payload length;
* TCP: sequence number + a; FIN and PSH only on the last piece, CWR only on the first;
* the TCP checksum field holds the pseudo-header sum (``NEEDS_CSUM``: the stack left the
  rest for whoever segments), which includes the TCP length: it is moved from the whole
  length to the piece's in ones'-complement arithmetic (RFC 1624);
* the virtio-net header is the original's; a piece of one segment is no longer GSO.

Anything else (not TCP, no ``NEEDS_CSUM``, IPv6 extension headers, a header that does not
parse) is not cut: ``split`` returns None and the frame travels whole, as before.
"""

from __future__ import annotations

import dataclasses
import struct

from .errors import RemoteProtocolError
from .ethernet import (
    ETH_HLEN,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    IP_PROTO_TCP,
    IPV6_HLEN,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    VnetHeader,
    checksum,
)

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80


def _ones_add(a: int, b: int) -> int:
    s = a + b
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def split(frame: bytes | bytearray | memoryview, max_segs: int) -> list[bytes] | None:
    """``frame`` (a virtio-net header, then Ethernet) as super-frames of at most
    ``max_segs`` segments each; None if it has no more than that or cannot be cut."""
    if max_segs < 1 or len(frame) < VNET_HDR_LEN + ETH_HLEN + 20:
        return None
    try:
        vh = VnetHeader.decode(frame)
    except RemoteProtocolError:
        return None
    gso, gso_size, csum_start = vh.gso_type & ~GSO_ECN, vh.gso_size, vh.csum_start
    if gso not in (GSO_TCPV4, GSO_TCPV6) or not vh.flags & NEEDS_CSUM or gso_size == 0:
        return None
    eth = VNET_HDR_LEN
    ip = eth + ETH_HLEN
    (ethertype,) = _U16.unpack_from(frame, eth + 12)
    if gso == GSO_TCPV4:
        if ethertype != ETHERTYPE_IPV4 or frame[ip] >> 4 != 4 or frame[ip + 9] != IP_PROTO_TCP:
            return None
        l4 = ip + (frame[ip] & 0x0F) * 4
    else:
        if ethertype != ETHERTYPE_IPV6 or frame[ip] >> 4 != 6 or frame[ip + 6] != IP_PROTO_TCP:
            return None
        l4 = ip + IPV6_HLEN
    if l4 - eth != csum_start or vh.csum_offset != 16 or l4 + 20 > len(frame):
        return None
    end = l4 + (frame[l4 + 12] >> 4) * 4  # the payload starts here
    if end - l4 < 20 or end > len(frame):
        return None
    payload = len(frame) - end
    if payload <= max_segs * gso_size:
        return None
    tcp_hlen = end - l4
    whole_len = tcp_hlen + payload
    (check,) = _U16.unpack_from(frame, l4 + 16)
    (seq,) = _U32.unpack_from(frame, l4 + 4)
    tcp_flags = frame[l4 + 13]
    ip_id = _U16.unpack_from(frame, ip + 4)[0] if gso == GSO_TCPV4 else 0
    view = memoryview(frame)
    head = bytes(view[eth:end])
    step = max_segs * gso_size
    single = dataclasses.replace(vh, gso_type=GSO_NONE, gso_size=0).encode()
    multi = vh.encode()
    pieces: list[bytes] = []
    for a in range(0, payload, step):
        b = min(a + step, payload)
        segs = -(-(b - a) // gso_size)
        h = bytearray(head)
        o = l4 - eth
        piece_len = tcp_hlen + b - a
        if gso == GSO_TCPV4:
            i = ip - eth
            _U16.pack_into(h, i + 2, (o - i) + piece_len)
            _U16.pack_into(h, i + 4, (ip_id + a // gso_size) & 0xFFFF)
            _U16.pack_into(h, i + 10, 0)
            _U16.pack_into(h, i + 10, checksum(h[i:o]))
        else:
            _U16.pack_into(h, ip - eth + 4, piece_len)
        _U32.pack_into(h, o + 4, (seq + a) & 0xFFFFFFFF)
        f = tcp_flags
        if b < payload:
            f &= ~(TCP_FIN | TCP_PSH)
        if a > 0:
            f &= ~TCP_CWR
        h[o + 13] = f
        # the pseudo-header sum: the whole TCP length out, the piece's in (RFC 1624)
        _U16.pack_into(h, o + 16, _ones_add(_ones_add(check, ~whole_len & 0xFFFF), piece_len))
        pieces.append(b"".join((multi if segs > 1 else single, h, view[end + a:end + b])))
    return pieces
