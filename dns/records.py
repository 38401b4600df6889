"""The record store: every router's DNS entries, merged as a CRDT.

Theory of operation
-------------------
An entry says "``hostname`` has ``address``, registered for ``container`` by router
``origin``". Its identity is the key ``(hostname, address, container, origin)``; its state
is ``version`` (a per-key counter, bumped by whoever changes the entry) and ``deleted_at``
(0 while live; for a tombstone, the second at which it was deleted, by its author's wall
clock). Entries about one key are totally ordered by::

    rank = (version, is_tombstone, -deleted_at)

and the store keeps, per key, the highest-ranked entry ever seen. That is a
join-semilattice, so ``merge`` is commutative, associative and idempotent: routers that
have seen the same entries hold the same state whatever the order or duplication of
gossip. At equal versions a tombstone beats a live entry (a removal is never undone by an
old copy), and of two tombstones the earlier deletion wins (so routers that tombstone the
same key concurrently, e.g. on ``remove_peer``, converge to one entry).

Versions are Lamport-like counters, never wall-clock time: a router with a wrong clock
cannot make an old entry win. Wall-clock time (``now`` arguments, seconds since the epoch
as the router's ``time.time()``) is used for one thing only, expiring tombstones:

* **Tombstone expiry rule.** A tombstone is dropped ``tombstone_ttl`` (T, default 30 min)
  after ``deleted_at``. T is far longer than gossip needs to reach every connected router
  (news floods in well under a second; the periodic digest exchange repairs anything
  missed within a few gossip intervals, 30 s each), so every router that is in the mesh
  during that window has applied the tombstone before anyone drops it. A tombstone that
  arrives already expired still removes the older live entry it outranks (and is passed
  on as news), but is not stored: expired tombstones never bounce between routers.
* **Clock-skew guard.** Routers' clocks may disagree by up to ``max_skew`` (default 60 s,
  ≪ T). A received ``deleted_at`` more than ``max_skew`` ahead of our clock is clamped to
  ``now + max_skew``, so a router whose clock runs fast cannot make tombstones immortal;
  one whose clock runs slow only shortens their life, which the next rule makes safe.
* **Origin authority ("reconcile").** Only ``origin`` decides which of its entries are
  live. A router that receives an entry with itself as origin that outranks what it holds
  answers with a higher version of its own truth: live again if it still claims the key
  (e.g. another router ran ``remove_peer`` on us during a partition), a tombstone if it
  does not (a container detached while we were down, or a stale copy brought back by a
  router that was partitioned for longer than T). A restarted router starts empty,
  re-registers its containers (``add`` or ``reconcile``) before it joins the mesh, and
  the gossip it then receives about its previous incarnation is corrected this way.
  Such overrides also collect in ``take_overrides()``: the router floods them to every
  neighbour, including the one that sent the stale copy.

Entries of a router that left the mesh for good are tombstoned by ``remove_peer(origin)``
(the router calls it when the topology forgets that peer); if a long-partitioned router
brings them back later, the router calls it again (``origins()`` lists who has entries).

Merging never reads a clock either: ``merge`` takes the ``now`` of the gossip it applies
(``DnsGossiper`` turns the mesh's clock into wall-clock seconds). Times only move forward:
a ``now`` older than one already seen counts as that one. ``get_timer()`` asks to be woken
at least every ``TICK`` seconds, so the router's periodic duties (peers gone) run too.

Costs: ``merge`` is O(entries in the update); lookups by name or address are O(answer)
through live indexes; the digest is an XOR of per-entry hashes kept up to date on every
store, so comparing states costs O(1). Outputs are sorted by key.

Wire format (msgpack; ``encode_entries`` / ``decode_entries``)::

    payload := [ entry, ... ]                                      at most 100000 entries
    entry   := [ hostname, address, container, origin, version, deleted_at ]

    hostname    str   canonical (lowercase, absolute), <= 254 chars
    address     bin   4 bytes (IPv4) or 16 bytes (IPv6)
    container   str   1 .. 1024 chars
    origin      uint  1 .. 2^48-1 (peer name)
    version     uint  1 .. 2^63-1
    deleted_at  uint  0 (live) or the second of deletion, <= 2^63-1

    +----------+---------+-----------+--------+---------+------------+
    | hostname | address | container | origin | version | deleted_at |
    +----------+---------+-----------+--------+---------+------------+
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.framing import pack, unpack
from weftnet.proto.peername import MAX_NAME, PeerName

from .names import (
    address_key,
    address_of_packed,
    hostname_problem,
    is_canonical_address,
    normalize_address,
    normalize_hostname,
    packed_address,
)

TOMBSTONE_TTL = 1800.0
MAX_SKEW = 60.0
TICK = 10.0
MAX_VERSION = (1 << 63) - 1
MAX_DELETED_AT = (1 << 63) - 1
MAX_CONTAINER = 1024
MAX_ENTRIES = 100_000
DIGEST_SIZE = 16

Key = tuple[str, str, str, PeerName]


@dataclass(frozen=True, slots=True)
class Entry:
    """One DNS entry, live (``deleted_at == 0``) or a tombstone."""

    hostname: str
    address: str
    container: str
    origin: PeerName
    version: int
    deleted_at: int = 0

    def __post_init__(self) -> None:
        reason = _entry_problem(self.hostname, self.address, self.container, self.origin,
                                self.version, self.deleted_at)
        if reason is not None:
            raise _Invalid(f"invalid DNS entry: {reason}", reason)

    @property
    def key(self) -> Key:
        return (self.hostname, self.address, self.container, self.origin)

    @property
    def tombstone(self) -> bool:
        return self.deleted_at != 0


class _Invalid(LocalProtocolError):
    """A constructor refused its fields; the decoder turns ``detail`` into a remote error."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _address_problem(address: Any) -> str | None:
    if not isinstance(address, str) or len(address) > 39 or not is_canonical_address(address):
        return "bad address"
    return None


