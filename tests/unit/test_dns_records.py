"""The DNS record store: our own entries, merging, origin authority, expiry, codec."""

from __future__ import annotations

import pytest

from weftnet.dns.names import address_of_reverse, labels_of, qualify, reverse_name
from weftnet.dns.records import (
    MAX_VERSION,
    TICK,
    Entry,
    RecordStore,
    decode_entries,
    digest_of_entries,
    encode_entries,
    rank,
)
from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.framing import pack

A, B, C = 0xA, 0xB, 0xC
T0 = 1_700_000_000.0


def store(name: int = A, now: float = T0, **kw: float) -> RecordStore:
    return RecordStore(name, now, **kw)


def test_add_normalises_and_looks_up_case_insensitively() -> None:
    s = store()
    delta = s.add("Web.Weft.Local", "10.32.0.1", "c1", T0)
    assert delta == [Entry("web.weft.local.", "10.32.0.1", "c1", A, 1)]
    assert s.lookup("web.weft.local.") == ("10.32.0.1",)
    assert s.add("web.weft.local.", "10.32.0.1", "c1", T0) == []  # already held
    assert s.reverse("10.32.0.1") == ["web.weft.local."]


def test_several_addresses_and_containers() -> None:
    s = store()
    s.add("web.weft.local", "10.32.0.10", "c1", T0)
    s.add("web.weft.local", "10.32.0.9", "c2", T0)
    s.add("web.weft.local", "10.32.0.9", "c3", T0)  # same address twice: one A record
    assert s.lookup("web.weft.local.") == ("10.32.0.9", "10.32.0.10")
    s.remove_container("c2", T0)
    assert s.lookup("web.weft.local.") == ("10.32.0.9", "10.32.0.10")
    s.remove_container("c3", T0)
    assert s.lookup("web.weft.local.") == ("10.32.0.10",)
    assert s.reverse("10.32.0.9") == []


def test_names_exist_when_something_lives_under_them() -> None:
    s = store()
    s.add("a.b.weft.local", "10.32.0.1", "c1", T0)
    assert s.has_name("a.b.weft.local.") and s.has_name("b.weft.local.")
    assert s.has_name("weft.local.") and not s.has_name("c.weft.local.")
    s.remove(T0, hostname="a.b.weft.local")
    assert not s.has_name("b.weft.local.") and not s.has_name("weft.local.")


def test_remove_tombstones_only_our_matching_entries() -> None:
    s = store()
    s.add("x.weft.local", "10.32.0.1", "c1", T0)
    s.add("x.weft.local", "10.32.0.2", "c1", T0)
    s.merge([Entry("x.weft.local.", "10.32.0.3", "c9", B, 4)], T0)
    delta = s.remove(T0 + 5, hostname="x.weft.local", address="10.32.0.2")
    assert [(e.address, e.version, e.deleted_at) for e in delta] == [("10.32.0.2", 2, int(T0) + 5)]
    assert s.lookup("x.weft.local.") == ("10.32.0.1", "10.32.0.3")
    assert s.remove(T0, container="c9") == []  # B's entry is B's to remove
    with pytest.raises(LocalProtocolError):
        s.remove(T0)


def test_re_adding_a_removed_entry_outranks_its_tombstone() -> None:
    s = store()
    s.add("x.weft.local", "10.32.0.1", "c1", T0)
    s.remove_container("c1", T0)
    (again,) = s.add("x.weft.local", "10.32.0.1", "c1", T0)
    assert (again.version, again.tombstone) == (3, False)


def test_merge_keeps_the_highest_rank_and_reports_news() -> None:
    s = store()
    live = Entry("x.weft.local.", "10.32.0.1", "c1", B, 2)
    assert s.merge([live], T0) == [live]
    assert s.merge([live], T0) == []
    assert s.merge([Entry("x.weft.local.", "10.32.0.1", "c1", B, 1)], T0) == []
    dead = Entry("x.weft.local.", "10.32.0.1", "c1", B, 2, int(T0))
    assert s.merge([dead], T0) == [dead]          # equal version: the tombstone wins
    earlier = Entry("x.weft.local.", "10.32.0.1", "c1", B, 2, int(T0) - 1)
    assert s.merge([earlier], T0) == [earlier]    # of two tombstones, the earlier deletion
    assert s.lookup("x.weft.local.") == ()


