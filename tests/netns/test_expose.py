"""``weft expose`` / ``weft hide`` on real (simulated) hosts, driven by the CLI.

    outside 192.168.77.2 ── vout 192.168.77.1 ┐
                                              h1 ── lan ── h2
                                     c1 (10.32.x) ┘          └ c2 (10.32.x)

Two routers (IPAM by consensus of the two, DNS on), a container on each. ``outside`` is a
namespace joined to h1 only, by a veth of its own, with an address not on the mesh and no
route back to it: a container reaches it only through h1, and only when h1 masquerades
(the UDP echo server there answers with the source address it saw, which must be h1's
``vout`` address). The containers route 192.168.77.0/24 via h1's exposed address.
Waits are bounded liveness checks only.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import textwrap
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import attach, established, launch, one_line_error, report, wait_for

pytestmark = pytest.mark.skipif(shutil.which("nft") is None,
                                reason="needs nft (apt-get install nftables)")

INIT = ("--ipalloc-init", "consensus=2")
OUT_NET = "192.168.77.0/24"
H1_OUT, OUTSIDE = "192.168.77.1", "192.168.77.2"
PORT = 7777

ECHO_SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(addr[0].encode(), addr)   # tell the sender which source address arrived
""")

ECHO_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    for _ in range(int(sys.argv[3])):
        try:
            s.sendto(b"who am i", (sys.argv[1], int(sys.argv[2])))
            print(s.recvfrom(2048)[0].decode())
            break
        except OSError:  # a timeout, or unreachable for now
            pass
    else:
        sys.exit(1)
