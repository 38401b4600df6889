"""Gossip: named channels that replicate state over the mesh.

Theory of operation (after Weave mesh's ``Gossiper`` / ``GossipData``). A subsystem
(topology, IPAM, DNS) plugs in a ``Gossiper``: it decodes payloads into ``GossipData``,
merges them into its state and returns the *delta* (the part that was news), and can
produce its complete state and a digest of it. The mesh moves the data:

* news (a local change, or the delta of something merged) goes to every neighbour but
  the one it came from, as DELTA. A peer forwards only what was news to it, so an update
  crosses each link at most twice and dies out: one change costs O(degree) messages per
  peer, and bytes proportional to the change, not to the whole state;
* per connection, data waiting to be sent on a channel is *coalesced* (``merge``) into
  one message, so a burst of changes or a slow link costs one message, not many;
* every gossip interval a peer sends the DIGEST of each channel to a few random
  neighbours (log2 of its degree, at least one). A neighbour whose digest differs replies
  with its complete state (PERIODIC); the first peer merges it, forwards the news, and if
  it still differs from what it received, sends its own complete state back (DELTA).
  Converged channels cost one small digest per period;
* BROADCAST relays a payload along the source's spanning tree (each peer gets it once);
  UNICAST relays hop by hop along the unicast routes.

Every call that hands a channel something new carries ``now``, the mesh's clock (the one
its driver passes to ``MeshNode``): what a channel does with gossip may depend on time
(how long a merging ring holds its addresses, when a tombstone expires), and a pure
channel reads no clock of its own. A channel that keeps another clock (DNS: wall-clock
seconds) converts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .errors import RemoteProtocolError
from .peername import PeerName


@runtime_checkable
class GossipData(Protocol):
    def encode(self) -> bytes: ...

    def merge(self, other: GossipData) -> GossipData:
        """Combine two pieces of pending data into one (for coalescing)."""
        ...


class Gossiper(Protocol):
    def decode(self, payload: bytes) -> GossipData:
        """Decode untrusted bytes; raise only RemoteProtocolError."""
        ...

    def on_gossip(self, data: GossipData, now: float) -> GossipData | None:
        """Merge into our state at ``now``; return the delta worth passing on, or None."""
        ...

    def gossip(self) -> GossipData | None:
        """Our complete state, or None when there is nothing to say."""
        ...

    def digest(self) -> bytes:
        """A short summary of our state: equal digests mean equal states."""
        ...

    def digest_of(self, data: GossipData) -> bytes:
        """The digest a peer whose complete state is ``data`` would have."""
        ...

    def on_gossip_broadcast(self, src: PeerName, payload: bytes, now: float) -> None: ...

    def on_gossip_unicast(self, src: PeerName, payload: bytes, now: float) -> None: ...


class SendQueue:
    """Per-connection pending gossip, coalesced per (channel, kind) until it is sent."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], GossipData] = {}

    def put(self, channel: str, kind: int, data: GossipData) -> None:
        key = (channel, kind)
        old = self._pending.get(key)
        self._pending[key] = data if old is None else old.merge(data)

    def take(self) -> list[tuple[str, int, GossipData]]:
        items = [(c, k, d) for (c, k), d in sorted(self._pending.items(), key=lambda i: i[0])]
        self._pending.clear()
        return items

    def __bool__(self) -> bool:
        return bool(self._pending)


class UnicastChannel:
    """A ``Gossiper`` for a channel that only carries unicast messages between two peers
    (rendezvous, fast-path hellos): no state to gossip, broadcasts ignored, each unicast
    handed to ``on_unicast``."""

    def __init__(self, name: str, on_unicast: Callable[[PeerName, bytes, float], None]) -> None:
        self.name = name
        self._on_unicast = on_unicast

    def decode(self, payload: bytes) -> GossipData:
        raise RemoteProtocolError(f"the {self.name} channel carries no gossip")

    def on_gossip(self, data: GossipData, now: float) -> GossipData | None:
        return None

    def gossip(self) -> GossipData | None:
        return None

    def digest(self) -> bytes:
        return b""

    def digest_of(self, data: GossipData) -> bytes:
        return b""

    def on_gossip_broadcast(self, src: PeerName, payload: bytes, now: float) -> None:
        return None

    def on_gossip_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        self._on_unicast(src, payload, now)
