"""The allocator as the mesh's gossip channel "ipam".

Ring entries and (until the ring is seeded) consensus claims travel as gossip: the mesh
floods what ``on_gossip`` returns (only what was news), coalesces pending payloads with
``IpamGossip.merge`` and repairs divergence with ``digest`` / ``digest_of``. Space
requests, donations and claims travel as unicasts, handed to ``Allocator.on_unicast``;
malformed unicasts are counted there and dropped (they may have crossed several hops, so
they are no reason to drop the neighbour's connection). The channel does not use
broadcasts.

What the allocator does with gossip depends on time (how long a merging ring's addresses
are held, when a request expires): every payload is handled at the ``now`` the mesh hands
the channel, the clock the router also gives the allocator.

The router's glue after every call into the mesh or the allocator::

    if alloc.dirty: persist(alloc.to_state())        # before anything leaves
    if (news := alloc.take_news()): mesh.gossip_news(CHANNEL, news)
    for dst, payload in alloc.messages_to_send(): mesh.gossip_unicast(CHANNEL, dst, payload, now)
    while (r := alloc.next_result()): answer the API call r.op_id
"""

from __future__ import annotations

from weftnet.proto.gossip import GossipData
from weftnet.proto.peername import PeerName

from .allocator import Allocator
from .codec import IpamGossip, decode_gossip

CHANNEL = "ipam"
CHANNEL_V6 = "ipam6"   # the IPv6 ring (--ipalloc-range-v6): a second Allocator, its own channel


class IpamGossiper:
    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    def decode(self, payload: bytes) -> GossipData:
        return decode_gossip(payload, self.allocator.limit)

    def on_gossip(self, data: GossipData, now: float) -> GossipData | None:
        assert isinstance(data, IpamGossip)
        return self.allocator.on_gossip(data, now)

    def gossip(self) -> GossipData | None:
        return self.allocator.full_gossip()

    def digest(self) -> bytes:
        return self.allocator.digest()

    def digest_of(self, data: GossipData) -> bytes:
        assert isinstance(data, IpamGossip)
        return self.allocator.digest_of(data)

    def on_gossip_broadcast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None

    def on_gossip_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        self.allocator.on_unicast(src, payload, now)
