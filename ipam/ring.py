"""The ring: who owns which part of the allocation range, as a CRDT.

Theory of operation
-------------------
The allocation range (the *universe*, e.g. 10.32.0.0/12) is cut at *tokens*. Each token
carries one ``Entry``: the range ``[token, end)`` it stands for, its owner, a version and
a hint of how many addresses in it are free. Unlike Weave's ring, an entry states its end
explicitly, so a peer holding only some entries (a delta, or a partial view) can never
mistake a gap for ownership: a peer owns exactly the ranges of the entries naming it.

Only an entry's owner writes it (bumping its version): to give part of it away (``grant``
splits ``[token, end)`` and may add up to two tokens, both inside the range it owned), to
report a new free count, or to hand it over whole. The one exception is ``rmpeer``: an
admin takes over a dead peer's entries. Ranges only ever shrink and tokens are never
removed, so the newest version of every token describes a range disjoint from the newest
version of every other token, and per-token "highest version wins" can never make two
peers own one address.

State and merge form a join-semilattice, so gossip may arrive in any order, repeated or
partial, and every peer that has seen the same updates holds the same ring::

    state  = (universe, ring_id, {token: Entry})
    join   = per token, the entry with the highest (version, owner, end, free)

``ring_id`` names the seeding event: (number of seed peers, 64-bit hash of their sorted
names), the peers the ring was first divided among (the consensus value, or
``--ipalloc-init seed=...``). Every peer that seeds with the same names computes the same
initial ring, so those rings merge as one. Two rings seeded by different peer sets cannot
both stand: the higher ``ring_id`` (more seed peers, then the hash) wins whole (a
lexicographic join), and peers of the losing ring re-claim their addresses in use from the
winner's owners (the allocator does that). ``NO_RING`` (0, 0) means "not seeded yet" and
holds no entries. The id, not the names, rides in every update, so a delta stays small
however many peers seeded the ring.

The digest is an XOR of per-entry hashes kept up to date on every store (O(1) compare).

Positions are plain integers: an IPv4 universe lies below 2^32, an IPv6 one (a second ring,
``--ipalloc-range-v6``) anywhere below 2^128; nothing here depends on the width but the
hash keys, which switch to a wide form only when a value passes 64 bits.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.peername import PeerName

MAX_VERSION = (1 << 63) - 1
MAX_SEEDS = 65535
RingId = tuple[int, int]  # (number of seed peers, hash of their names)
NO_RING: RingId = (0, 0)
DIGEST_SIZE = 16
MAX_END = 1 << 128       # an IPv6 range; IPv4 ranges end at or below 1 << 32


@dataclass(frozen=True, slots=True)
class Entry:
    """``owner`` owns ``[token, end)``, with ``free`` of it free (a hint for donors)."""

    token: int
    end: int
    owner: PeerName
    version: int
    free: int

    @property
    def size(self) -> int:
        return self.end - self.token

    def key(self) -> tuple[int, int, int, int]:
        """Total order of entries for one token: the highest wins a merge."""
        return (self.version, self.owner, self.end, self.free)


@dataclass(frozen=True, slots=True)
class RingUpdate:
    """Some or all of a ring (the unit of gossip): what a peer merges."""

    start: int
    end: int
    ring_id: RingId
    entries: tuple[Entry, ...]  # ascending by token

    def merge(self, other: RingUpdate) -> RingUpdate:
        """Coalesce two pending updates into one: their join."""
        if (other.start, other.end) != (self.start, self.end):
            return other  # a range change: the newer wins (cannot happen within one run)
        if other.ring_id > self.ring_id:
            return other
        if other.ring_id < self.ring_id:
            return self
        if not other.entries:
            return self
        if not self.entries:
            return other
        best: dict[int, Entry] = {e.token: e for e in self.entries}
        for e in other.entries:
            old = best.get(e.token)
            if old is None or e.key() > old.key():
                best[e.token] = e
        return RingUpdate(self.start, self.end, self.ring_id,
                          tuple(best[t] for t in sorted(best)))


def ring_id_of(seeds: Sequence[PeerName]) -> RingId:
    names = sorted(set(seeds))
    raw = struct.pack(f">{len(names)}Q", *names)
    tag = int.from_bytes(hashlib.blake2b(raw, digest_size=8, person=b"seeds").digest(), "big")
    return (len(names), tag or 1)


def _pack_wide(*values: int) -> bytes:
    """Big-endian 64-bit words (what IPv4 rings always hash, so their digests never
    change); a value of an IPv6 ring beyond 64 bits switches the whole key to a tagged
    17-byte-per-value form, which no all-64-bit key can collide with by length."""
    if all(v < 1 << 64 for v in values):
        return struct.pack(f">{len(values)}Q", *values)
    return b"\xff" + b"".join(v.to_bytes(17, "big") for v in values)


def _entry_hash(e: Entry) -> int:
    raw = _pack_wide(e.token, e.end, e.owner, e.version, e.free)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=DIGEST_SIZE).digest(), "big")


def _ident_hash(start: int, end: int, ring_id: RingId) -> int:
    raw = _pack_wide(start, end, *ring_id)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=DIGEST_SIZE, person=b"ring").digest(), "big")


def digest_of_update(update: RingUpdate) -> bytes:
    """The digest of a ring holding exactly ``update`` (entries deduplicated by token)."""
    best: dict[int, Entry] = {}
    for e in update.entries:
        old = best.get(e.token)
        if old is None or e.key() > old.key():
            best[e.token] = e
    acc = _ident_hash(update.start, update.end, update.ring_id)
    for e in best.values():
        acc ^= _entry_hash(e)
    return acc.to_bytes(DIGEST_SIZE, "big")


def subdivide(start: int, end: int, peers: Sequence[PeerName]) -> list[tuple[int, int, PeerName]]:
    """Split ``[start, end)`` among ``peers`` (sorted) in CIDR-aligned halves, deterministically."""
    out: list[tuple[int, int, PeerName]] = []

    def split(lo: int, hi: int, names: Sequence[PeerName]) -> None:
        if hi <= lo or not names:
            return
        if len(names) == 1 or hi - lo == 1:
            out.append((lo, hi, names[0]))
            return
        mid = lo + (hi - lo) // 2
        half = len(names) // 2
        split(lo, mid, names[:half])
        split(mid, hi, names[half:])

    split(start, end, sorted(set(peers)))
    return out


class Ring:
    """One peer's view of the ring. Local writes return the update to gossip."""

    def __init__(self, start: int, end: int, ring_id: RingId = NO_RING,
                 entries: Iterable[Entry] = ()) -> None:
        if not 0 <= start < end <= MAX_END:
            raise LocalProtocolError(f"invalid ring range [{start}, {end})")
        self.start = start
        self.end = end
        self.ring_id: RingId = ring_id
        self.seed_names: tuple[PeerName, ...] = ()  # known when we seeded it ourselves
        self._entries: dict[int, Entry] = {}
        self._tokens: list[int] = []
        self._digest = 0
        self.generation = 0  # bumped on every change (caches key on it)
        self._owned_cache: tuple[int, PeerName, list[tuple[int, int]]] | None = None
        for e in entries:
            self._store(e)

    @classmethod
    def seeded(cls, start: int, end: int, seeds: Sequence[PeerName]) -> Ring:
        names = tuple(sorted(set(seeds)))
        if not 0 < len(names) <= MAX_SEEDS:
            raise LocalProtocolError("a ring needs 1 to 65535 seed peers")
        ring = cls(start, end, ring_id_of(names),
                   [Entry(lo, hi, owner, 1, hi - lo) for lo, hi, owner in subdivide(start, end, names)])
        ring.seed_names = names
        return ring

    # --- queries -----------------------------------------------------------------------

    @property
    def seeded_yet(self) -> bool:
        return self.ring_id != NO_RING

    def entries(self) -> list[Entry]:
        return [self._entries[t] for t in self._tokens]

    def get(self, token: int) -> Entry | None:
        return self._entries.get(token)

    def entry_at(self, addr: int) -> Entry | None:
        """The entry whose range holds ``addr`` (None if no known entry does)."""
        i = bisect.bisect_right(self._tokens, addr) - 1
        if i < 0:
            return None
        e = self._entries[self._tokens[i]]
        return e if addr < e.end else None

    def _limit(self, i: int) -> int:
        """Where the entry at index ``i`` really ends: its end, or the next token if that
        comes first (entries overlap only after conflicting writes, and then the address
        belongs to the entry with the nearest token below it, as ``entry_at`` says)."""
        e = self._entries[self._tokens[i]]
        return min(e.end, self._tokens[i + 1]) if i + 1 < len(self._tokens) else e.end

    def effective_end(self, token: int) -> int:
        return self._limit(bisect.bisect_left(self._tokens, token))

    def owned(self, peer: PeerName) -> list[tuple[int, int]]:
        """The ranges ``peer`` owns, ascending, adjacent ones joined."""
        cache = self._owned_cache
        if cache is not None and cache[0] == self.generation and cache[1] == peer:
            return cache[2]
        out: list[tuple[int, int]] = []
        for i, t in enumerate(self._tokens):
            e = self._entries[t]
            if e.owner != peer:
                continue
            end = self._limit(i)
            if out and out[-1][1] == e.token:
                out[-1] = (out[-1][0], end)
            else:
                out.append((e.token, end))
        self._owned_cache = (self.generation, peer, out)
        return out

    def covers(self, lo: int, hi: int) -> bool:
        """Whether the entries we know leave no gap in ``[lo, hi)`` (else more is coming)."""
        reached = lo
        i = max(0, bisect.bisect_right(self._tokens, lo) - 1)
        while reached < hi and i < len(self._tokens):
            e = self._entries[self._tokens[i]]
            if e.token > reached:
                return False
            reached = max(reached, e.end)
            i += 1
        return reached >= hi

    def owners(self) -> dict[PeerName, int]:
        """Addresses owned per peer."""
        totals: dict[PeerName, int] = {}
        for i, t in enumerate(self._tokens):
            e = self._entries[t]
            totals[e.owner] = totals.get(e.owner, 0) + self._limit(i) - e.token
        return totals

    def overlaps(self) -> list[tuple[Entry, Entry]]:
        """Pairs of neighbouring entries whose ranges overlap (only after admin mistakes
        or lost state; shown in status)."""
        out = []
        for a, b in zip(self._tokens, self._tokens[1:], strict=False):
            ea, eb = self._entries[a], self._entries[b]
            if ea.end > eb.token:
                out.append((ea, eb))
        return out

    def digest(self) -> bytes:
        return (self._digest ^ _ident_hash(self.start, self.end, self.ring_id)).to_bytes(DIGEST_SIZE, "big")

    def snapshot(self) -> RingUpdate:
        return RingUpdate(self.start, self.end, self.ring_id, tuple(self.entries()))

    def __len__(self) -> int:
        return len(self._tokens)

    # --- merge ------------------------------------------------------------------------------

    def merge(self, update: RingUpdate) -> RingUpdate | None:
        """Join ``update`` into our ring; return the part that was news, or None.

        The caller checks the range first (a different universe cannot be merged)."""
        if (update.start, update.end) != (self.start, self.end):
            raise LocalProtocolError("merge of a ring over another range")
        if update.ring_id == NO_RING or update.ring_id < self.ring_id:
            return None
        if update.ring_id != self.ring_id:
            self._replace(update.ring_id)
            self.merge(update)
            return self.snapshot()
        delta = []
        for e in update.entries:
            mine = self._entries.get(e.token)
            if mine is None or e.key() > mine.key():
                self._store(e)
                delta.append(e)
        if not delta:
            return None
        return RingUpdate(self.start, self.end, self.ring_id, tuple(sorted(delta, key=lambda x: x.token)))

    def _replace(self, ring_id: RingId) -> None:
        self.ring_id = ring_id
        self.seed_names = ()
        self._entries.clear()
        self._tokens.clear()
        self._digest = 0
        self.generation += 1

    def _store(self, e: Entry) -> None:
        if not (self.start <= e.token < e.end <= self.end) or not 1 <= e.version <= MAX_VERSION:
            raise LocalProtocolError(f"entry {e} outside the ring [{self.start}, {self.end})")
        old = self._entries.get(e.token)
        if old is None:
            bisect.insort(self._tokens, e.token)
        else:
            self._digest ^= _entry_hash(old)
        self._entries[e.token] = e
        self._digest ^= _entry_hash(e)
        self.generation += 1

    # --- local writes (by the owner, or by an admin's rmpeer) ----------------------------------

    def _update(self, entries: list[Entry]) -> RingUpdate:
        for e in entries:
            self._store(e)
        return RingUpdate(self.start, self.end, self.ring_id, tuple(sorted(entries, key=lambda x: x.token)))

    def _bump(self, token: int, base: Entry) -> int:
        old = self._entries.get(token)
        version = max(base.version, old.version if old is not None else 0) + 1
        if version > MAX_VERSION:
            raise LocalProtocolError("ring entry version overflow")
        return version

    def grant(self, me: PeerName, lo: int, hi: int, to: PeerName,
              free_of: Callable[[int, int], int]) -> RingUpdate:
        """Give ``[lo, hi)`` (inside one entry we own) to ``to``. ``free_of(a, b)`` counts
        the free addresses of ``[a, b)`` as the new owner's hint (ours for our remainder)."""
        e = self.entry_at(lo)
        if e is None or e.owner != me or not (lo < hi <= self.effective_end(e.token)):
            raise LocalProtocolError(f"cannot grant [{lo}, {hi}): not inside one range we own")
        if to == me:
            raise LocalProtocolError("cannot grant a range to ourselves")
        changed: list[Entry] = []
        if lo > e.token:
            changed.append(Entry(e.token, lo, me, self._bump(e.token, e), free_of(e.token, lo)))
        changed.append(Entry(lo, hi, to, self._bump(lo, e), hi - lo))
        if hi < e.end:
            changed.append(Entry(hi, e.end, me, self._bump(hi, e), free_of(hi, e.end)))
        return self._update(changed)

    def give_all(self, owner: PeerName, to: PeerName) -> tuple[RingUpdate, int]:
        """Every entry of ``owner`` now belongs to ``to`` (handoff, or rmpeer of a dead peer).
        Returns the update and how many addresses moved."""
        changed = [Entry(e.token, e.end, to, self._bump(e.token, e), e.size)
                   for e in self.entries() if e.owner == owner]
        return self._update(changed), sum(e.size for e in changed)

    def set_free(self, me: PeerName, free: dict[int, int]) -> RingUpdate | None:
        """Report new free counts of entries we own (token -> free); None if nothing changed."""
        changed = []
        for token in sorted(free):
            e = self._entries.get(token)
            if e is None or e.owner != me:
                continue
            value = max(0, min(free[token], e.size))
            if value != e.free:
                changed.append(Entry(e.token, e.end, me, self._bump(token, e), value))
        return self._update(changed) if changed else None
