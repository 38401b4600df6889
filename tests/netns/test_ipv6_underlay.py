"""Peers over IPv6 underlays (issue 17, underlay half), on real namespaces.

(a) IPv6-only underlays: three hosts with the encrypted sleeve (one on a 1280-byte link:
    the path MTU is probed down to IPv6's minimum and bulk TCP still crosses), two hosts on
    the fast path (the kernel VXLAN over IPv6); containers with IPv4 overlay addresses given
    by hand ping and carry a TCP bulk transfer; addresses show with brackets.
The sleeve's socket on a dual-stack underlay: GSO sends and GRO receives over IPv6 and over
IPv4 on the same AF_INET6 socket (senders' addresses come back plain, never mapped), and
DF probes over IPv6 see a 1280-byte route.
(c) A dual-stack host reached by either family: one peer dials it by IPv4, another by IPv6,
    and without a password each link takes the VXLAN device of its family.
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from weftnet.proto.link import SLEEVE_OVERHEAD
from weftnet.router.dataplane.udpsock import (
    enable_gro,
    open_udp,
    probe_sender,
    recv_batch,
    route_mtu,
    send_segments,
)
from weftnet.router.host.netdev import host_addresses
from weftnet.router.tools.namespaces import run_ip
from weftnet.router.tools.testbed import Testbed

from .weftctl import bulk_tcp, established, launch, logs_on_failure, report, wait_for

BULK = 4 << 20


def attach(tb: Testbed, host: str, cidr: str, container: str) -> None:
    ns = tb.add_container(container)
    assert tb.weft(host, "attach", cidr, ns).stdout.split() == [cidr]


def conns(tb: Testbed, host: str) -> dict[str, dict[str, Any]]:
    """peer nickname -> its established connection in ``host``'s report."""
    return {c["peer"]["nickname"]: c for c in report(tb, host)["router"]["connections"]
            if c["state"] == "established" and c["peer"]}


def meshed(tb: Testbed, hosts: tuple[str, ...]) -> None:
    for h in hosts:
        want = set(hosts) - {h}
        wait_for(f"{h} connected to {sorted(want)}",
                 lambda h=h, want=want: established(report(tb, h)) == want, timeout=30)


def test_ipv6_only_encrypted_sleeve_three_hosts_and_a_1280_link(testbed_factory: Any) -> None:
    hosts = ("h1", "h2", "h3")
    tb: Testbed = testbed_factory(hosts=hosts, underlay="ipv6", mtu={"h3": 1280})
    with logs_on_failure(tb, hosts):
        # a name with an AAAA record only (`ip netns exec` shows h3 /etc/netns/NS/hosts as
        # /etc/hosts; the testbed removes the directory with the namespace)
        etc = Path("/etc/netns") / tb.ns("h3")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{tb.address('h1')} h1.v6.test\n")
        launch(tb, "h1")
        launch(tb, "h2", f"[{tb.address('h1')}]:6783")   # [addr]:port
        launch(tb, "h3", "h1.v6.test", tb.address("h2"))  # a name (AAAA), a bare address
        meshed(tb, hosts)
        assert conns(tb, "h3")["h1"]["sleeve"]["udp_address"] == f"[{tb.address('h1')}]:6783"
        assert conns(tb, "h3")["h2"]["address"] == f"[{tb.address('h2')}]:6783"
        c = conns(tb, "h2")
        assert c["h1"]["address"] == f"[{tb.address('h1')}]:6783"
        assert c["h1"]["sleeve"]["udp_address"] == f"[{tb.address('h1')}]:6783"
        assert c["h1"]["encrypted"] and c["h1"]["overlay"] == "sleeve"
        status = tb.weft("h2", "status", "connections").stdout
        assert f"[{tb.address('h1')}]:6783" in status, status
        # the path MTU to and from h3 is IPv6's minimum: probed, and the overlay follows
        wait_for("path MTU 1280 to h3", lambda: all(
            conns(tb, h)["h3"]["sleeve"]["path_mtu"] == 1280 for h in ("h1", "h2")), timeout=15)
        wait_for("path MTU 1280 from h3", lambda: all(
            v["sleeve"]["path_mtu"] == 1280 for v in conns(tb, "h3").values()), timeout=15)
        mtu = conns(tb, "h1")["h3"]["mtu"]
        assert mtu is not None and mtu <= 1280 - 48 - 77, mtu
        # h1-h2 keeps its 1500 (both ends probe at once: each answers the other's probes
        # even when they reach its probe socket just as its own round ends)
        assert conns(tb, "h1")["h2"]["sleeve"]["path_mtu"] == 1500
        # sleeve's default MTU on an IPv6-only host leaves IPv4's room: 1376 - 20
        assert conns(tb, "h1")["h2"]["mtu"] == 1356
        for i, h in enumerate(hosts, 1):
            attach(tb, h, f"10.2.1.{i}/24", f"c{i}")
        for src, dst in (("c1", "10.2.1.2"), ("c2", "10.2.1.3"), ("c3", "10.2.1.1")):
            assert tb.ping(src, dst, timeout=5), f"{src} cannot reach {dst}"
        bulk_tcp(tb, "c3", "10.2.1.3", "c1", BULK)   # across the 1280 link
        bulk_tcp(tb, "c2", "10.2.1.2", "c1", BULK, port=5002)


