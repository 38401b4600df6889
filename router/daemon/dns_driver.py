"""The DNS driver: weftDNS's pure ``DnsService`` on the mesh, and its server's listeners.

Theory of operation (the recipe is ``weftnet.dns``'s docstring). ``DnsService`` holds the
records; its channel "dns" rides on the mesh, and every pump first floods what it has to
say (``pump``: local changes, corrections of stale copies of our entries) and persists
our claims when they changed. One ``DnsServer`` answers on 127.0.0.11:53, UDP and TCP, in
the router's own namespace and inside every attached container's namespace (sockets made
there by a thread that joined it, served from here, like Docker's embedded DNS); names it
does not know are forwarded to the resolvers of this namespace's /etc/resolv.conf.
Launch order matters (``Router._main``)::

    restore attachments ─▶ restore claims (reconcile) ─▶ DNS server + listeners ─▶
    accept connections / dial targets (peers only ever see the re-asserted names)

The service works in wall-clock seconds (its tombstones' ``deleted_at`` are compared
across routers); the driver converts with ``wall_offset`` (wall minus trio's monotonic
clock, taken at start, as the IPAM allocator's), so it is one more timer source of the
daemon's ``TimerLoop``. The service learns the topology only when ``handle_timer`` hands
it over, so the driver asks to be woken at least every ``TOPOLOGY_CHECK`` seconds: names
of routers gone from the topology for ``PEER_GONE_GRACE`` go, and tombstones expire.
A container whose namespace is gone (the namespace watcher's news) loses its listener
(whose sockets would otherwise keep the dead namespace alive) and its names.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import trio

from weftnet.dns.gossip import CHANNEL as DNS_CHANNEL
from weftnet.dns.resolvconf import container_resolv_conf
from weftnet.dns.service import DnsService, default_hostname, parse_claims
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.mesh import MeshNode
from weftnet.proto.peername import PeerName, format_peer_name
from weftnet.router.daemon.dns_server import DnsServer, open_sockets, serve_dns
from weftnet.router.host import netdev
from weftnet.router.host.attachments import Attachments, Record, named_netns, sweep_resolv_confs
from weftnet.router.host.datadir import DataDir

log = logging.getLogger("weft")

DNS_ADDRESS = "127.0.0.11"   # where containers (and the host) reach weftDNS, as with Docker
DNS_PORT = 53
HOST_LISTENER = "host"
TOPOLOGY_CHECK = 1.0         # seconds between hand-overs of the topology to the service


def need_dns(dns: DnsDriver | None) -> DnsDriver:
    if dns is None:
        raise LocalProtocolError("DNS is disabled (the router was launched with --no-dns)")
    return dns


class DnsDriver:
    """Drives ``service`` over ``mesh``; ``pump`` is the daemon's (it calls ``self.pump``)."""

    def __init__(self, service: DnsService, mesh: MeshNode, datadir: DataDir,
                 attachments: Attachments, pump: Callable[[], None], *, ttl: int) -> None:
        self.service = service
        self.mesh = mesh
        self.datadir = datadir
        self.attachments = attachments
        self._pump = pump
        self.ttl = ttl
        self.server: DnsServer | None = None
        self._listening: dict[str, netdev.NetnsRef] = {}   # containers served (or sharing)
        self._lock = trio.Lock()
        self._next_check: float = trio.current_time() + TOPOLOGY_CHECK

    @property
    def domain(self) -> str:
        return self.service.domain

    @property
    def wall_offset(self) -> float:
        """Wall clock minus trio's: the service's, taken once at start."""
        return self.service.wall_offset

    def wall(self) -> float:
        """Now, in the service's wall-clock seconds."""
        now: float = trio.current_time()
        return now + self.wall_offset

    def qualify(self, name: str) -> str:
        return self.service.qualify(name)

    # --- launch --------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery, alive: list[tuple[Record, netdev.NetnsRef]],
                    exposed: set[str]) -> None:
        """Re-assert our names (before any peer can connect), then serve."""
        dns = self.service
        swept = await trio.to_thread.run_sync(sweep_resolv_confs)
        if swept:
            log.info("removed the resolv.conf of %d namespaces that no longer exist", len(swept))
        saved = self.datadir.load_state().get("dns")
        claims = parse_claims(saved.get("claims") if isinstance(saved, dict) else None)
        attached = {rec.container for rec, _ in alive} | exposed
        dns.restore(claims, attached.__contains__, self.wall())
        self.persist()
        self.server = await nursery.start(functools.partial(
            serve_dns, lambda: dns.store, domain=dns.domain, ttl=self.ttl))
        self._open_host_listener(self.server)
        for rec, ref in alive:
            await self.container_attached(rec.container, ref)

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

    # --- containers --------------------------------------------------------------------------

    def resolv_conf(self) -> str:
        """The resolv.conf text for a container: our server, our domain to search."""
        search = self.server.upstreams.get().search if self.server else ()
        return container_resolv_conf(DNS_ADDRESS, self.domain, search)

    async def container_attached(self, container: str, ref: netdev.NetnsRef) -> None:
        """Serve DNS inside the container's namespace (once per namespace)."""
        server = self.server
        if server is None:
            return
        async with self._lock:
            held = self._listening.get(container)
            if held is not None and held.key == ref.key:
                return
            if held is not None:   # another namespace under this name (the watcher's
                self._close_listener(container)   # news normally closed it already)
            self._listening[container] = ref
            if any(other.key == ref.key for c, other in self._listening.items()
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

    def _close_listener(self, container: str) -> None:
        self._listening.pop(container, None)
        if self.server is not None:
            self.server.remove_listener("container:" + container)

    def name_container(self, container: str, ref: netdev.NetnsRef, hostname: str | None,
                       ips: list[str]) -> None:
        """``attach``: register ``hostname`` (else the namespace's name) for ``ips``."""
        if hostname is None:
            netns = named_netns(ref)
            hostname = default_hostname(netns, self.domain) if netns is not None else None
        if hostname is not None:
            self.service.register(container, hostname, ips, self.wall())
        else:
            log.info("container %s gets no DNS name (give one with --name)", container)

    def namespace_gone(self, container: str, *, replaced: bool) -> None:
        """The namespace watcher's news: the listener and the names go."""
        self._close_listener(container)
        self.service.unregister(container, self.wall())

    def detached(self, container: str, ips: list[str] | None) -> None:
        """``detach``: every name of ``container`` and its listener (None), or those of ``ips``."""
        if ips is None:
            self.service.unregister(container, self.wall())
            self._close_listener(container)
        elif ips:
            self.service.unregister(container, self.wall(), ips)

    def register(self, container: str, hostname: str, ips: list[str]) -> None:
        self.service.register(container, hostname, ips, self.wall())

    def unregister(self, container: str, ips: list[str] | None = None) -> None:
        self.service.unregister(container, self.wall(), ips)

    def forget_all(self) -> None:
        """``reset``: tombstone every name we claim (gossiped before the Goodbye)."""
        for container in sorted({claim[2] for claim in self.service.claims()}):
            self.service.unregister(container, self.wall())

    # --- the API's DNS commands -----------------------------------------------------------

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

    async def add(self, addresses: list[str], container: str | None, name: str) -> int:
        dns = self.service
        dns.qualify(name)  # a bad name is refused before anything else
        key = None
        if container is not None:
            key = await self._container_key(container, attached=True)
            if not addresses:
                addresses = self.attachments.records()[key].ips
        elif not addresses:
            raise LocalProtocolError("dns-add needs IP addresses (an external record) or a container")
        added = dns.add(name, addresses, key, self.wall())
        self._pump()
        return added

    async def remove(self, addresses: list[str], container: str | None, name: str | None) -> int:
        key = None if container is None else await self._container_key(container, attached=False)
        removed = self.service.remove(self.wall(), name=name, addresses=addresses, container=key)
        self._pump()
        return removed

    def lookup(self, name: str) -> dict[str, Any]:
        hostname, addresses = self.service.lookup(name)
        return {"name": hostname, "addresses": list(addresses)}

    def report(self) -> dict[str, Any]:
        """The report's ``dns`` section."""
        report: dict[str, Any] = {"domain": self.domain, "address": DNS_ADDRESS, "ttl": self.ttl}
        if self.server is not None:
            report["upstream"] = list(self.server.upstreams.get().nameservers)
            report["listeners"] = len(self.server.listeners())
            report["statistics"] = asdict(self.server.statistics())
        report["entries"] = self.service.entries_report()
        return report

    # --- the pump's step, timers, persistence ------------------------------------------------

    def pump(self) -> None:
        """Flood what the service has to say; persist our claims when they changed."""
        if (news := self.service.take_news()) is not None:
            self.mesh.gossip_news(DNS_CHANNEL, news)
        if self.service.take_claims_changed():
            self.persist()

    def get_timer(self) -> float:
        wake: float = self.service.get_timer() - self.wall_offset
        return min(wake, self._next_check)

    def handle_timer(self, now: float) -> None:
        self._next_check = now + TOPOLOGY_CHECK
        gone = self.service.handle_timer(now + self.wall_offset, self.peers())
        for name in gone:
            log.info("peer %s left the mesh: its DNS names are removed", format_peer_name(name))

    def peers(self) -> Iterable[PeerName]:
        return self.mesh.topology.peers

    def persist(self) -> None:
        self.service.take_claims_changed()
        state = self.datadir.load_state()
        state["dns"] = {"claims": [list(c) for c in self.service.claims()]}
        self.datadir.save_state(state)
