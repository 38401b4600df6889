"""The mesh core in the simulator: convergence, routes, discovery, failures, scale.

Every test is seeded; on failure the seed is in the test id. Figures for the issue
notes come from ``python3 -m tests.sim.scale`` (same engine, bigger runs).
"""

from __future__ import annotations

import pytest

from weftnet.proto.routes import Routes

from .simnet import SimNet


def _established_pairs(net: SimNet) -> set[frozenset[int]]:
    pairs = set()
    names = {n.mesh.config.name: n.index for n in net.live()}
    for node in net.live():
        for peer in node.mesh.connected_peers():
            if peer in names:
                pairs.add(frozenset((node.index, names[peer])))
    return pairs


def _check_routes(net: SimNet) -> None:
    """Every node's routes equal those computed from the converged global topology."""
    reference = net.live()[0].mesh.topology.peers
    for node in net.live():
        oracle = Routes.compute(reference, node.mesh.config.name)
        assert dict(node.mesh.routes.unicast) == dict(oracle.unicast)
        assert node.mesh.routes.reachable == oracle.reachable


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chain_becomes_triangle_by_discovery(seed: int) -> None:
    net = SimNet(seed)
    a = net.add_node()
    b = net.add_node(targets=[a.address])
    net.add_node(targets=[b.address])
    net.run_until_converged(30, lambda: len(_established_pairs(net)) == 3 and net.converged())
    _check_routes(net)
    # a and c stay connected when b goes away
    net.crash(1)
    net.run_until_converged(30, lambda: _established_pairs(net) == {frozenset((0, 2))}
                            and net.converged())
    assert {p.nickname for p in net.nodes[0].mesh.topology.peers.values()} == {"n0", "n2"}


def test_no_discovery_keeps_the_chain() -> None:
    net = SimNet(7)
    a = net.add_node(discovery=False)
    b = net.add_node(targets=[a.address], discovery=False)
    net.add_node(targets=[b.address], discovery=False)
    net.run_until_converged(10, lambda: len(_established_pairs(net)) == 2 and net.converged())
    net.run_for(10)
    assert _established_pairs(net) == {frozenset((0, 1)), frozenset((1, 2))}
    # a reaches c through b
    c_name = net.nodes[2].mesh.config.name
    assert net.nodes[0].mesh.routes.unicast[c_name] == net.nodes[1].mesh.config.name


def test_wrong_password_never_connects() -> None:
    net = SimNet(11)
    a = net.add_node(password=b"right")
    net.add_node(targets=[a.address], password=b"wrong")
    net.run_for(5)
    assert _established_pairs(net) == set()
    report = net.nodes[1].mesh.report(net.now)
    failed = [c for c in report["connections"] if c["state"] in ("retrying", "failed")]
    assert failed and "wrong password" in failed[0]["info"]


def test_simultaneous_dials_keep_one_connection() -> None:
    net = SimNet(5)
    a = net.add_node()
    b = net.add_node(targets=[a.address])
    a.mesh.add_targets([b.address], net.now)
    net._after_input(a)
    net.run_until_converged(10, lambda: len(_established_pairs(net)) == 1 and net.converged())
    net.run_for(5)
    assert len(a.mesh.connected_peers()) == 1 and len(b.mesh.connected_peers()) == 1
    assert len(a.conns) == 1 and len(b.conns) == 1


def test_partition_and_heal() -> None:
    net = SimNet(21)
    first = net.add_node()
    for _ in range(5):
        net.add_node(targets=[first.address])
    net.run_until_converged(30, lambda: len(_established_pairs(net)) == 15 and net.converged())
    net.partition([0, 1, 2], [3, 4, 5])
    net.run_until_converged(60, lambda: _established_pairs(net) == {
        frozenset(p) for p in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]})
    # each side forgets the other after GC
    assert len(net.nodes[0].mesh.topology.peers) == 3
    net.heal()
    net.run_until_converged(120, lambda: len(_established_pairs(net)) == 15 and net.converged())
    _check_routes(net)


@pytest.mark.parametrize("seed", [100])
def test_200_peers_join_through_seeds_and_converge(seed: int) -> None:
    net = SimNet(seed)
    seeds = [net.add_node(discovery=False, conn_limit=400) for _ in range(3)]
    for i in range(197):
        targets = [seeds[i % 3].address]
        if len(net.nodes) > 3:
            targets.append(net.nodes[net.rng.randrange(3, len(net.nodes))].address)
        net.add_node(targets=targets, discovery=False, conn_limit=400)
    elapsed = net.run_until_converged(
        60, lambda: net.converged() and len(net.nodes[0].mesh.topology.peers) == 200, every=0.1)
    assert elapsed < 60
    _check_routes(net)
    # broadcast trees: following every node's children from any source reaches all exactly once
    source = net.nodes[57].mesh.config.name
    by_name = {n.mesh.config.name: n for n in net.nodes}
    seen = [source]
    frontier = [source]
    while frontier:
        nxt = []
        for name in frontier:
            for child in by_name[name].mesh.routes.broadcast_next_hops(source):
                nxt.append(child)
        seen += nxt
        frontier = nxt
    assert sorted(seen) == sorted(by_name)
