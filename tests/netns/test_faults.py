"""Faults on real (simulated) hosts: what a router survives, and how long recovery takes.

Routers run in namespace hosts of one LAN, driven by the CLI as a user would, encrypted
(so data crosses the sleeve, which the router process itself carries: when a router is
down, so is its data path), IPAM seeded by consensus, weftDNS on::

    kill -9 + relaunch      h1 ── h2 ── h3 (full mesh); h3's router is SIGKILLed
    partition and healing   h1 ╳ h3 (nftables, both ways): h1 ↔ h3 traffic goes via h2;
                            then h1 alone ╳ {h2, h3}: both sides allocate and name; heal
    middle of a chain       h1 ── h2 ── h3 (--no-discovery); h2 stops and comes back
    a new incarnation       h1 ── h2; h2 is cut off, SIGKILLed and relaunched (same name,
                            new UID) while h1 still holds the old connection
    clock skew              h2's wall clock 2 h ahead, h3's 2 h behind (faketime); h1
                            comes back 2 h behind the clock it ran with before

Recovery times are measured and printed (``fault figure: ...``, run with ``-s`` to see
them), never asserted: every wait is a bounded liveness check.
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import (
    attach,
    established,
    ipam,
    kill9,
    launch,
    log_of,
    logs_on_failure,
    meshed,
    no_tracebacks,
    report,
    wait_for,
)

HOSTS = ("h1", "h2", "h3")
RANGE = ipaddress.IPv4Network("10.32.0.0/12")
SKEW = 2 * 3600   # seconds of wall-clock skew for the faketime test


# --- helpers ----------------------------------------------------------------------------


def full_mesh(tb: Testbed, hosts: tuple[str, ...] = HOSTS,
              clocks: dict[str, str] | None = None) -> None:
    init = ("--ipalloc-init", f"consensus={len(hosts)}")
    for i, host in enumerate(hosts):
        launch(tb, host, *(tb.address(h) for h in hosts[:i]), extra=init,
               clock=(clocks or {}).get(host))
    wait_for("a full mesh", lambda: meshed(tb, hosts), timeout=60)


def ends_reaching(tb: Testbed, hosts: tuple[str, ...] = HOSTS
                  ) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]:
    """A full mesh of ``hosts``, a named container on the first and the last (``c1`` on
    h1, ``cN`` on hN), the first reaching the last; their addresses."""
    full_mesh(tb, hosts)
    a, b = hosts[0], hosts[-1]
    ca, cb = f"c{a[1:]}", f"c{b[1:]}"
    first, last = attach(tb, a, ca, "--name", ca), attach(tb, b, cb, "--name", cb)
    wait_for(f"{ca} reaching {cb}", pings(tb, ca, last))
    return first, last


def measure(what: str, check: Callable[[], bool], *, since: float | None = None,
            timeout: float = 60.0) -> float:
    """Wait (bounded) for ``check``; print and return the seconds since ``since`` (or now)."""
    start = time.monotonic() if since is None else since
    wait_for(what, check, timeout=timeout)
    took = time.monotonic() - start
    print(f"fault figure: {what}: {took:.1f} s")
    return took


def lookup(tb: Testbed, host: str, name: str) -> list[str]:
    proc = tb.weft(host, "dns-lookup", name, check=False)
    return sorted(proc.stdout.split()) if proc.returncode == 0 else []


def dns_names(tb: Testbed, host: str) -> dict[str, list[str]]:
    """Every live name ``host``'s router answers for, with its addresses (one report)."""
    got: dict[str, list[str]] = {}
    for e in report(tb, host)["dns"]["entries"]:
        got.setdefault(e["hostname"].rstrip("."), []).append(e["address"])
    return {name: sorted(ips) for name, ips in got.items()}


def resolves(tb: Testbed, hosts: tuple[str, ...], names: dict[str, str]) -> bool:
    """Each of ``names`` has exactly its address on every host (``dns-lookup`` of one
    name per host confirms what the reports say)."""
    for h in hosts:
        held = dns_names(tb, h)
        if any(held.get(n) != [ip] for n, ip in names.items()):
            return False
    first = sorted(names)[0]
    return all(lookup(tb, h, first) == [names[first]] for h in hosts)


