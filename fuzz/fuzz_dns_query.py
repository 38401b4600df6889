"""Fuzz DNS query handling: any bytes either get a well-formed reply (same id, QR set,
within the UDP limit, readable by dnslib), are declared not ours (None), or raise
RemoteProtocolError (dropped). The TCP stream decoder gives the same messages fed in one
chunk or byte by byte, and checking an upstream's reply never raises."""

from __future__ import annotations

import random

import dnslib

from weftnet.dns.answer import answer
from weftnet.dns.codec import StreamDecoder, matches_query
from weftnet.dns.records import RecordStore
from weftnet.proto.errors import RemoteProtocolError

STORE = RecordStore(1, 0.0)
STORE.add("web.weft.local", "10.32.0.1", "c1", 0.0)
STORE.add("a.b.weft.local", "10.32.0.2", "c2", 0.0)
for _i in range(1, 41):
    STORE.add("big.weft.local", f"10.40.0.{_i}", "big", 0.0)
STORE.add("web.weft.local", "fd32::1", "c1", 0.0)    # IPv6: AAAA and ip6.arpa PTR


def _query(name: str, qtype: str = "A", edns: int | None = None) -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns))
    return bytes(q.pack())


SEEDS = [
    _query("web.weft.local"),
    _query("BIG.weft.local", "A", 1232),
    _query("web", "ANY"),
    _query("1.0.32.10.in-addr.arpa", "PTR"),
    _query("b.weft.local", "AAAA", 700),
    _query("web.weft.local", "AAAA"),
    _query("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.3.d.f.ip6.arpa", "PTR"),
    _query("nope.weft.local", "MX"),
    _query("example.com"),
    b"\x00\x05\x00\x14" + _query("web.weft.local")[:-5],
]
_REPLY_TO = _query("web.weft.local")


def _frames(data: bytes, chunk: int) -> tuple[list[bytes], bool]:
    d = StreamDecoder()
    out: list[bytes] = []
    try:
        for i in range(0, len(data), chunk):
            d.feed(data[i:i + chunk])
            while (m := d.next_message()) is not None:
                out.append(m)
    except RemoteProtocolError:
        return out, True
    return out, False


def test_one_input(data: bytes) -> None:
    for max_udp in (512, 1500, None):
        try:
            out = answer(data, store=STORE, ttl=1, rng=random.Random(0), max_udp=max_udp)
        except RemoteProtocolError:
            continue
        if out is None:
            continue
        assert len(out) >= 12 and out[:2] == data[:2] and out[2] & 0x80
        if max_udp is not None:
            assert len(out) <= max_udp
        try:
            dnslib.DNSRecord.parse(out)   # our replies are well-formed
        except dnslib.DNSError:
            # DNS allows any octet in a label (RFC 2181 section 11), dnslib does not: a reply
            # may be unreadable to it only where it echoes a question dnslib cannot read
            try:
                dnslib.DNSRecord.parse(data)
            except dnslib.DNSError:
                continue
            raise
    assert _frames(data, len(data) or 1) == _frames(data, 1)
    matches_query(_REPLY_TO, data)
    matches_query(data, data)


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
