"""weftDNS with IPv6 under hypothesis: answer() against a naive oracle for A, AAAA, ANY and
PTR (in-addr.arpa and ip6.arpa) over stores holding both families, the reverse-name
conversions against ``ipaddress``, and the gossip codec round trip of IPv6 entries."""

from __future__ import annotations

import ipaddress
import random

import dnslib
from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet.dns.answer import answer
from weftnet.dns.names import address_of_reverse, labels_of, normalize_address, reverse_name
from weftnet.dns.records import RecordStore, decode_entries, encode_entries
from weftnet.proto.errors import LocalProtocolError

DOMAIN = "weft.local."
HOSTS = ["a.weft.local.", "b.weft.local.", "x.y.weft.local."]
V4 = [f"10.32.0.{i}" for i in range(1, 12)]
V6 = [f"fd32:7765:6674:1::{i:x}" for i in range(1, 30)] + ["2001:db8::a:b:c:d", "fd00::"]
ADDRS = V4 + V6
QTYPES = ["A", "AAAA", "ANY", "PTR", "MX"]
NAMES = HOSTS + ["y.weft.local.", "nope.weft.local.", "a.", "nope."] + [
    ipaddress.ip_address(a).reverse_pointer + "." for a in ADDRS[::3]] + [
    # not the canonical spelling of an ip6.arpa name: never ours
    "1.0.0.ip6.arpa.", "x." + ipaddress.ip_address(V6[0]).reverse_pointer[2:] + "."]

records = st.one_of(
    st.lists(st.tuples(st.sampled_from(HOSTS), st.sampled_from(ADDRS)), max_size=30),
    st.lists(st.tuples(st.sampled_from(HOSTS), st.sampled_from(ADDRS)), max_size=4).map(
        lambda r: r + [("a.weft.local.", a) for a in V6]))   # long AAAA answers: truncation


def oracle(recs: set[tuple[str, str]], name: str, qtype: str) -> tuple[int, list[str]] | None:
    """(rcode, sorted answers) or None (forward)."""
    name = name.lower()
    family = {"A": 4, "AAAA": 6}.get(qtype)

    def forward(n: str) -> tuple[int, list[str]]:
        if not (n == DOMAIN or any(h == n or h.endswith("." + n) for h, _ in recs)):
            return (3, [])
        if qtype in ("A", "AAAA", "ANY"):
            return (0, sorted({a for h, a in recs if h == n
                               and family in (None, ipaddress.ip_address(a).version)}))
        return (0, [])

    if name == DOMAIN or name.endswith("." + DOMAIN):
        return forward(name)
    if name.count(".") == 1:
        full = name + DOMAIN
        return forward(full) if any(h == full for h, _ in recs) else None
    pointers = {ipaddress.ip_address(a).reverse_pointer + ".": a for _, a in recs}
    if name in pointers:
        names = sorted({h for h, a in recs if a == pointers[name]})
        return (0, names if qtype in ("PTR", "ANY") else [])
    return None


@settings(max_examples=400)
@given(records, st.sampled_from(NAMES), st.booleans(), st.sampled_from(QTYPES),
       st.sampled_from([None, 512, 1232]), st.integers(0, 2**32))
def test_answer_matches_the_oracle(recs: list[tuple[str, str]], name: str, upper: bool,
                                   qtype: str, max_udp: int | None, seed: int) -> None:
    store = RecordStore(1, 0.0)
    for i, (h, a) in enumerate(recs):
        store.add(h, a, f"c{i % 3}", 0.0)
    asked = name.upper() if upper else name
    q = dnslib.DNSRecord.question(asked, qtype)
    out = answer(q.pack(), store=store, ttl=5, rng=random.Random(seed), max_udp=max_udp)
    want = oracle(set(recs), name, qtype)
    if want is None:
        assert out is None
        return
    assert out is not None
    r = dnslib.DNSRecord.parse(out)
    assert r.header.aa == 1 and str(r.q.qname) == asked
    rcode, expected = want
    assert r.header.rcode == rcode
    got = []
    for rr in r.rr:
        if rr.rtype in (dnslib.QTYPE.A, dnslib.QTYPE.AAAA):
            text = str(ipaddress.ip_address(str(rr.rdata)))
            assert (rr.rtype == dnslib.QTYPE.A) == (ipaddress.ip_address(text).version == 4)
            got.append(text)
        else:
            assert rr.rtype == dnslib.QTYPE.PTR
            got.append(str(rr.rdata))
    assert len(got) == len(set(got)) and set(got) <= set(expected)
    if r.header.tc:
        assert max_udp is not None and len(got) < len(expected)
    else:
        assert sorted(got) == expected


@given(st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                 st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)))
def test_reverse_names_round_trip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    name = reverse_name(str(ip))
    assert name == ip.reverse_pointer + "."
    assert address_of_reverse(labels_of(name)) == str(ip)


@given(st.text(max_size=45))
def test_normalize_address_is_ipaddress_or_a_one_line_error(text: str) -> None:
    try:
        want: str | None = str(ipaddress.ip_address(text)) if "%" not in text else None
    except ValueError:
        want = None
    try:
        got: str | None = normalize_address(text)
    except LocalProtocolError as exc:
        assert "\n" not in exc.reason
        got = None
    assert got == want


@given(st.lists(st.tuples(st.sampled_from(HOSTS), st.sampled_from(ADDRS)), min_size=1, max_size=10))
def test_ipv6_entries_cross_the_gossip_codec(recs: list[tuple[str, str]]) -> None:
    store = RecordStore(1, 0.0)
    delta = []
    for h, a in recs:
        delta += store.add(h, a, "c1", 0.0)
    assert decode_entries(encode_entries(delta)) == delta
    other = RecordStore(2, 0.0)
    other.merge(delta, 0.0)
    assert other.digest() == store.digest()
    for h, _ in recs:
        assert other.lookup(h) == store.lookup(h)
