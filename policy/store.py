"""The policy store: containers' labels and addresses (workloads) and NetworkPolicies,
merged as a CRDT on the mesh, like the DNS records (``weftnet.dns.records``).

Theory of operation
-------------------
Two kinds of item, each a last-writer-wins register per key with a Lamport ``version``
and a tombstone time ``deleted_at`` (0 while live; wall-clock seconds of the deletion)::

    workload  key ("w", origin, container)   labels and addresses of a container of router
                                             ``origin``; only ``origin`` writes them
    policy    key ("p", name)                a normalised NetworkPolicy document; any router
                                             writes it (``weft policy apply`` / ``delete``)

Items of one key are totally ordered by ``rank``::

    workload  (version, is_tombstone, -deleted_at, labels, addresses)
    policy    (version, is_tombstone, -deleted_at, author, document)

and the store keeps the highest-ranked per key, so ``merge`` is commutative, associative
and idempotent. Applying a policy takes the next version above what we hold; two routers
applying one name at once with the same version are ordered by author, then document, so
every router keeps the same one. A later apply anywhere wins, as a user expects.

Tombstones expire ``tombstone_ttl`` after ``deleted_at`` (workloads 30 min as DNS entries,
policies 7 days: a deleted policy must not come back with a router that was away for an
afternoon); the clock-skew guard clamps a ``deleted_at`` ahead of ours (``max_skew``).
Origin authority for workloads is DNS's: news about our own key that outranks what we
hold is answered with a higher version of our truth (live when we hold it, else a
tombstone), collected in ``take_overrides()`` to be flooded.

Wire format (msgpack; ``encode_items`` / ``decode_items``)::

    payload  := [ item, ... ]                                       at most 100000 items
    item     := [0, origin, container, [[key, value], ...], [address, ...], version, deleted_at]
              | [1, name, document, author, version, deleted_at]

    origin, author  uint 1 .. 2^48-1        container  str 1 .. 1024
    key, value      label (``labels``)       address    str, canonical IPv4 or IPv6 (<= 16)
    name            DNS subdomain <= 253     document   str <= 64 KiB: canonical JSON of a
    version         uint 1 .. 2^63-1                    valid policy ("" for a tombstone)
    deleted_at      uint 0 .. 2^63-1
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.framing import pack, unpack
from weftnet.proto.peername import MAX_NAME, PeerName

from .documents import NetworkPolicy, from_canonical
from .labels import Labels, PolicyError, check_labels

WORKLOAD_TOMBSTONE_TTL = 1800.0
POLICY_TOMBSTONE_TTL = 7 * 86400.0
MAX_SKEW = 60.0
TICK = 10.0
MAX_VERSION = (1 << 63) - 1
MAX_CONTAINER = 1024
MAX_ADDRESSES = 64
MAX_DOCUMENT = 64 * 1024
MAX_ITEMS = 100_000
DIGEST_SIZE = 16

Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkloadItem:
    origin: PeerName
    container: str
    labels: Labels
    ips: tuple[str, ...]
    version: int
    deleted_at: int = 0

    @property
    def key(self) -> Key:
        return ("w", f"{self.origin:012x}", self.container)

    @property
    def tombstone(self) -> bool:
        return self.deleted_at != 0

    def rank(self) -> tuple[Any, ...]:
        return (self.version, self.deleted_at != 0, -self.deleted_at, self.labels, self.ips)


@dataclass(frozen=True, slots=True)
class PolicyItem:
    name: str
    document: str
    author: PeerName
    version: int
    deleted_at: int = 0

    @property
    def key(self) -> Key:
        return ("p", self.name)

    @property
    def tombstone(self) -> bool:
        return self.deleted_at != 0

    def rank(self) -> tuple[Any, ...]:
        return (self.version, self.deleted_at != 0, -self.deleted_at, self.author, self.document)


Item = WorkloadItem | PolicyItem


def _stamp(now: float) -> int:
    return min(MAX_VERSION, max(1, math.ceil(now)))


def canonical_ip(text: str) -> str:
    """The canonical text of an address; raises ValueError."""
    return str(ipaddress.ip_address(text))


# --- codec ----------------------------------------------------------------------------------


def _to_wire(it: Item) -> list[Any]:
    if isinstance(it, WorkloadItem):
        return [0, it.origin, it.container, [list(kv) for kv in it.labels], list(it.ips),
                it.version, it.deleted_at]
    return [1, it.name, it.document, it.author, it.version, it.deleted_at]


def encode_items(items: Sequence[Item]) -> bytes:
    if len(items) > MAX_ITEMS:
        raise LocalProtocolError(f"{len(items)} policy items exceed the cap of {MAX_ITEMS}")
    return pack([_to_wire(it) for it in items])


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed policy gossip: {what}")


def _uint(v: Any, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _malformed(f"bad {what}")
    return v


def _decode_item(obj: Any) -> Item:
    if not isinstance(obj, list) or not obj:
        raise _malformed("item is not an array")
    if obj[0] == 0 and len(obj) == 7:
        _, origin, container, labels, ips, version, deleted_at = obj
        if not isinstance(container, str) or not 0 < len(container) <= MAX_CONTAINER:
            raise _malformed("bad container")
        if not isinstance(labels, list) or not all(
                isinstance(kv, list) and len(kv) == 2 and all(isinstance(x, str) for x in kv)
                for kv in labels):
            raise _malformed("bad labels")
        try:
            pairs = check_labels(dict(labels))
        except PolicyError:
            raise _malformed("bad labels") from None
        if len(pairs) != len(labels):
            raise _malformed("a label key twice")
        if not isinstance(ips, list) or len(ips) > MAX_ADDRESSES or not all(
                isinstance(ip, str) and len(ip) <= 45 for ip in ips):
            raise _malformed("bad addresses")
        try:
            canon = tuple(sorted({canonical_ip(ip) for ip in ips}, key=_ip_key))
        except ValueError:
            raise _malformed("bad address") from None
        if list(canon) != ips:
            raise _malformed("addresses not canonical and sorted")
        return WorkloadItem(_uint(origin, 1, MAX_NAME, "origin"), container, pairs, canon,
                            _uint(version, 1, MAX_VERSION, "version"),
                            _uint(deleted_at, 0, MAX_VERSION, "deletion time"))
    if obj[0] == 1 and len(obj) == 6:
        _, name, document, author, version, deleted_at = obj
        if not isinstance(name, str) or not isinstance(document, str) or len(document) > MAX_DOCUMENT:
            raise _malformed("bad policy")
        deleted_at = _uint(deleted_at, 0, MAX_VERSION, "deletion time")
        if deleted_at:
            if document:
                raise _malformed("a policy tombstone with a document")
        else:
            try:
                policy = from_canonical(document)
            except (PolicyError, RecursionError):
                raise _malformed("bad policy document") from None
            if policy.name != name or policy.canonical() != document:
                raise _malformed("policy document not canonical")
        if not 0 < len(name) <= 253:
            raise _malformed("bad policy name")
        return PolicyItem(name, document, _uint(author, 1, MAX_NAME, "author"),
                          _uint(version, 1, MAX_VERSION, "version"), deleted_at)
    raise _malformed("unknown item")


def decode_items(data: bytes) -> list[Item]:
    """Decode untrusted bytes; raises only RemoteProtocolError("malformed policy gossip: ...")."""
    try:
        obj = unpack(data)
    except RemoteProtocolError:
        raise _malformed("not msgpack") from None
    if not isinstance(obj, list):
        raise _malformed("not an array of items")
    if len(obj) > MAX_ITEMS:
        raise _malformed(f"more than {MAX_ITEMS} items")
    return [_decode_item(o) for o in obj]


def _ip_key(text: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(text)
    return (ip.version, int(ip))


def _hash(it: Item) -> int:
    return int.from_bytes(hashlib.blake2b(pack(_to_wire(it)), digest_size=DIGEST_SIZE).digest(), "big")


def best_of(items: Iterable[Item]) -> dict[Key, Item]:
    best: dict[Key, Item] = {}
    for it in items:
        old = best.get(it.key)
        if old is None or _outranks(it, old):
            best[it.key] = it
    return best


def _outranks(a: Item, b: Item) -> bool:
    return a.rank() > b.rank()   # same key: same kind


def digest_of_items(items: Iterable[Item]) -> bytes:
    acc = 0
    for it in best_of(items).values():
        acc ^= _hash(it)
    return acc.to_bytes(DIGEST_SIZE, "big")


# --- the CRDT -------------------------------------------------------------------------------


class PolicyStore:
    """Every workload and policy we know; see the module docstring."""

    def __init__(self, our_name: PeerName, now: float, *, max_skew: float = MAX_SKEW,
                 workload_ttl: float = WORKLOAD_TOMBSTONE_TTL,
                 policy_ttl: float = POLICY_TOMBSTONE_TTL) -> None:
        if type(our_name) is not int or not 1 <= our_name <= MAX_NAME:
            raise LocalProtocolError("PolicyStore needs our peer name")
        self.our_name = our_name
        self.max_skew = max_skew
        self.ttl = {"w": workload_ttl, "p": policy_ttl}
        self._now = now
        self._items: dict[Key, Item] = {}
        self._digest = 0
        self._generation = 0
        self._expiry: list[tuple[float, Key]] = []
        self._overrides: dict[Key, Item] = {}
        self._parsed: dict[str, NetworkPolicy] = {}

    # --- reading ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumped on every change: the driver recompiles the ruleset when it moves."""
        return self._generation

    def __len__(self) -> int:
        return len(self._items)

    def items(self, *, tombstones: bool = False) -> list[Item]:
        return [self._items[k] for k in sorted(self._items)
                if tombstones or not self._items[k].tombstone]

    def get(self, key: Key) -> Item | None:
        return self._items.get(key)

    def workloads(self) -> list[WorkloadItem]:
        return [it for it in self.items() if isinstance(it, WorkloadItem)]

    def workload(self, container: str) -> WorkloadItem | None:
        it = self._items.get(("w", f"{self.our_name:012x}", container))
        return it if isinstance(it, WorkloadItem) and not it.tombstone else None

    def policies(self) -> list[NetworkPolicy]:
        """The live policies, sorted by name."""
        out = []
        for it in self.items():
            if isinstance(it, PolicyItem):
                parsed = self._parsed.get(it.document)
                if parsed is None:
                    parsed = self._parsed[it.document] = from_canonical(it.document)
                out.append(parsed)
        return out

    def origins(self) -> list[PeerName]:
        return sorted({it.origin for it in self._items.values()
                       if isinstance(it, WorkloadItem) and not it.tombstone})

    def digest(self) -> bytes:
        return self._digest.to_bytes(DIGEST_SIZE, "big")

    # --- local changes ---------------------------------------------------------------------

    def set_workload(self, container: str, labels: Mapping[str, str], ips: Iterable[str],
                     now: float) -> list[Item]:
        """Our container ``container`` has these labels and addresses (delta, empty if held)."""
        self._advance(now)
        pairs = check_labels(labels)
        canon = tuple(sorted({canonical_ip(ip) for ip in ips}, key=_ip_key))
        key: Key = ("w", f"{self.our_name:012x}", container)
        held = self._items.get(key)
        if isinstance(held, WorkloadItem) and not held.tombstone and \
                (held.labels, held.ips) == (pairs, canon):
            return []
        new = WorkloadItem(self.our_name, container, pairs, canon, self._next_version(held))
        self._put(new)
        return self._changed([new])

    def remove_workload(self, container: str, now: float) -> list[Item]:
        return self._tombstone(now, lambda it: isinstance(it, WorkloadItem)
                               and it.origin == self.our_name and it.container == container)

    def remove_peer(self, origin: PeerName, now: float) -> list[Item]:
        """Tombstone the workloads of a router that left (its own are its to defend)."""
        if origin == self.our_name:
            raise LocalProtocolError("remove_peer of ourselves")
        return self._tombstone(now, lambda it: isinstance(it, WorkloadItem) and it.origin == origin)

    def apply_policy(self, policy: NetworkPolicy, now: float) -> list[Item]:
        """Put ``policy`` in force (delta; empty when that very document is in force)."""
        self._advance(now)
        doc = policy.canonical()
        held = self._items.get(("p", policy.name))
        if held is not None and not held.tombstone and isinstance(held, PolicyItem) \
                and held.document == doc:
            return []
        new = PolicyItem(policy.name, doc, self.our_name, self._next_version(held))
        self._parsed[doc] = policy
        self._put(new)
        return self._changed([new])

    def delete_policy(self, name: str, now: float) -> list[Item]:
        return self._tombstone(now, lambda it: isinstance(it, PolicyItem) and it.name == name)

    def take_overrides(self) -> list[Item]:
        out = [self._overrides[k] for k in sorted(self._overrides)]
        self._overrides.clear()
        return out

    # --- merging ---------------------------------------------------------------------------

    def merge(self, items: Iterable[Item], now: float) -> list[Item]:
        """Apply items received at wall-clock ``now``; return those that were news."""
        self._advance(now)
        changed: dict[Key, Item] = {}
        limit = self._now + self.max_skew
        for it in items:
            if it.deleted_at > limit:
                it = replace(it, deleted_at=_stamp(limit))   # clock-skew guard
            held = self._items.get(it.key)
            if held is not None and not _outranks(it, held):
                continue
            if isinstance(it, WorkloadItem) and it.origin == self.our_name:
                ours = self._override(it, held)
                if ours is not None:
                    changed[it.key] = self._overrides[it.key] = ours
                    continue
            if self._accept(it, held):
                changed[it.key] = it
        return self._changed([changed[k] for k in sorted(changed)])

    def _override(self, it: WorkloadItem, held: Item | None) -> Item | None:
        if it.version >= MAX_VERSION:
            return None
        new: Item
        if held is not None and not held.tombstone:
            new = replace(held, version=it.version + 1)
        elif not it.tombstone:
            new = replace(it, version=it.version + 1, deleted_at=_stamp(self._now))
        else:
            return None
        self._put(new)
        return new

    def _accept(self, it: Item, held: Item | None) -> bool:
        if it.tombstone and it.deleted_at + self.ttl[it.key[0]] <= self._now:
            if held is None:
                return False
            self._drop(it.key)
        else:
            self._put(it)
        return True

    # --- time ------------------------------------------------------------------------------

    def get_timer(self) -> float:
        wake = self._now + TICK
        while self._expiry:
            when, key = self._expiry[0]
            held = self._items.get(key)
            if held is not None and held.tombstone and held.deleted_at + self.ttl[key[0]] == when:
                return min(wake, when)
            heapq.heappop(self._expiry)
        return wake

    def handle_timer(self, now: float) -> list[Item]:
        """Drop expired tombstones (nothing to gossip: others expire theirs)."""
        self._advance(now)
        dropped = []
        while self._expiry and self._expiry[0][0] <= self._now:
            when, key = heapq.heappop(self._expiry)
            held = self._items.get(key)
            if held is not None and held.tombstone and held.deleted_at + self.ttl[key[0]] == when:
                self._drop(key)
                dropped.append(held)
        if dropped:
            self._generation += 1
        return dropped

    def _advance(self, now: float) -> None:
        if now > self._now:
            self._now = now

    # --- internals -------------------------------------------------------------------------

    def _next_version(self, held: Item | None) -> int:
        if held is None:
            return 1
        if held.version >= MAX_VERSION:
            raise LocalProtocolError("the version of this policy item is exhausted")
        return held.version + 1

    def _tombstone(self, now: float, match: Callable[[Item], bool]) -> list[Item]:
        self._advance(now)
        stamp = _stamp(self._now)
        delta: list[Item] = []
        for it in [i for i in self._items.values() if not i.tombstone and match(i)]:
            if it.version >= MAX_VERSION:
                continue
            new: Item
            if isinstance(it, PolicyItem):
                new = replace(it, document="", author=self.our_name, version=it.version + 1,
                              deleted_at=stamp)
            else:
                new = replace(it, version=it.version + 1, deleted_at=stamp)
            self._put(new)
            delta.append(new)
        return self._changed(sorted(delta, key=lambda i: i.key))

    def _changed(self, delta: list[Item]) -> list[Item]:
        if delta:
            self._generation += 1
        return delta

    def _put(self, new: Item) -> None:
        if new.key in self._items:
            self._drop(new.key)
        self._items[new.key] = new
        self._digest ^= _hash(new)
        if new.tombstone:
            heapq.heappush(self._expiry, (new.deleted_at + self.ttl[new.key[0]], new.key))

    def _drop(self, key: Key) -> None:
        old = self._items.pop(key)
        self._digest ^= _hash(old)
