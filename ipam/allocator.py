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

What the allocator knows is ``self.state`` (``IpamState``, ``state.py``): it hands that to
``persist``, ``serve`` and ``status``, which never see the allocator itself; when to
propose the seed peers is ``consensus.Proposer``'s.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.peername import PeerName

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
from .consensus import Claim, Paxos, Proposer, digest_of_claims
from .merge import HOLD_REASON, HOLD_RETRY
from .mode import ConsensusInit, InitMode, SeedInit
from .persist import PersistedState, restore, state_of
from .release import RELEASE_GRACE, Releases, check_grace
from .ring import NO_RING, Ring, RingUpdate, digest_of_update
from .serve import UNSEEDED_REASON, serve_claim, serve_space
from .space import Space
from .state import IpamState, Op, Orphan
from .status import describe_status, why_waiting

DEFAULT_TIMEOUT = 30.0    # an operation's deadline
REQUEST_TIMEOUT = 3.0     # a peer that has not answered a request by then is skipped
ORPHAN_RETRY = 10.0       # how often an orphan's claim is retried
MAX_NOTES = 16            # problems and warnings kept for status


@dataclass(frozen=True, slots=True)
class Result:
    op_id: int
    address: IPv4Interface | IPv6Interface | None
    error: str | None = None


@dataclass(slots=True)
class _Req:
    req: int
    peer: PeerName
    until: float
    kind: str                 # "space" | "claim" | "orphan"
    key: Any                  # (lo, hi) for space, op_id for claim, addr for orphan


def _retriable(reason: str) -> bool:
    """A donor's refusal worth asking again soon: it holds its space while rings merge, or
    it has not heard of the ring yet (it was seeded a moment ago, its gossip is on its way)."""
    return reason.startswith(HOLD_REASON) or reason == UNSEEDED_REASON


