"""Scale figures for the mesh control plane, from the deterministic simulator.

Theory of operation. ``grow`` builds the network a real deployment builds: a few seed
peers that know each other, then N - seeds peers, each launched with 1-3 targets: one
random seed and random earlier peers. All launch at once unless ``--join-interval``
spaces them out (virtual seconds). Discovery is on and ``--conn-limit`` is the router's
default (200) unless told otherwise, so peers go on to connect to the peers their
peers list. A seed fills up at its conn-limit: past N / seeds > conn-limit, a peer
whose only target is a full seed never joins, so big runs give the seeds their own
``--seed-conn-limit``.

``settle`` runs virtual time until the mesh is *converged*: every live peer holds the
same topology digest, knows exactly the live peers, and that agreement has held, with
the same digest, for ``quiet`` virtual seconds (so discovery has stopped changing
connections). The convergence time is the moment agreement last began. ``check_routes``
then verifies the routes: every peer reaches exactly its component of the shared
topology, hop-by-hop walks over *every* peer's own next hops reach every destination
over usable (established, symmetric) links, and for a sample of sources (all of them,
up to ``--route-sample``) the peer's routes equal ``Routes.compute`` over the shared
topology and each walk is as long as the BFS distance computed here independently.

``measure_change`` applies one change to a converged mesh (a peer leaves by
``shutdown``, or a new peer joins) and counts what every peer sent until the mesh is
converged again: gossip messages and bytes (``MeshStats``) and transport writes and bytes
(the simulator's flushes, heartbeats included). The claim it checks is the gossip
docstring's: one change costs each peer O(degree) messages (at most O(degree x log N)
with coalescing and the occasional digest), not O(N^2).

Run::

    python3 -m tests.sim.scale --peers 200 --seeds 3
    python3 -m tests.sim.scale --peers 1000 --seeds 3 --seed-conn-limit 1000 --profile 25
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import pstats
import random
import resource
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from weftnet.proto.peername import PeerName
from weftnet.proto.routes import Routes
from weftnet.proto.topology import PeerRecord

if __package__:
    from .simnet import SimNet, SimNode
else:  # run as a file: python3 tests/sim/scale.py
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from tests.sim.simnet import SimNet, SimNode


# --- building --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    peers: int
    seeds: int = 3
    seed: int = 1
    discovery: bool = True
    conn_limit: int = 200
    join_interval: float = 0.0
    seed_conn_limit: int | None = None  # the seeds' --conn-limit, when it differs


def join_targets(net: SimNet, seeds: int) -> list[str]:
    """1-3 targets for the next peer: a random seed, then random earlier peers."""
    n = len(net.nodes)
    if n < seeds:  # a seed: it knows the seeds before it
        return [net.nodes[i].address for i in range(n)]
    want = net.rng.randint(1, 3)
    chosen = [net.rng.randrange(seeds)]
    while len(chosen) < min(want, n):
        pick = net.rng.randrange(n)
        if pick not in chosen:
            chosen.append(pick)
    return [net.nodes[i].address for i in chosen]


def add_peer(net: SimNet, plan: Plan) -> SimNode:
    limit = plan.conn_limit
    if len(net.nodes) < plan.seeds and plan.seed_conn_limit is not None:
        limit = plan.seed_conn_limit
    return net.add_node(targets=join_targets(net, plan.seeds), discovery=plan.discovery,
                        conn_limit=limit)


def grow(plan: Plan) -> SimNet:
    """A fresh network with every peer of ``plan`` launched (not yet converged)."""
    net = SimNet(plan.seed)
    for _ in range(plan.peers):
        add_peer(net, plan)
        if plan.join_interval > 0:
            net.run_for(plan.join_interval)
    return net


def leave(net: SimNet, index: int) -> None:
    """The peer stops (``weft stop``): goodbyes to its neighbours, then it is gone."""
    node = net.nodes[index]
    node.mesh.shutdown("router stopping", net.now)
    net._after_input(node)  # closes every connection, goodbyes in flight
    node.up = False


# --- convergence -----------------------------------------------------------------------------


def agreement(net: SimNet) -> bytes | None:
    """The shared digest if every live peer holds the same topology of exactly the live
    peers, else None."""
    live = net.live()
    digest = live[0].mesh.topology.digest()
    names = {n.mesh.config.name for n in live}
    for node in live:
        topo = node.mesh.topology
        if topo.digest() != digest or len(topo.peers) != len(names):
            return None
    if set(live[0].mesh.topology.peers) != names:
        return None
    return digest


def settle(net: SimNet, *, limit: float, quiet: float = 6.0, every: float = 0.01,
           check: Callable[[], None] | None = None) -> float:
    """Run until agreement has held with one digest for ``quiet`` seconds; return the
    virtual time (from now) at which that agreement began. ``check``, when given, runs
    after every step (it asserts what must hold all along, such as a cap on gossip)."""
    start = net.now
    since: float | None = None
    held: bytes | None = None
    while net.now - start < limit:
        net.run_for(every)
        if check is not None:
            check()
        digest = agreement(net)
        if digest is None:
            since, held = None, None
        elif digest != held:
            since, held = net.now, digest
        elif since is not None and net.now - since >= quiet:
            return since - start
    raise AssertionError(f"not converged after {limit} virtual seconds "
                         f"({sum(1 for _ in net.live())} live peers)")


# --- routes ------------------------------------------------------------------------------------


def usable_links(peers: dict[PeerName, PeerRecord]) -> dict[PeerName, set[PeerName]]:
    """Established links both ends claim: the only ones routes may use."""
    claims = {name: {c.remote for c in rec.connections if c.established}
              for name, rec in peers.items()}
    return {a: {b for b in bs if a in claims.get(b, ())} for a, bs in claims.items()}


def bfs_distances(adj: dict[PeerName, set[PeerName]], src: PeerName) -> dict[PeerName, int]:
    dist = {src: 0}
    frontier = deque([src])
    while frontier:
        node = frontier.popleft()
        for other in adj.get(node, ()):
            if other not in dist:
                dist[other] = dist[node] + 1
                frontier.append(other)
    return dist


def check_routes(net: SimNet, *, sample: int, rng_seed: int = 0) -> int:
    """Assert the routes of a converged mesh (see the module docstring); returns how many
    sources were checked against BFS distances."""
    live = net.live()
    reference = dict(live[0].mesh.topology.peers)
    adj = usable_links(reference)
    routes = {n.mesh.config.name: n.mesh.routes for n in live}
    names = sorted(routes)
    for name in names:
        assert routes[name].reachable == frozenset(bfs_distances(adj, name)) - {name}, \
            f"{name:#x}: reachable set differs from the topology's component"
    for src in names:  # every pair: following each peer's own next hop reaches dst
        for dst in routes[src].reachable:
            here, hops = src, 0
            while here != dst:
                nxt = routes[here].unicast.get(dst)
                assert nxt is not None and nxt in adj[here], (src, dst, here, nxt)
                here, hops = nxt, hops + 1
                assert hops <= len(names), f"routing loop from {src:#x} to {dst:#x}"
    picked = random.Random(rng_seed).sample(names, min(sample, len(names)))
    by_name = {n.mesh.config.name: n for n in live}
    for src in picked:
        assert dict(by_name[src].mesh.routes.unicast) == \
            dict(Routes.compute(reference, src).unicast)
        dist = bfs_distances(adj, src)
        for dst, first in routes[src].unicast.items():
            hops, here = 1, first
            while here != dst:
                here, hops = routes[here].unicast[dst], hops + 1
            assert hops == dist[dst], f"{src:#x}->{dst:#x}: {hops} hops, shortest {dist[dst]}"
    return len(picked)


# --- counting ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spread:
    mean: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        s = sorted(values)
        if not s:
            return cls(0.0, 0.0, 0.0)
        p99 = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
        return cls(sum(s) / len(s), float(p99), float(s[-1]))

    def fmt(self, unit: str = "") -> str:
        return f"{_si(self.mean)}{unit} / {_si(self.p99)}{unit} / {_si(self.max)}{unit}"


def _si(x: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= limit:
            return f"{x / limit:.1f}{suffix}"
    return f"{x:.1f}" if x != int(x) else f"{int(x)}"


@dataclass(frozen=True, slots=True)
class Counters:
    """Per-peer totals, indexed like ``net.nodes``."""

    gossip_msgs: tuple[int, ...]
    gossip_bytes: tuple[int, ...]
    writes: tuple[int, ...]
    wire_bytes: tuple[int, ...]

    @classmethod
    def snapshot(cls, net: SimNet) -> Counters:
        nodes = net.nodes
        return cls(tuple(n.mesh.stats.gossip_messages_sent for n in nodes),
                   tuple(n.mesh.stats.gossip_bytes_sent for n in nodes),
                   tuple(n.stats.messages for n in nodes),
                   tuple(n.stats.bytes for n in nodes))

    def since(self, before: Counters, among: Sequence[int]) -> Counters:
        def diff(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(a[i] - (b[i] if i < len(b) else 0) for i in among)

        return Counters(diff(self.gossip_msgs, before.gossip_msgs),
                        diff(self.gossip_bytes, before.gossip_bytes),
                        diff(self.writes, before.writes), diff(self.wire_bytes, before.wire_bytes))


def established_pairs(net: SimNet) -> int:
    return sum(len(n.mesh.connected_peers()) for n in net.live()) // 2


def degrees(net: SimNet) -> list[int]:
    return [len(n.mesh.connected_peers()) for n in net.live()]


# --- scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrowFigures:
    peers: int
    convergence: float          # virtual seconds from the first launch
    after_last_join: float      # virtual seconds from the last launch
    gossip_intervals: float     # convergence / gossip interval
    connections: int
    degree: Spread
    gossip_msgs: Spread
    gossip_bytes: Spread
    writes: Spread
    wire_bytes: Spread
    wall: float
    routes_sampled: int


@dataclass(frozen=True, slots=True)
class ChangeFigures:
    what: str
    convergence: float
    degree_of_changed: int
    mean_degree: float
    gossip_msgs: Spread
    gossip_bytes: Spread
    writes: Spread
    wire_bytes: Spread
    wall: float


def converge(plan: Plan, *, limit: float = 600.0, quiet: float = 6.0,
             route_sample: int = 50) -> tuple[SimNet, GrowFigures]:
    wall = time.perf_counter()
    net = grow(plan)
    last_join = net.now
    taken = settle(net, limit=limit, quiet=quiet)
    converged_at = last_join + taken
    wall = time.perf_counter() - wall
    sampled = check_routes(net, sample=route_sample)
    counts = Counters.snapshot(net)
    interval = net.nodes[0].mesh.config.gossip_interval
    return net, GrowFigures(
        peers=len(net.live()), convergence=converged_at, after_last_join=taken,
        gossip_intervals=converged_at / interval, connections=established_pairs(net),
        degree=Spread.of(degrees(net)),
        gossip_msgs=Spread.of(counts.gossip_msgs), gossip_bytes=Spread.of(counts.gossip_bytes),
        writes=Spread.of(counts.writes), wire_bytes=Spread.of(counts.wire_bytes),
        wall=wall, routes_sampled=sampled)


def measure_change(net: SimNet, what: str, change: Callable[[], int], *, limit: float = 600.0,
                   quiet: float = 6.0, route_sample: int = 50) -> ChangeFigures:
    """Apply ``change`` (returns the index of the peer it concerns) to a converged mesh and
    count what the other live peers send until it converges again."""
    wall = time.perf_counter()
    mean_degree = sum(degrees(net)) / max(1, len(net.live()))
    before = Counters.snapshot(net)
    degree_before = {n.index: len(n.mesh.connected_peers()) for n in net.live()}
    index = change()
    taken = settle(net, limit=limit, quiet=quiet)
    wall = time.perf_counter() - wall
    check_routes(net, sample=route_sample)
    others = [n.index for n in net.live() if n.index != index]
    delta = Counters.snapshot(net).since(before, others)
    changed = net.nodes[index]
    degree = len(changed.mesh.connected_peers()) if changed.up else degree_before[index]
    return ChangeFigures(what, taken, degree, mean_degree, Spread.of(delta.gossip_msgs),
                         Spread.of(delta.gossip_bytes), Spread.of(delta.writes),
                         Spread.of(delta.wire_bytes), wall)


def leave_one(net: SimNet) -> Callable[[], int]:
    def change() -> int:
        live = [n.index for n in net.live() if n.index >= 1]
        index = net.rng.choice(live)
        leave(net, index)
        return index
    return change


def join_one(net: SimNet, plan: Plan) -> Callable[[], int]:
    def change() -> int:
        return add_peer(net, plan).index
    return change


# --- the script ------------------------------------------------------------------------------------


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(plan: Plan, *, limit: float, quiet: float, route_sample: int, trace: bool,
        out: Callable[[str], None] = print) -> None:
    if trace:
        tracemalloc.start()
    net, g = converge(plan, limit=limit, quiet=quiet, route_sample=route_sample)
    out(f"## {plan.peers} peers, {plan.seeds} seeds, rng seed {plan.seed}, "
        f"discovery {'on' if plan.discovery else 'off'}, conn-limit {plan.conn_limit}"
        f"{'' if plan.seed_conn_limit is None else f' (seeds {plan.seed_conn_limit})'}, "
        f"join every {plan.join_interval}s")
    out(f"converged: {g.convergence:.2f}s virtual ({g.after_last_join:.2f}s after the last "
        f"join; {g.gossip_intervals:.3f} gossip intervals); wall {g.wall:.1f}s")
    out(f"connections {g.connections}; degree mean/p99/max {g.degree.fmt()}; "
        f"routes checked all pairs, vs BFS for {g.routes_sampled} sources")
    out(f"per peer (mean / p99 / max): gossip msgs {g.gossip_msgs.fmt()}, "
        f"gossip bytes {g.gossip_bytes.fmt('B')}")
    out(f"                             writes {g.writes.fmt()}, wire bytes {g.wire_bytes.fmt('B')}")
    if trace:
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        out(f"tracemalloc per peer: retained {current / g.peers / 1024:.1f} KiB, "
            f"peak {peak / g.peers / 1024:.1f} KiB")
        tracemalloc.stop()
    out(f"peak RSS {_rss_mib():.0f} MiB")
    log_n = math.log2(len(net.live()))
    for what, change in (("one peer leaves", leave_one(net)), ("one peer joins", join_one(net, plan))):
        c = measure_change(net, what, change, limit=limit, quiet=quiet, route_sample=route_sample)
        out(f"-- {what}: reconverged in {c.convergence:.2f}s virtual (wall {c.wall:.1f}s); "
            f"its degree {c.degree_of_changed}, mean degree {c.mean_degree:.1f}, "
            f"log2 N {log_n:.1f}")
        out(f"   per other peer (mean / p99 / max): gossip msgs {c.gossip_msgs.fmt()}, "
            f"gossip bytes {c.gossip_bytes.fmt('B')}")
        out(f"   writes {c.writes.fmt()}, wire bytes {c.wire_bytes.fmt('B')}")
    out(f"peak RSS {_rss_mib():.0f} MiB")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3, help="seed peers (default 3)")
    p.add_argument("--rng-seed", type=int, default=1, help="first simulator seed")
    p.add_argument("--runs", type=int, default=1, help="runs with consecutive rng seeds")
    p.add_argument("--no-discovery", action="store_true")
    p.add_argument("--conn-limit", type=int, default=200)
    p.add_argument("--seed-conn-limit", type=int, default=None,
                   help="the seeds' --conn-limit (default: --conn-limit)")
    p.add_argument("--join-interval", type=float, default=0.0, help="virtual s between launches")
    p.add_argument("--limit", type=float, default=600.0, help="virtual s to converge")
    p.add_argument("--quiet", type=float, default=6.0, help="virtual s agreement must hold")
    p.add_argument("--route-sample", type=int, default=50, help="sources checked against BFS")
    p.add_argument("--tracemalloc", action="store_true", help="per-peer memory (slower)")
    p.add_argument("--profile", type=int, metavar="N", default=0,
                   help="print the N top cProfile entries by cumulative and own time")
    args = p.parse_args(argv)
    for seed in range(args.rng_seed, args.rng_seed + args.runs):
        plan = Plan(peers=args.peers, seeds=args.seeds, seed=seed,
                    discovery=not args.no_discovery, conn_limit=args.conn_limit,
                    join_interval=args.join_interval, seed_conn_limit=args.seed_conn_limit)
        def once(plan: Plan = plan) -> None:
            run(plan, limit=args.limit, quiet=args.quiet, route_sample=args.route_sample,
                trace=args.tracemalloc)

        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(once)
            for key in ("cumulative", "tottime"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.profile)
                print(buf.getvalue())
        else:
            once()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
