"""The data-plane engine (router/dataplane/engine.py) between two routers over the in-memory
ports of router/dataplane/doubles.py, in trio's virtual time (MockClock, autojump).

Each ``Host`` is the smallest daemon around a real ``MeshNode`` and a real ``Dataplane``: its
control bytes go straight to the other host's MeshNode, and it runs the daemon's pump and
timer task (drain the engine, carry out the mesh's events, wake for the earliest timer), so
what is tested is the engine as the daemon drives it: the connection is established only
once UDP works both ways, frames cross TAP -> UDP -> TAP, silence takes the link down,
answers bring it back, and the link follows a peer that moved.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from tests.gsoframes import ack_frame, kernel_segments, scratch_segments, super_frame
from weftnet.proto import fastdp, sleeve_frag
from weftnet.proto.connmaker import join_host_port
from weftnet.proto.link import (
    HEARTBEAT_SLOW,
    LINK_TIMEOUT,
    LOSS_HOLD,
    OVERLAY_OVERHEAD,
    SEND_TIMEOUT,
    STANDBY_HEARTBEAT,
)
from weftnet.proto.mesh import (
    KeysAgreed,
    KeysSwitched,
    MeshConfig,
    MeshNode,
    PeerConnected,
    PeerDisconnected,
)
from weftnet.router.dataplane.doubles import MemoryNetwork, MemoryTap
from weftnet.router.dataplane.engine import LOSSY_UNIT_SEGS, Dataplane
from weftnet.router.dataplane.fastpath import FastPath, fastdp_channel
from weftnet.router.dataplane.ports import TapPort, UdpPort
from weftnet.router.dataplane.tap import PLAIN_VNET_HDR

MTU = 1376
PORT = 6783
A_IP, B_IP = "10.0.0.1", "10.0.0.2"
MAC_A, MAC_B = bytes.fromhex("02aa00000001"), bytes.fromhex("02bb00000002")
BLOCKED = f"(is UDP port {PORT} blocked?)"


class Host:
    """One router: MeshNode + Dataplane over a MemoryTap and a MemoryUdp."""

    def __init__(self, name: int, nickname: str, udp: UdpPort, *, password: bytes | None,
                 seed: int, vnet: bool = False, trusted: tuple[str, ...] = (),
                 tap: TapPort | None = None, threaded: bool = False) -> None:
        self.mesh = MeshNode(
            MeshConfig(name=name, nickname=nickname, uid=1000 + seed, password=password,
                       port=PORT, discovery=False, require_overlay=True),
            now=0.0, random_bytes=random.Random(seed).randbytes, rng=random.Random(seed))
        self.tap: Any = tap if tap is not None else MemoryTap(vnet_hdr=vnet)
        self.udp = udp
        self.engine = Dataplane(self.mesh, port=PORT, host="", mtu=MTU, trusted_subnets=trusted,
                                fastdp=False, wake=self.poke, rng=random.Random(seed))
        self.mesh.register_channel(fastdp.CHANNEL, fastdp_channel(self.engine.fast))
        self.engine.open(tap=self.tap, udp=udp, threaded=threaded)
        self.other: Host | None = None
        self.wake = trio.Event()

    def poke(self) -> None:
        self.wake.set()

    def pump(self) -> None:
        """The daemon's pump: what the data plane learnt, the mesh's events, its writes."""
        now = trio.current_time()
        self.engine.drain(now)
        while self.mesh.next_action() is not None:
            pass
        while (event := self.mesh.next_event()) is not None:
            if isinstance(event, PeerConnected):
                self.engine.peer_connected(event, now)
            elif isinstance(event, PeerDisconnected):
                self.engine.peer_disconnected(event)
            elif isinstance(event, KeysAgreed):
                self.engine.keys_agreed(event, now)
            elif isinstance(event, KeysSwitched):
                self.engine.keys_switched(event, now)
        self.engine.routes_changed()
        for conn_id in self.mesh.pending_writes():
            data = self.mesh.data_to_send(conn_id, now)
            if data and self.other is not None:
                self.other.mesh.data_received(conn_id, data, now)
                self.other.poke()

    async def run(self) -> None:
        """The daemon's timer task (and the engine's own tasks)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.engine.run)
            self.pump()
            spins, last = 0, -1.0
            while True:
                mesh_due, engine_due = self.mesh.get_timer(), self.engine.get_timer()
                self.wake = trio.Event()
                wake = min((t for t in (mesh_due, engine_due) if t is not None), default=math.inf)
                # virtual time stands still while anything runs: a timer that stays due
                # after its handler ran would spin here for ever
                spins = spins + 1 if wake <= trio.current_time() == last else 0
                last = trio.current_time()
                assert spins < 20, f"timers stay due at {last}: mesh {mesh_due} engine {engine_due}"
                with trio.move_on_at(wake):
                    await self.wake.wait()
                now = trio.current_time()
                if mesh_due is not None and now >= mesh_due:
                    self.mesh.handle_timer(now)
                if engine_due is not None and now >= engine_due:
                    self.engine.handle_timer(now)
                self.pump()

    def connection(self) -> dict[str, Any]:
        (conn,) = self.mesh.report(trio.current_time())["connections"]
        return conn  # type: ignore[no-any-return]

    def sleeve(self) -> dict[str, Any]:
        conn = self.connection()
        report = self.engine.connection_report(conn["address"], conn["outbound"])
        assert report is not None
        return report


