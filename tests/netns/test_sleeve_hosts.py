"""The sleeve data plane on real hosts: containers (namespaces) on different hosts share one
virtual Ethernet through weft routers, driven by the CLI as a user would. Every router runs
with ``--no-fastdp``: unencrypted links would otherwise go over the kernel VXLAN, which
tests/netns/test_fastdp_hosts.py covers."""

from __future__ import annotations

import contextlib
import struct
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from weftnet.router.tools.testbed import Testbed

from .weftctl import (
    bulk_tcp,
    established,
    launch,
    report,
    udp_count,
    udp_listen,
    udp_send,
    wait_for,
)

SLEEVE_ONLY = ("--no-fastdp",)

UDP_PORT = 5002  # where c2 listens for c1's datagrams

REPLAY = textwrap.dedent("""
    import socket, sys
    data = bytearray.fromhex(sys.argv[3])
    if sys.argv[4] == "flip":  # a fresh counter (past the replay check), a flipped payload bit
        data[12] ^= 0x01
        data[len(data) // 2] ^= 0x01
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(bytes(data), (sys.argv[1], int(sys.argv[2])))
""")


@contextlib.contextmanager
def capture(tb: Testbed, host: str, pcap: Path, bpf: str) -> Iterator[None]:
    """tcpdump on the host's underlay into ``pcap``, listening before the block runs."""
    proc = tb.popen(host, ["tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-w", str(pcap), bpf],
                    stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on" in line, line
        yield
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait()


def attach(tb: Testbed, host: str, cidr: str, container: str) -> str:
    ns = tb.ns(container) if container in tb.containers else tb.add_container(container)
    out = tb.weft(host, "attach", cidr, ns).stdout.split()
    assert out == [cidr]
    return ns


def drops(tb: Testbed, host: str) -> dict[str, int]:
    return report(tb, host)["router"]["dataplane"]["drops"]  # type: ignore[no-any-return]


def two_hosts_connected(tb: Testbed, password: str | None, *, h1_extra: tuple[str, ...] = (),
                        h2_extra: tuple[str, ...] = ()) -> None:
    launch(tb, "h1", password=password, extra=SLEEVE_ONLY + h1_extra)
    launch(tb, "h2", tb.address("h1"), password=password, extra=SLEEVE_ONLY + h2_extra)
    wait_for("h1-h2 established over UDP", lambda: established(report(tb, "h1")) == {"h2"}
             and established(report(tb, "h2")) == {"h1"})


def containers_reach_each_other(tb: Testbed) -> None:
    """c1 (10.2.1.1) on h1 and c2 (10.2.1.2) on h2, one overlay subnet, c1 pings c2."""
    attach(tb, "h1", "10.2.1.1/24", "c1")
    attach(tb, "h2", "10.2.1.2/24", "c2")
    assert tb.ping("c1", "10.2.1.2", timeout=5)


def seen_in_clear(tb: Testbed, marker: str) -> bool:
    """Whether ``marker``, sent by c1 to c2 in one UDP datagram, shows on h2's underlay."""
    pcap = tb.tmpdir / f"{marker}.pcap"
    with capture(tb, "h2", pcap, "udp port 6783"):
        udp_send(tb, "c1", "10.2.1.2", UDP_PORT, marker)
    return marker.encode() in pcap.read_bytes()


@pytest.fixture
def pair(testbed_factory: Any) -> Testbed:
    return testbed_factory(hosts=("h1", "h2"))  # type: ignore[no-any-return]


def test_encrypted_containers_ping_transfer_and_detach(pair: Testbed) -> None:
    tb = pair
    two_hosts_connected(tb, "sesame")
    conn = report(tb, "h1")["router"]["connections"][0]
    assert conn["overlay"] == "sleeve" and conn["encrypted"]
    assert "encrypted sleeve" in conn["overlay_reason"]
    containers_reach_each_other(tb)
    assert tb.ping("c2", "10.2.1.1", timeout=5)
    # a large ping: fragments of an 8000-byte datagram, each carried whole
    tb.run("c1", ["ping", "-c", "3", "-i", "0.2", "-W", "3", "-s", "8000", "10.2.1.2"])
    bulk_tcp(tb, "c2", "10.2.1.2", "c1", 30_000_000)
    bulk_tcp(tb, "c1", "10.2.1.1", "c2", 10_000_000)

    ps = tb.weft("h1", "ps").stdout.splitlines()
    assert len(ps) == 1
    name, mac, cidr = ps[0].split()
    assert name == tb.ns("c1") and cidr == "10.2.1.1/24" and mac.count(":") == 5
    conn = report(tb, "h1")["router"]["connections"][0]
    assert conn["sleeve"]["packets_out"] > 0 and conn["sleeve"]["bytes_in"] > 10_000_000

    tb.weft("h2", "detach", tb.ns("c2"))
    assert tb.weft("h2", "ps").stdout == ""
    assert not tb.ping("c1", "10.2.1.2", timeout=1)
    assert "ethwe" not in tb.run("c2", ["ip", "-br", "link"]).stdout


def test_encryption_hides_payloads_and_rejects_replays_and_tampering(pair: Testbed) -> None:
    tb = pair
    two_hosts_connected(tb, "sesame")
    containers_reach_each_other(tb)
    marker = "WEFT-SECRET-MARKER-0123456789"
    pcap = tb.tmpdir / "underlay.pcap"
    listener = udp_listen(tb, "c2", "10.2.1.2", UDP_PORT, quiet=4)
    with capture(tb, "h2", pcap, "udp port 6783 and src host " + tb.address("h1")):
        udp_send(tb, "c1", "10.2.1.2", UDP_PORT, marker)
    raw = pcap.read_bytes()
    assert marker.encode() not in raw, "the payload appears in clear on the underlay"
    datagrams = _udp_payloads(raw)
    # the one DATA datagram that carried the marker: kind 1, the largest of the burst
    data = [d for d in datagrams if d[0] == 1 and d[1] == 1]
    assert data, "no DATA datagram captured"
    victim = max(data, key=len)
    before = drops(tb, "h2")
    for how in ("replay", "flip"):
        tb.run("h1", ["python3", "-c", REPLAY, tb.address("h2"), "6783", victim.hex(), how])
    assert udp_count(listener) == 1, "a replayed or forged datagram got through"
    after = drops(tb, "h2")
    assert after.get("replay", 0) > before.get("replay", 0)
    assert after.get("authentication", 0) > before.get("authentication", 0)


def _udp_payloads(pcap: bytes) -> list[bytes]:
    """UDP payloads of an Ethernet pcap (classic format, IPv4 without options assumed
    only where the header says so)."""
    out = []
    off = 24
    while off + 16 <= len(pcap):
        incl = struct.unpack_from("<I", pcap, off + 8)[0]
        pkt = pcap[off + 16: off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 14 + 20 + 8 or pkt[12:14] != b"\x08\x00":
            continue
        ihl = (pkt[14] & 0x0F) * 4
        frag = struct.unpack_from(">H", pkt, 14 + 6)[0]
        if pkt[14 + 9] != 17 or frag & 0x1FFF:
            continue  # not UDP, or a later fragment
        out.append(pkt[14 + ihl + 8:])
    return out


def test_without_a_password_the_capture_shows_the_payload(pair: Testbed) -> None:
    """The control for the test above: the same capture does see a payload in the clear."""
    tb = pair
    two_hosts_connected(tb, None)
    conn = report(tb, "h1")["router"]["connections"][0]
    assert not conn["encrypted"] and "without encryption" in conn["overlay_reason"]
    containers_reach_each_other(tb)
    assert seen_in_clear(tb, "WEFT-PLAIN-MARKER-9876543210")


def test_relay_across_two_segments_and_broadcast(testbed_factory: Any) -> None:
    """h1 and h3 share no underlay: h2, on both segments, relays their containers' frames."""
    tb: Testbed = testbed_factory(hosts=("h1", "h2", "h3"),
                                  segments={"a": ("h1", "h2"), "b": ("h2", "h3")})
    launch(tb, "h2", extra=SLEEVE_ONLY)
    launch(tb, "h1", tb.address("h2", "a"), extra=SLEEVE_ONLY)
    launch(tb, "h3", tb.address("h2", "b"), extra=SLEEVE_ONLY)
    wait_for("h2 connected to both", lambda: established(report(tb, "h2")) == {"h1", "h3"})
    wait_for("h1 knows h3", lambda: "h3" in {p["nickname"] for p in
                                             report(tb, "h1")["router"]["peers"]})
    attach(tb, "h1", "10.2.1.1/24", "c1")
    attach(tb, "h2", "10.2.1.2/24", "c2")
    attach(tb, "h3", "10.2.1.3/24", "c3")
    assert tb.ping("c1", "10.2.1.3", timeout=5)
    assert tb.ping("c3", "10.2.1.1", timeout=5)
    assert established(report(tb, "h1")) == {"h2"}  # no direct link: relayed
    bulk_tcp(tb, "c3", "10.2.1.3", "c1", 5_000_000)
    # a broadcast ping reaches the containers on every host (one copy each)
    for c in ("c2", "c3"):
        tb.run(c, ["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"])
    out = tb.run("c1", ["ping", "-b", "-c", "2", "-i", "0.5", "-W", "2", "10.2.1.255"],
                 check=False).stdout
    assert "from 10.2.1.2" in out and "from 10.2.1.3" in out
    assert "DUP!" not in out


def test_blocked_udp_keeps_the_connection_pending_with_the_reason(pair: Testbed) -> None:
    tb = pair
    tb.block_udp_port("h2", 6783)
    launch(tb, "h1", password=None, extra=SLEEVE_ONLY)
    launch(tb, "h2", tb.address("h1"), password=None, extra=SLEEVE_ONLY)

    def pending_with_reason() -> bool:
        conns = report(tb, "h2")["router"]["connections"]
        return bool(conns) and conns[0]["state"] == "pending" and "UDP" in conns[0]["info"]

    wait_for("the connection to wait for UDP, saying so", pending_with_reason)
    assert established(report(tb, "h1")) == set()
    tb.unblock("h2", 6783)
    wait_for("established once UDP flows", lambda: established(report(tb, "h1")) == {"h2"}
             and established(report(tb, "h2")) == {"h1"})


def test_small_underlay_mtu_gets_df_senders_told_and_the_rest_carried(pair: Testbed) -> None:
    tb = pair
    for h in ("h1", "h2"):
        tb.run(h, ["ip", "link", "set", "eth0", "mtu", "1280"])
    two_hosts_connected(tb, "sesame")
    wait_for("the path MTU probed", lambda: report(tb, "h1")["router"]["connections"][0]
             ["sleeve"]["path_mtu"] == 1280)
    conn = report(tb, "h1")["router"]["connections"][0]
    mtu = conn["mtu"]
    assert mtu is not None and mtu < 1280 - 28
    containers_reach_each_other(tb)
    # DF set and bigger than the overlay MTU of the link: ICMP "fragmentation needed"
    out = tb.run("c1", ["ping", "-c", "2", "-i", "0.3", "-W", "2", "-M", "do", "-s", "1300",
                        "10.2.1.2"], check=False)
    text = out.stdout + out.stderr
    assert f"mtu = {mtu}" in text or f"mtu={mtu}" in text, text
    assert drops(tb, "h1").get("too big", 0) >= 1
    # without DF the same size is carried (in several underlay datagrams)
    tb.run("c1", ["ping", "-c", "2", "-i", "0.3", "-W", "3", "-M", "dont", "-s", "1300",
                  "10.2.1.2"])
    # and TCP adapts its segments to what the ICMP said
    bulk_tcp(tb, "c2", "10.2.1.2", "c1", 5_000_000)


def test_trusted_subnets_carry_data_in_the_clear_only_when_both_ends_trust(pair: Testbed) -> None:
    tb = pair
    subnet = ("--trusted-subnets", "172.31.1.0/24")
    two_hosts_connected(tb, "sesame", h1_extra=subnet, h2_extra=subnet)
    conn = report(tb, "h2")["router"]["connections"][0]
    assert conn["encrypted"]  # the control connection stays encrypted
    assert "in the clear" in conn["overlay_reason"] and not conn["sleeve"]["encrypted_data"]
    containers_reach_each_other(tb)
    assert seen_in_clear(tb, "WEFT-TRUSTED-MARKER-55555")


def test_trust_on_one_side_only_keeps_encryption(pair: Testbed) -> None:
    tb = pair
    two_hosts_connected(tb, "sesame", h1_extra=("--trusted-subnets", "172.31.1.0/24"))
    for h in ("h1", "h2"):
        conn = report(tb, h)["router"]["connections"][0]
        assert conn["sleeve"]["encrypted_data"] and "encrypted sleeve" in conn["overlay_reason"]
    containers_reach_each_other(tb)
    assert not seen_in_clear(tb, "WEFT-ONE-SIDED-MARKER-77777")


def test_the_link_follows_the_peer_to_a_new_udp_address(pair: Testbed) -> None:
    """What a NAT rebinding looks like from h2: h1's datagrams suddenly come from another
    address (here: h1 changes its source address; the TCP connection keeps the old one)."""
    tb = pair
    two_hosts_connected(tb, "sesame")
    containers_reach_each_other(tb)

    def udp_address() -> str:
        return str(report(tb, "h2")["router"]["connections"][0]["sleeve"]["udp_address"])

    assert udp_address() == f"{tb.address('h1')}:6783"
    tb.run("h1", ["ip", "addr", "add", "172.31.1.101/24", "dev", "eth0"])
    tb.run("h1", ["ip", "route", "replace", "172.31.1.0/24", "dev", "eth0", "proto", "kernel",
                  "scope", "link", "src", "172.31.1.101"])
    wait_for("h2 to follow h1's new address", lambda: udp_address() == "172.31.1.101:6783",
             timeout=15)
    assert tb.ping("c1", "10.2.1.2", timeout=5) and tb.ping("c2", "10.2.1.1", timeout=5)
    assert established(report(tb, "h2")) == {"h1"}
