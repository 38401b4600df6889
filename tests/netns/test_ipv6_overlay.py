"""Containers with IPv6 on an IPv4 underlay (issue 17, the overlay half), on real
(simulated) hosts::

    h1 ──── h2 ──── h3          IPv4 LAN, no encryption (the fast path between direct
     c1      c2      c3         peers), --no-discovery: h1 and h3 are not connected, so
     (pod)                      c1 <-> c3 crosses h2 (a relay, over the sleeve)

Every router runs with ``--ipalloc-range-v6 fd32:7765:6674::/48`` and the default IPv6
subnet ``fd32:7765:6674:1::/64``. c1 and c2 get one address of each family from IPAM
(``weft attach`` with no ADDR); c3's are given by hand (claimed from IPAM: they lie in its
ranges). Checked from inside the containers: ``ping -6`` (so neighbour discovery, whose
solicitations go to 33:33:ff:.. multicast MACs, crossed the fast path and the relay),
a TCP exchange over IPv6, ``getent ahostsv6``, ``dig AAAA`` and ``dig -x`` against weftDNS,
``dns-add`` of an IPv6 address; ``weft status ipam`` shows the IPv6 ring; detach takes the
addresses and the AAAA/PTR records away and gives the IPv6 address back to IPAM; the CNI
plugin's ADD returns both families. Waits are bounded liveness checks; the times they
took are printed, never asserted.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import established, launch, report, wait_for

pytestmark = pytest.mark.skipif(shutil.which("dig") is None,
                                reason="needs dig (apt-get install bind9-dnsutils)")

HOSTS = ("h1", "h2", "h3")
RANGE6 = ipaddress.IPv6Network("fd32:7765:6674::/48")
SUBNET6 = ipaddress.IPv6Network("fd32:7765:6674:1::/64")
RANGE4 = ipaddress.IPv4Network("10.32.0.0/12")
OPTIONS = ("--no-discovery", "--ipalloc-range-v6", str(RANGE6),
           "--ipalloc-default-subnet-v6", str(SUBNET6))
C3 = ("10.32.200.3/12", "fd32:7765:6674:1::33/64")
NETNS_ETC = Path("/etc/netns")


def visible(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    start = time.monotonic()
    wait_for(what, check, timeout=timeout)
    print(f"{what}: after {time.monotonic() - start:.2f} s")


@pytest.fixture(scope="module")
def tb() -> Iterator[Testbed]:
    bed = Testbed(hosts=HOSTS, prefix="wv6" + secrets.token_hex(3))
    try:
        try:
            launch(bed, "h1", password=None, extra=OPTIONS)
            launch(bed, "h2", bed.address("h1"), password=None, extra=OPTIONS)
            launch(bed, "h3", bed.address("h2"), password=None, extra=OPTIONS)
            wait_for("a chain h1-h2-h3", lambda: established(report(bed, "h2")) == {"h1", "h3"}
                     and established(report(bed, "h1")) == {"h2"}, timeout=60)
        except BaseException:
            for host in HOSTS:
                log = bed.data_dir(host) / "weft.log"
                print(f"--- {host}'s log ---\n{log.read_text()[-4000:] if log.exists() else ''}")
            raise
        yield bed
    finally:
        try:
            bed.close()
        finally:
            for d in NETNS_ETC.glob(f"{bed.prefix}-*"):
                shutil.rmtree(d, ignore_errors=True)


def attach(tb: Testbed, host: str, name: str, *addresses: str) -> tuple[str, list[str]]:
    ns = tb.add_container(name)
    out = tb.weft(host, "attach", *addresses, "--name", name, ns, timeout=90).stdout.split()
    return ns, out


def global6(tb: Testbed, container: str, ifname: str = "ethwe") -> list[str]:
    proc = tb.run(container, ["ip", "-j", "-6", "addr", "show", "dev", ifname], check=False)
    data = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []
    return [f"{a['local']}/{a['prefixlen']}" for link in data for a in link.get("addr_info", [])
            if a.get("scope") == "global"]


def dig(tb: Testbed, container: str, *args: str) -> list[str]:
    out = tb.run(container, ["dig", "+short", "+tries=1", "+time=3", *args], check=False).stdout
    return [line for line in out.splitlines() if line and not line.startswith(";")]


def getent6(tb: Testbed, container: str, name: str) -> list[str]:
    proc = tb.run(container, ["getent", "ahostsv6", name], check=False)
    return sorted({line.split()[0] for line in proc.stdout.splitlines()})


def ping6(tb: Testbed, container: str, address: str) -> bool:
    return tb.run(container, ["ping", "-6", "-n", "-c1", "-W1", address], check=False).returncode == 0


SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 7007)); s.listen(1); print("ready", flush=True)
c, peer = s.accept()
data = b""
while len(data) < 1 << 20:
    chunk = c.recv(65536)
    if not chunk:
        break
    data += chunk
c.sendall(b"%d from %s" % (len(data), peer[0].encode())); c.close()
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7007), timeout=10)
c.sendall(b"x" * (1 << 20)); c.shutdown(socket.SHUT_WR)
print(c.recv(200).decode())
"""


