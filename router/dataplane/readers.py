"""Who reads the sleeve's ports: trio tasks, or a thread of the data plane's own.

The engine (router/dataplane/engine.py) drains a port with one call that reads up to a
batch and returns True if there may be more. Something must wait for the port to become
readable and call it:

- ``TrioReaders``: a trio task per port, as every other task of the daemon. Used with the
  in-memory ports of the tests (router/dataplane/doubles.py), under trio's virtual clock.
- ``ThreadReaders``: one thread waits on all the ports' file descriptors with ``epoll`` and
  drains each one that is ready, holding the engine's lock. The daemon uses it with the real
  TAP and sockets: a wake costs the thread an ``epoll_wait`` return, where a trio task waits
  for the whole run loop (measured, one ping container to container across the encrypted
  sleeve, 2 routers: 1.18-1.33 ms with trio tasks, 0.96-1.00 ms with the thread), and the
  trio thread's work (gossip, API, timers) no longer stands in the data's way.

The thread shares the interpreter with trio: the engine's lock (an ``RLock``) is held by
whichever thread is in the engine, so every entry from the daemon's side takes it too
(engine.py: ``locked``). The thread never starts trio tasks and never talks to the mesh:
what its datagrams ask of the link machines beyond the data itself waits for the trio
thread (engine.py: ``_service``).
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any, Protocol, TypeVar

import trio

Drain = Callable[[], bool]  # reads up to a batch; True if there may be more
F = TypeVar("F", bound=Callable[..., Any])


def locked(method: F) -> F:
    """A method of an object with a ``_lock``, entered from the trio thread while the data
    thread may be in the object."""
    @wraps(method)
    def under_lock(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return under_lock  # type: ignore[return-value]


class Readable(Protocol):
    async def wait_readable(self) -> None: ...


class TrioReaders:
    """A trio task per port."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._pending: list[tuple[Readable, Drain, Callable[[], bool]]] = []
        self.ident: int | None = None  # no thread of ours

    def add(self, port: Any, drain: Drain, alive: Callable[[], bool] = lambda: True) -> None:
        """Read ``port`` while ``alive()``; its ``wait_readable`` raising ends the task
        (a closed extra socket) unless the port must always be read."""
        if self._nursery is None:
            self._pending.append((port, drain, alive))
        else:
            self._nursery.start_soon(self._loop, port, drain, alive)

    def remove(self, port: object) -> None:
        """The port's task ends with ``alive()`` false or when the port closes."""

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for args in self._pending:
                nursery.start_soon(self._loop, *args)
            self._pending.clear()
            await trio.sleep_forever()

    @staticmethod
    async def _loop(port: Readable, drain: Drain, alive: Callable[[], bool]) -> None:
        while alive():
            try:
                await port.wait_readable()
            except (trio.ClosedResourceError, OSError):
                if alive():
                    raise
                return
            while drain() and alive():
                await trio.sleep(0)


class ThreadReaders:
    """One thread, ``epoll`` on every port, each ready port drained a batch at a time in
    turn (level-triggered: a port with more is ready again at once), under ``lock``."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._epoll = select.epoll()
        self._drains: dict[int, Drain] = {}
        self._stop_r, self._stop_w = os.pipe()
        self._epoll.register(self._stop_r, select.EPOLLIN)
        self.ident: int | None = None  # the thread's, while it runs

    def add(self, port: Any, drain: Drain, alive: Callable[[], bool] = lambda: True) -> None:
        """``port``: anything with a ``fileno()`` (the TAP, a socket port). ``alive`` is
        TrioReaders'; here a port is read until ``remove``."""
        fd = port.fileno()
        self._drains[fd] = drain
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, port: Any) -> None:
        """Before the port closes (its number may be reused at once)."""
        fd = port.fileno()
        if self._drains.pop(fd, None) is not None and not self._epoll.closed:
            self._epoll.unregister(fd)

    async def run(self) -> None:
        """Until cancelled; an exception in the thread ends it here too."""
        token = trio.lowlevel.current_trio_token()
        ended = trio.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                self._loop()
            except BaseException as exc:  # handed to the trio thread, raised there
                failure.append(exc)
            finally:
                token.run_sync_soon(ended.set)

        thread = threading.Thread(target=main, name="weft-data", daemon=True)
        thread.start()
        try:
            await ended.wait()
            if failure:
                raise failure[0]
        finally:
            os.write(self._stop_w, b"x")
            thread.join(10)  # it leaves within a batch
            self._epoll.close()
            os.close(self._stop_r)
            os.close(self._stop_w)

    def _loop(self) -> None:
        self.ident = threading.get_ident()
        try:
            poll, stop, drains, lock = self._epoll.poll, self._stop_r, self._drains, self._lock
            while True:
                for fd, _ in poll():
                    if fd == stop:
                        return
                    with lock:
                        drain = drains.get(fd)  # removed meanwhile: skip it
                        if drain is not None:
                            drain()
        finally:
            self.ident = None
