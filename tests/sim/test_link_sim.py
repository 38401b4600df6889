"""The mesh with the link machine in the simulator (tests/sim/linknet.py): a connection is
established in the topology only while its UDP link works both ways, whatever the loss;
routes go around a pair whose UDP is blocked; links follow a node whose datagrams come from
a new address. Every test is seeded; on failure the seed is in the test id."""

from __future__ import annotations

import pytest

from weftnet.proto.link import LINK_TIMEOUT, OVERLAY_OVERHEAD
from weftnet.proto.routes import Routes

from .linknet import MTU, ROUTE_MTU, LinkSimNet

ALL3 = {frozenset((0, 1)), frozenset((1, 2)), frozenset((0, 2))}


def check_routes(net: LinkSimNet) -> None:
    """Every node's routes equal those computed from the converged global topology."""
    reference = net.live()[0].mesh.topology.peers
    for node in net.live():
        oracle = Routes.compute(reference, node.mesh.config.name)
        assert dict(node.mesh.routes.unicast) == dict(oracle.unicast)


def triangle(seed: int, **kw: object) -> LinkSimNet:
    net = LinkSimNet(seed)
    a = net.add_node(**kw)  # type: ignore[arg-type]
    b = net.add_node(targets=[a.address], **kw)  # type: ignore[arg-type]
    net.add_node(targets=[b.address], **kw)  # type: ignore[arg-type]
    return net


def links_up(net: LinkSimNet) -> bool:
    return all(link.machine.up for node in net.live() for link in net.links_of(node).values())


@pytest.mark.parametrize("seed", [1, 2])
def test_connections_join_the_topology_only_with_working_udp(seed: int) -> None:
    net = triangle(seed)
    net.udp_block(0, 2)
    net.run_until_converged(30, lambda: net.established_pairs() == {frozenset((0, 1)),
                                                                    frozenset((1, 2))}
                            and net.converged())
    net.run_for(2 * LINK_TIMEOUT)
    assert net.established_pairs() == {frozenset((0, 1)), frozenset((1, 2))}
    n0, n1, n2 = (n.mesh.config.name for n in net.nodes)
    assert n2 in net.nodes[0].mesh.connected_peers()  # the control connection is there...
    assert net.nodes[0].mesh.routes.unicast[n2] == n1  # ...but traffic goes around it
    (pending,) = [c for c in net.nodes[0].mesh.report(net.now)["connections"]
                  if c["state"] == "pending"]
    assert "UDP" in pending["info"]
    check_routes(net)
    net.udp_blocked.clear()
    net.run_until_converged(10, lambda: net.established_pairs() == ALL3 and net.converged())
    assert net.nodes[0].mesh.routes.unicast[n2] == n2


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_every_link_comes_up_through_loss(seed: int) -> None:
    net = LinkSimNet(seed)
    first = net.add_node(password=b"pw")
    for _ in range(4):
        net.add_node(targets=[first.address], password=b"pw")
    net.udp_loss = 0.3
    full = {frozenset((i, j)) for i in range(5) for j in range(i + 1, 5)}
    net.run_until_converged(120, lambda: net.established_pairs() == full and net.converged())
    assert net.lost > 0 and links_up(net)
    check_routes(net)


@pytest.mark.parametrize("seed", [6, 7])
def test_a_udp_outage_takes_the_link_out_and_its_end_brings_it_back(seed: int) -> None:
    net = triangle(seed)
    net.run_until_converged(30, lambda: net.established_pairs() == ALL3 and net.converged())
    n1 = net.nodes[1].mesh.config.name
    net.udp_block(0, 1)
    took = net.run_until_converged(3 * LINK_TIMEOUT, lambda: frozenset((0, 1))
                                   not in net.established_pairs() and net.converged())
    assert took >= LINK_TIMEOUT - 2.0  # the last heartbeat before the outage, at most
    assert net.nodes[0].mesh.routes.unicast[n1] == net.nodes[2].mesh.config.name
    check_routes(net)
    net.udp_blocked.clear()
    net.run_until_converged(10, lambda: net.established_pairs() == ALL3 and net.converged())
    assert net.nodes[0].mesh.routes.unicast[n1] == n1


@pytest.mark.parametrize("seed", [8, 9])
def test_links_follow_a_node_whose_datagrams_come_from_a_new_address(seed: int) -> None:
    net = triangle(seed)
    net.run_until_converged(30, lambda: net.established_pairs() == ALL3 and net.converged())
    new = ("192.0.2.50", 31337)
    net.rebind(0, new)
    name0 = net.nodes[0].mesh.config.name

    def followed() -> bool:
        for node in net.nodes[1:]:
            conn_id = node.mesh.connected_peers()[name0]
            if net.links_of(node)[conn_id].machine.udp_addr != new:
                return False
        return True

    net.run_until_converged(10, followed)
    net.run_for(3 * LINK_TIMEOUT)
    assert net.established_pairs() == ALL3 and links_up(net)
    # and nobody went back to the old address (path probes leave from the new one too)
    assert all(link.machine.udp_addr == new for node in net.nodes[1:]
               for conn_id, link in net.links_of(node).items()
               if node.mesh.connected_peers().get(name0) == conn_id)


@pytest.mark.parametrize("seed", [10, 11])
def test_no_connection_is_announced_before_its_link_is_up(seed: int) -> None:
    """Checked after every 50 ms of virtual time, from the first dial, through 30% loss."""
    net = triangle(seed)
    net.udp_loss = 0.3
    start = net.now
    while not (net.established_pairs() == ALL3 and net.converged()):
        assert net.now - start < 60, "not converged in 60 virtual seconds"
        net.run_for(0.05)
        assert net.gated(), f"a connection announced without its UDP link at t={net.now:.2f}"
    assert net.lost > 0


@pytest.mark.parametrize("seed", [12, 13])
def test_each_link_finds_its_own_path_mtu(seed: int) -> None:
    net = triangle(seed)
    net.path_mtu[frozenset((0, 1))] = 1400  # a narrower hop between 0 and 1 only
    net.run_until_converged(30, lambda: net.established_pairs() == ALL3 and net.converged())
    net.run_for(10)  # a probe round waits PROBE_WAIT per lost size
    names = {n.mesh.config.name: n.index for n in net.nodes}
    found = {}
    for node in net.live():
        for peer, conn_id in node.mesh.connected_peers().items():
            m = net.links_of(node)[conn_id].machine
            found[(node.index, names[peer])] = (m.pmtu, m.mtu)
    narrow = (1400, min(MTU, 1400 - OVERLAY_OVERHEAD))
    wide = (ROUTE_MTU, min(MTU, ROUTE_MTU - OVERLAY_OVERHEAD))
    assert found[(0, 1)] == found[(1, 0)] == narrow
    assert found[(0, 2)] == found[(2, 0)] == found[(1, 2)] == found[(2, 1)] == wide
