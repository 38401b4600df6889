"""The router daemon: a thin trio shell around the pure ``MeshNode``.

Theory of operation. Every call into the mesh happens on the trio thread, from one of
these tasks, each followed by ``_pump()``, which carries out what the mesh asked for::

    accept loop ──connection_made──▶ ┌──────────┐ ──Dial──────▶ dial task ──connection_made
    reader task ──data_received────▶ │ MeshNode │ ──Close─────▶ writer flushes, closes stream
    timer task  ──handle_timer─────▶ │  (pure)  │ ──writes────▶ writer task per connection
    HTTP API    ──add_targets...───▶ └──────────┘ ──events────▶ log lines

Times given to the mesh are trio's monotonic clock; randomness comes from the OS. The
``Router`` owns one object per job and wires them together:

    connections.py   TCP: accept loop, dials, a reader and a writer task per connection
    ipam_driver.py   the IPAM allocator on the mesh (unless ``--ipalloc-range ""``)
    dns_driver.py    weftDNS: the record service on the mesh, the server's listeners
    expose_driver.py ``expose`` / ``hide`` with their IPAM addresses and DNS name
    policy_driver.py labels and NetworkPolicies on the mesh, their nftables table
    watcher.py       the one loop that notices attached namespaces gone (tells DNS, IPAM)
    timers.py        the one timer task: the mesh's, the data plane's, IPAM's and DNS's ``get_timer``
    password_file.py ``--password-file`` watched (poll and SIGHUP): new passwords to the mesh

``_pump`` runs each driver's step (DNS news and claims, IPAM's reachable peers and
outputs), then the mesh's actions and events, then wakes the writers and the timer task.
``weft reset`` tombstones our DNS names and hands our IPAM space to a live peer (both
sent before the Goodbye), stops, then removes what the router made on the host
(``router/host/teardown.py``): rules, veth pairs (so the containers' ``ethwe``), devices.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any

import trio

import weftnet
from weftnet.dns.gossip import CHANNEL as DNS_CHANNEL
from weftnet.dns.service import DnsService
from weftnet.ipam.gossip import CHANNEL as IPAM_CHANNEL
from weftnet.ipam.gossip import CHANNEL_V6 as IPAM6_CHANNEL
from weftnet.ipam.gossip import IpamGossiper
from weftnet.policy.service import CHANNEL as POLICY_CHANNEL
from weftnet.policy.service import PolicyService
from weftnet.proto.connmaker import join_host_port
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.ethernet import parse_mac
from weftnet.proto.fastdp import CHANNEL as FASTDP_CHANNEL
from weftnet.proto.link import IP6_UDP_OVERHEAD, IP_UDP_OVERHEAD
from weftnet.proto.mesh import (
    Close,
    Dial,
    KeysAgreed,
    KeysSwitched,
    MeshConfig,
    MeshNode,
    PeerConnected,
    PeerDisconnected,
)
from weftnet.proto.peername import (
    describe_peer,
    format_peer_name,
    parse_peer_name,
    random_peer_name,
    random_uid,
)
from weftnet.router.api.httpserve import HttpConnections
from weftnet.router.api.metrics import RouterMetrics
from weftnet.router.api.server import serve_api
from weftnet.router.daemon.config import LaunchConfig, parse_peer_address
from weftnet.router.daemon.connections import Connections
from weftnet.router.daemon.dns_driver import DnsDriver, need_dns
from weftnet.router.daemon.expose_driver import ExposeDriver
from weftnet.router.daemon.ipam_driver import (
    IpamDriver,
    check_specs,
    ipam_grace,
    load_allocator,
    need_ipam,
)
from weftnet.router.daemon.password_file import PasswordFile
from weftnet.router.daemon.policy_driver import PolicyDriver
from weftnet.router.daemon.punch_driver import CANDIDATES_EVERY, PunchDriver
from weftnet.router.daemon.timers import TimerLoop
from weftnet.router.daemon.watcher import NamespaceWatcher
from weftnet.router.dataplane import vxlan
from weftnet.router.dataplane.engine import Dataplane
from weftnet.router.dataplane.fastpath import fastdp_channel
from weftnet.router.dataplane.ports import TapPort, UdpPort
from weftnet.router.host import netdev, nlevents
from weftnet.router.host.attachments import Attachments, parse_address_specs
from weftnet.router.host.cpu import local_aeads
from weftnet.router.host.datadir import IPAM6_FILE, IPAM_FILE, DataDir
from weftnet.router.host.expose import Exposer
from weftnet.router.host.teardown import reset_host

log = logging.getLogger("weft")

DEFAULT_MTU = netdev.DEFAULT_MTU
GOODBYE_TIME = 1.0   # seconds the writers get to send the Goodbye
PUMP_ROUNDS = 4      # bounded: a pump never spins
# control heartbeats of a connection whose data link works (proto/mesh.py _pace_control):
# idle messages per router then stay constant whatever the mesh size (weftnet#20)
OVERLAY_HEARTBEAT_INTERVAL = 20.0


def overlay_mtu(config: LaunchConfig) -> int:
    """The MTU of the bridge and container interfaces when ``--mtu`` is not given: sized
    for the kernel VXLAN on the underlay (its MTU - 50, - 70 over IPv6) when the fast path
    may carry traffic, else sleeve's DEFAULT_MTU (room for its headers and encryption), 20
    less on an IPv6-only host (the IPv6 header is 20 bytes longer: the same room)."""
    try:
        v6_only = vxlan.ipv6_only_underlay()
    except (netdev.NetdevError, OSError):
        v6_only = False
    sleeve = DEFAULT_MTU - (IP6_UDP_OVERHEAD - IP_UDP_OVERHEAD if v6_only else 0)
    if not config.fastdp or (config.password and not config.trusted_subnets):
        return sleeve
    try:
        carried = vxlan.underlay_mtu()
    except (netdev.NetdevError, OSError):
        carried = None
    return sleeve if carried is None else max(sleeve, carried)


class Router:
    """Implements the API's RouterControl over a MeshNode."""

    def __init__(self, config: LaunchConfig, datadir: DataDir, name: int,
                 targets: list[str]) -> None:
        self.config = config
        self.datadir = datadir
        now = trio.current_time()
        wall_offset = time.time() - now   # the wall clock, for what persists or crosses hosts
        self.mesh = MeshNode(
            MeshConfig(name=name, nickname=config.nickname, uid=random_uid(os.urandom),
                       password=config.password, passwords=config.passwords,
                       password_labels=config.password_lines,
                       port=config.port, conn_limit=config.conn_limit,
                       discovery=config.discovery, initial_version=int(time.time() * 1e6),
                       require_overlay=True, aeads=local_aeads(),
                       overlay_heartbeat_interval=OVERLAY_HEARTBEAT_INTERVAL),
            now=now, random_bytes=os.urandom, rng=random.Random(os.urandom(16)),
        )
        self._initial_targets = targets
        self._stopped = trio.Event()
        self._resetting = False
        self._nursery: trio.Nursery | None = None
        self.connections = Connections(self.mesh, self._pump)
        mtu = config.mtu or overlay_mtu(config)
        # the data plane never calls the pump: it asks the timer task to look (get_timer)
        self.dataplane = Dataplane(self.mesh, port=config.port, host=config.host, mtu=mtu,
                                   trusted_subnets=config.trusted_subnets, fastdp=config.fastdp,
                                   wake=lambda: self.timers.changed())
        self.mesh.register_channel(FASTDP_CHANNEL, fastdp_channel(self.dataplane.fast))
        self.attachments = Attachments(datadir, mtu=mtu)
        self.exposer = Exposer(datadir)   # weft expose / hide (router/host/expose.py)
        self.timers = TimerLoop([self.mesh, self.dataplane], self._pump)   # one line per timer source
        # hole punching to peers the mesh reaches only through others (discovery's job too)
        self.punch: PunchDriver | None = None
        if config.discovery:
            self.punch = PunchDriver(self.mesh, self.dataplane, port=config.port,
                                     host=config.host, new_conn_id=self.connections.new_conn_id,
                                     now=now)
            self.timers.add(self.punch)
        self.dns: DnsDriver | None = None
        if config.dns:
            self.dns = DnsDriver(DnsService(name, now + wall_offset, wall_offset=wall_offset,
                                            domain=config.dns_domain),
                                 self.mesh, datadir, self.attachments, self._pump,
                                 ttl=config.dns_ttl)
            self.mesh.register_channel(DNS_CHANNEL, self.dns.service.gossiper)
        self.ipam: IpamDriver | None = None
        if config.ipalloc_range:
            alloc = load_allocator(config, datadir.path / IPAM_FILE, name, now,
                                   wall_offset=wall_offset, grace=ipam_grace())
            alloc6 = (load_allocator(config, datadir.path / IPAM6_FILE, name, now,
                                     wall_offset=wall_offset, grace=ipam_grace(), v6=True)
                      if config.ipalloc_range_v6 else None)
            self.ipam = IpamDriver(alloc, self.mesh, datadir, self._pump, alloc6)
            self.mesh.register_channel(IPAM_CHANNEL, IpamGossiper(alloc))
            if alloc6 is not None:
                self.mesh.register_channel(IPAM6_CHANNEL, IpamGossiper(alloc6))
            self.timers.add(self.ipam)
        if self.dns is not None:
            self.timers.add(self.dns)
        # network policy: labels and policies on the mesh, enforced here in nftables
        self.policy = PolicyDriver(PolicyService(name, now + wall_offset, wall_offset=wall_offset),
                                   self.mesh, datadir, self.attachments, self._pump)
        self.mesh.register_channel(POLICY_CHANNEL, self.policy.service.gossiper)
        self.timers.add(self.policy)
        users: list[Any] = [u for u in (self.dns, self.ipam) if u is not None] + [self.policy]
        self.watcher = NamespaceWatcher(users, self.attachments.forget)
        self._expose = ExposeDriver(self.exposer, self.attachments, self.ipam, self.dns,
                                    self._pump)
        self.api_conns = HttpConnections()   # the API's connections (router/api/httpserve.py)
        self._metrics = RouterMetrics(self)  # GET /metrics (router/api/metrics.py): read at scrape time
        self.password_file = self._watch_password_file(now)

    # --- RouterControl -----------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        router = self.mesh.report(trio.current_time())
        router["discovery"] = self.config.discovery
        router["trusted_subnets"] = list(self.config.trusted_subnets)
        router["data_dir"] = str(self.config.data_dir)
        router["port"] = self.config.port
        punched = self.punch.how if self.punch is not None else (lambda address: None)
        for conn in router["connections"]:
            extra = self.dataplane.connection_report(conn["address"], conn["outbound"])
            if extra is not None:
                conn["sleeve"] = extra
            if conn["peer"] is not None:
                conn["how"] = punched(conn["address"]) or (
                    "dialled" if conn["outbound"] else "accepted")
        if self.punch is not None:
            router["punch"] = self.punch.report(trio.current_time())
        router["dataplane"] = self.dataplane.report()
        router["api"] = self.api_conns.as_dict()
        if self.password_file is not None:
            router["password_file"] = self.password_file.report()
        return {
            "version": weftnet.__version__,
            "router": router,
            "ipam": self.ipam.status() if self.ipam is not None else None,
            "dns": self.dns.report() if self.dns is not None else None,
            "policy": self.policy.report(),
        }

    def _watch_password_file(self, now: float) -> PasswordFile | None:
        """With ``--password-file``: a timer source that hands a changed file's passwords
        to the mesh (router/daemon/password_file.py)."""
        path = self.config.password_file
        if path is None or not self.mesh.passwords:
            return None
        watcher = PasswordFile(path, self.mesh.passwords, self.mesh.password_labels,
                               self._passwords_changed, now=now)
        self.timers.add(watcher)
        return watcher

    def _passwords_changed(self, passwords: tuple[bytes, ...], lines: tuple[int, ...]) -> None:
        self.mesh.set_passwords(passwords, trio.current_time(), labels=lines)
        self._pump()

    def metrics(self) -> bytes:
        """Prometheus text format: everything ``router/api/metrics.py`` reads, read now."""
        return self._metrics.exposition()

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
        """Tombstone our DNS names and hand our IPAM space to a live peer (gossiped and
        sent before the Goodbye), stop; ``main`` then removes what we made on the host."""
        self._resetting = True
        self._expose.reset()
        if self.dns is not None:
            self.dns.forget_all()
        if self.ipam is not None:
            self.ipam.handoff()
        self._pump()
        self.request_stop()

    def rmpeer(self, peer: str) -> dict[str, Any]:
        """Take over the IPAM space of a dead peer (name or nickname)."""
        return need_ipam(self.ipam).rmpeer(peer)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def attach(self, container: str, addresses: list[str], name: str | None,
                     without_dns: bool, ifname: str = netdev.CONTAINER_IFNAME,
                     labels: dict[str, str] | None = None) -> list[str]:
        specs = parse_address_specs(addresses)
        labels = self.policy.check_labels(labels) if labels else None   # refuse early
        dns = None if without_dns else self.dns
        hostname = None if dns is None or name is None else dns.qualify(name)  # refuse early
        resolv_conf = dns.resolv_conf() if dns is not None else None
        check_specs(specs, self.ipam)
        ipam = self.ipam
        fresh: list[IPv4Interface | IPv6Interface] = []  # IPAM's for this call only: undone on failure
        ident = ""
        if ipam is None:
            cidrs = [str(spec) for spec in specs]
        else:
            try:
                ref = await trio.to_thread.run_sync(netdev.resolve_netns, container)
            except netdev.NetdevError as exc:
                raise LocalProtocolError(str(exc)) from None
            ident = ref.name  # the attachment record's key
            got, fresh = await ipam.get_all(ident, specs)
            cidrs = [str(g) for g in got]
        try:
            result = await self.attachments.attach(container, cidrs, resolv_conf=resolv_conf,
                                                   ifname=ifname)
        except netdev.NetdevError as exc:
            if ipam is not None:
                ipam.release(ident, fresh)
            raise LocalProtocolError(str(exc)) from None
        except BaseException:
            if ipam is not None:
                ipam.release(ident, fresh)
            raise
        key = result.record.container
        self.watcher.watch(key, result.ref)
        if self.dns is not None:
            await self.dns.container_attached(key, result.ref)
        if dns is not None:
            dns.name_container(key, result.ref, hostname, result.record.ips)
        self.policy.attached(key, result.record.ips, labels)
        self._pump()
        return result.cidrs

    async def detach(self, container: str, addresses: list[str], ifname: str | None = None,
                     missing_ok: bool = False) -> list[str]:
        try:
            result = await self.attachments.detach(container, addresses, ifname=ifname,
                                                   missing_ok=missing_ok)
        except netdev.NetdevError as exc:
            # gone already, its addresses waiting out their grace period: free them now
            freed = self.ipam.free_released(container) if self.ipam is not None else None
            if freed is not None:
                return freed
            raise LocalProtocolError(str(exc)) from None
        if result.mac is not None:  # its claim on the virtual Ethernet ends now, not at expiry
            self.dataplane.forget_mac(parse_mac(result.mac))
        if result.gone:
            self.watcher.unwatch(result.container)
        if self.dns is not None:
            self.dns.detached(result.container, None if result.gone else result.ips)
        if self.ipam is not None:
            self.ipam.free(result.container, None if result.gone else result.ips)
        held = self.attachments.records().get(result.container)
        self.policy.detached(result.container, None if result.gone or held is None else held.ips)
        self._pump()
        return result.removed

    async def ps(self) -> list[dict[str, Any]]:
        containers = await self.attachments.ps()
        for c in containers:
            c["labels"] = self.policy.labels_of(c["container"])
        return containers

    async def label(self, container: str, add: dict[str, str], remove: list[str]) -> dict[str, str]:
        """``weft label``: change a running container's labels (mesh-wide)."""
        try:
            ref = await trio.to_thread.run_sync(netdev.resolve_netns, container)
        except netdev.NetdevError as exc:
            raise LocalProtocolError(str(exc)) from None
        return self.policy.label(ref.name, add, remove)

    def policy_apply(self, text: str, source: str) -> list[str]:
        return self.policy.apply(text, source)

    def policy_delete(self, name: str) -> None:
        self.policy.delete(name)

    async def dns_add(self, addresses: list[str], container: str | None, name: str) -> int:
        return await need_dns(self.dns).add(addresses, container, name)

    async def dns_remove(self, addresses: list[str], container: str | None,
                         name: str | None) -> int:
        return await need_dns(self.dns).remove(addresses, container, name)

    def dns_lookup(self, name: str) -> dict[str, Any]:
        return need_dns(self.dns).lookup(name)

    async def expose(self, addresses: list[str], name: str | None) -> list[str]:
        return await self._expose.expose(addresses, name)

    async def hide(self, addresses: list[str]) -> list[str]:
        return await self._expose.hide(addresses)

    # --- main ----------------------------------------------------------------------------

    async def main(self, task_status: Any = trio.TASK_STATUS_IGNORED, *,
                   ports: tuple[TapPort, UdpPort] | None = None) -> None:
        """Run until stopped. ``ports``: the data plane's TAP and UDP ports to use instead of
        the host's (router/dataplane/doubles.py in tests), else the bridge's TAP and a socket."""
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host or None)
        except OSError as exc:
            raise LocalProtocolError(
                f"cannot listen on port {self.config.port}: {exc.strerror or exc}") from None
        try:
            self.dataplane.open(*(ports or ()))
        except OSError as exc:
            raise LocalProtocolError(f"cannot set up the data plane: {exc.strerror or exc}") from None
        except netdev.NetdevError as exc:
            raise LocalProtocolError(f"cannot set up the data plane: {exc}") from None
        try:
            await self._main(listeners, task_status)
        finally:
            self.dataplane.close()
        if self._resetting:
            await self._reset_host()

    async def _main(self, listeners: list[trio.SocketListener], task_status: Any) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.connections.nursery = nursery
            nursery.start_soon(self.dataplane.run)
            alive = await self.attachments.restore()
            await self.exposer.restore()
            for rec, ref in alive:
                self.watcher.watch(rec.container, ref)
            if self.ipam is not None:
                self.ipam.reconcile({rec.container for rec, _ in alive} | self.exposer.idents())
            if self.dns is not None:
                await self.dns.start(nursery, alive, self.exposer.idents())
            await self.policy.start(nursery, {rec.container: rec.ips for rec, _ in alive})
            nursery.start_soon(self.watcher.run, self._pump)
            for listener in listeners:
                nursery.start_soon(self.connections.accept_loop, listener)
            host, port = self.config.http_addr
            await nursery.start(functools.partial(serve_api, self, host, port, conns=self.api_conns))
            nursery.start_soon(self.timers.run)
            if self.punch is not None and not self.punch.host:
                self._watch_addresses(nursery)
            if self.password_file is not None:
                nursery.start_soon(self.password_file.watch_sighup)
            self.mesh.add_targets(self._initial_targets, trio.current_time())
            self._persist()
            self._pump()
            log.info("router %s started, listening on port %d, API on %s",
                     describe_peer(self.mesh.config.name, self.config.nickname),
                     self.config.port, join_host_port(host, port))
            task_status.started()
            await self._stopped.wait()
            log.info("router stopping")
            await self._say_goodbye()
            nursery.cancel_scope.cancel()

    async def _say_goodbye(self) -> None:
        """Tell every peer why we go (a Goodbye), and give the writers a moment to send it."""
        self.mesh.shutdown("router stopping", trio.current_time())
        self._pump()
        await self.connections.drain(GOODBYE_TIME)

    async def _reset_host(self) -> None:
        """After ``reset``: the rules, the containers' veth pairs, the devices go."""
        try:
            removed = await trio.to_thread.run_sync(reset_host, self.datadir)
        except LocalProtocolError as exc:   # the CLI tries again, and reports it
            log.warning("%s", exc.reason)
            return
        if removed:
            log.info("reset: removed %s", " ".join(removed))

    def _persist(self) -> None:
        state = self.datadir.load_state()
        state["name"] = format_peer_name(self.mesh.config.name)
        state["targets"] = self.mesh.maker.direct_targets()
        self.datadir.save_state(state)

    # --- the pump: carry out what the mesh asked for ------------------------------------

    def _watch_addresses(self, nursery: trio.Nursery) -> None:
        """Hole punching's host candidates follow the kernel's address events."""
        try:
            sock = nlevents.address_events_socket()
        except OSError as exc:
            log.warning("no address events (%s): host candidates looked at every %.0f s",
                        exc.strerror or exc, CANDIDATES_EVERY)
            return
        punch = self.punch
        assert punch is not None

        def changed() -> None:
            punch.addresses_changed(trio.current_time())
            self.timers.changed()

        async def run() -> None:
            with sock:
                await nlevents.watch(sock, changed)

        nursery.start_soon(run)

    def _pump(self) -> None:
        mesh = self.mesh
        now = trio.current_time()
        self.dataplane.drain(now)  # links whose overlay changed: set_overlay first
        if self.dns is not None:
            self.dns.pump()
        self.policy.pump()
        if self.ipam is not None:
            self.ipam.pump(now)
        punch = self.punch
        if punch is not None:
            punch.pump(now)
        for _ in range(PUMP_ROUNDS):  # a punched stream's write may end it: look again
            while (action := mesh.next_action()) is not None:
                if isinstance(action, Dial):
                    self.connections.dial(action.address)
                elif isinstance(action, Close):
                    if punch is not None and punch.owns(action.conn_id):
                        punch.close(action.conn_id, action.reason, now)
                    else:
                        self.connections.close(action.conn_id, action.reason)
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
                    self._metrics.connection_closed(event.conn_id, event.reason)  # before the link goes
                    self.dataplane.peer_disconnected(event)
                elif isinstance(event, KeysAgreed):  # a password change: new keys, no break
                    self.dataplane.keys_agreed(event, now)
                elif isinstance(event, KeysSwitched):
                    self.dataplane.keys_switched(event, now)
            self.dataplane.routes_changed()
            for conn_id in mesh.pending_writes():
                if punch is not None and punch.owns(conn_id):
                    punch.wake(conn_id, now)
                else:
                    self.connections.wake(conn_id)
            if not mesh.has_work:
                break
        self.timers.changed()


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
