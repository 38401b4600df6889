"""The NAT model (tests/sim/natnet.py) and what the link machine does behind NATs today,
before NAT traversal (issue 16): NATed nodes reach a public one and the mesh routes through
it; NATed pairs cannot dial each other; links survive mapping timeouts and rebinding.
Seeded; virtual time; every assertion says what it expected and what it got."""

from __future__ import annotations

import random

import pytest

from weftnet.proto.link import HEARTBEAT_SLOW, LINK_TIMEOUT, OVERLAY_OVERHEAD, AddressMoved, LinkMachine, Send
from weftnet.proto.routes import Routes
from weftnet.proto.sleeve import Kind

from .linknet import MTU, _split
from .natnet import DROP_FILTERED, DROP_NO_MAPPING, Filtering, Mapping, NatGateway, NatNet
from .simnet import DIAL_TIMEOUT, SimNode

EIM, SYM = Mapping.ENDPOINT_INDEPENDENT, Mapping.SYMMETRIC
EIF, ADF, APDF = (Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT,
                  Filtering.ADDRESS_AND_PORT_DEPENDENT)
MIXED = [(EIM, EIF), (EIM, ADF), (EIM, APDF), (SYM, APDF)]

# --- the NAT model against an oracle ---------------------------------------------------

INSIDE = ("10.1.0.2", 6783)
SERVER = ("198.51.100.7", 6783)
SOURCES = {"the destination": SERVER, "its other port": ("198.51.100.7", 40000),
           "another host": ("198.51.100.8", 6783)}
# after INSIDE sent to SERVER: which sources get in through the port that mapping took
ORACLE = {EIF: {"the destination", "its other port", "another host"},
          ADF: {"the destination", "its other port"},
          APDF: {"the destination"}}


def gateway(mapping: Mapping, filtering: Filtering, seed: int = 0,
            udp_timeout: float = 30.0) -> NatGateway:
    return NatGateway("203.0.113.9", mapping=mapping, filtering=filtering,
                      rng=random.Random(seed), udp_timeout=udp_timeout)


@pytest.mark.parametrize("mapping", [EIM, SYM])
@pytest.mark.parametrize("filtering", [EIF, ADF, APDF])
def test_filtering_lets_in_exactly_what_the_oracle_says(mapping: Mapping,
                                                        filtering: Filtering) -> None:
    gw = gateway(mapping, filtering)
    _, port = gw.outbound(INSIDE, SERVER, now=0.0)
    let_in = {what for what, src in SOURCES.items() if gw.inbound(src, port, 1.0) == INSIDE}
    assert let_in == ORACLE[filtering], (
        f"{gw}: expected {sorted(ORACLE[filtering])} to get in, got {sorted(let_in)}")


@pytest.mark.parametrize("mapping", [EIM, SYM])
@pytest.mark.parametrize("filtering", [EIF, ADF, APDF])
def test_nothing_unsolicited_gets_in(mapping: Mapping, filtering: Filtering) -> None:
    gw = gateway(mapping, filtering)
    for port in (6783, 40000, 1024):
        got = gw.inbound(SERVER, port, 0.0)
        assert got is None, f"{gw}: expected a datagram to unmapped port {port} dropped, got {got}"
    assert gw.dropped == {DROP_NO_MAPPING: 3}, f"{gw}: expected 3 unmapped, got {gw.dropped}"


@pytest.mark.parametrize("filtering", [ADF, APDF])
def test_a_dependent_filter_keeps_out_hosts_never_sent_to(filtering: Filtering) -> None:
    gw = gateway(EIM, filtering)
    public = gw.outbound(INSIDE, SERVER, 0.0)
    stranger = ("192.0.2.66", 6783)
    for port in (public[1], 40000, 1024):
        got = gw.inbound(stranger, port, 0.5)
        assert got is None, f"{gw}: expected {stranger} kept out of port {port}, got {got}"
    want = {DROP_FILTERED: 1, DROP_NO_MAPPING: 2}
    assert gw.dropped == want, f"expected {want}, got {gw.dropped}"


def test_endpoint_independent_mapping_preserves_the_port_when_it_is_free() -> None:
    gw = gateway(EIM, APDF)
    first = gw.outbound(INSIDE, SERVER, 0.0)
    other_dst = gw.outbound(INSIDE, ("198.51.100.8", 9999), 0.0)
    neighbour = gw.outbound(("10.1.0.3", 6783), SERVER, 0.0)
    assert first == other_dst == ("203.0.113.9", 6783), (
        f"expected 203.0.113.9:6783 for every destination, got {first} and {other_dst}")
    assert neighbour[1] != 6783, f"expected a taken port to be replaced, got {neighbour}"


