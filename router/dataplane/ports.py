"""The data-plane engine's ports: what it needs of a TAP device and of a UDP socket.

The engine (router/dataplane/engine.py) moves bytes between two narrow ports, as
wireguard-go's device sits between its TUN and its bind. In production they are the TAP
device (router/dataplane/tap.py, which satisfies ``TapPort`` as it is) and ``UdpSocketPort``
below over the sleeve's UDP socket; tests plug in the in-memory doubles of
router/dataplane/doubles.py. Every call but ``wait_readable`` is synchronous and
non-blocking: the engine waits for readiness once, then drains until ``BlockingIOError``.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Protocol

import trio

from weftnet.router.dataplane import udpsock
from weftnet.router.host.netdev import NetdevError

Address = tuple[str, int]
Buffer = bytes | bytearray | memoryview


class TapPort(Protocol):
    """Ethernet frames to and from the bridge (each led by a virtio-net header when
    ``vnet_hdr``)."""

    name: str
    vnet_hdr: bool
    offloads: frozenset[str]

    async def wait_readable(self) -> None: ...

    def read(self, size: int) -> bytes:
        """One frame (at most ``size`` bytes). BlockingIOError when none is queued."""
        ...

    def write(self, frame: Buffer) -> None: ...

    def writev(self, parts: Sequence[Buffer]) -> None: ...

    def close(self) -> None: ...


class ProbePort(Protocol):
    """A datagram socket connected to one peer that sets DF on what it sends."""

    async def wait_readable(self) -> None: ...

    def send(self, data: Buffer) -> None:
        """OSError(EMSGSIZE) when the route cannot carry ``data`` unfragmented."""
        ...

    def recv(self, size: int) -> bytes:
        """One datagram; BlockingIOError when none is queued."""
        ...

    def route_mtu(self) -> int:
        """The largest IP packet the route to the peer carries, as the host sees it."""
        ...

    def close(self) -> None: ...


class UdpPort(Protocol):
    """Sealed sleeve datagrams to and from peers."""

    async def wait_readable(self) -> None: ...

    def recv_into(self, buf: bytearray | memoryview) -> tuple[int, int | None, Address]:
        """(bytes, GRO segment size or None, sender): one datagram, or with a segment size
        consecutive datagrams of that size (the last may be shorter). BlockingIOError when
        none is queued."""
        ...

    def sendto(self, data: Buffer, addr: Address) -> None: ...

    def send_segments(self, data: Buffer, seg_size: int, addr: Address) -> None:
        """``data`` as datagrams of ``seg_size`` bytes (the last may be shorter)."""
        ...

    def open_probe(self, addr: Address) -> ProbePort:
        """A DF probe port to ``addr`` (path MTU discovery); OSError if there can be none."""
        ...

    def close(self) -> None: ...


class ProbeSocket:
    """``ProbePort`` over a connected DF socket (udpsock.probe_sender)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    def send(self, data: Buffer) -> None:
        self.sock.send(data)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def route_mtu(self) -> int:
        return udpsock.route_mtu(self.sock)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)  # wakes a task waiting on it
            self.sock.close()


class UdpSocketPort:
    """``UdpPort`` over the sleeve's UDP socket (udpsock.open_udp), with GRO if granted.

    The engine speaks ``(host, port)`` with IPv4 plain (never ``::ffff:a.b.c.d``); on a
    dual-stack AF_INET6 socket this port maps IPv4 on the way out and back on the way in."""

    __slots__ = ("sock", "gro", "_v6")

    def __init__(self, sock: socket.socket, gro: bool) -> None:
        self.sock = sock
        self.gro = gro
        self._v6 = sock.family == socket.AF_INET6

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_into(self, buf: bytearray | memoryview) -> tuple[int, int | None, Address]:
        if self.gro:
            return udpsock.recv_batch(self.sock, buf)
        n, addr = self.sock.recvfrom_into(buf)
        return n, None, udpsock.normal_address(addr) if self._v6 else addr

    def sendto(self, data: Buffer, addr: Address) -> None:
        if self._v6 and ":" not in addr[0]:
            addr = udpsock.socket_address(socket.AF_INET6, addr)
        self.sock.sendto(data, addr)

    def send_segments(self, data: Buffer, seg_size: int, addr: Address) -> None:
        udpsock.send_segments(self.sock, data, seg_size, addr,  # maps IPv4 itself
                              socket.AF_INET6 if self._v6 else socket.AF_INET)

    def open_probe(self, addr: Address) -> ProbePort:
        try:
            return ProbeSocket(udpsock.probe_sender(addr, bind=self.sock.getsockname(),
                                                    shared=True))
        except NetdevError as exc:
            raise OSError(str(exc)) from None

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)  # wakes a task waiting on it
            self.sock.close()