def frame(dst: bytes, src: bytes, payload: bytes, vnet: bool = False) -> bytes:
    eth = dst + src + b"\x08\x00" + payload
    return PLAIN_VNET_HDR + eth if vnet else eth


def ipv4(size: int, *, df: bool) -> bytes:
    """A UDP-in-IPv4 packet of ``size`` bytes from 10.32.0.1 to 10.32.0.2."""
    head = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000 if df else 0, 64, 17, 0,
                       bytes([10, 32, 0, 1]), bytes([10, 32, 0, 2]))
    return head + bytes(size - len(head))


async def eventually(what: str, check: Callable[[], bool], timeout: float = 60.0,
                     step: float = 0.1) -> None:
    """Poll ``check`` every ``step`` s (virtual time here; real time in the threaded tests)."""
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(step)
        return
    raise AssertionError(f"not within {timeout}s: {what}")


Scenario = Callable[[Host, Host, MemoryNetwork], Awaitable[None]]


async def run_connected(a: Host, b: Host, ips: tuple[str, str], port: int,
                        go: Callable[[], Awaitable[None]], limit: float) -> None:
    """Both daemons running and A dialling B at ``port`` (one control connection, made at
    both ends; B sees A's ephemeral port) until ``go`` returns (at most ``limit`` s)."""
    a.other, b.other = b, a
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        now = trio.current_time()
        a.mesh.connection_made(1, outbound=True, remote_address=join_host_port(ips[1], port),
                               target=None, now=now)
        b.mesh.connection_made(1, outbound=False, remote_address=join_host_port(ips[0], 51234),
                               target=None, now=now)
        a.poke()
        b.poke()
        with trio.fail_after(limit):
            await go()
        nursery.cancel_scope.cancel()


def run_pair(scenario: Scenario, *, password: bytes | None = b"sesame", seed: int = 1,
             vnet: tuple[bool, bool] = (False, False), trusted: tuple[str, ...] = (),
             block_a: bool = False, ips: tuple[str, str] = (A_IP, B_IP), **net: Any) -> None:
    """A (dialling) and B over one MemoryNetwork, the scenario run against them."""
    a_ip, b_ip = ips

    async def main() -> None:
        network = MemoryNetwork(seed=seed, **net)
        a = Host(0x0A0000000001, "a", network.udp((a_ip, PORT)), password=password, seed=seed,
                 vnet=vnet[0], trusted=trusted)
        b = Host(0x0B0000000002, "b", network.udp((b_ip, PORT)), password=password,
                 seed=seed + 100, vnet=vnet[1], trusted=trusted)
        if block_a:
            network.blocked.add((a_ip, PORT))
        await run_connected(a, b, (a_ip, b_ip), PORT, lambda: scenario(a, b, network), 600)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def established(*hosts: Host) -> bool:
    return all(h.connection()["state"] == "established" for h in hosts)