def test_symmetric_mapping_takes_a_seeded_random_port_per_destination() -> None:
    def ports(seed: int) -> list[int]:
        gw = gateway(SYM, APDF, seed)
        dsts = [SERVER, ("198.51.100.7", 40000), ("198.51.100.8", 6783), SERVER]
        return [gw.outbound(INSIDE, d, 0.0)[1] for d in dsts]

    got = ports(5)
    assert len(set(got[:3])) == 3 and got[3] == got[0], (
        f"expected 3 distinct ports, the first one again for the same destination: {got}")
    assert got == ports(5) and got != ports(6), "expected the ports to follow the seed"


def test_mappings_expire_without_outbound_traffic_and_outbound_refreshes_them() -> None:
    gw = gateway(EIM, APDF, udp_timeout=30.0)
    other = ("198.51.100.8", 6783)
    gw.outbound(INSIDE, SERVER, 0.0)
    gw.outbound(INSIDE, other, 20.0)
    assert gw.inbound(SERVER, 6783, 29.9) == INSIDE, "expected SERVER let in before 30s"
    assert gw.inbound(SERVER, 6783, 30.0) is None, "expected SERVER's permission expired at 30s"
    assert gw.inbound(other, 6783, 49.9) == INSIDE, "expected the refreshed mapping alive"
    assert gw.inbound(other, 6783, 50.0) is None and not gw.mappings(50.0), (
        f"expected every mapping gone at 50s, got {gw.mappings(50.0)}")
    assert gw.inbound(SERVER, 6783, 29.9) is None, "an inbound datagram refreshed nothing"


@pytest.mark.parametrize("mapping", [EIM, SYM])
def test_a_flush_forgets_every_mapping(mapping: Mapping) -> None:
    gw = gateway(mapping, EIF, seed=3)
    before = gw.outbound(INSIDE, SERVER, 0.0)
    gw.flush()
    assert gw.inbound(SERVER, before[1], 0.1) is None, "expected nothing mapped after a flush"
    after = gw.outbound(INSIDE, SERVER, 0.2)
    assert (after == before) == (mapping is EIM), (
        f"{gw}: the port is kept only by a port-preserving mapping: {before} then {after}")
    gw.flush("203.0.113.99")
    moved = gw.outbound(INSIDE, SERVER, 0.3)
    assert moved[0] == "203.0.113.99", f"expected the new public address, got {moved}"


# --- the mesh behind NATs -----------------------------------------------------------------


def star(seed: int, kinds: list[tuple[Mapping, Filtering]],
         udp_timeout: float = 30.0) -> NatNet:
    """Node 0 public; node i behind gateway i-1 of kind kinds[i-1], launched with node 0."""
    net = NatNet(seed)
    public = net.add_node()
    for mapping, filtering in kinds:
        net.add_node(nat=net.add_gateway(mapping, filtering, udp_timeout),
                     targets=[public.address])
    return net


def link_to(net: NatNet, node: SimNode, other: SimNode) -> LinkMachine:
    conn_id = node.mesh.connected_peers().get(other.mesh.config.name)
    assert conn_id is not None, f"expected n{node.index} connected to n{other.index}"
    return net.links_of(node)[conn_id].machine


def state(net: NatNet) -> str:
    """What the net looks like, for failure messages."""
    pairs = sorted(tuple(sorted(p)) for p in net.established_pairs())
    links = {(n.index, c): (lk.machine.up, lk.machine.udp_addr, lk.machine.down_reason)
             for n in net.live() for c, lk in sorted(net.links_of(n).items())}
    return f"established {pairs}; links {links}; drops {dict(net.drops)}"