def ipam_settled(tb: Testbed, hosts: tuple[str, ...]) -> bool:
    """Every router: ready, the whole range owned, every peer reachable, no duplicate."""
    for h in hosts:
        rep = ipam(tb, h)
        if rep["status"] != "ready" or not all(p["reachable"] for p in rep["peers"]):
            return False
        if sum(p["addresses"] for p in rep["peers"]) != RANGE.num_addresses:
            return False
        if any(p.startswith("duplicate") for p in rep.get("problems", [])):
            return False
    return True


def peer_nicknames(tb: Testbed, host: str) -> list[str]:
    return sorted(p["nickname"] for p in report(tb, host)["router"]["peers"])


def pings(tb: Testbed, src: str, ip: ipaddress.IPv4Interface) -> Callable[[], bool]:
    return lambda: tb.ping(src, str(ip.ip), timeout=1)


# --- (1) kill -9 of a router and relaunch -------------------------------------------------


def test_kill9_relaunch_keeps_addresses_names_and_connectivity(testbed_factory: Any) -> None:
    tb: Testbed = testbed_factory(hosts=HOSTS)
    with logs_on_failure(tb, HOSTS):
        c1, c3 = ends_reaching(tb)
        web = attach(tb, "h3", "web", "--name", "web")
        names = {"c1.weft.local": str(c1.ip), "c3.weft.local": str(c3.ip),
                 "web.weft.local": str(web.ip)}
        wait_for("names everywhere", lambda: resolves(tb, HOSTS, names))
        ps_before = tb.weft("h3", "ps").stdout

        killed = time.monotonic()
        kill9(tb, "h3")
        assert not tb.ping("c1", str(c3.ip), timeout=1), "the sleeve is down with its router"
        relaunched = time.monotonic()
        launch(tb, "h3", extra=("--ipalloc-init", "consensus=3"))   # targets persisted
        print(f"fault figure: kill -9 to `weft launch` returning: {time.monotonic() - killed:.1f} s")
        # containers keep their addresses: from the persisted state, before any peer spoke
        assert tb.weft("h3", "ps").stdout == ps_before
        assert sorted(lookup(tb, "h3", "c3.weft.local")) == [str(c3.ip)]
        measure("kill -9 + relaunch: c1 pings c3 again", pings(tb, "c1", c3), since=killed)
        measure("relaunch to h3 connected to h1 and h2",
                lambda: established(report(tb, "h3")) == {"h1", "h2"}, since=relaunched)
        measure("relaunch to names resolving on every host", lambda: resolves(tb, HOSTS, names),
                since=relaunched)
        # the relaunched router serves DNS inside its containers again
        measure("relaunch to c1.weft.local resolving inside c3", lambda: tb.run(
            "c3", ["dig", "+short", "+tries=1", "+time=2", "c1.weft.local"],
            check=False).stdout.split() == [str(c1.ip)], since=relaunched)
        # the ring survived: new allocations on both sides collide with nothing
        fresh = [attach(tb, "h3", "n3"), attach(tb, "h1", "n1"), attach(tb, "h2", "n2")]
        all_ips = [x.ip for x in (c1, c3, web, *fresh)]
        assert len(set(all_ips)) == len(all_ips), all_ips
        assert ipam(tb, "h3")["allocated"] == 3
        wait_for("IPAM settled", lambda: ipam_settled(tb, HOSTS))
        assert tb.ping("n1", str(fresh[0].ip), timeout=5)
        assert peer_nicknames(tb, "h1") == ["h1", "h2", "h3"]
        no_tracebacks(tb, HOSTS)


# --- (2) a partition between hosts and its healing ----------------------------------------