def _entry_problem(hostname: Any, address: Any, container: Any, origin: Any, version: Any,
                   deleted_at: Any) -> str | None:
    reason = hostname_problem(hostname) or _address_problem(address)
    if reason is not None:
        return reason
    if not isinstance(container, str) or not 0 < len(container) <= MAX_CONTAINER:
        return "bad container"
    if type(origin) is not int or not 1 <= origin <= MAX_NAME:
        return "bad origin"
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        return "bad version"
    if type(deleted_at) is not int or not 0 <= deleted_at <= MAX_DELETED_AT:
        return "bad deletion time"
    return None


def rank(e: Entry) -> tuple[int, bool, int]:
    """The total order of entries with one key: the higher rank wins a merge."""
    return (e.version, e.deleted_at != 0, -e.deleted_at)


def _stamp(now: float) -> int:
    """A tombstone's ``deleted_at`` for wall-clock ``now`` (never 0, which means live)."""
    return min(MAX_DELETED_AT, max(1, math.ceil(now)))


# --- codec ----------------------------------------------------------------------------------


def _to_wire(e: Entry) -> list[Any]:
    return [e.hostname, packed_address(e.address), e.container, e.origin, e.version, e.deleted_at]


def encode_entries(entries: Sequence[Entry]) -> bytes:
    if len(entries) > MAX_ENTRIES:
        raise LocalProtocolError(f"{len(entries)} DNS entries exceed the cap of {MAX_ENTRIES}")
    return pack([_to_wire(e) for e in entries])


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed DNS gossip: {what}")


def _decode_entry(obj: Any) -> Entry:
    if not isinstance(obj, list) or len(obj) != 6:
        raise _malformed("entry is not a 6-array")
    hostname, address, container, origin, version, deleted_at = obj
    if not isinstance(address, bytes) or len(address) not in (4, 16):
        raise _malformed("bad address")
    return Entry(hostname, address_of_packed(address), container, origin, version, deleted_at)


