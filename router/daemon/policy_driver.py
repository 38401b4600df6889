"""The policy driver: the pure ``PolicyService`` on the mesh, its table in the kernel.

Theory of operation. The service's channel "policy" rides on the mesh; every pump floods
what the service has to say (local changes, corrections of stale copies of our
workloads), persists its state when it moved, and wakes the enforcer when the store's
generation moved since the table was last installed::

    attach --label / label / detach / namespace gone ─┐
    policy apply / delete (any host) ─────────────────┼─▶ PolicyService ─▶ gossip "policy"
    gossip from peers ────────────────────────────────┘        │ generation moved
                                                               ▼
    enforcer task: compile_ruleset(policies, workloads, ours) ─▶ render ─▶ read counters
        ─▶ nft -f (one transaction) ─▶ bridge nf_call on/off ─▶ status: ok | FAILED: why

The enforcer runs in a worker thread (``nft`` takes milliseconds) and coalesces: changes
that arrive while it installs make one more round, never a queue. A failure to install
(no ``nft``, a kernel without the hooks, a refused batch) is logged as an error at once
and shown by ``weft status`` and /metrics (``weft_policy_enforcement_ok 0``) until an
install succeeds (tried again every REFRESH); the kernel keeps the last table it accepted.
``weft stop`` leaves the table in place, so containers stay protected while the router is
down; ``weft reset`` removes it (``router/host/teardown.py``). Launch order: the saved
policies and our containers' labels come back before any peer connects (``start``), and
the table is installed before the API answers.

Times: the service works in wall-clock seconds (tombstones cross hosts), converted with
``wall_offset`` as the DNS driver does; it is one more source of the ``TimerLoop``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import trio

from weftnet.policy.compile import FAMILY, TABLE, Ruleset, compile_ruleset, render
from weftnet.policy.documents import parse_documents
from weftnet.policy.labels import PolicyError, check_labels
from weftnet.policy.service import CHANNEL as POLICY_CHANNEL
from weftnet.policy.service import PolicyService, workload_key, workload_report
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.mesh import MeshNode
from weftnet.proto.peername import PeerName, format_peer_name
from weftnet.router.host.attachments import Attachments
from weftnet.router.host.datadir import DataDir
from weftnet.router.host.policy_nft import EnforcementError, PolicyHost

log = logging.getLogger("weft")

STATE_KEY = "policy"
TOPOLOGY_CHECK = 1.0
REFRESH = 2.0                  # seconds between reads of the drop counters (and retries)
LOG_ENV = "WEFT_POLICY_LOG"    # "1": log dropped packets (rate-limited) to the kernel log


class PolicyDriver:
    def __init__(self, service: PolicyService, mesh: MeshNode, datadir: DataDir,
                 attachments: Attachments, pump: Callable[[], None],
                 host: PolicyHost | None = None) -> None:
        self.service = service
        self.mesh = mesh
        self.datadir = datadir
        self.attachments = attachments
        self._pump = pump
        self.host = host or PolicyHost()
        self.log_drops = os.environ.get(LOG_ENV, "") not in ("", "0")
        self._saved_generation = -1
        self._installed_generation = -1
        self._wake = trio.Event()
        self._next_check: float = trio.current_time() + TOPOLOGY_CHECK
        self.ruleset = Ruleset()
        self.ok: bool | None = None         # None: nothing installed yet
        self.error: str | None = None
        self.in_force: list[str] = []        # policies the installed table was built from
        self.installed_at: float | None = None
        self.install_seconds: float | None = None
        self.netfilter_on = False
        self._switch_seen = False
        self._table_present: bool | None = None   # None: not looked yet
        self._live: dict[str, int] = {}            # the table's counters, read every REFRESH
        self.drops: Counter[str] = Counter()
        self._counter_names: dict[str, str] = {}

    def wall(self) -> float:
        now: float = trio.current_time()
        return now + self.service.wall_offset

    # --- launch ----------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery, containers: dict[str, list[str]]) -> None:
        """Our saved state back (before peers connect), the table installed, the enforcer on."""
        saved = self.datadir.load_state().get(STATE_KEY)
        self.service.restore(saved, containers, self.wall())
        self.persist()
        await self.enforce()
        nursery.start_soon(self._enforcer)

    # --- the pump's step, timers -------------------------------------------------------------

    def pump(self) -> None:
        if (news := self.service.take_news()) is not None:
            self.mesh.gossip_news(POLICY_CHANNEL, news)
        gen = self.service.generation
        if gen != self._saved_generation:
            self.persist()
        if gen != self._installed_generation:
            self._wake.set()

    def persist(self) -> None:
        self._saved_generation = self.service.generation
        state = self.datadir.load_state()
        state[STATE_KEY] = self.service.saved_state()
        self.datadir.save_state(state)

    def get_timer(self) -> float:
        wake: float = self.service.get_timer() - self.service.wall_offset
        return min(wake, self._next_check)

    def handle_timer(self, now: float) -> None:
        self._next_check = now + TOPOLOGY_CHECK
        gone = self.service.handle_timer(now + self.service.wall_offset, self.peers())
        for name in gone:
            log.info("peer %s left the mesh: its containers' labels are removed",
                     format_peer_name(name))

    def peers(self) -> Iterable[PeerName]:
        return self.mesh.topology.peers

    # --- enforcement -------------------------------------------------------------------------

    async def _enforcer(self) -> None:
        while True:
            with trio.move_on_after(REFRESH):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()
            if self.service.generation != self._installed_generation or self.ok is False:
                await self.enforce()   # a failed install is tried again every REFRESH
            elif self._table_present:
                self._live = await trio.to_thread.run_sync(self.host.counters)

    async def enforce(self) -> None:
        """Compile and install the table for the store as it is now."""
        gen = self.service.generation
        started = time.monotonic()
        policies = self.service.policies()
        ruleset = compile_ruleset(policies, self.service.workloads(), self.service.local_keys())
        text = render(ruleset, log_drops=self.log_drops)
        try:
            await trio.to_thread.run_sync(self._install, ruleset, text)
        except EnforcementError as exc:
            self._installed_generation = gen
            if self.ok is not False or self.error != exc.reason:
                log.error("network policy is NOT enforced on this host: %s", exc.reason)
            self.ok, self.error = False, exc.reason
            return
        self._installed_generation = gen
        self.ruleset = ruleset
        self.in_force = [p.name for p in policies]
        self.installed_at = time.time()
        self.install_seconds = time.monotonic() - started
        if self.ok is False:
            log.info("network policy is enforced again")
        self.ok, self.error = True, None

    def _install(self, ruleset: Ruleset, text: str) -> None:
        """In a worker thread: fold the old table's counters into ours, install, switch."""
        if self._table_present is None:   # the first time: a table of an earlier run?
            self._table_present = self.host.exists()
            self.netfilter_on = self._table_present   # that run turned the switch on
        old = self.host.counters() if self._table_present else {}
        for cname, packets in old.items():
            policy = self._counter_names.get(cname)
            if policy is not None:
                self.drops[policy] += packets
        if ruleset.empty:
            # nothing to enforce here: no table at all (a host without policies, or a test
            # router in the machine's own namespace, is never touched but to look)
            if self._table_present:
                self.host.remove()
                self._table_present = False
            if self.netfilter_on:   # the bridge's own switch is ours (never the sysctls)
                self.host.bridge_netfilter(False)
                self.netfilter_on = False
        else:
            if not self.netfilter_on or not self._switch_seen:   # once a run: it may have been reset
                self.host.bridge_netfilter(True)
                self.netfilter_on = self._switch_seen = True
            self.host.install(text)
            self._table_present = True
        self._counter_names = ruleset.counter_names()
        self._live = {}

    def current_drops(self) -> dict[str, int]:
        """Drops per policy since start: the folded totals plus the table's counters as
        last read (at most REFRESH seconds ago; reading here would block the trio thread)."""
        totals = Counter(self.drops)
        for cname, packets in self._live.items():
            policy = self._counter_names.get(cname)
            if policy is not None:
                totals[policy] += packets
        return dict(totals)

    # --- containers ----------------------------------------------------------------------------

    def check_labels(self, texts: dict[str, str]) -> dict[str, str]:
        try:
            return dict(check_labels(texts, "label"))
        except PolicyError as exc:
            raise LocalProtocolError(exc.reason) from None

    def attached(self, container: str, ips: list[str], labels: dict[str, str] | None) -> None:
        """``attach``: the container's addresses now, its labels merged with ``labels``."""
        current = self.service.labels_of(container)
        current.update(labels or {})
        self.service.set_container(container, current, ips, self.wall())

    def detached(self, container: str, ips: list[str] | None) -> None:
        """``detach``: gone (None), or these are its addresses now."""
        if ips is None:
            self.service.remove_container(container, self.wall())
        else:
            self.service.set_container(container, self.service.labels_of(container), ips,
                                       self.wall())

    def namespace_gone(self, container: str, *, replaced: bool) -> None:
        self.service.remove_container(container, self.wall())

    def label(self, container: str, add: dict[str, str], remove: list[str]) -> dict[str, str]:
        records = self.attachments.records()
        if container not in records:
            raise LocalProtocolError(f"container {container} is not attached to the network")
        try:
            labels = self.service.relabel(container, records[container].ips, add, remove, self.wall())
        except PolicyError as exc:
            raise LocalProtocolError(exc.reason) from None
        self._pump()
        return labels

    def labels_of(self, container: str) -> dict[str, str]:
        return self.service.labels_of(container)

    # --- policies ------------------------------------------------------------------------------

    def apply(self, text: str, source: str) -> list[str]:
        """Every document of ``text`` or none (PolicyError -> one line naming doc and field)."""
        try:
            policies = parse_documents(text, source)
        except PolicyError as exc:
            raise LocalProtocolError(exc.reason) from None
        changed = self.service.apply(policies, self.wall())
        self._pump()
        return changed

    def delete(self, name: str) -> None:
        try:
            self.service.delete(name, self.wall())
        except PolicyError as exc:
            raise LocalProtocolError(exc.reason) from None
        self._pump()

    def report(self) -> dict[str, Any]:
        workloads = self.service.store.workloads()
        ours = self.service.local_keys()
        drops = self.current_drops()
        policies = []
        for p in self.service.policies():
            selected = [w for w in workloads if p.selector.matches(dict(w.labels))]
            policies.append({
                "name": p.name, "types": list(p.types),
                "selected": sorted(w.container for w in selected),
                "selected_here": sorted(w.container for w in selected
                                        if workload_key(w.origin, w.container) in ours),
                "rules": p.rules_line(), "drops": drops.get(p.name, 0),
                "document": p.as_json()})
        return {
            "enforcement": {"ok": self.ok, "error": self.error, "table": f"{FAMILY} {TABLE}",
                            "chains": len(self.ruleset.chains), "bridge_netfilter": self.netfilter_on,
                            "installed_at": self.installed_at, "install_seconds": self.install_seconds,
                            "log_drops": self.log_drops},
            "in_force": list(self.in_force),
            "policies": policies,
            "workloads": workload_report(workloads, self.service.our_name),
            "drops": drops,
        }
