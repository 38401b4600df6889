"""The router daemon: a thin trio shell around the pure ``MeshNode``.

Theory of operation. Every call into the mesh happens on the trio thread, from one of
these tasks, each followed by ``_pump()``, which carries out what the mesh asked for::

    accept loop ──connection_made──▶ ┌──────────┐ ──Dial──────▶ dial task ──connection_made
    reader task ──data_received────▶ │ MeshNode │ ──Close─────▶ writer flushes, closes stream
    timer task  ──handle_timer─────▶ │  (pure)  │ ──writes────▶ writer task per connection
    HTTP API    ──add_targets...───▶ └──────────┘ ──events────▶ log lines

Readers and writers are separate tasks so a slow peer never blocks the others; each
writer is woken by an event and pulls whatever the mesh has for it (gossip waiting for a
slow link is coalesced in the mesh meanwhile). Times given to the mesh are trio's
monotonic clock; randomness comes from the OS.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

import weftnet
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.mesh import Close, Dial, MeshConfig, MeshNode, PeerConnected, PeerDisconnected
from weftnet.proto.peername import (
    describe_peer,
    format_peer_name,
    parse_peer_name,
    random_peer_name,
    random_uid,
)

from . import netdev
from .api import serve_api
from .attachments import Attachments
from .config import LaunchConfig, parse_peer_address
from .datadir import DataDir
from .dataplane import Dataplane

log = logging.getLogger("weft")

DIAL_TIMEOUT = 10.0
DEFAULT_MTU = netdev.DEFAULT_MTU
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


class Router:
    """Implements the API's RouterControl over a MeshNode."""

    def __init__(self, config: LaunchConfig, datadir: DataDir, name: int,
                 targets: list[str]) -> None:
        self.config = config
        self.datadir = datadir
        now = trio.current_time()
        self.mesh = MeshNode(
            MeshConfig(name=name, nickname=config.nickname, uid=random_uid(os.urandom),
                       password=config.password, port=config.port, conn_limit=config.conn_limit,
                       discovery=config.discovery, initial_version=int(time.time() * 1e6),
                       require_overlay=True),
            now=now, random_bytes=os.urandom, rng=random.Random(os.urandom(16)),
        )
        self._initial_targets = targets
        self._streams: dict[int, _Stream] = {}
        self._next_conn_id = 1
        self._timer_changed = trio.Event()
        self._stopped = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._pumping = False
        self._pump_again = False
        self.dataplane = Dataplane(self.mesh, port=config.port, host=config.host,
                                   mtu=config.mtu or DEFAULT_MTU,
                                   trusted_subnets=config.trusted_subnets, fastdp=config.fastdp,
                                   on_change=self._pump)
        self.attachments = Attachments(datadir, mtu=config.mtu or DEFAULT_MTU)

    # --- RouterControl -----------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        router = self.mesh.report(trio.current_time())
        router["discovery"] = self.config.discovery
        router["trusted_subnets"] = list(self.config.trusted_subnets)
        router["data_dir"] = str(self.config.data_dir)
        router["port"] = self.config.port
        for conn in router["connections"]:
            extra = self.dataplane.connection_report(conn["address"], conn["outbound"])
            if extra is not None:
                conn["sleeve"] = extra
        router["dataplane"] = self.dataplane.report()
        return {
            "version": weftnet.__version__,
            "router": router,
            "ipam": None,
            "dns": None,
        }

    def connect(self, peers: list[str], replace: bool) -> list[str]:
        addresses = [parse_peer_address(p, self.config.port) for p in peers]
        self.mesh.add_targets(addresses, trio.current_time(), replace=replace)
        self._persist()
        self._pump()
        return self.mesh.maker.direct_targets()

    def forget(self, peers: list[str]) -> list[str]:
        addresses = [parse_peer_address(p, self.config.port) for p in peers]
        self.mesh.forget_targets(addresses)
        self._persist()
        return self.mesh.maker.direct_targets()

    def request_stop(self) -> None:
        # let the API answer the request that asked for this before the server goes down
        if self._nursery is not None:
            self._nursery.start_soon(self._stop_soon)
        else:
            self._stopped.set()

    async def _stop_soon(self) -> None:
        await trio.sleep(0.05)
        self._stopped.set()

    def reset(self) -> None:
        self.request_stop()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def attach(self, container: str, addresses: list[str], name: str | None,
                     without_dns: bool) -> list[str]:
        try:
            return await self.attachments.attach(container, addresses)
        except netdev.NetdevError as exc:
            raise LocalProtocolError(str(exc)) from None

    async def detach(self, container: str, addresses: list[str]) -> list[str]:
        try:
            return await self.attachments.detach(container, addresses)
        except netdev.NetdevError as exc:
            raise LocalProtocolError(str(exc)) from None

    async def ps(self) -> list[dict[str, Any]]:
        return await self.attachments.ps()

    # --- main ----------------------------------------------------------------------------

    async def main(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host or None)
        except OSError as exc:
            raise LocalProtocolError(
                f"cannot listen on port {self.config.port}: {exc.strerror or exc}") from None
        try:
            self.dataplane.open()
        except OSError as exc:
            raise LocalProtocolError(f"cannot set up the data plane: {exc.strerror or exc}") from None
        except netdev.NetdevError as exc:
            raise LocalProtocolError(f"cannot set up the data plane: {exc}") from None
        try:
            await self._main(listeners, task_status)
        finally:
            self.dataplane.close()

    async def _main(self, listeners: list[trio.SocketListener], task_status: Any) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.dataplane.run)
            await self.attachments.restore()
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            host, port = self.config.http_addr
            await nursery.start(serve_api, self, host, port)
            nursery.start_soon(self._timer_loop)
            self.mesh.add_targets(self._initial_targets, trio.current_time())
            self._persist()
            self._pump()
            log.info("router %s started, listening on port %d, API on %s:%d",
                     describe_peer(self.mesh.config.name, self.config.nickname),
                     self.config.port, host, port)
            task_status.started()
            await self._stopped.wait()
            log.info("router stopping")
            await self._say_goodbye()
            nursery.cancel_scope.cancel()

    async def _say_goodbye(self) -> None:
        """Tell every peer why we go (a Goodbye), and give the writers a moment to send it."""
        self.mesh.shutdown("router stopping", trio.current_time())
        self._pump()
        with trio.move_on_after(1.0):
            while self._streams:
                await trio.sleep(0.01)

    def _persist(self) -> None:
        state = self.datadir.load_state()
        state["name"] = format_peer_name(self.mesh.config.name)
        state["targets"] = self.mesh.maker.direct_targets()
        self.datadir.save_state(state)

    # --- the pump: carry out what the mesh asked for ------------------------------------

    def _pump(self) -> None:
        if self._pumping:  # called back from inside (the data plane changed the mesh)
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                self._pump_once()
        finally:
            self._pumping = False

    def _pump_once(self) -> None:
        mesh = self.mesh
        now = trio.current_time()
        while (action := mesh.next_action()) is not None:
            if isinstance(action, Dial):
                assert self._nursery is not None
                self._nursery.start_soon(self._dial, action.address)
            elif isinstance(action, Close):
                s = self._streams.get(action.conn_id)
                if s is not None:
                    s.closing = action.reason
                    s.wake.set()
        while (event := mesh.next_event()) is not None:
            if isinstance(event, PeerConnected):
                log.info("connection %s %s established with %s%s",
                         "to" if event.outbound else "from", event.remote_address,
                         describe_peer(event.peer.name, event.peer.nickname),
                         " (encrypted)" if event.encrypted else "")
                self.dataplane.peer_connected(event, now)
            elif isinstance(event, PeerDisconnected):
                log.info("connection with %s lost: %s",
                         describe_peer(event.peer.name, event.peer.nickname), event.reason)
                self.dataplane.peer_disconnected(event)
        self.dataplane.routes_changed()
        for conn_id in mesh.pending_writes():
            s = self._streams.get(conn_id)
            if s is not None:
                s.wake.set()
        self._timer_changed.set()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.mesh.get_timer()
            self._timer_changed = trio.Event()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._timer_changed.wait()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self.mesh.handle_timer(now)
                self._pump()

    # --- connections -----------------------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
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
            self._start_connection(stream, outbound=False, remote=remote, target=None)

    async def _dial(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                stream = await trio.open_tcp_stream(host, int(port))
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
        self._start_connection(stream, outbound=True, remote=remote, target=address)

    def _start_connection(self, stream: trio.SocketStream, *, outbound: bool, remote: str,
                          target: str | None) -> None:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        s = _Stream(stream)
        self._streams[conn_id] = s
        self.mesh.connection_made(conn_id, outbound=outbound, remote_address=remote,
                                  target=target, now=trio.current_time())
        assert self._nursery is not None
        self._nursery.start_soon(self._run_connection, conn_id, s)
        self._pump()

    async def _run_connection(self, conn_id: int, s: _Stream) -> None:
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


def _setup_logging(config: LaunchConfig, datadir: DataDir) -> None:
    level = getattr(logging, config.log_level.upper(), logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    file_handler = logging.FileHandler(datadir.log_path)
    file_handler.setFormatter(fmt)
    root.addHandler(file_handler)
    if not os.environ.get("WEFT_DAEMONIZED"):
        stream_handler = logging.StreamHandler(sys.stderr)
        stream_handler.setFormatter(fmt)
        root.addHandler(stream_handler)
    logging.getLogger("hypercorn").setLevel(logging.WARNING)


def resolve_name(config: LaunchConfig, state: dict[str, Any],
                 random_bytes: Callable[[int], bytes] = os.urandom) -> int:
    if config.name is not None:
        return config.name
    saved = state.get("name")
    if isinstance(saved, str):
        return parse_peer_name(saved)
    return random_peer_name(random_bytes)


def run(config: LaunchConfig) -> int:
    """Run the router in this process until it is stopped; the exit status."""
    datadir = DataDir(config.data_dir)
    datadir.lock()
    try:
        _setup_logging(config, datadir)
        state = datadir.load_state()
        name = resolve_name(config, state)
        saved = state.get("targets", [])
        targets = list(dict.fromkeys(
            [parse_peer_address(p, config.port) for p in config.peers]
            + [t for t in saved if isinstance(t, str)]))

        async def main() -> None:
            router = Router(config, datadir, name, targets)
            await router.main()

        try:
            trio.run(main)
        except KeyboardInterrupt:
            pass
        log.info("router stopped")
        return 0
    finally:
        datadir.release()