@pytest.mark.parametrize("seed", [1, 2])
def test_natted_nodes_mesh_through_the_public_node(seed: int) -> None:
    net = star(seed, MIXED)
    public = net.nodes[0]
    want = {frozenset((0, i)) for i in range(1, 5)}
    net.run_until(60, lambda: net.established_pairs() == want and net.converged(),
                  f"established pairs {sorted(tuple(sorted(p)) for p in want)}",
                  lambda: state(net))
    retrying: dict[int, set[tuple[str, str]]] = {n.index: set() for n in net.nodes}
    for _ in range(int(3 * DIAL_TIMEOUT / 0.5)):  # discovery keeps trying the NATed pairs
        net.run_for(0.5)
        for node in net.nodes:
            retrying[node.index] |= {
                (c["address"], c["info"].split(";")[0])
                for c in node.mesh.report(net.now)["connections"] if c["state"] == "retrying"}
    names = {n.mesh.config.name for n in net.nodes}
    for node in net.nodes:
        seen = set(node.mesh.topology.peers)
        assert seen == names, f"n{node.index}: expected all 5 peers, sees {len(seen)}"
    assert net.established_pairs() == want, f"expected only the star: {state(net)}"
    for node in net.nodes[1:]:
        for end, other in ((node, public), (public, node)):
            m = link_to(net, end, other)
            assert m.up, f"n{end.index}->n{other.index}: expected up, {m.down_reason}"
        seen_as = link_to(net, public, node).udp_addr
        assert seen_as is not None, f"expected n0 to know where n{node.index} is"
        gw = net.behind[node.index]
        assert seen_as[0] == gw.public_ip, (
            f"n0 sees n{node.index} at {seen_as}, expected its gateway {gw.public_ip}")
        others = {n.mesh.config.name for n in net.nodes[1:]} - {node.mesh.config.name}
        direct = others & set(node.mesh.connected_peers())
        assert not direct, f"n{node.index}: expected no direct NATed peer, got {direct}"
        via = {node.mesh.routes.unicast.get(o) for o in others}
        assert via == {public.mesh.config.name}, f"n{node.index}: expected routes via n0: {via}"
        tried = {a for i, a, _, _ in net.dials_timed_out if i == node.index}
        gateways = {f"{g.public_ip}:6783" for g in net.gateways} - {f"{gw.public_ip}:6783"}
        assert tried >= gateways, f"n{node.index}: expected dials to {gateways} to time out"
        want_retrying = {(a, "connection timed out") for a in gateways}
        assert retrying[node.index] == want_retrying, (
            f"n{node.index}: expected {want_retrying} retried, got {retrying[node.index]}")
    waited = {round(t1 - t0, 6) for _, _, t0, t1 in net.dials_timed_out}
    assert waited == {DIAL_TIMEOUT}, f"expected every dial to time out after DIAL_TIMEOUT, got {waited}"
    reference = public.mesh.topology.peers
    for node in net.nodes:
        oracle = Routes.compute(reference, node.mesh.config.name)
        assert dict(node.mesh.routes.unicast) == dict(oracle.unicast), f"n{node.index} routes"


def inject_data(net: NatNet, public: SimNode, node: SimNode) -> None:
    """The public node sends one DATA datagram to the NATed node, as relayed traffic would."""
    conn_id = public.mesh.connected_peers()[node.mesh.config.name]
    link = net.links_of(public)[conn_id]
    assert link.machine.udp_addr is not None, "expected n0 to know where n1 is"
    net._udp_send(public, link, Send(Kind.DATA, b"", link.machine.udp_addr))


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("mapping", [EIM, SYM])
def test_a_mapping_timeout_longer_than_the_heartbeat_keeps_the_link(seed: int,
                                                                    mapping: Mapping) -> None:
    net = star(seed, [(mapping, ADF)], udp_timeout=HEARTBEAT_SLOW * 1.5)
    public, node = net.nodes
    net.run_until(30, lambda: net.established_pairs() == {frozenset((0, 1))},
                  "n0 and n1 established", lambda: state(net))
    where = link_to(net, public, node).udp_addr
    sent = 0
    for step in range(600):  # five minutes, the public node sending now and then
        net.run_for(0.5)
        if step % 3 == 0:
            inject_data(net, public, node)
            sent += 1
        assert net.established_pairs() == {frozenset((0, 1))}, f"t={net.now}: {state(net)}"
    net.run_for(1)
    assert link_to(net, public, node).udp_addr == where, f"expected n1 still at {where}"
    assert net.arrived[Kind.DATA] == sent, (
        f"expected all {sent} DATA datagrams of n0 let in, {net.arrived[Kind.DATA]} were: "
        f"{dict(net.drops)}")


@pytest.mark.parametrize("seed", [5, 6])
def test_a_mapping_timeout_shorter_than_the_heartbeat_drops_the_public_nodes_datagrams(
        seed: int) -> None:
    """The link stays up even so: the NATed end heartbeats every HEARTBEAT_SLOW itself, each
    heartbeat opens the same (port-preserved) mapping again, and the public node's own
    heartbeats and answers follow within the latency. What the public node sends in the gaps
    is dropped: keepalives (issue 16) must come more often than the NAT's timeout."""
    net = star(seed, [(EIM, ADF)], udp_timeout=HEARTBEAT_SLOW / 2)
    public, node = net.nodes
    net.run_until(30, lambda: net.established_pairs() == {frozenset((0, 1))},
                  "n0 and n1 established", lambda: state(net))
    sent = 0
    gaps = 0
    for step in range(600):
        net.run_for(0.5)
        gaps += not net.gateways[0].mappings(net.now)
        if step % 3 == 0:
            inject_data(net, public, node)
            sent += 1
        assert net.established_pairs() == {frozenset((0, 1))}, f"t={net.now}: {state(net)}"
    net.run_for(1)
    lost = sent - net.arrived[Kind.DATA]
    assert gaps > 0, "expected the gateway's mapping to lapse between heartbeats"
    assert 0 < lost < sent, f"expected some of n0's {sent} DATA datagrams dropped, {lost} were"
    assert net.drops[DROP_NO_MAPPING] >= lost, f"expected NAT drops, got {dict(net.drops)}"


