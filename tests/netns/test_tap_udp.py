"""The TAP device and the sleeve's UDP sockets on real devices in namespaces.

TAP: frames written reach a container on the bridge, frames from containers are read with
their virtio header, and with TSO on a TCP stream crosses two hosts' TAPs as super-frames
(a bare Python ferry between the two TAPs stands in for the sleeve). UDP: GSO sends and
GRO receives between two hosts on the testbed's underlay, the fallback when the kernel
refuses a segment size, and DF probes for path MTU discovery.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from weftnet.router.dataplane.tap import PLAIN_VNET_HDR, READ_SIZE, VNET_HDR_LEN, Tap
from weftnet.router.dataplane.udpsock import (
    IP_PMTUDISC_DO,
    enable_gro,
    open_udp,
    probe_sender,
    recv_batch,
    route_mtu,
    send_segments,
)
from weftnet.router.host.netdev import (
    BRIDGE,
    TAP,
    NetdevError,
    attach,
    ensure_bridge,
    link_exists,
    resolve_netns,
    run_in_netns,
)
from weftnet.router.tools.testbed import Testbed

from .conftest import TestbedFactory
from .weftctl import bulk_tcp

MTU = 1376
PORT = 6783
WAIT = 10.0  # seconds to wait for something that must happen; a failure bound, not a measure
VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
GSO_TCPV4 = 1
NEEDS_CSUM = 1
ETH_ARP = 0x0806


def ipaddr(text: str) -> bytes:
    return socket.inet_aton(text)


def macaddr(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    eth = b"\xff" * 6 + macaddr(src_mac) + struct.pack("!H", ETH_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + macaddr(src_mac) + ipaddr(src_ip)
    return eth + arp + bytes(6) + ipaddr(target_ip)


@dataclass
class Arp:
    dst: bytes
    src: bytes
    op: int
    sender_mac: bytes
    sender_ip: str
    target_ip: str


def parse_arp(frame: bytes) -> Arp | None:
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_ARP:
        return None
    op = struct.unpack_from("!H", frame, 20)[0]
    return Arp(frame[0:6], frame[6:12], op, frame[22:28],
               socket.inet_ntoa(frame[28:32]), socket.inet_ntoa(frame[38:42]))  # fmt: skip


def read_until(tap: Tap, want: Callable[[bytes], bool]) -> bytes:
    """Read frames (header included) until ``want`` accepts one; fail after WAIT s."""
    buf = bytearray(READ_SIZE)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        select.select([tap], [], [], 0.2)
        while True:
            try:
                n = tap.read_into(buf)
            except BlockingIOError:
                break
            if want(bytes(buf[:n])):
                return bytes(buf[:n])
    raise AssertionError(f"no matching frame on {tap.name} within {WAIT} s")


def link_info(tb: Testbed, host: str, ifname: str) -> dict[str, object]:
    out = tb.run(host, ["ip", "-j", "-d", "link", "show", "dev", ifname]).stdout
    info: dict[str, object] = json.loads(out)[0]
    return info


@pytest.fixture
def one(testbed_factory: TestbedFactory) -> Testbed:
    return testbed_factory(hosts=("h1", "c1"), segments={"lan": ["h1"]})


@pytest.fixture
def tap(one: Testbed) -> Iterator[Tap]:
    ensure_bridge(MTU, netns=one.ns("h1"))
    with Tap.open(mtu=MTU, netns=one.ns("h1")) as t:
        yield t


def test_tap_is_an_up_bridge_port_with_vnet_header_and_offloads(one: Testbed, tap: Tap) -> None:
    print(f"offloads accepted by this kernel: {sorted(tap.offloads)}")
    assert tap.name == TAP and tap.vnet_hdr and tap.mtu == MTU
    assert {"csum", "tso4", "tso6"} <= tap.offloads
    info = link_info(one, "h1", TAP)
    assert info["master"] == BRIDGE and info["mtu"] == MTU and "UP" in info["flags"]  # type: ignore[operator]
    tun = info["linkinfo"]["info_data"]  # type: ignore[index]
    assert tun["type"] == "tap" and tun["pi"] is False and tun["vnet_hdr"] is True
    # Non-blocking: once the bridge's own chatter (IPv6 MLD, RS) is drained, reads raise.
    buf = bytearray(READ_SIZE)
    with pytest.raises(BlockingIOError):
        for _ in range(10000):
            tap.read_into(buf)
    # Held open: a second opener is refused; closing removes the (non-persistent) device.
    with pytest.raises(NetdevError, match="Device or resource busy"):
        Tap.open(mtu=MTU, netns=one.ns("h1"))
    tap.close()
    tap.close()
    assert tap.closed and not link_exists(TAP, netns=one.ns("h1"))


def test_tap_takes_over_an_existing_device_and_works_without_vnet_header(one: Testbed) -> None:
    host = one.ns("h1")
    ensure_bridge(MTU, netns=host)
    one.run("h1", ["ip", "tuntap", "add", "dev", TAP, "mode", "tap"])  # persistent, no vnet hdr
    with Tap.open(mtu=1300, vnet_hdr=False, netns=host) as t:
        assert not t.vnet_hdr and t.offloads == frozenset()
        info = link_info(one, "h1", TAP)
        assert info["master"] == BRIDGE and info["mtu"] == 1300
        ref = resolve_netns(one.ns("c1"))
        a = attach(ref, [ipaddress.IPv4Interface("10.99.7.1/24")], mtu=1300, netns=host)
        one.run("c1", ["ping", "-c1", "-W1", "10.99.7.9"], check=False)
        frame = read_until(t, lambda f: (p := parse_arp(f)) is not None and p.target_ip == "10.99.7.9")
        assert frame[6:12] == macaddr(a.mac)  # no header in front: the frame starts at once
    assert link_exists(TAP, netns=host)  # persistent devices outlive us


def test_frame_written_to_tap_reaches_container_and_its_reply_is_read(one: Testbed, tap: Tap) -> None:
    a = attach(resolve_netns(one.ns("c1")), [ipaddress.IPv4Interface("10.99.3.1/24")], mtu=MTU,
               netns=one.ns("h1"))  # fmt: skip
    me = "02:00:00:00:00:fe"
    tap.write(PLAIN_VNET_HDR + arp_request(me, "10.99.3.254", "10.99.3.1"))

    def is_reply(f: bytes) -> bool:
        p = parse_arp(f[VNET_HDR_LEN:])
        return p is not None and p.op == 2 and p.dst == macaddr(me)

    frame = read_until(tap, is_reply)
    flags, gso_type, *_ = VNET.unpack_from(frame)
    assert (flags, gso_type) == (0, 0)
    reply = parse_arp(frame[VNET_HDR_LEN:])
    assert reply is not None
    assert (reply.sender_mac, reply.sender_ip) == (macaddr(a.mac), "10.99.3.1")
    assert reply.target_ip == "10.99.3.254"
    # The container learnt who asked: the request itself arrived there.
    neigh = json.loads(one.run("c1", ["ip", "-j", "neigh", "show", "10.99.3.254"]).stdout)
    assert [n["lladdr"] for n in neigh] == [me]
    # Same, in pieces.
    tap.writev([PLAIN_VNET_HDR, arp_request(me, "10.99.3.253", "10.99.3.1")])
    read_until(tap, lambda f: (p := parse_arp(f[VNET_HDR_LEN:])) is not None and p.op == 2
               and p.target_ip == "10.99.3.253")  # fmt: skip
    # A header the kernel cannot accept (GSO without a size) is refused, not delivered.
    bad = VNET.pack(NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16) + arp_request(me, "10.99.3.252", "10.99.3.1")
    with pytest.raises(OSError) as err:
        tap.write(bad)
    assert err.value.errno == errno.EINVAL


def test_arp_broadcast_from_container_is_read_with_its_header(one: Testbed, tap: Tap) -> None:
    a = attach(resolve_netns(one.ns("c1")), [ipaddress.IPv4Interface("10.99.3.1/24")], mtu=MTU,
               netns=one.ns("h1"))  # fmt: skip
    one.run("c1", ["ping", "-c1", "-W1", "10.99.3.77"], check=False)
    frame = read_until(tap, lambda f: (p := parse_arp(f[VNET_HDR_LEN:])) is not None
                       and p.target_ip == "10.99.3.77")  # fmt: skip
    assert VNET.unpack_from(frame)[:2] == (0, 0)
    arp = parse_arp(frame[VNET_HDR_LEN:])
    assert arp is not None
    assert (arp.dst, arp.src, arp.op, arp.sender_ip) == (b"\xff" * 6, macaddr(a.mac), 1, "10.99.3.1")


@dataclass
class Ferry:
    """Copies frames, virtio header included and unchanged, between two TAPs."""

    a: Tap
    b: Tap
    sizes: list[int] = field(default_factory=list)
    headers: list[tuple[int, ...]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        buf = bytearray(READ_SIZE)
        other = {self.a.fileno(): self.b, self.b.fileno(): self.a}
        by_fd = {self.a.fileno(): self.a, self.b.fileno(): self.b}
        while not self.stop.is_set():
            ready, _, _ = select.select(list(by_fd), [], [], 0.1)
            for fd in ready:
                while True:
                    try:
                        n = by_fd[fd].read_into(buf)
                    except BlockingIOError:
                        break
                    self.sizes.append(n - VNET_HDR_LEN)
                    self.headers.append(VNET.unpack_from(buf))
                    try:
                        other[fd].write(memoryview(buf)[:n])
                    except OSError as exc:
                        self.errors.append(str(exc))


def test_tcp_bulk_crosses_two_taps_as_superframes(testbed_factory: TestbedFactory) -> None:
    tb = testbed_factory(hosts=("h1", "h2", "c1", "c2"), segments={"lan": ["h1", "h2"]})
    taps = []
    for host, cont, addr in (("h1", "c1", "10.99.4.1/24"), ("h2", "c2", "10.99.4.2/24")):
        ensure_bridge(MTU, netns=tb.ns(host))
        taps.append(Tap.open(mtu=MTU, netns=tb.ns(host)))
        attach(resolve_netns(tb.ns(cont)), [ipaddress.IPv4Interface(addr)], mtu=MTU, netns=tb.ns(host))
    ferry = Ferry(taps[0], taps[1])
    thread = threading.Thread(target=ferry.run, daemon=True)
    thread.start()
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    try:
        bulk_tcp(tb, "c2", "10.99.4.2", "c1", 32 << 20, seed=seed)
    finally:
        ferry.stop.set()
        thread.join()
        for t in taps:
            t.close()
    assert ferry.errors == []
    big = [s for s in ferry.sizes if s > MTU + 14]
    tso = [h for h in ferry.headers if h[1] == GSO_TCPV4]
    print(f"frames {len(ferry.sizes)}, over MTU {len(big)}, max frame {max(ferry.sizes)} B, "
          f"gso sizes {sorted({h[3] for h in tso})}, bytes in super-frames {sum(big)}")  # fmt: skip
    assert big and tso
    assert all(h[0] & NEEDS_CSUM and h[3] > 0 for h in tso)
    assert max(ferry.sizes) > 8 * MTU


# --- UDP -------------------------------------------------------------------------------


@pytest.fixture
def pair(testbed_factory: TestbedFactory) -> Testbed:
    return testbed_factory(hosts=("h1", "h2"))


def receive(sock: socket.socket, total: int) -> list[tuple[bytes, int | None]]:
    """Collect batches (bytes, GRO segment size) until ``total`` bytes came; WAIT s at most."""
    buf = bytearray(1 << 16)
    got: list[tuple[bytes, int | None]] = []
    deadline = time.monotonic() + WAIT
    while sum(len(b) for b, _ in got) < total and time.monotonic() < deadline:
        select.select([sock], [], [], 0.2)
        while True:
            try:
                n, seg, _addr = recv_batch(sock, buf)
            except BlockingIOError:
                break
            got.append((bytes(buf[:n]), seg))
    return got


def datagrams(batches: list[tuple[bytes, int | None]]) -> list[bytes]:
    out = []
    for data, seg in batches:
        step = seg or len(data)
        out += [data[i : i + step] for i in range(0, len(data), step)]
    return out


def test_udp_gso_send_and_gro_receive(pair: Testbed) -> None:
    tb = pair
    a = open_udp(PORT, netns=tb.ns("h1"))
    b = open_udp(PORT, netns=tb.ns("h2"))
    c = open_udp(PORT + 1, netns=tb.ns("h2"))
    with a, b, c:
        assert not a.getblocking()
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 8 << 20
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 8 << 20
        with pytest.raises(BlockingIOError):
            recv_batch(b, bytearray(100))
        assert enable_gro(b)
        rng = random.Random(7)
        dest = (tb.address("h2"), PORT)

        # 44 segments of 1400 and a short tail in one call; GRO hands them back in trains.
        data = rng.randbytes(44 * 1400 + 600)
        assert send_segments(a, data, 1400, dest) == len(data)
        batches = receive(b, len(data))
        assert b"".join(d for d, _ in batches) == data
        assert [len(d) for d in datagrams(batches)] == [1400] * 44 + [600]
        print(f"GRO batches: {[(len(d), s) for d, s in batches]}")
        assert any(seg == 1400 for _, seg in batches)

        # More than 64 segments: split into several GSO calls, order kept.
        data = rng.randbytes(150 * 400)
        assert send_segments(a, data, 400, dest) == len(data)
        batches = receive(b, len(data))
        assert [len(d) for d in datagrams(batches)] == [400] * 150
        assert b"".join(d for d, _ in batches) == data

        # Without GRO the receiver sees each datagram on its own.
        data = rng.randbytes(10 * 1400)
        assert send_segments(a, data, 1400, (tb.address("h2"), PORT + 1)) == len(data)
        batches = receive(c, len(data))
        assert [(len(d), s) for d, s in batches] == [(1400, None)] * 10

        # A segment size beyond the route MTU: the kernel refuses GSO, the loop sends
        # datagrams the kernel fragments (DF is off), and they arrive whole.
        data = rng.randbytes(3 * 2000)
        assert send_segments(a, data, 2000, (tb.address("h2"), PORT + 1)) == len(data)
        batches = receive(c, len(data))
        assert [(len(d), s) for d, s in batches] == [(2000, None)] * 3
        assert b"".join(d for d, _ in batches) == data

        # One small datagram: a plain send.
        assert send_segments(a, b"hello", 1400, dest) == 5
        assert receive(b, 5) == [(b"hello", None)]


def capture_udp(tb: Testbed, host: str) -> socket.socket:
    """An AF_PACKET socket in ``host`` that sees the IPv4 packets arriving on eth0."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        s.bind(("eth0", 0x0800))
        s.setblocking(False)
        return s

    return run_in_netns(tb.ns(host), make)


