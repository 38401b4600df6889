"""Fuzz the DNS gossip decoder and merge: any bytes decode or raise RemoteProtocolError;
whatever decodes re-encodes to the same entries and merges into a small store without
breaking its invariants (our own claims stay live, the digest matches the entries,
merging the same entries again is no news, lookups agree with the live entries)."""

from __future__ import annotations

from weftnet.dns.gossip import DnsGossiper, Entries
from weftnet.dns.records import Entry, RecordStore, decode_entries, digest_of_entries, encode_entries
from weftnet.proto.errors import RemoteProtocolError

ME, OTHER = 1, 2
NOW = 1_700_000_000.0


def _start() -> RecordStore:
    s = RecordStore(ME, NOW, tombstone_ttl=600.0)
    s.add("web.weft.local", "10.32.0.1", "c1", NOW)
    s.add("gone.weft.local", "10.32.0.2", "c2", NOW)
    s.remove_container("c2", NOW)
    s.merge([Entry("db.weft.local.", "10.32.0.3", "c3", OTHER, 2),
             Entry("old.weft.local.", "10.32.0.4", "c4", OTHER, 3, int(NOW) - 10)], NOW)
    return s


SEEDS = [
    encode_entries([]),
    encode_entries(_start().entries(tombstones=True)),
    encode_entries([Entry("web.weft.local.", "10.32.0.1", "c1", ME, 9, int(NOW)),
                    Entry("x.weft.local.", "10.32.0.9", "c9", ME, 1),
                    Entry("db.weft.local.", "10.32.0.3", "c3", OTHER, 3, int(NOW) + 10**9),
                    Entry("old.weft.local.", "10.32.0.4", "c4", OTHER, 3, 1)]),
    encode_entries([Entry("six.weft.local.", "fd32::9", "c9", OTHER, 2)]),   # a 16-byte address
]


def test_one_input(data: bytes) -> None:
    try:
        entries = decode_entries(data)
    except RemoteProtocolError:
        return
    assert decode_entries(encode_entries(entries)) == entries
    s = _start()
    g = DnsGossiper(s)
    g.on_gossip(Entries(tuple(entries)), NOW)
    # our claim stands (other peers may hold the same name too: round robin, as in weaveDNS)
    assert "10.32.0.1" in s.lookup("web.weft.local.")
    assert s.merge(entries, NOW) == []
    assert s.digest() == digest_of_entries(s.entries(tombstones=True))
    for e in s.entries():
        assert e.address in s.lookup(e.hostname) and e.hostname in s.reverse(e.address)
    news = g.take_news()
    assert news is None or all(e.origin == ME for e in news.entries)
    s.handle_timer(NOW + 10**6)
    assert all(not e.tombstone for e in s.entries(tombstones=True))


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
