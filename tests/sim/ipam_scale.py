"""An in-memory network of Allocators in virtual time, and the IPAM scale run.

Theory of operation. ``IpamNet`` plays the mesh for many ``Allocator`` objects in one
process, the way ``MeshNode`` carries the "ipam" channel: a local change (``take_news``)
goes to every neighbour; a received payload is merged and only the news it held
(``on_gossip``'s return) travels on to the other neighbours; per link, payloads waiting to
leave are coalesced (``IpamGossip.merge``) and flushed every FLUSH seconds; every
``gossip_interval`` a peer sends its digest to one neighbour, which answers with its full
state when they differ (and the first peer sends its own back if it still differs); a new
link exchanges full states. Unicasts reach their destination if it is in the same
connected component. Every payload is encoded and decoded, so bytes are real.

Faults: seeded loss, duplication and reordering (jitter) of every payload, partitions
(blocked links), crashes and restarts from the state last persisted (the allocator's
``dirty`` flag is honoured before anything leaves, as the router must).

Run the scale figures::

    python3 -m tests.sim.ipam_scale --peers 1000 --seed 1
"""

from __future__ import annotations

import argparse
import heapq
import random
import resource
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from weftnet.ipam.allocator import Allocator, Result
from weftnet.ipam.codec import IpamGossip, decode_gossip, encode_gossip
from weftnet.ipam.mode import ConsensusInit, InitMode

FLUSH = 0.005
LATENCY = 0.002


@dataclass
class PeerNode:
    index: int
    name: int
    nickname: str
    init: InitMode
    alloc: Allocator
    up: bool = True
    links: set[int] = field(default_factory=set)
    saved: dict[str, Any] | None = None
    timer_at: float | None = None
    bytes_sent: int = 0
    messages_sent: int = 0


