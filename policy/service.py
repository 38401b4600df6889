"""The router's policy duties as a pure machine, and the gossip channel "policy".

Theory of operation. As ``weftnet.dns.service``: the daemon owns files, clocks and nft;
``PolicyService`` owns the store and every decision about it::

    inputs (daemon)                             outputs (daemon carries them out)
    ───────────────                             ─────────────────────────────────
    set_container / remove_container            take_news() -> Items | None, for
      (attach, label, detach, namespace gone)       MeshNode.gossip_news(CHANNEL, ...)
    apply(policies) / delete(name)              generation (moved: recompile the ruleset)
    restore(saved, containers, now) (launch)    saved_state() -> persist when it moved
    handle_timer(now, peers in the topology)    get_timer(), policies(), workloads()
    gossip from the mesh: ``gossiper``

Workload keys for compilation are ``ORIGIN/CONTAINER`` (the peer name in hex).

Persistence (``saved_state``, JSON): our containers' labels, every policy item (tombstones
included, with their versions) and the other routers' containers as last known.
``restore`` puts the policies and the others' containers back (so the table a restarted
router installs before it hears from anyone lets in what it let in before; routers that
do not come back lose theirs after the grace period), and our containers that are still
attached (with their current addresses); the gossip the mesh brings about our previous
incarnation is corrected by origin authority. Routers gone from
the topology for ``PEER_GONE_GRACE`` lose their workloads (their addresses may be reused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weftnet.proto.gossip import GossipData
from weftnet.proto.peername import PeerName, format_peer_name

from .compile import Workload
from .documents import NetworkPolicy
from .labels import PolicyError, check_labels
from .store import (
    Item,
    PolicyItem,
    PolicyStore,
    WorkloadItem,
    best_of,
    decode_items,
    digest_of_items,
    encode_items,
)

CHANNEL = "policy"
PEER_GONE_GRACE = 30.0


@dataclass(frozen=True, slots=True)
class Items:
    items: tuple[Item, ...]

    @classmethod
    def of(cls, items: Iterable[Item]) -> Items:
        best = best_of(items)
        return cls(tuple(best[k] for k in sorted(best)))

    def encode(self) -> bytes:
        return encode_items(self.items)

    def merge(self, other: GossipData) -> GossipData:
        assert isinstance(other, Items)
        return Items.of(self.items + other.items)


class PolicyGossiper:
    def __init__(self, store: PolicyStore, *, wall_offset: float = 0.0) -> None:
        self.store = store
        self.wall_offset = wall_offset

    def decode(self, payload: bytes) -> GossipData:
        return Items(tuple(decode_items(payload)))

    def on_gossip(self, data: GossipData, now: float) -> GossipData | None:
        assert isinstance(data, Items)
        delta = self.store.merge(data.items, now + self.wall_offset)
        return Items(tuple(delta)) if delta else None

    def gossip(self) -> GossipData | None:
        items = self.store.items(tombstones=True)
        return Items(tuple(items)) if items else None

    def digest(self) -> bytes:
        return self.store.digest()

    def digest_of(self, data: GossipData) -> bytes:
        assert isinstance(data, Items)
        return digest_of_items(data.items)

    def on_gossip_broadcast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None

    def on_gossip_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None


def workload_key(origin: PeerName, container: str) -> str:
    return f"{origin:012x}/{container}"


class PolicyService:
    def __init__(self, our_name: PeerName, now: float, *, wall_offset: float = 0.0,
                 grace: float = PEER_GONE_GRACE) -> None:
        self.store = PolicyStore(our_name, now)
        self.wall_offset = wall_offset
        self.gossiper = PolicyGossiper(self.store, wall_offset=wall_offset)
        self.grace = grace
        self._pending: list[Item] = []
        self._missing: dict[PeerName, float] = {}

    @property
    def our_name(self) -> PeerName:
        return self.store.our_name

    @property
    def generation(self) -> int:
        return self.store.generation

    def take_news(self) -> Items | None:
        items = self._pending + self.store.take_overrides()
        self._pending = []
        return Items.of(items) if items else None

    def _changed(self, delta: list[Item]) -> int:
        self._pending += delta
        return len(delta)

    # --- containers ------------------------------------------------------------------------

    def labels_of(self, container: str) -> dict[str, str]:
        it = self.store.workload(container)
        return dict(it.labels) if it is not None else {}

    def set_container(self, container: str, labels: Mapping[str, str], ips: Iterable[str],
                      now: float) -> int:
        return self._changed(self.store.set_workload(container, labels, ips, now))

    def relabel(self, container: str, ips: Iterable[str], add: Mapping[str, str],
                remove: Iterable[str], now: float) -> dict[str, str]:
        """``weft label``: the container's labels after adding ``add``, removing ``remove``."""
        labels = self.labels_of(container)
        for key in remove:
            labels.pop(key, None)
        labels.update(add)
        check_labels(labels)
        self.set_container(container, labels, ips, now)
        return labels

    def remove_container(self, container: str, now: float) -> int:
        return self._changed(self.store.remove_workload(container, now))

    # --- policies --------------------------------------------------------------------------

    def apply(self, policies: Iterable[NetworkPolicy], now: float) -> list[str]:
        """Apply every policy (already validated as a whole); the names that changed."""
        changed = []
        for p in policies:
            if self._changed(self.store.apply_policy(p, now)):
                changed.append(p.name)
        return changed

    def delete(self, name: str, now: float) -> None:
        if not self._changed(self.store.delete_policy(name, now)):
            raise PolicyError(f"NetworkPolicy {name}", "no such policy")

    def policies(self) -> list[NetworkPolicy]:
        return self.store.policies()

    def workloads(self) -> list[Workload]:
        return [Workload(workload_key(w.origin, w.container), dict(w.labels), w.ips)
                for w in self.store.workloads()]

    def local_keys(self) -> set[str]:
        return {workload_key(w.origin, w.container) for w in self.store.workloads()
                if w.origin == self.our_name}

    # --- persistence -----------------------------------------------------------------------

    def saved_state(self) -> dict[str, Any]:
        labels = {w.container: dict(w.labels) for w in self.store.workloads()
                  if w.origin == self.our_name}
        policies = [[it.name, it.document, it.author, it.version, it.deleted_at]
                    for it in self.store.items(tombstones=True) if isinstance(it, PolicyItem)]
        others = [[it.origin, it.container, [list(kv) for kv in it.labels], list(it.ips), it.version]
                  for it in self.store.workloads() if it.origin != self.our_name]
        return {"labels": labels, "policies": policies, "others": others}

    def restore(self, saved: Any, containers: Mapping[str, list[str]], now: float) -> None:
        """At launch, before joining the mesh: the saved policies, and our containers still
        attached (``containers``: container -> its addresses) with their saved labels."""
        saved = saved if isinstance(saved, dict) else {}
        items: list[Item] = []
        for entry in saved.get("policies") or []:
            try:
                name, document, author, version, deleted_at = entry
                items.append(PolicyItem(str(name), str(document), int(author), int(version),
                                        int(deleted_at)))
            except (TypeError, ValueError):
                continue
        for entry in saved.get("others") or []:   # other hosts' containers, as last known:
            try:                                   # rules naming them hold across our restart
                origin, container, labels_, ips, version = entry
                items.append(WorkloadItem(int(origin), str(container),
                                          tuple((str(k), str(v)) for k, v in labels_),
                                          tuple(str(ip) for ip in ips), int(version)))
            except (TypeError, ValueError):
                continue
        try:   # what we wrote ourselves; one bad entry must not lose the rest
            self.store.merge(decode_items(encode_items(items)), now)
        except Exception:
            for it in items:
                try:
                    self.store.merge(decode_items(encode_items([it])), now)
                except Exception:
                    continue
        labels = saved.get("labels") if isinstance(saved.get("labels"), dict) else {}
        for container in sorted(containers):
            got = labels.get(container)
            want: dict[str, str] = got if isinstance(got, dict) else {}
            try:
                self.set_container(container, want, containers[container], now)
            except (PolicyError, ValueError):
                self.set_container(container, {}, containers[container], now)

    # --- time ------------------------------------------------------------------------------

    def get_timer(self) -> float:
        wake = self.store.get_timer()
        for since in self._missing.values():
            wake = min(wake, since + self.grace)
        return wake

    def handle_timer(self, now: float, peers: Iterable[PeerName],
                     on_gone: Callable[[PeerName], None] | None = None) -> list[PeerName]:
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
                self._missing.pop(name, None)
                self._changed(self.store.remove_peer(name, now))
                gone.append(name)
        return gone


def workload_report(items: Iterable[WorkloadItem], our_name: PeerName) -> list[dict[str, Any]]:
    """The report's ``policy.workloads``: every container's labels and addresses."""
    return [{"origin": format_peer_name(w.origin), "container": w.container,
             "labels": dict(w.labels), "addresses": list(w.ips), "local": w.origin == our_name}
            for w in items]