async def crosses(src: Host, dst: Host, data: bytes, dst_mac: bytes, src_mac: bytes) -> None:
    """A frame injected at ``src``'s bridge comes out of ``dst``'s, unchanged."""
    src.tap.inject(frame(dst_mac, src_mac, data, src.tap.vnet_hdr))
    with trio.fail_after(5):
        got = await dst.tap.receive()
    assert got == frame(dst_mac, src_mac, data, dst.tap.vnet_hdr)


# --- tests -------------------------------------------------------------------------------


def test_up_only_once_heartbeats_cross_both_ways() -> None:
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        # A's datagrams reach B, B's answers never reach A
        await eventually("the handshake", lambda: b.connection()["peer"] is not None)
        await eventually("the reason", lambda: "no UDP heartbeat" in a.connection()["info"])
        assert a.connection()["state"] == b.connection()["state"] == "pending"
        assert a.connection()["info"].endswith(BLOCKED)
        assert b.connection()["info"] == "waiting for the peer's UDP heartbeat"
        assert b.sleeve()["udp_address"] == f"{A_IP}:{PORT}"  # learnt from A's heartbeats
        assert not a.sleeve()["heartbeat_answered"] and not b.sleeve()["heartbeat_answered"]
        await trio.sleep(30)
        assert not established(a) and not established(b)
        net.blocked.clear()
        await eventually("established", lambda: established(a, b), timeout=5)
        assert a.sleeve()["heartbeat_answered"] and b.sleeve()["heartbeat_answered"]
        assert a.connection()["overlay"] == "sleeve" and a.connection()["mtu"] is not None

    run_pair(scenario, block_a=True)


@pytest.mark.parametrize("password", [b"sesame", None], ids=["encrypted", "plain"])
@pytest.mark.parametrize("vnet", [(False, False), (True, True), (True, False), (False, True)])
def test_frames_cross_tap_udp_tap(password: bytes | None, vnet: tuple[bool, bool]) -> None:
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        assert a.sleeve()["encrypted_data"] is (password is not None)
        broadcast = b"\xff" * 6
        await crosses(a, b, b"hello, everyone" * 3, broadcast, MAC_A)
        await crosses(b, a, b"hello A, from B", MAC_A, MAC_B)   # A's MAC was learnt
        await crosses(a, b, b"x" * 1300, MAC_B, MAC_A)
        assert a.sleeve()["packets_out"] == 2 and b.sleeve()["packets_in"] == 2
        assert a.engine.drops == {} and b.engine.drops == {}

    run_pair(scenario, password=password, vnet=vnet)


def test_silence_takes_the_link_down_and_answers_bring_it_back() -> None:
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        net.loss = 1.0
        start = trio.current_time()
        await eventually("down", lambda: not established(a), timeout=LINK_TIMEOUT + 3)
        # the last datagram before the loss came at most one slow heartbeat earlier
        assert trio.current_time() - start >= LINK_TIMEOUT - HEARTBEAT_SLOW
        assert a.connection()["state"] == "pending"
        assert a.connection()["info"] == f"no UDP heartbeat from the peer for 10s {BLOCKED}"
        assert a.connection()["peer"] is not None  # the control connection lives on
        net.loss = 0.0
        await eventually("back up", lambda: established(a, b), timeout=5)
        await crosses(a, b, b"after the outage", b"\xff" * 6, MAC_A)

    run_pair(scenario)


@pytest.mark.parametrize("unicast", [True, False])
def test_silence_after_a_unicast_frame_takes_the_link_down_sooner(unicast: bool) -> None:
    """The path dies under traffic: a sender of unicast frames finds out after SEND_TIMEOUT;
    a broadcast (idle meshes carry a few) expects no answer and changes nothing."""
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        await crosses(b, a, b"hello A, from B", MAC_A, MAC_B)  # A learns where B lives
        await trio.sleep(0.5)
        net.loss = 1.0
        start = trio.current_time()
        a.tap.inject(frame(MAC_B if unicast else b"\xff" * 6, MAC_A, b"into the void",
                           a.tap.vnet_hdr))
        await eventually("down", lambda: not established(a), timeout=LINK_TIMEOUT + 3)
        took = trio.current_time() - start
        info = a.connection()["info"]
        if unicast:
            assert took <= SEND_TIMEOUT + 0.1 and info.endswith("while sending to it"), info
        else:
            assert took >= LINK_TIMEOUT - HEARTBEAT_SLOW - 0.5 and BLOCKED in info, info

    run_pair(scenario)


