"""The "dns" gossip channel, driven through real MeshNodes' Gossiper contract."""

from __future__ import annotations

import pytest

from weftnet.dns.gossip import CHANNEL, DnsGossiper, Entries, news
from weftnet.dns.records import Entry, RecordStore, digest_of_entries
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.gossip import SendQueue

A, B = 0xA, 0xB
T0 = 1_700_000_000.0


def test_channel_name() -> None:
    assert CHANNEL == "dns"


def test_decode_on_gossip_and_digests() -> None:
    a, b = RecordStore(A, T0), RecordStore(B, T0)
    ga, gb = DnsGossiper(a), DnsGossiper(b)
    assert ga.gossip() is None
    a.add("x.weft.local", "10.32.0.1", "c1", T0)
    full = ga.gossip()
    assert full is not None
    seen: list[list[Entry]] = []
    gb = DnsGossiper(b, on_change=seen.append)
    data = gb.decode(full.encode())
    assert gb.digest_of(data) == ga.digest() != gb.digest()
    delta = gb.on_gossip(data, T0)
    assert isinstance(delta, Entries) and delta.entries == tuple(a.entries())
    assert seen == [a.entries()]
    assert gb.on_gossip(data, T0) is None
    assert gb.digest() == ga.digest()
    with pytest.raises(RemoteProtocolError):
        gb.decode(b"\x91\x01")


def test_coalescing_keeps_the_best_per_key() -> None:
    live = Entry("x.weft.local.", "10.32.0.1", "c1", A, 1)
    dead = Entry("x.weft.local.", "10.32.0.1", "c1", A, 2, 5)
    other = Entry("y.weft.local.", "10.32.0.1", "c1", A, 1)
    q = SendQueue()
    q.put(CHANNEL, 1, Entries((dead,)))
    q.put(CHANNEL, 1, Entries((other, live)))
    [(_, _, merged)] = q.take()
    assert isinstance(merged, Entries)
    assert merged.entries == (dead, other)
    assert digest_of_entries(merged.entries) == digest_of_entries([live, dead, other])


def test_overrides_are_offered_as_news_for_everyone() -> None:
    a = RecordStore(A, T0)
    ga = DnsGossiper(a)
    stale = Entry("old.weft.local.", "10.32.0.1", "c1", A, 3)   # from our previous incarnation
    delta = ga.on_gossip(Entries((stale,)), T0)
    assert isinstance(delta, Entries)
    (fix,) = delta.entries
    assert (fix.version, fix.tombstone) == (4, True)
    out = ga.take_news()
    assert out is not None and out.entries == (fix,)
    assert ga.take_news() is None
    assert news([]) is None
