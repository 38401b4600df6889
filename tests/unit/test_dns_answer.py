"""Answering queries: the decision table of dns/answer.py, read back with dnslib."""

from __future__ import annotations

import random

import dnslib
import pytest

from weftnet.dns.answer import answer
from weftnet.dns.codec import StreamDecoder, frame, matches_query, parse_query
from weftnet.dns.records import RecordStore
from weftnet.proto.errors import RemoteProtocolError

T0 = 1_700_000_000.0
BIG = [f"10.40.0.{i}" for i in range(1, 51)]


@pytest.fixture
def store() -> RecordStore:
    s = RecordStore(1, T0)
    s.add("web.weft.local", "10.32.0.1", "c1", T0)
    s.add("web.weft.local", "10.32.0.2", "c2", T0)
    s.add("db.weft.local", "10.32.0.3", "c3", T0)
    s.add("deep.sub.weft.local", "10.32.0.4", "c4", T0)
    for a in BIG:
        s.add("big.weft.local", a, "big", T0)
    return s


def ask(store: RecordStore, name: str, qtype: str = "A", *, edns: int | None = None,
        max_udp: int | None = 4096, qclass: str = "IN", seed: int = 1) -> dnslib.DNSRecord | None:
    q = dnslib.DNSRecord(q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype),
                                              getattr(dnslib.CLASS, qclass)))
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns))
    data = q.pack()
    out = answer(data, store=store, ttl=7, rng=random.Random(seed), max_udp=max_udp)
    if out is None:
        return None
    r = dnslib.DNSRecord.parse(out)
    assert r.header.id == q.header.id and r.header.qr == 1
    assert matches_query(data, out)
    return r


def addresses(r: dnslib.DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr if rr.rtype == dnslib.QTYPE.A]


def test_a_records_case_insensitive_with_ttl_and_echoed_question(store: RecordStore) -> None:
    r = ask(store, "WeB.Weft.LOCAL")
    assert r is not None and r.header.rcode == dnslib.RCODE.NOERROR and r.header.aa == 1
    assert sorted(addresses(r)) == ["10.32.0.1", "10.32.0.2"]
    assert str(r.q.qname) == "WeB.Weft.LOCAL." and all(rr.ttl == 7 for rr in r.rr)


def test_addresses_are_shuffled(store: RecordStore) -> None:
    orders = set()
    for seed in range(20):
        r = ask(store, "big.weft.local", max_udp=None, seed=seed)
        assert r is not None and sorted(addresses(r)) == sorted(BIG)
        orders.add(tuple(addresses(r)))
    assert len(orders) > 1


def test_nxdomain_and_nodata(store: RecordStore) -> None:
    r = ask(store, "nope.weft.local")
    assert r is not None and r.header.rcode == dnslib.RCODE.NXDOMAIN and r.header.aa == 1
    for name, qtype in [("web.weft.local", "AAAA"), ("web.weft.local", "MX"),
                        ("sub.weft.local", "A"), ("weft.local", "SOA")]:
        r = ask(store, name, qtype)
        assert r is not None and r.header.rcode == dnslib.RCODE.NOERROR and not r.rr, (name, qtype)


def test_any_gives_addresses(store: RecordStore) -> None:
    r = ask(store, "db.weft.local", "ANY")
    assert r is not None and addresses(r) == ["10.32.0.3"]


def test_single_label_names_fall_under_the_domain(store: RecordStore) -> None:
    r = ask(store, "db")
    assert r is not None and addresses(r) == ["10.32.0.3"] and str(r.q.qname) == "db."
    assert ask(store, "nothere") is None          # not ours: forwarded
    assert ask(store, "com", "NS") is None


def test_names_elsewhere_are_not_ours(store: RecordStore) -> None:
    assert ask(store, "example.com") is None
    assert ask(store, "web.weft.local.example.com") is None
    assert ask(store, "web.weft.local", qclass="CH") is None


def test_reverse_lookups(store: RecordStore) -> None:
    r = ask(store, "1.0.32.10.in-addr.arpa", "PTR")
    assert r is not None and [str(rr.rdata) for rr in r.rr] == ["web.weft.local."]
    r = ask(store, "1.0.32.10.in-addr.arpa", "A")
    assert r is not None and r.header.rcode == dnslib.RCODE.NOERROR and not r.rr
    assert ask(store, "9.9.9.9.in-addr.arpa", "PTR") is None
    assert ask(store, "0.32.10.in-addr.arpa", "PTR") is None


