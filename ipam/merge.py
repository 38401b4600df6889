"""When two independently seeded rings meet: what we know of the losing ring, the holds
that keep its peers' addresses from being handed out again, and the duplicates found.

Theory of operation
-------------------
Two rings seeded by different peer sets (two groups that each reached consensus, or
``seed=`` lists that differ) cover the same range, so they cannot both stand. The higher
``ring_id`` wins whole (``ring.py``); every peer of the losing ring adopts the winner the
moment it hears it, and re-claims each address it has in use from that address's owner
in the winning ring (the allocator's *orphans*). An owner grants an address nobody uses
here and refuses one in use. Two things make that merge safe:

1. Holds. Until a losing peer's re-claim reaches the owner, the owner cannot know the
   address is in use. So every peer that hears of a lower ring (first-hand from a peer
   that still uses it, or relayed: like any gossip, a peer passes on what was news to it)
   notes the ranges where that ring's free counts show addresses in use, and neither
   allocates nor donates there until ``MERGE_HOLD`` seconds after it last heard of that
   ring (and never longer than ``MAX_HOLD`` at a stretch; a peer of it that comes back
   after a silence starts a new stretch): the losing peers adopt the winner within a
   round trip and re-claim at once. Operations wait meanwhile (within their deadline);
   a hold never makes one fail. A peer whose own ring lost holds its old ring the same way.
2. Duplicates. Addresses both rings handed out before they met are in use twice
   already: no merge can undo that. The owner refuses the re-claim ("in use by c2 on
   b1") and both sides say so in ``status`` with the fix (detach one of the two). Freeing
   either one tells the other side (``Released``), and the next re-claim settles it.

A meeting is remembered (at most ``MAX_MEETINGS``, for ``status``): which ring gave way,
to which, when, who owned it and how many addresses it had in use.

Nothing here reads a clock: ``now`` comes in with every call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from weftnet.proto.peername import PeerName

from .ring import Entry, RingId, RingUpdate

MERGE_HOLD = 5.0       # a hold lasts this long after the losing ring was last heard of
MAX_HOLD = 30.0        # and never longer than this after it was first heard of
HOLD_RETRY = 1.0       # a peer refused space because of a hold asks again after this
DUPLICATE_TTL = 35.0   # a refused re-claim repeats every ORPHAN_RETRY (10 s): a note
                       # not renewed for this long is stale (the other side let it go)
MAX_MEETINGS = 16
MAX_DUPLICATES = 4096
HOLD_REASON = "merging rings"  # how a Refused caused by a hold starts (the asker retries)


@dataclass(slots=True)
class Meeting:
    """A lower ring that met ours: ``ring_id`` gave way to ``winner``."""

    ring_id: RingId
    winner: RingId
    ours_lost: bool                 # it was this peer's own ring
    first_seen: float
    last_seen: float
    hold_from: float = 0.0          # this episode began (a peer of it back after silence)
    entries: dict[int, Entry] = field(default_factory=dict)
    seed_names: tuple[PeerName, ...] = ()   # known when it was our own ring
    in_use_here: int = 0            # ours_lost: our addresses in use when it happened

    def hold_end(self) -> float:
        return min(self.last_seen + MERGE_HOLD, self.hold_from + MAX_HOLD)

    def busy(self) -> list[tuple[int, int]]:
        """The ranges where this ring's free counts show addresses in use."""
        return join(sorted((e.token, e.end) for e in self.entries.values() if e.free < e.size))

    def owners(self) -> list[PeerName]:
        return sorted({e.owner for e in self.entries.values()})

    def covers(self, addr: int) -> bool:
        return any(e.token <= addr < e.end for e in self.entries.values())

    def in_use(self) -> int:
        return sum(e.size - e.free for e in self.entries.values())

    def merge(self, entries: Iterable[Entry]) -> list[Entry]:
        """Join entries of this ring (per token, the highest wins); those that were news."""
        news = []
        for e in entries:
            old = self.entries.get(e.token)
            if old is None or e.key() > old.key():
                self.entries[e.token] = e
                news.append(e)
        return news


@dataclass(slots=True)
class Duplicate:
    """An address in use here that ``peer`` also uses (we refused its re-claim)."""

    peer: PeerName
    theirs: str
    ours: str
    seen: float


