r"""One hole punch between two peers: probe every candidate address of the other at once,
for a bounded time, and keep the best path that answers both ways.

Theory of operation
-------------------
The planner (proto/rendezvous.py) creates a ``PunchSession`` once the two peers know each
other's candidates (an OFFER and its ANSWER through the mesh) and the session's keys (from
the offer's secret, proto/punchwire.py). Like the link machine it has three inputs
(``receive`` of an authentic-looking punch datagram with the local socket it arrived on,
``handle_timer``) and three outputs (``datagrams_to_send`` as (datagram, destination,
socket index), ``get_timer``, and ``path`` / ``failure`` once it is decided). Socket 0 is
the router's main UDP socket; 1..SPRAY_SOCKETS are the extra "spray" sockets of the hard
side (below).

Bodies, inside the punchwire frame (kind PROBE or PROBE_ACK, HMAC under the sender's
direction's probe key, so a probe cannot come back to its sender as an answer)::

    PROBE      | probe id u64 | sender u48 | [rtt us u32: a nomination, initiator only] |
    PROBE_ACK  | probe id u64 | sender u48 | family u8 (4 / 6) | ip (4 / 16) | port u16 |
                 the address the ACK's sender saw the probe come from: the prober's
                 mapping towards it (the hard side learns its mapped port from it)

Every PROBE_INTERVAL we probe each target (candidate address, socket) with a new random
probe id. A PROBE is answered at once with a PROBE_ACK to the address and from the socket it
came in on; that address, when it is none of the targets, becomes a *peer-reflexive* target
(the peer's NAT mapping towards us), probed at once ("triggered") and then like the others.
A path (address X, socket s) is verified when the ACK for a probe we sent to X from s
arrives from X on s: both directions of that 5-tuple work. Each probe id is accepted once
(answering a replayed probe, or believing a replayed ACK, would change nothing true), and a
probe id we never sent is refused: a replayed ACK changes nothing.

Nomination (ICE's, in small). Both ends probe and verify, but only the initiator (the
offerer) chooses: the two ends must use the two halves of one 5-tuple pair, since behind a
symmetric NAT or an address-and-port-dependent filter another pair's mapping is not kept
open by the traffic of the chosen one. The initiator sends its choice (X, s) as a PROBE
carrying the path's RTT, each round until its ACK comes; the responder takes (source,
socket) of that probe as its path, which is by construction the other half of the pair the
initiator verified. The initiator's path is final on the ACK of a nomination::

    initiator:
     PROBING ──first verified path──▶ GRACE ──GRACE over──▶ NOMINATING ──its ACK──▶ ANSWERING
        │   └──a host path verified (nothing is better)────────▲    │ end+LINGER        │
        └──PUNCH_DURATION without a verified path: failure ─────────┴──────▶ ENDED ◀────┘
    responder:                                                             LINGER over
     PROBING ──a nomination──▶ ANSWERING ──LINGER──▶ ENDED
        └──PUNCH_DURATION + LINGER without one: failure ──▶ ENDED

Preference: host candidates (a private path around the NATs) > reflexive > peer-reflexive,
then the lower RTT. After the first verified path the initiator waits GRACE for a better
one. Once decided a session only answers the peer's probes until its own end + LINGER: the
peer may still be probing.

Probes per punch, per NAT kind (PUNCH_DURATION 8 s, PROBE_INTERVAL 0.2 s: 40 rounds):

* easy/easy (endpoint-independent mappings, or no NAT): 40 rounds x (candidates + learnt
  peer-reflexive addresses), typically 2-4 addresses: 80-160 probes a side when nothing
  answers, and a handful when a path answers at once (the session stops probing once
  decided, within GRACE).
* hard + easy (one side's NAT maps each destination to a new random port: the port the easy
  side must probe is unknown). Birthday: the hard side opens SPRAY_SOCKETS = 256 extra
  sockets, each probing the easy side's reflexive address (each gets its own random public
  port from its NAT, which also lets the easy side's answers in); the easy side probes
  SPRAY_PORTS = 1024 random ports of the hard side's public IP from its main socket (each
  opens the easy NAT for answers from that port), paced over SPRAY_DELAY..SPRAY_END so
  the hard side's mappings exist before they are hit. With 64512 possible ports,
  P(some sprayed port is one of the 256 mapped) = 1 - (1 - 256/64512)^1024 ~ 1 - e^(-4.06)
  ~ 98 %: the easy side sends 1024 + the normal rounds, the hard side 256 x 4 (every
  SPRAY_REPROBE, so a lost first probe does not lose a socket's chance) + the normal
  rounds: about 1100 and 1100 probes of ~40 bytes (~45 kB a side). Doubling either side
  squares the miss rate, but costs linearly in probes and sockets; 98 % a try, retried
  with backoff, is the trade.
* hard/hard: both ports unknown, each new per destination: 256 x 1024 tries among 64512^2
  port pairs (~0.006 %) is hopeless; the planner does not try when both kinds are known (it
  fails at once, the pair stays relayed). Unknown kinds: see ``roles`` in the planner.

Measured in the simulator (tests/sim/test_punch_sim.py, 100 seeded pairs each, probes a
side in the punch that worked, mean / max): easy/easy 4-5 / 5; hard + easy, both filtering
by address and port, 515 / 1100 (hard) and 349 / 1138 (easy), 1-2 % of first tries missing
(retried after the backoff); hard + easy whose filter lets the hard side's probes in, 262
(hard) and 12.

Nothing here is sent to an address that is neither a candidate given to the session
(authenticated: it came with the offer or answer), nor the source of an authentic probe,
nor (the easy side of a hard pair only) a port of an IP among the hard side's reflexive
candidates. Pure: ``now`` and the ``rng`` come in; probe ids are the rng's.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .peername import MAX_NAME, PeerName
from .punchwire import PunchDrop, PunchKeys, PunchKind, open_datagram, peek_datagram, seal_datagram

Address = tuple[str, int]

PUNCH_DURATION = 8.0
PROBE_INTERVAL = 0.2
GRACE = 0.3
LINGER = 1.0
SPRAY_SOCKETS = 256  # the hard side's extra sockets, socket indexes 1..SPRAY_SOCKETS
SPRAY_PORTS = 1024  # random ports of the hard side's IP the easy side probes, per session
SPRAY_DELAY = 1.0  # the hard side may start up to a mesh round trip later: wait for it
SPRAY_END = 7.0  # the last sprayed port leaves by then (probes need time to be answered)
SPRAY_REPROBE = 2.0  # a spray socket probes again (its first probe may have been lost)
PORT_RANGE = (1024, 65535)  # where NATs allocate public ports (Linux masquerade's range)
MAX_PEER_REFLEXIVE = 8  # learnt addresses probed per session
NOMINATION_MAX = (1 << 32) - 1
MAX_SEEN_PROBES = 16384  # probe ids remembered per session (the peer's sends are bounded)

PROBE_BODY = struct.Struct(">Q6s")
NOMINATION = struct.Struct(">I")  # the initiator's RTT of the chosen path, microseconds
ACK_FAMILY = struct.Struct(">B")
PORT = struct.Struct(">H")

HOST, REFLEXIVE, PEER_REFLEXIVE = "host", "reflexive", "peer-reflexive"
HOW_RANK = {HOST: 0, REFLEXIVE: 1, PEER_REFLEXIVE: 2}


class CandidateKind(enum.IntEnum):
    HOST = 0  # one of the peer's own underlay addresses
    REFLEXIVE = 1  # where the peer's datagrams appear to come from, as an observer saw them


@dataclass(frozen=True, slots=True)
class Candidate:
    kind: CandidateKind
    addr: Address

    @property
    def how(self) -> str:
        return HOST if self.kind is CandidateKind.HOST else REFLEXIVE


@dataclass(frozen=True, slots=True)
class Path:
    """A verified path: send to ``addr`` from our socket ``sock``."""

    addr: Address
    sock: int
    how: str  # "host" / "reflexive" / "peer-reflexive"
    rtt: float


class SessionState(enum.Enum):
    """What the session waits for."""

    PROBING = "an answer to any of our probes"
    GRACE = "a better path than the one verified (for GRACE; the initiator)"
    NOMINATING = "the answer to our nomination of the chosen path (the initiator)"
    ANSWERING = "nothing of its own: it answers the peer's last probes until LINGER is over"
    ENDED = "nothing: the session is over"


# --- bodies ---------------------------------------------------------------------------------


def encode_probe(probe_id: int, sender: PeerName, nominate_rtt: float | None = None) -> bytes:
    body = PROBE_BODY.pack(probe_id, sender.to_bytes(6, "big"))
    if nominate_rtt is None:
        return body
    return body + NOMINATION.pack(min(NOMINATION_MAX, max(0, round(nominate_rtt * 1e6))))


def _head(body: bytes, what: str) -> tuple[int, PeerName]:
    probe_id, raw = PROBE_BODY.unpack_from(body)
    sender = int.from_bytes(raw, "big")
    if not 0 < sender <= MAX_NAME:
        raise PunchDrop("malformed", f"{what}: bad sender")
    return probe_id, sender


def decode_probe(body: bytes) -> tuple[int, PeerName, float | None]:
    """Probe id, sender, and the nominated path's RTT (None: not a nomination)."""
    if len(body) == PROBE_BODY.size:
        return (*_head(body, "probe"), None)
    if len(body) != PROBE_BODY.size + NOMINATION.size:
        raise PunchDrop("malformed", "probe body of the wrong size")
    (rtt_us,) = NOMINATION.unpack_from(body, PROBE_BODY.size)
    return (*_head(body, "probe"), rtt_us / 1e6)


