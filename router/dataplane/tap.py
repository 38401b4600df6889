"""The router's TAP device: Ethernet frames between the ``weft`` bridge and the router.

Theory of operation
-------------------
Opening /dev/net/tun and ``TUNSETIFF`` with ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`` makes
(or re-attaches to) the device ``weft-tap`` in the namespace the file was opened in; the
device lives as long as the file is open. With ``IFF_VNET_HDR`` every frame read or
written is prefixed by a 10-byte ``virtio_net_hdr``::

     0      1          2        4          6           8             10
    ┌──────┬──────────┬────────┬──────────┬───────────┬─────────────┬──────────────────┐
    │flags │ gso_type │hdr_len │ gso_size │csum_start │ csum_offset │ Ethernet frame … │
    └──────┴──────────┴────────┴──────────┴───────────┴─────────────┴──────────────────┘
     u8      u8         u16 le   u16 le     u16 le      u16 le

``TUNSETOFFLOAD`` tells the kernel what the reader copes with. With checksum and TSO
offloads on, a TCP stream from a container reaches us as ~64 KiB *super-frames*
(``gso_type`` TCPV4/TCPV6, ``NEEDS_CSUM``) instead of MTU-sized frames: the router never
computes a checksum or splits a segment. It forwards header and frame as one unit and the
receiving router writes them back unchanged; the receiving kernel segments (or delivers
the super-frame whole to a local socket). USO (UDP segmentation) is asked for when the
kernel knows it (Linux >= 6.2), and quietly left off otherwise; ``offloads`` records what
was accepted.

The file is non-blocking: the router waits for readiness once and drains with
``read`` (or ``read_into``) until it raises ``BlockingIOError``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from types import TracebackType

import trio

from weftnet.router.host.netdev import BRIDGE, TAP, NetdevError, NetnsRef, enslave, run_in_netns

__all__ = [
    "OFFLOAD_FLAGS",
    "PLAIN_VNET_HDR",
    "READ_SIZE",
    "VNET_HDR_LEN",
    "Tap",
]

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOAD_FLAGS = {
    "csum": TUN_F_CSUM,
    "tso4": TUN_F_TSO4,
    "tso6": TUN_F_TSO6,
    "tso_ecn": TUN_F_TSO_ECN,
    "uso4": TUN_F_USO4,
    "uso6": TUN_F_USO6,
}
# Most wanted first; each later set is what we settle for when the kernel refuses the one
# before (TSO needs CSUM; USO exists since Linux 6.2).
_OFFLOAD_TRIES = (
    ("csum", "tso4", "tso6", "tso_ecn", "uso4", "uso6"),
    ("csum", "tso4", "tso6", "tso_ecn"),
    ("csum", "tso4", "tso6"),
    ("csum",),
)

VNET_HDR_LEN = 10
# A header that says "nothing to do": for frames the router makes itself (ARP, ICMP).
PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)
# Enough for the largest frame the kernel hands over: a 64 KiB GSO packet, its Ethernet
# header and the virtio header, with room to spare.
READ_SIZE = 1 << 17

_IFREQ = struct.Struct("16sH22x")


class Tap:
    """An open TAP device; make one with ``Tap.open``. Not thread-safe."""

    __slots__ = ("_fd", "name", "vnet_hdr", "offloads", "mtu")

    def __init__(self, fd: int, name: str, vnet_hdr: bool, offloads: frozenset[str], mtu: int):
        self._fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.offloads = offloads
        self.mtu = mtu

    @classmethod
    def open(
        cls,
        name: str = TAP,
        *,
        bridge: str = BRIDGE,
        mtu: int,
        vnet_hdr: bool = True,
        offload: bool = True,
        netns: str | NetnsRef | None = None,
    ) -> Tap:
        """Create (or take over) TAP ``name`` in ``netns``, up, MTU ``mtu``, port of ``bridge``.

        ``offload`` (only with ``vnet_hdr``) asks for checksum, TSO and USO offloads, keeping
        what the kernel accepts in ``offloads``. An existing idle device of that name is
        re-used; one held open by another process raises ``NetdevError`` (EBUSY).
        """
        if not name or len(name) > 15:
            raise NetdevError(f"bad TAP name {name!r} (1-15 characters)")
        want = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)

        def make() -> tuple[int, str]:
            # The device is created in the namespace of the opener, so open it in there.
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), want))
            except BaseException:
                os.close(fd)
                raise
            return fd, _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()

        try:
            fd, real = run_in_netns(netns, make)
        except FileNotFoundError:
            raise NetdevError("no /dev/net/tun: the tun kernel module is missing") from None
        except OSError as exc:
            hint = " (another router holds it?)" if exc.errno == errno.EBUSY else ""
            raise NetdevError(f"cannot open TAP {name}: {os.strerror(exc.errno or 0)}{hint}") from None
        try:
            offloads: frozenset[str] = frozenset()
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                offloads = _set_offloads(fd) if offload else frozenset()
            if not offloads:
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
            enslave(real, bridge, mtu=mtu, netns=netns)
        except OSError as exc:
            os.close(fd)
            raise NetdevError(f"cannot set up TAP {real}: {os.strerror(exc.errno or 0)}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, real, vnet_hdr, offloads, mtu)

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O on a closed TAP")
        return self._fd

    async def wait_readable(self) -> None:
        """Until a frame can be read (the engine's ``TapPort``)."""
        await trio.lowlevel.wait_readable(self.fileno())

    def read(self, size: int = READ_SIZE) -> bytes:
        """Read one frame (virtio header first when ``vnet_hdr``) of at most ``size`` bytes.

        Raises ``BlockingIOError`` when no frame is queued. ``size`` below ``READ_SIZE``
        truncates super-frames; 64 KiB and a little suffice for what the kernel hands over.
        """
        return os.read(self._fd, size)

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Read one frame (virtio header first when ``vnet_hdr``) into ``buf``; its length.

        Raises ``BlockingIOError`` when no frame is queued (never returns 0 for that).
        ``buf`` should hold ``READ_SIZE`` bytes: a shorter buffer truncates super-frames.
        """
        return os.readv(self.fileno(), [buf])

    def write(self, frame: bytes | bytearray | memoryview) -> None:
        """Hand one frame (virtio header first when ``vnet_hdr``) to the bridge.

        The kernel rejects a frame with an inconsistent virtio header with ``OSError``
        (EINVAL): a frame from the network that does so counts as malformed. A TAP write
        does not block; the kernel drops instead when its queues are full.
        """
        os.write(self.fileno(), frame)

    def writev(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Like ``write`` for one frame given in pieces (e.g. header, then frame)."""
        os.writev(self.fileno(), parts)

    def close(self) -> None:
        """Close the file; the (non-persistent) device disappears with it. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __enter__(self) -> Tap:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<Tap {self.name} {state} vnet_hdr={self.vnet_hdr} offloads={sorted(self.offloads)}>"


def _set_offloads(fd: int) -> frozenset[str]:
    """Ask for the best offload set the kernel accepts; what was granted."""
    for names in _OFFLOAD_TRIES:
        flags = 0
        for n in names:
            flags |= OFFLOAD_FLAGS[n]
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                continue
            raise
        return frozenset(names)
    return frozenset()