def test_udp_truncates_at_512_or_the_edns_size_and_tcp_is_complete(store: RecordStore) -> None:
    r = ask(store, "big.weft.local")
    assert r is not None and r.header.tc == 1 and 0 < len(r.rr) < 50 and len(r.pack()) <= 512
    r = ask(store, "big.weft.local", edns=1232)
    assert r is not None and r.header.tc == 0 and len(r.rr) == 50
    assert r.ar and r.ar[0].rtype == dnslib.QTYPE.OPT
    r = ask(store, "big.weft.local", edns=600)
    assert r is not None and r.header.tc == 1 and len(r.pack()) <= 600
    r = ask(store, "big.weft.local", edns=1232, max_udp=700)
    assert r is not None and r.header.tc == 1 and len(r.pack()) <= 700
    r = ask(store, "big.weft.local", max_udp=None)
    assert r is not None and r.header.tc == 0 and len(r.rr) == 50


def test_edns_version_other_than_zero_gets_badvers(store: RecordStore) -> None:
    q = dnslib.DNSRecord.question("web.weft.local")
    q.add_ar(dnslib.EDNS0(version=1, udp_len=1232))
    out = answer(q.pack(), store=store, ttl=7, rng=random.Random(1), max_udp=4096)
    assert out is not None
    r = dnslib.DNSRecord.parse(out)
    assert not r.rr and r.ar[0].ttl >> 24 == 1 and r.header.rcode == 0  # BADVERS = 16


def test_malformed_queries(store: RecordStore) -> None:
    rng = random.Random(1)
    with pytest.raises(RemoteProtocolError):
        answer(b"\x00\x01", store=store, ttl=1, rng=rng, max_udp=512)       # not even a header
    response = dnslib.DNSRecord.question("web.weft.local").reply().pack()
    with pytest.raises(RemoteProtocolError):
        answer(response, store=store, ttl=1, rng=rng, max_udp=512)          # a response
    two = dnslib.DNSRecord.question("a.weft.local")
    two.add_question(dnslib.DNSQuestion("b.weft.local"))
    cases = [(two.pack(), dnslib.RCODE.FORMERR),
             (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ab", dnslib.RCODE.FORMERR),
             (b"\x12\x34\x29\x00" + b"\x00" * 8, dnslib.RCODE.NOTIMP)]    # opcode UPDATE
    for data, rcode in cases:
        out = answer(data, store=store, ttl=1, rng=rng, max_udp=512)
        assert out is not None
        r = dnslib.DNSRecord.parse(out)
        assert r.header.rcode == rcode and r.header.id == int.from_bytes(data[:2], "big")


def test_queries_with_other_records_use_the_general_reader(store: RecordStore) -> None:
    # an additional record that is not OPT (its name compressed against the question)
    q = dnslib.DNSRecord.question("Web.weft.local")
    plain = q.pack()
    fast = parse_query(plain)
    q.add_ar(dnslib.RR("web.weft.local", dnslib.QTYPE.TXT, rdata=dnslib.TXT("x")))
    slow = parse_query(q.pack())
    assert (slow.labels, slow.qtype, slow.question) == (fast.labels, fast.qtype, fast.question)
    out = answer(q.pack(), store=store, ttl=1, rng=random.Random(1), max_udp=512)
    assert out is not None and len(dnslib.DNSRecord.parse(out).rr) == 2


def test_stream_decoder_and_frames() -> None:
    q1 = dnslib.DNSRecord.question("a.weft.local").pack()
    q2 = dnslib.DNSRecord.question("b.weft.local").pack()
    data = frame(q1) + frame(q2)
    d = StreamDecoder()
    got = []
    for i in range(len(data)):
        d.feed(data[i:i + 1])
        while (m := d.next_message()) is not None:
            got.append(m)
    assert got == [q1, q2] and d.buffered == 0
    d.feed(b"\x00\x03abc")
    with pytest.raises(RemoteProtocolError):
        d.next_message()


def test_matches_query_checks_id_and_question() -> None:
    q = dnslib.DNSRecord.question("a.weft.local")
    r = q.reply()
    assert matches_query(q.pack(), r.pack())
    other = dnslib.DNSRecord.question("b.weft.local").reply()
    other.header.id = q.header.id
    assert not matches_query(q.pack(), other.pack())
    assert not matches_query(q.pack(), q.pack())        # not a response
    assert not matches_query(q.pack(), r.pack()[:11])