def encode_probe_ack(probe_id: int, sender: PeerName, seen: Address) -> bytes:
    ip = ipaddress.ip_address(seen[0])
    return (PROBE_BODY.pack(probe_id, sender.to_bytes(6, "big"))
            + ACK_FAMILY.pack(ip.version) + ip.packed + PORT.pack(seen[1]))


def decode_probe_ack(body: bytes) -> tuple[int, PeerName, Address]:
    if len(body) < PROBE_BODY.size + 1:
        raise PunchDrop("malformed", "probe ack body too short")
    probe_id, sender = _head(body, "probe ack")
    family = body[PROBE_BODY.size]
    size = {4: 4, 6: 16}.get(family)
    if size is None or len(body) != PROBE_BODY.size + 1 + size + PORT.size:
        raise PunchDrop("malformed", "probe ack: bad address")
    start = PROBE_BODY.size + 1
    raw = body[start:start + size]
    ip = ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)
    (port,) = PORT.unpack_from(body, start + size)
    if port == 0:
        raise PunchDrop("malformed", "probe ack: port 0")
    return probe_id, sender, (str(ip), port)


# --- the session ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    how: str
    every: float
    next_at: float
    last_sent: float = float("-inf")


class PunchSession:
    """One punch with ``peer`` (see the module docstring). ``theirs``: the peer's candidates;
    ``we_hard`` / ``they_hard``: whose NAT maps per destination (the planner never makes a
    session where both are)."""

    def __init__(self, *, me: PeerName, peer: PeerName, session: int, keys: PunchKeys,
                 initiator: bool, theirs: Sequence[Candidate], we_hard: bool, they_hard: bool,
                 rng: random.Random, now: float) -> None:
        self.me = me
        self.peer = peer
        self.session = session
        self.keys = keys
        self.initiator = initiator
        self.we_hard = we_hard
        self.they_hard = they_hard
        self.started = now
        self.ends = now + PUNCH_DURATION
        self.state = SessionState.PROBING
        self.path: Path | None = None
        self.failure: str | None = None
        self.probes_sent = 0
        self.mapped: dict[int, Address] = {}  # socket -> where the peer saw its probes from
        self.mapped_at: dict[int, Address] = {}  # socket -> where that peer was (the ACK's source)
        self._rng = rng
        self._out: list[tuple[bytes, Address, int]] = []
        self._targets: dict[tuple[Address, int], _Target] = {}
        self._tried: set[tuple[Address, int]] = set()
        self._pending: dict[int, tuple[Address, int, float, str]] = {}
        self._seen_probes: set[int] = set()
        self._verified: dict[tuple[Address, int], Path] = {}
        self._peer_reflexive = 0
        self._chosen: Path | None = None
        self._nominations: set[int] = set()  # ids of our nominating probes
        self._grace_end = 0.0
        self._linger_end = 0.0
        for c in theirs:
            self._targets.setdefault((c.addr, 0), _Target(c.how, PROBE_INTERVAL, now))
        reflexive = sorted({c.addr for c in theirs if c.kind is CandidateKind.REFLEXIVE})
        # hard side: each spray socket probes the easy side's reflexive address(es)
        self.spray_sockets = SPRAY_SOCKETS if we_hard and not they_hard and reflexive else 0
        for addr in reflexive if self.spray_sockets else ():
            for sock in range(1, self.spray_sockets + 1):
                self._targets[(addr, sock)] = _Target(REFLEXIVE, SPRAY_REPROBE, now)
        # easy side of a hard pair: random ports of the hard side's public IP(s)
        self._spray: list[Address] = []
        ips = sorted({a[0] for a in reflexive})
        if they_hard and not we_hard and ips:
            ports = rng.sample(range(PORT_RANGE[0], PORT_RANGE[1] + 1), SPRAY_PORTS)
            self._spray = [(ips[i % len(ips)], p) for i, p in enumerate(ports)]
        self._sprayed = 0
        self._rounds = 0
        self._next_tick = now
        self._tick(now)

    # --- state --------------------------------------------------------------------------

    @property
    def probing(self) -> bool:
        return self.state in (SessionState.PROBING, SessionState.GRACE,
                              SessionState.NOMINATING)

    @property
    def ended(self) -> bool:
        return self.state is SessionState.ENDED

    @property
    def tried(self) -> int:
        """Addresses probed so far (each (address, socket) once)."""
        return len(self._tried)

    def allowed(self, addr: Address) -> bool:
        """Whether this session may send to ``addr`` (what the module docstring promises)."""
        return (any(a == addr for a, _ in self._targets)
                or any(a == addr for a in self._spray))

    # --- inputs -------------------------------------------------------------------------

    def receive(self, datagram: bytes | bytearray | memoryview, addr: Address, sock: int,
                now: float) -> None:
        """A punch datagram of this session from ``addr`` on our socket ``sock``; raises
        PunchDrop (a RemoteProtocolError) with the reason when it is refused."""
        kind, _ = peek_datagram(datagram)
        if self.state is SessionState.ENDED:
            raise PunchDrop("session over")
        if kind is PunchKind.STREAM:
            raise PunchDrop("not a probe")
        body = open_datagram(datagram, self.keys.probe_recv)
        if kind is PunchKind.PROBE:
            self._on_probe(body, addr, sock, now)
        else:
            self._on_ack(body, addr, sock, now)

    def handle_timer(self, now: float) -> None:
        if self.state is SessionState.PROBING and now >= self._probing_end():
            if self._verified and not self.initiator:
                self.failure = "the peer nominated no path"
            else:
                self.failure = (f"no answer to {self.probes_sent} probes to {self.tried} "
                                f"addresses in {PUNCH_DURATION:g}s")
            self.state = SessionState.ENDED
        elif self.state is SessionState.NOMINATING and now >= self.ends + LINGER:
            self.failure = "the peer did not confirm the path we chose"
            self.state = SessionState.ENDED
        if self.probing and now >= self._next_tick:
            self._tick(now)
        if self.state is SessionState.GRACE and now >= self._grace_end:
            self._decide(now)
        elif self.state is SessionState.ANSWERING and now >= self._linger_end:
            self.state = SessionState.ENDED

    def end(self) -> None:
        """Stop now (the peers are connected some other way, or the planner gave up)."""
        self.state = SessionState.ENDED

    # --- outputs ------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address, int]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        if self.state is SessionState.PROBING:
            return min(self._next_tick, self._probing_end())
        if self.state is SessionState.GRACE:
            return min(self._next_tick, self._grace_end)
        if self.state is SessionState.NOMINATING:
            return min(self._next_tick, self.ends + LINGER)
        if self.state is SessionState.ANSWERING:
            return self._linger_end
        return None

    # --- the machine --------------------------------------------------------------------

    def _probing_end(self) -> float:
        # the responder waits for a nomination a little longer than the initiator probes
        return self.ends if self.initiator else self.ends + LINGER

    def _tick(self, now: float) -> None:
        # rounds keep to the tick schedule (not to when the timer fired), and a target due
        # within half a round goes now: a triggered probe shifts nobody by a whole round
        tick = self._next_tick
        targets = self._targets
        if self.state is SessionState.NOMINATING and self._chosen is not None:
            self._send_probe(self._chosen.addr, self._chosen.sock, self._chosen.how, now,
                             nominate=self._chosen.rtt)
            targets = {}  # nothing else: the choice is made
        for (addr, sock), target in targets.items():
            if target.next_at <= tick + PROBE_INTERVAL / 2:
                self._probe(addr, sock, target, now, tick)
        if self._spray and self.state is not SessionState.NOMINATING:
            window = (tick - self.started - SPRAY_DELAY) / (SPRAY_END - SPRAY_DELAY)
            due = math.ceil(len(self._spray) * min(1.0, window) - 1e-9) if window >= 0 else 0
            for addr in self._spray[self._sprayed:due]:
                self._send_probe(addr, 0, PEER_REFLEXIVE, now)
            self._sprayed = max(self._sprayed, due)
        self._rounds += 1
        self._next_tick = self.started + self._rounds * PROBE_INTERVAL
        while self._next_tick <= now:  # a late timer: skip the rounds missed
            self._rounds += 1
            self._next_tick = self.started + self._rounds * PROBE_INTERVAL

    def _probe(self, addr: Address, sock: int, target: _Target, now: float,
               tick: float | None = None) -> None:
        target.last_sent = now
        target.next_at = (now if tick is None else tick) + target.every
        self._send_probe(addr, sock, target.how, now)

    def _send_probe(self, addr: Address, sock: int, how: str, now: float,
                    nominate: float | None = None) -> None:
        probe_id = self._rng.getrandbits(64)
        self._pending[probe_id] = (addr, sock, now, how)
        if nominate is not None:
            self._nominations.add(probe_id)
        self._tried.add((addr, sock))
        self.probes_sent += 1
        self._out.append((seal_datagram(PunchKind.PROBE, self.session,
                                        encode_probe(probe_id, self.me, nominate),
                                        self.keys.probe_send), addr, sock))

    def _on_probe(self, body: bytes, addr: Address, sock: int, now: float) -> None:
        probe_id, sender, nominated = decode_probe(body)
        if sender != self.peer:
            raise PunchDrop("wrong sender")
        if nominated is not None and self.initiator:
            raise PunchDrop("nomination from the responder")
        if probe_id in self._seen_probes:
            raise PunchDrop("replayed probe")
        if len(self._seen_probes) >= MAX_SEEN_PROBES:
            raise PunchDrop("too many probes")
        self._seen_probes.add(probe_id)
        self._out.append((seal_datagram(PunchKind.PROBE_ACK, self.session,
                                        encode_probe_ack(probe_id, self.me, addr),
                                        self.keys.probe_send), addr, sock))
        if not self.probing:
            return
        key = (addr, sock)
        target = self._targets.get(key)
        if nominated is not None:
            # the initiator verified the pair (its socket, this address of ours) both ways:
            # our side of that very pair is (addr, sock), whatever we verified ourselves
            self.path = Path(addr, sock, target.how if target else PEER_REFLEXIVE, nominated)
            self._answer_until(now)
            return
        if self.state is SessionState.NOMINATING:
            return
        if target is None and self._peer_reflexive < MAX_PEER_REFLEXIVE:
            # the peer's mapping towards this socket of ours: authentic, so worth a probe
            self._peer_reflexive += 1
            target = self._targets[key] = _Target(PEER_REFLEXIVE, PROBE_INTERVAL, now)
        if target is None:
            return
        # the way in is open now: probe at once (triggered), then every round (a spray
        # socket's target too: its slow pace was for holding a mapping open, not this)
        target.every = PROBE_INTERVAL
        if now - target.last_sent >= PROBE_INTERVAL / 2:
            self._probe(addr, sock, target, now)
        else:
            target.next_at = min(target.next_at, target.last_sent + PROBE_INTERVAL)

    def _on_ack(self, body: bytes, addr: Address, sock: int, now: float) -> None:
        probe_id, sender, seen = decode_probe_ack(body)
        if sender != self.peer:
            raise PunchDrop("wrong sender")
        sent = self._pending.get(probe_id)
        if sent is None:
            raise PunchDrop("unknown or replayed probe ack")
        to, from_sock, sent_at, how = sent
        if (to, from_sock) != (addr, sock):
            # kept: a copy raced from elsewhere must not spoil the genuine answer
            raise PunchDrop("probe ack from another address")
        del self._pending[probe_id]
        self.mapped[sock], self.mapped_at[sock] = seen, addr
        if self.state is SessionState.NOMINATING:
            if probe_id in self._nominations:
                self.path = self._chosen
                self._answer_until(now)
            return
        if not self.probing:
            return
        self._verified.setdefault((addr, sock), Path(addr, sock, how, now - sent_at))
        if not self.initiator:
            return  # the responder takes the path the initiator nominates
        if how == HOST:
            self._decide(now)  # nothing is better than a path around the NATs
        elif self.state is SessionState.PROBING:
            self.state = SessionState.GRACE
            self._grace_end = now + GRACE

    def _decide(self, now: float) -> None:
        """The initiator's choice: nominate it to the responder, until it answers."""
        self._chosen = min(self._verified.values(),
                           key=lambda p: (HOW_RANK[p.how], p.rtt, p.addr, p.sock))
        self.state = SessionState.NOMINATING
        self._send_probe(self._chosen.addr, self._chosen.sock, self._chosen.how, now,
                         nominate=self._chosen.rtt)

    def _answer_until(self, now: float) -> None:
        self.state = SessionState.ANSWERING
        self._linger_end = max(now, self.ends) + LINGER

