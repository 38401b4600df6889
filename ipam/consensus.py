"""Consensus on who seeds the ring: single-decree Paxos carried by gossip.

Theory of operation (after Weave's ipam/paxos). With ``--ipalloc-init consensus=N`` the
first peers must agree, once, on the set of peers the empty ring is divided among; every
peer then computes the same ring from that set (``Ring.seeded``). Agreement needs a quorum
(N // 2 + 1), so two partitions can never both seed.

Instead of point-to-point Paxos messages, every participant publishes one ``Claim`` (its
acceptor state) and all claims are gossiped as a CRDT (per node, the highest-ranked claim
wins: a node's own promise and acceptance only ever grow). Each node reads the claims it
knows and moves its own::

    propose   ballot (round, me) above every round seen; we promise it ourselves
    promise   our promise := the highest ballot any claim shows
    accept    proposer: when a quorum promises our ballot, accept it with the value of the
              highest earlier acceptance among them (or our own proposal value)
              acceptor: when the proposer of the ballot we promised has accepted it, accept
    decided   a quorum of claims accepted the same ballot: its value is chosen

A claim that outranks our own (our earlier incarnation, gossiped back) is taken, so a
restarted acceptor never forgets what it promised.

When to propose (``Proposer``): only once someone wants an address (as in Weave: a peer
launched alone and connected later never makes a ring that would have to give way); with
every expected peer known the lowest-named proposes at once and the others after a short
random delay that a proposal seen meanwhile stretches, so one proposal usually does; with
only a quorum known, everyone first waits ``QUORUM_GRACE`` for the rest, so the ring is
divided among as many peers as can be. Nothing here reads a clock: ``now`` comes in, and
``Proposer.at`` is the time the allocator's timer must wake it.
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.peername import PeerName

Ballot = tuple[int, PeerName]  # (round, proposer); (0, 0) is "none"
NO_BALLOT: Ballot = (0, 0)
MAX_ROUND = (1 << 63) - 1
PROPOSE_RETRY = 2.0       # a proposer re-proposes after this (plus jitter)
QUORUM_GRACE = 2.0        # with only a quorum known, wait this long for the others
PROPOSE_DELAY = 0.2       # peers but the lowest-named wait this long before proposing,
PROPOSE_JITTER = 0.8      # plus up to this: time enough to hear the lowest-named's proposal


@dataclass(frozen=True, slots=True)
class Claim:
    node: PeerName
    promise: Ballot
    accepted: Ballot
    value: tuple[PeerName, ...]  # the accepted value (sorted peer names); () if none

    def rank(self) -> tuple[Ballot, Ballot, tuple[PeerName, ...]]:
        return (self.promise, self.accepted, self.value)


@functools.lru_cache(maxsize=64)
def _value_hash(value: tuple[PeerName, ...]) -> bytes:
    return hashlib.blake2b(struct.pack(f">{len(value)}Q", *value), digest_size=16).digest()


def claim_hash(c: Claim) -> int:
    raw = struct.pack(">QQQQQ", c.node, *c.promise, *c.accepted) + _value_hash(c.value)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=16, person=b"claim").digest(), "big")


def digest_of_claims(start: int, end: int, claims: Iterable[Claim]) -> bytes:
    """The digest of an unseeded peer holding (the highest of) ``claims`` for a range."""
    best: dict[PeerName, Claim] = {}
    for c in claims:
        old = best.get(c.node)
        if old is None or c.rank() > old.rank():
            best[c.node] = c
    acc = 0
    for c in best.values():
        acc ^= claim_hash(c)
    return _finish_digest(start, end, acc)


def _finish_digest(start: int, end: int, acc: int) -> bytes:
    # an IPv6 range's bounds pass 64 bits: then 17 bytes each (IPv4 digests stay as they were)
    raw = (struct.pack(">QQ", start, end) if end < 1 << 64
           else b"\xff" + start.to_bytes(17, "big") + end.to_bytes(17, "big"))
    head = hashlib.blake2b(raw, digest_size=16, person=b"claims").digest()
    return (acc ^ int.from_bytes(head, "big")).to_bytes(16, "big")


class Paxos:
    def __init__(self, me: PeerName, quorum: int, *, participate: bool = True) -> None:
        """A non-participant (observer, seed mode) only stores and relays others' claims."""
        self.me = me
        self.quorum = max(1, quorum)
        self.participate = participate
        self.claims: dict[PeerName, Claim] = {}
        self.generation = 0  # bumped on every change: callers think only when it moved
        self._acc = 0
        # kept up to date by _set, so thinking costs O(1) but for the proposer's quorum count
        self._top_promise: Ballot = NO_BALLOT
        self._top_round = 0
        self._promises: dict[Ballot, int] = {}
        self._accepts: dict[Ballot, list[PeerName]] = {}
        self._values: dict[tuple[PeerName, ...], tuple[PeerName, ...]] = {}
        if participate:
            self._set(Claim(me, NO_BALLOT, NO_BALLOT, ()))
        self._proposal_value: tuple[PeerName, ...] = ()

    def _set(self, c: Claim) -> None:
        old = self.claims.get(c.node)
        if old is not None:
            self._acc ^= claim_hash(old)
            self._promises[old.promise] -= 1
            if old.accepted != NO_BALLOT:
                self._accepts[old.accepted].remove(old.node)
        self.claims[c.node] = c
        self._acc ^= claim_hash(c)
        self._promises[c.promise] = self._promises.get(c.promise, 0) + 1
        if c.accepted != NO_BALLOT:
            self._accepts.setdefault(c.accepted, []).append(c.node)
        self._top_promise = max(self._top_promise, c.promise)
        self._top_round = max(self._top_round, c.promise[0], c.accepted[0])
        self.generation += 1

    def digest(self, start: int, end: int) -> bytes:
        return _finish_digest(start, end, self._acc)

    @property
    def ours(self) -> Claim:
        return self.claims[self.me]

    def participants(self) -> list[PeerName]:
        return sorted(self.claims)

    def merge(self, claims: Iterable[Claim]) -> list[Claim]:
        """Join gossiped claims; return those that were news (ascending by node)."""
        delta: dict[PeerName, Claim] = {}
        for c in claims:
            old = self.claims.get(c.node)
            if old is None or c.rank() > old.rank():
                if c.value:  # one copy of each value however many claims carry it
                    c = replace(c, value=self._values.setdefault(c.value, c.value))
                self._set(c)
                delta[c.node] = c
        return [delta[n] for n in sorted(delta)]

    def settle(self) -> None:
        """The ring is seeded: forget the others' claims (only ours is ever needed again,
        persisted so a restarted acceptor keeps its word)."""
        ours = self.claims.get(self.me)
        self.claims.clear()
        self._values.clear()
        self._promises.clear()
        self._accepts.clear()
        self._acc = 0
        if ours is not None:
            self._set(ours)

    def propose(self, value: Iterable[PeerName]) -> Claim:
        """Start a new ballot above every round seen, proposing ``value``."""
        if not self.participate:
            raise LocalProtocolError("a non-participant cannot propose")
        ballot = (min(self._top_round + 1, MAX_ROUND), self.me)
        self._proposal_value = tuple(sorted(set(value)))
        self._set(replace(self.ours, promise=max(ballot, self.ours.promise)))
        return self.ours

    def think(self) -> Claim | None:
        """Move our claim as far as the known claims allow; our new claim, or None."""
        if not self.participate:
            return None
        before = self.ours
        ours = before
        if self._top_promise > ours.promise:
            ours = replace(ours, promise=self._top_promise)
        if (ours.promise[1] == self.me and ours.accepted != ours.promise and self._proposal_value
                and self._promises.get(ours.promise, 0) >= self.quorum):
            promisers = [c for c in self.claims.values() if c.promise == ours.promise]
            if len(promisers) >= self.quorum:
                prior = max(promisers, key=lambda c: c.accepted)
                value = prior.value if prior.accepted != NO_BALLOT else self._proposal_value
                ours = replace(ours, accepted=ours.promise, value=value)
        proposer = self.claims.get(ours.promise[1])
        if (ours.promise != NO_BALLOT and ours.accepted != ours.promise and proposer is not None
                and proposer.accepted == ours.promise and proposer.node != self.me):
            ours = replace(ours, accepted=proposer.accepted, value=proposer.value)
        if ours == before:
            return None
        self._set(ours)
        return ours

    def decided(self) -> tuple[PeerName, ...] | None:
        for ballot in sorted(self._accepts):
            voters = self._accepts[ballot]
            if len(voters) >= self.quorum:
                return self.claims[voters[0]].value
        return None


