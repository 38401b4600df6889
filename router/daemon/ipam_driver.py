"""The IPAM driver: the pure ``Allocator`` on the mesh, for the daemon.

Theory of operation (the recipe is ``weftnet.ipam``'s docstring). The allocator rides on
the mesh as channel "ipam". Every pump calls ``pump(now)``, which tells it when the set of
reachable peers changed, then drains its outputs in the core's order: persist
``DATA_DIR/ipam.json`` (atomically) when dirty, gossip its news, send its unicasts, answer
the API calls waiting on results (each op has a deadline in the core, so no call hangs;
``IPAM_ANSWER_SLACK`` beyond it covers an answer lost anyway). The driver is a timer
source of the daemon's ``TimerLoop``.

``attach`` and ``expose`` allocate (no ADDR, ``net:default``, ``net:CIDR``) or claim
(``IP/LEN``) before plumbing (``get_all``), and ``release`` what they got if plumbing
fails; ``detach`` frees at once (also a container whose namespace is gone already:
``free_released``). A container whose namespace disappeared without a detach (told by
the namespace watcher, or found at launch by ``reconcile``: attached before, gone now)
keeps its addresses for a grace period (``weftnet.ipam.release``: 30 s, env
``WEFT_IPAM_GRACE`` seconds, 0 = at once) in case it comes back under the same name; the
deadline is persisted, so a restart meanwhile still frees them in time. ``weft reset``
hands our space to a live peer (``handoff``) before stopping; ``weft rmpeer`` takes a
dead one's.

IPv6 (``--ipalloc-range-v6``, off by default) is a second ``Allocator`` over the 128-bit
range, on its own channel "ipam6" and in its own file ``DATA_DIR/ipam6.json``: the two
rings never meet, so each keeps the IPv4 ring's laws (and the IPv4 ring's bytes on the
wire stay what they were). Every call here routes by family: ``IP/LEN`` and ``net:CIDR``
go to the allocator of their family; no ADDR (``net:default``) asks both, so a container
gets one address of each; freeing, grace periods, rmpeer, handoff and the timers cover
both. An IPv6 ``IP/LEN`` without IPv6 IPAM is simply not managed (as an IPv4 address
outside the range is).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)
from pathlib import Path
from typing import Any

import trio

from weftnet.ipam.allocator import Allocator
from weftnet.ipam.gossip import CHANNEL as IPAM_CHANNEL
from weftnet.ipam.gossip import CHANNEL_V6 as IPAM6_CHANNEL
from weftnet.ipam.persist import StateError, decode_state, encode_state
from weftnet.ipam.release import MAX_GRACE, RELEASE_GRACE, check_grace
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.mesh import MeshNode
from weftnet.router.daemon.config import LaunchConfig, ipalloc_init_mode
from weftnet.router.host import netdev
from weftnet.router.host.attachments import AddressSpec
from weftnet.router.host.datadir import IPAM6_FILE, IPAM_FILE, DataDir

log = logging.getLogger("weft")

IPAM_ANSWER_SLACK = 5.0      # beyond the core's own deadline, in case an answer got lost
IPAM_GRACE_ENV = "WEFT_IPAM_GRACE"   # seconds a vanished container keeps its addresses
Iface = IPv4Interface | IPv6Interface


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


def load_allocator(config: LaunchConfig, path: Path, name: int, now: float, *,
                   wall_offset: float, grace: float, v6: bool = False) -> Allocator:
    """The allocator (``v6``: the IPv6 one), with its persisted state at ``path``
    (damaged: refuse to start)."""
    universe: IPv4Network | IPv6Network
    subnet: IPv4Network | IPv6Network | None
    if v6:
        universe = IPv6Network(config.ipalloc_range_v6)
        subnet = (IPv6Network(config.ipalloc_default_subnet_v6)
                  if config.ipalloc_default_subnet_v6 else None)
    else:
        universe = IPv4Network(config.ipalloc_range)
        subnet = (IPv4Network(config.ipalloc_default_subnet)
                  if config.ipalloc_default_subnet else None)
    init = ipalloc_init_mode(config.ipalloc_init, len(config.peers))
    alloc = Allocator(name, config.nickname, universe, subnet, init, now,
                      random.Random(os.urandom(16)), grace=grace, wall_offset=wall_offset)
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


def check_specs(specs: list[AddressSpec], ipam: IpamDriver | None) -> None:
    """Without IPAM nothing can be allocated: every ADDR must be IP/LEN."""
    if ipam is None and not all(isinstance(spec, IPv4Interface | IPv6Interface) for spec in specs):
        raise LocalProtocolError("allocating an address needs IPAM, which is off (the "
                                 "router was launched with --ipalloc-range ''); give IP/LEN")


def need_ipam(ipam: IpamDriver | None) -> IpamDriver:
    if ipam is None:
        raise LocalProtocolError("IPAM is disabled (the router was launched with "
                                 "--ipalloc-range '')")
    return ipam


class IpamDriver:
    """Drives ``alloc`` over ``mesh``; ``pump`` is the daemon's (it calls ``self.pump``)."""

    def __init__(self, alloc: Allocator, mesh: MeshNode, datadir: DataDir,
                 pump: Callable[[], None], alloc6: Allocator | None = None) -> None:
        self.alloc = alloc
        self.alloc6 = alloc6     # IPv6 (--ipalloc-range-v6), None when off
        self.mesh = mesh
        self.datadir = datadir
        self._pump = pump
        self._alive: dict[int, str] = {}
        self._alive6: dict[int, str] = {}
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._next_op = 1

    @property
    def path(self) -> Path:
        return self.datadir.path / IPAM_FILE

    @property
    def path6(self) -> Path:
        return self.datadir.path / IPAM6_FILE

    def allocators(self) -> list[Allocator]:
        return [self.alloc] if self.alloc6 is None else [self.alloc, self.alloc6]

    def _family(self, version: int) -> Allocator | None:
        return self.alloc if version == 4 else self.alloc6

    def status(self) -> dict[str, Any]:
        """The report's ``ipam`` section (with ``ipv6``: the IPv6 allocator's, when on)."""
        out = self.alloc.status(trio.current_time())
        if self.alloc6 is not None:
            out["ipv6"] = self.alloc6.status(trio.current_time())
        return out

    # --- addresses for attach and expose -------------------------------------------------

    async def get_all(self, ident: str, specs: list[AddressSpec]
                      ) -> tuple[list[Iface], list[Iface]]:
        """One address per spec for ``ident`` (repeats dropped; no ADDR asks each family
        that has IPAM), and those of them this call took afresh, for the caller to
        ``release`` if what follows fails. When one cannot be had, those taken afresh are
        freed again before the error goes up."""
        held = {i for alloc in self.allocators() for i in alloc.lookup(ident)}
        got: list[Iface] = []
        fresh: list[Iface] = []
        asks: list[tuple[Allocator | None, AddressSpec]] = []
        for spec in specs:
            if spec is None:
                asks += [(alloc, None) for alloc in self.allocators()]
            else:
                asks.append((self._family(spec.version), spec))
        try:
            for alloc, spec in asks:
                iface = await self._get(alloc, ident, spec)
                got.append(iface)
                if alloc is not None and iface not in held and iface.ip in alloc.universe:
                    fresh.append(iface)
        except BaseException:
            self.release(ident, fresh)
            raise
        return list(dict.fromkeys(got)), fresh

    async def _get(self, alloc: Allocator | None, ident: str, spec: AddressSpec) -> Iface:
        """Allocate (``net:``) or claim (``IP/LEN``) one address; a one-line error otherwise."""
        if isinstance(spec, IPv4Interface | IPv6Interface):
            if alloc is None:  # IPv6 without IPv6 IPAM: not managed
                return spec
            return await self._op(alloc, lambda op: alloc.claim(op, ident, spec, trio.current_time()))
        if alloc is None:
            raise LocalProtocolError(f"net:{spec}: allocating an IPv6 address needs IPv6 IPAM "
                                     "(launch with --ipalloc-range-v6 CIDR); or give IP/LEN")
        return await self._op(alloc, lambda op: alloc.allocate(op, ident, spec, trio.current_time()))

    async def _op(self, alloc: Allocator, start: Callable[[int], None]) -> Iface:
        op_id = self._next_op
        self._next_op += 1
        done = trio.Event()
        box: list[Any] = []
        self._waiting[op_id] = (done, box)
        try:
            start(op_id)
            self._pump()
            with trio.move_on_after(alloc.timeout + IPAM_ANSWER_SLACK):
                await done.wait()
        finally:
            self._waiting.pop(op_id, None)
        if not box:
            raise LocalProtocolError(f"IPAM gave no answer in time: {alloc.why()}")
        result = box[0]
        if result.address is None:
            raise LocalProtocolError(result.error or "IPAM refused the address")
        address: Iface = result.address
        return address

    def release(self, ident: str, addresses: list[Iface]) -> None:
        """Undo ``get_all``'s fresh addresses (what followed it failed)."""
        if not addresses:
            return
        for iface in addresses:
            alloc = self._family(iface.version)
            if alloc is not None:
                alloc.free(ident, iface.ip, trio.current_time())
        self._pump()

    def free(self, ident: str, ips: Iterable[str | IPv4Address | IPv6Address] | None) -> None:
        """``detach`` / ``hide``: free ``ips`` of ``ident`` (every address when None)."""
        now = trio.current_time()
        if ips is None:
            for alloc in self.allocators():
                alloc.free(ident, None, now)
        else:
            for text in ips:
                ip = ip_address(text)
                family = self._family(ip.version)
                if family is not None:
                    family.free(ident, ip, now)

    def free_released(self, container: str) -> list[str] | None:
        """``weft detach`` of a container whose namespace is gone and whose addresses wait
        out their grace period: free them now (None: no such container)."""
        ident = netdev.netns_name(container)
        allocs = [a for a in self.allocators() if ident in a.releases]
        if not allocs:
            return None
        freed = [str(iface) for a in allocs for iface in a.lookup(ident)]
        for a in allocs:
            a.free(ident, None, trio.current_time())
        log.info("detached %s (gone already): %s freed", ident, " ".join(freed))
        self._pump()
        return freed

    # --- peers ---------------------------------------------------------------------------

    def rmpeer(self, peer: str) -> dict[str, Any]:
        """Take over the IPAM space of a dead peer (name or nickname)."""
        alloc = self.alloc
        count = alloc.rmpeer(peer.strip(), trio.current_time())
        target = alloc.describe(alloc.resolve_peer(peer.strip()))
        out: dict[str, Any] = {"taken": count, "peer": target}
        if self.alloc6 is not None:
            try:  # the peer may never have owned IPv6 space (or was launched without it)
                out["taken_ipv6"] = self.alloc6.rmpeer(peer.strip(), trio.current_time())
            except LocalProtocolError as exc:
                log.info("rmpeer: no IPv6 space taken from %s: %s", target, exc.reason)
            else:
                log.info("rmpeer: %d IPv6 addresses taken over from %s", out["taken_ipv6"], target)
        log.info("rmpeer: %d addresses taken over from %s", count, target)
        self._pump()
        return out

    def handoff(self) -> None:
        """``reset``: hand our space to a live peer (gossiped and sent before the Goodbye)."""
        if self.alloc6 is not None:
            handed6 = self.alloc6.handoff(trio.current_time())
            if handed6 is not None:
                log.info("reset: handed %d IPv6 addresses to %s", handed6[1],
                         self.alloc6.describe(handed6[0]))
        handed = self.alloc.handoff(trio.current_time())
        if handed is None:
            log.warning("reset: no peer is reachable to take over this peer's address space")
        else:
            peer, count = handed
            log.info("reset: handed %d addresses to %s", count, self.alloc.describe(peer))
        self._pump()

    # --- containers that vanished -----------------------------------------------------------

    def reconcile(self, attached: set[str]) -> None:
        """At launch: containers no longer attached (gone while we were away) start their
        grace period now, unless they started it before the restart (that deadline stands)."""
        gone = sorted({ident for a in self.allocators() for _, ident in a.space.items()} - attached)
        for ident in gone:
            self._container_gone(ident)

    def namespace_gone(self, container: str, *, replaced: bool) -> None:
        """The namespace watcher's news. A container back under its name keeps its addresses."""
        if not replaced:
            self._container_gone(container)

    def _container_gone(self, ident: str) -> None:
        """``ident``'s namespace disappeared without a detach: free after the grace period."""
        for alloc in self.allocators():
            if ident in alloc.releases:
                continue
            count = alloc.container_died(ident, trio.current_time())
            if count:
                log.info("container %s is gone: its %d address(es) are freed in %.0fs unless "
                         "it comes back", ident, count, alloc.grace)

    # --- the pump's step, timers, persistence ------------------------------------------------

    def pump(self, now: float) -> None:
        """Tell the allocators who is reachable; carry out what they asked for, in order."""
        mesh = self.mesh
        alive: dict[int, str] = {}
        for peer in mesh.routes.reachable:
            rec = mesh.topology.get(peer)
            if peer != mesh.config.name and rec is not None:
                alive[peer] = rec.nickname
        if alive != self._alive:
            self._alive = alive
            self.alloc.peers_changed(alive, now)
        if self.alloc6 is not None and alive != self._alive6:
            self._alive6 = alive
            self.alloc6.peers_changed(alive, now)
        self._drain(self.alloc, IPAM_CHANNEL, now)
        if self.alloc6 is not None:
            self._drain(self.alloc6, IPAM6_CHANNEL, now)

    def _drain(self, alloc: Allocator, channel: str, now: float) -> None:
        mesh = self.mesh
        if alloc.dirty:
            self._persist(alloc)
        if (news := alloc.take_news()) is not None:
            mesh.gossip_news(channel, news)
        for dst, payload in alloc.messages_to_send():
            if dst is not None:
                mesh.gossip_unicast(channel, dst, payload, now)
        while (result := alloc.next_result()) is not None:
            waiting = self._waiting.get(result.op_id)
            if waiting is not None:
                waiting[1].append(result)
                waiting[0].set()

    def get_timer(self) -> float | None:
        timers = [t for a in self.allocators() if (t := a.get_timer()) is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        for alloc in self.allocators():
            alloc.handle_timer(now)

    def persist(self) -> None:
        for alloc in self.allocators():
            self._persist(alloc)

    def _persist(self, alloc: Allocator) -> None:
        self.datadir.create()
        path = self.path6 if alloc is self.alloc6 else self.path
        self.datadir.write_atomically(path, encode_state(alloc.to_state()))
