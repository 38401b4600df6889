"""router/host/nlevents.py: one call per burst of relevant events (a datagram socket pair
stands in for the netlink socket: the loop only reads datagrams)."""

from __future__ import annotations

import socket

import trio

from weftnet.router.host import nlevents


def test_one_call_per_burst_and_only_for_relevant_batches() -> None:
    calls: list[int] = []

    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        with a, b:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(nlevents.watch, a, lambda: calls.append(1),
                                   lambda data: data.startswith(b"fdb"))
                for burst, want in (([b"fdb 1", b"arp", b"fdb 2"], 1), ([b"arp", b"nd"], 1),
                                    ([b"fdb 3"], 2)):
                    for msg in burst:
                        b.send(msg)
                    await trio.sleep(0.05)
                    assert len(calls) == want, (burst, calls)
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_groups_make_the_bind_mask() -> None:
    sock = nlevents.events_socket((nlevents.RTNLGRP_NEIGH, nlevents.RTNLGRP_NEIGH))
    with sock:
        assert sock.getsockname()[1] == 1 << (nlevents.RTNLGRP_NEIGH - 1)
