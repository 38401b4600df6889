"""The fast path on real hosts: with no password, containers' traffic between directly
connected routers rides the kernel's VXLAN (UDP 6784); a host whose UDP 6784 is blocked
falls back to sleeve with the reason shown, and comes back once it is unblocked."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import established, launch, report, udp_count, udp_listen, udp_send, wait_for

COUNT_TABLE = "fastdpcount"
BROADCAST_PORT = 5003


def overlays(tb: Testbed, host: str) -> dict[str, tuple[str | None, str]]:
    """peer nickname -> (overlay, reason) of host's established connections."""
    return {c["peer"]["nickname"]: (c["overlay"], c["overlay_reason"])
            for c in report(tb, host)["router"]["connections"]
            if c["state"] == "established" and c["peer"]}


def overlay(tb: Testbed, host: str, peer: str) -> str | None:
    return overlays(tb, host).get(peer, (None, ""))[0]


def count_udp(tb: Testbed, host: str) -> None:
    """Count, on ``host``'s underlay, VXLAN packets and big sleeve packets (not heartbeats)."""
    tb.run(host, ["nft", "-f", "-"], input=(
        f"table inet {COUNT_TABLE} {{\n"
        "  chain input { type filter hook input priority -10;\n"
        '    udp dport 6784 counter comment "vxlan"\n'
        '    udp dport 6783 ip length > 500 counter comment "sleeve"\n'
        "  }\n"
        "}\n"))


def counters(tb: Testbed, host: str) -> dict[str, int]:
    listing = json.loads(tb.run(host, ["nft", "-j", "list", "table", "inet", COUNT_TABLE]).stdout)
    out = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule:
            packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
            out[rule["comment"]] = packets
    return out


def attach(tb: Testbed, host: str, cidr: str, container: str) -> None:
    ns = tb.add_container(container)
    assert tb.weft(host, "attach", cidr, ns).stdout.split() == [cidr]


@pytest.fixture
def trio_hosts(testbed_factory: Any) -> Testbed:
    return testbed_factory(hosts=("h1", "h2", "h3"))  # type: ignore[no-any-return]


def test_fast_path_carries_traffic_and_falls_back_when_blocked(trio_hosts: Testbed) -> None:
    tb = trio_hosts
    tb.block_udp_port("h3", 6784)
    launch(tb, "h1", password=None)
    launch(tb, "h2", tb.address("h1"), password=None)
    launch(tb, "h3", tb.address("h1"), tb.address("h2"), password=None)
    for host, others in (("h1", {"h2", "h3"}), ("h2", {"h1", "h3"}), ("h3", {"h1", "h2"})):
        wait_for(f"{host} connected to {others}", lambda h=host, o=others: established(report(tb, h)) == o)
    attach(tb, "h1", "10.2.1.1/24", "c1")
    attach(tb, "h2", "10.2.1.2/24", "c2")
    attach(tb, "h3", "10.2.1.3/24", "c3")

    wait_for("h1-h2 on the fast path", lambda: overlay(tb, "h1", "h2") == "fastdp"
             and overlay(tb, "h2", "h1") == "fastdp", timeout=20)
    def refused(views: list[tuple[str | None, str]]) -> bool:
        return all(o == "sleeve" and "6784 blocked" in r for o, r in views)

    wait_for("h3's connections refused the fast path, with the reason",
             lambda: refused([*overlays(tb, "h3").values(), overlays(tb, "h1")["h3"],
                              overlays(tb, "h2")["h3"]]), timeout=20)
    conn = next(c for c in report(tb, "h1")["router"]["connections"]
                if c["peer"] and c["peer"]["nickname"] == "h2")
    assert conn["mtu"] == 1450 and not conn["encrypted"]

    # everyone reaches everyone: h3 over sleeve, h1-h2 over the VXLAN
    for src, dst in (("c1", "10.2.1.2"), ("c2", "10.2.1.1"), ("c1", "10.2.1.3"),
                     ("c3", "10.2.1.2"), ("c3", "10.2.1.1")):
        assert tb.ping(src, dst, timeout=5), f"{src} cannot reach {dst}"

    # the traffic between c1 and c2 is on UDP 6784 and not on the sleeve port
    wait_for("the MACs are programmed", lambda: report(tb, "h2")["router"]["dataplane"]["fastdp"]
             ["forwarding_entries"] >= 2, timeout=10)
    count_udp(tb, "h2")
    tb.run("c1", ["ping", "-c", "20", "-i", "0.05", "-s", "1000", "-W", "2", "10.2.1.2"])
    seen = counters(tb, "h2")
    assert seen["vxlan"] >= 20 and seen["sleeve"] == 0, seen
    fast = report(tb, "h1")["router"]["dataplane"]["fastdp"]
    assert fast["counters"]["packets_out"] >= 20 and fast["flood_to"] == [tb.address("h2")]
    # a full-size packet crosses unfragmented (container MTU = underlay - 50)
    tb.run("c1", ["ping", "-c", "2", "-W", "2", "-M", "do", "-s", str(1450 - 28), "10.2.1.2"])

    # unblocking brings h3 onto the fast path by itself
    tb.unblock("h3", 6784)
    wait_for("h3 on the fast path", lambda: set(overlays(tb, "h3").values()) <= {
        ("fastdp", "fast path: kernel VXLAN, probes answered")} and len(overlays(tb, "h3")) == 2,
        timeout=30)
    assert tb.ping("c3", "10.2.1.1", timeout=5)

    # blocking again: traffic moves back to sleeve within seconds, and keeps flowing
    tb.block_udp_port("h2", 6784)
    wait_for("h1-h2 back on sleeve", lambda: overlay(tb, "h1", "h2") == "sleeve", timeout=15)
    flipped = time.monotonic()
    wait_for("c1 reaching c2 over sleeve", lambda: tb.ping("c1", "10.2.1.2", timeout=1), timeout=20)
    print(f"fastdp figure: c1 reaching c2 again {time.monotonic() - flipped:.1f} s after h1 fell back")
    assert "6784" in overlays(tb, "h1")["h2"][1]