def test_ipv6_only_fast_path_two_hosts(testbed_factory: Any) -> None:
    hosts = ("h1", "h2")
    tb: Testbed = testbed_factory(hosts=hosts, underlay="ipv6")
    with logs_on_failure(tb, hosts):
        launch(tb, "h1", password=None)
        launch(tb, "h2", tb.address("h1"), password=None)
        meshed(tb, hosts)
        attach(tb, "h1", "10.2.1.1/24", "c1")
        attach(tb, "h2", "10.2.1.2/24", "c2")
        wait_for("h1-h2 on the fast path", lambda: conns(tb, "h1")["h2"]["overlay"] == "fastdp"
                 and conns(tb, "h2")["h1"]["overlay"] == "fastdp", timeout=20)
        fast = report(tb, "h1")["router"]["dataplane"]["fastdp"]
        assert fast["device6"] == "weft-vxlan6" and fast["flood_to"] == [tb.address("h2")]
        # sized for VXLAN over IPv6: the underlay's 1500 less 70
        assert conns(tb, "h1")["h2"]["mtu"] == 1430
        assert tb.ping("c1", "10.2.1.2", timeout=5)
        tb.run("c1", ["ping", "-c", "2", "-W", "2", "-M", "do", "-s", str(1430 - 28), "10.2.1.2"])
        before = report(tb, "h1")["router"]["dataplane"]["fastdp"]["counters"]["bytes_out"]
        bulk_tcp(tb, "c2", "10.2.1.2", "c1", BULK)
        after = report(tb, "h1")["router"]["dataplane"]["fastdp"]["counters"]["bytes_out"]
        assert after - before >= BULK, (before, after)   # the bulk rode the VXLAN


