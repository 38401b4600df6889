"""The "dns" channel on real MeshNodes in the simulator (virtual time, seeded).

``DnsSimNet`` drives each node's store the way the router is meant to (see
``weftnet.dns`` docstring): local changes go out with ``gossip_news``, and after every
input the gossiper's ``take_news()`` (corrections of stale entries about us) is flooded.
"""

from __future__ import annotations

import pytest

from weftnet.dns.gossip import CHANNEL, DnsGossiper, news
from weftnet.dns.records import RecordStore

from ..sim.simnet import SimNet, SimNode


class DnsSimNet(SimNet):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.stores: dict[int, RecordStore] = {}
        self.gossipers: dict[int, DnsGossiper] = {}

    def add_dns_node(self, targets: list[str]) -> SimNode:
        node = self.add_node(targets=targets)
        store = RecordStore(node.mesh.config.name, self.now)
        self.stores[node.index] = store
        self.gossipers[node.index] = DnsGossiper(store)
        node.mesh.register_channel(CHANNEL, self.gossipers[node.index])
        return node

    def _after_input(self, node: SimNode) -> None:
        gossiper = self.gossipers.get(node.index)
        if gossiper is not None and (d := gossiper.take_news()) is not None:
            node.mesh.gossip_news(CHANNEL, d)
        super()._after_input(node)

    def change(self, node: SimNode, delta: list) -> None:  # type: ignore[type-arg]
        d = news(delta)
        if d is not None:
            node.mesh.gossip_news(CHANNEL, d)
        self._after_input(node)

    def dns_converged(self) -> bool:
        return self.converged() and len({self.stores[n.index].digest() for n in self.live()}) == 1

    def everywhere(self, name: str) -> set[tuple[str, ...]]:
        return {self.stores[n.index].lookup(name) for n in self.live()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_names_spread_change_and_survive_a_wrongful_remove_peer(seed: int) -> None:
    net = DnsSimNet(seed)
    nodes = [net.add_dns_node([])]
    for _ in range(3):
        nodes.append(net.add_dns_node([nodes[-1].address]))
    for i, node in enumerate(nodes):
        net.stores[node.index].add(f"c{i}.weft.local", f"10.32.0.{i + 1}", f"ctr{i}", net.now)
        net.stores[node.index].add("web.weft.local", f"10.32.1.{i + 1}", f"web{i}", net.now)
    net.run_until_converged(120, net.dns_converged)
    assert net.everywhere("web.weft.local.") == {tuple(f"10.32.1.{i + 1}" for i in range(4))}
    assert net.everywhere("c2.weft.local.") == {("10.32.0.3",)}

    # a change spreads as news (no periodic exchange needed)
    n2 = nodes[2]
    net.change(n2, net.stores[n2.index].remove_container("web2", net.now))
    net.run_until_converged(5, net.dns_converged)
    assert net.everywhere("web.weft.local.") == {("10.32.1.1", "10.32.1.2", "10.32.1.4")}

    # node 0, cut off from 2 and 3, decides node 3 is gone; when the partition heals,
    # node 3 defends its entries (it is alive and still has its containers)
    n0, n3 = nodes[0], nodes[3]
    net.partition([0, 1], [2, 3])
    net.run_for(1)
    net.change(n0, net.stores[n0.index].remove_peer(n3.mesh.config.name, net.now))
    net.run_for(1)
    assert net.stores[nodes[1].index].lookup("c3.weft.local.") == ()
    net.heal()
    net.run_until_converged(300, lambda: net.dns_converged()
                            and net.everywhere("c3.weft.local.") == {("10.32.0.4",)})
    assert net.everywhere("web.weft.local.") == {("10.32.1.1", "10.32.1.2", "10.32.1.4")}
    (c3,) = [e for e in net.stores[nodes[1].index].entries() if e.hostname == "c3.weft.local."]
    assert c3.version == 3     # added (1), tombstoned by node 0 (2), defended by node 3 (3)
