"""UDP sockets for the sleeve: big buffers, GSO sends, GRO receives, DF probes for PMTU.

Theory of operation
-------------------
Python pays about a microsecond per system call, so the sleeve moves many datagrams per
call. Sending, one ``sendmsg`` with a ``UDP_SEGMENT`` control message hands the kernel up
to 64 equal segments (the last may be shorter) that leave as separate datagrams::

    data: ┌── seg ──┬── seg ──┬── seg ──┬─ tail ─┐   one sendmsg, cmsg (SOL_UDP, 103, u16 seg)
          └────┬────┴────┬────┴────┬────┴───┬────┘
             dgram     dgram     dgram    dgram      on the wire

Receiving, ``UDP_GRO`` lets the kernel hand back a train of same-sized datagrams from one
sender in one ``recvmsg`` with their segment size in a control message (the last may be
shorter); a lone datagram comes without it. ``recv_batch`` returns that size, or None.

The data socket does not set DF (``IP_PMTUDISC_DONT``): a sealed batch the kernel must
fragment still arrives. Path MTU discovery uses a separate connected socket that sets DF
on every datagram (``probe_sender``): the kernel refuses locally what exceeds the route
MTU (``EMSGSIZE``), the network drops the rest, and ``route_mtu`` reads the kernel's
current idea of the path MTU (``IP_MTU``).

Both families: with no ``host`` (all addresses) the data socket is one AF_INET6 socket with
``IPV6_V6ONLY`` off, when the host has IPv6, so one socket, one reader and one port serve
IPv4 and IPv6 peers alike (the sleeve's socket index 0 stays *the* socket; GRO and GSO work
the same on it). IPv4 peers then appear as IPv4-mapped addresses (``::ffff:a.b.c.d``):
``normal_address`` turns those back into plain IPv4 on the way in and ``socket_address``
maps plain IPv4 on the way out, so everything above the socket (the link machine that
follows addresses, status, logs) sees one form only. A ``host`` given (``--host``) binds
its own family alone. The options that set DF differ per family: ``IP_MTU_DISCOVER`` /
``IP_MTU`` for IPv4 (also what an AF_INET6 socket uses for mapped IPv4), and
``IPV6_MTU_DISCOVER`` / ``IPV6_DONTFRAG`` / ``IPV6_MTU`` for IPv6; probe sockets take the
family of the peer they probe.

Every call here is synchronous and non-blocking: the router waits for readiness once and
then drains until ``BlockingIOError``.
"""

from __future__ import annotations

import errno
import socket
import struct
import weakref
from typing import Any

from weftnet.router.host.netdev import NetdevError, NetnsRef, run_in_netns

__all__ = [
    "IP_PMTUDISC_DO",
    "IP_PMTUDISC_DONT",
    "IP_PMTUDISC_PROBE",
    "MAX_GSO_SEGMENTS",
    "normal_address",
    "socket_address",
    "MAX_UDP_PAYLOAD",
    "SOCKET_BUFFER",
    "enable_gro",
    "open_udp",
    "probe_sender",
    "recv_batch",
    "route_mtu",
    "send_segments",
]

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_MTU_DISCOVER = 10
IP_MTU = 14
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_DO = 2
IP_PMTUDISC_PROBE = 3
IPV6_MTU_DISCOVER = 23  # same values as IP_PMTUDISC_*
IPV6_MTU = 24
IPV6_DONTFRAG = 62
MAPPED_PREFIX = "::ffff:"

SOCKET_BUFFER = 8 << 20
MAX_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS in the kernel
MAX_UDP_PAYLOAD = 65507  # 65535 - 20 (IPv4) - 8 (UDP); IPv6 carries 65527, we keep one limit
_U16 = struct.Struct("=H")
# The ancillary space one GRO segment-size message needs.
GRO_ANCBUF = socket.CMSG_SPACE(_U16.size)

# Sockets on which the kernel refused UDP_SEGMENT for good (no GSO support): send in a loop.
_no_gso: weakref.WeakSet[socket.socket] = weakref.WeakSet()

Address = tuple[str, int]


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:  # not CAP_NET_ADMIN: as much as net.core.[rw]mem_max allows
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def normal_address(addr: tuple[Any, ...]) -> Address:
    """A socket's address as the rest of the router writes it: ``(host, port)``, IPv4-mapped
    IPv6 (``::ffff:a.b.c.d``) as plain IPv4; an IPv6 host keeps its ``%zone`` if any."""
    host = addr[0]
    if host.startswith(MAPPED_PREFIX) and "." in host:
        host = host[len(MAPPED_PREFIX):]
    return host, addr[1]


