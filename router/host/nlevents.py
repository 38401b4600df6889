"""Netlink events: the kernel says when something in this namespace changed.

Looking at the whole picture (pyroute2's dump and decoder) costs Python time: on the
machine we measured, ~45 ms per look at the host's addresses, which, every 30 s, was a
quarter of an idle router's CPU. The kernel announces every change on the route netlink
socket's multicast groups instead (what ``ip monitor`` / ``bridge monitor`` listen to), so
a user looks again only when something changed there (and, as a backstop, rarely): one
socket, a wake-up per burst of events. Users: hole punching's host candidates (addresses
and links, router/daemon/punch_driver.py) and the fast path's MAC poll (the bridge's FDB,
router/dataplane/fastpath.py, with ``vxlan.bridge_fdb_changed`` to tell FDB changes from
the host's own neighbours).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio

RTNLGRP_LINK = 1
RTNLGRP_NEIGH = 3
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV6_IFADDR = 9
ADDRESS_GROUPS = (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR)
READ_SIZE = 65536


def events_socket(groups: tuple[int, ...]) -> socket.socket:
    """A non-blocking route netlink socket told of the changes in these groups."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, sum(1 << (g - 1) for g in set(groups))))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def address_events_socket() -> socket.socket:
    """Told of address and link changes (``ip monitor address link``)."""
    return events_socket(ADDRESS_GROUPS)


def _every(data: bytes) -> bool:
    return True


async def watch(sock: socket.socket, changed: Callable[[], None],
                relevant: Callable[[bytes], bool] = _every) -> None:
    """Call ``changed`` once per burst of events in which some batch of messages is
    ``relevant`` (by default, any). An overrun (ENOBUFS: the kernel dropped events) counts
    as a change."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        hit = False
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: events lost, so something changed
                hit = True
                break
            if not data:
                break
            hit = hit or relevant(data)
        if hit:
            changed()
