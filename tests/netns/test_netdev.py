"""Host plumbing on real devices: the bridge, veth pairs into "containers", namespace specs.

Each test builds its own namespaces with ``Testbed``: ``h1`` plays the router's host, bare
namespaces ``c1``/``c2`` play containers. The functions under test reach into them with
their ``netns`` argument; one test runs them in a child process inside ``h1`` the way the
router does (the current namespace). Container addresses are 10.99.x.x inside those
namespaces only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from weftnet.router.host import netdev
from weftnet.router.host.netdev import (
    BRIDGE,
    TAP,
    Attached,
    NetdevError,
    attach,
    detach,
    ensure_bridge,
    link_exists,
    list_attached,
    netns_name,
    remove_all,
    resolve_netns,
    set_mtu,
    veth_name,
)
from weftnet.router.tools.testbed import Testbed

from .conftest import TestbedFactory
from .weftctl import wait_for

MTU = 1376


def cidr(text: str) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(text)


def link_info(tb: Testbed, host: str, ifname: str) -> dict[str, Any]:
    out = tb.run(host, ["ip", "-j", "-d", "link", "show", "dev", ifname]).stdout
    info: dict[str, Any] = json.loads(out)[0]
    return info


def addrs(tb: Testbed, host: str, ifname: str) -> list[str]:
    out = tb.run(host, ["ip", "-j", "-4", "addr", "show", "dev", ifname]).stdout
    return sorted(f"{a['local']}/{a['prefixlen']}" for e in json.loads(out) for a in e["addr_info"])


def links(tb: Testbed, host: str) -> list[str]:
    return sorted(e["ifname"] for e in json.loads(tb.run(host, ["ip", "-j", "link"]).stdout))


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(e["ifname"] for e in json.loads(out))


def sleeper(tb: Testbed, host: str) -> int:
    """Start ``sleep`` inside ``host``; its pid once it has entered the namespace."""
    proc = tb.popen(host, ["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = os.stat(f"/var/run/netns/{tb.ns(host)}")
    # `ip netns exec` joins the namespace, then execs sleep under the same pid.
    wait_for(
        f"sleep to enter {host}",
        lambda: os.stat(f"/proc/{proc.pid}/ns/net").st_ino == want.st_ino
        and open(f"/proc/{proc.pid}/comm").read().strip() == "sleep",
        timeout=10,
    )
    return proc.pid


@pytest.fixture
def tb(testbed_factory: TestbedFactory) -> Testbed:
    return testbed_factory(hosts=("h1", "c1", "c2"), segments={"lan": ["h1"]})


def test_ensure_bridge_settings_pinned_mac_and_idempotence(tb: Testbed) -> None:
    host = tb.ns("h1")
    first = ensure_bridge(MTU, netns=host)
    assert ensure_bridge(MTU, netns=host) == first
    info = link_info(tb, "h1", BRIDGE)
    assert info["ifindex"] == first and info["mtu"] == MTU and "UP" in info["flags"]
    data = info["linkinfo"]["info_data"]
    assert info["linkinfo"]["info_kind"] == "bridge"
    assert data["stp_state"] == 0 and data["forward_delay"] == 0
    assert data["ageing_time"] == 30000  # centiseconds: 300 s
    assert data["mcast_snooping"] == 0
    mac = info["address"]
    # A port with a lower MAC would become the bridge's address unless it is pinned.
    attach(resolve_netns(tb.ns("c1")), [cidr("10.99.9.1/24")], mtu=MTU, mac="02:00:00:00:00:01",
           netns=host)  # fmt: skip
    assert link_info(tb, "h1", BRIDGE)["address"] == mac
    # Settings change on an existing bridge; its index does not.
    assert ensure_bridge(1400, mac="0a:00:00:00:00:42", gso_max_size=32768, netns=host) == first
    info = link_info(tb, "h1", BRIDGE)
    assert (info["mtu"], info["address"], info["gso_max_size"]) == (1400, "0a:00:00:00:00:42", 32768)


def test_ensure_bridge_refuses_a_non_bridge_named_weft(tb: Testbed) -> None:
    tb.run("c2", ["ip", "link", "add", BRIDGE, "type", "veth", "peer", "name", "other"])
    with pytest.raises(NetdevError, match="not a bridge") as err:
        ensure_bridge(MTU, netns=tb.ns("c2"))
    assert "\n" not in str(err.value)


def test_resolve_netns_by_name_pid_and_path(tb: Testbed) -> None:
    ns = tb.ns("c1")
    by_name = resolve_netns(ns)
    assert (by_name.name, by_name.path) == (ns, f"/var/run/netns/{ns}")
    pid = sleeper(tb, "c1")
    by_pid = resolve_netns(str(pid))
    assert (by_pid.name, by_pid.path) == (f"pid:{pid}", f"/proc/{pid}/ns/net")
    by_path = resolve_netns(f"/proc/{pid}/ns/net")
    assert by_path.name == by_path.path == f"/proc/{pid}/ns/net"
    assert by_name.key == by_pid.key == by_path.key
    assert resolve_netns(f"/var/run/netns/{ns}").key == by_name.key
    assert resolve_netns(tb.ns("c2")).key != by_name.key
    # The same namespace gets the same host-side veth name, however it is named.
    assert veth_name(by_name.key) == veth_name(by_pid.key)
    assert len(veth_name(by_name.key)) <= 15
    # netns_name gives resolve_netns's name without opening anything (for records of a
    # namespace that is gone)
    for spec, name in ((ns, ns), (str(pid), f"pid:{pid}"), (f" pid:{pid} ", f"pid:{pid}"),
                       (f"0{pid}", f"pid:{pid}"), (by_path.path, by_path.path)):
        assert netns_name(spec) == name == resolve_netns(spec).name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("wplnope-missing", "no network namespace 'wplnope-missing'"),
        ("4194304", "no network namespace '4194304'"),  # above pid_max's ceiling
        ("/etc/hostname", "not a network namespace"),
        ("/tmp", "not a network namespace"),
        ("/nonexistent/ns", "does not exist"),
        ("", "give a name, a PID or a path"),
        ("..", "no network namespace"),
    ],
)
def test_resolve_netns_errors_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(NetdevError) as err:
        resolve_netns(spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_resolve_netns_refuses_another_namespace_type() -> None:
    pid = os.getpid()
    with pytest.raises(NetdevError, match="not a network namespace"):
        resolve_netns(f"/proc/{pid}/ns/uts")


def test_attach_ping_list_detach(tb: Testbed) -> None:
    before = root_links()
    host = tb.ns("h1")
    ensure_bridge(MTU, netns=host)
    c1 = resolve_netns(tb.ns("c1"))
    c2 = resolve_netns(str(sleeper(tb, "c2")))  # a container known by its pid

    a1 = attach(c1, [cidr("10.99.1.1/24")], mtu=MTU, netns=host)
    a2 = attach(c2, [cidr("10.99.1.2/24")], mtu=MTU, netns=host)
    assert a1 == Attached(
        container=c1.name, ifname="ethwe", host_ifname=veth_name(c1.key), mac=a1.mac,
        cidrs=(cidr("10.99.1.1/24"),), netns_path=c1.path, key=c1.key,
    )  # fmt: skip
    assert a2.container == c2.name and a2.container.startswith("pid:")
    assert a1.host_ifname != a2.host_ifname and a1.mac != a2.mac
    mac = int(a1.mac.replace(":", "")[:2], 16)
    assert mac & 0x02 and not mac & 0x01  # locally administered, unicast

    # The container side: ethwe with MTU, MAC, address, up; lo up; a multicast route.
    inside = link_info(tb, "c1", "ethwe")
    assert (inside["mtu"], inside["address"]) == (MTU, a1.mac)
    assert "UP" in inside["flags"] and "UP" in link_info(tb, "c1", "lo")["flags"]
    assert addrs(tb, "c1", "ethwe") == ["10.99.1.1/24"]
    assert "224.0.0.0/4 dev ethwe" in tb.run("c1", ["ip", "route"]).stdout
    # The host side: a port of the bridge, up, same MTU.
    outside = link_info(tb, "h1", a1.host_ifname)
    assert outside["master"] == BRIDGE and outside["mtu"] == MTU and "UP" in outside["flags"]

    assert tb.ping("c1", "10.99.1.2", timeout=3)
    assert tb.ping("c2", "10.99.1.1", timeout=3)

    # Again, with one more address: only that one is added, the pair stays.
    index = outside["ifindex"]
    again = attach(c1, [cidr("10.99.1.1/24"), cidr("10.99.2.1/24")], mtu=MTU, netns=host)
    assert again.cidrs == (cidr("10.99.1.1/24"), cidr("10.99.2.1/24"))
    assert link_info(tb, "h1", a1.host_ifname)["ifindex"] == index
    assert addrs(tb, "c1", "ethwe") == ["10.99.1.1/24", "10.99.2.1/24"]
    # Named by path this time: the same namespace, the same attachment.
    by_path = attach(resolve_netns(c1.path), [], mtu=MTU, netns=host)
    assert by_path.host_ifname == a1.host_ifname and by_path.cidrs == again.cidrs
    assert by_path.container == c1.path  # as given; list_attached keeps the first name

    listed = list_attached(netns=host)
    assert sorted(a.container for a in listed) == sorted([c1.name, c2.name])
    assert {a.host_ifname: a.cidrs for a in listed} == {
        a1.host_ifname: again.cidrs, a2.host_ifname: a2.cidrs}

    # Partial detach: those addresses only (matched by IP); unknown ones are no error.
    assert detach(c1, [cidr("10.99.2.1/32")], netns=host) == [cidr("10.99.2.1/24")]
    assert detach(c1, [cidr("10.99.77.7/24")], netns=host) == []
    assert addrs(tb, "c1", "ethwe") == ["10.99.1.1/24"]
    # Everything: the pair goes; again is a no-op.
    assert detach(c1, None, netns=host) == [cidr("10.99.1.1/24")]
    assert "ethwe" not in links(tb, "c1") and a1.host_ifname not in links(tb, "h1")
    assert detach(c1, None, netns=host) == []
    assert [a.container for a in list_attached(netns=host)] == [c2.name]
    # Taking the last address away takes the pair away too.
    assert detach(c2, [cidr("10.99.1.2/24")], netns=host) == [cidr("10.99.1.2/24")]
    assert not link_exists(a2.host_ifname, netns=host)
    assert list_attached(netns=host) == []
    assert root_links() == before


def test_attach_options_and_refusals(tb: Testbed) -> None:
    host = tb.ns("h1")
    c1, c2 = resolve_netns(tb.ns("c1")), resolve_netns(tb.ns("c2"))
    with pytest.raises(NetdevError, match="no bridge weft"):
        attach(c1, [cidr("10.99.3.1/24")], mtu=MTU, netns=host)
    ensure_bridge(MTU, netns=host)
    a = attach(c1, [cidr("10.99.3.1/24")], mtu=1300, mac="0a:bc:00:00:00:01", ifname="eth7",
               gso_max_size=16384, netns=host)  # fmt: skip
    info = link_info(tb, "c1", "eth7")
    assert (info["mtu"], info["address"], info["gso_max_size"]) == (1300, "0a:bc:00:00:00:01", 16384)
    assert a.ifname == "eth7" and a.host_ifname == veth_name(c1.key, "eth7") != veth_name(c1.key)
    # An ethwe that is not ours is left alone.
    tb.run("c2", ["ip", "link", "add", "ethwe", "type", "veth", "peer", "name", "other"])
    with pytest.raises(NetdevError, match="not ours"):
        attach(c2, [cidr("10.99.3.2/24")], mtu=MTU, netns=host)
    assert detach(c2, None, netns=host) == []
    assert "ethwe" in links(tb, "c2")
    with pytest.raises(NetdevError, match="bad MTU"):
        attach(c1, [], mtu=20, netns=host)


def test_detach_after_the_container_is_gone(tb: Testbed) -> None:
    host = tb.ns("h1")
    ensure_bridge(MTU, netns=host)
    pid = sleeper(tb, "c2")
    ref = resolve_netns(str(pid))
    attach(ref, [cidr("10.99.4.1/24")], mtu=MTU, netns=host)
    os.kill(pid, 9)
    wait_for("the sleeper to exit", lambda: not os.path.exists(f"/proc/{pid}/ns/net"), timeout=10)
    # The namespace itself lives on (it is still named c2); the pid no longer leads there.
    with pytest.raises(NetdevError, match="no network namespace"):
        resolve_netns(str(pid))
    assert detach(ref, None, netns=host) == []
    assert not link_exists(veth_name(ref.key), netns=host)


def test_set_mtu_link_exists_and_remove_all(tb: Testbed) -> None:
    host = tb.ns("h1")
    assert not link_exists(BRIDGE, netns=host)
    ensure_bridge(MTU, netns=host)
    tb.run("h1", ["ip", "tuntap", "add", "dev", TAP, "mode", "tap"])
    a1 = attach(resolve_netns(tb.ns("c1")), [cidr("10.99.5.1/24")], mtu=MTU, netns=host)
    a2 = attach(resolve_netns(tb.ns("c2")), [cidr("10.99.5.2/24")], mtu=MTU, netns=host)
    assert link_exists(BRIDGE, netns=host) and link_exists(TAP, netns=host)
    set_mtu(a1.host_ifname, 1280, netns=host)
    assert link_info(tb, "h1", a1.host_ifname)["mtu"] == 1280
    with pytest.raises(NetdevError, match="no such interface"):
        set_mtu("wplnothere", 1280, netns=host)
    removed = remove_all(netns=host)
    assert sorted(removed) == sorted([a1.host_ifname, a2.host_ifname, TAP, BRIDGE])
    assert links(tb, "h1") == ["eth0", "lo"]
    assert links(tb, "c1") == links(tb, "c2") == ["lo"]
    assert remove_all(netns=host) == []


_ROUTER_SIDE = """\
import ipaddress, json, sys
from weftnet.router.host import netdev
netdev.ensure_bridge(1376)
spec = sys.argv[1]
if spec != "-":
    ref = netdev.resolve_netns(spec)
    netdev.attach(ref, [ipaddress.IPv4Interface(sys.argv[2])], mtu=1376)