def socket_address(family: int, addr: Address) -> Address:
    """``addr`` as a socket of ``family`` takes it: IPv4 mapped for an AF_INET6 socket."""
    if family == socket.AF_INET6 and ":" not in addr[0]:
        return MAPPED_PREFIX + addr[0], addr[1]
    return addr


def _family(host: str, dual: bool) -> int:
    """The family of a socket for ``host`` ('' = every address: IPv6 and IPv4 if ``dual``
    and we can)."""
    if host:
        return socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.AF_INET6 if dual and socket.has_ipv6 else socket.AF_INET


def _set_pmtudisc(sock: socket.socket, mode: int) -> None:
    """DF policy on both families' traffic of ``sock`` (an AF_INET6 socket carries mapped
    IPv4 too: the IPv4 option applies to that)."""
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, mode)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, mode)


def open_udp(
    port: int,
    host: str = "",
    *,
    buffer: int = SOCKET_BUFFER,
    pmtudisc: int = IP_PMTUDISC_DONT,
    dual: bool = False,
    netns: str | NetnsRef | None = None,
) -> socket.socket:
    """A UDP socket bound to ``host:port``: non-blocking, SO_REUSEADDR, big buffers.

    ``host`` '' binds every IPv4 address, or with ``dual`` every address of both families
    (one AF_INET6 socket, IPV6_V6ONLY off; AF_INET where the host has no IPv6: the router's
    sockets); an address binds its own family only.
    Buffers are forced to ``buffer`` bytes (``SO_*BUFFORCE``; capped by ``*mem_max``
    without CAP_NET_ADMIN). ``pmtudisc`` defaults to never setting DF.
    """

    def make(family: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and not host:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer)
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer)
            _set_pmtudisc(sock, pmtudisc)
            sock.bind((host or ("::" if family == socket.AF_INET6 else ""), port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    family = _family(host, dual)
    try:
        try:
            return run_in_netns(netns, lambda: make(family))
        except OSError as exc:
            if host or family != socket.AF_INET6 or exc.errno not in (
                    errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                raise
            return run_in_netns(netns, lambda: make(socket.AF_INET))  # IPv6 off in this kernel
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
        raise NetdevError(f"cannot open UDP {where}: {exc.strerror or exc}") from None


def enable_gro(sock: socket.socket) -> bool:
    """Turn on ``UDP_GRO`` (receive trains of datagrams at once); False if unsupported."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


def recv_batch(
    sock: socket.socket, buf: bytearray | memoryview, ancbuf_size: int = GRO_ANCBUF
) -> tuple[int, int | None, Address]:
    """Receive into ``buf``: (bytes, GRO segment size or None, sender address).

    With GRO the bytes are consecutive datagrams of ``segment size`` bytes each, the last
    possibly shorter; without a segment size they are one datagram. Raises
    ``BlockingIOError`` when nothing is queued. ``buf`` should hold 65535 bytes.
    """
    nbytes, ancdata, _flags, addr = sock.recvmsg_into([buf], ancbuf_size)
    seg: int | None = None
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _U16.size:
            seg = _U16.unpack_from(data)[0]
    if seg is not None and seg >= nbytes:
        seg = None  # one datagram after all
    return nbytes, seg, normal_address(addr)


def _chunks(total: int, seg_size: int) -> list[tuple[int, int]]:
    """Split ``total`` bytes into GSO calls: (start, end) with <= 64 segments, <= 65507 B."""
    if total <= MAX_UDP_PAYLOAD and total <= MAX_GSO_SEGMENTS * seg_size:
        return [(0, total)]  # one call (a fragmented sleeve message always fits one)
    per_call = min(MAX_GSO_SEGMENTS, max(1, MAX_UDP_PAYLOAD // seg_size)) * seg_size
    return [(i, min(i + per_call, total)) for i in range(0, total, per_call)]


def send_segments(
    sock: socket.socket, data: bytes | bytearray | memoryview, seg_size: int, addr: Address,
    family: int | None = None,
) -> int:
    """Send ``data`` to ``addr`` as datagrams of ``seg_size`` bytes (the last may be shorter).

    ``addr`` plain: IPv4 is mapped for an AF_INET6 socket (``socket_address``); ``family``
    is the socket's, when the caller knows it (``sock.family`` builds an enum each call).

    Uses ``UDP_SEGMENT`` (one call per 64 segments); where the kernel refuses it, sends
    the datagrams one by one. Returns the bytes sent: all of ``data``, or fewer when the
    socket buffer filled up part-way (a whole number of segments); raises
    ``BlockingIOError`` when not even the first datagram fitted.
    """
    if seg_size <= 0:
        raise ValueError(f"bad segment size {seg_size}")
    addr = socket_address(sock.family if family is None else family, addr)
    view = memoryview(data).cast("B")
    total = len(view)
    if total <= seg_size:
        return sock.sendto(view, addr)
    if seg_size > MAX_UDP_PAYLOAD:
        raise ValueError(f"segment size {seg_size} exceeds a UDP datagram")
    sent = 0
    if sock not in _no_gso:
        cmsg = [(SOL_UDP, UDP_SEGMENT, _U16.pack(seg_size))]
        for start, end in _chunks(total, seg_size):
            try:
                sock.sendmsg([view[start:end]], cmsg, 0, addr)
            except BlockingIOError:
                if sent:
                    return sent
                raise
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    _no_gso.add(sock)  # no GSO on this socket's route: never ask again
                elif exc.errno not in (errno.EINVAL, errno.EMSGSIZE):
                    raise  # those two: segments too big for the route; loop just this time
                return sent + _send_loop(sock, view[start:], seg_size, addr, sent)
            sent += end - start
        return sent
    return _send_loop(sock, view, seg_size, addr, 0)


def _send_loop(
    sock: socket.socket, view: memoryview, seg_size: int, addr: Address, already: int
) -> int:
    sent = 0
    for start in range(0, len(view), seg_size):
        try:
            sock.sendto(view[start : start + seg_size], addr)
        except BlockingIOError:
            if sent or already:
                return sent
            raise
        sent += min(seg_size, len(view) - start)
    return sent


def probe_sender(
    peer_addr: Address,
    *,
    mode: int = IP_PMTUDISC_PROBE,
    bind: Address = ("", 0),
    shared: bool = False,
    netns: str | NetnsRef | None = None,
) -> socket.socket:
    """A non-blocking UDP socket connected to ``peer_addr`` that sets DF on every datagram.

    Its family is the peer's (an IPv6 probe also sets ``IPV6_DONTFRAG``: the kernel never
    fragments it, even locally); ``bind`` is turned into that family's wildcard when it is
    the other family's (the data socket's ``::`` for an IPv4 peer).

    ``IP_PMTUDISC_PROBE`` (default) sends up to the route's MTU regardless of what the
    kernel learnt about the path; ``IP_PMTUDISC_DO`` also honours learnt path MTUs
    (``EMSGSIZE`` beyond either). The default is an ephemeral port. ``shared``: bind to
    the data socket's own address beside it (SO_REUSEADDR on both): the probes then leave
    from the data flow's very address and port, so a NAT on the way maps and filters them
    exactly as the data (a probe from another port gets its own mapping, which the NAT at
    the far end drops); while it is open the kernel hands this connected socket everything
    the peer sends to that port (the better match), so its reader must pass the data on.
    """
    if mode not in (IP_PMTUDISC_DO, IP_PMTUDISC_PROBE):
        raise ValueError("probe_sender needs IP_PMTUDISC_DO or IP_PMTUDISC_PROBE")

    family = socket.AF_INET6 if ":" in peer_addr[0] else socket.AF_INET
    host, port = bind[0], bind[1]
    if (":" in host) != (family == socket.AF_INET6):
        if host not in ("", "::", "0.0.0.0"):
            raise NetdevError(f"cannot probe {peer_addr[0]} from {host}: another family")
        host = ""
    if family == socket.AF_INET6 and not host:
        host = "::"

    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, mode)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, mode)
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.bind((host, port))
            sock.connect(peer_addr)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    try:
        return run_in_netns(netns, make)
    except OSError as exc:
        where = f"[{peer_addr[0]}]" if ":" in peer_addr[0] else peer_addr[0]
        raise NetdevError(f"cannot open a probe socket to {where}:{peer_addr[1]}: "
                          f"{exc.strerror or exc}") from None


def route_mtu(sock: socket.socket) -> int:
    """The kernel's path MTU for a connected socket's destination (``IP_MTU``, ``IPV6_MTU``)."""
    if sock.family == socket.AF_INET6:
        return sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
    return sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