class IpamNet:
    def __init__(self, seed: int, *, universe: str = "10.32.0.0/12", loss: float = 0.0,
                 duplicate: float = 0.0, jitter: float = 0.0, gossip_interval: float = 5.0,
                 timeout: float = 30.0, latency: float = LATENCY) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.universe = IPv4Network(universe)
        self.loss, self.duplicate, self.jitter = loss, duplicate, jitter
        self.gossip_interval = gossip_interval
        self.timeout = timeout
        self.latency = latency
        self.now = 0.0
        self.nodes: list[PeerNode] = []
        self.by_name: dict[int, int] = {}
        self.blocked: set[frozenset[int]] = set()
        self.results: dict[int, Result] = {}
        self.result_at: dict[int, float] = {}
        self._pending: dict[tuple[int, int], IpamGossip] = {}
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._next_op = 1
        self._components: dict[int, frozenset[int]] = {}
        self._building = False

    # --- building ---------------------------------------------------------------------------

    def add_peers(self, count: int, init: InitMode) -> None:
        self._building = True
        for _ in range(count):
            self.add_peer(init)
        self._building = False
        self._topology_changed()

    def add_peer(self, init: InitMode, *, nickname: str | None = None,
                 default_subnet: str | None = None) -> PeerNode:
        index = len(self.nodes)
        name = (0x02 << 40) | (index + 1)
        nick = nickname or f"h{index}"
        alloc = self._new_alloc(name, nick, init, default_subnet)
        node = PeerNode(index, name, nick, init, alloc)
        self.nodes.append(node)
        self.by_name[name] = index
        self._topology_changed()
        self.at(self.now + self.gossip_interval * self.rng.uniform(0.5, 1.0), lambda: self._periodic(node))
        return node

    def _new_alloc(self, name: int, nick: str, init: InitMode, default_subnet: str | None) -> Allocator:
        return Allocator(name, nick, self.universe, IPv4Network(default_subnet) if default_subnet else None,
                         init, self.now, random.Random(self.rng.getrandbits(64)), timeout=self.timeout)

    def link(self, a: int, b: int) -> None:
        if a == b or b in self.nodes[a].links:
            return
        self.nodes[a].links.add(b)
        self.nodes[b].links.add(a)
        self._topology_changed()
        self._exchange_full(a, b)

    def random_mesh(self, degree: int = 3) -> None:
        """Each peer links to ``degree`` random earlier peers: connected, diameter ~log n."""
        self._building = True
        pairs = []
        for i in range(1, len(self.nodes)):
            for j in self.rng.sample(range(i), min(degree, i)):
                if j not in self.nodes[i].links:
                    self.nodes[i].links.add(j)
                    self.nodes[j].links.add(i)
                    pairs.append((i, j))
        self._building = False
        self._topology_changed()
        for i, j in pairs:
            self._exchange_full(i, j)

    # --- scheduling ---------------------------------------------------------------------------

    def at(self, when: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn))

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self._queue and self._queue[0][0] <= end:
            when, _, fn = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            fn()
        self.now = end

    def run_until(self, check: Callable[[], bool], limit: float, every: float = 0.05) -> float:
        start = self.now
        while self.now - start < limit:
            self.run_for(every)
            if check():
                return self.now - start
        raise AssertionError(f"seed {self.seed}: condition not reached in {limit} virtual seconds")

    # --- API calls ----------------------------------------------------------------------------

    def allocate(self, i: int, ident: str, subnet: str | None = None) -> int:
        op = self._next_op
        self._next_op += 1
        node = self.nodes[i]
        node.alloc.allocate(op, ident, IPv4Network(subnet) if subnet else None, self.now)
        self._after_input(node)
        return op

    def claim(self, i: int, ident: str, addr: str) -> int:
        op = self._next_op
        self._next_op += 1
        node = self.nodes[i]
        node.alloc.claim(op, ident, IPv4Interface(addr), self.now)
        self._after_input(node)
        return op

    def free(self, i: int, ident: str) -> int:
        node = self.nodes[i]
        n = node.alloc.free(ident, None, self.now)
        self._after_input(node)
        return n

    def rmpeer(self, i: int, target: str) -> int:
        node = self.nodes[i]
        n = node.alloc.rmpeer(target, self.now)
        self._after_input(node)
        return n

    def handoff(self, i: int) -> tuple[int, int] | None:
        node = self.nodes[i]
        out = node.alloc.handoff(self.now)
        self._after_input(node)
        return out

    # --- faults ---------------------------------------------------------------------------------

    def partition(self, group: set[int]) -> None:
        for a in group:
            for b in self.nodes[a].links:
                if b not in group:
                    self.blocked.add(frozenset((a, b)))
        self._topology_changed()

    def heal(self) -> None:
        healed = list(self.blocked)
        self.blocked.clear()
        self._topology_changed()
        for pair in healed:
            a, b = sorted(pair)
            self._exchange_full(a, b)

    def crash(self, i: int) -> None:
        self.nodes[i].up = False
        self._topology_changed()

    def restart(self, i: int) -> None:
        """The router starts again from its last persisted state (as the data dir has it)."""
        node = self.nodes[i]
        node.alloc = self._new_alloc(node.name, node.nickname, node.init, None)
        if node.saved is not None:
            node.alloc.load_state(node.saved)
        node.up = True
        node.timer_at = None
        self._topology_changed()
        for j in sorted(node.links):
            self._exchange_full(i, j)
        self._after_input(node)

    # --- the mesh's part ---------------------------------------------------------------------------

    def _connected(self, a: int, b: int) -> bool:
        return (self.nodes[a].up and self.nodes[b].up and b in self.nodes[a].links
                and frozenset((a, b)) not in self.blocked)

    def _topology_changed(self) -> None:
        if self._building:
            return
        self._components = {}
        for node in self.nodes:
            if not node.up or node.index in self._components:
                continue
            comp = {node.index}
            todo = [node.index]
            while todo:
                x = todo.pop()
                for y in self.nodes[x].links:
                    if y not in comp and self._connected(x, y):
                        comp.add(y)
                        todo.append(y)
            frozen = frozenset(comp)
            for x in comp:
                self._components[x] = frozen
        cache: dict[frozenset[int], dict[int, str]] = {}
        for node in self.nodes:
            if node.up:
                members = self._components[node.index]
                if members not in cache:
                    cache[members] = {self.nodes[x].name: self.nodes[x].nickname for x in members}
                node.alloc.peers_changed(cache[members], self.now)
                self._after_input(node)

    def _after_input(self, node: PeerNode) -> None:
        alloc = node.alloc
        if alloc.dirty:
            node.saved = alloc.to_state()  # persisted before anything leaves
        news = alloc.take_news()
        if news is not None:
            for j in sorted(node.links):
                self._queue_gossip(node.index, j, news)
        for dst, payload in alloc.messages_to_send():
            assert dst is not None
            self._unicast(node, dst, payload)
        while (r := alloc.next_result()) is not None:
            self.results[r.op_id] = r
            self.result_at[r.op_id] = self.now
        t = alloc.get_timer()
        if t is not None and (node.timer_at is None or t < node.timer_at):
            node.timer_at = t
            self.at(t, lambda: self._timer(node, t))

    def _timer(self, node: PeerNode, t: float) -> None:
        if node.timer_at != t or not node.up:
            return
        node.timer_at = None
        node.alloc.handle_timer(self.now)
        self._after_input(node)

    def _queue_gossip(self, a: int, b: int, data: IpamGossip) -> None:
        if not self._connected(a, b):
            return
        key = (a, b)
        old = self._pending.get(key)
        self._pending[key] = data if old is None else old.merge(data)
        if old is None:
            self.at(self.now + FLUSH, lambda: self._flush(a, b))

    def _flush(self, a: int, b: int) -> None:
        data = self._pending.pop((a, b), None)
        if data is None or not self._connected(a, b):
            return
        payload = encode_gossip(data)
        self._send(a, b, payload, lambda: self._deliver_gossip(a, b, payload, reply=False))

    def _send(self, a: int, b: int, payload: bytes, deliver: Callable[[], None]) -> None:
        node = self.nodes[a]
        node.bytes_sent += len(payload)
        node.messages_sent += 1
        if self.loss and self.rng.random() < self.loss:
            return
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            delay = self.latency + (self.rng.uniform(0, self.jitter) if self.jitter else 0.0)
            self.at(self.now + delay, deliver)

    def _deliver_gossip(self, a: int, b: int, payload: bytes, *, reply: bool) -> None:
        if not self._connected(a, b):
            return
        node = self.nodes[b]
        data = decode_gossip(payload)
        delta = node.alloc.on_gossip(data, self.now)
        if delta is not None:
            for j in sorted(node.links):
                if j != a:
                    self._queue_gossip(b, j, delta)
        if reply and node.alloc.digest() != node.alloc.digest_of(data):
            full = encode_gossip(node.alloc.full_gossip())
            self._send(b, a, full, lambda: self._deliver_gossip(b, a, full, reply=False))
        self._after_input(node)

    def _exchange_full(self, a: int, b: int) -> None:
        if not self._connected(a, b):
            return
        for x, y in ((a, b), (b, a)):
            self._queue_gossip(x, y, self.nodes[x].alloc.full_gossip())

    def _periodic(self, node: PeerNode) -> None:
        self.at(self.now + self.gossip_interval * self.rng.uniform(0.8, 1.2), lambda: self._periodic(node))
        if not node.up:
            return
        peers = sorted(j for j in node.links if self._connected(node.index, j))
        if not peers:
            return
        j = self.rng.choice(peers)
        digest = node.alloc.digest()
        node.bytes_sent += len(digest)
        node.messages_sent += 1

        def answer(a: int = node.index, b: int = j, d: bytes = digest) -> None:
            if not self._connected(a, b):
                return
            other = self.nodes[b]
            if other.alloc.digest() != d:
                full = encode_gossip(other.alloc.full_gossip())
                self._send(b, a, full, lambda: self._deliver_gossip(b, a, full, reply=True))

        self.at(self.now + self.latency, answer)

    def _unicast(self, node: PeerNode, dst: int, payload: bytes) -> None:
        j = self.by_name.get(dst)
        if j is None or j not in self._components.get(node.index, frozenset()):
            return
        src = node.name

        def deliver() -> None:
            target = self.nodes[j]
            if not target.up or j not in self._components.get(node.index, frozenset()):
                return
            target.alloc.on_unicast(src, payload, self.now)
            self._after_input(target)

        self._send(node.index, j, payload, deliver)

    # --- checks ----------------------------------------------------------------------------------

    def live(self) -> list[PeerNode]:
        return [n for n in self.nodes if n.up]

    def converged(self) -> bool:
        return len({n.alloc.digest() for n in self.live()}) == 1

    def all_seeded(self) -> bool:
        return all(n.alloc.ring.seeded_yet for n in self.live())

    def check_invariants(self) -> None:
        """No two peers own overlapping ranges (each by its own view); every held address
        lies in its holder's own ranges or is an orphan being re-claimed; no address is held
        by two peers, unless one of them holds it as an orphan (a duplicate made before two
        separately seeded rings met, which status reports)."""
        owned: list[tuple[int, int, int]] = []
        for n in self.live():
            for lo, hi in n.alloc.owned_ranges():
                owned.append((lo, hi, n.index))
        owned.sort()
        for (lo1, hi1, p1), (lo2, hi2, p2) in zip(owned, owned[1:], strict=False):
            assert hi1 <= lo2, f"seed {self.seed}: h{p1} [{lo1},{hi1}) overlaps h{p2} [{lo2},{hi2})"
        holders: dict[int, int] = {}
        for n in self.live():
            orphans = n.alloc.orphans()
            for addr, _ in n.alloc.space.items():
                if addr in holders:
                    other = self.nodes[holders[addr]]
                    assert addr in orphans or addr in other.alloc.orphans(), (
                        f"seed {self.seed}: {addr} held by h{other.index} and h{n.index}")
                holders[addr] = n.index
                e = n.alloc.ring.entry_at(addr)
                assert (e is not None and e.owner == n.name) or addr in orphans


