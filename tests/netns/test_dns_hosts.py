"""weftDNS on real (simulated) hosts: routers answer for every container in the mesh.

Three hosts with a router each and a fourth, ``up``, that plays the outside world's
resolver (a stand-in weftDNS authoritative for example.com), all on one LAN::

    h1 172.31.1.1  ── h2 172.31.1.2 ── h3 172.31.1.3        up 172.31.1.4:53
       (a triangle: h3 is told about h1 and h2)
    (each router: weftDNS on 127.0.0.11:53 in its own         www.example.com
     namespace and inside every container it attached)        -> 192.0.2.80

A router forwards names that are not ours to the resolvers in its host's
/etc/resolv.conf; for a testbed host that is ``/etc/netns/<host ns>/resolv.conf``, which
``ip netns exec`` bind-mounts over /etc/resolv.conf when the router is launched: the
fixture writes it (nameserver 172.31.1.4) before launching. Containers are resolved from
inside with glibc (``getent``) and ``dig`` reading the resolv.conf ``weft attach`` wrote.
Namespaces carry a prefix of their own (``wdh`` + hex); the fixture removes them and every
/etc/netns entry under that prefix, whatever happens.

Times ("visible after N s") are printed, never asserted: waits are bounded liveness
checks only.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import established, launch, report, wait_for

pytestmark = pytest.mark.skipif(shutil.which("dig") is None,
                                reason="needs dig (apt-get install bind9-dnsutils)")

HOSTS = ("h1", "h2", "h3")
UP = "172.31.1.4"
NETNS_ETC = Path("/etc/netns")


@dataclass
class Mesh:
    tb: Testbed

    def ns(self, name: str) -> str:
        return self.tb.ns(name)

    def container(self, host: str, name: str, cidr: str, *options: str) -> str:
        """A new container attached on ``host``; returns its namespace name."""
        ns = self.tb.add_container(name)
        out = self.tb.weft(host, "attach", cidr, *options, ns).stdout.split()
        assert out == [cidr]
        return ns


def _cleanup_etc(prefix: str) -> list[str]:
    left = sorted(p.name for p in NETNS_ETC.glob(f"{prefix}-*"))
    for name in left:
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    return left


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    tb = Testbed(hosts=(*HOSTS, "up"), prefix="wdh" + secrets.token_hex(3))
    try:
        records = tb.tmpdir / "up.records"
        records.write_text("www.example.com 192.0.2.80\n")
        up = tb.popen("up", [sys.executable, "-m", "weftnet.router.daemon.dns_server", "--address", UP,
                             "--domain", "example.com", "--records", str(records)],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert up.stdout is not None and up.stdout.readline().startswith("weftdns ready")
        for host in HOSTS:
            d = NETNS_ETC / tb.ns(host)
            d.mkdir(parents=True)
            (d / "resolv.conf").write_text(f"nameserver {UP}\noptions timeout:1\n")
        try:
            launch(tb, "h1")
            launch(tb, "h2", tb.address("h1"))
            launch(tb, "h3", tb.address("h1"), tb.address("h2"))
            wait_for("a full mesh", lambda: all(
                established(report(tb, h)) == set(HOSTS) - {h} for h in HOSTS), timeout=60)
        except BaseException:
            for host in HOSTS:   # shown by pytest with the error
                log = tb.data_dir(host) / "weft.log"
                print(f"--- {host}'s log ---\n{log.read_text()[-4000:] if log.exists() else ''}")
            raise
        yield Mesh(tb)
    finally:
        try:
            tb.close()
        finally:
            _cleanup_etc(tb.prefix)


def dig(m: Mesh, container: str, *args: str) -> list[str]:
    out = m.tb.run(container, ["dig", "+short", "+tries=1", "+time=3", *args]).stdout
    return [line for line in out.splitlines() if line and not line.startswith(";")]


def getent(m: Mesh, container: str, name: str) -> list[str]:
    """The IPv4 addresses glibc finds for ``name`` inside ``container``."""
    proc = m.tb.run(container, ["getent", "ahostsv4", name], check=False)
    return sorted({line.split()[0] for line in proc.stdout.splitlines()})


def visible(what: str, check: Callable[[], bool]) -> float:
    start = time.monotonic()
    wait_for(what, check)
    took = time.monotonic() - start
    print(f"{what}: after {took:.2f} s")
    return took


def entries(m: Mesh, host: str) -> set[tuple[str, str, str]]:
    return {(e["hostname"], e["address"], e["container"]) for e in report(m.tb, host)["dns"]["entries"]}


def test_names_across_hosts_forward_and_reverse(mesh: Mesh) -> None:
    m = mesh
    c1 = m.container("h1", "c1", "10.2.1.1/24", "--name", "c1")
    m.container("h2", "c2", "10.2.1.2/24", "--name", "c2.weft.local")
    c3 = m.container("h3", "c3", "10.2.1.3/24")  # named after its namespace
    resolv = (NETNS_ETC / c1 / "resolv.conf").read_text()
    assert "nameserver 127.0.0.11\n" in resolv and "search weft.local" in resolv

    visible("c2 and c3 resolvable in c1",
            lambda: getent(m, "c1", "c2.weft.local") == ["10.2.1.2"]
            and getent(m, "c1", f"{c3}.weft.local") == ["10.2.1.3"])
    assert getent(m, "c1", "c2") == ["10.2.1.2"]          # the search domain
    assert getent(m, "c1", "C2.Weft.Local") == ["10.2.1.2"]
    assert getent(m, "c3", "c1") == ["10.2.1.1"]
    assert dig(m, "c1", "c2.weft.local") == ["10.2.1.2"]
    assert dig(m, "c2", "-x", "10.2.1.3") == [f"{c3}.weft.local."]
    assert dig(m, "c3", "-x", "10.2.1.1") == ["c1.weft.local."]
    # on a host, through the router's own listener
    assert dig(m, "h2", "@127.0.0.11", "c1.weft.local") == ["10.2.1.1"]
    # by name, across hosts, over the sleeve
    wait_for("c1 pings c2 by name", lambda: m.tb.run(
        "c1", ["ping", "-n", "-c1", "-W2", "c2"], check=False).returncode == 0)

    rep = report(m.tb, "h3")
    assert rep["dns"]["domain"] == "weft.local." and rep["dns"]["address"] == "127.0.0.11"
    assert rep["dns"]["upstream"] == [UP]
    origins = {e["hostname"]: e["origin"] for e in rep["dns"]["entries"]}
    names = {h: report(m.tb, h)["router"]["name"] for h in HOSTS}
    assert origins["c1.weft.local."] == names["h1"] and origins["c2.weft.local."] == names["h2"]
    assert origins[f"{c3}.weft.local."] == names["h3"]
    table = m.tb.weft("h1", "status", "dns").stdout
    assert any(line.split() == ["c2.weft.local.", "10.2.1.2", m.ns("c2"), names["h2"]]
               for line in table.splitlines()), table
    assert m.tb.weft("h2", "dns-lookup", "c1").stdout == "10.2.1.1\n"
    missing = m.tb.weft("h2", "dns-lookup", "nobody", check=False)
    assert missing.returncode == 1 and missing.stderr == "weft: no addresses for nobody.weft.local.\n"


def test_multi_address_names_and_big_answers(mesh: Mesh) -> None:
    m = mesh
    ctr = m.container("h1", "c6", "10.2.1.6/24", "--name", "c6")
    m.tb.weft("h1", "dns-add", "10.2.6.1", "10.2.6.2", "--name", "web")
    m.tb.weft("h2", "dns-add", "10.2.6.3", "--name", "web.weft.local")
    m.tb.weft("h1", "dns-add", ctr, "--name", "alias")     # the container's own addresses
    want = ["10.2.6.1", "10.2.6.2", "10.2.6.3"]
    visible("web's three addresses in c6", lambda: sorted(dig(m, "c6", "web.weft.local")) == want)
    assert getent(m, "c6", "web") == want
    assert m.tb.weft("h3", "dns-lookup", "web").stdout.split() == want
    visible("the alias on h3", lambda: m.tb.weft("h3", "dns-lookup", "alias", check=False)
            .stdout == "10.2.1.6\n")
    # answers are shuffled: over many queries, more than one address comes first
    firsts = {dig(m, "c6", "web.weft.local")[0] for _ in range(20)}
    assert len(firsts) > 1

    m.tb.weft("h1", "dns-remove", "10.2.6.1", "--name", "web")
    visible("10.2.6.1 gone from web on h3",
            lambda: m.tb.weft("h3", "dns-lookup", "web").stdout.split() == ["10.2.6.2", "10.2.6.3"])

    big = [f"10.40.0.{i}" for i in range(1, 51)]
    m.tb.weft("h2", "dns-add", *big, "--name", "big")
    visible("big on h1", lambda: len(m.tb.weft("h1", "dns-lookup", "big", check=False)
                                     .stdout.split()) == 50)
    udp = m.tb.run("c6", ["dig", "+noedns", "+ignore", "+tries=1", "+time=3", "big.weft.local"]).stdout
    assert " tc" in udp.split(";; flags:")[1].split(";")[0], udp
    tcp = dig(m, "c6", "+tcp", "big.weft.local")
    assert sorted(tcp) == sorted(big)
    # detach takes the container's names (attach name and dns-add alias) with it
    m.tb.weft("h1", "detach", ctr)
    visible("c6 and alias gone on h2", lambda: not {"c6.weft.local.", "alias.weft.local."}
            & {name for name, _, _ in entries(m, "h2")})


def test_detach_removes_names_everywhere_and_the_resolv_conf(mesh: Mesh) -> None:
    m = mesh
    m.container("h1", "c7", "10.2.1.7/24", "--name", "c7")
    c8 = m.container("h2", "c8", "10.2.1.8/24", "--name", "c8")
    m.container("h2", "c9", "10.2.1.9/24", "--name", "c9", "--without-dns")
    assert (NETNS_ETC / c8 / "resolv.conf").exists()
    assert not (NETNS_ETC / m.ns("c9")).exists()          # --without-dns: no resolver config
    assert "c9.weft.local." not in {n for n, _, _ in entries(m, "h2")}   # ... and no name
    visible("c8 in c7", lambda: dig(m, "c7", "c8.weft.local") == ["10.2.1.8"])
    m.tb.weft("h2", "detach", c8)
    assert not (NETNS_ETC / c8).exists()
    visible("c8 gone in c7 after detach", lambda: dig(m, "c7", "c8.weft.local") == [])
    status = m.tb.run("c7", ["dig", "+tries=1", "+time=3", "c8.weft.local"]).stdout
    assert "status: NXDOMAIN" in status


def test_outside_names_go_to_the_hosts_resolver(mesh: Mesh) -> None:
    m = mesh
    m.container("h3", "c10", "10.2.1.10/24", "--name", "c10")
    assert dig(m, "c10", "www.example.com") == ["192.0.2.80"]
    assert getent(m, "c10", "www.example.com") == ["192.0.2.80"]
    assert dig(m, "c10", "+tcp", "www.example.com") == ["192.0.2.80"]
    out = m.tb.run("c10", ["dig", "+tries=1", "+time=3", "nope.example.com"]).stdout
    assert "status: NXDOMAIN" in out       # the upstream's answer, relayed
    stats = report(m.tb, "h3")["dns"]["statistics"]
    assert stats["forwarded"] >= 3


def test_a_vanished_container_loses_its_names(mesh: Mesh) -> None:
    m = mesh
    m.container("h1", "c11", "10.2.1.11/24", "--name", "c11")
    ctr = m.container("h2", "c12", "10.2.1.12/24", "--name", "c12")
    visible("c12 on h1", lambda: ("c12.weft.local.", "10.2.1.12", ctr) in entries(m, "h1"))
    m.tb.remove_container("c12")            # gone without a detach
    visible("c12 gone on h1", lambda: all(n != "c12.weft.local." for n, _, _ in entries(m, "h1")))
    assert ctr not in m.tb.weft("h2", "ps").stdout
    assert not (NETNS_ETC / ctr).exists()


def test_restart_keeps_names_and_drops_what_went_away_meanwhile(mesh: Mesh) -> None:
    m = mesh
    m.container("h1", "c13", "10.2.1.13/24", "--name", "c13")
    c14 = m.container("h3", "c14", "10.2.1.14/24", "--name", "c14")
    c15 = m.container("h3", "c15", "10.2.1.15/24", "--name", "c15")
    m.tb.weft("h3", "dns-add", "192.0.2.99", "--name", "ext")
    visible("c14, c15 and ext on h1", lambda: {"c14.weft.local.", "c15.weft.local.", "ext.weft.local."}
            <= {n for n, _, _ in entries(m, "h1")})
    m.tb.weft("h3", "stop")
    m.tb.remove_container("c15")            # goes away while its router is down
    # peers keep the names of a router that is only briefly away
    assert "c14.weft.local." in {n for n, _, _ in entries(m, "h1")}
    launch(m.tb, "h3", m.tb.address("h2"))
    after = entries(m, "h3")                # re-asserted at launch, before any peer spoke
    assert {("c14.weft.local.", "10.2.1.14", c14), ("ext.weft.local.", "192.0.2.99", "weft:extern")} <= after
    assert all(n != "c15.weft.local." for n, _, _ in after)
    visible("c15 gone on h1 after h3's restart",
            lambda: all(n != "c15.weft.local." for n, _, _ in entries(m, "h1")))
    assert ("c14.weft.local.", "10.2.1.14", c14) in entries(m, "h1")
    # the restarted router serves inside its containers again
    visible("c13 from inside c14", lambda: dig(m, "c14", "c13.weft.local") == ["10.2.1.13"])
    assert not (NETNS_ETC / c15).exists()
    state = json.loads((m.tb.data_dir("h3") / "state.json").read_text())
    assert ["ext.weft.local.", "192.0.2.99", "weft:extern"] in state["dns"]["claims"]


def test_no_dns(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(hosts=("h1",))
    try:
        launch(tb, "h1", extra=("--no-dns",))
        assert report(tb, "h1")["dns"] is None
        ns = tb.add_container("c1")
        assert tb.weft("h1", "attach", "10.2.1.1/24", "--name", "c1", ns).stdout == "10.2.1.1/24\n"
        assert not (NETNS_ETC / ns).exists()
        status = tb.weft("h1", "status", "dns", check=False)
        assert status.returncode == 1 and status.stderr == "weft: DNS is disabled\n"
        add = tb.weft("h1", "dns-add", "10.2.1.5", "--name", "x", check=False)
        assert add.returncode == 1 and "DNS is disabled" in add.stderr
        assert "Service: dns" not in tb.weft("h1", "status").stdout
        # nothing listens on 127.0.0.11:53
        out = tb.run("c1", ["dig", "@127.0.0.11", "+tries=1", "+time=1", "c1.weft.local"], check=False)
        assert out.returncode != 0
    finally:
        _cleanup_etc(tb.prefix)