def test_partition_routes_around_then_heals_topology_ipam_and_dns(testbed_factory: Any) -> None:
    tb: Testbed = testbed_factory(hosts=HOSTS)
    with logs_on_failure(tb, HOSTS):
        c1, c3 = ends_reaching(tb)

        # h1 ╳ h3: their direct link dies; traffic between them goes through h2
        cut = time.monotonic()
        tb.partition("h1", "h3")
        measure("h1 ╳ h3: h1 down to h2 only", lambda: established(report(tb, "h1")) == {"h2"}
                and established(report(tb, "h3")) == {"h2"}, since=cut)
        measure("h1 ╳ h3: c1 reaching c3 via h2", pings(tb, "c1", c3), since=cut)
        assert peer_nicknames(tb, "h1") == ["h1", "h2", "h3"]   # h3 still known, via h2
        dialling = [c for c in report(tb, "h1")["router"]["connections"]
                    if c["address"].startswith(tb.address("h3") + ":")]
        assert dialling and all(c["state"] != "established" for c in dialling), dialling

        # h1 alone ╳ {h2, h3}: both sides keep allocating and naming
        isolated = time.monotonic()
        tb.isolate("h1")
        measure("h1 isolated: both sides see the split", lambda: established(report(tb, "h1"))
                == set() and established(report(tb, "h2")) == {"h3"}, since=isolated)
        side1 = {f"p1{i}": attach(tb, "h1", f"p1{i}", "--name", f"p1{i}") for i in range(3)}
        side3 = {f"p3{i}": attach(tb, "h3", f"p3{i}", "--name", f"p3{i}") for i in range(3)}
        side3["p2"] = attach(tb, "h2", "p2", "--name", "p2")
        tb.weft("h3", "detach", tb.ns("c3"))      # c3's name goes during the partition
        tb.weft("h1", "dns-add", "192.0.2.11", "--name", "ext1")
        tb.weft("h2", "dns-add", "192.0.2.12", "--name", "ext2")
        assert lookup(tb, "h1", "p30.weft.local") == [] and lookup(tb, "h3", "p10.weft.local") == []
        assert lookup(tb, "h1", "c3.weft.local") == [str(c3.ip)]   # h1 has not heard yet

        healed = time.monotonic()
        tb.heal("h1")
        measure("heal to a full mesh again", lambda: meshed(tb, HOSTS), since=healed,
                timeout=90)
        names = {f"{c}.weft.local": str(ip.ip) for c, ip in {**side1, **side3}.items()}
        names |= {"c1.weft.local": str(c1.ip), "ext1.weft.local": "192.0.2.11",
                  "ext2.weft.local": "192.0.2.12"}
        measure("heal to every name resolving on every host",
                lambda: resolves(tb, HOSTS, names), since=healed)
        measure("heal to c3's removal reaching h1",
                lambda: lookup(tb, "h1", "c3.weft.local") == [], since=healed)
        measure("heal to IPAM settled everywhere", lambda: ipam_settled(tb, HOSTS), since=healed)
        measure("heal to p10 (h1) reaching p30 (h3)", pings(tb, "p10", side3["p30"]),
                since=healed)
        used = [x.ip for x in (c1, *side1.values(), *side3.values())]
        assert len(set(used)) == len(used), f"an address was handed out twice: {sorted(used)}"
        for h in HOSTS:
            assert peer_nicknames(tb, h) == ["h1", "h2", "h3"]
            assert not ipam(tb, h).get("merges"), "one ring all along: nothing to merge"
        no_tracebacks(tb, HOSTS)


# --- (3) restart of the middle host of a chain --------------------------------------------


def test_middle_of_a_chain_restarts_and_the_ends_reconnect_through_it(
        testbed_factory: Any) -> None:
    tb: Testbed = testbed_factory(hosts=HOSTS)
    extra = ("--no-discovery", "--ipalloc-init", "consensus=3")
    with logs_on_failure(tb, HOSTS):
        launch(tb, "h1", extra=extra)
        launch(tb, "h2", tb.address("h1"), extra=extra)
        launch(tb, "h3", tb.address("h2"), extra=extra)
        chain = {"h1": {"h2"}, "h2": {"h1", "h3"}, "h3": {"h2"}}
        wait_for("the chain h1-h2-h3", lambda: all(
            established(report(tb, h)) == chain[h] for h in HOSTS), timeout=60)
        c1 = attach(tb, "h1", "c1", "--name", "c1")
        c3 = attach(tb, "h3", "c3", "--name", "c3")
        wait_for("c1 reaching c3 through h2", pings(tb, "c1", c3))

        stopped = time.monotonic()
        tb.weft("h2", "stop")
        wait_for("the ends losing each other", lambda: peer_nicknames(tb, "h1") == ["h1"]
                 and peer_nicknames(tb, "h3") == ["h3"])
        assert not tb.ping("c1", str(c3.ip), timeout=1)
        relaunched = time.monotonic()
        launch(tb, "h2", extra=extra)                    # its target h1 is persisted
        measure("chain: h2 relaunch to both ends connected to it", lambda: all(
            established(report(tb, h)) == chain[h] for h in HOSTS), since=relaunched)
        measure("chain: h2 relaunch to h1 knowing h3 again",
                lambda: peer_nicknames(tb, "h1") == ["h1", "h2", "h3"], since=relaunched)
        measure("chain: h2 relaunch to c1 reaching c3 through it", pings(tb, "c1", c3),
                since=relaunched)
        print(f"fault figure: chain: h2 stop to c1 reaching c3 again: "
              f"{time.monotonic() - stopped:.1f} s")
        measure("chain: names resolving at both ends", lambda: resolves(
            tb, HOSTS, {"c1.weft.local": str(c1.ip), "c3.weft.local": str(c3.ip)}),
            since=relaunched)
        time.sleep(2)   # without discovery, the ends never dial each other
        assert established(report(tb, "h1")) == {"h2"} and established(report(tb, "h3")) == {"h2"}
        no_tracebacks(tb, HOSTS)


