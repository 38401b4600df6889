"""answer() against a naive oracle of the decision table; the fast query reader against
dnslib's general one."""

from __future__ import annotations

import random

import dnslib
from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet.dns.answer import answer
from weftnet.dns.codec import _parse_general, parse_query
from weftnet.dns.records import RecordStore
from weftnet.proto.errors import RemoteProtocolError

DOMAIN = "weft.local."
HOSTS = ["a.weft.local.", "b.weft.local.", "x.y.weft.local.", "a.other.org."]
ADDRS = [f"10.32.0.{i}" for i in range(1, 40)]
QTYPES = ["A", "AAAA", "PTR", "ANY", "MX", "TXT"]
NAMES = HOSTS + ["y.weft.local.", "weft.local.", "nope.weft.local.", "a.", "b.", "nope.",
                 "example.com.", "a.weft.local.example.com."] + [
    ".".join(reversed(a.split("."))) + ".in-addr.arpa." for a in ADDRS[:5]]

records = st.one_of(
    st.lists(st.tuples(st.sampled_from(HOSTS), st.sampled_from(ADDRS)), max_size=45),
    # one name with many addresses: replies that need truncation over UDP
    st.lists(st.tuples(st.sampled_from(HOSTS), st.sampled_from(ADDRS)), max_size=5).map(
        lambda r: r + [("a.weft.local.", a) for a in ADDRS]))


def random_case(name: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c for c, f in zip(name, flips + [False] * len(name), strict=False))


def oracle(recs: set[tuple[str, str]], name: str, qtype: str) -> tuple[int, list[str]] | None:
    """(rcode, sorted answers) or None (forward)."""
    name = name.lower()

    def exists(n: str) -> bool:
        return n == DOMAIN or any(h == n or h.endswith("." + n) for h, _ in recs)

    def forward(n: str) -> tuple[int, list[str]]:
        if not exists(n):
            return (3, [])
        if qtype in ("A", "ANY"):
            return (0, sorted({a for h, a in recs if h == n}))
        return (0, [])

    if name == DOMAIN or name.endswith("." + DOMAIN):
        return forward(name)
    if name.count(".") == 1:
        full = name + DOMAIN
        return forward(full) if exists(full) else None
    if name.endswith(".in-addr.arpa."):
        addr = ".".join(reversed(name[: -len(".in-addr.arpa.")].split(".")))
        names = sorted({h for h, a in recs if a == addr})
        if not names:
            return None
        return (0, names if qtype in ("PTR", "ANY") else [])
    return None


@settings(max_examples=500)
@given(records, st.one_of(st.just("a.weft.local."), st.sampled_from(NAMES)),
       st.lists(st.booleans(), max_size=40), st.one_of(st.just("A"), st.sampled_from(QTYPES)),
       st.one_of(st.none(), st.integers(0, 4096)),
       st.sampled_from([None, 512, 1232, 4096]), st.integers(0, 2**32))
def test_answer_matches_the_oracle(recs: list[tuple[str, str]], name: str, flips: list[bool],
                                   qtype: str, edns: int | None, max_udp: int | None,
                                   seed: int) -> None:
    store = RecordStore(1, 0.0)
    for i, (h, a) in enumerate(recs):
        store.add(h, a, f"c{i % 3}", 0.0)
    asked = random_case(name, flips)
    q = dnslib.DNSRecord.question(asked, qtype)
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns))
    out = answer(q.pack(), store=store, ttl=5, rng=random.Random(seed), max_udp=max_udp)
    want = oracle(set(recs), name, qtype)
    if want is None:
        assert out is None
        return
    assert out is not None
    r = dnslib.DNSRecord.parse(out)
    assert r.header.id == q.header.id and r.header.aa == 1 and r.header.qr == 1
    assert str(r.q.qname) == asked and r.q.qtype == q.q.qtype
    rcode, expected = want
    assert r.header.rcode == rcode
    got = [str(rr.rdata) for rr in r.rr]
    assert len(got) == len(set(got)) and set(got) <= set(expected)
    assert all(rr.ttl == 5 for rr in r.rr)
    if max_udp is not None:
        limit = min(max_udp, max(512, edns if edns is not None else 512))
        assert len(out) <= limit
    if r.header.tc:
        assert max_udp is not None and len(got) < len(expected)
        assert len(out) + 16 > limit   # the next whole A record (16 bytes) did not fit
    else:
        assert sorted(got) == expected
    assert (edns is not None) == any(rr.rtype == dnslib.QTYPE.OPT for rr in r.ar)


queries = st.builds(
    lambda name, flips, qtype, edns: (name, flips, qtype, edns),
    st.sampled_from(NAMES), st.lists(st.booleans(), max_size=40), st.sampled_from(QTYPES),
    st.one_of(st.none(), st.integers(0, 65535)))


@given(queries, st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
       st.binary(max_size=4))
def test_fast_reader_agrees_with_dnslib(query: tuple[str, list[bool], str, int | None],
                                        flips: list[tuple[int, int]], tail: bytes) -> None:
    name, case, qtype, edns = query
    q = dnslib.DNSRecord.question(random_case(name, case), qtype)
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns))
    data = bytearray(q.pack())
    for pos, value in flips:
        if 2 <= pos < len(data):     # keep the id; mutate the rest
            data[pos] = value
    data += tail
    try:
        fast = parse_query(bytes(data))
    except RemoteProtocolError:
        return
    qid, flags = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:4], "big")
    try:
        slow = _parse_general(bytes(data), qid, flags)
    except RemoteProtocolError:
        return
    assert (fast.labels, fast.qtype, fast.qclass, fast.edns) == (slow.labels, slow.qtype, slow.qclass,
                                                                 slow.edns)
    assert fast.question.lower() == slow.question.lower()
