"""Hosts behind NAT gateways, as in a multi-cloud mesh (issue 16): hole punching.

h1 is public on the underlay; h2 and h3 each sit behind a NAT gateway of their own
(router/tools/natgw.py: masquerade, and the gateway drops what arrives unasked, as cloud
gateways do) and are launched with h1 as their only peer. The mesh forms through h1; h2 and
h3 then meet through it (candidates and a "let's punch" by mesh unicast), punch a UDP path
through both NATs and run their control connection over it, so containers on h2 and h3 talk
directly, and go on doing so when h1 (only the introducer) goes away. With a symmetric NAT on
both sides there is no direct path: they stay relayed, and status says why.

Figures are printed (``pytest -s``): time to direct, bytes over the relay, probes sent.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

from weftnet.router.tools.namespaces import run_ip
from weftnet.router.tools.testbed import Nat, Testbed

from .weftctl import bulk_tcp, established, launch, logs_on_failure, report, wait_for

HOSTS = ("h1", "h2", "h3")
TRANSFER = 5_000_000
BIG = 200_000_000  # several seconds of sending: the rebinding falls in the middle


def peers(tb: Testbed, host: str) -> set[str]:
    return {p["nickname"] for p in report(tb, host)["router"]["peers"]}


def attach(tb: Testbed, host: str, cidr: str, container: str) -> None:
    out = tb.weft(host, "attach", cidr, tb.add_container(container)).stdout.split()
    assert out == [cidr]


def how(tb: Testbed, host: str, peer: str) -> str | None:
    """How ``host``'s established connection to ``peer`` was found, if there is one."""
    for c in report(tb, host)["router"]["connections"]:
        if c["state"] == "established" and c["peer"] and c["peer"]["nickname"] == peer:
            return str(c.get("how"))
    return None


def punch_report(tb: Testbed, host: str) -> dict[str, Any]:
    return report(tb, host)["router"]["punch"]  # type: ignore[no-any-return]


def mesh_through_h1(tb: Testbed) -> float:
    """Launch h1, then h2 and h3 with h1 as their peer; the monotonic time h3 started."""
    launch(tb, "h1")
    launch(tb, "h2", tb.address("h1"))
    started = time.monotonic()
    launch(tb, "h3", tb.address("h1"))
    wait_for("h2 and h3 to know all three peers through h1",
             lambda: peers(tb, "h2") == peers(tb, "h3") == set(HOSTS))
    return started


@pytest.fixture
def natted(testbed_factory: Any) -> Testbed:
    return testbed_factory(hosts=HOSTS, nat={"h2": Nat(), "h3": Nat()})  # type: ignore[no-any-return]


def test_natted_pair_punches_a_direct_path_that_outlives_the_introducer(natted: Testbed) -> None:
    tb = natted
    # mappings that expire after 8 s idle (30 s / 120 s by default): the keepalives must beat them
    for host in ("h2", "h3"):
        tb.nat_timeouts(host, udp=8, udp_stream=8)
    with logs_on_failure(tb, HOSTS):
        started = mesh_through_h1(tb)
        wait_for("h2 and h3 to punch a direct path",
                 lambda: "h3" in established(report(tb, "h2"))
                 and "h2" in established(report(tb, "h3")), timeout=40)
        took = time.monotonic() - started
        h2_how, h3_how = how(tb, "h2", "h3"), how(tb, "h3", "h2")
        print(f"\nh2 <-> h3 direct {took:.1f} s after h3 was launched "
              f"(h2: {h2_how}; h3: {h3_how})")
        assert h2_how is not None and h2_how.startswith("punched"), h2_how
        assert h3_how is not None and h3_how.startswith("punched"), h3_how
        lines = tb.weft("h2", "status", "connections").stdout
        assert "punched" in lines, lines
        p2 = punch_report(tb, "h2")
        print(f"h2's punch report: attempts {p2['attempts']}, outcomes {p2['outcomes']}, "
              f"probes sent {p2['probes_sent']}, mapping {p2.get('mapping')}")
        assert p2["outcomes"].get("direct", 0) + punch_report(tb, "h3")["outcomes"].get(
            "direct", 0) >= 1

        attach(tb, "h2", "10.2.1.2/24", "c2")
        attach(tb, "h3", "10.2.1.3/24", "c3")
        wait_for("c2 to reach c3", lambda: tb.ping("c2", "10.2.1.3"), timeout=20)

        # the bulk of a transfer does not cross h1
        tb.count_underlay("h1")
        t0 = time.monotonic()
        bulk_tcp(tb, "c3", "10.2.1.3", "c2", TRANSFER, timeout=120)
        relayed = tb.underlay_bytes("h1")
        print(f"a {TRANSFER} B transfer c2 -> c3 in {time.monotonic() - t0:.1f} s put {relayed} B "
              f"on h1's underlay ({relayed / TRANSFER:.3f}x; relayed it was 2.02x)")
        assert relayed < TRANSFER // 10, relayed

        # h1 was only the introducer: stopped, the NATed pair still talk over the punched path
        tb.weft("h1", "stop")
        wait_for("h2 to lose h1", lambda: "h1" not in established(report(tb, "h2")), timeout=30)
        time.sleep(20)  # beyond every liveness timeout (control 15 s, link 10 s) and the NATs' 8 s
        assert "h3" in established(report(tb, "h2"))
        assert "h2" in established(report(tb, "h3"))
        assert tb.ping("c2", "10.2.1.3") and tb.ping("c3", "10.2.1.2")
        bulk_tcp(tb, "c3", "10.2.1.3", "c2", 1_000_000, seed=8, timeout=60)
        print("h1 stopped: h2 and h3 still connected and talking after 20 s")


