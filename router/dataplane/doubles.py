"""In-memory ports for the data-plane engine, shipped as wireguard-go ships tuntest and
bindtest: the engine's tests run over these exactly as production runs over the real ones.

* ``MemoryTap`` (a ``TapPort``): the test is the bridge. ``inject`` queues a frame for the
  engine to read; frames the engine writes wait in ``written`` (``receive`` awaits one).
* ``MemoryNetwork`` carries datagrams between ``MemoryUdp`` ports (``UdpPort``s) by address:
  delivery is immediate and in order, with seeded loss (``loss``, changeable at any time)
  and ``blocked`` destinations (a firewall dropping one port's traffic);
  ``rebind`` gives a port a new address (a NAT rebinding seen from the peer). DF probe ports
  (``open_probe``) refuse what exceeds ``route_mtu`` with EMSGSIZE, as the kernel does, and
  lose what exceeds ``path_mtu``; ordinary datagrams are carried whatever their size (the
  kernel would fragment them).
* ``udp_pair`` makes the common case: a network and two ports on it.

Waiting uses trio's parking lots, so under ``MockClock(autojump_threshold=0)`` the engines'
tasks block until a datagram or frame arrives and virtual time jumps to the next timer.
"""

from __future__ import annotations

import errno
import random
import socket
from collections import deque
from collections.abc import Callable, Sequence

import trio

from weftnet.proto.link import ip_udp_overhead
from weftnet.router.dataplane.ports import Address, Buffer, ProbePort
from weftnet.router.dataplane.udpsock import MAX_UDP_PAYLOAD


class _Inbox:
    """A queue a trio task can wait on; closing it wakes the waiter with ClosedResourceError."""

    __slots__ = ("items", "closed", "_lot")

    def __init__(self) -> None:
        self.items: deque[tuple[bytes, Address]] = deque()
        self.closed = False
        self._lot = trio.lowlevel.ParkingLot()

    async def wait(self) -> None:
        if not self.items and not self.closed:
            await self._lot.park()
        else:
            await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("port closed")

    def put(self, data: bytes, src: Address) -> None:
        self.items.append((data, src))
        self._lot.unpark_all()

    def take(self) -> tuple[bytes, Address]:
        if self.closed:
            raise OSError(errno.EBADF, "port closed")
        if not self.items:
            raise BlockingIOError(errno.EAGAIN, "nothing queued")
        return self.items.popleft()

    def close(self) -> None:
        self.closed = True
        self._lot.unpark_all()


