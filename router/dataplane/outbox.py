"""What the data plane gathered for each link until it seals the lot into one message.

Entries are ``(src_peer, dst_peer, flags, frame)`` (proto/sleeve.py ``encode_entries``).
A pure TCP ACK that acknowledges more than an older one of its flow still waiting here
replaces it (proto/ackfilter.py says which ACKs qualify and why): the older one is dropped
and the newer one queued at the end, so every frame that crosses keeps its order (a data
segment of the same connection never falls behind an ACK sent after it). The receiving
side of a bulk transfer then sends one ACK per flow and message instead of ~4, and the
sending side writes one into its container instead of ~4.
"""

from __future__ import annotations

from typing import Any

from weftnet.proto import ackfilter, sleeve
from weftnet.proto.ethernet import VNET_HDR_LEN, seq_after

Entry = tuple[int, int, int, Any]


class Outbox:
    __slots__ = ("_entries", "_size", "_acks", "_holes")

    def __init__(self) -> None:
        self._entries: dict[int, list[Entry | None]] = {}  # by conn_id, in order (None: thinned)
        self._size: dict[int, int] = {}  # the encoded size of what crosses
        self._holes: set[int] = set()  # the links whose lists have thinned places
        # conn_id -> (peers, flow) -> (index of its latest pure ACK, its number)
        self._acks: dict[int, dict[tuple[int, int, bytes], tuple[int, int]]] = {}

    def waiting(self) -> list[int]:
        """The links with entries waiting."""
        return list(self._entries)

    def room(self, conn_id: int, size: int, limit: int) -> bool:
        """An entry of ``size`` encoded bytes fits beside what waits (``limit``: the body's)."""
        return self._size.get(conn_id, 0) + size <= limit

    def add(self, conn_id: int, entry: Entry) -> bool:
        """Queue ``entry`` (check ``room`` first); False when it replaced an older ACK."""
        entries = self._entries.get(conn_id)
        if entries is None:
            entries = self._entries[conn_id] = []
            self._size[conn_id] = 0
        frame = entry[3]
        size = sleeve.ENTRY_OVERHEAD + len(frame)
        ack = ackfilter.pure_ack(frame, VNET_HDR_LEN if entry[2] & sleeve.FLAG_VNET else 0)
        if ack is not None:
            acks = self._acks.get(conn_id)
            if acks is None:
                acks = self._acks[conn_id] = {}
            key = (entry[0], entry[1], ack[0])
            seen = acks.get(key)
            thinned = False
            if seen is not None and seq_after(ack[1], seen[1]):
                older = entries[seen[0]]
                assert older is not None  # the flow's latest ACK: never thinned yet
                entries[seen[0]] = None
                self._holes.add(conn_id)
                self._size[conn_id] -= sleeve.ENTRY_OVERHEAD + len(older[3])
                thinned = True
            acks[key] = (len(entries), ack[1])
            entries.append(entry)
            self._size[conn_id] += size
            return not thinned
        entries.append(entry)
        self._size[conn_id] += size
        return True

    def take(self, conn_id: int) -> list[Entry] | None:
        """The link's entries in order (None if none), and forget them."""
        self._size.pop(conn_id, None)
        self._acks.pop(conn_id, None)
        entries = self._entries.pop(conn_id, None)
        if entries is None or conn_id not in self._holes:
            return entries  # type: ignore[return-value]  # no thinned places: no None
        self._holes.discard(conn_id)
        return [e for e in entries if e is not None]
