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
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import trio

from weftnet.ipam.allocator import Allocator
from weftnet.ipam.gossip import CHANNEL as IPAM_CHANNEL
from weftnet.ipam.persist import StateError, decode_state, encode_state
from weftnet.ipam.release import MAX_GRACE, RELEASE_GRACE, check_grace
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.mesh import MeshNode
from weftnet.router.daemon.config import LaunchConfig, ipalloc_init_mode
from weftnet.router.host import netdev
from weftnet.router.host.attachments import AddressSpec
from weftnet.router.host.datadir import IPAM_FILE, DataDir

log = logging.getLogger("weft")

IPAM_ANSWER_SLACK = 5.0      # beyond the core's own deadline, in case an answer got lost
IPAM_GRACE_ENV = "WEFT_IPAM_GRACE"   # seconds a vanished container keeps its addresses


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
                   wall_offset: float, grace: float) -> Allocator:
    """The allocator, with its persisted state at ``path`` (damaged: refuse to start)."""
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
    if ipam is None and not all(isinstance(spec, IPv4Interface) for spec in specs):
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
                 pump: Callable[[], None]) -> None:
        self.alloc = alloc
        self.mesh = mesh
        self.datadir = datadir
        self._pump = pump
        self._alive: dict[int, str] = {}
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._next_op = 1

    @property
    def path(self) -> Path:
        return self.datadir.path / IPAM_FILE

    def status(self) -> dict[str, Any]:
        """The report's ``ipam`` section."""
        return self.alloc.status(trio.current_time())

    # --- addresses for attach and expose -------------------------------------------------

    async def get_all(self, ident: str, specs: list[AddressSpec]
                      ) -> tuple[list[IPv4Interface], list[IPv4Interface]]:
        """One address per spec for ``ident`` (repeats dropped), and those of them this call
        took afresh, for the caller to ``release`` if what follows fails. When one cannot
        be had, those taken afresh are freed again before the error goes up."""
        alloc = self.alloc
        held = set(alloc.lookup(ident))
        got: list[IPv4Interface] = []
        fresh: list[IPv4Interface] = []
        try:
            for spec in specs:
                iface = await self._get(ident, spec)
                got.append(iface)
                if iface not in held and iface.ip in alloc.universe:
                    fresh.append(iface)
        except BaseException:
            self.release(ident, fresh)
            raise
        return list(dict.fromkeys(got)), fresh

    async def _get(self, ident: str, spec: AddressSpec) -> IPv4Interface:
        """Allocate (``net:``) or claim (``IP/LEN``) one address; a one-line error otherwise."""
        alloc = self.alloc
        if isinstance(spec, IPv4Interface):
            return await self._op(lambda op: alloc.claim(op, ident, spec, trio.current_time()))
        return await self._op(lambda op: alloc.allocate(op, ident, spec, trio.current_time()))

    async def _op(self, start: Callable[[int], None]) -> IPv4Interface:
        op_id = self._next_op
        self._next_op += 1
        done = trio.Event()
        box: list[Any] = []
        self._waiting[op_id] = (done, box)
        try:
            start(op_id)
            self._pump()
            with trio.move_on_after(self.alloc.timeout + IPAM_ANSWER_SLACK):
                await done.wait()
        finally:
            self._waiting.pop(op_id, None)
        if not box:
            raise LocalProtocolError(f"IPAM gave no answer in time: {self.alloc.why()}")
        result = box[0]
        if result.address is None:
            raise LocalProtocolError(result.error or "IPAM refused the address")
        address: IPv4Interface = result.address
        return address

    def release(self, ident: str, addresses: list[IPv4Interface]) -> None:
        """Undo ``get_all``'s fresh addresses (what followed it failed)."""
        if not addresses:
            return
        for iface in addresses:
            self.alloc.free(ident, iface.ip, trio.current_time())
        self._pump()

    def free(self, ident: str, ips: Iterable[str | IPv4Address] | None) -> None:
        """``detach`` / ``hide``: free ``ips`` of ``ident`` (every address when None)."""
        now = trio.current_time()
        if ips is None:
            self.alloc.free(ident, None, now)
        else:
            for ip in ips:
                self.alloc.free(ident, IPv4Address(ip), now)

    def free_released(self, container: str) -> list[str] | None:
        """``weft detach`` of a container whose namespace is gone and whose addresses wait
        out their grace period: free them now (None: no such container)."""
        ident = netdev.netns_name(container)
        if ident not in self.alloc.releases:
            return None
        freed = [str(iface) for iface in self.alloc.lookup(ident)]
        self.alloc.free(ident, None, trio.current_time())
        log.info("detached %s (gone already): %s freed", ident, " ".join(freed))
        self._pump()
        return freed

    # --- peers ---------------------------------------------------------------------------

    def rmpeer(self, peer: str) -> dict[str, Any]:
        """Take over the IPAM space of a dead peer (name or nickname)."""
        alloc = self.alloc
        count = alloc.rmpeer(peer.strip(), trio.current_time())
        target = alloc.describe(alloc.resolve_peer(peer.strip()))
        log.info("rmpeer: %d addresses taken over from %s", count, target)
        self._pump()
        return {"taken": count, "peer": target}

    def handoff(self) -> None:
        """``reset``: hand our space to a live peer (gossiped and sent before the Goodbye)."""
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
        gone = sorted({ident for _, ident in self.alloc.space.items()} - attached)
        for ident in gone:
            self._container_gone(ident)

    def namespace_gone(self, container: str, *, replaced: bool) -> None:
        """The namespace watcher's news. A container back under its name keeps its addresses."""
        if not replaced:
            self._container_gone(container)

    def _container_gone(self, ident: str) -> None:
        """``ident``'s namespace disappeared without a detach: free after the grace period."""
        alloc = self.alloc
        if ident in alloc.releases:
            return
        count = alloc.container_died(ident, trio.current_time())
        if count:
            log.info("container %s is gone: its %d address(es) are freed in %.0fs unless it "
                     "comes back", ident, count, alloc.grace)

    # --- the pump's step, timers, persistence ------------------------------------------------

    def pump(self, now: float) -> None:
        """Tell the allocator who is reachable; carry out what it asked for, in its order."""
        alloc = self.alloc
        mesh = self.mesh
        alive: dict[int, str] = {}
        for peer in mesh.routes.reachable:
            rec = mesh.topology.get(peer)
            if peer != mesh.config.name and rec is not None:
                alive[peer] = rec.nickname
        if alive != self._alive:
            self._alive = alive
            alloc.peers_changed(alive, now)
        if alloc.dirty:
            self.persist()
        if (news := alloc.take_news()) is not None:
            mesh.gossip_news(IPAM_CHANNEL, news)
        for dst, payload in alloc.messages_to_send():
            if dst is not None:
                mesh.gossip_unicast(IPAM_CHANNEL, dst, payload, now)
        while (result := alloc.next_result()) is not None:
            waiting = self._waiting.get(result.op_id)
            if waiting is not None:
                waiting[1].append(result)
                waiting[0].set()

    def get_timer(self) -> float | None:
        return self.alloc.get_timer()

    def handle_timer(self, now: float) -> None:
        self.alloc.handle_timer(now)

    def persist(self) -> None:
        self.datadir.create()
        self.datadir.write_atomically(self.path, encode_state(self.alloc.to_state()))