def test_our_live_entry_is_defended_against_outside_tombstones() -> None:
    s = store()
    s.add("x.weft.local", "10.32.0.1", "c1", T0)
    # another router ran remove_peer on us during a partition
    (ours,) = s.merge([Entry("x.weft.local.", "10.32.0.1", "c1", A, 2, int(T0))], T0)
    assert (ours.version, ours.tombstone) == (3, False)
    assert s.lookup("x.weft.local.") == ("10.32.0.1",)
    assert s.take_overrides() == [ours]
    assert s.take_overrides() == []


def test_restarted_router_reconciles_what_others_hold_about_it() -> None:
    old = store(A)
    old.add("keep.weft.local", "10.32.0.1", "c1", T0)
    old.add("gone.weft.local", "10.32.0.2", "c2", T0)
    other = store(B)
    other.merge(old.entries(), T0)
    # A restarts: empty store, re-registers the container that is still attached
    new = store(A, T0 + 60)
    new.reconcile([("keep.weft.local", "10.32.0.1", "c1")], T0 + 60)
    delta = new.merge(other.entries(tombstones=True), T0 + 60)
    assert {(e.hostname, e.tombstone) for e in delta} == {("gone.weft.local.", True)}
    other.merge(delta, T0 + 60)
    assert other.lookup("gone.weft.local.") == ()
    assert other.lookup("keep.weft.local.") == ("10.32.0.1",)


def test_reconcile_sets_our_entries_exactly() -> None:
    s = store()
    s.add("a.weft.local", "10.32.0.1", "c1", T0)
    s.add("b.weft.local", "10.32.0.2", "c2", T0)
    delta = s.reconcile([("b.weft.local", "10.32.0.2", "c2"), ("c.weft.local", "10.32.0.3", "c3")], T0)
    assert [(e.hostname, e.tombstone) for e in delta] == [("a.weft.local.", True), ("c.weft.local.", False)]
    assert [e.hostname for e in s.entries()] == ["b.weft.local.", "c.weft.local."]


def test_remove_peer_tombstones_its_entries_and_it_can_defend_them() -> None:
    b = store(B)
    b.add("x.weft.local", "10.32.0.1", "c1", T0)
    a = store(A)
    a.merge(b.entries(), T0)
    delta = a.remove_peer(B, T0 + 1)
    assert [(e.version, e.tombstone) for e in delta] == [(2, True)]
    with pytest.raises(LocalProtocolError):
        a.remove_peer(A, T0)
    (back,) = b.merge(delta, T0 + 1)       # B was alive after all
    assert (back.version, back.tombstone) == (3, False)
    a.merge([back], T0 + 1)
    assert a.lookup("x.weft.local.") == ("10.32.0.1",)


def test_tombstones_expire_after_the_ttl_and_do_not_come_back() -> None:
    s = store(tombstone_ttl=100.0)
    s.add("x.weft.local", "10.32.0.1", "c1", T0)
    (dead,) = s.remove_container("c1", T0)
    assert s.get_timer() == T0 + TICK        # wakes at least every TICK
    assert s.handle_timer(T0 + 99) == []
    s.handle_timer(T0 + 95)
    assert s.get_timer() == dead.deleted_at + 100.0
    assert s.handle_timer(T0 + 100) == [dead]
    assert len(s) == 0
    # an expired tombstone arriving later is not stored again ...
    assert s.merge([dead], T0 + 100) == []
    assert len(s) == 0
    # ... but still removes the older live copy it outranks, and is passed on
    other = store(B, T0 + 200, tombstone_ttl=100.0)
    other.merge([Entry("x.weft.local.", "10.32.0.1", "c1", A, 1)], T0 + 200)
    assert other.merge([dead], T0 + 200) == [dead]
    assert len(other) == 0


def test_tombstones_from_a_fast_clock_are_clamped() -> None:
    s = store(B, max_skew=60.0)
    far = Entry("x.weft.local.", "10.32.0.1", "c1", C, 2, int(T0) + 86400)
    (held,) = s.merge([far], T0)
    assert held.deleted_at == int(T0) + 60