def test_nat_rebinding_mid_transfer_recovers(natted: Testbed) -> None:
    tb = natted
    with logs_on_failure(tb, HOSTS):
        mesh_through_h1(tb)
        wait_for("h2 and h3 to punch a direct path",
                 lambda: "h3" in established(report(tb, "h2")), timeout=40)
        attach(tb, "h2", "10.2.1.2/24", "c2")
        attach(tb, "h3", "10.2.1.3/24", "c3")
        wait_for("c2 to reach c3", lambda: tb.ping("c2", "10.2.1.3"), timeout=20)

        failed: list[BaseException] = []
        rebound: list[float] = []

        def rebind() -> None:
            time.sleep(1.0)  # the source made its bytes and is sending them
            try:
                tb.nat_rebind("h2", (40000, 40999))
                rebound.append(time.monotonic())
            except BaseException as exc:
                failed.append(exc)

        mover = threading.Thread(target=rebind)
        t0 = time.monotonic()
        mover.start()
        bulk_tcp(tb, "c3", "10.2.1.3", "c2", BIG, timeout=150)
        took = time.monotonic() - t0
        mover.join()
        assert not failed, failed
        assert rebound, "the transfer ended before the rebinding: it tested nothing"
        assert rebound[0] - t0 < took
        print(f"\na {BIG} B transfer with h2's NAT rebinding "
              f"{rebound[0] - t0:.1f} s into it: done after {took:.1f} s")
        wait_for("h2 and h3 to be direct again",
                 lambda: (how(tb, "h2", "h3") or "").startswith("punched")
                 and any(c.get("sleeve", {}).get("udp_address", "").split(":")[-1].startswith("40")
                         for c in report(tb, "h3")["router"]["connections"]
                         if c["peer"] and c["peer"]["nickname"] == "h2"
                         and c["state"] == "established"),
                 timeout=90)
        print(f"direct again from h2's new public port {time.monotonic() - t0:.1f} s after "
              f"the transfer started")
        assert tb.ping("c2", "10.2.1.3")


@pytest.mark.parametrize("kinds", [("symmetric", "easy"), ("symmetric", "symmetric")])
def test_symmetric_nats(testbed_factory: Any, kinds: tuple[str, str]) -> None:
    """With two public peers (h1, h4) each NATed host learns its NAT's kind (a symmetric NAT
    shows the two different ports). One symmetric NAT and one easy: direct, by the birthday
    spray; both symmetric: relayed, with the reason and the next try shown."""
    hosts = (*HOSTS, "h4")
    nat = {h: Nat(symmetric=k == "symmetric") for h, k in zip(("h2", "h3"), kinds, strict=True)}
    tb: Testbed = testbed_factory(hosts=hosts, nat=nat)
    with logs_on_failure(tb, hosts):
        launch(tb, "h1")
        launch(tb, "h4", tb.address("h1"))
        launch(tb, "h2", tb.address("h1"))
        started = time.monotonic()
        launch(tb, "h3", tb.address("h1"))
        wait_for("h2 and h3 to know all four peers",
                 lambda: peers(tb, "h2") == peers(tb, "h3") == set(hosts))
        attach(tb, "h2", "10.2.1.2/24", "c2")
        attach(tb, "h3", "10.2.1.3/24", "c3")
        wait_for("c2 to reach c3", lambda: tb.ping("c2", "10.2.1.3"), timeout=30)
        wait_for("h2 to learn its NAT is symmetric",
                 lambda: punch_report(tb, "h2").get("mapping") == "hard", timeout=30)
        if kinds == ("symmetric", "symmetric"):
            def said_why() -> bool:
                relayed = punch_report(tb, "h2")["relayed"]
                return any(e.get("reason") and "symmetric" in e["reason"]
                           for e in relayed.values())

            wait_for("h2 to say why h3 is relayed", said_why, timeout=40)
            assert "h3" not in established(report(tb, "h2"))
            lines = tb.weft("h2", "status", "connections").stdout
            assert any("relayed" in ln and "via" in ln and "next try in" in ln
                       for ln in lines.splitlines()), lines
            print(f"\nboth symmetric: {[ln for ln in lines.splitlines() if 'relayed' in ln]}")
            return
        wait_for("h2 and h3 to punch a direct path through the symmetric NAT",
                 lambda: "h3" in established(report(tb, "h2")), timeout=60)
        took = time.monotonic() - started
        p2, p3 = punch_report(tb, "h2"), punch_report(tb, "h3")
        print(f"\nsymmetric + easy: direct {took:.1f} s after h3 was launched "
              f"(h2: {how(tb, 'h2', 'h3')}); probes sent h2 {p2['probes_sent']}, "
              f"h3 {p3['probes_sent']}; attempts h2 {p2['attempts']}, h3 {p3['attempts']}")
        tb.count_underlay("h1")
        tb.count_underlay("h4")
        bulk_tcp(tb, "c3", "10.2.1.3", "c2", TRANSFER, timeout=60)
        assert tb.underlay_bytes("h1") + tb.underlay_bytes("h4") < TRANSFER // 10