def test_dual_stack_containers_across_fast_path_and_relay(tb: Testbed) -> None:
    start = time.monotonic()
    c1, out1 = attach(tb, "h1", "c1")
    c2, out2 = attach(tb, "h2", "c2")
    c3, out3 = attach(tb, "h3", "c3", *C3)
    for out in (out1, out2):   # no ADDR: one address of each family from IPAM
        v4, v6 = (ipaddress.ip_interface(c) for c in out)
        assert v4.ip in RANGE4 and v4.network == RANGE4, out
        assert v6.ip in SUBNET6 and v6.network == SUBNET6, out
    assert out3 == list(C3)
    a1, a2 = (ipaddress.ip_interface(o[1]).ip for o in (out1, out2))
    a3 = ipaddress.ip_interface(C3[1]).ip
    assert global6(tb, "c1") == [out1[1]] and global6(tb, "c3") == [C3[1]]
    print(f"three dual-stack containers attached in {time.monotonic() - start:.2f} s")

    rep = report(tb, "h1")
    overlays = {c["peer"]["nickname"]: c["overlay"] for c in rep["router"]["connections"] if c["peer"]}
    print(f"h1's connections: {overlays}")
    visible("c1 pings c2 over IPv6 (direct peers)", lambda: ping6(tb, "c1", str(a2)))
    visible("c1 pings c3 over IPv6 (through h2)", lambda: ping6(tb, "c1", str(a3)))
    assert ping6(tb, "c3", str(a2)) and ping6(tb, "c2", str(a1))
    # neighbour discovery found c3's MAC across the relay
    neigh = json.loads(tb.run("c1", ["ip", "-j", "-6", "neigh", "show", str(a3)]).stdout)
    mac3 = json.loads(tb.run("c3", ["ip", "-j", "link", "show", "ethwe"]).stdout)[0]["address"]
    assert [n.get("lladdr") for n in neigh] == [mac3], neigh

    # TCP over IPv6, c1 -> c3 (1 MiB through the relay)
    server = tb.popen("c3", [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        answer = tb.run("c1", [sys.executable, "-c", CLIENT, str(a3)], timeout=30).stdout.strip()
        print(f"1 MiB over TCP/IPv6 c1 -> c3 (relayed): {time.monotonic() - t0:.2f} s")
        assert answer == f"{1 << 20} from {a1}"
    finally:
        server.kill()
        server.wait()

    # weftDNS: AAAA, ip6.arpa PTR, glibc's ahostsv6, from inside the containers
    visible("c3 resolvable over IPv6 in c1", lambda: getent6(tb, "c1", "c3.weft.local") == [str(a3)])
    assert getent6(tb, "c3", "c1") == [str(a1)]                       # the search domain
    assert dig(tb, "c2", "AAAA", "c1.weft.local") == [str(a1)]
    assert dig(tb, "c2", "A", "c1.weft.local") == [str(ipaddress.ip_interface(out1[0]).ip)]
    assert dig(tb, "c1", "-x", str(a3)) == ["c3.weft.local."]
    assert dig(tb, "c3", "-x", str(a2)) == ["c2.weft.local."]
    tb.weft("h2", "dns-add", "fd32:7765:6674:1::99", "10.32.99.9", "--name", "ext6")
    visible("ext6 (dns-add of an IPv6 address) on h1's containers",
            lambda: dig(tb, "c1", "AAAA", "ext6.weft.local") == ["fd32:7765:6674:1::99"])
    assert tb.weft("h3", "dns-lookup", "ext6").stdout.split() == ["10.32.99.9", "fd32:7765:6674:1::99"]

    status = tb.weft("h1", "status", "ipam").stdout
    assert "IPv6:" in status and str(RANGE6) in status, status
    ipv6 = report(tb, "h2")["ipam"]["ipv6"]
    assert ipv6["range"] == str(RANGE6) and ipv6["default_subnet"] == str(SUBNET6)
    assert "Range6" in tb.weft("h2", "status").stdout

    # a restarted router puts back the IPv6 address a container lost meanwhile, and keeps
    # its IPAM claim (ipam6.json)
    tb.weft("h3", "stop")
    tb.run("c3", ["ip", "-6", "addr", "flush", "dev", "ethwe", "scope", "global"])
    assert global6(tb, "c3") == []
    launch(tb, "h3", tb.address("h2"), password=None, extra=OPTIONS)
    assert global6(tb, "c3") == [C3[1]]
    assert report(tb, "h3")["ipam"]["ipv6"]["allocated"] == 1
    visible("c1 pings c3 over IPv6 after h3's restart", lambda: ping6(tb, "c1", str(a3)))

    # detach: the addresses, the records and the IPAM addresses go
    held = report(tb, "h2")["ipam"]["ipv6"]["allocated"]
    tb.weft("h2", "detach", c2)
    assert global6(tb, "c2") == []
    assert report(tb, "h2")["ipam"]["ipv6"]["allocated"] == held - 1
    visible("c2's AAAA and PTR gone in c1", lambda: dig(tb, "c1", "AAAA", "c2.weft.local") == []
            and dig(tb, "c1", "-x", str(a2)) == [])
    assert not ping6(tb, "c1", str(a2))
    # detaching just the IPv6 address of c3 keeps its IPv4 one and its A record
    tb.weft("h3", "detach", C3[1], c3)
    assert global6(tb, "c3") == []
    visible("c3's AAAA gone, its A kept", lambda: dig(tb, "c1", "AAAA", "c3.weft.local") == []
            and dig(tb, "c1", "A", "c3.weft.local") == ["10.32.200.3"])
    print(f"whole test: {time.monotonic() - start:.2f} s")


def test_cni_add_returns_both_families_and_bad_input_is_one_line(tb: Testbed) -> None:
    pod = tb.add_container("pod1")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "id-pod1", "CNI_NETNS": f"/var/run/netns/{pod}",
           "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=pod1",
           "CNI_PATH": "/opt/cni/bin", "WEFT_HTTP_ADDR": None}
    conf = json.dumps({"cniVersion": "1.0.0", "name": "weft", "type": "weft-net"})
    proc = tb.run("h1", [sys.executable, "-m", "weftnet.router.programs.cni"], env=env, input=conf,
                  check=False, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    ips = [ipaddress.ip_interface(ip["address"]) for ip in result["ips"]]
    assert [ip.version for ip in ips] == [4, 6] and ips[1].ip in SUBNET6, result
    assert global6(tb, "pod1", "eth0") == [str(ips[1])]
    visible("pod1's AAAA on h3", lambda: tb.weft("h3", "dns-lookup", "pod1", check=False)
            .stdout.split() == [str(ips[0].ip), str(ips[1].ip)])
    proc = tb.run("h1", [sys.executable, "-m", "weftnet.router.programs.cni"],
                  env={**env, "CNI_COMMAND": "DEL"}, input=conf, check=False, timeout=90)
    assert proc.returncode == 0 and global6(tb, "pod1", "eth0") == []

    ns = tb.add_container("bad")
    for args, words in ((["fe80::5/64"], "link-local"), (["fd32:7765:6674:1::5"], "prefix length"),
                        (["net:fd32:7765:6674:1::1/64"], "not a subnet")):
        bad = tb.weft("h1", "attach", *args, ns, check=False)
        assert bad.returncode == 1 and words in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    bad = tb.run("h1", [sys.executable, "-m", "weftnet.router.programs.cli", "launch",
                        "--ipalloc-range-v6", "10.1.0.0/16"], check=False)
    assert bad.returncode != 0 and "--ipalloc-range-v6" in bad.stderr and "IPv6" in bad.stderr


def test_expose_ipv6_nats_a_ula_and_routes_a_global_prefix(tb: Testbed) -> None:
    ns = tb.add_container("c4")
    out = tb.weft("h1", "attach", "net:fd32:7765:6674:4::/64", "--name", "c4", ns).stdout.split()
    mine = ipaddress.ip_interface(out[0])
    assert mine.network == ipaddress.ip_network("fd32:7765:6674:4::/64"), out

    def forwarding() -> str:
        return tb.run("h1", ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip()

    def table() -> str:
        return tb.run("h1", ["nft", "list", "table", "ip6", "weft"], check=False).stdout

    assert forwarding() == "0"
    exposed = tb.weft("h1", "expose", "net:fd32:7765:6674:4::/64", "2001:db8:77::1/64").stdout.split()
    assert exposed[1] == "2001:db8:77::1/64" and ipaddress.ip_interface(exposed[0]).network == mine.network
    assert forwarding() == "1"
    rules = table()
    assert "masquerade" in rules and "fd32:7765:6674:4::/64" in rules
    global_lines = [ln for ln in rules.splitlines() if "2001:db8:77::/64" in ln]
    assert len(global_lines) == 2 and not any("masquerade" in ln for ln in global_lines), rules
    assert "ip weft" not in rules
    visible("h1 pings c4 over its exposed IPv6 address",
            lambda: tb.run("h1", ["ping", "-6", "-n", "-c1", "-W1", str(mine.ip)],
                           check=False).returncode == 0)
    tb.weft("h1", "hide")
    assert table() == "" and forwarding() == "0"
