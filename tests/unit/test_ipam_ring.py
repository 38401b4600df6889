"""The ring CRDT: seeding, grants, hand-overs, free hints, merge rules, rival rings."""

from __future__ import annotations

import pytest

from weftnet.ipam.ring import NO_RING, Entry, Ring, RingUpdate, digest_of_update, ring_id_of, subdivide
from weftnet.ipam.space import Space
from weftnet.proto.errors import LocalProtocolError

A, B, C = 0xA, 0xB, 0xC
START, END = 1000, 1000 + 256


def seeded(*names: int) -> Ring:
    return Ring.seeded(START, END, names)


def no_free(lo: int, hi: int) -> int:
    return hi - lo


def test_subdivide_covers_the_range_in_aligned_halves() -> None:
    parts = subdivide(0, 256, [C, A, B])
    assert parts == [(0, 128, A), (128, 192, B), (192, 256, C)]
    assert subdivide(0, 1, [A, B]) == [(0, 1, A)]


def test_seeded_rings_with_the_same_names_are_identical() -> None:
    r1, r2 = seeded(A, B, C), seeded(C, B, A, A)
    assert r1.snapshot() == r2.snapshot()
    assert r1.digest() == r2.digest()
    assert r1.ring_id == ring_id_of([A, B, C]) and r1.ring_id[0] == 3
    assert r1.owned(A) == [(START, START + 128)]
    assert sum(r1.owners().values()) == END - START


def test_grant_splits_our_range_and_names_the_new_owner() -> None:
    r = seeded(A)
    update = r.grant(A, START + 10, START + 20, B, no_free)
    assert [e.token for e in update.entries] == [START, START + 10, START + 20]
    assert r.owned(B) == [(START + 10, START + 20)]
    assert r.owned(A) == [(START, START + 10), (START + 20, END)]
    inside = r.entry_at(START + 15)
    assert inside is not None and inside.owner == B
    assert not r.overlaps()
    # the grantee learns exactly its range from the update, even without the rest
    other = Ring(START, END)
    other.merge(RingUpdate(START, END, r.ring_id, tuple(e for e in update.entries if e.owner == B)))
    assert other.owned(B) == [(START + 10, START + 20)]
    assert other.owned(A) == []


def test_grant_refuses_space_we_do_not_own() -> None:
    r = seeded(A, B)
    with pytest.raises(LocalProtocolError):
        r.grant(A, START + 200, START + 210, C, no_free)  # B's half
    with pytest.raises(LocalProtocolError):
        r.grant(A, START + 100, START + 140, C, no_free)  # crosses into B's
    with pytest.raises(LocalProtocolError):
        r.grant(A, START, START + 1, A, no_free)


def test_free_hints_come_from_the_space_in_use() -> None:
    space = Space()
    for a in (START + 1, START + 2, START + 50):
        space.add(a, "x")
    r = seeded(A)
    r.grant(A, START + 100, START + 110, B, space.free_in)
    low, high = r.get(START), r.get(START + 110)
    assert low is not None and low.free == 100 - 3
    assert high is not None and high.free == END - START - 110
    assert r.set_free(A, {START: 97}) is None  # unchanged: no update to gossip
    update = r.set_free(A, {START: 5})
    assert update is not None and update.entries[0].free == 5
    assert r.set_free(B, {START: 1}) is None  # not B's entry


def test_merge_is_per_token_highest_version_and_returns_only_news() -> None:
    r1, r2 = seeded(A, B), seeded(A, B)
    update = r1.grant(A, START + 64, START + 128, C, no_free)
    delta = r2.merge(update)
    assert delta is not None and set(delta.entries) == set(update.entries)
    assert r2.merge(update) is None
    assert r2.merge(seeded(A, B).snapshot()) is None  # older versions change nothing
    assert r1.digest() == r2.digest()
    assert r2.owned(C) == [(START + 64, START + 128)]


def test_give_all_moves_a_peers_entries_with_higher_versions() -> None:
    r = seeded(A, B)
    r.grant(B, START + 200, START + 210, C, no_free)
    update, count = r.give_all(B, A)
    assert count == 128 - 10
    assert r.owned(B) == []
    other = seeded(A, B)
    other.merge(update)
    assert other.owned(A) == [(START, START + 200), (START + 210, END)]


def test_higher_ranked_ring_wins_whole_and_lower_is_ignored() -> None:
    small, big = seeded(A), seeded(B, C)
    assert big.ring_id > small.ring_id
    assert big.merge(small.snapshot()) is None
    delta = small.merge(big.snapshot())
    assert delta is not None and small.ring_id == big.ring_id
    assert small.snapshot() == big.snapshot()
    assert small.owned(A) == []


def test_unseeded_updates_change_nothing_and_an_empty_ring_adopts() -> None:
    r = Ring(START, END)
    assert not r.seeded_yet and r.ring_id == NO_RING
    assert r.merge(RingUpdate(START, END, NO_RING, ())) is None
    assert r.merge(seeded(A).snapshot()) is not None and r.seeded_yet


def test_merge_refuses_another_range_and_entries_outside() -> None:
    r = seeded(A)
    with pytest.raises(LocalProtocolError):
        r.merge(Ring.seeded(0, 256, [A]).snapshot())
    with pytest.raises(LocalProtocolError):
        Ring(START, END, (1, 1), [Entry(END - 1, END + 1, A, 1, 0)])


def test_digest_of_update_matches_the_ring_that_holds_it() -> None:
    r = seeded(A, B)
    r.grant(A, START + 3, START + 4, C, no_free)
    snap = r.snapshot()
    assert digest_of_update(snap) == r.digest()
    doubled = RingUpdate(snap.start, snap.end, snap.ring_id, snap.entries + seeded(A, B).snapshot().entries)
    assert digest_of_update(doubled) == r.digest()


def test_overlaps_are_reported_after_conflicting_writes() -> None:
    # lost state: A re-splits its range differently at the same versions
    r1, r2 = seeded(A), seeded(A)
    r1.grant(A, START + 10, START + 50, B, no_free)
    r2.grant(A, START + 30, START + 80, C, no_free)
    r1.merge(r2.snapshot())
    assert r1.overlaps()


def test_covers_tells_a_complete_view_from_a_partial_one() -> None:
    r = seeded(A, B)
    assert r.covers(START, END) and r.covers(START + 5, START + 6)
    partial = Ring(START, END)
    upper = r.get(START + 128)
    assert upper is not None
    partial.merge(RingUpdate(START, END, r.ring_id, (upper,)))
    assert not partial.covers(START, END) and partial.covers(START + 128, END)
    assert not partial.covers(START + 100, START + 130)