def test_a_link_the_fast_path_carries_stands_by_with_slow_heartbeats(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's VXLAN carries the peer's traffic and probes the path: the sleeve link
    only stands by (heartbeats every STANDBY_HEARTBEAT); off the fast path, the link's
    heartbeats come back to the router's budget at once."""
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        (link,) = a.engine.links.values()
        assert not link.fast and link.machine.slow == HEARTBEAT_SLOW
        carries = False
        real = FastPath.carries
        monkeypatch.setattr(FastPath, "carries", lambda fp, conn_id: (
            carries if fp is a.engine.fast else real(fp, conn_id)))
        carries = True
        a.engine._decide(link, trio.current_time())
        assert link.fast and link.machine.slow == STANDBY_HEARTBEAT
        await eventually("the mesh told", lambda: a.connection()["overlay"] == "fastdp")
        await trio.sleep(2 * STANDBY_HEARTBEAT)
        assert established(a, b)  # the peer hears our answers to its own heartbeats
        carries = False
        now = trio.current_time()
        a.engine._decide(link, now)
        assert not link.fast and link.machine.slow == HEARTBEAT_SLOW
        due = link.machine.get_timer()
        assert due is not None and due <= now + HEARTBEAT_SLOW

    run_pair(scenario, password=None)  # the fast path needs the data in the clear


def test_the_link_follows_the_peer_to_a_new_address() -> None:
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        await crosses(a, b, b"before", b"\xff" * 6, MAC_A)
        assert b.sleeve()["udp_address"] == f"{A_IP}:{PORT}"
        net.rebind(a.udp, ("192.0.2.101", 40404))  # what a NAT rebinding looks like from B
        await eventually("B follows", lambda: b.sleeve()["udp_address"] == "192.0.2.101:40404",
                         timeout=5)
        await crosses(b, a, b"to the new address", MAC_A, MAC_B)
        assert established(a, b)

    run_pair(scenario)


@pytest.mark.parametrize("vnet", [False, True])
def test_the_path_mtu_sets_the_link_mtu_and_df_senders_are_told(vnet: bool) -> None:
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        await eventually("probed", lambda: a.sleeve()["path_mtu"] == 1400
                         and b.sleeve()["path_mtu"] == 1400)
        assert a.connection()["mtu"] == 1400 - OVERLAY_OVERHEAD
        await eventually("B's mesh hears it too", lambda: b.connection()["mtu"] == 1400 - OVERLAY_OVERHEAD)
        await crosses(a, b, b"y" * 1200, b"\xff" * 6, MAC_A)
        mtu = 1400 - OVERLAY_OVERHEAD
        # bigger than the link's MTU with DF: "fragmentation needed" back, nothing sent
        a.tap.inject(frame(MAC_B, MAC_A, ipv4(mtu + 1, df=True), vnet))
        with trio.fail_after(5):
            reply = await a.tap.receive()
        if vnet:
            assert reply[:len(PLAIN_VNET_HDR)] == PLAIN_VNET_HDR
            reply = reply[len(PLAIN_VNET_HDR):]
        assert reply[:12] == MAC_A + MAC_B and reply[14 + 9] == 1  # ICMP, to the sender
        assert reply[34:36] == bytes([3, 4]) and int.from_bytes(reply[40:42], "big") == mtu
        assert a.engine.drops == {"too big": 1} and not b.tap.written
        # without DF it is carried (the underlay fragments it); at the MTU it just fits
        await crosses(a, b, ipv4(mtu + 1, df=False), MAC_B, MAC_A)
        await crosses(a, b, ipv4(mtu, df=True), MAC_B, MAC_A)
        assert a.engine.drops == {"too big": 1}

    run_pair(scenario, route_mtu=1500, path_mtu=1410, vnet=(vnet, False))


def test_trust_on_both_sides_sends_data_in_the_clear() -> None:
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        await eventually("clear", lambda: not a.sleeve()["encrypted_data"]
                         and not b.sleeve()["encrypted_data"])
        assert "in the clear" in a.connection()["overlay_reason"]
        await crosses(a, b, b"trusted", b"\xff" * 6, MAC_A)

    run_pair(scenario, trusted=("10.0.0.0/24",))


@pytest.mark.parametrize("seed", [3, 4])
def test_a_lossy_network_still_brings_the_link_up(seed: int) -> None:
    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b), timeout=120)
        assert net.lost > 0, f"seed {seed}: nothing was lost"

    run_pair(scenario, loss=0.4, seed=seed)