@pytest.mark.parametrize("seed", [7, 8])
@pytest.mark.parametrize(("mapping", "new_ip"), [(EIM, "198.51.100.200"), (SYM, None),
                                                 (EIM, None)])
def test_the_public_nodes_link_follows_a_nat_rebinding(seed: int, mapping: Mapping,
                                                       new_ip: str | None) -> None:
    net = star(seed, [(mapping, APDF)])
    public, node = net.nodes
    net.run_until(30, lambda: net.established_pairs() == {frozenset((0, 1))},
                  "n0 and n1 established", lambda: state(net))
    net.run_for(7.3)  # mid-run, between heartbeats
    gw = net.gateways[0]
    old = link_to(net, public, node).udp_addr
    flushed_at = net.now
    gw.flush(new_ip)
    for _ in range(int(3 * LINK_TIMEOUT / 0.1)):
        net.run_for(0.1)
        assert net.established_pairs() == {frozenset((0, 1))}, f"t={net.now}: {state(net)}"
        assert link_to(net, node, public).up, f"t={net.now}: n1's link went down"
    new = gw.mappings(net.now)[(_split(node.address), None if mapping is EIM
                                else _split(public.address))]
    now_at = link_to(net, public, node).udp_addr
    assert now_at == new, f"expected n0 to reach n1 at its new mapping {new}, it uses {now_at}"
    moves = [ev for t, i, _, ev in net.link_events
             if i == 0 and t >= flushed_at and isinstance(ev, AddressMoved)]
    assert (new != old) == (new_ip is not None or mapping is SYM), (
        f"{gw}: a flush {'to ' + new_ip if new_ip else 'in place'} mapped n1 from {old} to {new}")
    if new == old:
        assert not moves, f"the mapping came back as {old}: expected no move, got {moves}"
    else:
        assert moves == [AddressMoved(old, new)], f"expected one move {old} -> {new}: {moves}"


@pytest.mark.parametrize("seed", [9])
def test_the_public_end_finds_the_path_mtu_through_a_port_dependent_filter(seed: int) -> None:
    net = star(seed, [(EIM, APDF)])
    public, node = net.nodes
    net.path_mtu[frozenset((0, 1))] = 1400
    net.run_until(30, lambda: net.established_pairs() == {frozenset((0, 1))},
                  "n0 and n1 established", lambda: state(net))
    net.run_for(10)  # a probe round waits PROBE_WAIT per lost size
    narrow = (1400, min(MTU, 1400 - OVERLAY_OVERHEAD))
    inside = link_to(net, node, public)
    assert (inside.pmtu, inside.mtu) == narrow, "the NATed end finds it"
    outside = link_to(net, public, node)
    got = (outside.pmtu, outside.mtu)
    assert got == narrow, f"n0's link to n1: expected (pmtu, mtu) {narrow}, got {got}"


@pytest.mark.parametrize("seed", [10, 11])
def test_neighbours_behind_one_gateway_talk_privately(seed: int) -> None:
    """Two nodes behind one gateway: the one given the other's private address links to it
    directly, around the gateway, which maps only what goes out to the public node (the
    second node's port 6783 being taken, it gets another)."""
    net = NatNet(seed)
    public = net.add_node()
    gw = net.add_gateway(EIM, APDF)
    one = net.add_node(nat=gw, targets=[public.address])
    two = net.add_node(nat=gw, targets=[public.address, one.address])
    want = {frozenset((0, 1)), frozenset((0, 2)), frozenset((1, 2))}
    net.run_until(60, lambda: net.established_pairs() == want and net.converged(),
                  f"established pairs {sorted(tuple(sorted(p)) for p in want)}",
                  lambda: state(net))
    net.run_for(2 * DIAL_TIMEOUT)
    for a, b in ((one, two), (two, one)):
        m = link_to(net, a, b)
        assert m.up and m.udp_addr == _split(b.address), (
            f"n{a.index}->n{b.index}: expected up at {b.address}, {m.udp_addr} {m.down_reason}")
    mapped = gw.mappings(net.now)
    hosts = {inside[0] for inside, _ in mapped}
    assert hosts == {_split(one.address)[0], _split(two.address)[0]}, f"mapped {mapped}"
    ports = {inside: public[1] for (inside, _), public in mapped.items()}
    assert ports[_split(one.address)] == 6783 != ports[_split(two.address)], (
        f"expected n1 to keep 6783 and n2 to get another port: {mapped}")
