"""What the allocator persists in the data dir, and how it is checked on load.

Format (JSON, one object; ``encode_state`` / ``decode_state`` for the bytes on disk)::

    { "format": 1,
      "peer": "aa:bb:cc:dd:ee:ff",          # whose state this is
      "range": "10.32.0.0/12",
      "ring": [1, start, end, [n, tag], [[token, end, owner, version, free]...], [claim?], [value?]],
      "allocations": [["10.32.0.1/12", "ident"], ...],
      "releasing": [["ident", wall_clock_deadline], ...],   # optional (release.py)
      "nicknames": [[name, "nick"], ...] }

``ring`` is the gossip encoding (``codec``), so the same validator checks both; its claim
list holds at most our own consensus claim, so a restarted acceptor keeps its promise.

Loading never trusts the file: a malformed file raises ``StateError`` (the router should
refuse to start, saying which file and why, rather than risk handing out addresses twice).
A well-formed file for another peer, or for another range, is discarded with a warning
(for a changed range, allocations that still fall inside the new range are kept and
re-claimed once the new ring exists). The router writes it atomically (temp file, fsync,
rename) whenever ``Allocator.dirty`` is set, *before* sending that call's messages.

``state_of`` and ``restore`` work on the allocator's ``IpamState`` (``state.py``);
``restore`` hands the persisted ring and consensus claim back rather than merging them:
merging a ring is the allocator's business (it changes what the allocator waits for).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface, ip_network
from typing import Any

from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.peername import MAX_NAME, PeerName, format_peer_name, parse_peer_name

from .codec import LIMIT_V4, LIMIT_V6, decode_ring_obj, ring_wire
from .consensus import Claim
from .ring import NO_RING, RingUpdate
from .state import IpamState

FORMAT = 1
MAX_STATE_BYTES = 64 * 1024 * 1024
MAX_ALLOCATIONS = 1 << 20
MAX_NICKNAMES = 100_000


class StateError(RemoteProtocolError):
    """The persisted state is malformed (bytes from outside this process)."""


@dataclass(frozen=True, slots=True)
class PersistedState:
    peer: PeerName
    universe: IPv4Network | IPv6Network
    ring: RingUpdate
    claim: Claim | None
    allocations: tuple[tuple[IPv4Interface | IPv6Interface, str], ...]
    nicknames: tuple[tuple[PeerName, str], ...]
    releasing: tuple[tuple[str, float], ...] = ()   # identifier, wall-clock deadline


def encode_state(state: dict[str, Any]) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


def decode_state(data: bytes) -> PersistedState:
    if len(data) > MAX_STATE_BYTES:
        raise StateError("ipam state file too large")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StateError(f"ipam state is not JSON: {type(exc).__name__}") from None
    return parse_state(obj)


def parse_state(obj: Any) -> PersistedState:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or type(obj.get("format")) is not int:
        raise StateError("ipam state: unknown format")
    try:
        peer = parse_peer_name(obj["peer"]) if isinstance(obj.get("peer"), str) else 0
        universe = ip_network(obj["range"]) if isinstance(obj.get("range"), str) else None
    except (ValueError, LocalProtocolError) as exc:
        raise StateError(f"ipam state: bad peer name or range ({type(exc).__name__})") from None
    if not peer or universe is None:
        raise StateError("ipam state: missing peer or range")
    try:
        ring, claims = decode_ring_obj(obj.get("ring"), LIMIT_V6 if universe.version == 6 else LIMIT_V4)
    except RemoteProtocolError as exc:
        raise StateError(f"ipam state: ring: {exc.reason}") from None
    start = int(universe.network_address)
    if (ring.start, ring.end) != (start, start + universe.num_addresses):
        raise StateError("ipam state: ring range differs from the recorded range")
    if len(claims) > 1 or (claims and claims[0].node != peer):
        raise StateError("ipam state: foreign consensus claims")
    allocs = obj.get("allocations")
    if not isinstance(allocs, list) or len(allocs) > MAX_ALLOCATIONS:
        raise StateError("ipam state: allocations")
    out: list[tuple[IPv4Interface | IPv6Interface, str]] = []
    seen: set[int] = set()
    for item in allocs:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], str) or not 0 < len(item[1]) <= 256):
            raise StateError("ipam state: allocation entry")
        try:
            iface = ip_interface(item[0])
        except ValueError:
            raise StateError("ipam state: allocation address") from None
        if iface.version != universe.version:
            raise StateError("ipam state: allocation address of the other family")
        if int(iface.ip) in seen:
            raise StateError("ipam state: address allocated twice")
        seen.add(int(iface.ip))
        out.append((iface, item[1]))
    nicks = obj.get("nicknames")
    if not isinstance(nicks, list) or len(nicks) > MAX_NICKNAMES:
        raise StateError("ipam state: nicknames")
    names: list[tuple[PeerName, str]] = []
    for item in nicks:
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int
                or not 1 <= item[0] <= MAX_NAME or not isinstance(item[1], str) or len(item[1]) > 255):
            raise StateError("ipam state: nickname entry")
        names.append((item[0], item[1]))
    releasing = obj.get("releasing", [])
    if not isinstance(releasing, list) or len(releasing) > MAX_ALLOCATIONS:
        raise StateError("ipam state: releasing")
    pending: list[tuple[str, float]] = []
    for item in releasing:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not 0 < len(item[0]) <= 256 or type(item[1]) not in (int, float)
                or not math.isfinite(item[1])):
            raise StateError("ipam state: releasing entry")
        pending.append((item[0], float(item[1])))
    return PersistedState(peer, universe, ring, claims[0] if claims else None, tuple(out),
                          tuple(names), tuple(pending))


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``restore`` leaves to the allocator: the warnings to show, and the persisted
    ring (None: none, or another range's) and our consensus claim to merge."""

    warnings: tuple[str, ...]
    ring: RingUpdate | None = None
    claim: Claim | None = None


