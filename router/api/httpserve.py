"""The API's HTTP server: hypercorn's per-connection handling behind our own accept loop,
so that the number of open connections has a cap.

hypercorn serves every connection it accepts, however many: each costs ~85 KB (its
protocol state, a task group, buffers), and a local process holding 400 connections open
cost the router 34 MB. ``serve`` accepts on the listening socket itself and hands each
connection to hypercorn's ``TCPServer``; with ``max_connections`` open, the *oldest* one
is closed to make room for the new one. A flood of held connections (slowloris) thus
costs at most the cap, and cannot lock anyone out: a CLI call connects, asks and leaves
within milliseconds, as the newest connection. Hypercorn's own timers still apply: a
connection without a request is closed after ``keep_alive_timeout``.

Open connections and evictions are counted in ``HttpConnections`` (``weft report``:
``router.api``; /metrics); evictions are logged at most once per ``LOG_INTERVAL``. On
shutdown, connections get ``graceful_timeout`` to finish their requests, as with
hypercorn's ``serve``.

This uses hypercorn's ``TCPServer`` and ``WorkerContext`` (not its documented API);
pyproject.toml pins the versions it was written against.
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from hypercorn.config import Config

log = logging.getLogger("weft")

MAX_CONNECTIONS = 64
LOG_INTERVAL = 10.0
# accept() errors that mean "out of resources for now", not a broken socket (trio's list)
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class HttpConnections:
    """The open connections, oldest first, as the cancel scopes that end them; what
    ``weft report`` shows of them (``as_dict``)."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self.accepted = 0      # since start
        self.evicted = 0       # the oldest closed to make room for a new one
        self._open: OrderedDict[trio.CancelScope, None] = OrderedDict()

    @property
    def open(self) -> int:
        return len(self._open)

    def as_dict(self) -> dict[str, int]:
        return {"connections": self.open, "max_connections": self.max_connections,
                "accepted": self.accepted, "evicted": self.evicted}

    def add(self, scope: trio.CancelScope) -> None:
        self.accepted += 1
        self._open[scope] = None

    def remove(self, scope: trio.CancelScope) -> None:
        self._open.pop(scope, None)

    def make_room(self) -> bool:
        """Close the oldest connection if the cap is reached; True if one was closed."""
        if len(self._open) < self.max_connections:
            return False
        self._open.popitem(last=False)[0].cancel()
        self.evicted += 1
        return True


async def serve(
    app: Any,
    config: Config,
    sock: trio.socket.SocketType,
    *,
    conns: HttpConnections,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` on the listening ``sock`` until ``shutdown_trigger()``
    returns; then give open connections ``config.graceful_timeout`` to finish."""
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import wrap_app

    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    listener = trio.SocketListener(sock)
    unlogged = 0
    last_log = -LOG_INTERVAL

    async def one(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await TCPServer(wrapped, config, context, {}, stream).run()
            finally:
                conns.remove(scope)
        await trio.aclose_forcefully(stream)  # when cancelled, TCPServer may not have

    async def accept(handlers: trio.Nursery) -> None:
        nonlocal unlogged, last_log
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.warning("HTTP API: cannot accept a connection: %s", exc.strerror)
                await trio.sleep(0.1)
                continue
            if conns.make_room():
                unlogged += 1
                now = trio.current_time()
                if now - last_log >= LOG_INTERVAL:
                    log.warning("HTTP API: %d connection(s) closed to make room: %d open is "
                                "the most (is a local process holding connections open?)",
                                unlogged, conns.max_connections)
                    unlogged, last_log = 0, now
            scope = trio.CancelScope()
            conns.add(scope)   # counted from now, before its task first runs
            handlers.start_soon(one, stream, scope)

    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(accept, handlers)
            task_status.started()
            await shutdown_trigger()
            accepting.cancel_scope.cancel()
        await listener.aclose()
        await context.terminated.set()  # idle connections close; busy ones finish, until:
        handlers.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
