"""What the data plane gathered for each link until it seals the lot into one message.

Entries are ``(src_peer, dst_peer, flags, frame)`` (proto/sleeve.py ``encode_entries``).
A pure TCP ACK takes the place of an older one of its flow still waiting here, when it
acknowledges more (proto/ackfilter.py says which ACKs qualify and why): the receiving side
of a bulk transfer then sends one ACK per flow and message instead of ~4, and the sending
side writes one into its container instead of ~4.
"""

from __future__ import annotations

from typing import Any

from weftnet.proto import ackfilter, sleeve
from weftnet.proto.ethernet import VNET_HDR_LEN

Entry = tuple[int, int, int, Any]


class Outbox:
    __slots__ = ("_entries", "_size", "_acks")

    def __init__(self) -> None:
        self._entries: dict[int, list[Entry]] = {}  # by conn_id, in order
        self._size: dict[int, int] = {}  # the encoded size of each list
        # conn_id -> (peers, flow) -> (index of its latest pure ACK, its number)
        self._acks: dict[int, dict[tuple[int, int, bytes], tuple[int, int]]] = {}

    def __contains__(self, conn_id: int) -> bool:
        return conn_id in self._entries

    def waiting(self) -> list[int]:
        """The links with entries waiting."""
        return list(self._entries)

    def room(self, conn_id: int, size: int, limit: int) -> bool:
        """An entry of ``size`` encoded bytes fits beside what waits (``limit``: the body's)."""
        return self._size.get(conn_id, 0) + size <= limit

    def add(self, conn_id: int, entry: Entry) -> bool:
        """Queue ``entry`` (check ``room`` first); False when it took an older ACK's place."""
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
            if seen is not None and ackfilter.later(ack[1], seen[1]):
                index = seen[0]
                self._size[conn_id] += size - sleeve.ENTRY_OVERHEAD - len(entries[index][3])
                entries[index] = entry
                acks[key] = (index, ack[1])
                return False
            acks[key] = (len(entries), ack[1])
        entries.append(entry)
        self._size[conn_id] += size
        return True

    def take(self, conn_id: int) -> list[Entry] | None:
        """The link's entries in order (None if none), and forget them."""
        self._size.pop(conn_id, None)
        self._acks.pop(conn_id, None)
        return self._entries.pop(conn_id, None)
