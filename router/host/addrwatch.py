"""Address events: the kernel says when this host's addresses or links change.

Hole punching publishes the host's own addresses as candidates (router/daemon/punch_driver.py).
Listing them goes through pyroute2's netlink dump and decoder: on the machine we measured,
~45 ms of Python per look, which, every 30 s, was a quarter of an idle router's CPU. The
kernel announces every change on the route netlink socket's multicast groups instead (what
``ip monitor address link`` listens to), so the driver looks again only when something
changed there (and, as a backstop, rarely): one socket, no message decoded, a wake-up per
change.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio

RTNLGRP_LINK = 1
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV6_IFADDR = 9
GROUPS = (1 << (RTNLGRP_LINK - 1)) | (1 << (RTNLGRP_IPV4_IFADDR - 1)) | (
    1 << (RTNLGRP_IPV6_IFADDR - 1))
READ_SIZE = 65536


def address_events_socket() -> socket.socket:
    """A non-blocking netlink socket told of address and link changes in this namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, GROUPS))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def watch(sock: socket.socket, changed: Callable[[], None]) -> None:
    """Call ``changed`` once per burst of events (the messages themselves are not read:
    whatever changed, the caller looks at the whole picture again). An overrun (ENOBUFS:
    the kernel dropped events) is a change too."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                if not sock.recv(READ_SIZE):
                    break
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: events lost, so something changed
                break
        changed()