# --- (4) a peer coming back with a new UID -------------------------------------------------

SILENCE_TABLE = "weft_faults_silence"


def control_socket(tb: Testbed, host: str, peer: str) -> tuple[str, str]:
    """(local ip:port, peer ip:port) of ``host``'s established control connection to
    ``peer`` (either end may have dialled)."""
    out = tb.run(host, ["ss", "-Htn", "state", "established", "dst", tb.address(peer)]).stdout
    for line in out.splitlines():
        local, remote = line.split()[2:4]
        if local.endswith(":6783") or remote.endswith(":6783"):
            return local, remote
    raise AssertionError(f"no control connection from {host} to {peer}: {out!r}")


def test_a_peer_back_with_a_new_uid_replaces_its_old_connection(testbed_factory: Any) -> None:
    """h2 is cut off from h1, SIGKILLed and relaunched (same data dir: same name, a new
    UID); everything its kernel still sends on the dead connection (FIN retransmissions,
    resets) is dropped, as after a crash of the whole host, so h1 still holds the
    old connection, established as far as it knows, when the new incarnation dials in."""
    hosts = ("h1", "h2")
    tb: Testbed = testbed_factory(hosts=hosts)
    with logs_on_failure(tb, hosts):
        c1, c2 = ends_reaching(tb, hosts)
        name2 = report(tb, "h2")["router"]["name"]
        old_conns = [c for c in report(tb, "h1")["router"]["connections"] if c["peer"]]
        assert len(old_conns) == 1

        local, remote = control_socket(tb, "h2", "h1")
        tb.partition("h1", "h2")
        kill9(tb, "h2")
        lip, lport = local.rsplit(":", 1)
        rip, rport = remote.rsplit(":", 1)
        tb.run("h2", ["nft", "-f", "-"], input=(
            f"add table inet {SILENCE_TABLE}\n"
            f"add chain inet {SILENCE_TABLE} out {{ type filter hook output priority -10 ; }}\n"
            f"add rule inet {SILENCE_TABLE} out ip saddr {lip} ip daddr {rip} "
            f"tcp sport {lport} tcp dport {rport} drop\n"))
        assert launch(tb, "h2", extra=("--ipalloc-init", "consensus=2")) == name2
        assert established(report(tb, "h1")) == {"h2"}, "h1 should still hold the old one"
        healed = time.monotonic()
        tb.heal("h1", "h2")

        def one_new_connection() -> bool:
            conns = [c for c in report(tb, "h1")["router"]["connections"] if c["peer"]]
            return (len(conns) == 1 and conns[0]["state"] == "established"
                    and conns[0]["address"] != old_conns[0]["address"])
        measure("new UID: heal to h1 holding only the new connection", one_new_connection,
                since=healed)
        tb.run("h2", ["nft", "delete", "table", "inet", SILENCE_TABLE])
        assert "peer restarted" in log_of(tb, "h1"), log_of(tb, "h1")[-3000:]
        measure("new UID: heal to c1 reaching c2", pings(tb, "c1", c2), since=healed)
        for h in hosts:
            rep = report(tb, h)["router"]
            assert sorted(p["nickname"] for p in rep["peers"]) == ["h1", "h2"]
            for p in rep["peers"]:
                remotes = [c["name"] for c in p["connections"]]
                assert len(remotes) == len(set(remotes)) == 1, (h, p)
        assert tb.weft("h1", "status", "peers").stdout.count(name2) == 2   # h2's row + h1's link
        assert lookup(tb, "h1", "c2.weft.local") == [str(c2.ip)]
        assert attach(tb, "h2", "n2").ip not in {c1.ip, c2.ip}
        no_tracebacks(tb, hosts)


