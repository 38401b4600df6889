r"""The punch planner: candidates, rendezvous through the mesh, and one punch session per peer.

Theory of operation
-------------------
One ``Rendezvous`` per router (aioquic-style: inputs ``set_host_candidates``,
``link_address``, ``want``, ``direct``, ``on_message``, ``receive``, ``handle_timer``;
outputs ``messages_to_send``, ``datagrams_to_send``, ``sockets_wanted``, ``next_event``,
``get_timer``, ``status``, ``report``). The punch itself is proto/punch.py's.

Candidates. *Host*: our own underlay addresses with our UDP port (the daemon's). *Reflexive*:
every direct peer tells us, by a SEEN message, the address our sleeve datagrams come from
(the daemon calls ``link_address`` when its link to a peer learns or changes the peer's
address; we then send the peer SEEN{addr}). Our mapping kind: observers at >= 2 different IPs
that see the same public IP with different ports: "hard" (the NAT maps per destination);
at >= 2 IPs and no such difference: "easy"; seen only at our own addresses: "easy" (no NAT);
else "unknown". Observations equal to a host candidate (a peer behind the same gateway, or
no NAT) say nothing of a NAT and are not reflexive candidates; nor is what a peer sees of
us over a path punched from one of our spray sockets. A punch's probe answers tell the same
as a SEEN (the PROBE_ACK says where our main socket's probe came from, as the peer saw it):
they count as the observation of that peer when it sent no SEEN, so a router with a single
public peer learns its kind from its first punches.

Roles. Who opens spray sockets (acts "hard") and who sprays ports (proto/punch.py) follows
from both kinds, as each side sent them, and the offer's ``attempt`` (the offerer's failed
tries with this peer since the last success), by ``roles``: both hard: no punch; one hard:
it; both known easy, or the first attempt: nobody. Otherwise an unknown kind may hide a
symmetric NAT (one public peer sees us from one destination only): from the second attempt
on, the unknown side acts hard; two unknown sides take turns, the lower PeerName on odd
attempts. So one symmetric NAT behind a single introducer costs a failed try or two.

Messages (mesh unicast on gossip channel ``CHANNEL``; wire format in
proto/rendezvous_codec.py): SEEN{addr} "your datagrams come from addr", OFFER{session,
secret, candidates, kind, attempt} "let's punch", ANSWER{session, candidates, kind},
CANCEL{session, reason} (busy, or gave up).

The offer's secret travels only over authenticated, encrypted control connections (hop by
hop), so only holders of the mesh password learn it, and every probe is authenticated under
keys derived from it: nobody else can make us probe anything.

Per peer::

                 want, retry due          ANSWER            path chosen and confirmed
      RELAYED ───────────────────▶ OFFERED ──────▶ PROBING ──────────────────▶ PUNCHED
         ▲  ▲    OFFER accepted ───────────────────▶ │ (both hard: fail at once)   │ direct()
         │  └─────── failure: backoff ◀──────────────┘◀── no answer ANSWER_TIMEOUT ▼
         └──────────────────────────────────────────────────────────────────── DIRECT

Policy. One session per peer. Both offer at once: the offer of the higher PeerName wins (the
lower answers it and drops its own; the higher ignores the lower's). An offer is accepted
from a peer at most every OFFER_MIN_INTERVAL and while fewer than MAX_SESSIONS sessions run
(else CANCEL "busy"). Both hard: no punch, both fail at once with BOTH_HARD. A failure backs
off per peer: BACKOFF_INITIAL doubling to BACKOFF_MAX, times a jitter in [1, 1.25) from the
rng; ``direct`` resets it. Malformed or unwanted messages and datagrams are counted in
``drops`` by reason and never raise.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import RemoteProtocolError
from .peername import PeerName, format_peer_name
from .punch import SPRAY_SOCKETS, Address, Candidate, CandidateKind, PunchSession
from .punchwire import SECRET_LEN, PunchKeys, PunchKind, derive_keys, peek_datagram
from .rendezvous_codec import (
    CHANNEL,
    KINDS,
    MAX_ATTEMPT,
    MAX_CANDIDATES,
    MAX_PAYLOAD,
    MAX_REASON,
    Answer,
    Cancel,
    Message,
    Offer,
    Seen,
    decode_message,
    encode_message,
    valid_address,
)

__all__ = [  # the codec's names are the planner's too
    "BOTH_HARD", "CHANNEL", "KINDS", "MAX_ATTEMPT", "MAX_CANDIDATES", "MAX_PAYLOAD",
    "MAX_REASON", "Answer", "Cancel", "Message", "Offer", "PathPunched", "PunchFailed",
    "Rendezvous", "Seen", "decode_message", "encode_message", "roles", "valid_address",
]

MAX_HOST = 8
MAX_REFLEXIVE = 8
MAX_OBSERVERS = 32
MAX_SESSIONS = 16
OFFER_MIN_INTERVAL = 3.0
ANSWER_TIMEOUT = 5.0
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
PUNCHED_HOLD = 30.0  # a punched path must carry a connection (direct()) by then
BOTH_HARD = "both behind endpoint-dependent (symmetric) NATs"


def roles(kind_low: str, kind_high: str, attempt: int) -> tuple[bool, bool] | None:
    """Who acts hard (opens spray sockets): (the lower PeerName, the higher), from the kinds
    both sent and the offer's attempt; None when both are hard (see the module docstring)."""
    kinds = (kind_low, kind_high)
    if kinds == ("hard", "hard"):
        return None
    if "hard" in kinds:
        return kind_low == "hard", kind_high == "hard"
    unknown = (kind_low == "unknown", kind_high == "unknown")
    if attempt == 0 or not any(unknown):
        return False, False
    if all(unknown):
        return attempt % 2 == 1, attempt % 2 == 0
    return unknown


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathPunched:
    """Both ends hold the two halves of one verified 5-tuple pair (the initiator's choice,
    nominated to the responder and confirmed): the initiator's event comes when the
    responder answered the nomination, the responder's when it got it. Send the stream to
    ``addr`` from socket ``sock``, and keep that socket open while the path is used."""

    peer: PeerName
    session: int
    addr: Address  # send to the peer here
    sock: int  # from this socket of ours (0: the main one; the daemon keeps it open)
    keys: PunchKeys
    initiator: bool  # we offered: the outbound side of the connection over the path
    how: str  # "host" / "reflexive" / "peer-reflexive"
    rtt: float


