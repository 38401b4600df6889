"""The topology as a gossip channel ("topology").

Payload: ``encode_records`` of a list of peer records. Merging is the topology's own
merge (highest-rank record per peer wins), so deltas are exactly the records that were
news, and coalescing two pending payloads keeps the higher-rank record per peer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .gossip import GossipData
from .peername import PeerName
from .topology import PeerRecord, Topology, decode_records, digest_of_records, encode_records, outranks

CHANNEL = "topology"


@dataclass(frozen=True, slots=True)
class Records:
    records: tuple[PeerRecord, ...]

    @classmethod
    def of(cls, records: Iterable[PeerRecord]) -> Records:
        best: dict[PeerName, PeerRecord] = {}
        for rec in records:
            old = best.get(rec.name)
            if old is None or outranks(rec, old):
                best[rec.name] = rec
        return cls(tuple(best[n] for n in sorted(best)))

    def encode(self) -> bytes:
        return encode_records(self.records)

    def merge(self, other: GossipData) -> GossipData:
        assert isinstance(other, Records)
        return Records.of(self.records + other.records)


class TopologyGossiper:
    def __init__(self, topology: Topology, on_change: Callable[[list[PeerRecord]], None]) -> None:
        self.topology = topology
        self._on_change = on_change

    def decode(self, payload: bytes) -> GossipData:
        return Records(tuple(decode_records(payload)))

    def on_gossip(self, data: GossipData, now: float) -> GossipData | None:
        assert isinstance(data, Records)
        delta = self.topology.merge(data.records)
        if not delta:
            return None
        self._on_change(delta)
        # Pass on only what we still hold: the change handler garbage-collects peers no
        # longer reachable, and forwarding a record it just dropped would let a departed
        # peer's record circulate forever (each peer storing, dropping and passing it on
        # in one step; every digest stays equal, so nothing else notices). Weave mesh's
        # applyUpdate drops removed peers from the update it forwards for the same reason.
        peers = self.topology.peers
        kept = tuple(r for r in delta if peers.get(r.name) == r)
        return Records(kept) if kept else None

    def gossip(self) -> GossipData | None:
        peers = self.topology.peers
        return Records(tuple(peers[n] for n in sorted(peers)))

    def digest(self) -> bytes:
        return self.topology.digest()

    def digest_of(self, data: GossipData) -> bytes:
        assert isinstance(data, Records)
        return digest_of_records(data.records)

    def on_gossip_broadcast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None

    def on_gossip_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None