def test_dual_stack_host_reached_by_either_family(testbed_factory: Any) -> None:
    hosts = ("h1", "h2", "h3")
    tb: Testbed = testbed_factory(hosts=hosts, underlay="dual")
    with logs_on_failure(tb, hosts):
        # a host with IPv4 sizes its overlay for VXLAN over IPv4 (1450 here), which VXLAN
        # over IPv6 (70 bytes of headers, not 50) cannot carry: IPv6 peers would stay on
        # sleeve saying "MTU too small"; --mtu 1430 fits both families
        fits = ("--mtu", "1430")
        launch(tb, "h1", password=None, extra=fits)
        launch(tb, "h2", tb.address("h1"), password=None, extra=(*fits, "--no-discovery"))
        launch(tb, "h3", tb.address6("h1"), password=None, extra=(*fits, "--no-discovery"))
        for h in ("h2", "h3"):
            wait_for(f"{h} connected to h1", lambda h=h: established(report(tb, h)) == {"h1"})
        wait_for("h1 connected to both", lambda: established(report(tb, "h1")) == {"h2", "h3"})
        c = conns(tb, "h1")
        assert c["h2"]["sleeve"]["udp_address"] == f"{tb.address('h2')}:6783"  # plain IPv4
        assert c["h3"]["sleeve"]["udp_address"] == f"[{tb.address6('h3')}]:6783"
        for i, h in enumerate(hosts, 1):
            attach(tb, h, f"10.2.1.{i}/24", f"c{i}")
        wait_for("both links on the fast path, each on its family's device", lambda: all(
            v["overlay"] == "fastdp" for v in conns(tb, "h1").values()), timeout=20)
        assert sorted(report(tb, "h1")["router"]["dataplane"]["fastdp"]["flood_to"]) == sorted(
            [tb.address("h2"), tb.address6("h3")])
        for src, dst in (("c2", "10.2.1.1"), ("c3", "10.2.1.1"), ("c2", "10.2.1.3")):
            assert tb.ping(src, dst, timeout=5), f"{src} cannot reach {dst}"
        fdb = {dev: tb.run("h1", ["bridge", "fdb", "show", "dev", dev]).stdout
               for dev in ("weft-vxlan", "weft-vxlan6")}
        assert f"dst {tb.address('h2')}" in fdb["weft-vxlan"], fdb
        assert f"dst {tb.address6('h3')}" in fdb["weft-vxlan6"], fdb
        assert tb.address6("h3") not in fdb["weft-vxlan"] and tb.address("h2") not in fdb[
            "weft-vxlan6"], fdb


def _receive(sock: socket.socket, total: int) -> list[tuple[bytes, int | None, tuple[str, int]]]:
    buf = bytearray(1 << 16)
    got: list[tuple[bytes, int | None, tuple[str, int]]] = []
    deadline = time.monotonic() + 10
    while sum(len(b) for b, _, _ in got) < total and time.monotonic() < deadline:
        select.select([sock], [], [], 0.2)
        while True:
            try:
                n, seg, addr = recv_batch(sock, buf)
            except BlockingIOError:
                break
            got.append((bytes(buf[:n]), seg, addr))
    return got


def test_dual_stack_socket_gso_gro_and_ipv6_probes(testbed_factory: Any) -> None:
    tb: Testbed = testbed_factory(hosts=("h1", "h2"), underlay="dual", mtu={"h2": 1280})
    port = 6783
    # hole punching's host candidates: IPv4, then global IPv6 (not the link-local fe80::)
    assert host_addresses(netns=tb.ns("h1")) == [tb.address("h1"), tb.address6("h1")]
    assert host_addresses(netns=tb.ns("h1"), family=socket.AF_INET6) == [tb.address6("h1")]
    a = open_udp(port, dual=True, netns=tb.ns("h1"))
    b = open_udp(port, dual=True, netns=tb.ns("h2"))
    with a, b:
        assert a.family == socket.AF_INET6 and enable_gro(b)
        rng = random.Random(17)
        for dest, src in (((tb.address6("h2"), port), (tb.address6("h1"), port)),
                          ((tb.address("h2"), port), (tb.address("h1"), port))):
            data = rng.randbytes(30 * 1000 + 300)   # 1000 + 48 fits the 1280 link
            assert send_segments(a, data, 1000, dest) == len(data)
            got = _receive(b, len(data))
            assert b"".join(d for d, _, _ in got) == data
            assert any(seg == 1000 for _, seg, _ in got), [(len(d), s) for d, s, _ in got]
            assert {addr for _, _, addr in got} == {src}   # plain IPv4, never ::ffff:
        # DF probes over IPv6: the 1280 route refuses more, locally
        with probe_sender((tb.address6("h1"), port), netns=tb.ns("h2")) as probe:
            assert probe.family == socket.AF_INET6 and route_mtu(probe) == 1280
            probe.send(b"x" * (1280 - 48))
            with pytest.raises(OSError) as err:
                probe.send(b"x" * (1280 - 48 + 1))
            assert err.value.errno == errno.EMSGSIZE
        got = _receive(a, 1280 - 48)
        assert [(len(d), addr[0]) for d, _, addr in got] == [(1232, tb.address6("h2"))]
        # an IPv4 probe beside the dual-stack data socket leaves from the data's own port
        with probe_sender((tb.address("h1"), port), bind=b.getsockname(), shared=True,
                          netns=tb.ns("h2")) as probe:
            assert probe.family == socket.AF_INET and route_mtu(probe) == 1280
            probe.send(b"v4 probe")
            assert [(d, addr) for d, _, addr in _receive(a, 8)] == [
                (b"v4 probe", (tb.address("h2"), port))]