class MemoryTap:
    """A TAP device whose bridge is the test."""

    def __init__(self, name: str = "memtap", *, vnet_hdr: bool = False,
                 offloads: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.offloads = offloads
        self.written: deque[bytes] = deque()
        self._in = _Inbox()
        self._out = trio.lowlevel.ParkingLot()

    # the bridge's side (the test)

    def inject(self, frame: bytes) -> None:
        """A frame from a container port: the engine reads it next."""
        self._in.put(bytes(frame), ("", 0))

    async def receive(self) -> bytes:
        """The next frame the engine wrote to the bridge."""
        while not self.written:
            await self._out.park()
        return self.written.popleft()

    # the engine's side (TapPort)

    async def wait_readable(self) -> None:
        await self._in.wait()

    def read(self, size: int) -> bytes:
        frame, _ = self._in.take()
        return frame[:size]

    def write(self, frame: Buffer) -> None:
        if self._in.closed:
            raise OSError(errno.EBADF, "TAP closed")
        self.written.append(bytes(frame))
        self._out.unpark_all()

    def writev(self, parts: Sequence[Buffer]) -> None:
        self.write(b"".join(parts))

    def close(self) -> None:
        self._in.close()


class MemoryNetwork:
    """UDP between in-memory ports, by address."""

    def __init__(self, *, loss: float = 0.0, seed: int = 0, route_mtu: int = 1500,
                 path_mtu: int = 1500) -> None:
        self.loss = loss
        self.rng = random.Random(seed)
        self.route_mtu = route_mtu
        self.path_mtu = path_mtu
        self.delivered = 0
        self.lost = 0
        self.blocked: set[Address] = set()  # destinations whose datagrams are all lost
        # a test's own choice of datagrams to lose: (src, dst, data) -> lose it?
        self.drop: Callable[[Address, Address, bytes], bool] | None = None
        self._at: dict[Address, _Inbox] = {}
        self._next_port = 40000

    def udp(self, addr: Address) -> MemoryUdp:
        return MemoryUdp(self, addr)

    def rebind(self, port: MemoryUdp, addr: Address) -> None:
        """``port`` now sends from, and receives at, ``addr`` (its old address is gone)."""
        self._unbind(port.addr)
        port.addr = addr
        self._bind(addr, port.inbox)

    def _bind(self, addr: Address, inbox: _Inbox) -> None:
        if addr in self._at:
            raise OSError(errno.EADDRINUSE, f"{addr[0]}:{addr[1]} in use")
        self._at[addr] = inbox

    def _unbind(self, addr: Address) -> None:
        self._at.pop(addr, None)

    def _ephemeral(self, host: str) -> Address:
        while (host, self._next_port) in self._at:
            self._next_port += 1
        return host, self._next_port

    def send(self, src: Address, dst: Address, data: Buffer, *, df: bool = False) -> None:
        if len(data) > MAX_UDP_PAYLOAD:
            raise OSError(errno.EMSGSIZE, "Message too long")
        inbox = self._at.get(dst)
        if (inbox is None or dst in self.blocked
                or (df and len(data) + ip_udp_overhead(dst) > self.path_mtu)
                or (self.loss and self.rng.random() < self.loss)
                or (self.drop is not None and self.drop(src, dst, bytes(data)))):
            self.lost += 1
            return
        self.delivered += 1
        inbox.put(bytes(data), src)


class MemoryUdp:
    """A UDP port on a MemoryNetwork (no GRO: one datagram per receive)."""

    def __init__(self, net: MemoryNetwork, addr: Address) -> None:
        self.net = net
        self.addr = addr
        self.inbox = _Inbox()
        net._bind(addr, self.inbox)

    async def wait_readable(self) -> None:
        await self.inbox.wait()

    def recv_into(self, buf: bytearray | memoryview) -> tuple[int, int | None, Address]:
        data, src = self.inbox.take()
        n = min(len(data), len(buf))
        buf[:n] = data[:n]
        return n, None, src

    def sendto(self, data: Buffer, addr: Address) -> None:
        self.net.send(self.addr, addr, data)

    def send_segments(self, data: Buffer, seg_size: int, addr: Address) -> None:
        view = memoryview(data)
        for start in range(0, len(view), seg_size):
            self.net.send(self.addr, addr, view[start:start + seg_size])

    def open_probe(self, addr: Address) -> ProbePort:
        return MemoryProbe(self.net, self.net._ephemeral(self.addr[0]), addr)

    def close(self) -> None:
        if self.net._at.get(self.addr) is self.inbox:
            self.net._unbind(self.addr)
        self.inbox.close()


class MemoryProbe:
    """A DF probe port: refuses what the route cannot carry, loses what the path cannot."""

    def __init__(self, net: MemoryNetwork, addr: Address, peer: Address) -> None:
        self.net = net
        self.addr = addr
        self.peer = peer
        self.inbox = _Inbox()
        net._bind(addr, self.inbox)

    async def wait_readable(self) -> None:
        await self.inbox.wait()

    def send(self, data: Buffer) -> None:
        if len(data) + ip_udp_overhead(self.peer) > self.net.route_mtu:
            raise OSError(errno.EMSGSIZE, "Message too long")
        self.net.send(self.addr, self.peer, data, df=True)

    def recv(self, size: int) -> bytes:
        data, _ = self.inbox.take()
        return data[:size]

    def route_mtu(self) -> int:
        return self.net.route_mtu

    def close(self) -> None:
        self.net._unbind(self.addr)
        self.inbox.close()


def udp_pair(a: Address, b: Address, *, loss: float = 0.0, seed: int = 0,
             route_mtu: int = 1500, path_mtu: int = 1500) -> tuple[MemoryUdp, MemoryUdp]:
    """Two UDP ports on one new network (``port.net``)."""
    net = MemoryNetwork(loss=loss, seed=seed, route_mtu=route_mtu, path_mtu=path_mtu)
    return net.udp(a), net.udp(b)


class SocketTap:
    """A TAP device with a file descriptor (what the data thread waits on, readers.py): one
    end of a datagram socket pair; the test is the bridge at the other end, ``bridge``."""

    def __init__(self, name: str = "socktap") -> None:
        self.name = name
        self.vnet_hdr = False
        self.offloads: frozenset[str] = frozenset()
        self._sock, self.bridge = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._sock)

    def read(self, size: int) -> bytes:
        return self._sock.recv(size)

    def write(self, frame: Buffer) -> None:
        self._sock.send(frame)

    def writev(self, parts: Sequence[Buffer]) -> None:
        self._sock.sendmsg(parts)

    def close(self) -> None:
        self._sock.close()
        self.bridge.close()
