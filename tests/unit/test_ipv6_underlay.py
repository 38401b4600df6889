"""Peers over IPv6 underlays, without sockets: addresses as users write them and as the
router prints them, the socket address forms (IPv4-mapped in, plain out), the link
machine's per-family path MTU arithmetic, and two engines over IPv6 on the memory network."""

from __future__ import annotations

import random
import socket

import pytest
import trio

from tests.unit.test_engine import MAC_A, MAC_B, Host, crosses, established, eventually, run_pair
from weftnet.proto import fastdp, sleeve
from weftnet.proto.connmaker import join_host_port, split_host
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.link import (
    IP6_UDP_OVERHEAD,
    IP_UDP_OVERHEAD,
    MAX_PROBE,
    MIN_PROBE6,
    OVERLAY_OVERHEAD,
    SLEEVE_OVERHEAD,
    LinkMachine,
    PathMtuFound,
    Send,
    ip_udp_overhead,
    overlay_overhead,
)
from weftnet.proto.mesh import MeshConfig, MeshNode
from weftnet.proto.sleeve import Kind
from weftnet.router.api.address import parse_peer_address
from weftnet.router.dataplane.doubles import MemoryNetwork
from weftnet.router.dataplane.fastpath import FastPath
from weftnet.router.dataplane.udpsock import normal_address, socket_address

V6_A, V6_B = "fd00:150::1", "fd00:150::2"

# --- addresses as users write them ---------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("[fd00:150::1]:6783", "[fd00:150::1]:6783"),
    ("fd00:150::1", "[fd00:150::1]:6783"),
    ("[FD00:150:0::1]", "[fd00:150::1]:6783"),
    ("[fd00:150::1]:7000", "[fd00:150::1]:7000"),
    ("[::ffff:172.31.1.1]:6783", "172.31.1.1:6783"),     # mapped IPv4: one form, plain
    ("::ffff:172.31.1.1", "172.31.1.1:6783"),
    ("[fe80::1%eth0]:6783", "[fe80::1%eth0]:6783"),       # link-local with its zone
    ("fe80::1%3", "[fe80::1%3]:6783"),
    ("v6only.example", "v6only.example:6783"),            # a name: resolved when dialled
])
def test_peer_addresses_in_ipv6_forms(text: str, expected: str) -> None:
    assert parse_peer_address(text) == expected
    assert parse_peer_address(expected) == expected   # what we print parses back the same


