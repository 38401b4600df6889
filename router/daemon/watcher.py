"""The one writer of the fact "this container's namespace is gone".

Theory of operation. A container can vanish without a ``weft detach``: its namespace is
deleted (``ip netns del``, the process holding it exits) and the kernel destroys its veth
pair with it. ``NamespaceWatcher`` holds the namespace (``NetnsRef``: path and identity)
of every attached container and checks every ``WATCH_INTERVAL`` seconds that the path
still names that very namespace. When it does not, the watcher stops watching it, tells
every user (the DNS driver: its listener in there, its names; the IPAM driver: free the
addresses after the grace period) and drops the attachment's record (and resolv.conf)::

    attach ──watch(c, ref)──▶ ┌─────────┐ ──namespace_gone(c, replaced=False)──▶ DNS, IPAM
    detach ──unwatch(c)─────▶ │ watcher │ ──forget(c)──▶ attachments record
    every WATCH_INTERVAL ───▶ └─────────┘ ──pump()

Attaching a container name again while it names a *new* namespace means the old one is
gone, too: ``watch`` tells the users at once, with ``replaced=True`` (DNS drops the old
names and listener; IPAM keeps the addresses, since the container came back under the
same name), and the record stays (the attach rewrote it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import trio

from weftnet.router.host.netdev import NetnsRef

log = logging.getLogger("weft")

WATCH_INTERVAL = 1.0   # seconds between checks that attached namespaces still exist


class NamespaceUser(Protocol):
    """What the watcher tells: the DNS and IPAM drivers."""

    def namespace_gone(self, container: str, *, replaced: bool) -> None: ...


def namespace_exists(ref: NetnsRef) -> bool:
    """Whether ``ref.path`` still names the namespace ``ref`` was resolved to."""
    try:
        st = os.stat(ref.path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ref.key


class NamespaceWatcher:
    """Watches attached containers' namespaces; tells ``users`` when one is gone."""

    def __init__(self, users: Iterable[NamespaceUser], forget: Callable[[str], Awaitable[object]],
                 *, exists: Callable[[NetnsRef], bool] = namespace_exists,
                 interval: float = WATCH_INTERVAL) -> None:
        self.users = list(users)
        self._forget = forget
        self._exists = exists
        self.interval = interval
        self._watched: dict[str, NetnsRef] = {}

    def watched(self) -> dict[str, NetnsRef]:
        return dict(self._watched)

    def watch(self, container: str, ref: NetnsRef) -> None:
        """``container`` is attached in ``ref`` (again: a new namespace replaces the old)."""
        old = self._watched.get(container)
        self._watched[container] = ref
        if old is not None and old.key != ref.key:
            log.info("container %s is in a new namespace: the old one is gone", container)
            self._tell(container, replaced=True)

    def unwatch(self, container: str) -> None:
        """``container`` was detached."""
        self._watched.pop(container, None)

    def _tell(self, container: str, *, replaced: bool) -> None:
        for user in self.users:
            user.namespace_gone(container, replaced=replaced)

    async def check(self) -> list[str]:
        """Handle the containers whose namespace is gone; returns them."""
        gone: list[str] = []
        for container, ref in list(self._watched.items()):
            # a check of a ref that an attach replaced meanwhile (we awaited) is stale
            if self._watched.get(container) is not ref or self._exists(ref):
                continue
            del self._watched[container]
            log.info("container %s is gone: detaching it", container)
            self._tell(container, replaced=False)
            await self._forget(container)
            gone.append(container)
        return gone

    async def run(self, pump: Callable[[], None]) -> None:
        while True:
            await trio.sleep(self.interval)
            if await self.check():
                pump()
