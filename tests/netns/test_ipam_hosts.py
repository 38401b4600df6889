"""IPAM on real (simulated) hosts: three routers seed the ring by consensus and hand out
unique addresses to containers attached without one, driven by the CLI as a user would.

    h1 ── h2 ── h3   (one LAN; h2 and h3 are told about h1, h3 also about h2)

Every router is launched with ``--ipalloc-init consensus=3``: nobody owns any space until
the three have agreed, which the first ``attach`` without an address triggers. The tests
then check what the issue promises: unique addresses in 10.32.0.0/12 that reach each other,
``net:CIDR``, claims refused when another peer has the address in use, allocations kept
across a restart, ``detach`` and a vanished namespace freeing at once, and ``rmpeer``
handing a dead peer's space to the living. Waits are bounded liveness checks only.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from weftnet.router.testbed import Testbed

from .weftctl import established, launch, report, wait_for

HOSTS = ("h1", "h2", "h3")
RANGE = ipaddress.IPv4Network("10.32.0.0/12")
INIT = ("--ipalloc-init", "consensus=3")


@pytest.fixture
def trio_mesh(testbed_factory: Any) -> Testbed:
    tb: Testbed = testbed_factory(hosts=HOSTS)
    launch(tb, "h1", extra=INIT)
    launch(tb, "h2", tb.address("h1"), extra=INIT)
    launch(tb, "h3", tb.address("h1"), tb.address("h2"), extra=INIT)
    for host in HOSTS:
        others = set(HOSTS) - {host}
        wait_for(f"{host} connected to {others}", lambda h=host, o=others: established(report(tb, h)) == o)
    return tb


def attach(tb: Testbed, host: str, container: str, *addresses: str) -> ipaddress.IPv4Interface:
    ns = tb.ns(container) if container in tb.containers else tb.add_container(container)
    out = tb.weft(host, "attach", *addresses, ns, timeout=90).stdout.split()
    assert len(out) == 1, out
    return ipaddress.IPv4Interface(out[0])


def ipam(tb: Testbed, host: str) -> dict[str, Any]:
    rep = report(tb, host)["ipam"]
    assert rep is not None
    return rep  # type: ignore[no-any-return]


def owned(rep: dict[str, Any]) -> dict[str, int]:
    return {p["nickname"]: p["addresses"] for p in rep["peers"]}


def test_consensus_unique_addresses_claims_restart_and_rmpeer(trio_mesh: Testbed) -> None:
    tb = trio_mesh
    assert ipam(tb, "h1")["status"].startswith("awaiting consensus")
    # containers attached with no address (and net:default) everywhere: unique, in the range
    got = {f"c{i}{h}": attach(tb, h, f"c{i}{h}", *(("net:default",) if i else ()))
           for h in HOSTS for i in range(2)}
    ips = [iface.ip for iface in got.values()]
    assert len(set(ips)) == len(ips), got
    assert all(iface.network == RANGE for iface in got.values()), got
    for src in ("c0h1", "c0h2", "c0h3"):
        for dst, iface in got.items():
            if dst != src:
                assert tb.ping(src, str(iface.ip), timeout=5), f"{src} cannot reach {dst} {iface}"
    for host in HOSTS:
        rep = ipam(tb, host)
        assert rep["status"] == "ready" and rep["allocated"] == 2
        assert sum(owned(rep).values()) == RANGE.num_addresses
        assert all(p["reachable"] for p in rep["peers"])
    text = tb.weft("h1", "status", "ipam").stdout
    assert "Range: 10.32.0.0/12" in text and text.count("IPs (") == 3

    # net:CIDR allocates inside that subnet; reachable across hosts within it
    sub = attach(tb, "h2", "n2", "net:10.40.1.0/24")
    sub3 = attach(tb, "h3", "n3", "net:10.40.1.0/24")
    assert sub.network == sub3.network == ipaddress.IPv4Network("10.40.1.0/24")
    assert sub.ip != sub3.ip
    assert tb.ping("n2", str(sub3.ip), timeout=5)

    # a claim of an address another peer has in use is refused, in one line
    taken = got["c0h1"]
    intruder = tb.add_container("x3")
    refused = tb.weft("h3", "attach", str(taken), intruder, check=False, timeout=90)
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1, refused.stderr
    assert str(taken.ip) in refused.stderr
    assert "ethwe" not in tb.run("x3", ["ip", "-br", "link"]).stdout
    # a free address owned by another peer can be claimed
    free_ip = ipaddress.IPv4Interface(f"{max(ips) + 1000}/12")
    assert attach(tb, "h3", "x3", str(free_ip)) == free_ip
    assert tb.ping("c0h1", str(free_ip.ip), timeout=5)

    # detach frees at once; so does a namespace that disappears
    before = ipam(tb, "h1")["allocated"]
    tb.weft("h1", "detach", tb.ns("c1h1"))
    assert ipam(tb, "h1")["allocated"] == before - 1
    tb.remove_container("c0h2")
    wait_for("h2 freeing the address of a vanished container",
             lambda: ipam(tb, "h2")["allocated"] == 2)

    # a restart keeps allocations: same address in ps and on re-attach, no overlap after
    tb.weft("h2", "stop")
    launch(tb, "h2", tb.address("h1"), extra=INIT)
    wait_for("h2 back in the mesh", lambda: established(report(tb, "h2")) == {"h1", "h3"})
    ps = {line.split()[0]: line.split()[2:] for line in tb.weft("h2", "ps").stdout.splitlines()}
    assert ps[tb.ns("c1h2")] == [str(got["c1h2"])]
    assert attach(tb, "h2", "c1h2") == got["c1h2"]
    fresh = attach(tb, "h2", "c2h2")
    in_use = {iface.ip for c, iface in got.items() if c not in ("c1h1", "c0h2")}
    assert fresh.ip not in in_use | {sub.ip, sub3.ip, free_ip.ip}
    assert ipam(tb, "h2")["status"] == "ready"

    # rmpeer after h3 is stopped for good: its space goes to h1, which can allocate there
    h3_share = owned(ipam(tb, "h1"))["h3"]
    assert h3_share > 0
    tb.weft("h3", "stop")
    wait_for("h3 unreachable from h1",
             lambda: not {p["nickname"]: p["reachable"] for p in ipam(tb, "h1")["peers"]}["h3"])
    assert "rmpeer h3" in tb.weft("h1", "status", "ipam").stdout
    h1_share = owned(ipam(tb, "h1"))["h1"]
    out = tb.weft("h1", "rmpeer", "h3").stdout.strip()
    assert out == f"{h3_share} IPs taken over from h3", out
    assert owned(ipam(tb, "h1"))["h1"] == h1_share + h3_share
    wait_for("h2 learning of the takeover", lambda: owned(ipam(tb, "h2")).get("h3", 0) == 0)
    again = tb.weft("h1", "rmpeer", "h3").stdout.strip()
    assert again == "0 IPs taken over from h3"
    late = [attach(tb, "h1", f"late{i}") for i in range(3)]
    assert len({x.ip for x in late}) == 3
    assert tb.ping("late0", str(fresh.ip), timeout=5)


@pytest.fixture
def pair(testbed_factory: Any) -> Testbed:
    return testbed_factory(hosts=("h1", "h2"))  # type: ignore[no-any-return]


def test_bounded_wait_reset_handoff_bad_state_and_ipam_off(pair: Testbed) -> None:
    tb = pair
    two = ("--ipalloc-init", "consensus=2", "--no-dns")
    launch(tb, "h1", extra=two)
    # alone, consensus=2 cannot be reached: the attach ends with the reason, not a hang
    waiting = tb.weft("h1", "attach", tb.add_container("a1"), check=False, timeout=90)
    assert waiting.returncode != 0 and waiting.stderr.count("\n") == 1, waiting.stderr
    assert "awaiting consensus: 1 of 2 peers known" in waiting.stderr
    launch(tb, "h2", tb.address("h1"), extra=two)
    wait_for("h1-h2 established", lambda: established(report(tb, "h1")) == {"h2"})
    a1 = attach(tb, "h1", "a1")
    a2 = attach(tb, "h2", "a2")
    assert a1.ip != a2.ip and tb.ping("a1", str(a2.ip), timeout=5)
    # without DNS too, a vanished namespace is noticed and its address freed
    attach(tb, "h2", "gone2")
    tb.remove_container("gone2")
    wait_for("h2 freeing a vanished container's address", lambda: ipam(tb, "h2")["allocated"] == 1)

    # reset hands h2's space to h1 before leaving; the data dir goes
    assert owned(ipam(tb, "h1"))["h2"] > 0
    tb.weft("h2", "reset")
    assert not tb.data_dir("h2").exists()
    wait_for("h1 owning the whole range",
             lambda: owned(ipam(tb, "h1")).get("h1") == RANGE.num_addresses)

    # a damaged state file: the router refuses to start, naming the file
    tb.weft("h1", "stop")
    state = tb.data_dir("h1") / "ipam.json"
    assert state.exists()
    state.write_text('{"format": 1, "peer": "nonsense"}')
    bad = tb.weft("h1", "launch", "--nickname", "h1", *two, check=False)
    assert bad.returncode != 0 and str(state) in bad.stderr, bad.stderr
    state.unlink()

    # IPAM off: report says null, attach without an address says why, IP/LEN still works
    launch(tb, "h1", extra=("--ipalloc-range", "", "--no-dns"))
    assert report(tb, "h1")["ipam"] is None
    off = tb.weft("h1", "attach", tb.add_container("o1"), check=False)
    assert off.returncode != 0 and "IPAM" in off.stderr and off.stderr.count("\n") == 1
    assert attach(tb, "h1", "o1", "10.9.0.1/24") == ipaddress.IPv4Interface("10.9.0.1/24")
    assert tb.weft("h1", "rmpeer", "h2", check=False).stderr.strip().endswith(
        "IPAM is disabled (the router was launched with --ipalloc-range '')")