FORGE = """\
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    # the punch family (first byte 2), a PROBE for a session nobody offered, a made-up tag
    s.sendto(bytes([2, 1]) + os.urandom(8 + 14 + 16), (sys.argv[1], int(sys.argv[2])))
"""


def test_unencrypted_punched_pair_stays_on_sleeve_and_forged_probes_are_counted(
        natted: Testbed) -> None:
    """Without a password the fast path would carry a direct pair, but the kernel's VXLAN
    cannot cross the NATs: a punched link says so. Punch datagrams from strangers (no
    session of ours, no key) are dropped and counted."""
    tb = natted
    with logs_on_failure(tb, HOSTS):
        launch(tb, "h1", password=None)
        launch(tb, "h2", tb.address("h1"), password=None)
        launch(tb, "h3", tb.address("h1"), password=None)
        wait_for("h2 and h3 to punch a direct path",
                 lambda: "h3" in established(report(tb, "h2")), timeout=40)
        conn = next(c for c in report(tb, "h2")["router"]["connections"]
                    if c["peer"] and c["peer"]["nickname"] == "h3")
        assert conn["overlay"] == "sleeve" and "through NAT" in conn["overlay_reason"], conn
        print(f"\nh2 -> h3 unencrypted and punched: {conn['overlay_reason']}")
        tb.run("h3", [sys.executable, "-c", FORGE, tb.address("h1"), "6783", "50"])

        def counted() -> int:
            return int(punch_report(tb, "h1")["drops"].get("unknown session", 0))

        wait_for("h1 to count the forged probes", lambda: counted() >= 50, timeout=10)
        assert established(report(tb, "h1")) == {"h2", "h3"}
        assert "h3" in established(report(tb, "h2"))


def test_a_private_path_beside_the_nats_is_preferred(natted: Testbed) -> None:
    """h2 and h3 also share a private network (two VMs of one cloud network, each with its
    own way out through NAT): their host candidates include the private addresses, and the
    private path wins over the one through both NATs."""
    tb = natted
    n2, n3 = tb.ns("h2"), tb.ns("h3")
    run_ip("-n", n2, "link", "add", "vpc", "type", "veth", "peer", "name", "vpc", "netns", n3)
    for ns, ip in ((n2, "192.168.77.2"), (n3, "192.168.77.3")):
        run_ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "vpc")
        run_ip("-n", ns, "link", "set", "vpc", "up")
    with logs_on_failure(tb, HOSTS):
        mesh_through_h1(tb)
        wait_for("h2 and h3 to punch a direct path",
                 lambda: "h3" in established(report(tb, "h2")), timeout=40)
        h2_how = how(tb, "h2", "h3")
        conn = next(c for c in report(tb, "h2")["router"]["connections"]
                    if c["peer"] and c["peer"]["nickname"] == "h3")
        print(f"\nh2 -> h3: {h2_how} at {conn['sleeve']['udp_address']}")
        assert h2_how == "punched (host candidate)", h2_how
        assert conn["sleeve"]["udp_address"].startswith("192.168.77."), conn
        assert "172.20.2.2:6783" in punch_report(tb, "h2")["candidates"]["host"]
