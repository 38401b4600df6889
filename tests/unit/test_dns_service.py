"""DnsService: the router's DNS duties (names, news, claims, peers that left) without I/O.

Two services stand for two routers; ``ship`` carries one's news to the other the way the
mesh would (through the gossiper's decode/on_gossip), so the tests see what peers see.
"""

from __future__ import annotations

import pytest

from weftnet.dns.gossip import Entries
from weftnet.dns.service import EXTERN, PEER_GONE_GRACE, DnsService, default_hostname, parse_claims
from weftnet.proto.errors import LocalProtocolError

T0 = 1_700_000_000.0
A, B = 0x0A0000000001, 0x0A0000000002


def ship(news: Entries | None, to: DnsService, now: float) -> None:
    """Gossip ``news`` to ``to``, arriving at ``now`` on its mesh's clock."""
    assert news is not None
    to.gossiper.on_gossip(to.gossiper.decode(news.encode()), now)


def test_default_hostnames() -> None:
    assert default_hostname("c1") == "c1.weft.local."
    assert default_hostname("Web") == "web.weft.local."
    assert default_hostname("db.example.org", "mesh.test") == "db.example.org."
    assert default_hostname("c1", "mesh.test.") == "c1.mesh.test."
    for unusable in ("pid:42", "/proc/42/ns/net", "a+b", "x" * 64):
        assert default_hostname(unusable) is None


def test_register_gossip_lookup_and_unregister() -> None:
    a, b = DnsService(A, T0), DnsService(B, T0)
    assert a.register("c1", "c1.weft.local.", ["10.2.1.1", "10.2.1.11"], T0) == 2
    assert a.register("c1", "c1.weft.local.", ["10.2.1.1"], T0) == 0  # held already
    assert a.take_claims_changed() and not a.take_claims_changed()
    ship(a.take_news(), b, T0)
    assert a.take_news() is None
    assert b.lookup("c1") == ("c1.weft.local.", ("10.2.1.1", "10.2.1.11"))
    assert b.lookup("C1.Weft.Local") == ("c1.weft.local.", ("10.2.1.1", "10.2.1.11"))
    assert [e["origin"] for e in b.entries_report()] == ["0a:00:00:00:00:01"] * 2

    assert a.unregister("c1", T0 + 1, ["10.2.1.11"]) == 1
    ship(a.take_news(), b, T0 + 1)
    assert b.lookup("c1")[1] == ("10.2.1.1",)
    assert a.unregister("c1", T0 + 2) == 1
    ship(a.take_news(), b, T0 + 2)
    assert b.lookup("c1")[1] == () and b.entries_report() == []
    assert a.claims() == []


def test_gossip_time_is_the_mesh_clock_plus_the_wall_offset() -> None:
    # the mesh's clock started at 0 when the wall clock read T0 - 5
    a, b = DnsService(A, T0), DnsService(B, T0, wall_offset=T0 - 5.0)
    a.register("c1", "c1.weft.local.", ["10.2.1.1"], T0)
    ship(a.take_news(), b, 5.0)
    assert b.store.now == T0 and b.lookup("c1")[1] == ("10.2.1.1",)
    # an hour later a's removal arrives: stamped an hour on, and on b's clock it is not
    # from the future, so no clock-skew clamp shortens the tombstone's life
    a.unregister("c1", T0 + 3600)
    ship(a.take_news(), b, 3605.0)
    assert b.store.now == T0 + 3600
    (dead,) = b.store.entries(tombstones=True)
    assert dead.tombstone and dead.deleted_at == int(T0) + 3600


def test_dns_add_and_remove() -> None:
    a = DnsService(A, T0, domain="mesh.test")
    assert a.add("web", ["10.9.0.1", "10.9.0.2"], None, T0) == 2
    assert a.add("web", ["10.9.0.3"], "c3", T0) == 1
    assert a.claims() == [("web.mesh.test.", "10.9.0.1", EXTERN), ("web.mesh.test.", "10.9.0.2", EXTERN),
                          ("web.mesh.test.", "10.9.0.3", "c3")]
    with pytest.raises(LocalProtocolError):
        a.add("web", [], None, T0)
    with pytest.raises(LocalProtocolError):
        a.add("bad name!", ["10.9.0.1"], None, T0)
    with pytest.raises(LocalProtocolError):
        a.add("web", ["10.9.0.300"], None, T0)
    with pytest.raises(LocalProtocolError):
        a.remove(T0)
    # every criterion given must match
    assert a.remove(T0, name="web", container="nope") == 0
    assert a.remove(T0, addresses=["10.9.0.2"]) == 1
    assert a.remove(T0, name="web", container="c3") == 1
    assert a.lookup("web")[1] == ("10.9.0.1",)
    assert a.remove(T0, name="web.mesh.test.") == 1
    assert a.lookup("web")[1] == ()


