"""Routes over the topology: unicast next hops and per-source broadcast trees.

Theory of operation
-------------------
A link A-B is usable only if it is established and symmetric: A's record lists B with
``established`` and B's record lists A with ``established``. One side's claim alone (a
half-open connection, a stale record, a forged record) never carries traffic.

Every peer computes routes from the same converged topology with the same deterministic
breadth-first search (weaveworks/mesh: "when it is performed on the same data by
different peers, they get the same result"): a FIFO frontier, neighbours taken in
ascending name order (records keep connections sorted by remote, so no sorting is
needed), and a node's parent is the first node that discovers it. The path BFS picks to
each node is the lexicographically smallest shortest path by names, which the tests use
as an independent oracle.

* Unicast: BFS from ourselves; the next hop to a destination is the first hop of its
  tree path, always a direct neighbour.
* Broadcast: a frame from ``source`` travels down the BFS tree rooted at ``source``.
  Each peer forwards only to its own children in that tree; since every peer builds the
  identical tree, the union of those choices is one spanning tree of the source's
  component and each peer receives the frame exactly once::

          S            source S: children (A, B)
         / \\           A: children (C, D)
        A   B          B: no children (D was discovered by A first)
       / \\ /           C, D: none
      C   D

Cost: ``Routes.compute`` is O(N + E) over the component reached from us (usable-link
checks build each visited record's established set once). Broadcast trees are computed
lazily per source and cached; the search stops once all our neighbours have parents,
since only those can be our children. A Routes object is immutable: callers cache it
by ``Topology.generation`` and compute a new one when the topology changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from types import MappingProxyType

from .peername import PeerName
from .topology import PeerRecord


class _Links:
    """Usable (established, symmetric) links of a topology, computed on demand per node."""

    __slots__ = ("_peers", "_established", "_adjacent")

    def __init__(self, peers: Mapping[PeerName, PeerRecord]) -> None:
        # a snapshot: the caller's view may be live, and broadcast trees are computed later
        self._peers = dict(peers)
        self._established: dict[PeerName, frozenset[PeerName]] = {}
        self._adjacent: dict[PeerName, tuple[PeerName, ...]] = {}

    def _claims(self, name: PeerName) -> frozenset[PeerName]:
        claims = self._established.get(name)
        if claims is None:
            rec = self._peers.get(name)
            claims = frozenset(c.remote for c in rec.connections if c.established) \
                if rec is not None else frozenset()
            self._established[name] = claims
        return claims

    def adjacent(self, name: PeerName) -> tuple[PeerName, ...]:
        """Usable neighbours of ``name``, ascending."""
        adj = self._adjacent.get(name)
        if adj is None:
            rec = self._peers.get(name)
            if rec is None:
                adj = ()
            else:
                # connections are sorted by remote, so the result is ascending
                adj = tuple(c.remote for c in rec.connections
                            if c.established and name in self._claims(c.remote))
            self._adjacent[name] = adj
        return adj


class Routes:
    """Routes from ``ourself`` over one topology generation; immutable once computed."""

    __slots__ = ("ourself", "unicast", "reachable", "neighbours", "_links", "_broadcast")

    def __init__(self, ourself: PeerName, unicast: Mapping[PeerName, PeerName],
                 links: _Links) -> None:
        self.ourself = ourself
        self.unicast: Mapping[PeerName, PeerName] = unicast
        self.reachable: frozenset[PeerName] = frozenset(unicast)
        self.neighbours: tuple[PeerName, ...] = links.adjacent(ourself)
        self._links = links
        self._broadcast: dict[PeerName, tuple[PeerName, ...]] = {}

    @classmethod
    def compute(cls, peers: Mapping[PeerName, PeerRecord], ourself: PeerName) -> Routes:
        links = _Links(peers)
        next_hop: dict[PeerName, PeerName] = {}
        for hop in links.adjacent(ourself):
            next_hop[hop] = hop
        frontier = deque(next_hop)
        while frontier:
            node = frontier.popleft()
            via = next_hop[node]
            for other in links.adjacent(node):
                if other not in next_hop and other != ourself:
                    next_hop[other] = via
                    frontier.append(other)
        return cls(ourself, MappingProxyType(next_hop), links)

    def broadcast_next_hops(self, source: PeerName) -> tuple[PeerName, ...]:
        """Our children (sorted) in the BFS tree rooted at ``source``; () if not in it."""
        hops = self._broadcast.get(source)
        if hops is None:
            hops = self._children(source)
            self._broadcast[source] = hops
        return hops

    def _children(self, source: PeerName) -> tuple[PeerName, ...]:
        ours = self.ourself
        if source != ours and source not in self.reachable:
            return ()  # unknown, or in another component: we are not in its tree
        adjacent = self._links.adjacent
        waiting = set(adjacent(ours))  # our neighbours still without a parent
        waiting.discard(source)
        children: list[PeerName] = []
        parent: dict[PeerName, PeerName] = {source: source}
        frontier = deque([source])
        while frontier and waiting:
            node = frontier.popleft()
            for other in adjacent(node):
                if other not in parent:
                    parent[other] = node
                    frontier.append(other)
                    if other in waiting:
                        waiting.discard(other)
                        if node == ours:
                            children.append(other)
        return tuple(sorted(children))
