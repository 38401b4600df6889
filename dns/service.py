"""A router's DNS duties as a pure state machine: our names, their news, peers that left.

Theory of operation. The router's daemon owns the sockets, the files and the clocks;
``DnsService`` owns the record store and every decision about it, so the rules below are
tested without either. ``now`` is wall-clock seconds (``time.time()``), as the store
wants (see ``records``); gossip arrives with the mesh's own ``now`` (monotonic), which
the gossiper turns into wall-clock seconds with ``wall_offset`` (wall clock minus the
mesh's clock, taken when the router starts, as the IPAM allocator's)::

    inputs (daemon)                              outputs (daemon carries them out)
    ───────────────                              ─────────────────────────────────
    register / unregister (attach, detach)       take_news()   -> Entries | None, for
    add / remove (dns-add, dns-remove)               MeshNode.gossip_news(CHANNEL, ...)
    restore(claims, keep, now) (launch)          take_claims_changed() -> persist claims()
    handle_timer(now, peers in the topology)     get_timer()   -> wake me at (wall clock)
    remove_peer(name, now) (rmpeer)              lookup(), entries_report(), stats
    gossip from the mesh: ``gossiper``

Local changes and the gossiper's corrections of stale copies of our entries (origin
authority) queue up as news; the daemon drains ``take_news()`` after every API call and
every input it feeds the mesh, so each reaches every neighbour at once.

Names. A name without a dot gets the domain appended (``qualify``); a container's
default name is its namespace name when that is a valid host name (``default_hostname``);
records without a container (``dns-add IP --name N``) belong to ``EXTERN``.

Claims: what we assert, ``[(hostname, address, container)]``, persisted by the daemon in
its data dir whenever they change. A restarted router calls ``restore`` before it joins
the mesh: claims of containers still attached (and external ones) come back, others are
tombstoned, and the gossip the mesh then brings about our previous incarnation is
corrected by the store's origin authority (the restart rule of ``records``).

Peers that left. A router gone from the topology takes its names with it, but only once
it has been gone for ``PEER_GONE_GRACE`` seconds: a router that restarts, or a link that
flaps, does not make names blink. Entries can also arrive before the topology gossip
that names their origin; the grace period covers that too. Tombstoning another router's
entries is always safe: if it is alive after all, it re-asserts them (origin authority).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.peername import PeerName, format_peer_name

from .gossip import DnsGossiper, Entries
from .names import (
    DEFAULT_DOMAIN,
    address_key,
    hostname_problem,
    normalize_address,
    normalize_domain,
    qualify,
)
from .records import MAX_CONTAINER, Entry, RecordStore

EXTERN = "weft:extern"          # the container of records added without one
PEER_GONE_GRACE = 30.0          # seconds a router may be absent before its names go

Claim = tuple[str, str, str]    # (hostname, address, container)


def default_hostname(container: str, domain: str = DEFAULT_DOMAIN) -> str | None:
    """The name a container gets without ``--name``: its namespace name, qualified; None
    when the name cannot be a host name (``pid:42``, a path, ``a+b``)."""
    if "/" in container or ":" in container:
        return None
    try:
        return qualify(container, domain)
    except LocalProtocolError:
        return None


def parse_claims(obj: Any) -> list[Claim]:
    """Claims as persisted (JSON lists of 3 strings); malformed items are skipped."""
    out: list[Claim] = []
    if not isinstance(obj, list):
        return out
    for item in obj:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            continue
        hostname, address, container = item
        if hostname_problem(hostname) is not None or not 0 < len(container) <= MAX_CONTAINER:
            continue
        try:
            out.append((hostname, normalize_address(address), container))
        except LocalProtocolError:
            continue
    return sorted(set(out))


class DnsService:
    """The store, its gossiper, and the router's operations on them (module docstring)."""

    def __init__(self, our_name: PeerName, now: float, *, wall_offset: float = 0.0,
                 domain: str = DEFAULT_DOMAIN, grace: float = PEER_GONE_GRACE) -> None:
        """``now``: wall-clock seconds; ``wall_offset``: wall clock minus the mesh's clock
        (0 when the mesh runs on the wall clock, as in tests)."""
        self.domain = normalize_domain(domain)
        self.store = RecordStore(our_name, now)
        self.wall_offset = wall_offset
        self.gossiper = DnsGossiper(self.store, wall_offset=wall_offset)
        self.grace = grace
        self._pending: list[Entry] = []
        self._claims_changed = False
        self._missing: dict[PeerName, float] = {}   # origin -> first seen absent

    @property
    def our_name(self) -> PeerName:
        return self.store.our_name

    def qualify(self, name: str) -> str:
        """``name`` in canonical form, the domain appended when it has no dot."""
        return qualify(name, self.domain)

    # --- outputs ---------------------------------------------------------------------------

    def take_news(self) -> Entries | None:
        """Everything to gossip since the last call: local changes and corrections."""
        entries = self._pending + self.store.take_overrides()
        self._pending = []
        return Entries.of(entries) if entries else None

    def take_claims_changed(self) -> bool:
        """True once after our claims changed (the daemon persists ``claims()`` then)."""
        changed, self._claims_changed = self._claims_changed, False
        return changed

    def claims(self) -> list[Claim]:
        """Our live entries as (hostname, address, container), sorted."""
        return [(e.hostname, e.address, e.container) for e in self.store.entries()
                if e.origin == self.our_name]

    def get_timer(self) -> float:
        """When to call ``handle_timer`` next (wall clock)."""
        wake = self.store.get_timer()
        for since in self._missing.values():
            wake = min(wake, since + self.grace)
        return wake

    # --- local changes ---------------------------------------------------------------------

    def _changed(self, delta: list[Entry]) -> int:
        if delta:
            self._pending += delta
            self._claims_changed = True
        return len(delta)

    def register(self, container: str, hostname: str, addresses: Iterable[str], now: float) -> int:
        """Claim ``hostname`` (canonical) for each address of ``container``; the number added."""
        delta: list[Entry] = []
        for address in addresses:
            delta += self.store.add(hostname, address, container, now)
        return self._changed(delta)

    def unregister(self, container: str, now: float,
                   addresses: Iterable[str] | None = None) -> int:
        """Drop our entries of ``container`` (only those of ``addresses`` when given)."""
        if addresses is None:
            return self._changed(self.store.remove_container(container, now))
        delta: list[Entry] = []
        for address in addresses:
            delta += self.store.remove(now, address=address, container=container)
        return self._changed(delta)

    def add(self, name: str, addresses: Iterable[str], container: str | None, now: float) -> int:
        """``dns-add``: ``name`` (qualified) for each address; EXTERN without a container."""
        ips = [normalize_address(a) for a in addresses]
        if not ips:
            raise LocalProtocolError("dns-add needs at least one address")
        return self.register(container or EXTERN, self.qualify(name), ips, now)

    def remove(self, now: float, *, name: str | None = None, addresses: Iterable[str] = (),
               container: str | None = None) -> int:
        """``dns-remove``: our entries matching every criterion given (at least one)."""
        hostname = None if name is None else self.qualify(name)
        ips = [normalize_address(a) for a in addresses]
        if hostname is None and not ips and container is None:
            raise LocalProtocolError("dns-remove needs an address, a container or a name")
        delta: list[Entry] = []
        targets: list[str | None] = list(ips) if ips else [None]
        for address in targets:
            delta += self.store.remove(now, hostname=hostname, address=address, container=container)
        return self._changed(delta)

    def restore(self, claims: Iterable[Claim], keep: Callable[[str], bool], now: float) -> int:
        """At launch, before joining the mesh: assert the persisted claims whose container
        ``keep`` approves (external records always); tombstone the rest of ours."""
        claims = list(claims)
        wanted = [c for c in claims if c[2] == EXTERN or keep(c[2])]
        delta = self.store.reconcile(wanted, now)
        self._pending += delta
        if sorted(set(wanted)) != sorted(set(claims)):
            self._claims_changed = True
        return len(delta)

    def remove_peer(self, name: PeerName, now: float) -> int:
        """Tombstone the entries of a router that left for good (``rmpeer``)."""
        self._missing.pop(name, None)
        if name == self.our_name:
            return 0
        delta = self.store.remove_peer(name, now)
        self._pending += delta
        return len(delta)

    # --- time ------------------------------------------------------------------------------

    def handle_timer(self, now: float, peers: Iterable[PeerName]) -> list[PeerName]:
        """Expire tombstones; drop the names of routers absent from ``peers`` (the topology)
        for ``grace`` seconds. Returns those routers."""
        self.store.handle_timer(now)
        present = set(peers)
        origins = set(self.store.origins()) - {self.our_name}
        for name in list(self._missing):
            if name in present or name not in origins:
                del self._missing[name]
        gone = []
        for name in sorted(origins - present):
            since = self._missing.setdefault(name, now)
            if now - since >= self.grace:
                self.remove_peer(name, now)
                gone.append(name)
        return gone

    # --- queries ---------------------------------------------------------------------------

    def lookup(self, name: str) -> tuple[str, tuple[str, ...]]:
        """(canonical name, its live addresses sorted) for ``dns-lookup``."""
        hostname = self.qualify(name)
        return hostname, self.store.lookup(hostname)

    def entries_report(self) -> list[dict[str, str]]:
        """The report's ``dns.entries``: live entries sorted by name, address, container."""
        entries = sorted(self.store.entries(),
                         key=lambda e: (e.hostname, address_key(e.address), e.container, e.origin))
        return [{"hostname": e.hostname, "address": e.address, "container": e.container,
                 "origin": format_peer_name(e.origin)} for e in entries]
