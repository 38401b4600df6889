"""Routes against a brute-force oracle: Floyd–Warshall distances over usable links.

The oracle never runs a BFS. It builds the usable links pairwise from the definition
(established and symmetric), computes all-pairs shortest distances, and derives the
expected choices from the rule BFS implements: the path chosen to each node is the
lexicographically smallest shortest path by names, found greedily from its start.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from weftnet.proto.peername import PeerName
from weftnet.proto.routes import Routes
from weftnet.proto.topology import ConnectionInfo, PeerRecord

INF = 10**9

# for each ordered pair: 0 no claim, 1 claimed established, 2 claimed but not established
Claims = dict[tuple[PeerName, PeerName], int]


@st.composite
def topologies(draw: st.DrawFn, max_nodes: int = 9) -> tuple[
        dict[PeerName, PeerRecord], list[PeerName]]:
    n = draw(st.integers(1, max_nodes))
    names = sorted(draw(st.lists(st.integers(1, 40), min_size=n, max_size=n, unique=True)))
    claims: Claims = {}
    density = draw(st.sampled_from([0.2, 0.4, 0.7]))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if draw(st.floats(0, 1)) >= density:
                continue
            # mostly proper links, some one-sided or unestablished
            kind = draw(st.sampled_from(["sym"] * 5 + ["ab", "ba", "half", "none"]))
            claims[a, b] = {"sym": 1, "ab": 1, "ba": 0, "half": 1, "none": 2}[kind]
            claims[b, a] = {"sym": 1, "ab": 0, "ba": 1, "half": 2, "none": 2}[kind]
    # some peers have no record at all (claims about them stay one-sided)
    holders = [m for m in names if draw(st.integers(0, 9)) > 0]
    order = draw(st.permutations(holders))     # dict order must not matter
    peers = {}
    for a in order:
        conns = tuple(ConnectionInfo(b, "", a < b, claims[a, b] == 1)
                      for b in names if claims.get((a, b), 0))
        peers[a] = PeerRecord(a, "", 0, 1, conns)
    return peers, names


def usable_oracle(peers: dict[PeerName, PeerRecord]) -> set[tuple[PeerName, PeerName]]:
    def claims(a: PeerName, b: PeerName) -> bool:
        rec = peers.get(a)
        return rec is not None and any(c.remote == b and c.established for c in rec.connections)
    return {(a, b) for a in peers for b in peers if a != b and claims(a, b) and claims(b, a)}


def floyd_warshall(names: Sequence[PeerName],
                   usable: set[tuple[PeerName, PeerName]]) -> dict[tuple[PeerName, PeerName], int]:
    dist = {(a, b): 0 if a == b else (1 if (a, b) in usable else INF)
            for a in names for b in names}
    for k in names:
        for i in names:
            for j in names:
                if dist[i, k] + dist[k, j] < dist[i, j]:
                    dist[i, j] = dist[i, k] + dist[k, j]
    return dist


def lexmin_path(src: PeerName, dst: PeerName, names: Sequence[PeerName],
                usable: set[tuple[PeerName, PeerName]],
                dist: dict[tuple[PeerName, PeerName], int]) -> list[PeerName]:
    path, node = [src], src
    while node != dst:
        node = min(m for m in names if (node, m) in usable and dist[m, dst] == dist[node, dst] - 1)
        path.append(node)
    return path


@given(topologies())
def test_unicast_matches_the_oracle(topo: tuple[dict[PeerName, PeerRecord], list[PeerName]]
                                    ) -> None:
    peers, names = topo
    usable = usable_oracle(peers)
    dist = floyd_warshall(names, usable)
    for us in names:
        r = Routes.compute(peers, us)
        expected_reach = {d for d in names if d != us and dist[us, d] < INF}
        assert r.reachable == expected_reach
        assert set(r.unicast) == expected_reach
        assert r.neighbours == tuple(sorted(m for m in names if (us, m) in usable))
        for d in sorted(expected_reach):
            hop = r.unicast[d]
            assert (us, hop) in usable                      # a usable direct neighbour
            assert dist[hop, d] == dist[us, d] - 1          # on a shortest path
            assert hop == lexmin_path(us, d, names, usable, dist)[1]


@given(topologies())
def test_broadcast_children_match_the_oracle(
        topo: tuple[dict[PeerName, PeerRecord], list[PeerName]]) -> None:
    peers, names = topo
    usable = usable_oracle(peers)
    dist = floyd_warshall(names, usable)
    routes = {us: Routes.compute(peers, us) for us in names}
    for src in [*names, 99]:
        parent = {d: lexmin_path(src, d, names, usable, dist)[-2]
                  for d in names if d != src and dist.get((src, d), INF) < INF}
        for us in names:
            expected = tuple(sorted(d for d, p in parent.items() if p == us))
            assert routes[us].broadcast_next_hops(src) == expected


@given(topologies(max_nodes=14))
def test_broadcast_trees_span_each_component_once(
        topo: tuple[dict[PeerName, PeerRecord], list[PeerName]]) -> None:
    """Relaying along everyone's independently computed children reaches each peer once."""
    peers, names = topo
    usable = usable_oracle(peers)
    dist = floyd_warshall(names, usable)
    routes = {us: Routes.compute(peers, us) for us in names}
    for src in names:
        component = {d for d in names if dist[src, d] < INF}
        received = {src: 1}
        frontier = [src]
        while frontier:
            nxt = []
            for node in frontier:
                for child in routes[node].broadcast_next_hops(src):
                    assert (node, child) in usable
                    received[child] = received.get(child, 0) + 1
                    nxt.append(child)
            frontier = nxt
        assert set(received) == component
        assert all(count == 1 for count in received.values())
        # nobody outside the component thinks it has children in this tree
        for us in names:
            if us not in component:
                assert routes[us].broadcast_next_hops(src) == ()


@given(topologies(max_nodes=12), st.data())
def test_routes_do_not_depend_on_dict_order(
        topo: tuple[dict[PeerName, PeerRecord], list[PeerName]], data: st.DataObject) -> None:
    peers, names = topo
    shuffled = {n: peers[n] for n in data.draw(st.permutations(sorted(peers)))}
    for us in names:
        a, b = Routes.compute(peers, us), Routes.compute(shuffled, us)
        assert list(a.unicast.items()) == list(b.unicast.items())
        assert a.neighbours == b.neighbours
        for src in names:
            assert a.broadcast_next_hops(src) == b.broadcast_next_hops(src)