@pytest.mark.parametrize("text", ["fe80::1", "[fe80::1]:6783", "[FE80::abcd]"])
def test_link_local_peers_need_a_zone(text: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_peer_address(text)
    reason = info.value.reason
    assert "link-local" in reason and "zone" in reason and "%eth0]" in reason
    assert reason.startswith("invalid peer address") and "\n" not in reason


@pytest.mark.parametrize("text", ["[fe80::1%]:1", "[fe80::1%a b]:1", "[fe80::1%a/b]:1",
                                  "[::ffff:10.0.0.1%eth0]:1", "fd00::1:6783:1:1:1:1:1:1"])
def test_bad_ipv6_peers_are_one_line_errors(text: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_peer_address(text)
    assert info.value.reason.startswith("invalid peer address") and "\n" not in info.value.reason


def test_host_and_port_split_and_join_with_brackets() -> None:
    for host in (V6_A, "fe80::1%eth0", "10.0.0.1", "h1.example"):
        joined = join_host_port(host, 6783)
        assert split_host(joined) == host
        assert joined.startswith("[") == (":" in host)


# --- socket address forms ------------------------------------------------------------------


def test_mapped_ipv4_comes_back_plain_and_goes_out_mapped() -> None:
    assert normal_address(("::ffff:10.0.0.1", 6783, 0, 0)) == ("10.0.0.1", 6783)
    assert normal_address((V6_A, 6783, 0, 0)) == (V6_A, 6783)
    assert normal_address(("fe80::1%eth0", 6783, 0, 2)) == ("fe80::1%eth0", 6783)
    assert normal_address(("10.0.0.1", 6783)) == ("10.0.0.1", 6783)
    assert normal_address(("::ffff:a:b", 1, 0, 0)) == ("::ffff:a:b", 1)  # not mapped IPv4
    assert socket_address(socket.AF_INET6, ("10.0.0.1", 6783)) == ("::ffff:10.0.0.1", 6783)
    assert socket_address(socket.AF_INET6, (V6_A, 6783)) == (V6_A, 6783)
    assert socket_address(socket.AF_INET, ("10.0.0.1", 6783)) == ("10.0.0.1", 6783)


# --- the link machine's per-family arithmetic ----------------------------------------------


def test_overheads_per_family() -> None:
    assert ip_udp_overhead(("10.0.0.1", 1)) == IP_UDP_OVERHEAD == 28
    assert ip_udp_overhead((V6_A, 1)) == IP6_UDP_OVERHEAD == 48
    assert overlay_overhead(("10.0.0.1", 1)) == OVERLAY_OVERHEAD
    assert overlay_overhead((V6_A, 1)) == SLEEVE_OVERHEAD + 48


def _up_machine(peer: str, *, encrypted: bool) -> LinkMachine:
    m = LinkMachine(me=0x0A0000000001, uid=11, mtu=1376, port=6783, we_trust=False,
                    encrypted=encrypted, addr=(peer, 6783), now=0.0, rng=random.Random(5))
    m.datagrams_to_send()
    ack = sleeve.encode_heartbeat(0x0B0000000002, 22, 0, 1376, flags=0)
    m.receive(Kind.HEARTBEAT_ACK, ack, (peer, 6783), 0.1)
    assert m.up
    return m


def _probes(m: LinkMachine) -> list[Send]:
    return [s for s in m.datagrams_to_send() if s.probe_id is not None]


def _ip_size(m: LinkMachine, send: Send) -> int:
    return (ip_udp_overhead(send.addr) + sleeve.HEADER_LEN + len(send.body)
            + (sleeve.TAG_LEN if m.encrypted else 0))


@pytest.mark.parametrize("encrypted", [True, False])
def test_an_ipv6_path_mtu_round_on_a_1280_link(encrypted: bool) -> None:
    m = _up_machine(V6_B, encrypted=encrypted)
    m.handle_timer(0.1)
    (first,) = _probes(m)
    assert _ip_size(m, first) == MAX_PROBE   # the IPv6 header counted: the packet is 65535
    assert first.probe_id is not None
    m.probe_send_failed(first.probe_id, 0.1, 1280)   # the kernel: the route carries 1280
    (second,) = _probes(m)
    assert _ip_size(m, second) == MIN_PROBE6 == 1280
    assert second.probe_id is not None
    m.receive(Kind.PROBE_ACK, sleeve.encode_probe(second.probe_id, 16), (V6_B, 6783), 0.2)
    found = [e for e in iter(m.next_event, None) if isinstance(e, PathMtuFound)]
    assert found == [PathMtuFound(1280, 1280 - SLEEVE_OVERHEAD - 48)]
    assert m.mtu == 1280 - overlay_overhead((V6_B, 6783)) and not m.probing


def test_ipv6_never_probes_below_1280() -> None:
    m = _up_machine(V6_B, encrypted=True)
    m.handle_timer(0.1)
    (first,) = _probes(m)
    assert first.probe_id is not None
    m.probe_send_failed(first.probe_id, 0.1, 1000)   # below IPv6's minimum: nothing to try
    assert not _probes(m) and not m.probing and m.pmtu is None and m.mtu == 1376
    # every probe of a round whose probes are all lost is 1280 or more (IPv4 goes to 576)
    m = _up_machine(V6_B, encrypted=True)
    sizes = []
    m.handle_timer(0.1)
    while m.probing:
        for s in _probes(m):
            sizes.append(_ip_size(m, s))
        m.handle_timer(m.get_timer() or 0.0)
    assert sizes[0] == MAX_PROBE and min(sizes) == 1280 and m.pmtu is None and m.up


# --- two engines over IPv6 (memory network) -----------------------------------------------


def test_engines_over_ipv6_probe_1280_and_carry_frames() -> None:
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        assert a.sleeve()["udp_address"] == f"[{V6_B}]:6783"
        assert b.sleeve()["udp_address"] == f"[{V6_A}]:6783"
        await eventually("probed", lambda: a.sleeve()["path_mtu"] == 1280
                         and b.sleeve()["path_mtu"] == 1280)
        assert a.connection()["mtu"] == 1280 - overlay_overhead((V6_B, 6783))
        await crosses(a, b, b"over ipv6", MAC_B, MAC_A)
        await crosses(b, a, b"z" * 3000, MAC_A, MAC_B)   # our own fragments, 1232-byte UDP
        with trio.fail_after(1):
            assert a.engine.drops == {} and b.engine.drops == {}

    run_pair(scenario, ips=(V6_A, V6_B), route_mtu=1280, path_mtu=1280)


# --- weft bench: rows over IPv6 beside IPv4 ---------------------------------------------------


def test_bench_ipv6_adds_the_same_paths_over_ipv6() -> None:
    from weftnet.router.tools.bench import IPV6_PATHS, PATHS, parse_data_args

    assert not parse_data_args([]).ipv6 and parse_data_args([]).paths == PATHS
    opts = parse_data_args(["--ipv6"])
    assert opts.ipv6 and opts.paths == PATHS + IPV6_PATHS
    opts = parse_data_args(["--ipv6", "--paths", "kernel-vxlan,fastdp-v6,fastdp"])
    assert opts.paths == ("kernel-vxlan", "fastdp-v6", "fastdp", "kernel-vxlan-v6")
    assert parse_data_args(["--paths", "sleeve-plain-v6"]).ipv6


# --- the fast path's choice of VXLAN device per peer ----------------------------------------


def _fast_path() -> FastPath:
    mesh = MeshNode(MeshConfig(name=0x0A0000000001, nickname="a", uid=1, password=None,
                               port=6783, discovery=False),
                    now=0.0, random_bytes=random.Random(1).randbytes, rng=random.Random(1))
    return FastPath(mesh, enabled=True, disabled_reason="", port=6784, mtu=1430,
                    rng=random.Random(2))   # never opened: no devices, no netlink


def test_fast_path_overhead_and_refusals_per_peer_address() -> None:
    fast = _fast_path()
    fast.follow(1, 0x0B0000000002, "b", "172.31.1.2", True, 0.0)
    fast.follow(2, 0x0C0000000003, "c", V6_B, True, 0.0)
    fast.follow(3, 0x0D0000000004, "d", "fe80::2%eth0", True, 0.0)
    e = fast.entries
    assert e[1].fl is not None and e[1].fl.overhead == fastdp.VXLAN_OVERHEAD == 50
    assert e[2].fl is not None and e[2].fl.overhead == fastdp.VXLAN6_OVERHEAD == 70
    assert e[3].fl is None and "link-local" in fast.why_not(3, True)
    # the peer moves to another family: its link starts over with that family's overhead
    fast.follow(1, 0x0B0000000002, "b", "fd00:150::9", True, 0.0)
    assert e[1].fl is not None and e[1].fl.overhead == 70 and e[1].ip == "fd00:150::9"
    # no IPv6 VXLAN device here: IPv6 peers say why, IPv4 ones are unaffected
    fast = _fast_path()
    fast.v6_reason = "no kernel VXLAN over IPv6 here: refused"
    fast.follow(1, 0x0B0000000002, "b", V6_B, True, 0.0)
    fast.follow(2, 0x0C0000000003, "c", "172.31.1.3", True, 0.0)
    assert fast.entries[1].fl is None and fast.why_not(1, True) == fast.v6_reason
    assert fast.entries[2].fl is not None


def test_mtu_hint_names_the_ipv6_overhead() -> None:
    ids = iter(range(1, 100))
    fl = fastdp.FastLink(1430, 0.0, lambda: next(ids), overhead=fastdp.VXLAN6_OVERHEAD)
    fl.on_hello(fastdp.Hello(True, bytes(6), frozenset()), 0.0)
    probes = fl.probes_due(0.0)
    for p in probes[1:]:   # only the small probe is answered
        fl.on_ack(p.probe_id)
    fl.handle_timer(fastdp.PROBE_TIMEOUT)
    assert not fl.fast and "raise the underlay MTU to 1500" in fl.reason


def test_launch_refuses_a_link_local_peer_and_keeps_ipv6_peers() -> None:
    from tests.unit.test_cli import launch_ns
    from weftnet.router.daemon.config import config_from_args

    cfg = config_from_args(launch_ns("--host", "::ffff:10.0.0.1", "[fd00:150::1]:6783",
                                     "fd00:150::2", "[fe80::1%eth0]"))
    assert cfg.host == "10.0.0.1"
    assert cfg.peers == ["[fd00:150::1]:6783", "[fd00:150::2]:6783", "[fe80::1%eth0]:6783"]
    with pytest.raises(LocalProtocolError) as info:
        config_from_args(launch_ns("fe80::1"))
    assert "needs a zone" in info.value.reason and "\n" not in info.value.reason


def test_hole_punching_takes_ipv6_host_candidates() -> None:
    from weftnet.proto.rendezvous import CandidateKind, Rendezvous

    r = Rendezvous(me=0x0A0000000001, port=6783, rng=random.Random(3),
                   random_bytes=random.Random(4).randbytes, now=0.0)
    r.set_host_candidates([("172.31.1.1", 6783), (V6_A, 6783), ("fe80::1", 6783),
                           ("::1", 6783)])
    assert [(c.kind, c.addr) for c in r.candidates()] == [
        (CandidateKind.HOST, ("172.31.1.1", 6783)), (CandidateKind.HOST, (V6_A, 6783))]