def test_restore_keeps_attached_and_external_claims_and_corrects_old_copies() -> None:
    a, b = DnsService(A, T0), DnsService(B, T0)
    a.register("c1", "c1.weft.local.", ["10.2.1.1"], T0)
    a.register("c2", "c2.weft.local.", ["10.2.1.2"], T0)
    a.add("ext", ["192.0.2.1"], None, T0)
    ship(a.take_news(), b, T0)
    saved = parse_claims([list(c) for c in a.claims()])
    assert saved == a.claims()

    # a restarts; c2 went away while it was down
    a2 = DnsService(A, T0 + 60)
    a2.restore(saved, {"c1"}.__contains__, T0 + 60)
    assert a2.take_claims_changed()
    assert a2.lookup("c1")[1] == ("10.2.1.1",) and a2.lookup("ext")[1] == ("192.0.2.1",)
    assert a2.lookup("c2")[1] == ()
    # the peer still holds the old incarnation's entries (higher versions than a2's):
    # a2 corrects them, and b ends up with a2's truth
    a2.take_news()
    ship(b.gossiper.gossip(), a2, T0 + 60)
    ship(a2.take_news(), b, T0 + 60)
    assert b.lookup("c2")[1] == () and b.lookup("c1")[1] == ("10.2.1.1",)
    assert a2.store.digest() == b.store.digest()


def test_parse_claims_skips_garbage() -> None:
    assert parse_claims(None) == [] and parse_claims({"x": 1}) == []
    assert parse_claims([["c1.weft.local.", "10.0.0.1", "c1"], ["c1.weft.local.", "10.0.0.1", "c1"],
                         ["NoDot", "10.0.0.1", "c"], ["a.b.", "10.0.0.999", "c"], ["a.b.", "10.0.0.1", ""],
                         ["a.b.", "10.0.0.1"], "text", [1, 2, 3]]) == [("c1.weft.local.", "10.0.0.1", "c1")]


def test_names_of_a_router_gone_from_the_topology_go_after_the_grace_period() -> None:
    a, b = DnsService(A, T0), DnsService(B, T0)
    b.register("c9", "c9.weft.local.", ["10.2.1.9"], T0)
    ship(b.take_news(), a, T0)
    # B present: nothing happens however long
    assert a.handle_timer(T0 + 1000, [A, B]) == []
    # B absent, then back before the grace period ends: nothing happens
    assert a.handle_timer(T0 + 1001, [A]) == []
    assert a.get_timer() <= T0 + 1001 + PEER_GONE_GRACE
    assert a.handle_timer(T0 + 1001 + PEER_GONE_GRACE / 2, [A, B]) == []
    # absent for the whole grace period: its names go, and that is news
    assert a.handle_timer(T0 + 2000, [A]) == []
    assert a.handle_timer(T0 + 2000 + PEER_GONE_GRACE, [A]) == [B]
    assert a.lookup("c9")[1] == ()
    news = a.take_news()
    assert news is not None and all(e.tombstone and e.origin == B for e in news.entries)
    # B was alive after all: it re-asserts its names, and they come back
    ship(news, b, T0 + 2000 + PEER_GONE_GRACE)
    ship(b.take_news(), a, T0 + 2000 + PEER_GONE_GRACE)
    assert a.lookup("c9")[1] == ("10.2.1.9",)


def test_remove_peer_now_and_never_ourselves() -> None:
    a, b = DnsService(A, T0), DnsService(B, T0)
    b.register("c9", "c9.weft.local.", ["10.2.1.9"], T0)
    ship(b.take_news(), a, T0)
    assert a.remove_peer(A, T0) == 0
    assert a.remove_peer(B, T0) == 1
    assert a.lookup("c9")[1] == ()