def test_merge_judges_skew_and_expiry_by_the_now_it_is_given() -> None:
    s = store(B, max_skew=60.0, tombstone_ttl=100.0)   # last saw T0
    later = Entry("x.weft.local.", "10.32.0.1", "c1", C, 2, int(T0) + 3600)
    (held,) = s.merge([later], T0 + 3600)               # an hour on: not from the future
    assert held.deleted_at == int(T0) + 3600 and s.now == T0 + 3600
    old = Entry("y.weft.local.", "10.32.0.2", "c2", C, 2, int(T0) + 3000)
    assert s.merge([old], T0) == []                     # time never goes back: expired
    assert s.now == T0 + 3600 and len(s) == 1


def test_versions_at_the_maximum_cannot_be_outranked() -> None:
    s = store()
    s.add("x.weft.local", "10.32.0.1", "c1", T0)
    forged = Entry("x.weft.local.", "10.32.0.1", "c1", A, MAX_VERSION, int(T0))
    assert s.merge([forged], T0) == [forged]   # cannot answer with a higher version
    with pytest.raises(LocalProtocolError):
        s.add("x.weft.local", "10.32.0.1", "c1", T0)


def test_digest_tracks_state() -> None:
    a, b = store(A), store(B)
    a.add("x.weft.local", "10.32.0.1", "c1", T0)
    b.merge(a.entries(), T0)
    assert a.digest() == b.digest() == digest_of_entries(a.entries(tombstones=True))
    a.remove_container("c1", T0)
    assert a.digest() != b.digest()
    b.merge(a.entries(tombstones=True), T0)
    assert a.digest() == b.digest()


def test_codec_round_trip_and_refusals() -> None:
    entries = [Entry("x.weft.local.", "10.32.0.1", "c1", A, 1),
               Entry("y.weft.local.", "255.255.255.255", "n" * 1024, (1 << 48) - 1, MAX_VERSION, 7)]
    assert decode_entries(encode_entries(entries)) == entries
    bad = [b"\xc1", pack({}), pack([[1]]), pack([["X.weft.local.", b"\0" * 4, "c", 1, 1, 0]]),
           pack([["x.", b"\0" * 3, "c", 1, 1, 0]]), pack([["x.", b"\0" * 4, "", 1, 1, 0]]),
           pack([["x.", b"\0" * 4, "c", 0, 1, 0]]), pack([["x.", b"\0" * 4, "c", 1, 0, 0]]),
           pack([["x.", b"\0" * 4, "c", 1, 1, -1]]), pack([["x.", b"\0" * 4, "c", 1, True, 0]])]
    for data in bad:
        with pytest.raises(RemoteProtocolError):
            decode_entries(data)


def test_rank_orders_versions_then_tombstones_then_earlier_deletion() -> None:
    live = Entry("x.", "1.2.3.4", "c", A, 2)
    assert rank(Entry("x.", "1.2.3.4", "c", A, 3)) > rank(Entry("x.", "1.2.3.4", "c", A, 2, 5)) > rank(live)
    assert rank(Entry("x.", "1.2.3.4", "c", A, 2, 5)) > rank(Entry("x.", "1.2.3.4", "c", A, 2, 6))


def test_entry_validation_is_local() -> None:
    for fields in [("x", "1.2.3.4"), ("x.", "1.2.3"), ("x.", "01.2.3.4"), ("a..b.", "1.2.3.4"),
                   ("a" * 64 + ".", "1.2.3.4")]:
        with pytest.raises(LocalProtocolError):
            Entry(fields[0], fields[1], "c", A, 1)


def test_name_helpers() -> None:
    assert qualify("c1") == "c1.weft.local."
    assert qualify("c1", "example.org") == "c1.example.org."
    assert qualify("C1.Other.Domain") == "c1.other.domain."
    assert reverse_name("10.32.0.1") == "1.0.32.10.in-addr.arpa."
    assert address_of_reverse(labels_of("1.0.32.10.in-addr.arpa.")) == "10.32.0.1"
    for name in ["01.0.32.10.in-addr.arpa.", "256.0.32.10.in-addr.arpa.", "0.32.10.in-addr.arpa.",
                 "1.0.32.10.in-addr.example."]:
        assert address_of_reverse(labels_of(name)) is None
