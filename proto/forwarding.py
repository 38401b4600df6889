r"""The forwarding decision: which peers a frame goes to, and whether it is ours.

Theory of operation
-------------------
Every router learns, from the source MAC of each frame it sees, which peer a MAC lives
at: frames read from our TAP come from local containers, frames that arrive in the
sleeve name their origin peer (``src_peer``). Destinations are then looked up::

    from_local(dst, src)                       from_remote(src_peer, dst_peer, dst, src)
    ───────────────────                        ────────────────────────────────────────
    learn src at us                            src_peer == us      -> drop "loop"
    dst group or unknown -> flood:             learn src at src_peer (ours: "mac conflict")
       ((h, 0) for h in tree(us))              dst_peer == us      -> (deliver, ())
    dst at us            -> drop               dst_peer == other   -> (relay, ((hop, other),))
                            "local destination"                       or drop "no route"
    dst at peer P        -> ((unicast[P], P),)  dst_peer == 0       -> (deliver, ((h, 0) for
                            or drop "no route"                          h in tree(src_peer)))

``tree(s)`` are our children in the breadth-first tree rooted at ``s``
(proto/routes.py): every peer computes the same trees, so relaying a flood only to our
children in its source's tree reaches each peer of the component exactly once. A unicast
frame carries its destination peer, so relays never look MACs up again, and the
payload is opened once per hop, never interpreted twice.

Results are tuples of ``(next_hop, dst_peer)`` pairs (dst_peer 0 = flood) built once per
route change and shared, or a drop-reason string; nothing is allocated per frame on the
common paths.

MAC cache: ``mac -> (peer, seen)`` in a dict whose order is the order of ``seen``:
learning a MAC again moves it to the end, but only once ``refresh`` seconds passed since
its last move, so a busy MAC costs one dict lookup per frame. An entry is dead
``mac_expiry`` after its last move (checked on lookup, and ``expire`` pops dead entries
from the front); the cache keeps at most ``max_macs`` entries, evicting the oldest.
A local MAC is authoritative: the same MAC arriving from a remote peer is counted as a
"mac conflict" and not learned nor delivered (a bridge would otherwise move the MAC to
our TAP port); a local frame from a MAC we had at a remote peer moves it here. When a
container leaves, ``forget_mac`` ends its claim at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from .errors import LocalProtocolError

_GROUP_BIT = 0x010000000000
_NO_HOPS: Callable[[int], Sequence[int]] = lambda source: ()  # noqa: E731

DROP_REASONS = ("no route", "local destination", "mac conflict", "loop", "invalid source")

Sends = tuple[tuple[int, int], ...]


class Forwarder:
    """Forwarding decisions of one router (``our_name``), pure: time comes in as ``now``."""

    __slots__ = ("our_name", "mac_expiry", "refresh", "max_macs", "_macs", "_unicast",
                 "_unicast_sends", "_flood_hops", "_floods", "_drops", "_moved", "_evicted",
                 "_now")

    def __init__(self, our_name: int, *, mac_expiry: float = 300.0, refresh: float = 1.0,
                 max_macs: int = 65536) -> None:
        if not 0 < our_name < 1 << 48:
            raise LocalProtocolError(f"peer name {our_name:#x} out of range")
        if not mac_expiry > 0 or not 0 <= refresh < mac_expiry or max_macs < 1:
            raise LocalProtocolError("forwarder: need mac_expiry > refresh >= 0, max_macs >= 1")
        self.our_name = our_name
        self.mac_expiry = mac_expiry
        self.refresh = refresh
        self.max_macs = max_macs
        self._macs: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self._unicast: Mapping[int, int] = {}
        self._unicast_sends: dict[int, Sends] = {}
        self._flood_hops: Callable[[int], Sequence[int]] = _NO_HOPS
        self._floods: dict[int, Sends] = {}
        self._drops = dict.fromkeys(DROP_REASONS, 0)
        self._moved = 0
        self._evicted = 0
        self._now = 0.0

    # -- routes -------------------------------------------------------------------------

    def set_routes(self, unicast: Mapping[int, int],
                   broadcast_hops: Callable[[int], Sequence[int]]) -> None:
        """New routes: ``unicast[peer]`` = next hop, ``broadcast_hops(source)`` = our
        children in source's broadcast tree (proto/routes.py ``Routes``)."""
        self._unicast = unicast
        self._unicast_sends = {}
        self._flood_hops = broadcast_hops
        self._floods = {}

    def _unicast_to(self, peer: int) -> Sends | None:
        sends = self._unicast_sends.get(peer)
        if sends is None:
            hop = self._unicast.get(peer)
            if hop is None:
                return None
            sends = self._unicast_sends[peer] = ((hop, peer),)
        return sends

    def _flood_from(self, source: int) -> Sends:
        sends = self._floods.get(source)
        if sends is None:
            sends = self._floods[source] = tuple((hop, 0) for hop in self._flood_hops(source)
                                                 if hop != self.our_name)
        return sends

    # -- decisions ----------------------------------------------------------------------

    def _learn(self, mac: int, peer: int, now: float) -> bool:
        """Record ``mac`` at ``peer``; False (and counted) if that conflicts with a local
        MAC, which a remote claim never displaces."""
        entries = self._macs
        entry = entries.get(mac)
        if entry is None:
            if len(entries) >= self.max_macs:
                entries.popitem(last=False)
                self._evicted += 1
            entries[mac] = (peer, now)
            return True
        if entry[0] == peer:
            if now - entry[1] < self.refresh:
                return True
        else:
            if entry[0] == self.our_name and now - entry[1] < self.mac_expiry:
                self._drops["mac conflict"] += 1
                return False
            self._moved += 1
        entries[mac] = (peer, now)
        entries.move_to_end(mac)
        return True

    def _where(self, mac: int, now: float) -> int | None:
        entry = self._macs.get(mac)
        if entry is None:
            return None
        if now - entry[1] >= self.mac_expiry:
            del self._macs[mac]
            return None
        return entry[0]

    def from_local(self, dst_mac: int, src_mac: int, now: float) -> Sends | str:
        """A frame read from our TAP: ``(next_hop, dst_peer)`` sends, or a drop reason."""
        self._now = now
        if src_mac & _GROUP_BIT:
            self._drops["invalid source"] += 1
            return "invalid source"
        self._learn(src_mac, self.our_name, now)
        if dst_mac & _GROUP_BIT:
            return self._flood_from(self.our_name)
        peer = self._where(dst_mac, now)
        if peer is None:
            return self._flood_from(self.our_name)
        if peer == self.our_name:
            self._drops["local destination"] += 1
            return "local destination"
        sends = self._unicast_to(peer)
        if sends is None:
            self._drops["no route"] += 1
            return "no route"
        return sends

    def from_remote(self, src_peer: int, dst_peer: int, dst_mac: int, src_mac: int,
                    now: float) -> tuple[bool, Sends] | str:
        """A frame from the sleeve (sent by ``src_peer``, maybe relayed):
        ``(deliver_locally, relays)`` or a drop reason."""
        self._now = now
        ours = self.our_name
        if src_peer == ours:
            self._drops["loop"] += 1
            return "loop"
        if src_mac & _GROUP_BIT:
            self._drops["invalid source"] += 1
            return "invalid source"
        if not self._learn(src_mac, src_peer, now):
            # not delivered here, but the rest of the network may still want it
            if dst_peer == ours:
                return "mac conflict"
            relays = self._flood_from(src_peer) if dst_peer == 0 else self._unicast_to(dst_peer)
            return (False, relays) if relays else "mac conflict"
        if dst_peer == 0:
            return True, self._flood_from(src_peer)
        if dst_peer == ours:
            return True, ()
        sends = self._unicast_to(dst_peer)
        if sends is None:
            self._drops["no route"] += 1
            return "no route"
        return False, sends

    # -- maintenance --------------------------------------------------------------------

    def forget_peer(self, peer: int) -> int:
        """Drop every MAC learned at ``peer`` (it went away); returns how many."""
        gone = [mac for mac, (at, _) in self._macs.items() if at == peer]
        for mac in gone:
            del self._macs[mac]
        return len(gone)

    def forget_mac(self, mac: int) -> bool:
        """Drop one MAC (a local container was detached)."""
        return self._macs.pop(mac, None) is not None

    def expire(self, now: float) -> int:
        """Drop MACs not seen for ``mac_expiry``; returns how many."""
        self._now = now
        entries = self._macs
        expiry = self.mac_expiry
        count = 0
        while entries:
            mac, (_, seen) = next(iter(entries.items()))
            if now - seen < expiry:
                break
            del entries[mac]
            count += 1
        return count

    def get_timer(self) -> float | None:
        """When the oldest MAC expires (call ``expire`` then), or None if none is known."""
        for _, seen in self._macs.values():
            return seen + self.mac_expiry
        return None

    def macs(self, now: float | None = None) -> dict[int, tuple[int, float]]:
        """``mac -> (peer, age)`` sorted by MAC, for status; ages are as of ``now``
        (default: the latest time any call passed in)."""
        at = self._now if now is None else now
        return {mac: (peer, at - seen) for mac, (peer, seen) in sorted(self._macs.items())}

    @property
    def stats(self) -> dict[str, int]:
        """Drops by reason, plus ``mac moved`` / ``mac evicted`` events (a copy)."""
        return {**self._drops, "mac moved": self._moved, "mac evicted": self._evicted}