""")


def echo_from(tb: Testbed, container: str, tries: int = 5) -> str | None:
    """The source address the outside saw for a datagram from ``container``; None when
    no answer came back."""
    proc = tb.run(container, ["python3", "-c", ECHO_CLIENT, OUTSIDE, str(PORT), str(tries)],
                  check=False, timeout=tries * 2 + 10)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ruleset(tb: Testbed, host: str) -> str:
    return tb.run(host, ["nft", "list", "ruleset"]).stdout


def ip_forward(tb: Testbed, host: str) -> str:
    return tb.run(host, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()


def bridge_addrs(tb: Testbed, host: str) -> list[str]:
    out = tb.run(host, ["ip", "-4", "-o", "addr", "show", "dev", "weft"], check=False).stdout
    return [line.split()[3] for line in out.splitlines()]


@pytest.fixture
def site(testbed_factory: Any) -> Testbed:
    tb: Testbed = testbed_factory(hosts=("h1", "h2"))
    launch(tb, "h1", extra=INIT)
    launch(tb, "h2", tb.address("h1"), extra=INIT)
    wait_for("h1-h2 established", lambda: established(report(tb, "h1")) == {"h2"}
             and established(report(tb, "h2")) == {"h1"})
    # the outside world: a namespace behind h1 only (the veth is made inside h1)
    out_ns = tb.add_container("outside")
    tb.run("h1", ["ip", "link", "add", "vout", "type", "veth", "peer", "name", "eth0",
                  "netns", out_ns])
    tb.run("h1", ["ip", "addr", "add", f"{H1_OUT}/24", "dev", "vout"])
    tb.run("h1", ["ip", "link", "set", "vout", "up"])
    tb.run("outside", ["ip", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0"])
    tb.run("outside", ["ip", "link", "set", "eth0", "up"])
    server = tb.popen("outside", ["python3", "-c", ECHO_SERVER, OUTSIDE, str(PORT)],
                      stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    wait_for("h1 reaching the outside", lambda: tb.ping("h1", OUTSIDE))
    return tb


def test_expose_reaches_containers_masquerades_out_and_hide_undoes_it(site: Testbed) -> None:
    tb = site
    c1, c2 = attach(tb, "h1", "c1"), attach(tb, "h2", "c2")
    forward_before = ip_forward(tb, "h1")
    assert forward_before == "0"
    assert not tb.ping("h1", str(c1.ip)) and "table ip weft" not in ruleset(tb, "h1")

    # expose: one address from IPAM's default subnet, the same one again and again
    out = tb.weft("h1", "expose", "--name", "gw", timeout=90).stdout.split()
    assert len(out) == 1, out
    gw = ipaddress.IPv4Interface(out[0])
    assert gw.network == ipaddress.IPv4Network("10.32.0.0/12") and gw.ip not in (c1.ip, c2.ip)
    rules = ruleset(tb, "h1")
    assert tb.weft("h1", "expose", timeout=90).stdout.split() == [str(gw)]
    assert tb.weft("h1", "expose", "net:default", timeout=90).stdout.split() == [str(gw)]
    assert ruleset(tb, "h1") == rules, "exposing again changed the ruleset"
    assert bridge_addrs(tb, "h1") == [str(gw)]
    assert "table ip weft" in rules and "masquerade" in rules
    assert rules.count(f'comment "weft-expose {gw.network}"') == 3, rules
    assert ip_forward(tb, "h1") == "1"

    # the host reaches containers on both hosts; h2 resolves its name
    assert tb.ping("h1", str(c1.ip), timeout=5)
    assert tb.ping("h1", str(c2.ip), timeout=5)
    assert tb.ping("c2", str(gw.ip), timeout=5)
    wait_for("h2 resolving gw", lambda: tb.weft("h2", "dns-lookup", "gw", check=False)
             .stdout.split() == [str(gw.ip)])

    # containers on both hosts reach the outside through h1, masqueraded as h1's address
    for c in ("c1", "c2"):
        tb.run(c, ["ip", "route", "add", OUT_NET, "via", str(gw.ip)])
    assert echo_from(tb, "c1") == H1_OUT
    assert echo_from(tb, "c2") == H1_OUT
    assert tb.ping("c2", OUTSIDE, timeout=5)

    # a second subnet: its own rules, sharing the table
    extra = tb.weft("h1", "expose", "net:10.40.1.0/24", timeout=90).stdout.split()
    assert len(extra) == 1 and extra[0].endswith("/24")
    rules = ruleset(tb, "h1")
    assert rules.count('comment "weft-expose 10.40.1.0/24"') == 3, rules
    assert tb.weft("h1", "hide", "net:10.40.1.0/24").stdout.split() == extra
    rules = ruleset(tb, "h1")
    assert "10.40.1.0/24" not in rules and rules.count(f"weft-expose {gw.network}") == 3
    assert echo_from(tb, "c2") == H1_OUT

    # bad input: one line, nothing changed
    assert "banana" in one_line_error(tb.weft("h1", "expose", "banana", check=False))
    assert "banana" in one_line_error(tb.weft("h1", "hide", "banana", check=False))
    assert "c1" in one_line_error(tb.weft("h1", "expose", str(c1), check=False))
    assert bridge_addrs(tb, "h1") == [str(gw)]

    # hide: everything expose added goes, and only that
    assert tb.weft("h1", "hide").stdout.split() == [str(gw)]
    assert "table ip weft" not in ruleset(tb, "h1")
    assert bridge_addrs(tb, "h1") == []
    assert ip_forward(tb, "h1") == forward_before
    assert not tb.ping("h1", str(c2.ip))
    assert echo_from(tb, "c2", tries=2) is None
    assert echo_from(tb, "c1", tries=2) is None
    assert tb.ping("h1", OUTSIDE)                  # h1's own link is untouched
    wait_for("gw gone from DNS on h2", lambda: tb.weft("h2", "dns-lookup", "gw", check=False)
             .returncode != 0)
    assert tb.weft("h1", "hide").stdout == ""      # hide twice: nothing to do
    assert tb.ping("c1", str(c2.ip), timeout=5)    # the mesh itself is fine


def test_restart_restores_and_reset_removes_the_table(site: Testbed) -> None:
    tb = site
    attach(tb, "h2", "c2")
    gw = tb.weft("h1", "expose", "10.32.7.7/12", timeout=90).stdout.strip()
    assert gw == "10.32.7.7/12"
    # a restart after the kernel lost it all (as after a reboot) puts it back
    tb.weft("h1", "stop")
    tb.run("h1", ["nft", "delete", "table", "ip", "weft"])
    tb.run("h1", ["ip", "addr", "flush", "dev", "weft"])
    tb.run("h1", ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    launch(tb, "h1", extra=INIT)
    assert bridge_addrs(tb, "h1") == [gw]
    assert "masquerade" in ruleset(tb, "h1") and ip_forward(tb, "h1") == "1"
    wait_for("h1-h2 established again", lambda: established(report(tb, "h1")) == {"h2"})
    tb.run("c2", ["ip", "route", "add", OUT_NET, "via", "10.32.7.7"])
    wait_for("c2 reaching the outside via h1", lambda: echo_from(tb, "c2", tries=2) == H1_OUT)

    # reset: the table, the address and forwarding go with the router
    tb.weft("h1", "reset")
    assert "table ip weft" not in ruleset(tb, "h1")
    assert "10.32.7.7" not in " ".join(bridge_addrs(tb, "h1"))
    assert ip_forward(tb, "h1") == "0"
    assert not tb.data_dir("h1").exists()


def test_without_ipam_an_address_must_be_given(testbed_factory: Any) -> None:
    tb: Testbed = testbed_factory(hosts=("h1",))
    launch(tb, "h1", extra=("--ipalloc-range", "", "--no-dns"))
    assert "IPAM" in one_line_error(tb.weft("h1", "expose", check=False))
    assert "DNS" in one_line_error(tb.weft("h1", "expose", "10.9.0.1/24", "--name", "gw",
                                           check=False))
    assert tb.weft("h1", "expose", "10.9.0.1/24").stdout == "10.9.0.1/24\n"
    assert "weft-expose 10.9.0.0/24" in ruleset(tb, "h1")
    assert "exposed already" in one_line_error(tb.weft("h1", "expose", "10.9.0.1/16",
                                                       check=False))
    assert tb.weft("h1", "hide", "10.9.0.1").stdout == "10.9.0.1/24\n"
    assert "table ip weft" not in ruleset(tb, "h1")
    # a router killed while exposing: `weft reset` undoes it from the data dir's record
    assert tb.weft("h1", "expose", "10.9.0.1/24").stdout == "10.9.0.1/24\n"
    tb.kill_processes("h1")
    assert "table ip weft" in ruleset(tb, "h1") and bridge_addrs(tb, "h1") == ["10.9.0.1/24"]
    tb.weft("h1", "reset")
    assert "table ip weft" not in ruleset(tb, "h1") and bridge_addrs(tb, "h1") == []
    assert ip_forward(tb, "h1") == "0" and not tb.data_dir("h1").exists()