@dataclass(frozen=True, slots=True)
class PunchFailed:
    peer: PeerName
    reason: str
    retry_at: float


RendezvousEvent = PathPunched | PunchFailed


# --- the planner -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Offered:
    session: int
    secret: bytes
    deadline: float
    kind: str  # ours, as the offer said it
    attempt: int


@dataclass(slots=True)
class _Peer:
    offered: _Offered | None = None  # our offer, waiting for its answer
    punch: PunchSession | None = None
    attempt: int = 0
    retry_at: float = 0.0
    reason: str = ""
    last_accepted: float = float("-inf")
    punched: PathPunched | None = None
    punched_at: float = 0.0
    tried: int = 0
    probes: int = 0


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


@dataclass(slots=True)
class Counters:
    attempts: int = 0
    direct: int = 0
    failed: int = 0
    probes_sent: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    @property
    def outcomes(self) -> dict[str, int]:
        return {"direct": self.direct, "failed": self.failed}


class Rendezvous:
    """The punch planner of one router (see the module docstring)."""

    def __init__(self, *, me: PeerName, port: int, rng: random.Random,
                 random_bytes: Callable[[int], bytes], now: float) -> None:
        self.me = me
        self.port = port
        self.counters = Counters()
        self._rng = rng
        self._random_bytes = random_bytes
        self._host: list[Address] = []
        self._links: dict[PeerName, Address] = {}
        self._observed: dict[PeerName, Address] = {}  # observer -> where it sees us
        self._acked: dict[PeerName, tuple[Address, Address]] = {}  # punch: (peer at, us seen)
        self._via_spray: set[PeerName] = set()
        self._wanted: set[PeerName] = set()
        self._direct: set[PeerName] = set()
        self._peers: dict[PeerName, _Peer] = {}
        self._sessions: dict[int, PeerName] = {}
        self._messages: list[tuple[PeerName, bytes]] = []
        self._datagrams: list[tuple[bytes, Address, int]] = []
        self._events: deque[RendezvousEvent] = deque()

    # --- candidates -----------------------------------------------------------------------

    def set_host_candidates(self, addrs: list[Address]) -> None:
        self._host = [a for a in dict.fromkeys(addrs) if valid_address(*a) is not None]

    def link_address(self, peer: PeerName, addr: Address | None, now: float) -> None:
        if addr is None:
            self._links.pop(peer, None)
            return
        if self._links.get(peer) != addr:
            self._links[peer] = addr
            if valid_address(*addr) is not None:
                self._send(peer, Seen(addr))

    def candidates(self) -> tuple[Candidate, ...]:
        host = [Candidate(CandidateKind.HOST, a) for a in self._host[:MAX_HOST]]
        refl = sorted({seen for _, seen in self._reflexive().values()})[:MAX_REFLEXIVE]
        return tuple(host + [Candidate(CandidateKind.REFLEXIVE, a) for a in refl])

    def _reflexive(self) -> dict[PeerName, tuple[Address | None, Address]]:
        """Observations that tell of a NAT, by observer: (where the observer is, if we know,
        where it sees us); see the module docstring."""
        host = set(self._host)
        obs = {p: (self._links.get(p), seen) for p, seen in self._observed.items()}
        for p, (at, seen) in self._acked.items():
            obs.setdefault(p, (at, seen))
        return {p: o for p, o in sorted(obs.items())
                if o[1] not in host and p not in self._via_spray}

    def mapping(self) -> str:
        """"hard", "easy" or "unknown" (see the module docstring)."""
        # only observers we know the address of: a per-destination NAT needs 2 destinations
        reflexive = self._reflexive()
        obs = [(at, seen) for at, seen in reflexive.values() if at is not None]
        if not reflexive and set(self._observed.values()) & set(self._host):
            return "easy"  # seen at our own address: no NAT on the way
        if len({observer[0] for observer, _ in obs}) < 2:
            return "unknown"
        ports: dict[str, set[int]] = {}
        for _, seen in obs:
            ports.setdefault(seen[0], set()).add(seen[1])
        return "hard" if any(len(p) > 1 for p in ports.values()) else "easy"

    # --- what the daemon decides ------------------------------------------------------------

    def want(self, peers: set[PeerName], now: float) -> None:
        self._wanted = set(peers) - {self.me}
        self._start_offers(now)

    def direct(self, peers: set[PeerName], now: float) -> None:
        for gone in sorted(self._direct - peers):
            self._observed.pop(gone, None)  # its view of us ended with the link
            self._acked.pop(gone, None)
            self._via_spray.discard(gone)
            if gone in self._peers:
                self._peers[gone].punched = None  # a new punch may be needed
        self._direct = set(peers)
        for peer in sorted(peers):
            state = self._peers.get(peer)
            if state is None:
                continue
            self._end(peer, state)
            state.attempt, state.retry_at, state.reason = 0, 0.0, ""
        self._start_offers(now)

    # --- inputs from the network --------------------------------------------------------------

    def on_message(self, src: PeerName, payload: bytes, now: float) -> None:
        try:
            msg = decode_message(payload)
        except RemoteProtocolError:
            self._drop("malformed message")
            return
        if src == self.me:
            self._drop("message from ourselves")
        elif isinstance(msg, Seen):
            self._on_seen(src, msg)
        elif isinstance(msg, Offer):
            self._on_offer(src, msg, now)
        elif isinstance(msg, Answer):
            self._on_answer(src, msg, now)
        else:
            self._on_cancel(src, msg, now)
        self._service(now)

    def receive(self, datagram: bytes | memoryview, addr: Address, sock: int,
                now: float) -> bool:
        try:
            kind, session = peek_datagram(datagram)
        except RemoteProtocolError as exc:
            self._drop(exc.reason)
            return False
        if kind is PunchKind.STREAM:
            return False  # the daemon's, not ours
        peer = self._sessions.get(session)
        state = self._peers.get(peer) if peer is not None else None
        punch = state.punch if state is not None else None
        if punch is None or punch.session != session or not 0 <= sock <= SPRAY_SOCKETS:
            self._drop("unknown session")
            return False
        try:
            punch.receive(datagram, addr, sock, now)
        except RemoteProtocolError as exc:
            self._drop(exc.reason)
            ok = False
        else:
            ok = True
        self._service(now)
        return ok

    def handle_timer(self, now: float) -> None:
        for peer in sorted(self._peers):
            state = self._peers[peer]
            if state.offered is not None and now >= state.offered.deadline:
                self._fail(peer, state, now,
                           f"no answer to our offer within {ANSWER_TIMEOUT:g}s")
            if (state.punched is not None and peer not in self._direct
                    and now >= state.punched_at + PUNCHED_HOLD):
                self._fail(peer, state, now, "the punched path carried no connection "
                           f"within {PUNCHED_HOLD:g}s")
            punch = state.punch
            if punch is not None:
                due = punch.get_timer()
                if due is not None and now >= due:
                    punch.handle_timer(now)
        self._service(now)

    # --- outputs ----------------------------------------------------------------------------

    def messages_to_send(self) -> list[tuple[PeerName, bytes]]:
        out, self._messages = self._messages, []
        return out

    def datagrams_to_send(self) -> list[tuple[bytes, Address, int]]:
        out, self._datagrams = self._datagrams, []
        return out

    def sockets_wanted(self) -> int:
        return max((s.punch.spray_sockets for s in self._peers.values()
                    if s.punch is not None and s.punch.probing), default=0)

    def next_event(self) -> RendezvousEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times: list[float] = []
        for peer, state in self._peers.items():
            if state.offered is not None:
                times.append(state.offered.deadline)
            if state.punched is not None and peer not in self._direct:
                times.append(state.punched_at + PUNCHED_HOLD)
            if state.punch is not None and (t := state.punch.get_timer()) is not None:
                times.append(t)
        if self._active() < MAX_SESSIONS:
            times += [self._peers[p].retry_at if p in self._peers else 0.0
                      for p in self._wanted if self._may_offer(p)]
        return min(times) if times else None

    def status(self, now: float) -> dict[PeerName, dict[str, Any]]:
        out: dict[PeerName, dict[str, Any]] = {}
        for peer in sorted(set(self._peers) | self._wanted):
            state = self._peers.get(peer) or _Peer()
            retry: float | None = None
            if peer in self._direct:
                what, reason = "direct", "connected"
            elif state.offered is not None:
                what, reason = "probing", "offered a punch, waiting for the answer"
            elif state.punch is not None and state.punch.probing:
                what, reason = "probing", f"probing {state.punch.tried} addresses"
            elif state.punched is not None:
                p = state.punched
                what, reason = "direct", f"punched ({p.how} path {_fmt(p.addr)})"
            else:
                what, reason = "relayed", state.reason or "waiting to punch"
                if peer in self._wanted:
                    retry = max(0.0, state.retry_at - now)
            out[peer] = {"state": what, "reason": reason, "next_retry": retry,
                         "candidates_tried": state.tried, "probes_sent": state.probes}
        return out

    def report(self) -> dict[str, Any]:
        c = self.counters
        return {
            "candidates": {
                "host": [_fmt(a) for a in self._host],
                "reflexive": {format_peer_name(p): _fmt(seen) for p, seen in sorted(
                    ({p: a for p, (_, a) in self._acked.items()} | self._observed).items())},
            },
            "mapping": self.mapping(),
            "counters": {"attempts": c.attempts, "outcomes": c.outcomes,
                         "drops": dict(sorted(c.drops.items())),
                         "probes_sent": c.probes_sent},
        }

    # --- messages ---------------------------------------------------------------------------

    def _on_seen(self, src: PeerName, msg: Seen) -> None:
        if src not in self._observed and len(self._observed) >= MAX_OBSERVERS:
            self._drop("too many observers")
            return
        self._observed[src] = msg.addr

    def _on_offer(self, src: PeerName, msg: Offer, now: float) -> None:
        state = self._peers.get(src) or _Peer()  # kept only if the offer is taken
        current = (state.offered.session if state.offered is not None
                   else state.punch.session if state.punch is not None else None)
        if current == msg.session:
            self._drop("duplicate offer")
            return
        ours = state.offered is not None or (state.punch is not None and state.punch.probing
                                             and state.punch.initiator)
        if ours and self.me > src:
            self._drop("crossed offers: ours wins")
            return
        if src in self._direct:
            self._drop("offer from a direct peer")
            return
        if now - state.last_accepted < OFFER_MIN_INTERVAL:
            self._drop("offer rate limited")
            return
        if self._active(besides=src) >= MAX_SESSIONS:
            self._drop("too many sessions")
            self._send(src, Cancel(msg.session, "busy"))
            return
        self._end(src, state)  # the higher peer's offer wins over our own
        self._peers[src] = state
        state.last_accepted = now
        kind = self.mapping()
        self._send(src, Answer(msg.session, self.candidates(), kind))
        self._begin(src, state, msg.session, msg.secret, msg.candidates, kind, msg.kind,
                    msg.attempt, initiator=False, now=now)

    def _on_answer(self, src: PeerName, msg: Answer, now: float) -> None:
        state = self._peers.get(src) or _Peer()
        offered = state.offered
        if offered is None or offered.session != msg.session:
            self._drop("answer to no offer of ours")
            self._send(src, Cancel(msg.session, "no such offer"))  # stop its probes now
            return
        state.offered = None
        self._begin(src, state, offered.session, offered.secret, msg.candidates, offered.kind,
                    msg.kind, offered.attempt, initiator=True, now=now)

    def _on_cancel(self, src: PeerName, msg: Cancel, now: float) -> None:
        state = self._peers.get(src) or _Peer()
        current = (state.offered.session if state.offered is not None
                   else state.punch.session if state.punch is not None
                   and state.punch.probing else None)
        if current != msg.session:
            self._drop("cancel of no session")
            return
        self._fail(src, state, now, f"the peer cancelled: {msg.reason}")

    # --- sessions ---------------------------------------------------------------------------

    def _state(self, peer: PeerName) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer()
        return state

    def _active(self, besides: PeerName | None = None) -> int:
        return sum(1 for p, s in self._peers.items() if p != besides
                   and (s.offered is not None or (s.punch is not None and not s.punch.ended)))

    def _may_offer(self, peer: PeerName) -> bool:
        state = self._peers.get(peer)
        return (peer not in self._direct and (state is None or (
            state.offered is None and state.punch is None and state.punched is None)))

    def _start_offers(self, now: float) -> None:
        for peer in sorted(self._wanted):
            if self._active() >= MAX_SESSIONS:
                return
            if not self._may_offer(peer) or self._state(peer).retry_at > now:
                continue
            state = self._state(peer)
            session = int.from_bytes(self._random_bytes(8), "big") or 1
            secret = self._random_bytes(SECRET_LEN)
            kind, attempt = self.mapping(), min(state.attempt, MAX_ATTEMPT)
            state.offered = _Offered(session, secret, now + ANSWER_TIMEOUT, kind, attempt)
            state.reason = ""
            self._send(peer, Offer(session, secret, self.candidates(), kind, attempt))

    def _begin(self, peer: PeerName, state: _Peer, session: int, secret: bytes,
               theirs: tuple[Candidate, ...], ours: str, their_kind: str, attempt: int, *,
               initiator: bool, now: float) -> None:
        state.punched = None
        self.counters.attempts += 1
        low_first = self.me < peer
        who = roles(*((ours, their_kind) if low_first else (their_kind, ours)), attempt)
        if who is None:
            self._fail(peer, state, now, BOTH_HARD)
            return
        we_hard, they_hard = who if low_first else who[::-1]
        state.punch = PunchSession(
            me=self.me, peer=peer, session=session,
            keys=derive_keys(secret, initiator=initiator), initiator=initiator,
            theirs=theirs, we_hard=we_hard, they_hard=they_hard,
            rng=random.Random(self._rng.getrandbits(64)), now=now)
        self._sessions[session] = peer

    def _end(self, peer: PeerName, state: _Peer) -> None:
        """Forget the peer's offer and session, quietly (no event)."""
        state.offered = None
        if state.punch is not None:
            self._collect(state)
            state.punch.end()
            self._sessions.pop(state.punch.session, None)
            state.punch = None

    def _fail(self, peer: PeerName, state: _Peer, now: float, reason: str) -> None:
        if state.offered is not None:
            self.counters.attempts += 1  # an offer that never became a session
        self._end(peer, state)
        state.punched = None
        state.attempt += 1
        delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (state.attempt - 1))
        state.retry_at = now + delay * self._rng.uniform(1.0, 1.25)
        state.reason = reason
        self.counters.failed += 1
        self._events.append(PunchFailed(peer, reason, state.retry_at))

    def _collect(self, state: _Peer) -> None:
        punch = state.punch
        if punch is None:
            return
        self.counters.probes_sent += punch.probes_sent - state.probes
        state.tried, state.probes = punch.tried, punch.probes_sent
        if 0 in punch.mapped:
            self._acked[punch.peer] = (punch.mapped_at[0], punch.mapped[0])
        for out in punch.datagrams_to_send():
            self._datagrams.append(out)

    def _service(self, now: float) -> None:
        """After any input: collect the sessions' output, report what they decided."""
        for peer in sorted(self._peers):
            state = self._peers[peer]
            punch = state.punch
            if punch is None:
                continue
            self._collect(state)
            if punch.path is not None and state.punched is None:
                p = punch.path
                state.punched = PathPunched(peer, punch.session, p.addr, p.sock, punch.keys,
                                            punch.initiator, p.how, p.rtt)
                state.punched_at = now
                state.attempt, state.retry_at, state.reason = 0, 0.0, ""
                if p.sock != 0:
                    self._via_spray.add(peer)
                self.counters.direct += 1
                self._events.append(state.punched)
            if punch.failure is not None:
                self._fail(peer, state, now, punch.failure)
            elif punch.ended:
                self._sessions.pop(punch.session, None)
                state.punch = None
        self._start_offers(now)

    def _send(self, peer: PeerName, msg: Message) -> None:
        self._messages.append((peer, encode_message(msg)))

    def _drop(self, reason: str) -> None:
        self.counters.drops[reason] += 1