def decode_entries(data: bytes) -> list[Entry]:
    """Decode untrusted bytes; raises only RemoteProtocolError("malformed DNS gossip: ...")."""
    try:
        obj = unpack(data)
    except RemoteProtocolError:
        raise _malformed("not msgpack") from None
    if not isinstance(obj, list):
        raise _malformed("not an array of entries")
    if len(obj) > MAX_ENTRIES:
        raise _malformed(f"more than {MAX_ENTRIES} entries")
    try:
        return [_decode_entry(e) for e in obj]
    except _Invalid as exc:
        raise _malformed(exc.detail) from None


def _entry_hash(e: Entry) -> int:
    return int.from_bytes(hashlib.blake2b(pack(_to_wire(e)), digest_size=DIGEST_SIZE).digest(), "big")


def best_of(entries: Iterable[Entry]) -> dict[Key, Entry]:
    """The highest-ranked entry per key."""
    best: dict[Key, Entry] = {}
    for e in entries:
        old = best.get(e.key)
        if old is None or rank(e) > rank(old):
            best[e.key] = e
    return best


def digest_of_entries(entries: Iterable[Entry]) -> bytes:
    """The digest of a store holding (the best per key of) exactly these entries."""
    acc = 0
    for e in best_of(entries).values():
        acc ^= _entry_hash(e)
    return acc.to_bytes(DIGEST_SIZE, "big")


def _ancestors(name: str) -> list[str]:
    """Proper ancestors of a canonical name, the root excluded: a.b.c. -> [b.c., c.]."""
    out = []
    i = name.find(".")
    while i != len(name) - 1:
        out.append(name[i + 1:])
        i = name.find(".", i + 1)
    return out


# --- the CRDT -------------------------------------------------------------------------------


