"""The control connections' TCP side: accept loop, dials, a reader and a writer per stream.

Theory of operation. The mesh decides, these tasks only move bytes::

    accept loop ──connection_made──▶ ┌──────────┐ ──Dial──▶ dial() task ──connection_made
    reader task ──data_received────▶ │ MeshNode │ ──Close─▶ close(): writer flushes, half-closes
                 ──connection_lost─▶ └──────────┘ ──writes─▶ wake(): writer task pulls them

Readers and writers are separate tasks so a slow peer never blocks the others; each
writer is woken by an event and pulls whatever the mesh has for it (gossip waiting for a
slow link is coalesced in the mesh meanwhile). Every call into the mesh is followed by the
daemon's pump. Inbound connections pass the mesh's admission control (rate limit per
source, cap on handshakes) before a byte is read; a refused one is reset at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from weftnet.proto.connmaker import split_host_port
from weftnet.proto.mesh import MeshNode

log = logging.getLogger("weft")

DIAL_TIMEOUT = 5.0  # SYN, and two retransmits (1 s, 3 s): a peer that answers none is not there
READ_SIZE = 65536


@dataclass(slots=True)
class _Stream:
    stream: trio.SocketStream
    wake: trio.Event = field(default_factory=trio.Event)
    closing: str | None = None
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)


def _address_of(sock: trio.socket.SocketType, peer: bool = True) -> str:
    addr = sock.getpeername() if peer else sock.getsockname()
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:"):
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Connections:
    """The open control streams, by the mesh's connection id. ``nursery`` is set by the
    daemon before the first accept or dial."""

    def __init__(self, mesh: MeshNode, pump: Callable[[], None]) -> None:
        self.mesh = mesh
        self._pump = pump
        self.nursery: trio.Nursery | None = None
        self._streams: dict[int, _Stream] = {}
        self._next_conn_id = 1

    def new_conn_id(self) -> int:
        """A connection id of the mesh's, for connections of any transport (punched ones)."""
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        return conn_id

    # --- what the mesh asked for (from the pump) ------------------------------------------

    def dial(self, address: str) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(self._dial, address)

    def close(self, conn_id: int, reason: str) -> None:
        s = self._streams.get(conn_id)
        if s is not None:
            s.closing = reason
            s.wake.set()

    def wake(self, conn_id: int) -> None:
        """The mesh has bytes for ``conn_id``."""
        s = self._streams.get(conn_id)
        if s is not None:
            s.wake.set()

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for every stream to end: the writers send what the
        mesh still has (a Goodbye) before they close."""
        with trio.move_on_after(timeout):
            while self._streams:
                await trio.sleep(0.01)

    # --- tasks -----------------------------------------------------------------------------

    async def accept_loop(self, listener: trio.SocketListener) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off rather than spin
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            try:
                remote = _address_of(stream.socket)
            except OSError:
                await stream.aclose()
                continue
            # hostile input: rate limit per source and cap handshakes before reading a byte
            # (proto/admission.py); a refused connection is reset at once, no task, no state
            now = trio.current_time()
            if self.mesh.admit_inbound(remote, now) is not None:
                with contextlib.suppress(OSError):
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                             struct.pack("ii", 1, 0))
                await stream.aclose()
                if (summary := self.mesh.admission.take_log(now)) is not None:
                    log.warning("%s", summary)
                continue
            self._start(stream, outbound=False, remote=remote, target=None)

    async def _dial(self, address: str) -> None:
        host, port = split_host_port(address)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                stream = await trio.open_tcp_stream(host, port)
            remote = _address_of(stream.socket)
        except trio.TooSlowError:
            self.mesh.dial_failed(address, "connection timed out", trio.current_time())
            self._pump()
            return
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower() if not isinstance(exc, socket.gaierror) \
                else f"cannot resolve {host}"
            self.mesh.dial_failed(address, reason, trio.current_time())
            self._pump()
            return
        self._start(stream, outbound=True, remote=remote, target=address)

    def _start(self, stream: trio.SocketStream, *, outbound: bool, remote: str,
               target: str | None) -> None:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        conn_id = self.new_conn_id()
        s = _Stream(stream)
        self._streams[conn_id] = s
        self.mesh.connection_made(conn_id, outbound=outbound, remote_address=remote,
                                  target=target, now=trio.current_time())
        assert self.nursery is not None
        self.nursery.start_soon(self._run, conn_id, s)
        self._pump()

    async def _run(self, conn_id: int, s: _Stream) -> None:
        reason = "connection closed"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, conn_id, s, nursery.cancel_scope)
                try:
                    while True:
                        data = await s.stream.receive_some(READ_SIZE)
                        if not data:
                            reason = "connection closed by peer"
                            break
                        if s.closing is None:
                            self.mesh.data_received(conn_id, data, trio.current_time())
                            self._pump()
                except (trio.BrokenResourceError, OSError) as exc:
                    reason = f"connection error: {exc}"
                if s.closing is None:
                    nursery.cancel_scope.cancel()
        finally:
            del self._streams[conn_id]
            self.mesh.connection_lost(conn_id, s.closing or reason, trio.current_time())
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await s.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            self._pump()

    async def _writer(self, conn_id: int, s: _Stream, scope: trio.CancelScope) -> None:
        try:
            while True:
                await s.wake.wait()
                s.wake = trio.Event()
                data = self.mesh.data_to_send(conn_id, trio.current_time())
                if data:
                    await s.stream.send_all(data)
                if s.closing is not None:
                    # half-close and let the reader wait (briefly) for the peer to hang up, so
                    # our last words are read rather than discarded by a reset
                    await s.stream.send_eof()
                    scope.deadline = min(scope.deadline, trio.current_time() + 1.0)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()