def test_a_router_on_the_way_teaches_the_path_mtu_with_packet_too_big(tmp_path: Path) -> None:
    """A (1500) -- R -- (1280) B, IPv6 only: IPv6 is never fragmented on the way, so R answers
    A's full-size probes with ICMPv6 Packet Too Big; the routers on A and B both settle on 1280
    (overlay MTU 1155). Namespaces of our own, removed whatever happens."""
    tag = f"wp{os.getpid() % 100000}"
    a, r, b = f"{tag}-a", f"{tag}-r", f"{tag}-b"
    cli = [sys.executable, "-m", "weftnet.router.programs.cli"]
    env = {**os.environ, "WEFT_PASSWORD": "pw"}

    def weft(ns: str, *args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *cli, *args], env=env, check=True,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout

    def path_mtus(ns: str) -> list[int | None]:
        conns = json.loads(weft(ns, "report"))["router"]["connections"]
        return [c.get("sleeve", {}).get("path_mtu") for c in conns if c["state"] == "established"]

    made: list[str] = []
    try:
        for ns in (a, r, b):
            run_ip("netns", "add", ns)
            made.append(ns)
            run_ip("-n", ns, "link", "set", "lo", "up")
        run_ip("-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "r0", "netns", r)
        run_ip("-n", r, "link", "add", "r1", "type", "veth", "peer", "name", "b0", "netns", b)
        for ns, dev, addr, mtu in ((a, "a0", "fd00:1::1", 1500), (r, "r0", "fd00:1::2", 1500),
                                   (r, "r1", "fd00:2::2", 1280), (b, "b0", "fd00:2::1", 1280)):
            run_ip("-n", ns, "link", "set", dev, "mtu", str(mtu))
            run_ip("-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")
            run_ip("-n", ns, "link", "set", dev, "up")
        subprocess.run(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
                       check=True, timeout=30)
        run_ip("-n", a, "-6", "route", "add", "default", "via", "fd00:1::2")
        run_ip("-n", b, "-6", "route", "add", "default", "via", "fd00:2::2")
        weft(a, "launch", "--nickname", "a")
        weft(b, "launch", "--nickname", "b", "[fd00:1::1]:6783")
        wait_for("a and b to find the path MTU",
                 lambda: path_mtus(a) == [1280] and path_mtus(b) == [1280], timeout=40)
        conn = json.loads(weft(a, "report"))["router"]["connections"][0]
        assert conn["mtu"] == 1280 - 48 - SLEEVE_OVERHEAD, conn   # IPv6 + UDP, then the sleeve
    finally:
        for ns in (a, b):
            if ns in made:
                subprocess.run(["ip", "netns", "exec", ns, *cli, "reset"], env=env, timeout=60,
                               capture_output=True, cwd=tmp_path)
        for ns in made:
            run_ip("netns", "del", ns, check=False)
