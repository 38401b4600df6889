"""The data plane read by its own thread (router/dataplane/readers.py: ThreadReaders), as the
daemon runs it: two engines in one process over real UDP sockets on loopback (127.0.0.1 and
127.0.0.2) and socket-pair TAPs, in real time. The link comes up only if what the thread
hands the trio thread (heartbeat answers: engine ``_service``) is done there, frames cross
both ways through the threads, and the threads are gone when the engines stop."""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from tests.unit.test_engine import MAC_A, MAC_B, Host, established, frame, run_connected
from tests.unit.test_engine import eventually as polled
from weftnet.proto import punchwire
from weftnet.router.dataplane import udpsock
from weftnet.router.dataplane.doubles import SocketTap
from weftnet.router.dataplane.ports import UdpSocketPort
from weftnet.router.dataplane.readers import ThreadReaders

A_IP, B_IP = "127.0.0.1", "127.0.0.2"

Scenario = Callable[[Host, Host, int], Awaitable[None]]


def _free_port() -> int:
    """A UDP port free on both loopback addresses (the sleeve's port is one for both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((A_IP, 0))
            port = probe.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                    other.bind((B_IP, port))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no UDP port free on both loopback addresses")


def run_threaded(scenario: Scenario, *, password: bytes | None = b"sesame") -> None:
    port = _free_port()

    async def main() -> None:
        hosts = []
        for name, nick, ip, seed in ((0x0A0000000001, "a", A_IP, 1), (0x0B0000000002, "b", B_IP, 101)):
            udp = UdpSocketPort(udpsock.open_udp(port, ip), gro=False)
            hosts.append(Host(name, nick, udp, password=password, seed=seed, tap=SocketTap(nick),
                              threaded=True))
        a, b = hosts
        for h in hosts:
            h.engine.port = port  # what the link machines say in their heartbeats
        try:
            await run_connected(a, b, (A_IP, B_IP), port, lambda: scenario(a, b, port), 30)
        finally:
            for h in hosts:
                h.engine.close()

    trio.run(main)


async def eventually(what: str, check: Callable[[], bool]) -> None:
    await polled(what, check, timeout=10.0, step=0.01)


async def crosses(src: Host, dst: Host, data: bytes, dst_mac: bytes, src_mac: bytes) -> None:
    """A frame written by ``src``'s bridge comes out at ``dst``'s, unchanged."""
    sent = frame(dst_mac, src_mac, data)
    src.tap.bridge.send(sent)
    got = await trio.to_thread.run_sync(dst.tap.bridge.recv, 65536)
    assert got == sent


def _readers(h: Host) -> ThreadReaders:
    readers = h.engine._readers
    assert isinstance(readers, ThreadReaders)
    return readers


@pytest.mark.parametrize("password", [b"sesame", None], ids=["encrypted", "plain"])
def test_frames_cross_through_the_data_threads(password: bytes | None) -> None:
    seen: list[ThreadReaders] = []
    deciders: set[int] = set()  # the threads that decided a link's overlay

    async def scenario(a: Host, b: Host, port: int) -> None:
        for h in (a, b):
            h.tap.bridge.settimeout(5)
            decide = h.engine._decide

            def on_trio_only(*args: Any, _decide: Any = decide) -> None:
                deciders.add(threading.get_ident())
                _decide(*args)
            h.engine._decide = on_trio_only  # type: ignore[method-assign]
        await eventually("established", lambda: established(a, b))
        # the heartbeat answers that brought the links up came in on the data threads; what
        # followed (the overlay, told to the mesh) was done on the trio thread
        assert deciders == {threading.get_ident()}
        ra, rb = _readers(a), _readers(b)
        seen.extend((ra, rb))
        main = threading.get_ident()
        assert ra.ident not in (None, main) and rb.ident not in (None, main, ra.ident)
        await crosses(a, b, b"hello, everyone", b"\xff" * 6, MAC_A)
        await crosses(b, a, b"hello A, from B", MAC_A, MAC_B)   # A's MAC was learnt
        for i in range(20):
            await crosses(a, b, bytes([i]) * 1300, MAC_B, MAC_A)
        assert a.sleeve()["packets_out"] == 21 and b.sleeve()["packets_in"] == 21
        assert a.sleeve()["encrypted_data"] is (password is not None)
        assert a.engine.drops == {} and b.engine.drops == {}

    run_threaded(scenario, password=password)
    assert seen and all(r.ident is None for r in seen)  # both threads left with their engines


def test_an_extra_socket_is_read_by_the_thread_until_released() -> None:
    async def scenario(a: Host, b: Host, port: int) -> None:
        await eventually("established", lambda: established(a, b))
        extra = UdpSocketPort(udpsock.open_udp(0, A_IP), gro=False)
        addr = extra.sock.getsockname()
        a.engine.adopt_socket(1, extra)
        punch = bytes([punchwire.FAMILY]) + b"a punch datagram"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind((A_IP, 0))
            sender.sendto(punch, addr)
            inbox: list[tuple[bytes, tuple[str, int], int]] = []
            await eventually("the punch datagram", lambda: bool(inbox.extend(a.engine.take_punch())
                                                                or inbox))
            assert inbox == [(punch, sender.getsockname(), 1)]
            a.engine.release_socket(1)
            assert extra.sock.fileno() == -1 and len(_readers(a)._drains) == 2  # TAP, socket
            await crosses(a, b, b"still carried", b"\xff" * 6, MAC_A)

    run_threaded(scenario)
