"""The record store as a gossip channel ("dns").

Payload: ``encode_entries`` of a list of entries. Coalescing two pending payloads keeps
the highest-ranked entry per key; the delta of a merge is exactly the entries that were
news (see ``records``). The complete state includes tombstones: they are what removes a
stale live copy elsewhere.

One addition to the mesh contract: when a merge rewrites one of our own entries (origin
authority, see ``records``), the mesh floods the delta to every neighbour but the sender,
yet the sender is the one holding the stale copy. ``take_news()`` returns those rewrites;
the router passes them to ``MeshNode.gossip_news(CHANNEL, ...)`` after feeding the mesh,
so they reach the sender at once rather than at the next periodic digest exchange.

Time: the mesh hands each payload over with its own ``now`` (the router's monotonic
clock); the store compares tombstones across routers in wall-clock seconds, so the
gossiper adds ``wall_offset`` (wall clock minus the mesh's clock, taken once when the
router starts; 0 where the two are one clock, as in simulations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from weftnet.proto.gossip import GossipData
from weftnet.proto.peername import PeerName

from .records import Entry, RecordStore, best_of, decode_entries, digest_of_entries, encode_entries

CHANNEL = "dns"


@dataclass(frozen=True, slots=True)
class Entries:
    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> Entries:
        best = best_of(entries)
        return cls(tuple(best[k] for k in sorted(best)))

    def encode(self) -> bytes:
        return encode_entries(self.entries)

    def merge(self, other: GossipData) -> GossipData:
        assert isinstance(other, Entries)
        return Entries.of(self.entries + other.entries)


def news(delta: list[Entry]) -> Entries | None:
    """Wrap a store method's delta for ``MeshNode.gossip_news`` (None when empty)."""
    return Entries(tuple(delta)) if delta else None


class DnsGossiper:
    def __init__(self, store: RecordStore,
                 on_change: Callable[[list[Entry]], None] | None = None, *,
                 wall_offset: float = 0.0) -> None:
        self.store = store
        self._on_change = on_change
        self.wall_offset = wall_offset

    def decode(self, payload: bytes) -> GossipData:
        return Entries(tuple(decode_entries(payload)))

    def on_gossip(self, data: GossipData, now: float) -> GossipData | None:
        assert isinstance(data, Entries)
        delta = self.store.merge(data.entries, now + self.wall_offset)
        if not delta:
            return None
        if self._on_change is not None:
            self._on_change(delta)
        return Entries(tuple(delta))

    def gossip(self) -> GossipData | None:
        entries = self.store.entries(tombstones=True)
        return Entries(tuple(entries)) if entries else None

    def digest(self) -> bytes:
        return self.store.digest()

    def digest_of(self, data: GossipData) -> bytes:
        assert isinstance(data, Entries)
        return digest_of_entries(data.entries)

    def take_news(self) -> Entries | None:
        """Our entries that merges rewrote since the last call; flood them to everyone."""
        return news(self.store.take_overrides())

    def on_gossip_broadcast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None

    def on_gossip_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None
