"""ACK thinning: which queued TCP ACKs a newer one makes redundant.

Why: a receiving container answers every super-frame the router writes into it with an
ACK, and the router's TAP drain gathers them (~4 per sealed message under a bulk
transfer). They cross the sleeve in one message and the sender's router writes each one
into its container's TCP stack back to back: ~14% of that router's time. Only the last
of a run of cumulative ACKs tells the sender anything the others do not (CAKE's ACK
filter, DOCSIS ACK suppression), so a newer pure ACK of the same flow takes the place of
an older one still waiting in the same message.

What is thinned, conservatively: an ACK that carries nothing else (flags exactly ACK, no
payload, options only NOP/EOL/timestamps, IPv4 unfragmented without options or IPv6
without extension headers), replaced by one of the same flow whose acknowledgement
number is strictly later. Duplicate ACKs (the same number: loss signals), SACKs, window
probes, ECN echoes, SYN/FIN/RST and anything unparsed pass untouched.
"""

from __future__ import annotations

from .ethernet import ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IP_PROTO_TCP, IPV6_HLEN

MAX_HEADERS = IPV6_HLEN + 60  # the longest IP header here (IPv6) and TCP header with options
_ACK_ONLY = 0x10
_OPT_EOL, _OPT_NOP, _OPT_TIMESTAMPS = 0, 1, 8

Frame = bytes | bytearray | memoryview


def pure_ack(frame: Frame, off: int = 0) -> tuple[bytes, int] | None:
    """``(flow, ack number)`` of a pure TCP ACK at ``frame[off:]`` (an Ethernet frame), else
    None. ``flow`` names the direction: MACs, addresses and ports."""
    n = len(frame)
    ip = off + ETH_HLEN
    if not ip + 40 <= n <= ip + MAX_HEADERS:
        return None  # too short for IP and TCP, or longer than any pure ACK (a data frame)
    ethertype = frame[off + 12] << 8 | frame[off + 13]
    if ethertype == ETHERTYPE_IPV4:
        if frame[ip] != 0x45 or frame[ip + 9] != IP_PROTO_TCP or frame[ip + 6] & 0x3F or \
                frame[ip + 7]:
            return None  # options, not TCP, or a fragment (MF or an offset)
        tcp = ip + 20
        length = int.from_bytes(frame[ip + 2:ip + 4], "big") - 20
        addrs = frame[ip + 12:ip + 20]
    elif ethertype == ETHERTYPE_IPV6:
        if frame[ip] >> 4 != 6 or frame[ip + 6] != IP_PROTO_TCP:
            return None
        tcp = ip + IPV6_HLEN
        length = int.from_bytes(frame[ip + 4:ip + 6], "big")
        addrs = frame[ip + 8:ip + 40]
    else:
        return None
    if n < tcp + 20:
        return None
    doff = (frame[tcp + 12] >> 4) * 4
    if doff < 20 or length != doff or n < tcp + doff or frame[tcp + 13] != _ACK_ONLY:
        return None  # payload (or a bad length), or flags besides ACK
    pos, end = tcp + 20, tcp + doff
    while pos < end:  # only NOP, EOL and timestamps: a SACK (or anything else) is kept
        kind = frame[pos]
        if kind == _OPT_EOL:
            break
        if kind == _OPT_NOP:
            pos += 1
            continue
        if kind != _OPT_TIMESTAMPS or pos + 10 > end or frame[pos + 1] != 10:
            return None
        pos += 10
    flow = bytes(frame[off:off + 12]) + bytes(addrs) + bytes(frame[tcp:tcp + 4])
    return flow, int.from_bytes(frame[tcp + 8:tcp + 12], "big")