# --- the scale run ---------------------------------------------------------------------------------

def scale_run(peers: int, seed: int, *, degree: int = 3, allocations: int = 1,
              limit: float = 300.0, trace_memory: bool = False) -> dict[str, Any]:
    """``peers`` peers with consensus=peers join a random mesh, each allocates at once.
    ``trace_memory`` measures the Python heap peak (tracemalloc; slows the run ~2x)."""
    wall = time.perf_counter()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace_memory:
        tracemalloc.start()
    net = IpamNet(seed, gossip_interval=30.0, timeout=limit)
    net.add_peers(peers, ConsensusInit(peers))
    net.random_mesh(degree)
    built = net.now
    ops = [net.allocate(i, f"c{i}-{k}") for i in range(peers) for k in range(allocations)]
    seeded_after = net.run_until(net.all_seeded, limit)
    done_after = seeded_after + net.run_until(lambda: all(op in net.results for op in ops), limit)
    converged_after = done_after + net.run_until(net.converged, limit)
    net.run_for(1.0)
    peak = 0
    if trace_memory:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    net.check_invariants()
    errors = [net.results[op].error for op in ops if net.results[op].error]
    addresses = [net.results[op].address for op in ops if net.results[op].address]
    assert len(set(addresses)) == len(addresses), "an address was allocated twice"
    sent = sorted(n.bytes_sent for n in net.nodes)
    latencies = sorted(net.result_at[op] - built for op in ops)
    return {
        "peers": peers, "seed": seed, "degree": degree, "allocations": len(ops),
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "seeded_s": round(seeded_after, 3), "all_allocated_s": round(done_after, 3),
        "converged_s": round(converged_after, 3),
        "alloc_latency_p50_s": round(latencies[len(latencies) // 2], 3),
        "alloc_latency_max_s": round(latencies[-1], 3),
        "ring_entries": len(net.nodes[0].alloc.ring),
        "seed_peers": net.nodes[0].alloc.ring.ring_id[0],
        "bytes_per_peer_mean": sum(sent) // len(sent), "bytes_per_peer_max": sent[-1],
        "messages_per_peer_mean": sum(n.messages_sent for n in net.nodes) // peers,
        "python_heap_peak_mib": round(peak / 2**20, 1) if trace_memory else None,
        "max_rss_mib": round(rss_after / 1024, 1),
        "rss_growth_per_peer_kib": round((rss_after - rss_before) / peers, 1),
        "wall_s": round(time.perf_counter() - wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--degree", type=int, default=3)
    parser.add_argument("--allocations", type=int, default=1)
    parser.add_argument("--trace-memory", action="store_true")
    args = parser.parse_args()
    for key, value in scale_run(args.peers, args.seed, degree=args.degree, allocations=args.allocations,
                                trace_memory=args.trace_memory).items():
        print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