class RecordStore:
    """Every entry we know, ours and other routers'; see the module docstring."""

    def __init__(self, our_name: PeerName, now: float, *, tombstone_ttl: float = TOMBSTONE_TTL,
                 max_skew: float = MAX_SKEW) -> None:
        if type(our_name) is not int or not 1 <= our_name <= MAX_NAME:
            raise LocalProtocolError("RecordStore needs our peer name")
        if not 0 <= max_skew < tombstone_ttl:
            raise LocalProtocolError("max_skew must be below tombstone_ttl")
        self.our_name = our_name
        self.tombstone_ttl = tombstone_ttl
        self.max_skew = max_skew
        self._now = now
        self._entries: dict[Key, Entry] = {}
        self._digest = 0
        self._generation = 0
        self._by_name: dict[str, dict[str, int]] = {}      # live: name -> address -> count
        self._by_address: dict[str, dict[str, int]] = {}   # live: address -> name -> count
        self._below: dict[str, int] = {}                   # name -> live names strictly under it
        self._sorted: dict[str, tuple[str, ...]] = {}      # cache of lookup() results
        self._expiry: list[tuple[float, Key]] = []         # heap of tombstone expiries (lazy)
        self._overrides: dict[Key, Entry] = {}

    # --- reading ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumped on every change of state: the key for caches of answers."""
        return self._generation

    @property
    def now(self) -> float:
        """The latest wall-clock time any call passed in."""
        return self._now

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Entry | None:
        return self._entries.get(key)

    def lookup(self, name: str) -> tuple[str, ...]:
        """The live addresses of a canonical name, sorted (empty when none)."""
        cached = self._sorted.get(name)
        if cached is None:
            addrs = self._by_name.get(name)
            if not addrs:
                return ()
            cached = self._sorted[name] = tuple(sorted(addrs, key=address_key))
        return cached

    def reverse(self, address: str) -> list[str]:
        """The live names that have ``address``, sorted."""
        return sorted(self._by_address.get(address, ()))

    def has_name(self, name: str) -> bool:
        """True when the canonical name has live entries, or live names exist under it."""
        return name in self._by_name or name in self._below

    def entries(self, *, tombstones: bool = False) -> list[Entry]:
        """Live entries (and tombstones when asked), sorted by key."""
        return [self._entries[k] for k in sorted(self._entries)
                if tombstones or not self._entries[k].tombstone]

    def origins(self) -> list[PeerName]:
        """Routers that have live entries here, sorted."""
        return sorted({e.origin for e in self._entries.values() if not e.tombstone})

    def digest(self) -> bytes:
        return self._digest.to_bytes(DIGEST_SIZE, "big")

    # --- our own entries -------------------------------------------------------------------

    def add(self, hostname: str, address: str, container: str, now: float) -> list[Entry]:
        """Claim ``hostname -> address`` for ``container``; returns the delta (empty if held)."""
        self._advance(now)
        key = (normalize_hostname(hostname), normalize_address(address), container, self.our_name)
        held = self._entries.get(key)
        if held is not None and not held.tombstone:
            return []
        new = Entry(*key, version=self._next_version(held), deleted_at=0)
        self._put(new)
        return self._changed([new])

    def remove(self, now: float, *, hostname: str | None = None, address: str | None = None,
               container: str | None = None) -> list[Entry]:
        """Tombstone our live entries matching every given field (at least one)."""
        if hostname is None and address is None and container is None:
            raise LocalProtocolError("remove needs a hostname, an address or a container")
        name = None if hostname is None else normalize_hostname(hostname)
        addr = None if address is None else normalize_address(address)
        return self._tombstone(now, lambda e: e.origin == self.our_name
                               and (name is None or e.hostname == name)
                               and (addr is None or e.address == addr)
                               and (container is None or e.container == container))

    def remove_container(self, container: str, now: float) -> list[Entry]:
        return self.remove(now, container=container)

    def remove_peer(self, origin: PeerName, now: float) -> list[Entry]:
        """Tombstone every live entry of a router that left (its own are its to defend)."""
        if origin == self.our_name:
            raise LocalProtocolError("remove_peer of ourselves: use remove")
        return self._tombstone(now, lambda e: e.origin == origin)

    def reconcile(self, claims: Iterable[tuple[str, str, str]], now: float) -> list[Entry]:
        """Make our live entries exactly ``claims`` ((hostname, address, container) each)."""
        self._advance(now)
        wanted = {(normalize_hostname(h), normalize_address(a), c, self.our_name) for h, a, c in claims}
        delta = self._tombstone(now, lambda e: e.origin == self.our_name and e.key not in wanted)
        for key in sorted(wanted):
            delta += self.add(key[0], key[1], key[2], now)
        return sorted(delta, key=lambda e: e.key)

    def take_overrides(self) -> list[Entry]:
        """Our entries rewritten by merges since the last call (flood them to everyone)."""
        out = [self._overrides[k] for k in sorted(self._overrides)]
        self._overrides.clear()
        return out

    # --- merging ---------------------------------------------------------------------------

    def merge(self, entries: Iterable[Entry], now: float) -> list[Entry]:
        """Apply entries received at wall-clock ``now``; return those that were news
        (sorted by key)."""
        self._advance(now)
        changed: dict[Key, Entry] = {}
        limit = self._now + self.max_skew
        for e in entries:
            if e.deleted_at > limit:
                e = replace(e, deleted_at=_stamp(limit))  # clock-skew guard
            held = self._entries.get(e.key)
            if held is not None and rank(e) <= rank(held):
                continue
            if e.origin == self.our_name:
                ours = self._override(e, held)
                if ours is not None:
                    changed[e.key] = self._overrides[e.key] = ours
                    continue
            if self._accept(e, held):
                changed[e.key] = e
        return self._changed([changed[k] for k in sorted(changed)])

    def _override(self, e: Entry, held: Entry | None) -> Entry | None:
        """Our answer to news about our own key (None: accept it as it is)."""
        if e.version >= MAX_VERSION:
            return None  # cannot outrank a forged maximum; accept it rather than diverge
        if held is not None and not held.tombstone:
            new = replace(held, version=e.version + 1)
        elif not e.tombstone:
            new = replace(e, version=e.version + 1, deleted_at=_stamp(self._now))
        else:
            return None
        self._put(new)
        return new

    def _accept(self, e: Entry, held: Entry | None) -> bool:
        """Store ``e`` (it outranks ``held``); False when that changed nothing."""
        if e.tombstone and self._expired(e):
            if held is None:
                return False
            self._drop(e.key)   # applied, not stored: it never bounces back
        else:
            self._put(e)
        return True

    # --- time ------------------------------------------------------------------------------

    def get_timer(self) -> float:
        """When to call ``handle_timer``: the next tombstone expiry, at most TICK from now."""
        wake = self._now + TICK
        while self._expiry:
            when, key = self._expiry[0]
            held = self._entries.get(key)
            if held is not None and held.tombstone and held.deleted_at + self.tombstone_ttl == when:
                return min(wake, when)
            heapq.heappop(self._expiry)  # superseded: lazily forgotten
        return wake

    def handle_timer(self, now: float) -> list[Entry]:
        """Drop expired tombstones; return them (nothing to gossip: others expire theirs)."""
        self._advance(now)
        dropped = []
        while self._expiry and self._expiry[0][0] <= self._now:
            when, key = heapq.heappop(self._expiry)
            held = self._entries.get(key)
            if held is not None and held.tombstone and held.deleted_at + self.tombstone_ttl == when:
                self._drop(key)
                dropped.append(held)
        if dropped:
            self._generation += 1
        return sorted(dropped, key=lambda e: e.key)

    def _advance(self, now: float) -> None:
        if now > self._now:
            self._now = now

    def _expired(self, e: Entry) -> bool:
        return e.deleted_at + self.tombstone_ttl <= self._now

    # --- internals -------------------------------------------------------------------------

    def _next_version(self, held: Entry | None) -> int:
        if held is None:
            return 1
        if held.version >= MAX_VERSION:
            raise LocalProtocolError("the version of this DNS entry is exhausted")
        return held.version + 1

    def _tombstone(self, now: float, match: Callable[[Entry], bool]) -> list[Entry]:
        self._advance(now)
        stamp = _stamp(self._now)
        doomed = [e for e in self._entries.values() if not e.tombstone and match(e)]
        delta = []
        for e in doomed:
            if e.version >= MAX_VERSION:
                continue  # cannot be outranked; see _override
            new = replace(e, version=e.version + 1, deleted_at=stamp)
            self._put(new)
            delta.append(new)
        return self._changed(sorted(delta, key=lambda e: e.key))

    def _changed(self, delta: list[Entry]) -> list[Entry]:
        if delta:
            self._generation += 1
        return delta

    def _put(self, new: Entry) -> None:
        key = new.key
        old = self._entries.get(key)
        if old is not None:
            self._drop(key)
        self._entries[key] = new
        self._digest ^= _entry_hash(new)
        if new.tombstone:
            heapq.heappush(self._expiry, (new.deleted_at + self.tombstone_ttl, key))
        else:
            self._index(new, +1)

    def _drop(self, key: Key) -> None:
        old = self._entries.pop(key)
        self._digest ^= _entry_hash(old)
        if not old.tombstone:
            self._index(old, -1)

    def _index(self, e: Entry, step: int) -> None:
        name, addr = e.hostname, e.address
        self._sorted.pop(name, None)
        addrs = self._by_name.setdefault(name, {})
        count = addrs.get(addr, 0) + step
        if count:
            addrs[addr] = count
        else:
            del addrs[addr]
        if not addrs:
            del self._by_name[name]
            for anc in _ancestors(name):
                self._below[anc] -= 1
                if not self._below[anc]:
                    del self._below[anc]
        elif step > 0 and len(addrs) == 1 and count == 1:
            for anc in _ancestors(name):
                self._below[anc] = self._below.get(anc, 0) + 1
        names = self._by_address.setdefault(addr, {})
        count = names.get(name, 0) + step
        if count:
            names[name] = count
        else:
            del names[name]
        if not names:
            del self._by_address[addr]
