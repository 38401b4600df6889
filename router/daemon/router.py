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

weftDNS (unless ``--no-dns``; the recipe is ``weftnet.dns``'s docstring). ``DnsService``
(pure) holds the records; its channel "dns" rides on the mesh, and every ``_pump`` first
floods what it has to say (local changes, corrections of stale copies of our entries)
and persists our claims when they changed. One ``DnsServer`` answers on 127.0.0.11:53,
UDP and TCP, in the router's own namespace and inside every attached container's
namespace (sockets made there by a thread that joined it, served from here, like
Docker's embedded DNS); names it does not know are forwarded to the resolvers of this
namespace's /etc/resolv.conf. Launch order matters::

    restore attachments ─▶ restore claims (reconcile) ─▶ DNS server + listeners ─▶
    accept connections / dial targets (peers only ever see the re-asserted names)

``_dns_loop`` wakes at least every ``WATCH_INTERVAL`` seconds: tombstone expiry, names of
routers gone from the topology for a while (``PEER_GONE_GRACE``), and containers whose
namespace disappeared without a detach (their listener, names, resolv.conf and record
go; the listener's sockets would otherwise keep the dead namespace alive).

IPAM (unless ``--ipalloc-range ""``; the recipe is ``weftnet.ipam``'s docstring). The pure
``Allocator`` rides on the mesh as channel "ipam"; ``_pump`` tells it when the set of
reachable peers changed, then drains its outputs in the core's order: persist
``DATA_DIR/ipam.json`` (atomically) when dirty, gossip its news, send its unicasts, answer
the API calls waiting on results (each op has a deadline in the core, so no call hangs).
The timer task wakes for the earlier of the mesh's and the allocator's timers. ``attach``
allocates (no ADDR, ``net:default``, ``net:CIDR``) or claims (``IP/LEN``) before plumbing,
and frees what it got if plumbing fails; ``detach`` frees at once (also for a container
whose namespace is gone already). A container whose namespace disappeared without a detach
(seen by the watch loops, or at launch: attached before, gone now) keeps its addresses for
a grace period (``weftnet.ipam.release``: 30 s, env ``WEFT_IPAM_GRACE`` seconds, 0 = at
once) in case it comes back under the same name; the deadline is persisted, so a restart
meanwhile still frees them in time. ``weft reset`` hands our space to a live peer
(``handoff``) before stopping; ``weft rmpeer`` takes a dead one's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import trio

import weftnet
from weftnet.dns.gossip import CHANNEL as DNS_CHANNEL
from weftnet.dns.resolvconf import container_resolv_conf
from weftnet.dns.service import DnsService, default_hostname, parse_claims
from weftnet.ipam.allocator import Allocator
from weftnet.ipam.gossip import CHANNEL as IPAM_CHANNEL
from weftnet.ipam.gossip import IpamGossiper
from weftnet.ipam.persist import StateError, decode_state, encode_state
from weftnet.ipam.release import MAX_GRACE, RELEASE_GRACE, check_grace
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.ethernet import parse_mac
from weftnet.proto.fastdp import CHANNEL as FASTDP_CHANNEL
from weftnet.proto.fastdp import VXLAN_OVERHEAD
from weftnet.proto.mesh import Close, Dial, MeshConfig, MeshNode, PeerConnected, PeerDisconnected
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
from weftnet.router.daemon.config import LaunchConfig, ipalloc_init_mode, parse_peer_address
from weftnet.router.daemon.dns_server import DnsServer, open_sockets, serve_dns
from weftnet.router.dataplane import vxlan
from weftnet.router.dataplane.engine import Dataplane
from weftnet.router.dataplane.fastpath import FastdpGossiper
from weftnet.router.host import netdev
from weftnet.router.host.attachments import (
    AddressSpec,
    Attachments,
    Record,
    named_netns,
    parse_address_specs,
    sweep_resolv_confs,
)
from weftnet.router.host.datadir import IPAM_FILE, DataDir
from weftnet.router.host.expose import EXPOSE_IDENT, Exposer
from weftnet.router.host.expose import Record as ExposeRecord

log = logging.getLogger("weft")

DIAL_TIMEOUT = 10.0
DEFAULT_MTU = netdev.DEFAULT_MTU
READ_SIZE = 65536
DNS_ADDRESS = "127.0.0.11"   # where containers (and the host) reach weftDNS, as with Docker
DNS_PORT = 53
HOST_LISTENER = "host"
WATCH_INTERVAL = 1.0         # seconds between checks that attached namespaces still exist
IPAM_ANSWER_SLACK = 5.0      # beyond the core's own deadline, in case an answer got lost
IPAM_GRACE_ENV = "WEFT_IPAM_GRACE"   # seconds a vanished container keeps its addresses


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


def overlay_mtu(config: LaunchConfig) -> int:
    """The MTU of the bridge and container interfaces when ``--mtu`` is not given: sized
    for the kernel VXLAN on the underlay (its MTU - 50) when the fast path may carry
    traffic, else sleeve's DEFAULT_MTU (room for its headers and encryption)."""
    if not config.fastdp or (config.password and not config.trusted_subnets):
        return DEFAULT_MTU
    try:
        underlay = vxlan.underlay_mtu()
    except (netdev.NetdevError, OSError):
        underlay = None
    return DEFAULT_MTU if underlay is None else max(DEFAULT_MTU, underlay - VXLAN_OVERHEAD)


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
        mtu = config.mtu or overlay_mtu(config)
        # the data plane never calls the pump: it asks the timer task to look (get_timer)
        self.dataplane = Dataplane(self.mesh, port=config.port, host=config.host, mtu=mtu,
                                   trusted_subnets=config.trusted_subnets, fastdp=config.fastdp,
                                   wake=lambda: self._timer_changed.set())
        self.mesh.register_channel(FASTDP_CHANNEL, FastdpGossiper(self.dataplane.fast))
        self.attachments = Attachments(datadir, mtu=mtu)
        self.exposer = Exposer(datadir)   # weft expose / hide (router/host/expose.py)
        self.dns: DnsService | None = None
        self.dns_server: DnsServer | None = None
        self._dns_containers: dict[str, netdev.NetnsRef] = {}  # watched, with a listener
        self._dns_lock = trio.Lock()
        if config.dns:
            self.dns = DnsService(name, time.time(), domain=config.dns_domain)
            self.mesh.register_channel(DNS_CHANNEL, self.dns.gossiper)
        self.ipam: Allocator | None = None
        self._ipam_alive: dict[int, str] = {}
        self._ipam_waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._next_op = 1
        self._ipam_watched: dict[str, netdev.NetnsRef] = {}  # without DNS: namespaces to watch
        if config.ipalloc_range:
            self.ipam = self._make_allocator(name, now)
            self.mesh.register_channel(IPAM_CHANNEL, IpamGossiper(self.ipam, trio.current_time))
        self.api_conns = HttpConnections()   # the API's connections (router/api/httpserve.py)
        self._metrics = RouterMetrics(self)  # GET /metrics (router/api/metrics.py): read at scrape time

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
        router["api"] = self.api_conns.as_dict()
        return {
            "version": weftnet.__version__,
            "router": router,
            "ipam": self.ipam.status(trio.current_time()) if self.ipam is not None else None,
            "dns": self._dns_report(),
        }

    def metrics(self) -> bytes:
        """Prometheus text format: everything ``router/api/metrics.py`` reads, read now."""
        return self._metrics.exposition()

    def _dns_report(self) -> dict[str, Any] | None:
        if self.dns is None:
            return None
        report: dict[str, Any] = {"domain": self.dns.domain, "address": DNS_ADDRESS,
                                  "ttl": self.config.dns_ttl}
        if self.dns_server is not None:
            report["upstream"] = list(self.dns_server.upstreams.get().nameservers)
            report["listeners"] = len(self.dns_server.listeners())
            report["statistics"] = asdict(self.dns_server.statistics())
        report["entries"] = self.dns.entries_report()
        return report

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
        """Hand our IPAM space to a live peer (gossiped and sent before the Goodbye), stop."""
        self._expose_reset()
        if self.ipam is not None:
            handed = self.ipam.handoff(trio.current_time())
            if handed is None:
                log.warning("reset: no peer is reachable to take over this peer's address space")
            else:
                peer, count = handed
                log.info("reset: handed %d addresses to %s", count, self.ipam.describe(peer))
            self._pump()
        self.request_stop()

    def rmpeer(self, peer: str) -> dict[str, Any]:
        """Take over the IPAM space of a dead peer (name or nickname)."""
        ipam = self._need_ipam()
        count = ipam.rmpeer(peer.strip(), trio.current_time())
        target = ipam.describe(ipam.resolve_peer(peer.strip()))
        log.info("rmpeer: %d addresses taken over from %s", count, target)
        self._pump()
        return {"taken": count, "peer": target}

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def attach(self, container: str, addresses: list[str], name: str | None,
                     without_dns: bool, ifname: str = netdev.CONTAINER_IFNAME) -> list[str]:
        specs = parse_address_specs(addresses)
        dns = None if without_dns else self.dns
        hostname = None if dns is None or name is None else dns.qualify(name)  # refuse early
        resolv_conf = None
        if dns is not None:
            search = self.dns_server.upstreams.get().search if self.dns_server else ()
            resolv_conf = container_resolv_conf(DNS_ADDRESS, dns.domain, search)
        self._check_specs(specs)
        ipam = self.ipam
        fresh: list[IPv4Interface] = []  # what IPAM gave for this call only: undone on failure
        ident = ""
        if ipam is None:
            cidrs = [str(spec) for spec in specs]
        else:
            try:
                ref = await trio.to_thread.run_sync(netdev.resolve_netns, container)
            except netdev.NetdevError as exc:
                raise LocalProtocolError(str(exc)) from None
            ident = ref.name  # the attachment record's key
            got, fresh = await self._ipam_get_all(ipam, ident, specs)
            cidrs = [str(g) for g in got]
        try:
            result = await self.attachments.attach(container, cidrs, resolv_conf=resolv_conf,
                                                   ifname=ifname)
        except netdev.NetdevError as exc:
            self._ipam_release(ident, fresh)
            raise LocalProtocolError(str(exc)) from None
        except BaseException:
            self._ipam_release(ident, fresh)
            raise
        key = result.record.container
        if self.dns is None and self.ipam is not None:
            self._ipam_watched[key] = result.ref
        if self.dns is not None:
            await self._dns_container_attached(key, result.ref)
        if dns is not None:
            if hostname is None:
                netns = named_netns(result.ref)
                hostname = default_hostname(netns, dns.domain) if netns is not None else None
            if hostname is not None:
                dns.register(key, hostname, result.record.ips, time.time())
            else:
                log.info("container %s gets no DNS name (give one with --name)", key)
        self._pump()
        return result.cidrs

    async def detach(self, container: str, addresses: list[str], ifname: str | None = None,
                     missing_ok: bool = False) -> list[str]:
        try:
            result = await self.attachments.detach(container, addresses, ifname=ifname,
                                                   missing_ok=missing_ok)
        except netdev.NetdevError as exc:
            freed = self._ipam_free_released(container)  # gone already, addresses pending
            if freed is not None:
                return freed
            raise LocalProtocolError(str(exc)) from None
        if result.mac is not None:  # its claim on the virtual Ethernet ends now, not at expiry
            self.dataplane.forwarder.forget_mac(parse_mac(result.mac))
        if self.dns is not None:
            if result.gone:
                self.dns.unregister(result.container, time.time())
                self._dns_container_gone(result.container)
            elif result.ips:
                self.dns.unregister(result.container, time.time(), result.ips)
        if self.ipam is not None:
            if result.gone:
                self.ipam.free(result.container, None, trio.current_time())
            else:
                for ip in result.ips:
                    self.ipam.free(result.container, IPv4Address(ip), trio.current_time())
        self._pump()
        return result.removed

    # --- IPAM ------------------------------------------------------------------------------

    def _make_allocator(self, name: int, now: float) -> Allocator:
        """The allocator, with its persisted state (a damaged file: refuse to start)."""
        config = self.config
        universe = IPv4Network(config.ipalloc_range)
        subnet = (IPv4Network(config.ipalloc_default_subnet)
                  if config.ipalloc_default_subnet else None)
        init = ipalloc_init_mode(config.ipalloc_init, len(config.peers))
        alloc = Allocator(name, config.nickname, universe, subnet, init, now,
                          random.Random(os.urandom(16)), grace=ipam_grace(),
                          wall_offset=time.time() - now)
        path = self._ipam_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise LocalProtocolError(f"cannot read {path}: {exc.strerror or exc}") from None
        if raw is not None:
            try:
                warnings = alloc.load_state(decode_state(raw))
            except StateError as exc:
                raise LocalProtocolError(
                    f"{path}: {exc.reason}; refusing to start rather than risk handing out "
                    "addresses twice (move the file away to start this peer's IPAM afresh, "
                    "then `weft rmpeer` this peer's old name elsewhere if needed)") from None
            for warning in warnings:
                log.warning("ipam: %s", warning)
        return alloc

    @property
    def _ipam_path(self) -> Path:
        return self.datadir.path / IPAM_FILE

    def _need_ipam(self) -> Allocator:
        if self.ipam is None:
            raise LocalProtocolError("IPAM is disabled (the router was launched with "
                                     "--ipalloc-range '')")
        return self.ipam

    def _check_specs(self, specs: list[AddressSpec]) -> None:
        """Without IPAM nothing can be allocated: every ADDR must be IP/LEN."""
        if self.ipam is None and not all(isinstance(spec, IPv4Interface) for spec in specs):
            raise LocalProtocolError("allocating an address needs IPAM, which is off (the "
                                     "router was launched with --ipalloc-range ''); give IP/LEN")

    async def _ipam_get_all(self, ipam: Allocator, ident: str, specs: list[AddressSpec]
                            ) -> tuple[list[IPv4Interface], list[IPv4Interface]]:
        """One address per spec for ``ident`` (repeats dropped), and those of them this call
        took afresh, for the caller to ``_ipam_release`` if what follows fails. When one
        cannot be had, those taken afresh are freed again before the error goes up."""
        held = set(ipam.lookup(ident))
        got: list[IPv4Interface] = []
        fresh: list[IPv4Interface] = []
        try:
            for spec in specs:
                iface = await self._ipam_get(ipam, ident, spec)
                got.append(iface)
                if iface not in held and iface.ip in ipam.universe:
                    fresh.append(iface)
        except BaseException:
            self._ipam_release(ident, fresh)
            raise
        return list(dict.fromkeys(got)), fresh

    async def _ipam_get(self, ipam: Allocator, ident: str, spec: AddressSpec) -> IPv4Interface:
        """Allocate (``net:``) or claim (``IP/LEN``) one address; a one-line error otherwise."""
        if isinstance(spec, IPv4Interface):
            return await self._ipam_op(
                ipam, lambda op: ipam.claim(op, ident, spec, trio.current_time()))
        return await self._ipam_op(
            ipam, lambda op: ipam.allocate(op, ident, spec, trio.current_time()))

    async def _ipam_op(self, ipam: Allocator, start: Callable[[int], None]) -> IPv4Interface:
        op_id = self._next_op
        self._next_op += 1
        done = trio.Event()
        box: list[Any] = []
        self._ipam_waiting[op_id] = (done, box)
        try:
            start(op_id)
            self._pump()
            with trio.move_on_after(ipam.timeout + IPAM_ANSWER_SLACK):
                await done.wait()
        finally:
            self._ipam_waiting.pop(op_id, None)
        if not box:
            raise LocalProtocolError(f"IPAM gave no answer in time: {ipam.why()}")
        result = box[0]
        if result.address is None:
            raise LocalProtocolError(result.error or "IPAM refused the address")
        address: IPv4Interface = result.address
        return address

    def _ipam_release(self, ident: str, addresses: list[IPv4Interface]) -> None:
        if self.ipam is None or not addresses:
            return
        for iface in addresses:
            self.ipam.free(ident, iface.ip, trio.current_time())
        self._pump()

    def _ipam_pump(self, now: float) -> None:
        """Tell the allocator who is reachable; carry out what it asked for, in its order."""
        ipam = self.ipam
        assert ipam is not None
        mesh = self.mesh
        alive: dict[int, str] = {}
        for peer in mesh.routes.reachable:
            rec = mesh.topology.get(peer)
            if peer != mesh.config.name and rec is not None:
                alive[peer] = rec.nickname
        if alive != self._ipam_alive:
            self._ipam_alive = alive
            ipam.peers_changed(alive, now)
        if ipam.dirty:
            self._persist_ipam(ipam)
        if (news := ipam.take_news()) is not None:
            mesh.gossip_news(IPAM_CHANNEL, news)
        for dst, payload in ipam.messages_to_send():
            if dst is not None:
                mesh.gossip_unicast(IPAM_CHANNEL, dst, payload, now)
        while (result := ipam.next_result()) is not None:
            waiting = self._ipam_waiting.get(result.op_id)
            if waiting is not None:
                waiting[1].append(result)
                waiting[0].set()

    def _persist_ipam(self, ipam: Allocator) -> None:
        self.datadir.create()
        self.datadir.write_atomically(self._ipam_path, encode_state(ipam.to_state()))

    async def _ipam_watch_loop(self, watched: dict[str, netdev.NetnsRef]) -> None:
        """Without DNS (whose loop does it otherwise): free the addresses of containers
        whose namespace disappeared without a detach."""
        while True:
            await trio.sleep(WATCH_INTERVAL)
            records = self.attachments.records()
            for key in list(watched):
                if key not in records:
                    del watched[key]
            found = False
            for key, ref in list(watched.items()):
                try:
                    st = os.stat(ref.path)
                    alive = (st.st_dev, st.st_ino) == ref.key
                except OSError:
                    alive = False
                if not alive and self.ipam is not None and watched.get(key) is ref:
                    del watched[key]
                    await self.attachments.forget(key)
                    self._ipam_container_gone(key)
                    found = True
            if found:
                self._pump()

    def _ipam_reconcile(self, attached: set[str]) -> None:
        """Containers no longer attached (gone while we were away) start their grace period
        now, unless they started it before the restart (that deadline stands)."""
        ipam = self.ipam
        if ipam is None:
            return
        gone = sorted({ident for _, ident in ipam.space.items()} - attached)
        for ident in gone:
            self._ipam_container_gone(ident)

    def _ipam_container_gone(self, ident: str) -> None:
        """``ident``'s namespace disappeared without a detach: free after the grace period."""
        ipam = self.ipam
        if ipam is None or ident in ipam.releases:
            return
        count = ipam.container_died(ident, trio.current_time())
        if count:
            log.info("container %s is gone: its %d address(es) are freed in %.0fs unless it "
                     "comes back", ident, count, ipam.grace)

    def _ipam_free_released(self, container: str) -> list[str] | None:
        """``weft detach`` of a container whose namespace is gone and whose addresses wait
        out their grace period: free them now (None: no such container)."""
        ident = netdev.netns_name(container)
        if self.ipam is None or ident not in self.ipam.releases:
            return None
        freed = [str(iface) for iface in self.ipam.lookup(ident)]
        self.ipam.free(ident, None, trio.current_time())
        log.info("detached %s (gone already): %s freed", ident, " ".join(freed))
        self._pump()
        return freed

    # --- DNS commands --------------------------------------------------------------------

    def _need_dns(self) -> DnsService:
        if self.dns is None:
            raise LocalProtocolError("DNS is disabled (the router was launched with --no-dns)")
        return self.dns

    async def _container_key(self, container: str, *, attached: bool) -> str:
        """The record key of ``container`` (its display name); with ``attached``, it must
        be attached to this router."""
        try:
            ref: netdev.NetnsRef = await trio.to_thread.run_sync(netdev.resolve_netns, container)
            key: str = ref.name
        except netdev.NetdevError as exc:
            if attached:
                raise LocalProtocolError(str(exc)) from None
            return container.strip()
        if attached and key not in self.attachments.records():
            raise LocalProtocolError(f"container {key} is not attached to the network")
        return key

    async def dns_add(self, addresses: list[str], container: str | None, name: str) -> int:
        dns = self._need_dns()
        dns.qualify(name)  # a bad name is refused before anything else
        key = None
        if container is not None:
            key = await self._container_key(container, attached=True)
            if not addresses:
                addresses = self.attachments.records()[key].ips
        elif not addresses:
            raise LocalProtocolError("dns-add needs IP addresses (an external record) or a container")
        added = dns.add(name, addresses, key, time.time())
        self._pump()
        return added

    async def dns_remove(self, addresses: list[str], container: str | None,
                         name: str | None) -> int:
        dns = self._need_dns()
        key = None if container is None else await self._container_key(container, attached=False)
        removed = dns.remove(time.time(), name=name, addresses=addresses, container=key)
        self._pump()
        return removed

    def dns_lookup(self, name: str) -> dict[str, Any]:
        hostname, addresses = self._need_dns().lookup(name)
        return {"name": hostname, "addresses": list(addresses)}

    async def ps(self) -> list[dict[str, Any]]:
        return await self.attachments.ps()

    # --- expose / hide (router/host/expose.py: bridge addresses, nftables, ip_forward) ---------

    async def expose(self, addresses: list[str], name: str | None) -> list[str]:
        """Give the host addresses on the network (ADDR as for attach; IPAM identifier
        EXPOSE_IDENT), masquerading for containers' traffic out; with ``name``, a DNS
        record for them. Idempotent: the same ADDR gives the same address."""
        specs = parse_address_specs(addresses)
        hostname = None if name is None else self._need_dns().qualify(name)
        self._check_specs(specs)
        given = [spec for spec in specs if isinstance(spec, IPv4Interface)]
        for rec in self.attachments.records().values():
            for iface in given:
                if str(iface.ip) in rec.ips:
                    raise LocalProtocolError(f"{iface.ip} is already attached to {rec.container}")
        async with self.exposer.lock:
            self.exposer.check(given)
            got: list[IPv4Interface] = list(dict.fromkeys(given))
            fresh: list[IPv4Interface] = []   # what IPAM gave for this call only: undone on failure
            if self.ipam is not None:
                got, fresh = await self._ipam_get_all(self.ipam, EXPOSE_IDENT, specs)
            try:
                before = await self.exposer.expose(got, hostname)
            except BaseException:
                self._ipam_release(EXPOSE_IDENT, fresh)
                raise
            if self.dns is not None:
                self._expose_dns(self.dns, before)
        self._pump()
        return [str(iface) for iface in got]

    def _expose_dns(self, dns: DnsService, before: ExposeRecord) -> None:
        rec = self.exposer.record()
        if rec.name is None:
            return
        now = time.time()
        if before.name is not None and before.name != rec.name:
            dns.unregister(EXPOSE_IDENT, now)   # renamed: the old name goes
        dns.register(EXPOSE_IDENT, rec.name, [str(c.ip) for c in rec.cidrs], now)

    async def hide(self, addresses: list[str]) -> list[str]:
        """Take exposed addresses away (all when none given), with their DNS record, their
        IPAM addresses and the rules no address needs any more. Idempotent."""
        default = self.ipam.default_subnet if self.ipam is not None else None
        async with self.exposer.lock:
            gone, after = await self.exposer.hide(addresses, default)
            if self.dns is not None and gone:
                self.dns.unregister(EXPOSE_IDENT, time.time(),
                                    None if not after.cidrs else [str(c.ip) for c in gone])
            if self.ipam is not None:
                for iface in gone:
                    self.ipam.free(EXPOSE_IDENT, iface.ip, trio.current_time())
        self._pump()
        return [str(iface) for iface in gone]

    def _expose_reset(self) -> None:
        """``reset``: addresses, our nftables table and forwarding go; so do the IPAM
        addresses (before the handoff) and the DNS record."""
        removed = self.exposer.teardown()
        if removed:
            log.info("reset: hid %s", " ".join(removed))
        if self.dns is not None:
            self.dns.unregister(EXPOSE_IDENT, time.time())
        if self.ipam is not None:
            self.ipam.free(EXPOSE_IDENT, None, trio.current_time())

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
            alive = await self.attachments.restore()
            await self.exposer.restore()
            self._ipam_reconcile({rec.container for rec, _ in alive} | self.exposer.idents())
            if self.dns is not None:
                await self._start_dns(nursery, self.dns, alive)
            elif self.ipam is not None:
                self._ipam_watched.update({rec.container: ref for rec, ref in alive})
                nursery.start_soon(self._ipam_watch_loop, self._ipam_watched)
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            host, port = self.config.http_addr
            await nursery.start(functools.partial(serve_api, self, host, port, conns=self.api_conns))
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

    # --- DNS -------------------------------------------------------------------------------

    async def _start_dns(self, nursery: trio.Nursery, dns: DnsService,
                         alive: list[tuple[Record, netdev.NetnsRef]]) -> None:
        """Re-assert our names (before any peer can connect), then serve."""
        swept = await trio.to_thread.run_sync(sweep_resolv_confs)
        if swept:
            log.info("removed the resolv.conf of %d namespaces that no longer exist", len(swept))
        saved = self.datadir.load_state().get("dns")
        claims = parse_claims(saved.get("claims") if isinstance(saved, dict) else None)
        attached = {rec.container for rec, _ in alive} | self.exposer.idents()
        dns.restore(claims, attached.__contains__, time.time())
        self._persist_dns(dns)
        self.dns_server = await nursery.start(functools.partial(
            serve_dns, lambda: dns.store, domain=dns.domain, ttl=self.config.dns_ttl))
        self._open_host_listener(self.dns_server)
        for rec, ref in alive:
            await self._dns_container_attached(rec.container, ref)
        nursery.start_soon(self._dns_loop, dns)

    def _persist_dns(self, dns: DnsService) -> None:
        dns.take_claims_changed()
        state = self.datadir.load_state()
        state["dns"] = {"claims": [list(c) for c in dns.claims()]}
        self.datadir.save_state(state)

    def _open_host_listener(self, server: DnsServer) -> None:
        if DNS_ADDRESS in server.upstreams.get().nameservers:
            log.warning("this host's resolv.conf names %s as its resolver (a container "
                        "runtime's own DNS?): weftDNS does not listen there on the host",
                        DNS_ADDRESS)
            return
        try:
            udp, tcp = open_sockets(DNS_ADDRESS, DNS_PORT)
        except OSError as exc:
            log.warning("weftDNS cannot listen on %s:%d on the host: %s", DNS_ADDRESS, DNS_PORT,
                        exc.strerror or exc)
            return
        server.add_listener(HOST_LISTENER, udp, tcp, local=True)

    async def _dns_container_attached(self, container: str, ref: netdev.NetnsRef) -> None:
        """Serve DNS inside the container's namespace (once per namespace) and watch it."""
        server = self.dns_server
        if server is None:
            return
        async with self._dns_lock:
            held = self._dns_containers.get(container)
            if held is not None and held.key == ref.key:
                return
            if held is not None:  # a new namespace under an old name: the old one is gone
                self._dns_container_gone(container)
                if self.dns is not None:
                    self.dns.unregister(container, time.time())
            self._dns_containers[container] = ref
            if any(other.key == ref.key for c, other in self._dns_containers.items()
                   if c != container):
                return  # the same namespace under another name has the listener
            try:
                udp, tcp = await trio.to_thread.run_sync(
                    netdev.run_in_netns, ref, functools.partial(open_sockets, DNS_ADDRESS, DNS_PORT))
            except (OSError, netdev.NetdevError) as exc:
                log.warning("no DNS server inside %s: cannot listen on %s:%d there: %s",
                            container, DNS_ADDRESS, DNS_PORT, exc)
                return
            server.add_listener("container:" + container, udp, tcp)

    def _dns_container_gone(self, container: str) -> None:
        self._dns_containers.pop(container, None)
        if self.dns_server is not None:
            self.dns_server.remove_listener("container:" + container)

    async def _dns_loop(self, dns: DnsService) -> None:
        while True:
            now = time.time()
            await trio.sleep(max(0.0, min(dns.get_timer(), now + WATCH_INTERVAL) - now))
            gone = dns.handle_timer(time.time(), self.mesh.topology.peers)
            for name in gone:
                log.info("peer %s left the mesh: its DNS names are removed", format_peer_name(name))
            if await self._watch_containers(dns) or gone:
                self._pump()

    async def _watch_containers(self, dns: DnsService) -> bool:
        """Detach containers whose namespace is gone; True when there were any."""
        found = False
        for container, ref in list(self._dns_containers.items()):
            try:
                st = os.stat(ref.path)
                alive = (st.st_dev, st.st_ino) == ref.key
            except OSError:
                alive = False
            if not alive and self._dns_containers.get(container) is ref:
                log.info("container %s is gone: detaching it", container)
                self._dns_container_gone(container)
                dns.unregister(container, time.time())
                await self.attachments.forget(container)
                self._ipam_container_gone(container)
                found = True
        return found

    # --- the pump: carry out what the mesh asked for ------------------------------------

    def _pump(self) -> None:
        mesh = self.mesh
        now = trio.current_time()
        self.dataplane.drain(now)  # links whose overlay changed: set_overlay first
        if self.dns is not None:
            if (news := self.dns.take_news()) is not None:
                mesh.gossip_news(DNS_CHANNEL, news)
            if self.dns.take_claims_changed():
                self._persist_dns(self.dns)
        if self.ipam is not None:
            self._ipam_pump(now)
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
                self._metrics.connection_closed(event.conn_id, event.reason)  # before the link goes
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
            ipam_deadline = self.ipam.get_timer() if self.ipam is not None else None
            dp_deadline = self.dataplane.get_timer()
            self._timer_changed = trio.Event()
            wake = min((t for t in (deadline, ipam_deadline, dp_deadline) if t is not None),
                       default=math.inf)
            with trio.move_on_at(wake):
                await self._timer_changed.wait()
            now = trio.current_time()
            due = False
            if deadline is not None and now >= deadline:
                self.mesh.handle_timer(now)
                due = True
            if self.ipam is not None and ipam_deadline is not None and now >= ipam_deadline:
                self.ipam.handle_timer(now)
                due = True
            if dp_deadline is not None and now >= dp_deadline:
                self.dataplane.handle_timer(now)
                due = True
            if due:
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


def ipam_grace(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds a vanished container keeps its addresses: env ``WEFT_IPAM_GRACE`` (not a
    launch option: the contract's options are fixed), else ``RELEASE_GRACE`` (30, as Weave)."""
    raw = environ.get(IPAM_GRACE_ENV, "").strip()
    if not raw:
        return RELEASE_GRACE
    try:
        return check_grace(float(raw))
    except ValueError:
        raise LocalProtocolError(f"invalid {IPAM_GRACE_ENV}={raw!r}: give the seconds a vanished "
                                 f"container keeps its addresses, 0 to {MAX_GRACE:.0f}") from None


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