# --- hole punching: punch datagrams for the daemon, extra sockets, punched links --------------

def test_punch_datagrams_wait_for_the_daemon_with_their_socket() -> None:
    async def main() -> None:
        net = MemoryNetwork(seed=3)
        a = Host(0x0A0000000001, "a", net.udp((A_IP, PORT)), password=b"sesame", seed=3)
        peer = net.udp((B_IP, PORT))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            await trio.sleep(0)
            extra = net.udp((A_IP, 41000))
            a.engine.adopt_socket(7, extra)
            punch = b"\x02\x01" + bytes(30)  # the punch family's first byte: not a sleeve datagram
            peer.sendto(punch, (A_IP, PORT))
            peer.sendto(punch + b"x", (A_IP, 41000))
            await eventually("both queued", lambda: len(a.engine._punch_inbox) == 2)
            assert sorted(a.engine.take_punch(), key=lambda t: t[2]) == [
                (punch, (B_IP, PORT), 0), (punch + b"x", (B_IP, PORT), 7)]
            assert a.engine.take_punch() == []
            # the daemon's answers leave from the socket it names
            a.engine.send_punch(b"\x02reply", (B_IP, PORT), 7)
            assert peer.inbox.take() == (b"\x02reply", (A_IP, 41000))
            a.engine.send_punch(b"\x02lost", (B_IP, PORT), 8)
            assert a.engine.drops == {"no such socket": 1}
            a.engine.release_socket(7)
            peer.sendto(punch, (A_IP, 41000))
            await trio.sleep(1)
            assert a.engine.take_punch() == [] and extra.inbox.closed
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("password", [b"sesame", None], ids=["encrypted", "plain"])
def test_a_punched_link_runs_from_its_extra_socket_and_never_on_the_fast_path(
        password: bytes | None) -> None:
    async def main() -> None:
        net = MemoryNetwork(seed=4)
        a = Host(0x0A0000000001, "a", net.udp((A_IP, PORT)), password=password, seed=4)
        b = Host(0x0B0000000002, "b", net.udp((B_IP, PORT)), password=password, seed=104)
        a.other, b.other = b, a
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            nursery.start_soon(b.run)
            await trio.sleep(0)
            a.engine.adopt_socket(3, net.udp((A_IP, 41000)))
            # both ends know the punched path: A sends from its socket 3 to B's main one
            a.engine.punched_path(1, (B_IP, PORT), 3)
            b.engine.punched_path(1, (A_IP, 41000))
            now = trio.current_time()
            a.mesh.connection_made(1, outbound=True, remote_address=f"{B_IP}:{PORT}",
                                   target=None, now=now)
            b.mesh.connection_made(1, outbound=False, remote_address=f"{A_IP}:41000",
                                   target=None, now=now)
            a.poke()
            b.poke()
            await eventually("established", lambda: established(a, b))
            assert b.sleeve()["udp_address"] == f"{A_IP}:41000"
            assert a.sleeve()["punched"] and b.sleeve()["punched"]
            assert a.engine.sockets_in_use() == {3}
            await crosses(a, b, b"through the punched path", b"\xff" * 6, MAC_A)
            await crosses(b, a, b"and back", MAC_A, MAC_B)
            if password is None:   # eligible for the fast path, were it not punched
                assert "through NAT" in a.connection()["overlay_reason"]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_peer_losing_whole_messages_gets_super_frames_in_pieces() -> None:
    """B loses one fragment of a sealed super-frame: when A's next message completes, B
    counts the first lost and tells A (an authenticated heartbeat); A then seals its TCP
    super-frames as pieces of LOSSY_UNIT_SEGS segments, each its own message, which B's
    kernel turns into exactly the original's segments, each with a parity fragment that
    rebuilds it when one of its fragments is lost; after LOSS_HOLD, whole again."""
    def tcp(seq: int) -> bytes:
        raw = super_frame(False, bytes(range(256)) * 240, 1200, seq=seq)  # 52 segments
        return raw[:10] + MAC_B + MAC_A + raw[22:]

    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        await crosses(b, a, b"B is here", MAC_A, MAC_B)  # A learns B's MAC
        dropped: list[bytes] = []

        def drop_one(src: Any, dst: Any, data: bytes) -> bool:
            if not dropped and sleeve_frag.is_fragment(data) and data[2] == 2:
                dropped.append(data)
                return True
            return False

        net.drop = drop_one
        a.tap.inject(tcp(1000))
        a.tap.inject(tcp(70000))
        with trio.fail_after(5):
            second = await b.tap.receive()
        assert dropped and second == tcp(70000)  # the first never came out
        await eventually("A told", lambda: a.sleeve()["small_units"], timeout=5)
        assert b.sleeve()["messages_lost"] == 1 and not b.sleeve()["small_units"]
        assert b.engine.drops == {"incomplete message": 1}
        told = trio.current_time()
        # the pieces come with parity: one lost fragment of a piece is rebuilt at B
        parities: list[bytes] = []

        def drop_a_middle_one(src: Any, dst: Any, data: bytes) -> bool:
            if sleeve_frag.is_fragment(data) and data[1] == sleeve_frag.PARITY:
                parities.append(data)
            if len(dropped) == 1 and sleeve_frag.is_fragment(data) and data[1] == \
                    sleeve_frag.FRAGMENT and data[2] == 1:
                dropped.append(data)
                return True
            return False

        net.drop = drop_a_middle_one
        a.tap.inject(tcp(140000))
        pieces = [await b.tap.receive() for _ in range(-(-52 // LOSSY_UNIT_SEGS))]
        assert [s for p in pieces for s in kernel_segments(p)] == scratch_segments(tcp(140000))
        assert len(dropped) == 2 and len(parities) == len(pieces)
        assert b.sleeve()["messages_rebuilt"] == 1 and b.sleeve()["messages_lost"] == 1
        assert b.engine.drops == {"incomplete message": 1}  # nothing more lost
        await trio.sleep(told + LOSS_HOLD - trio.current_time() + 0.1)
        assert not a.sleeve()["small_units"]
        a.tap.inject(tcp(210000))
        with trio.fail_after(5):
            assert await b.tap.receive() == tcp(210000)
        assert not b.tap.written

    run_pair(scenario, vnet=(True, True))


def test_a_run_of_acks_read_in_one_drain_crosses_as_its_last() -> None:
    """B's container acknowledges three super-frames at once: B's drain seals one message
    with the last ACK in the first one's place (with a duplicate and a SACK kept), and A's
    container gets that; A's counters and B's say how many were thinned."""
    def macs(frame: bytes) -> bytes:
        return frame[:10] + MAC_A + MAC_B + frame[22:]

    sack = b"\x01\x01\x05\x0a" + bytes(8)
    run = [macs(ack_frame(False, n)) for n in (1000, 2000, 2000, 3000)]
    run.insert(2, macs(ack_frame(False, 2500, options=sack)))

    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        a.tap.inject(frame(MAC_B, MAC_A, b"A is here", True))  # B learns A's MAC
        with trio.fail_after(5):
            await b.tap.receive()
        for f in run:
            b.tap.inject(f)
        with trio.fail_after(5):
            got = [await a.tap.receive() for _ in range(3)]
        # 2000 replaced 1000, the SACK and the duplicate 2000 stayed, then 3000 replaced
        # the duplicate (the flow's latest pure ACK); the order of what crosses is kept
        assert got == [run[1], run[2], run[4]]
        await trio.sleep(1)
        assert not a.tap.written
        assert b.sleeve()["acks_thinned"] == 2 and b.sleeve()["packets_out"] == 5
        assert a.sleeve()["packets_in"] == 3

    run_pair(scenario, vnet=(True, True))
