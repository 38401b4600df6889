"""The allocator: one peer's IPAM, as a sans-IO state machine.

Theory of operation
-------------------
The ring (``ring.py``) says which ranges each peer owns; this peer hands out addresses
only inside its own ranges (``space.py`` keeps those in use), so allocation is local and
needs no agreement. Everything else is about getting space::

    allocate(op) ──▶ ring seeded? ──no──▶ consensus / seed / wait for gossip (op waits)
                         │ yes
                         ▼
                  free address in our ranges ∩ subnet? ──yes──▶ Result(address)
                         │ no
                         ▼
                  RequestSpace to the reachable peer with the most free space there
                  (ring hints); Donation (ring entries granting us a range) ──▶ retry;
                  Refused / no reply in REQUEST_TIMEOUT ──▶ next donor; none left ──▶ error

    claim(op, addr) ── ours ──▶ Result;  owned elsewhere ──▶ RequestClaim to the owner,
                       who grants [addr, addr+1) unless it has the address in use

Every operation has a deadline (``timeout``): it ends with a Result, an address or an
error that says why ("awaiting consensus: 1 of 2 peers known; waiting for host2"). It
never hangs.

Addresses in use that the ring no longer gives us (a ring seeded elsewhere won, an admin's
rmpeer took our space, a restart found the range changed) are *orphans*: we ask their
current owner for them (RequestClaim) until it grants them or says another container uses
them, which ``status()`` then reports as a conflict. Two differently seeded rings thus
merge without a crash: the higher ``ring_id`` wins and the others re-claim their
addresses in use, while every peer that hears of the losing ring holds the ranges it had
in use until they have (``merge.py``: how, and what is reported).

A container whose namespace disappeared (``container_died``) keeps its addresses for a
grace period (``release.py``, 30 s as in Weave) in case it comes back; ``free`` (``weft
detach``) frees at once.

Inputs: ``allocate / claim / free / container_died / lookup / peers_changed / rmpeer /
handoff`` (API),
``on_gossip`` and ``on_unicast`` (the mesh), ``handle_timer(now)``. Outputs:
``next_result()``, ``take_news()`` (ring/claims to gossip), ``messages_to_send()``
(unicasts), ``get_timer()``, ``dirty`` (state to persist *before* sending the outputs:
set by our own writes (allocations, grants, claims, consensus promises), which must
survive a crash once others may have seen them; what we merely learnt from others is
saved with the next write, and gossip brings it back anyway).
Every input carries ``now`` (gossip too: the mesh passes its own); ``free`` may omit it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.peername import PeerName, format_peer_name, parse_peer_name

from .codec import (
    Donation,
    IpamGossip,
    Refused,
    Released,
    RequestClaim,
    RequestSpace,
    decode_unicast,
    encode_unicast,
)
from .consensus import Claim, Paxos, digest_of_claims
from .merge import HOLD_REASON, HOLD_RETRY, Meetings, carve, within
from .mode import ConsensusInit, InitMode, SeedInit
from .persist import PersistedState, load_into, state_of
from .release import RELEASE_GRACE, Releases, check_grace
from .ring import NO_RING, Ring, RingUpdate, digest_of_update
from .serve import serve_claim, serve_space
from .space import Space
from .status import describe_status, why_waiting

DEFAULT_TIMEOUT = 30.0    # an operation's deadline
REQUEST_TIMEOUT = 3.0     # a peer that has not answered a request by then is skipped
PROPOSE_RETRY = 2.0       # a proposer re-proposes after this (plus jitter)
QUORUM_GRACE = 2.0        # with only a quorum known, wait this long for the others
PROPOSE_DELAY = 0.2       # peers but the lowest-named wait this long before proposing,
PROPOSE_JITTER = 0.8      # plus up to this: time enough to hear the lowest-named's proposal
ORPHAN_RETRY = 10.0       # how often an orphan's claim is retried
MAX_NOTES = 16            # problems and warnings kept for status


@dataclass(frozen=True, slots=True)
class Result:
    op_id: int
    address: IPv4Interface | None
    error: str | None = None


@dataclass(slots=True)
class _Op:
    op_id: int
    ident: str
    net: IPv4Network
    addr: int | None          # a claim's address; None for an allocation
    deadline: float
    asked: dict[PeerName, str] = field(default_factory=dict)
    retry_at: float = 0.0     # a donor held its space for a merge: ask again then


@dataclass(slots=True)
class _Req:
    req: int
    peer: PeerName
    until: float
    kind: str                 # "space" | "claim" | "orphan"
    key: Any                  # (lo, hi) for space, op_id for claim, addr for orphan


@dataclass(slots=True)
class _Orphan:
    ident: str
    retry_at: float = 0.0
    conflict: str = ""
    owner: PeerName | None = None   # who refused it (a duplicate): told when we let it go


class Allocator:
    def __init__(self, name: PeerName, nickname: str, universe: IPv4Network,
                 default_subnet: IPv4Network | None, init: InitMode, now: float,
                 rng: random.Random, *, timeout: float = DEFAULT_TIMEOUT,
                 grace: float = RELEASE_GRACE, wall_offset: float = 0.0) -> None:
        """``grace``: seconds a vanished container keeps its addresses; ``wall_offset``:
        wall-clock time minus ``now`` (only to persist those deadlines across restarts)."""
        default_subnet = default_subnet or universe
        if not default_subnet.subnet_of(universe):
            raise LocalProtocolError(f"default subnet {default_subnet} is not inside the range {universe}")
        self.name = name
        self.nickname = nickname
        self.universe = universe
        self.default_subnet = default_subnet
        self.init = init
        self.timeout = timeout
        self.grace = check_grace(grace)
        self.wall_offset = wall_offset
        self.rng = rng
        self.now = now
        self.start = int(universe.network_address)
        self.end = self.start + universe.num_addresses
        self.ring = Ring(self.start, self.end)
        self.space = Space()
        participate = isinstance(init, ConsensusInit)
        self.paxos = Paxos(name, init.quorum if isinstance(init, ConsensusInit) else 1 << 30,
                           participate=participate)
        self.alive: dict[PeerName, str] = {name: nickname}
        self.nicknames: dict[PeerName, str] = {name: nickname}
        self.warnings: list[str] = []
        self.foreign_ranges: dict[tuple[int, int], int] = {}
        self.merges = Meetings()
        self.releases = Releases()
        self._loading = False
        self.stats = {"gossip_merged": 0, "unicast_received": 0, "bad_unicast": 0,
                      "donations_given": 0, "donations_received": 0, "claims_granted": 0,
                      "claims_refused": 0, "released_after_grace": 0, "rings_met": 0}
        self._ops: dict[int, _Op] = {}
        self._results: deque[Result] = deque()
        self._out: list[tuple[PeerName | None, bytes]] = []
        self._news: IpamGossip | None = None
        self._reqs: dict[int, _Req] = {}
        self._next_req = 1
        self._served: dict[PeerName, tuple[int, bytes]] = {}
        self._orphans: dict[int, _Orphan] = {}
        self.prefix: dict[int, int] = {}  # address in use -> prefix length it was given with
        self._orphan_gen = -1
        self._touched: set[int] = set()
        self._demand = False
        self._propose_at: float | None = None
        self._paxos_seen = -1
        self._propose_full = False
        self.dirty = True
        if isinstance(init, SeedInit) and name in init.names:
            self._adopt_seed(init.names)

    # --- API --------------------------------------------------------------------------------

    def allocate(self, op_id: int, ident: str, subnet: IPv4Network | None, now: float) -> None:
        """Allocate one address for ``ident`` in ``subnet`` (default: the default subnet);
        the answer comes as a Result with this ``op_id``. Idempotent per (ident, subnet)."""
        self._tick(now)
        net = subnet or self.default_subnet
        problem = self._check_ident(op_id, ident)
        if problem is None and not net.subnet_of(self.universe):
            problem = f"subnet {net} is not inside the allocation range {self.universe}"
        if problem is None and net.prefixlen > 30 and net != self.universe:
            problem = f"subnet {net} is too small to allocate from"
        if problem is not None:
            self._results.append(Result(op_id, None, problem))
            return
        self._revive(ident)
        self._ops[op_id] = _Op(op_id, ident, net, None, now + self.timeout)
        self._process(now)

    def claim(self, op_id: int, ident: str, addr: IPv4Interface, now: float) -> None:
        """Record ``addr`` as ``ident``'s. Inside the range it must be ours, or granted by its
        owner, and not in use by another identifier; outside the range it is not managed."""
        self._tick(now)
        problem = self._check_ident(op_id, ident)
        if problem is not None:
            self._results.append(Result(op_id, None, problem))
            return
        if addr.ip not in self.universe:
            self._results.append(Result(op_id, addr))
            return
        self._revive(ident)
        self._ops[op_id] = _Op(op_id, ident, addr.network, int(addr.ip), now + self.timeout)
        self._process(now)

    def free(self, ident: str, addr: IPv4Address | None = None, now: float | None = None) -> int:
        """Free ``addr`` (or every address) of ``ident``; pending operations of ``ident`` end.
        Returns how many addresses were freed."""
        if now is not None:
            self._tick(now)
        for op in [o for o in self._ops.values() if o.ident == ident]:
            self._finish(op, None, f"cancelled: {ident} was freed")
        targets = self.space.of(ident) if addr is None else (
            [int(addr)] if self.space.holder(int(addr)) == ident else [])
        for a in targets:
            self.space.remove(a)
            self.prefix.pop(a, None)
            self._touched.add(a)
            orphan = self._orphans.pop(a, None)
            dup = self.merges.drop_duplicate(a)
            # the other user of a duplicate learns it is settled (it re-claims, or forgets)
            told = orphan.owner if orphan is not None else dup.peer if dup is not None else None
            if told is not None:
                self._send(told, Released(a))
        if ident in self.releases and not self.space.of(ident):
            self.releases.cancel(ident)
            self.dirty = True
        if targets:
            self.dirty = True
            self._flush_free()
        return len(targets)

    def container_died(self, ident: str, now: float) -> int:
        """``ident``'s namespace is gone (no detach): free its addresses after the grace
        period, unless it asks for them again first. Pending operations of ``ident`` end.
        Returns how many addresses are pending release (freed at once with no grace)."""
        self._tick(now)
        for op in [o for o in self._ops.values() if o.ident == ident]:
            self._finish(op, None, f"cancelled: {ident} is gone")
        count = len(self.space.of(ident))
        if count and self.releases.mark(ident, now + self.grace):
            self.dirty = True
        self._process(now)
        return count

    def releasing(self) -> list[tuple[str, list[IPv4Interface], float]]:
        """(identifier, addresses, when they are freed) of vanished containers, soonest first."""
        return [(ident, self.lookup(ident), at) for ident, at in self.releases.items()]

    def _revive(self, ident: str) -> None:
        if self.releases.cancel(ident):  # it came back within the grace period
            self.dirty = True

    def lookup(self, ident: str) -> list[IPv4Interface]:
        return [self._iface(a) for a in self.space.of(ident)]

    def peers_changed(self, alive: Mapping[PeerName, str], now: float) -> None:
        """The peers reachable now (name -> nickname), from the topology."""
        self._tick(now)
        self.alive = dict(alive)
        self.alive[self.name] = self.nickname
        self.nicknames.update(alive)
        for req in list(self._reqs.values()):
            if req.peer not in self.alive:
                self._request_failed(req, "unreachable")
        self._process(now)

    def rmpeer(self, peer: str | PeerName, now: float) -> int:
        """Take over the space of a dead peer (name or nickname); the addresses taken."""
        self._tick(now)
        target = self.resolve_peer(peer)
        if target == self.name:
            raise LocalProtocolError("cannot rmpeer ourselves (use reset)")
        if target in self.alive:
            raise LocalProtocolError(f"peer {self.describe(target)} is reachable: stop it, or run "
                                     "`weft reset` on it, before taking over its space")
        if not self.ring.seeded_yet:
            raise LocalProtocolError("the ring is not seeded yet: there is no space to take over")
        update, count = self.ring.give_all(target, self.name)
        if count:
            self._add_news(update)
            self._touched.update(e.token for e in update.entries)
            self._flush_free()
            self.dirty = True
            self._process(now)
        return count

    def handoff(self, now: float) -> tuple[PeerName, int] | None:
        """Give all our space to a reachable peer (before ``weft reset``); forget every
        allocation. Returns (peer, addresses) or None when no peer is reachable."""
        self._tick(now)
        others = sorted(p for p in self.alive if p != self.name)
        for op in list(self._ops.values()):
            self._finish(op, None, "cancelled: this peer is leaving")
        for a, _ in self.space.items():
            self.space.remove(a)
        self.prefix.clear()
        self._orphans.clear()
        self.releases.clear()
        self.dirty = True
        if not others or not self.ring.seeded_yet:
            return None
        to = self.rng.choice(others)
        update, count = self.ring.give_all(self.name, to)
        if update.entries:
            self._add_news(update)
            self._send(to, Donation(0, update))
        return to, count

    # --- outputs ------------------------------------------------------------------------------

    def next_result(self) -> Result | None:
        return self._results.popleft() if self._results else None

    def take_news(self) -> IpamGossip | None:
        news, self._news = self._news, None
        return news

    def messages_to_send(self) -> list[tuple[PeerName | None, bytes]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        times = [op.deadline for op in self._ops.values()]
        times += [op.retry_at for op in self._ops.values() if op.retry_at > self.now]
        times += [r.until for r in self._reqs.values()]
        times += [o.retry_at for o in self._orphans.values() if o.retry_at > 0]
        if self._propose_at is not None:
            times.append(self._propose_at)
        # a hold's end changes what we may hand out or donate: be woken for it
        for t in (self.releases.next_time(), self.merges.next_expiry(),
                  self.merges.hold_ends(self.now)):
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._tick(now)
        for req in list(self._reqs.values()):
            if req.until <= now:
                self._request_failed(req, "no reply")
        self._process(now)

    # --- mesh inputs ----------------------------------------------------------------------------

    def on_gossip(self, data: IpamGossip, now: float) -> IpamGossip | None:
        """Merge gossip; return the news worth passing on (the mesh forwards it)."""
        self._tick(now)
        self.stats["gossip_merged"] += 1
        ring = data.ring
        if (ring.start, ring.end) != (self.start, self.end):
            key = (ring.start, ring.end)
            if key in self.foreign_ranges or len(self.foreign_ranges) < MAX_NOTES:
                self.foreign_ranges[key] = self.foreign_ranges.get(key, 0) + 1
            return None
        if NO_RING != ring.ring_id < self.ring.ring_id:
            # a ring that gave way to ours, from a peer that has not heard yet, or relayed:
            # hold what it had in use, and pass the news on so our other peers hold too
            self.stats["rings_met"] += ring.ring_id not in self.merges.met
            relay = self.merges.heard(ring, self.ring.ring_id, self.now)
            self._process(self.now)
            return None if relay is None else IpamGossip(relay)
        delta = self._merge_ring(ring)
        claims: list[Claim] = []
        if not self.ring.seeded_yet and data.claims:
            claims = self.paxos.merge(data.claims)
        self._process(self.now)
        if delta is None and not claims:
            return None
        return IpamGossip(delta or RingUpdate(self.start, self.end, NO_RING, ()), tuple(claims))

    def on_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        """A unicast from ``src``; malformed payloads are counted and dropped."""
        self._tick(now)
        self.stats["unicast_received"] += 1
        try:
            msg = decode_unicast(payload)
        except RemoteProtocolError:
            self.stats["bad_unicast"] += 1
            return
        if isinstance(msg, RequestSpace | RequestClaim):
            self._answer(src, msg)
        elif isinstance(msg, Released):
            self.merges.drop_duplicate(msg.addr, src)
            orphan = self._orphans.get(msg.addr)
            if orphan is not None:
                orphan.retry_at = 0.0  # the other user let it go: re-claim it now
        elif isinstance(msg, Donation):
            if (msg.ring.start, msg.ring.end) == (self.start, self.end):
                if NO_RING != msg.ring.ring_id < self.ring.ring_id:
                    self.merges.heard(msg.ring, self.ring.ring_id, self.now)
                delta = self._merge_ring(msg.ring)
                if delta is not None:
                    self._add_news(delta)  # pass it on: the donor's gossip may now stop at us
                self.stats["donations_received"] += 1
            req = self._reqs.pop(msg.req, None) if msg.req else None
            if req is not None and req.kind == "space":
                for op in self._ops.values():
                    op.asked.pop(req.peer, None)
        elif isinstance(msg, Refused):
            req = self._reqs.get(msg.req)
            if req is not None and req.peer == src:
                self._request_failed(req, msg.reason)
        self._process(self.now)

    def full_gossip(self) -> IpamGossip:
        claims: tuple[Claim, ...] = ()
        if not self.ring.seeded_yet:
            claims = tuple(self.paxos.claims[n] for n in sorted(self.paxos.claims))
        return IpamGossip(self.ring.snapshot(), claims)

    def digest(self) -> bytes:
        if self.ring.seeded_yet:
            return self.ring.digest()
        return self.paxos.digest(self.start, self.end)

    def digest_of(self, data: IpamGossip) -> bytes:
        if data.ring.ring_id != NO_RING:
            return digest_of_update(data.ring)
        return digest_of_claims(data.ring.start, data.ring.end, data.claims)

    # --- queries --------------------------------------------------------------------------------

    def resolve_peer(self, peer: str | PeerName) -> PeerName:
        if isinstance(peer, int):
            return peer
        try:
            return parse_peer_name(peer)
        except LocalProtocolError:
            pass
        matches = sorted(n for n, nick in self.nicknames.items() if nick == peer)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise LocalProtocolError(f"nickname {peer!r} is ambiguous: use one of "
                                     + ", ".join(format_peer_name(m) for m in matches))
        raise LocalProtocolError(f"unknown peer {peer!r}")

    def describe(self, peer: PeerName) -> str:
        nick = self.nicknames.get(peer)
        return nick if nick else format_peer_name(peer)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The ``ipam`` part of the report (``now``: for the seconds shown; optional)."""
        return describe_status(self, now)

    def why(self, op: _Op | None = None) -> str:
        return why_waiting(self, op)

    def owned_ranges(self) -> list[tuple[int, int]]:
        return self.ring.owned(self.name)

    def owned_within(self, lo: int, hi: int, now: float) -> tuple[list[tuple[int, int]],
                                                                  list[tuple[int, int]]]:
        """Our ranges clipped to ``[lo, hi)``, carved around merge holds: (the parts we may
        hand out or donate, the parts on hold while a ring that met ours re-claims)."""
        held = self.merges.held(now)
        usable: list[tuple[int, int]] = []
        on_hold: list[tuple[int, int]] = []
        for r_lo, r_hi in self.owned_ranges():
            a, b = max(lo, r_lo), min(hi, r_hi)
            if a < b:
                usable += carve(a, b, held)
                on_hold += within(a, b, held)
        return usable, on_hold

    def pending(self) -> int:
        return len(self._ops)

    def orphans(self) -> dict[int, tuple[str, str]]:
        """Addresses in use here but not (yet) ours in the ring: addr -> (ident, conflict)."""
        return {a: (o.ident, o.conflict) for a, o in self._orphans.items()}

    # --- persistence ------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """A JSON-able snapshot: the ring, our allocations, our consensus claim, nicknames."""
        self.dirty = False
        return state_of(self)

    def load_state(self, state: Mapping[str, Any] | PersistedState) -> list[str]:
        """Restore ``to_state`` output (validated; call before any other input). Returns
        warnings (also kept in ``status()``)."""
        self._loading = True  # a ring replaced while loading is no meeting: it is our past
        try:
            warnings = load_into(self, state)
        finally:
            self._loading = False
        if self._news is not None and NO_RING != self._news.ring.ring_id != self.ring.ring_id:
            self._news = None  # e.g. a seed= ring made at construction, since given way
        self.warnings.extend(warnings)
        self._orphan_gen = -1
        self._process(self.now)
        return warnings

    # --- internals: ring --------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self.now = max(self.now, now)

    def _adopt_seed(self, names: tuple[PeerName, ...]) -> None:
        seeded = Ring.seeded(self.start, self.end, names)
        delta = self._merge_ring(seeded.snapshot())
        if self.ring.ring_id == seeded.ring_id:
            self.ring.seed_names = seeded.seed_names
        if delta is not None:
            self._add_news(delta)

    def _merge_ring(self, update: RingUpdate) -> RingUpdate | None:
        before = self.ring.ring_id
        old = None
        if update.ring_id > before != NO_RING and not self._loading:
            old = (self.ring.snapshot(), self.ring.seed_names)
        delta = self.ring.merge(update)
        if delta is None:
            return None
        if self.ring.ring_id != before:
            self.dirty = True
            self.paxos.settle()
        if old is not None and self.ring.ring_id != before:
            # our ring gave way: re-claim what we use (orphans), hold what it had in use
            self.merges.lost(old[0], old[1], self.ring.ring_id, self.now, len(self.space))
            self.stats["rings_met"] += 1
        self._propose_at = None
        return delta

    def _add_news(self, update: RingUpdate, claims: tuple[Claim, ...] = ()) -> None:
        g = IpamGossip(update, claims)
        self._news = g if self._news is None else self._news.merge(g)

    def _send(self, dst: PeerName, msg: Any) -> None:
        self._out.append((dst, encode_unicast(msg)))

    def _answer(self, src: PeerName, msg: RequestSpace | RequestClaim) -> None:
        """Serve ``src``'s request (``serve.py``). The last answer to each peer is kept: a
        repeated request gets the same answer again, not a second grant."""
        done = self._served.get(src)
        if done is None or done[0] != msg.req:
            reply = (serve_space(self, src, msg) if isinstance(msg, RequestSpace)
                     else serve_claim(self, src, msg))
            done = self._served[src] = (msg.req, encode_unicast(reply))
        self._out.append((src, done[1]))

    def _flush_free(self) -> None:
        if not self._touched or not self.ring.seeded_yet:
            self._touched.clear()
            return
        free: dict[int, int] = {}
        for a in sorted(self._touched):
            e = self.ring.entry_at(a)
            if e is not None and e.owner == self.name:
                free[e.token] = self.space.free_in(e.token, self.ring.effective_end(e.token))
        self._touched.clear()
        update = self.ring.set_free(self.name, free)
        if update is not None:
            self._add_news(update)
            self.dirty = True

    def _iface(self, addr: int) -> IPv4Interface:
        return IPv4Interface((addr, self.prefix.get(addr, self.universe.prefixlen)))

    # --- internals: operations --------------------------------------------------------------------

    def _check_ident(self, op_id: int, ident: str) -> str | None:
        if op_id in self._ops:
            raise LocalProtocolError(f"operation id {op_id} in use")
        if not ident or len(ident) > 256:
            return "invalid identifier: 1 to 256 characters"
        return None

    def _finish(self, op: _Op, address: IPv4Interface | None, error: str | None) -> None:
        del self._ops[op.op_id]
        self._results.append(Result(op.op_id, address, error))

    def _process(self, now: float) -> None:
        for ident in self.releases.expired(now):
            self.stats["released_after_grace"] += 1
            self.free(ident)
            self.dirty = True
        self.merges.expire(now)
        self._consensus_step(now)
        self._serve_ops(now)
        if self._demand and not self.ring.seeded_yet:
            self._consensus_step(now)  # the first demand may start (and, alone, end) consensus
            if self.ring.seeded_yet:
                self._serve_ops(now)
        self._flush_free()

    def _serve_ops(self, now: float) -> None:
        self._check_orphans(now)
        for op in list(self._ops.values()):
            if op.op_id not in self._ops:
                continue
            if now >= op.deadline:
                self._finish(op, None, f"timed out after {self.timeout:.0f}s: {self.why(op)}")
            elif self.ring.seeded_yet:
                if op.addr is None:
                    self._try_allocate(op, now)
                else:
                    self._try_claim(op, now)
            else:
                self._demand = True

    def _net_bounds(self, net: IPv4Network) -> tuple[int, int, tuple[int, ...]]:
        lo = int(net.network_address)
        hi = lo + net.num_addresses
        skip = (lo, hi - 1) if net.num_addresses > 2 else ()
        return lo, hi, skip

    def _try_allocate(self, op: _Op, now: float) -> None:
        lo, hi, skip = self._net_bounds(op.net)
        for a in self.space.of(op.ident):
            if lo <= a < hi and self.prefix.get(a) == op.net.prefixlen:
                self._finish(op, IPv4Interface((a, op.net.prefixlen)), None)
                return
        usable, on_hold = self.owned_within(lo, hi, now)
        for p, q in usable:
            found = self.space.lowest_free(p, q, skip)
            if found is not None:
                self._take(found, op.ident, op.net.prefixlen)
                self._finish(op, IPv4Interface((found, op.net.prefixlen)), None)
                return
        # free space on hold is ours after all: wait for the hold to end (a timer), ask nobody
        if not any(self.space.lowest_free(p, q, skip) is not None for p, q in on_hold):
            self._ask_for_space(op, lo, hi, now)

    def _take(self, addr: int, ident: str, prefixlen: int) -> None:
        self.space.add(addr, ident)
        self.prefix[addr] = prefixlen
        self._touched.add(addr)
        self.dirty = True

    def _ask_for_space(self, op: _Op, lo: int, hi: int, now: float) -> None:
        if any(r.kind == "space" and r.key == (lo, hi) for r in self._reqs.values()):
            return
        donor = self._choose_donor(lo, hi, op.asked)
        if donor is None and any(r.startswith(HOLD_REASON) for r in op.asked.values()):
            if now < op.retry_at:
                return  # donors hold their space while rings merge: ask again soon
            op.asked = {p: r for p, r in op.asked.items() if not r.startswith(HOLD_REASON)}
            donor = self._choose_donor(lo, hi, op.asked)
        if donor is None:
            if not self.ring.covers(lo, hi):
                return  # the ring is still arriving: someone we do not know of yet may have space
            self._finish(op, None, self.why(op))
            return
        req = self._new_req(donor, "space", (lo, hi), now)
        self._send(donor, RequestSpace(req, lo, hi))

    def _choose_donor(self, lo: int, hi: int, asked: Mapping[PeerName, str]) -> PeerName | None:
        free: dict[PeerName, int] = {}
        for e in self.ring.entries():
            if e.owner == self.name or e.owner not in self.alive or e.owner in asked:
                continue
            overlap = min(e.end, hi) - max(e.token, lo)
            if overlap > 0 and e.free > 0:
                free[e.owner] = free.get(e.owner, 0) + min(e.free, overlap)
        if not free:
            return None
        return min(free, key=lambda p: (-free[p], p))

    def _new_req(self, peer: PeerName, kind: str, key: Any, now: float) -> int:
        req = self._next_req
        self._next_req += 1
        self._reqs[req] = _Req(req, peer, now + REQUEST_TIMEOUT, kind, key)
        return req

    def _request_failed(self, req: _Req, reason: str) -> None:
        self._reqs.pop(req.req, None)
        if req.kind == "space":
            lo, hi = req.key
            for op in self._ops.values():
                if op.addr is None and self._net_bounds(op.net)[:2] == (lo, hi):
                    op.asked[req.peer] = reason
                    if reason.startswith(HOLD_REASON):
                        op.retry_at = self.now + HOLD_RETRY
        elif req.kind == "claim":
            claim = self._ops.get(req.key)
            if claim is not None:
                claim.asked[req.peer] = reason
                if reason not in ("no reply", "unreachable") and not reason.startswith("not the owner"):
                    self._finish(claim, None, f"claim of {IPv4Address(claim.addr or 0)} refused by "
                                 f"{self.describe(req.peer)}: {reason}")
        elif req.kind == "orphan":
            orphan = self._orphans.get(req.key)
            if orphan is not None and reason.startswith("in use by"):
                orphan.conflict = f"{self.describe(req.peer)}: {reason}"
                orphan.owner = req.peer

    def _try_claim(self, op: _Op, now: float) -> None:
        addr = op.addr
        assert addr is not None
        holder = self.space.holder(addr)
        iface = IPv4Interface((addr, op.net.prefixlen))
        if holder is not None:
            if holder == op.ident:
                self._finish(op, iface, None)
            else:
                self._finish(op, None, f"address {iface.ip} is already in use by {holder} on this peer")
            return
        e = self.ring.entry_at(addr)
        if e is not None and e.owner == self.name:
            self._take(addr, op.ident, op.net.prefixlen)
            self._finish(op, iface, None)
            return
        if e is None or any(r.kind == "claim" and r.key == op.op_id for r in self._reqs.values()):
            return
        if e.owner not in self.alive:
            op.asked[e.owner] = "unreachable"
            return
        if op.asked.get(e.owner, "unreachable") != "unreachable":
            return  # asked already: wait for the ring to name another owner, or the deadline
        req = self._new_req(e.owner, "claim", op.op_id, now)
        self._send(e.owner, RequestClaim(req, addr, op.ident))

    # --- internals: orphans and consensus ---------------------------------------------------------

    def _check_orphans(self, now: float) -> None:
        if self._orphan_gen != self.ring.generation:
            self._orphan_gen = self.ring.generation
            for a, ident in self.space.items():
                e = self.ring.entry_at(a) if self.ring.seeded_yet else None
                if e is not None and e.owner == self.name:
                    self._orphans.pop(a, None)
                elif a not in self._orphans:
                    self._orphans[a] = _Orphan(ident)
        for a in sorted(self._orphans):
            orphan = self._orphans[a]
            if orphan.retry_at > now or any(r.kind == "orphan" and r.key == a for r in self._reqs.values()):
                continue
            e = self.ring.entry_at(a) if self.ring.seeded_yet else None
            if e is None or e.owner not in self.alive or e.owner == self.name:
                orphan.retry_at = 0.0
                continue
            orphan.retry_at = now + ORPHAN_RETRY
            req = self._new_req(e.owner, "orphan", a, now)
            self._send(e.owner, RequestClaim(req, a, orphan.ident, reclaim=True))

    def _consensus_step(self, now: float) -> None:
        if self.ring.seeded_yet or not isinstance(self.init, ConsensusInit):
            self._propose_at = None
            return
        changed: Claim | None = None
        moved = self.paxos.generation != self._paxos_seen
        if moved:
            changed = self.paxos.think()
            value = self.paxos.decided()
            self._paxos_seen = self.paxos.generation
            if changed is not None:
                self._add_news(RingUpdate(self.start, self.end, NO_RING, ()), (changed,))
                self.dirty = True
            if value is not None:
                self._adopt_seed(value)
                return
        # like Weave, seed only once someone wants an address: a peer launched alone and
        # connected later never makes a ring of its own that would have to give way
        known = len(self.paxos.claims)
        full = known >= self.init.count
        if not self._demand or known < self.init.quorum:
            self._propose_at = None
            return
        backoff = PROPOSE_RETRY * (1 + self.rng.random())
        if self._propose_at is None or (full and not self._propose_full):
            # everyone expected is known: the lowest name proposes at once, the others after
            # a short random delay, which a proposal seen meanwhile stretches (below), so
            # one proposal usually does; only a quorum is known: give the rest a moment, so
            # the ring is divided among as many peers as can be
            leader = min(self.paxos.claims) == self.name
            target = now + (0.0 if leader else PROPOSE_DELAY + PROPOSE_JITTER * self.rng.random())
            if not full:
                target += QUORUM_GRACE
            self._propose_at = target if self._propose_at is None else min(self._propose_at, target)
            self._propose_full = full
        elif moved and self.paxos.ours.promise != (0, 0):
            self._propose_at = max(self._propose_at, now + backoff)  # progress: let it finish
        if now >= self._propose_at:
            self.paxos.propose(self.paxos.participants())
            self.paxos.think()
            self._paxos_seen = self.paxos.generation
            self._add_news(RingUpdate(self.start, self.end, NO_RING, ()), (self.paxos.ours,))
            self.dirty = True
            self._propose_at = now + backoff
            value = self.paxos.decided()
            if value is not None:
                self._adopt_seed(value)