def join(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ranges with overlapping or adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def carve(lo: int, hi: int, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[lo, hi)`` outside ``held`` (sorted, disjoint)."""
    out = []
    cur = lo
    for h_lo, h_hi in held:
        if h_hi <= cur:
            continue
        if h_lo >= hi:
            break
        if h_lo > cur:
            out.append((cur, h_lo))
        cur = max(cur, h_hi)
    if cur < hi:
        out.append((cur, hi))
    return out


def within(lo: int, hi: int, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[lo, hi)`` inside ``held``."""
    return [(max(lo, h_lo), min(hi, h_hi)) for h_lo, h_hi in held if h_lo < hi and lo < h_hi]


class Meetings:
    def __init__(self) -> None:
        self.met: dict[RingId, Meeting] = {}
        self.duplicates: dict[int, Duplicate] = {}
        self._held: tuple[float, list[tuple[int, int]]] | None = None  # (valid until, ranges)

    # --- rings ------------------------------------------------------------------------------

    def heard(self, update: RingUpdate, winner: RingId, now: float) -> RingUpdate | None:
        """``update`` belongs to a ring lower than ours (``winner``): note it. Returns the
        part that was news (worth relaying, so that every peer of ours holds), or None."""
        m = self.met.get(update.ring_id)
        if m is None:
            m = self._add(Meeting(update.ring_id, winner, False, now, now, now))
        elif now > m.last_seen + MERGE_HOLD:
            m.hold_from = now  # silent since its hold ended: a peer of it is back, hold again
        m.last_seen = max(m.last_seen, now)
        self._held = None
        news = m.merge(update.entries)
        if not news:
            return None
        return RingUpdate(update.start, update.end, update.ring_id,
                          tuple(sorted(news, key=lambda e: e.token)))

    def lost(self, old: RingUpdate, seed_names: tuple[PeerName, ...], winner: RingId,
             now: float, in_use: int) -> None:
        """Our own ring ``old`` gave way to ``winner``."""
        m = self.met.get(old.ring_id)
        if m is None:
            m = self._add(Meeting(old.ring_id, winner, True, now, now, now))
        m.ours_lost, m.winner, m.in_use_here = True, winner, in_use
        m.seed_names = seed_names or m.seed_names
        m.last_seen = m.hold_from = now
        m.merge(old.entries)
        self._held = None

    def _add(self, m: Meeting) -> Meeting:
        if len(self.met) >= MAX_MEETINGS:
            oldest = min(self.met.values(), key=lambda x: (x.last_seen, x.ring_id))
            del self.met[oldest.ring_id]
        self.met[m.ring_id] = m
        return m

    def records(self) -> list[Meeting]:
        return sorted(self.met.values(), key=lambda m: (m.first_seen, m.ring_id))

    def held(self, now: float) -> list[tuple[int, int]]:
        """The ranges on hold now (sorted, disjoint)."""
        cached = self._held
        if cached is not None and now < cached[0]:
            return cached[1]
        active = [m for m in self.met.values() if now < m.hold_end()]
        ranges = join(r for m in active for r in m.busy())
        self._held = (min((m.hold_end() for m in active), default=float("inf")), ranges)
        return ranges

    def hold_ends(self, now: float) -> float | None:
        """When the held ranges next change (for the timer); None when nothing is held."""
        if not self.held(now):
            return None
        assert self._held is not None
        return self._held[0]

    # --- duplicates ---------------------------------------------------------------------------

    def note_duplicate(self, addr: int, peer: PeerName, theirs: str, ours: str, now: float) -> None:
        if addr in self.duplicates or len(self.duplicates) < MAX_DUPLICATES:
            self.duplicates[addr] = Duplicate(peer, theirs, ours, now)

    def drop_duplicate(self, addr: int, peer: PeerName | None = None) -> Duplicate | None:
        d = self.duplicates.get(addr)
        if d is None or (peer is not None and d.peer != peer):
            return None
        return self.duplicates.pop(addr)

    def expire(self, now: float) -> None:
        for addr in [a for a, d in self.duplicates.items() if d.seen + DUPLICATE_TTL <= now]:
            del self.duplicates[addr]

    def next_expiry(self) -> float | None:
        return min((d.seen + DUPLICATE_TTL for d in self.duplicates.values()), default=None)