class Allocator:
    def __init__(self, name: PeerName, nickname: str, universe: IPv4Network | IPv6Network,
                 default_subnet: IPv4Network | IPv6Network | None, init: InitMode, now: float,
                 rng: random.Random, *, timeout: float = DEFAULT_TIMEOUT,
                 grace: float = RELEASE_GRACE, wall_offset: float = 0.0) -> None:
        """``grace``: seconds a vanished container keeps its addresses; ``wall_offset``:
        wall-clock time minus ``now`` (only to persist those deadlines across restarts)."""
        default_subnet = default_subnet or universe
        if universe.version == 6 and int(universe.network_address) < 1 << 32:
            raise LocalProtocolError(f"IPv6 range {universe} lies inside ::/96: give a real "
                                     "IPv6 prefix (e.g. a ULA, fd00::/8)")
        if default_subnet.version != universe.version or not default_subnet.subnet_of(universe):  # type: ignore[arg-type]
            raise LocalProtocolError(f"default subnet {default_subnet} is not inside the range {universe}")
        start = int(universe.network_address)
        quorum = init.quorum if isinstance(init, ConsensusInit) else 1 << 30
        self.state = IpamState(
            name, nickname, universe, default_subnet, init, now, check_grace(grace), wall_offset,
            Ring(start, start + universe.num_addresses),
            Paxos(name, quorum, participate=isinstance(init, ConsensusInit)),
            alive={name: nickname}, nicknames={name: nickname})
        self.timeout = timeout
        self.rng = rng
        self._results: deque[Result] = deque()
        self._out: list[tuple[PeerName | None, bytes]] = []
        self._news: IpamGossip | None = None
        self._reqs: dict[int, _Req] = {}
        self._next_req = 1
        self._served: dict[PeerName, tuple[int, bytes]] = {}
        self._orphan_gen = -1
        self._demand = False      # an operation waits for the ring: consensus may start
        self._proposer = (Proposer(self.state.paxos, init.count, rng)
                          if isinstance(init, ConsensusInit) else None)
        if isinstance(init, SeedInit) and name in init.names:
            self._adopt_seed(init.names)

    # --- API --------------------------------------------------------------------------------

    def allocate(self, op_id: int, ident: str, subnet: IPv4Network | IPv6Network | None,
                 now: float) -> None:
        """Allocate one address for ``ident`` in ``subnet`` (default: the default subnet);
        the answer comes as a Result with this ``op_id``. Idempotent per (ident, subnet)."""
        st = self.state
        self._tick(now)
        net = subnet or st.default_subnet
        problem = self._check_ident(op_id, ident)
        if problem is None and (net.version != st.universe.version
                                or not net.subnet_of(st.universe)):  # type: ignore[arg-type]
            problem = f"subnet {net} is not inside the allocation range {st.universe}"
        if problem is None and net.prefixlen > net.max_prefixlen - 2 and net != st.universe:
            problem = f"subnet {net} is too small to allocate from"
        if problem is not None:
            self._results.append(Result(op_id, None, problem))
            return
        self._revive(ident)
        st.ops[op_id] = Op(op_id, ident, net, None, now + self.timeout)
        self._process(now)

    def claim(self, op_id: int, ident: str, addr: IPv4Interface | IPv6Interface, now: float) -> None:
        """Record ``addr`` as ``ident``'s. Inside the range it must be ours, or granted by its
        owner, and not in use by another identifier; outside the range it is not managed."""
        self._tick(now)
        problem = self._check_ident(op_id, ident)
        if problem is not None:
            self._results.append(Result(op_id, None, problem))
            return
        if addr.ip not in self.state.universe:
            self._results.append(Result(op_id, addr))
            return
        self._revive(ident)
        self.state.ops[op_id] = Op(op_id, ident, addr.network, int(addr.ip), now + self.timeout)
        self._process(now)

    def free(self, ident: str, addr: IPv4Address | IPv6Address | None = None,
             now: float | None = None) -> int:
        """Free ``addr`` (or every address) of ``ident``; pending operations of ``ident`` end.
        Returns how many addresses were freed."""
        st = self.state
        if now is not None:
            self._tick(now)
        for op in [o for o in st.ops.values() if o.ident == ident]:
            self._finish(op, None, f"cancelled: {ident} was freed")
        targets = st.space.of(ident) if addr is None else (
            [int(addr)] if st.space.holder(int(addr)) == ident else [])
        for a in targets:
            st.space.remove(a)
            st.prefix.pop(a, None)
            st.touched.add(a)
            orphan = st.orphans.pop(a, None)
            dup = st.merges.drop_duplicate(a)
            # the other user of a duplicate learns it is settled (it re-claims, or forgets)
            told = orphan.owner if orphan is not None else dup.peer if dup is not None else None
            if told is not None:
                self._send(told, Released(a))
        if ident in st.releases and not st.space.of(ident):
            st.releases.cancel(ident)
            st.dirty = True
        if targets:
            st.dirty = True
            self._flush_free()
        return len(targets)

    def container_died(self, ident: str, now: float) -> int:
        """``ident``'s namespace is gone (no detach): free its addresses after the grace
        period, unless it asks for them again first. Pending operations of ``ident`` end.
        Returns how many addresses are pending release (freed at once with no grace)."""
        st = self.state
        self._tick(now)
        for op in [o for o in st.ops.values() if o.ident == ident]:
            self._finish(op, None, f"cancelled: {ident} is gone")
        count = len(st.space.of(ident))
        if count and st.releases.mark(ident, now + st.grace):
            st.dirty = True
        self._process(now)
        return count

    def _revive(self, ident: str) -> None:
        if self.state.releases.cancel(ident):  # it came back within the grace period
            self.state.dirty = True

    def lookup(self, ident: str) -> list[IPv4Interface | IPv6Interface]:
        return self.state.lookup(ident)

    def peers_changed(self, alive: Mapping[PeerName, str], now: float) -> None:
        """The peers reachable now (name -> nickname), from the topology."""
        st = self.state
        self._tick(now)
        st.alive = dict(alive)
        st.alive[st.name] = st.nickname
        st.nicknames.update(alive)
        for req in list(self._reqs.values()):
            if req.peer not in st.alive:
                self._request_failed(req, "unreachable")
        self._process(now)

    def rmpeer(self, peer: str | PeerName, now: float) -> int:
        """Take over the space of a dead peer (name or nickname); the addresses taken."""
        st = self.state
        self._tick(now)
        target = self.resolve_peer(peer)
        if target == st.name:
            raise LocalProtocolError("cannot rmpeer ourselves (use reset)")
        if target in st.alive:
            raise LocalProtocolError(f"peer {self.describe(target)} is reachable: stop it, or run "
                                     "`weft reset` on it, before taking over its space")
        if not st.ring.seeded_yet:
            raise LocalProtocolError("the ring is not seeded yet: there is no space to take over")
        update, count = st.ring.give_all(target, st.name)
        if count:
            self._add_news(update)
            st.touched.update(e.token for e in update.entries)
            self._flush_free()
            st.dirty = True
            self._process(now)
        return count

    def handoff(self, now: float) -> tuple[PeerName, int] | None:
        """Give all our space to a reachable peer (before ``weft reset``); forget every
        allocation. Returns (peer, addresses) or None when no peer is reachable."""
        st = self.state
        self._tick(now)
        others = sorted(p for p in st.alive if p != st.name)
        for op in list(st.ops.values()):
            self._finish(op, None, "cancelled: this peer is leaving")
        for a, _ in st.space.items():
            st.space.remove(a)
        st.prefix.clear()
        st.orphans.clear()
        st.releases.clear()
        st.dirty = True
        if not others or not st.ring.seeded_yet:
            return None
        to = self.rng.choice(others)
        update, count = st.ring.give_all(st.name, to)
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
        st = self.state
        times = [op.deadline for op in st.ops.values()]
        times += [op.retry_at for op in st.ops.values() if op.retry_at > st.now]
        times += [r.until for r in self._reqs.values()]
        times += [o.retry_at for o in st.orphans.values() if o.retry_at > 0]
        if self._proposer is not None and self._proposer.at is not None:
            times.append(self._proposer.at)
        # a hold's end changes what we may hand out or donate: be woken for it
        for t in (st.releases.next_time(), st.merges.next_expiry(),
                  st.merges.hold_ends(st.now)):
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
        st = self.state
        self._tick(now)
        st.stats["gossip_merged"] += 1
        ring = data.ring
        if (ring.start, ring.end) != (st.start, st.end):
            key = (ring.start, ring.end)
            if key in st.foreign_ranges or len(st.foreign_ranges) < MAX_NOTES:
                st.foreign_ranges[key] = st.foreign_ranges.get(key, 0) + 1
            return None
        if NO_RING != ring.ring_id < st.ring.ring_id:
            # a ring that gave way to ours, from a peer that has not heard yet, or relayed:
            # hold what it had in use, and pass the news on so our other peers hold too
            st.stats["rings_met"] += ring.ring_id not in st.merges.met
            relay = st.merges.heard(ring, st.ring.ring_id, st.now)
            self._process(st.now)
            return None if relay is None else IpamGossip(relay)
        delta = self._merge_ring(ring)
        claims: list[Claim] = []
        if not st.ring.seeded_yet and data.claims:
            claims = st.paxos.merge(data.claims)
        self._process(st.now)
        if delta is None and not claims:
            return None
        return IpamGossip(delta or RingUpdate(st.start, st.end, NO_RING, ()), tuple(claims))

    def on_unicast(self, src: PeerName, payload: bytes, now: float) -> None:
        """A unicast from ``src``; malformed payloads are counted and dropped."""
        st = self.state
        self._tick(now)
        st.stats["unicast_received"] += 1
        try:
            msg = decode_unicast(payload, self.limit)
        except RemoteProtocolError:
            st.stats["bad_unicast"] += 1
            return
        if isinstance(msg, RequestSpace | RequestClaim):
            self._answer(src, msg)
        elif isinstance(msg, Released):
            st.merges.drop_duplicate(msg.addr, src)
            orphan = st.orphans.get(msg.addr)
            if orphan is not None:
                orphan.retry_at = 0.0  # the other user let it go: re-claim it now
        elif isinstance(msg, Donation):
            if (msg.ring.start, msg.ring.end) == (st.start, st.end):
                if NO_RING != msg.ring.ring_id < st.ring.ring_id:
                    st.merges.heard(msg.ring, st.ring.ring_id, st.now)
                delta = self._merge_ring(msg.ring)
                if delta is not None:
                    self._add_news(delta)  # pass it on: the donor's gossip may now stop at us
                st.stats["donations_received"] += 1
            req = self._reqs.pop(msg.req, None) if msg.req else None
            if req is not None and req.kind == "space":
                for op in st.ops.values():
                    op.asked.pop(req.peer, None)
        elif isinstance(msg, Refused):
            req = self._reqs.get(msg.req)
            if req is not None and req.peer == src:
                self._request_failed(req, msg.reason)
        self._process(st.now)

    def full_gossip(self) -> IpamGossip:
        st = self.state
        claims: tuple[Claim, ...] = ()
        if not st.ring.seeded_yet:
            claims = tuple(st.paxos.claims[n] for n in sorted(st.paxos.claims))
        return IpamGossip(st.ring.snapshot(), claims)

    def digest(self) -> bytes:
        st = self.state
        if st.ring.seeded_yet:
            return st.ring.digest()
        return st.paxos.digest(st.start, st.end)

    def digest_of(self, data: IpamGossip) -> bytes:
        if data.ring.ring_id != NO_RING:
            return digest_of_update(data.ring)
        return digest_of_claims(data.ring.start, data.ring.end, data.claims)

    # --- queries --------------------------------------------------------------------------------

    def resolve_peer(self, peer: str | PeerName) -> PeerName:
        return self.state.resolve_peer(peer)

    def describe(self, peer: PeerName) -> str:
        return self.state.describe(peer)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The ``ipam`` part of the report (``now``: for the seconds shown; optional)."""
        return describe_status(self.state, now)

    def why(self, op: Op | None = None) -> str:
        return why_waiting(self.state, op)

    def owned_ranges(self) -> list[tuple[int, int]]:
        return self.state.ring.owned(self.state.name)

    def orphans(self) -> dict[int, tuple[str, str]]:
        """Addresses in use here but not (yet) ours in the ring: addr -> (ident, conflict)."""
        return self.state.orphan_conflicts()

    # The state others read (``state`` holds all of it; these are the common parts).

    @property
    def universe(self) -> IPv4Network | IPv6Network:
        return self.state.universe

    @property
    def limit(self) -> int:
        """What the codec accepts as a ring bound: 2^32 (IPv4) or 2^128 (IPv6)."""
        return 1 << self.state.universe.max_prefixlen

    @property
    def default_subnet(self) -> IPv4Network | IPv6Network:
        return self.state.default_subnet

    @property
    def grace(self) -> float:
        return self.state.grace

    @property
    def wall_offset(self) -> float:
        return self.state.wall_offset

    @property
    def alive(self) -> Mapping[PeerName, str]:
        """The peers reachable now (name -> nickname), ourselves included."""
        return self.state.alive

    @property
    def ring(self) -> Ring:
        return self.state.ring

    @property
    def space(self) -> Space:
        return self.state.space

    @property
    def releases(self) -> Releases:
        return self.state.releases

    @property
    def stats(self) -> dict[str, int]:
        """Counters for /metrics."""
        return self.state.stats

    @property
    def dirty(self) -> bool:
        """State to persist (``to_state``) before this call's outputs leave."""
        return self.state.dirty

    # --- persistence ------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """A JSON-able snapshot: the ring, our allocations, our consensus claim, nicknames."""
        self.state.dirty = False
        return state_of(self.state)

    def load_state(self, state: Mapping[str, Any] | PersistedState) -> list[str]:
        """Restore ``to_state`` output (validated; call before any other input). Returns
        warnings (also kept in ``status()``)."""
        st = self.state
        restored = restore(self.state, state)
        if restored.ring is not None:
            # a ring replaced while loading is no meeting: it is our past
            self._merge_ring(restored.ring, loading=True)
        if restored.claim is not None:
            st.paxos.merge([restored.claim])
        if self._news is not None and NO_RING != self._news.ring.ring_id != st.ring.ring_id:
            self._news = None  # e.g. a seed= ring made at construction, since given way
        st.warnings.extend(restored.warnings)
        self._orphan_gen = -1
        self._process(st.now)
        return list(restored.warnings)

    # --- internals: ring --------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self.state.now = max(self.state.now, now)

    def _adopt_seed(self, names: tuple[PeerName, ...]) -> None:
        st = self.state
        seeded = Ring.seeded(st.start, st.end, names)
        delta = self._merge_ring(seeded.snapshot())
        if st.ring.ring_id == seeded.ring_id:
            st.ring.seed_names = seeded.seed_names
        if delta is not None:
            self._add_news(delta)

    def _merge_ring(self, update: RingUpdate, *, loading: bool = False) -> RingUpdate | None:
        st = self.state
        before = st.ring.ring_id
        old = None
        if update.ring_id > before != NO_RING and not loading:
            old = (st.ring.snapshot(), st.ring.seed_names)
        delta = st.ring.merge(update)
        if delta is None:
            return None
        if st.ring.ring_id != before:
            st.dirty = True
            st.paxos.settle()
        if old is not None and st.ring.ring_id != before:
            # our ring gave way: re-claim what we use (orphans), hold what it had in use
            st.merges.lost(old[0], old[1], st.ring.ring_id, st.now, len(st.space))
            st.stats["rings_met"] += 1
        if self._proposer is not None:
            self._proposer.at = None
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
            reply = (serve_space(self.state, src, msg) if isinstance(msg, RequestSpace)
                     else serve_claim(self.state, src, msg))
            if isinstance(reply, Donation):
                self._add_news(reply.ring)  # a grant: every peer learns the new owner
            done = self._served[src] = (msg.req, encode_unicast(reply))
        self._out.append((src, done[1]))

    def _flush_free(self) -> None:
        st = self.state
        if not st.touched or not st.ring.seeded_yet:
            st.touched.clear()
            return
        free: dict[int, int] = {}
        for a in sorted(st.touched):
            e = st.ring.entry_at(a)
            if e is not None and e.owner == st.name:
                free[e.token] = st.space.free_in(e.token, st.ring.effective_end(e.token))
        st.touched.clear()
        update = st.ring.set_free(st.name, free)
        if update is not None:
            self._add_news(update)
            st.dirty = True

    # --- internals: operations --------------------------------------------------------------------

    def _check_ident(self, op_id: int, ident: str) -> str | None:
        if op_id in self.state.ops:
            raise LocalProtocolError(f"operation id {op_id} in use")
        if not ident or len(ident) > 256:
            return "invalid identifier: 1 to 256 characters"
        return None

    def _finish(self, op: Op, address: IPv4Interface | IPv6Interface | None, error: str | None) -> None:
        del self.state.ops[op.op_id]
        self._results.append(Result(op.op_id, address, error))

    def _process(self, now: float) -> None:
        st = self.state
        for ident in st.releases.expired(now):
            st.stats["released_after_grace"] += 1
            self.free(ident)
            st.dirty = True
        st.merges.expire(now)
        self._consensus_step(now)
        self._serve_ops(now)
        if self._demand and not st.ring.seeded_yet:
            self._consensus_step(now)  # the first demand may start (and, alone, end) consensus
            if st.ring.seeded_yet:
                self._serve_ops(now)
        self._flush_free()

    def _serve_ops(self, now: float) -> None:
        st = self.state
        self._check_orphans(now)
        for op in list(st.ops.values()):
            if op.op_id not in st.ops:
                continue
            if now >= op.deadline:
                self._finish(op, None, f"timed out after {self.timeout:.0f}s: {self.why(op)}")
            elif st.ring.seeded_yet:
                if op.addr is None:
                    self._try_allocate(op, now)
                else:
                    self._try_claim(op, now)
            else:
                self._demand = True

    def _net_bounds(self, net: IPv4Network | IPv6Network) -> tuple[int, int, tuple[int, ...]]:
        lo = int(net.network_address)
        hi = lo + net.num_addresses
        # IPv4: never the network or broadcast address; IPv6 has no broadcast, but its
        # all-zero host address is the subnet-router anycast address (RFC 4291 2.6.1)
        skip = () if net.num_addresses <= 2 else (lo,) if net.version == 6 else (lo, hi - 1)
        return lo, hi, skip

    def _try_allocate(self, op: Op, now: float) -> None:
        st = self.state
        lo, hi, skip = self._net_bounds(op.net)
        for a in st.space.of(op.ident):
            if lo <= a < hi and st.prefix.get(a) == op.net.prefixlen:
                self._finish(op, self.state.iface_of(a, op.net.prefixlen), None)
                return
        usable, on_hold = st.owned_within(lo, hi, now)
        for p, q in usable:
            found = st.space.lowest_free(p, q, skip)
            if found is not None:
                self._take(found, op.ident, op.net.prefixlen)
                self._finish(op, self.state.iface_of(found, op.net.prefixlen), None)
                return
        # free space on hold is ours after all: wait for the hold to end (a timer), ask nobody
        if not any(st.space.lowest_free(p, q, skip) is not None for p, q in on_hold):
            self._ask_for_space(op, lo, hi, now)

    def _take(self, addr: int, ident: str, prefixlen: int) -> None:
        st = self.state
        st.space.add(addr, ident)
        st.prefix[addr] = prefixlen
        st.touched.add(addr)
        st.dirty = True

    def _ask_for_space(self, op: Op, lo: int, hi: int, now: float) -> None:
        if any(r.kind == "space" and r.key == (lo, hi) for r in self._reqs.values()):
            return
        donor = self._choose_donor(lo, hi, op.asked)
        if donor is None and any(_retriable(r) for r in op.asked.values()):
            if now < op.retry_at:
                return  # donors hold their space while rings merge: ask again soon
            op.asked = {p: r for p, r in op.asked.items() if not _retriable(r)}
            donor = self._choose_donor(lo, hi, op.asked)
        if donor is None:
            if not self.state.ring.covers(lo, hi):
                return  # the ring is still arriving: someone we do not know of yet may have space
            self._finish(op, None, self.why(op))
            return
        req = self._new_req(donor, "space", (lo, hi), now)
        self._send(donor, RequestSpace(req, lo, hi))

    def _choose_donor(self, lo: int, hi: int, asked: Mapping[PeerName, str]) -> PeerName | None:
        st = self.state
        free: dict[PeerName, int] = {}
        for e in st.ring.entries():
            if e.owner == st.name or e.owner not in st.alive or e.owner in asked:
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
        st = self.state
        self._reqs.pop(req.req, None)
        if req.kind == "space":
            lo, hi = req.key
            for op in st.ops.values():
                if op.addr is None and self._net_bounds(op.net)[:2] == (lo, hi):
                    op.asked[req.peer] = reason
                    if _retriable(reason):
                        op.retry_at = st.now + HOLD_RETRY
        elif req.kind == "claim":
            claim = st.ops.get(req.key)
            if claim is not None:
                claim.asked[req.peer] = reason
                if reason not in ("no reply", "unreachable") and not reason.startswith("not the owner"):
                    self._finish(claim, None, f"claim of {self.state.ip(claim.addr or 0)} refused by "
                                 f"{self.describe(req.peer)}: {reason}")
        elif req.kind == "orphan":
            orphan = st.orphans.get(req.key)
            if orphan is not None and reason.startswith("in use by"):
                orphan.conflict = f"{self.describe(req.peer)}: {reason}"
                orphan.owner = req.peer

    def _try_claim(self, op: Op, now: float) -> None:
        st = self.state
        addr = op.addr
        assert addr is not None
        holder = st.space.holder(addr)
        iface = self.state.iface_of(addr, op.net.prefixlen)
        if holder is not None:
            if holder == op.ident:
                self._finish(op, iface, None)
            else:
                self._finish(op, None, f"address {iface.ip} is already in use by {holder} on this peer")
            return
        e = st.ring.entry_at(addr)
        if e is not None and e.owner == st.name:
            self._take(addr, op.ident, op.net.prefixlen)
            self._finish(op, iface, None)
            return
        if e is None or any(r.kind == "claim" and r.key == op.op_id for r in self._reqs.values()):
            return
        if e.owner not in st.alive:
            op.asked[e.owner] = "unreachable"
            return
        if op.asked.get(e.owner, "unreachable") != "unreachable":
            return  # asked already: wait for the ring to name another owner, or the deadline
        req = self._new_req(e.owner, "claim", op.op_id, now)
        self._send(e.owner, RequestClaim(req, addr, op.ident))

    # --- internals: orphans and consensus ---------------------------------------------------------

    def _check_orphans(self, now: float) -> None:
        st = self.state
        if self._orphan_gen != st.ring.generation:
            self._orphan_gen = st.ring.generation
            for a, ident in st.space.items():
                e = st.ring.entry_at(a) if st.ring.seeded_yet else None
                if e is not None and e.owner == st.name:
                    st.orphans.pop(a, None)
                elif a not in st.orphans:
                    st.orphans[a] = Orphan(ident)
        for a in sorted(st.orphans):
            orphan = st.orphans[a]
            if orphan.retry_at > now or any(r.kind == "orphan" and r.key == a for r in self._reqs.values()):
                continue
            e = st.ring.entry_at(a) if st.ring.seeded_yet else None
            if e is None or e.owner not in st.alive or e.owner == st.name:
                orphan.retry_at = 0.0
                continue
            orphan.retry_at = now + ORPHAN_RETRY
            req = self._new_req(e.owner, "orphan", a, now)
            self._send(e.owner, RequestClaim(req, a, orphan.ident, reclaim=True))

    def _consensus_step(self, now: float) -> None:
        st = self.state
        if self._proposer is None:
            return
        if st.ring.seeded_yet:
            self._proposer.at = None
            return
        claim, seeds = self._proposer.step(now, self._demand)
        if claim is not None:
            self._add_news(RingUpdate(st.start, st.end, NO_RING, ()), (claim,))
            st.dirty = True
        if seeds is not None:
            self._adopt_seed(seeds)