# --- (5) clock skew between hosts ----------------------------------------------------------


def log_clock_offset(tb: Testbed, host: str) -> float:
    """How far ahead of ours the wall clock of ``host``'s router runs, from the timestamp
    of the last line of its log (``asctime``: seconds resolution, local time)."""
    stamp = " ".join(log_of(tb, host).strip().splitlines()[-1].split()[:2]).split(",")[0]
    written = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp()
    return written - (tb.data_dir(host) / "weft.log").stat().st_mtime


@pytest.mark.skipif(shutil.which("faketime") is None,
                    reason="needs faketime (apt-get install faketime)")
def test_clock_skew_between_hosts(testbed_factory: Any) -> None:
    """Routers whose wall clocks disagree by hours still mesh, allocate, name and remove
    names; one that comes back with its clock set back keeps its place in the topology."""
    tb: Testbed = testbed_factory(hosts=HOSTS)
    clocks = {"h2": f"+{SKEW}s", "h3": f"-{SKEW}s"}
    with logs_on_failure(tb, HOSTS):
        full_mesh(tb, clocks=clocks)
        for host, sign in (("h1", 0), ("h2", 1), ("h3", -1)):
            offset = log_clock_offset(tb, host)
            assert abs(offset - sign * SKEW) < 5, f"{host}'s router runs {offset:+.0f} s off"
        got = {h: attach(tb, h, f"c{h[1]}", "--name", f"c{h[1]}") for h in HOSTS}
        gone = {h: attach(tb, h, f"x{h[1]}", "--name", f"x{h[1]}") for h in HOSTS}
        assert len({x.ip for x in (*got.values(), *gone.values())}) == 6
        names = {f"c{h[1]}.weft.local": str(ip.ip) for h, ip in got.items()}
        names |= {f"x{h[1]}.weft.local": str(ip.ip) for h, ip in gone.items()}
        wait_for("names everywhere", lambda: resolves(tb, HOSTS, names))
        assert tb.ping("c1", str(got["h3"].ip), timeout=5) and tb.ping("c2", str(got["h3"].ip),
                                                                     timeout=5)
        # removals made by a clock ahead and a clock behind reach everyone, and stay removed
        # through the tombstone exchange and expiry (DNS ticks every second)
        removed = time.monotonic()
        for h in HOSTS:
            tb.weft(h, "detach", tb.ns(f"x{h[1]}"))
        tb.weft("h3", "dns-add", "192.0.2.33", "--name", "late3")
        tb.weft("h3", "dns-remove", "192.0.2.33", "--name", "late3")
        kept = {n: ip for n, ip in names.items() if n.startswith("c")}

        def settled() -> bool:
            return all(set(dns_names(tb, h)) == set(kept) for h in HOSTS) and resolves(
                tb, HOSTS, kept)
        measure("skew: removals on skewed clocks reaching every host", settled, since=removed)
        time.sleep(3)
        assert settled(), "a removed name came back"

        # h1 comes back with its clock 2 h behind the one it ran with (and a new nickname):
        # its fresh topology record starts far below its old one, and must still win
        tb.weft("h1", "stop")
        back = time.monotonic()
        launch(tb, "h1", extra=("--ipalloc-init", "consensus=3"), nickname="h1b",
               clock=f"-{SKEW}s")
        measure("skew: h1 back 2 h earlier, its new record everywhere", lambda: all(
            peer_nicknames(tb, h) == ["h1b", "h2", "h3"] for h in HOSTS), since=back)
        measure("skew: h1 back, full mesh", lambda: all(
            established(report(tb, h)) == {"h1b", "h2", "h3"} - {report(tb, h)["router"][
                "nickname"]} for h in HOSTS), since=back)
        assert resolves(tb, HOSTS, kept)
        fresh = [attach(tb, h, f"n{h[1]}") for h in HOSTS]
        used = [x.ip for x in (*got.values(), *fresh)]
        assert len(set(used)) == len(used), used
        wait_for("IPAM settled", lambda: ipam_settled(tb, HOSTS))
        assert tb.ping("n1", str(fresh[2].ip), timeout=5)
        no_tracebacks(tb, HOSTS)