def df_of(cap: socket.socket, marker: bytes) -> bool:
    """The DF bit of the first captured UDP packet whose payload starts with ``marker``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        select.select([cap], [], [], 0.2)
        while True:
            try:
                pkt = cap.recv(65535)
            except BlockingIOError:
                break
            ihl = (pkt[0] & 0x0F) * 4
            if pkt[9] == 17 and pkt[ihl + 8 : ihl + 8 + len(marker)] == marker:
                return bool(struct.unpack_from("!H", pkt, 6)[0] & 0x4000)
    raise AssertionError(f"no packet with payload {marker!r} captured")


def test_probe_sender_sets_df_and_reports_the_route_mtu(pair: Testbed) -> None:
    tb = pair
    dest = (tb.address("h2"), PORT)
    with open_udp(PORT, netns=tb.ns("h2")), open_udp(0, netns=tb.ns("h1")) as data, \
            capture_udp(tb, "h2") as cap, probe_sender(dest, netns=tb.ns("h1")) as probe:  # fmt: skip
        assert route_mtu(probe) == 1500
        probe.send(b"probe-1472".ljust(1472, b"."))  # 1472 + 8 + 20 = 1500
        with pytest.raises(OSError) as err:
            probe.send(b"x" * 1473)
        assert err.value.errno == errno.EMSGSIZE
        assert df_of(cap, b"probe-1472")
        data.sendto(b"data-plain", dest)
        assert not df_of(cap, b"data-plain")
    # A smaller MTU on the way out is what the next probe socket sees.
    tb.run("h1", ["ip", "link", "set", "dev", "eth0", "mtu", "1400"])
    with probe_sender(dest, mode=IP_PMTUDISC_DO, netns=tb.ns("h1")) as probe:
        assert route_mtu(probe) == 1400
        probe.send(b"x" * 1372)
        with pytest.raises(OSError) as err:
            probe.send(b"x" * 1373)
        assert err.value.errno == errno.EMSGSIZE
    with pytest.raises(ValueError):
        probe_sender(dest, mode=0)


def test_open_udp_errors_are_one_line(pair: Testbed) -> None:
    with open_udp(PORT, host=pair.address("h1"), netns=pair.ns("h1")) as s:
        assert s.getsockname() == (pair.address("h1"), PORT)
    with pytest.raises(NetdevError, match="cannot open UDP 10.99.99.99:6783") as err:
        open_udp(PORT, host="10.99.99.99", netns=pair.ns("h1"))  # not an address of h1
    assert "\n" not in str(err.value)
