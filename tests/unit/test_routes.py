"""Routes: usable links, deterministic unicast next hops, per-source broadcast trees."""

from __future__ import annotations

from collections.abc import Iterable

from weftnet.proto.peername import PeerName
from weftnet.proto.routes import Routes
from weftnet.proto.topology import ConnectionInfo, PeerRecord


def build(edges: Iterable[tuple[int, int]], extra: Iterable[tuple[int, int, bool]] = (),
          names: Iterable[int] = ()) -> dict[PeerName, PeerRecord]:
    """Records for symmetric established ``edges``, plus one-sided claims in ``extra``."""
    claims: dict[int, dict[int, bool]] = {n: {} for n in names}
    for a, b in edges:
        claims.setdefault(a, {})[b] = True
        claims.setdefault(b, {})[a] = True
    for a, b, established in extra:
        claims.setdefault(a, {})[b] = established
        claims.setdefault(b, {})
    return {n: PeerRecord(n, f"n{n}", 1, 1, tuple(
        ConnectionInfo(r, "", True, claims[n][r]) for r in sorted(claims[n])))
        for n in sorted(claims)}


def test_line() -> None:
    peers = build([(1, 2), (2, 3), (3, 4)])
    r = Routes.compute(peers, 1)
    assert dict(r.unicast) == {2: 2, 3: 2, 4: 2}
    assert r.reachable == frozenset({2, 3, 4})
    assert r.neighbours == (2,)
    r3 = Routes.compute(peers, 3)
    assert dict(r3.unicast) == {1: 2, 2: 2, 4: 4}
    assert r3.neighbours == (2, 4)


def test_ties_go_to_the_lowest_named_path() -> None:
    # 1 reaches 9 through 5 or through 3: both two hops, 3 is lower
    peers = build([(1, 5), (1, 3), (5, 9), (3, 9)])
    assert Routes.compute(peers, 1).unicast[9] == 3
    # a deeper tie is decided by the earliest hop: 1-2-7-9 beats 1-3-4-9
    peers = build([(1, 2), (1, 3), (2, 7), (3, 4), (7, 9), (4, 9)])
    assert Routes.compute(peers, 1).unicast[9] == 2


def test_asymmetric_and_unestablished_links_are_not_used() -> None:
    peers = build([(1, 2)], extra=[(1, 3, True), (2, 4, True), (4, 2, False),
                                   (1, 5, False), (5, 1, False)])
    r = Routes.compute(peers, 1)
    assert dict(r.unicast) == {2: 2}
    assert r.neighbours == (2,)
    # a link to a peer we hold no record for is one-sided too
    peers = build([(1, 2)], extra=[(1, 6, True)])
    del peers[6]
    assert dict(Routes.compute(peers, 1).unicast) == {2: 2}


def test_unknown_ourself_has_no_routes() -> None:
    r = Routes.compute(build([(1, 2)]), 77)
    assert dict(r.unicast) == {} and r.neighbours == () and r.reachable == frozenset()
    assert r.broadcast_next_hops(1) == ()
    assert r.broadcast_next_hops(77) == ()


def test_broadcast_tree_example() -> None:
    #        1
    #       / \
    #      2   3
    #     / \ /
    #    4   5
    peers = build([(1, 2), (1, 3), (2, 4), (2, 5), (3, 5)])
    children = {n: Routes.compute(peers, n).broadcast_next_hops(1) for n in peers}
    assert children == {1: (2, 3), 2: (4, 5), 3: (), 4: (), 5: ()}
    # rooted at 5: 5 -> (2, 3); 2 -> (1, 4)
    children = {n: Routes.compute(peers, n).broadcast_next_hops(5) for n in peers}
    assert children == {1: (), 2: (1, 4), 3: (), 4: (), 5: (2, 3)}


def test_broadcast_from_an_unreachable_or_unknown_source() -> None:
    peers = build([(1, 2), (3, 4)])
    r = Routes.compute(peers, 1)
    assert r.broadcast_next_hops(3) == ()
    assert r.broadcast_next_hops(99) == ()
    assert r.broadcast_next_hops(1) == (2,)
    assert r.broadcast_next_hops(2) == ()


def test_routes_are_a_snapshot_of_the_topology() -> None:
    peers = build([(1, 2), (2, 3)])
    r = Routes.compute(peers, 2)
    peers.update(build([(1, 3), (2, 3)]))   # the caller's map changes afterwards
    assert r.broadcast_next_hops(1) == (3,)
    assert r.broadcast_next_hops(1) is r.broadcast_next_hops(1)