class Proposer:
    """When this peer proposes the seed peers (module docstring), for ``count`` expected."""

    def __init__(self, paxos: Paxos, count: int, rng: random.Random) -> None:
        self.paxos = paxos
        self.count = count
        self.rng = rng
        self.at: float | None = None   # when to propose next: the allocator's timer
        self._seen = -1                # the paxos generation last thought about
        self._full = False             # ``at`` was chosen with every expected peer known

    def step(self, now: float, demand: bool) -> tuple[Claim | None, tuple[PeerName, ...] | None]:
        """Think about the claims known, and propose when due. Returns our claim when it
        changed (to gossip and persist), and the seed peers once they are decided."""
        paxos = self.paxos
        news: Claim | None = None
        moved = paxos.generation != self._seen
        if moved:
            news = paxos.think()
            value = paxos.decided()
            self._seen = paxos.generation
            if value is not None:
                return news, value
        known = len(paxos.claims)
        full = known >= self.count
        if not demand or known < paxos.quorum:
            self.at = None
            return news, None
        backoff = PROPOSE_RETRY * (1 + self.rng.random())
        if self.at is None or (full and not self._full):
            leader = min(paxos.claims) == paxos.me
            target = now + (0.0 if leader else PROPOSE_DELAY + PROPOSE_JITTER * self.rng.random())
            if not full:
                target += QUORUM_GRACE
            self.at = target if self.at is None else min(self.at, target)
            self._full = full
        elif moved and paxos.ours.promise != NO_BALLOT:
            self.at = max(self.at, now + backoff)  # progress: let it finish
        if now < self.at:
            return news, None
        paxos.propose(paxos.participants())
        paxos.think()
        self._seen = paxos.generation
        self.at = now + backoff
        return paxos.ours, paxos.decided()