def test_no_fastdp_and_encryption_say_why(testbed_factory: Any) -> None:
    tb = testbed_factory(hosts=("h1", "h2"))
    launch(tb, "h1", password=None, extra=("--no-fastdp",))
    launch(tb, "h2", tb.address("h1"), password=None)
    wait_for("connected", lambda: overlay(tb, "h2", "h1") == "sleeve"
             and "--no-fastdp" in overlays(tb, "h2")["h1"][1], timeout=20)
    assert "--no-fastdp" in overlays(tb, "h1")["h2"][1]
    assert report(tb, "h1")["router"]["dataplane"]["fastdp"]["device"] is None
    assert "weft-vxlan" not in tb.run("h1", ["ip", "-br", "link"]).stdout

    # with a password (and no trusted subnets) both may offer the fast path, yet it is
    # not used: it would carry the containers' traffic in the clear
    for host in ("h1", "h2"):
        tb.weft(host, "stop")
    launch(tb, "h1")
    launch(tb, "h2", tb.address("h1"))
    why = "encrypted sleeve; the fast path carries only unencrypted traffic"
    wait_for("connected, encrypted", lambda: overlays(tb, "h1").get("h2") == ("sleeve", why)
             and overlays(tb, "h2").get("h1") == ("sleeve", why), timeout=20)


def test_relayed_peers_keep_sleeve_and_nothing_is_duplicated(trio_hosts: Testbed) -> None:
    """A chain h1 - h2 - h3: h1 and h3 only meet through h2's relay (sleeve), while each
    direct link runs fast; broadcasts (ARP) reach everyone once, pings get no duplicates."""
    tb = trio_hosts
    launch(tb, "h1", password=None, extra=("--no-discovery",))
    launch(tb, "h2", tb.address("h1"), password=None, extra=("--no-discovery",))
    launch(tb, "h3", tb.address("h2"), password=None, extra=("--no-discovery",))
    wait_for("the chain on the fast path", lambda: overlay(tb, "h1", "h2") == "fastdp"
             and overlay(tb, "h3", "h2") == "fastdp" and set(overlays(tb, "h2")) == {"h1", "h3"}
             and all(o == "fastdp" for o, _ in overlays(tb, "h2").values()), timeout=30)
    assert set(overlays(tb, "h1")) == {"h2"}
    for i, host in enumerate(("h1", "h2", "h3"), start=1):
        attach(tb, host, f"10.2.1.{i}/24", f"c{i}")
    for src, dst in (("c1", "10.2.1.3"), ("c3", "10.2.1.1"), ("c1", "10.2.1.2"), ("c2", "10.2.1.3")):
        out = tb.run(src, ["ping", "-c", "5", "-i", "0.1", "-W", "2", dst], check=False).stdout
        assert " 0% packet loss" in out and "DUP" not in out, f"{src} -> {dst}:\n{out}"
    # a broadcast from c1 reaches c2 (over h1's VXLAN) and c3 (relayed by h2 over sleeve)
    # exactly once each
    listeners = {c: udp_listen(tb, c, "0.0.0.0", BROADCAST_PORT, quiet=2) for c in ("c2", "c3")}
    udp_send(tb, "c1", "10.2.1.255", BROADCAST_PORT)
    got = {c: udp_count(proc) for c, proc in listeners.items()}
    assert got == {"c2": 1, "c3": 1}, got