def state_of(st: IpamState) -> dict[str, Any]:
    claim = st.paxos.claims.get(st.name) if st.paxos.participate else None
    return {
        "format": FORMAT,
        "peer": format_peer_name(st.name),
        "range": str(st.universe),
        "ring": ring_wire(st.ring.snapshot(), (claim,) if claim is not None else (), packable=False),
        "allocations": [[str(st.iface(addr)), ident] for addr, ident in st.space.items()],
        "releasing": st.releases.to_wall(st.wall_offset),
        "nicknames": [[n, st.nicknames[n]] for n in sorted(st.nicknames)],
    }


def restore(st: IpamState, raw: Any) -> Restored:
    """Apply persisted state (a ``PersistedState``, or its JSON object, validated here) to
    a fresh allocator's state: nicknames, allocations, pending releases."""
    state = raw if isinstance(raw, PersistedState) else parse_state(raw)
    if state.peer != st.name:
        return Restored((f"ipam state belongs to peer {format_peer_name(state.peer)}, not "
                         f"{format_peer_name(st.name)}: discarded",))
    warnings: list[str] = []
    for name, nick in state.nicknames:
        st.nicknames.setdefault(name, nick)
    ring = claim = None
    if state.universe != st.universe:
        warnings.append(f"allocation range changed from {state.universe} to {st.universe}: the old "
                        "ring is discarded")
    else:
        ring = state.ring if state.ring.ring_id != NO_RING else None
        claim = state.claim if st.paxos.participate else None
    dropped = 0
    for iface, ident in state.allocations:
        if iface.ip not in st.universe or int(iface.ip) in st.space:
            dropped += 1
            continue
        st.space.add(int(iface.ip), ident)
        st.prefix[int(iface.ip)] = iface.network.prefixlen
    if dropped:
        warnings.append(f"{dropped} persisted allocation(s) outside {st.universe} were dropped")
    for ident, wall in state.releasing:
        if st.space.of(ident):  # a deadline that passed while we were away is met at once;
            # one further ahead than a whole grace period means the wall clock was set
            # back meanwhile: hold the addresses for at most one grace period from now
            st.releases.mark(ident, min(wall - st.wall_offset, st.now + st.grace))
    return Restored(tuple(warnings), ring, claim)