print(json.dumps([a.to_json() for a in netdev.list_attached()]))
"""


def unnamed_namespace(tb: Testbed) -> int:
    """A namespace no name under /var/run/netns leads to, held by a process: its pid."""
    proc = tb.popen("c2", ["unshare", "--net", "sleep", "600"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    named = os.stat(f"/var/run/netns/{tb.ns('c2')}").st_ino
    # `ip netns exec` joins c2, then unshare makes a fresh namespace and execs sleep.
    wait_for(
        "sleep in a namespace of its own",
        lambda: open(f"/proc/{proc.pid}/comm").read().strip() == "sleep"
        and os.stat(f"/proc/{proc.pid}/ns/net").st_ino not in (named, os.stat("/proc/self/ns/net").st_ino),
        timeout=10,
    )
    return proc.pid


def test_in_the_current_namespace_as_the_router_runs(tb: Testbed) -> None:
    """No ``netns`` argument: a process inside h1 works on h1. A fresh process (a router
    after a restart) finds the containers again by following link-netnsids."""
    before = root_links()
    run = [sys.executable, "-c", _ROUTER_SIDE]
    tb.run("h1", [*run, tb.ns("c1"), "10.99.6.1/24"])
    pid = unnamed_namespace(tb)
    tb.run("h1", [*run, str(pid), "10.99.6.2/24"])
    found = [Attached.from_json(a) for a in json.loads(tb.run("h1", [*run, "-"]).stdout)]
    c1, c2 = resolve_netns(tb.ns("c1")), resolve_netns(str(pid))
    # The named namespace is found by its name, the other one through its process.
    assert c2.name.startswith("pid:")
    assert [(a.container, a.cidrs, a.key) for a in found] == sorted([
        (c1.name, (cidr("10.99.6.1/24"),), c1.key),
        (c2.name, (cidr("10.99.6.2/24"),), c2.key),
    ])  # sorted by container name
    # Records the caller persisted name a namespace as it was given.
    hint = Attached(container="my-container", ifname="ethwe", host_ifname=found[1].host_ifname,
                    mac=found[1].mac, cidrs=(), netns_path=c2.path, key=c2.key)  # fmt: skip
    assert sorted(a.container for a in list_attached([hint], netns=tb.ns("h1"))) == sorted(
        [c1.name, "my-container"])
    assert tb.ping("c1", "10.99.6.2", timeout=3)
    assert root_links() == before
    assert "weft" in links(tb, "h1")


def test_netns_thread_leaves_this_process_where_it_was(tb: Testbed) -> None:
    mine = os.stat("/proc/thread-self/ns/net").st_ino
    inode = netdev.run_in_netns(tb.ns("c1"), lambda: os.stat("/proc/thread-self/ns/net").st_ino)
    assert inode == resolve_netns(tb.ns("c1")).key[1] != mine
    assert os.stat("/proc/thread-self/ns/net").st_ino == mine
    with pytest.raises(ZeroDivisionError):
        netdev.run_in_netns(tb.ns("c1"), lambda: 1 // 0)
    assert netdev.run_in_netns(None, threading.get_ident) == threading.get_ident()
