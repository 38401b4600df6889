r"""The link machine: whether one mesh connection's UDP path works, and what size it carries.

Theory of operation
-------------------
Per mesh connection the data plane keeps a *link*: the peer's UDP address and a sleeve
session. This machine holds everything about the link that is protocol rather than I/O.
Like aioquic's connection it has three inputs and three outputs: the engine
(router/dataplane/engine.py) opens each datagram with the session and gives ``receive``
what was authentic, calls ``handle_timer(now)`` at ``get_timer()`` and reports a probe the
kernel refused (``probe_send_failed``); it seals and sends what ``datagrams_to_send``
returns and acts on ``next_event`` (past-tense events).

A connection counts as established in the topology only once UDP works both ways: the
dialling side sends heartbeats to the address it dialled (every ``HEARTBEAT_FAST``), the
other side learns the dialler's address from them, answers each (HEARTBEAT_ACK) and sends
its own; an answer proves both directions, and heartbeats slow down (``HEARTBEAT_SLOW``).
Any authenticated datagram but a path probe from a new address moves the link there (NAT
rebinding: authenticated, so following it is safe). ``LINK_TIMEOUT`` without any datagram
takes the link down (routes go around it) until an answer comes once more; so does
``SEND_TIMEOUT`` of silence while we send DATA (``data_sent``): a live peer answers
within a heartbeat, so from ``SUSPECT_AFTER`` of such silence we send heartbeats every
HEARTBEAT_FAST, and the path's end (a NAT that rebound the peer's mapping, a punched
hole that closed) costs the traffic seconds, not LINK_TIMEOUT. The state is
what the machine waits for::

      inbound ──▶ PEER_HEARTBEAT ──(a datagram: address learnt)──▶ ANSWER ◀── outbound
                                                                    │  ▲
                                                     HEARTBEAT_ACK  │  │  LINK_TIMEOUT
                                                                    ▼  │  of silence
                                                                    UP ┘

While not UP the link says why (``down_reason``): "waiting for the peer's UDP heartbeat",
"no answer to UDP heartbeats yet", or, once ``NO_ANSWER_AFTER`` seconds passed without a
word, "no UDP heartbeat from the peer for Ns (is UDP port P blocked?)", N kept current.

Idle cost: a router keeps one link per direct peer, so heartbeats every HEARTBEAT_SLOW
would make its idle work grow with the mesh. The shell sets ``slow`` (the interval once
UP) to ``heartbeat_interval(links)`` = min(10, max(HEARTBEAT_SLOW, links / HEARTBEATS_PER_SECOND))
for all its links, and the silence that takes a link down grows with it
(``timeout`` = max(LINK_TIMEOUT, TIMEOUT_HEARTBEATS * slow)): each of our heartbeats is
answered, so a live peer is heard at least every ``slow`` seconds whatever its own
interval. Small meshes keep the figures above. A link on stand-by (the fast path carries
its traffic and probes the path) heartbeats every ``standby_interval(links on stand-by)``;
the budget is shared by the others. The longer idle timeout costs traffic
nothing: a link that carries DATA goes down after SEND_TIMEOUT of silence whatever
``slow`` is. ``get_timer`` keeps its answer until an input changes the state (the shell
asks for every link after every wake-up).

Trust: each heartbeat carries ``HB_FLAG_TRUST`` when its sender trusts the receiver's
underlay address (``--trusted-subnets``); DATA travels in the clear (``clear``) only when
both ends trust each other.

Loss: a peer that lost whole sleeve messages of ours (some of their fragments never came:
``note_loss``, told by the shell's reassembler) says so at once with a heartbeat carrying
``HB_FLAG_LOSS``, at most every ``LOSS_TELL_INTERVAL``. A link told so is ``lossy`` for
``LOSS_HOLD`` after: the shell seals smaller units on it (proto/gsosplit.py), so that one
lost datagram costs a few TCP segments, not a whole ~64 KiB super-frame. Authenticated like
every heartbeat: nobody else can make a link lossy.

Path MTU: once UP, and every ``PMTU_REPROBE`` after, a round of DF-marked PROBEs of
decreasing size finds the largest IP packet that reaches the peer: ``MAX_PROBE`` first, then
``PROBE_SIZES``, each waited for ``PROBE_WAIT``. A size the kernel refuses locally comes back
through ``probe_send_failed`` with the route's MTU: the round goes on at once with that MTU
and the sizes below it. The first size answered is the path MTU (an answer to a larger probe
of the round that comes after its wait, on a slow or busy path, still counts: the sizes go
down, so it ends the round with the larger size); the link's MTU is
``min(mtu, path MTU - overlay overhead)``, the overhead counting the underlay's IP and UDP
headers (28 bytes over IPv4, 48 over IPv6: ``ip_udp_overhead``). The smallest size worth
probing is 576 over IPv4 and 1280 over IPv6 (the least every IPv6 link carries; IPv6 is
never fragmented on the way, so a larger probe is answered or lost, or the kernel refuses
it after an ICMPv6 Packet Too Big lowered the route's PMTU). Probes leave by the shell's probe port
(``Send.probe_id`` is set), answers arrive wherever and are never followed.

Pure: time comes in as ``now`` and probe ids from the ``rng`` given. Bodies are decoded by
proto/sleeve.py (RemoteProtocolError for a malformed one, after the address was followed).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field

from . import ethernet, sleeve
from .peername import PeerName
from .sleeve import Kind

Address = tuple[str, int]

HEARTBEAT_FAST = 0.5  # until the link is up
HEARTBEAT_SLOW = 2.0  # once it is
LINK_TIMEOUT = 10.0  # no authenticated datagram for this long: the link is down
SUSPECT_AFTER = 2.5  # silence while we send DATA: heartbeat fast to find out
SEND_TIMEOUT = 5.0  # silence while we send DATA: the link is down
HEARTBEATS_PER_SECOND = 1.0  # a router's heartbeats per second over all its links, once UP
TIMEOUT_HEARTBEATS = 4  # heartbeat intervals of silence that take a link down (at least)
NO_ANSWER_AFTER = 3.0  # say why a link is not up yet
PMTU_REPROBE = 600.0
PROBE_WAIT = 0.5
PROBE_SIZES = (9000, 1500, 1480, 1460, 1440, 1420, 1400, 1380, 1280, 576)
MAX_PROBE = 65535  # the first size of a round: a route refusing it tells its MTU
MIN_PROBE = 576  # every IPv4 path carries this much
MIN_PROBE6 = 1280  # every IPv6 link carries this much (RFC 8200)
PROBE_ACK_SIZE = sleeve.PROBE_MIN
IP_UDP_OVERHEAD = 28  # IPv4 header 20 + UDP 8
IP6_UDP_OVERHEAD = 48  # IPv6 header 40 + UDP 8
# inner IP packet -> UDP payload: Ethernet + virtio-net header + entry + sleeve header + tag
SLEEVE_OVERHEAD = (ethernet.ETH_HLEN + ethernet.VNET_HDR_LEN + sleeve.ENTRY_OVERHEAD
                   + sleeve.HEADER_LEN + sleeve.TAG_LEN)
OVERLAY_OVERHEAD = SLEEVE_OVERHEAD + IP_UDP_OVERHEAD  # over IPv4
HB_FLAG_TRUST = 1  # "I trust your underlay address: send to me in the clear if you trust me"
HB_FLAG_LOSS = 2  # "whole messages of yours were lost on the way: send smaller units"
LOSS_TELL_INTERVAL = 0.5  # a receiver that keeps losing says so at most this often
LOSS_HOLD = 10.0  # a link stays lossy this long after the last "loss" heard
_ROUNDING = 1e-6  # "for Ns" changes at half seconds; a timer that fires then must see it


def is_ipv6(addr: Address) -> bool:
    """Whether ``addr`` is an IPv6 underlay address (IPv4 ones are never written mapped:
    the shell normalises ``::ffff:a.b.c.d`` to ``a.b.c.d`` before anything sees it)."""
    return ":" in addr[0]


def ip_udp_overhead(addr: Address) -> int:
    """The IP and UDP headers in front of a UDP payload sent to ``addr``."""
    return IP6_UDP_OVERHEAD if is_ipv6(addr) else IP_UDP_OVERHEAD


def overlay_overhead(addr: Address) -> int:
    """Inner IP packet -> underlay IP packet, on a path to ``addr``."""
    return SLEEVE_OVERHEAD + ip_udp_overhead(addr)


def _seconds(silent: float) -> int:
    """Whole seconds, rounded, as reasons say them."""
    return int(silent + 0.5 + _ROUNDING)


HEARTBEAT_MAX = 10.0  # never slower: the heartbeats keep NAT mappings (often 30 s) alive
# but a link whose traffic the kernel's VXLAN carries (the fast path, which probes the
# path itself) only stands by: at least NAT-keepalive pace (WireGuard's advice: 25 s),
# slower in large meshes (STANDBY_PER_SECOND over all such links: no cap)
STANDBY_HEARTBEAT = 25.0
STANDBY_PER_SECOND = 0.5


def heartbeat_interval(links: int) -> float:
    """Seconds between the heartbeats of an UP link when a router has ``links``: a router's
    heartbeats per second stay the same whatever the size of the mesh, up to HEARTBEAT_MAX
    per link (a keepalive must beat the NATs' mapping timeouts; LINK_TIMEOUT grows with it)."""
    return min(HEARTBEAT_MAX, max(HEARTBEAT_SLOW, links / HEARTBEATS_PER_SECOND))


def standby_interval(links: int) -> float:
    """Seconds between the heartbeats of a link on stand-by when a router has ``links`` such."""
    return max(STANDBY_HEARTBEAT, links / STANDBY_PER_SECOND)


class LinkState(enum.Enum):
    """What the link waits for."""

    PEER_HEARTBEAT = "the peer's first datagram (we do not know its UDP address yet)"
    ANSWER = "an answer to our heartbeats"
    UP = "nothing: UDP works both ways (until LINK_TIMEOUT of silence)"


# --- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """A datagram to seal with the link's session and send to ``addr``."""

    kind: Kind
    body: bytes
    addr: Address
    probe_id: int | None = None  # a DF path probe: by the probe port; report EMSGSIZE


@dataclass(frozen=True, slots=True)
class LinkWentUp:
    mtu: int


@dataclass(frozen=True, slots=True)
class LinkWentDown:
    reason: str
    silent: float | None = None  # seconds without a datagram, when an up link timed out


@dataclass(frozen=True, slots=True)
class AddressMoved:
    old: Address | None  # None: learnt (an inbound link's first datagram)
    new: Address


@dataclass(frozen=True, slots=True)
class TrustChanged:
    they_trust: bool


@dataclass(frozen=True, slots=True)
class PathMtuFound:
    pmtu: int  # the largest IP packet that reached the peer
    mtu: int  # the overlay MTU of the link that follows


LinkEvent = LinkWentUp | LinkWentDown | AddressMoved | TrustChanged | PathMtuFound


@dataclass(slots=True)
class _Round:
    """One path MTU round: the probe in flight, the sizes still to try, and every probe
    sent in the round by id (an answer that comes after its wait still names a size)."""

    sizes: list[int]
    size: int = 0
    probe_id: int = 0
    deadline: float = 0.0
    sent: dict[int, int] = field(default_factory=dict)  # probe id -> size


class LinkMachine:
    """The protocol side of one mesh connection's UDP link (see the module docstring).

    ``addr`` is the dialled address (outbound) or None (inbound: learnt from the peer);
    ``mtu`` the overlay MTU we offer, ``port`` our UDP port (named in reasons), ``encrypted``
    whether the session seals (probe bodies leave room for the tag).
    """

    __slots__ = ("me", "uid", "config_mtu", "port", "we_trust", "encrypted", "state",
                 "udp_addr", "created", "last_rx", "last_hb", "they_trust", "mtu", "pmtu", "_slow",
                 "down_reason", "next_probe", "_rng", "_round", "_said", "_hb_body",
                 "_sends", "_events", "lost", "peer_loss_until", "_loss_told", "_sending",
                 "_due", "_due_ok")

    def __init__(self, *, me: PeerName, uid: int, mtu: int, port: int, we_trust: bool,
                 encrypted: bool, addr: Address | None, now: float,
                 rng: random.Random) -> None:
        self.me = me
        self.uid = uid
        self.config_mtu = mtu
        self.port = port
        self.we_trust = we_trust
        self.encrypted = encrypted
        self.state = LinkState.ANSWER if addr is not None else LinkState.PEER_HEARTBEAT
        self.udp_addr = addr
        self.created = now
        self.last_rx: float | None = None
        self.last_hb = float("-inf")
        self._slow = HEARTBEAT_SLOW  # heartbeat interval once UP (heartbeat_interval)
        # get_timer's answer, kept until an input changes the state (a router asks after
        # every wake-up, for every link)
        self._due: float | None = None
        self._due_ok = False
        self.they_trust = False
        self.mtu: int | None = None  # None until the link first came up
        self.pmtu: int | None = None
        self.down_reason = ""
        self.next_probe = 0.0
        self._rng = rng
        self._round: _Round | None = None
        self._said: int | None = None  # N of the "for Ns" reason last said
        self._hb_body = self._heartbeat_body(0)
        self.lost = 0  # messages of the peer's we never completed (note_loss)
        self.peer_loss_until = float("-inf")  # lossy until then (the peer said so)
        self._loss_told = float("-inf")
        self._sending = False  # DATA sent since we last heard the peer
        self._sends: list[Send] = []
        self._events: deque[LinkEvent] = deque()
        self._heartbeat(now)
        self._down("no answer to UDP heartbeats yet" if addr is not None
                   else "waiting for the peer's UDP heartbeat")

    # --- state ------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.state is LinkState.UP

    @property
    def slow(self) -> float:
        """The heartbeat interval once UP (the shell sets it: ``heartbeat_interval``)."""
        return self._slow

    @slow.setter
    def slow(self, value: float) -> None:
        self._slow = value
        self._due_ok = False

    @property
    def timeout(self) -> float:
        """Silence that takes the link down."""
        if self._sending:
            return SEND_TIMEOUT
        return max(LINK_TIMEOUT, TIMEOUT_HEARTBEATS * self.slow)

    @property
    def clear(self) -> bool:
        """DATA travels unencrypted (both ends trust each other, or no password at all)."""
        return not self.encrypted or (self.we_trust and self.they_trust)

    def lossy(self, now: float) -> bool:
        """The peer lately lost whole messages of ours: send smaller units."""
        return now < self.peer_loss_until

    @property
    def probing(self) -> bool:
        return self._round is not None

    # --- inputs -----------------------------------------------------------------------

    def receive(self, kind: Kind, body: bytes | memoryview, addr: Address, now: float) -> bool:
        """An authenticated datagram from ``addr``; True if there is output to collect.
        RemoteProtocolError for a malformed heartbeat or probe body."""
        self._due_ok = False
        self.last_rx = now
        self._sending = False
        moved = False
        if addr != self.udp_addr and kind is not Kind.PROBE and kind is not Kind.PROBE_ACK:
            self._events.append(AddressMoved(self.udp_addr, addr))
            self.udp_addr = addr
            if self.state is LinkState.PEER_HEARTBEAT:
                self.state = LinkState.ANSWER
            moved = True
        if kind is Kind.DATA:
            return moved
        if kind is Kind.HEARTBEAT or kind is Kind.HEARTBEAT_ACK:
            self._on_heartbeat(kind, body, addr, now)
        elif kind is Kind.PROBE:
            probe_id, _ = sleeve.decode_probe(body)
            self._sends.append(Send(Kind.PROBE_ACK, sleeve.encode_probe(probe_id, PROBE_ACK_SIZE),
                                    addr))
        else:
            probe_id, _ = sleeve.decode_probe(body)
            r = self._round
            if r is not None and probe_id in r.sent:
                self._end_round(now, r.sent[probe_id])
        return True

    def handle_timer(self, now: float) -> None:
        # each test is the very sum get_timer returns: "due" must mean the same to both
        self._due_ok = False
        base = self.last_rx if self.last_rx is not None else self.created
        if self.state is LinkState.UP:
            if now >= base + self.timeout:
                silent = _seconds(now - base)
                self._down(f"no answer from the peer for {silent}s while sending to it"
                           if self._sending else self._no_heartbeat(silent), now - base)
        elif self.last_rx is None and now >= base + self._next_count():
            n = _seconds(now - base)  # at least one more than said last time
            self._said = n if self._said is None else max(n, self._said + 1)
            self._down(self._no_heartbeat(self._said))
        if now >= self._heartbeat_due(base):
            self._heartbeat(now)
        r = self._round
        if r is not None:
            if now >= r.deadline:
                self._next_size(now)  # unanswered
        elif self.up and now >= self.next_probe:
            self._start_round(now)

    def data_sent(self) -> bool:
        """We sent the peer DATA. True when that starts a wait for it to be heard (the timer
        may come sooner: SUSPECT_AFTER of silence since the peer was last heard)."""
        if self._sending or not self.up:
            return False
        self._sending = True
        self._due_ok = False
        return True

    def note_loss(self, messages: int, now: float) -> None:
        """``messages`` sleeve messages from the peer were lost (fragments missing): tell it
        with a flagged heartbeat, unless we did within LOSS_TELL_INTERVAL."""
        self.lost += messages
        self._due_ok = False
        if self.udp_addr is None or not self.up or now - self._loss_told < LOSS_TELL_INTERVAL:
            return
        self._loss_told = now
        self.last_hb = now
        self._sends.append(Send(Kind.HEARTBEAT, self._heartbeat_body(0, HB_FLAG_LOSS),
                                self.udp_addr))

    def probe_send_failed(self, probe_id: int, now: float, route_mtu: int | None) -> None:
        """The probe could not leave: too big for the route (``route_mtu``, what the kernel
        says the route carries), or no probe at all is possible now (None)."""
        r = self._round
        if r is None or probe_id != r.probe_id:
            return
        self._due_ok = False
        if route_mtu is None:
            self._end_round(now, None)
            return
        sizes = {s for s in r.sizes if s <= route_mtu}
        if self._floor() <= route_mtu < r.size:
            sizes.add(route_mtu)
        r.sizes = sorted(sizes, reverse=True)
        self._next_size(now)

    # --- outputs ----------------------------------------------------------------------

    def datagrams_to_send(self, *, probes: bool = True) -> list[Send]:
        """What to send now; without ``probes``, path MTU probes stay queued (they need the
        shell's probe port; ``has_news`` says they wait)."""
        if probes or all(s.probe_id is None for s in self._sends):
            sends, self._sends = self._sends, []
            return sends
        sends = [s for s in self._sends if s.probe_id is None]
        self._sends = [s for s in self._sends if s.probe_id is not None]
        return sends

    @property
    def has_news(self) -> bool:
        """Events to collect or probes to send: work for the shell beyond sending."""
        return bool(self._events) or any(s.probe_id is not None for s in self._sends)

    def next_event(self) -> LinkEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has work; after ``handle_timer(now)`` always later than now."""
        if not self._due_ok:
            self._due, self._due_ok = self._compute_timer(), True
        return self._due

    def _compute_timer(self) -> float | None:
        base = self.last_rx if self.last_rx is not None else self.created
        due = float("inf")
        if self.udp_addr is not None:
            due = self._heartbeat_due(base)
        if self.up:
            due = min(due, base + self.timeout)
        elif self.last_rx is None:
            due = min(due, base + self._next_count())
        r = self._round
        if r is not None:
            due = min(due, r.deadline)
        elif self.up:
            due = min(due, self.next_probe)
        return None if due == float("inf") else due

    # --- internals --------------------------------------------------------------------

    def _heartbeat_body(self, nonce: int, flags: int = 0) -> bytes:
        return sleeve.encode_heartbeat(self.me, self.uid, nonce, self.config_mtu,
                                       flags=flags | (HB_FLAG_TRUST if self.we_trust else 0))

    def _heartbeat_due(self, base: float) -> float:
        if not self.up:
            return self.last_hb + HEARTBEAT_FAST
        due = self.last_hb + self.slow
        if self._sending:  # from SUSPECT_AFTER of silence on, fast
            due = min(due, max(base + SUSPECT_AFTER, self.last_hb + HEARTBEAT_FAST))
        return due

    def _heartbeat(self, now: float) -> None:
        if self.udp_addr is None:
            return
        self.last_hb = now
        self._sends.append(Send(Kind.HEARTBEAT, self._hb_body, self.udp_addr))

    def _on_heartbeat(self, kind: Kind, body: bytes | memoryview, addr: Address,
                      now: float) -> None:
        hb = sleeve.decode_heartbeat(body)
        trust = bool(hb.flags & HB_FLAG_TRUST)
        if hb.flags & HB_FLAG_LOSS:
            self.peer_loss_until = now + LOSS_HOLD
        if trust != self.they_trust:
            self.they_trust = trust
            self._events.append(TrustChanged(trust))
        if kind is Kind.HEARTBEAT:
            body = self._hb_body if hb.nonce == 0 else self._heartbeat_body(hb.nonce)
            self._sends.append(Send(Kind.HEARTBEAT_ACK, body, addr))
            if not self.up and now - self.last_hb >= HEARTBEAT_FAST / 2:
                self._heartbeat(now)  # the inbound side answers with its own at once
        elif not self.up:
            self.state = LinkState.UP
            self.next_probe = now
            if self.mtu is None:
                self.mtu = self.config_mtu
            self._events.append(LinkWentUp(self.mtu))

    def _next_count(self) -> float:
        """Seconds of silence after which the reason (which counts them) is said again."""
        return NO_ANSWER_AFTER if self._said is None else self._said + 0.5

    def _no_heartbeat(self, seconds: int) -> str:
        return f"no UDP heartbeat from the peer for {seconds}s (is UDP port {self.port} blocked?)"

    def _down(self, reason: str, silent: float | None = None) -> None:
        if self.state is not LinkState.UP and reason == self.down_reason:
            return
        if self.state is LinkState.UP:
            self.state = LinkState.ANSWER
        self.down_reason = reason
        self._events.append(LinkWentDown(reason, silent))

    def _floor(self) -> int:
        """The smallest path MTU the underlay's family guarantees."""
        return MIN_PROBE6 if self.udp_addr is not None and is_ipv6(self.udp_addr) else MIN_PROBE

    def _start_round(self, now: float) -> None:
        floor = self._floor()
        self._round = _Round([MAX_PROBE, *(s for s in PROBE_SIZES if s >= floor)])
        self._next_size(now)

    def _next_size(self, now: float) -> None:
        r = self._round
        assert r is not None
        if not r.sizes or self.udp_addr is None:
            self._end_round(now, None)
            return
        r.size = r.sizes.pop(0)
        r.probe_id = self._rng.getrandbits(32)
        r.sent[r.probe_id] = r.size
        r.deadline = now + PROBE_WAIT
        body_size = r.size - ip_udp_overhead(self.udp_addr) - sleeve.HEADER_LEN - (
            sleeve.TAG_LEN if self.encrypted else 0)
        self._sends.append(Send(Kind.PROBE, sleeve.encode_probe(r.probe_id, body_size),
                                self.udp_addr, probe_id=r.probe_id))

    def _end_round(self, now: float, found: int | None) -> None:
        self._round = None
        self.next_probe = now + PMTU_REPROBE
        if found is not None and found != self.pmtu:
            self.pmtu = found
            overhead = (overlay_overhead(self.udp_addr) if self.udp_addr is not None
                        else OVERLAY_OVERHEAD)
            self.mtu = min(self.config_mtu, found - overhead)
            self._events.append(PathMtuFound(found, self.mtu))
