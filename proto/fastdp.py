r"""The fast path's protocol: who may use the kernel's VXLAN, and whether it works.

Theory of operation
-------------------
With encryption off (no password, or both ends trusting each other's subnet), frames
between two *directly connected* routers can skip the router entirely: each host has a
kernel VXLAN device (UDP port + 1, 6784) on its ``weft`` bridge, and the router only
programs forwarding entries. Whether that works is not assumed but measured, per
connection and per direction, by this module; the shell (router/dataplane/fastpath.py) moves bytes.

Two messages travel on the control connection (gossip channel ``fastdp``, unicast to the
direct peer), msgpack arrays::

    [1, enabled, bridge_mac, macs, reason]    Hello: whether the sender offers the fast path
                                              (else why not), the MAC of its bridge (where
                                              probes go) and the MACs living on its bridge;
                                              sent on connect, when the MACs change, and
                                              every HELLO_REFRESH seconds
    [2, probe_id]                             ProbeAck: a probe with that id arrived

A *probe* is an Ethernet frame of our own EtherType sent out of our VXLAN device to the
peer's bridge MAC; the outer packet carries DF, so a full-size probe (the bridge's MTU)
only arrives if the underlay carries full-size VXLAN packets::

    +-----------+-----------+----------------+-------+--------------+-------------+---------
    | dst mac 6 | src mac 6 | EtherType 2    | magic | sender u48   | probe_id u64| padding
    |           |           | = ETHERTYPE    | WFTP  |              |             | (zeros)
    +-----------+-----------+----------------+-------+--------------+-------------+---------

Each round sends a full-size probe and a small one (``SMALL_PROBE``); the answers tell
the reasons apart: both lost -> "probe timed out (UDP 6784 blocked?)", only the small one
answered -> "MTU too small". ``FastLink`` is the state of one connection::

              hello(enabled) ─▶ probing ─(full-size ack)─▶ FAST
                                  ▲                          │ MISSES_TO_FALL rounds
                                  └── RISE_AFTER acks in a row ◀─┘  without an ack

The first promotion needs one answered round (a fresh connection goes fast at once);
after a fall, ``RISE_AFTER`` answered rounds in a row (hysteresis: a flapping path does
not flap the traffic). Rounds run every ``PROBE_INTERVAL``; an answer counts when it
comes within ``PROBE_TIMEOUT``. Pure: time and probe ids come in as arguments.

Idle cost. Every round costs each end a probe sent and one received (in Python: the
kernel hands probes to a socket) and a ProbeAck on the control connection each way, and
a router runs one FastLink per direct peer: in a full mesh of N routers that is N - 1
rounds per interval, so a fixed interval makes a router's idle work grow with the mesh.
Instead a router spends a fixed budget, ``ROUNDS_PER_SECOND``, on the links that are fast
and healthy (the last round answered): their interval is ``steady_interval(links)`` =
max(PROBE_INTERVAL, links / ROUNDS_PER_SECOND), and such a round sends only the full-size
probe (the small one only explains a loss). A round that goes unanswered is followed by
one of both probes after PROBE_INTERVAL, so a fall is confirmed (MISSES_TO_FALL) at most
PROBE_INTERVAL + PROBE_TIMEOUT after the first miss was concluded; links that are not
fast keep probing every PROBE_INTERVAL with both probes. Hellos are refreshed every
``hello_refresh(links)`` (HELLO_REFRESH, longer in large meshes: they only repeat what
the reliable control connection already delivered when something changed).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import RemoteProtocolError
from .ethernet import parse_mac
from .framing import pack, unpack
from .peername import MAX_NAME, PeerName

CHANNEL = "fastdp"
ETHERTYPE = 0x88B5            # IEEE "local experimental": nobody else's frames
MAGIC = b"WFTP"
_PROBE = struct.Struct("!6s6sH4s6sQ")
PROBE_HEADER = _PROBE.size    # 36 bytes
SMALL_PROBE = 128             # inner frame bytes after the Ethernet header
VXLAN_OVERHEAD = 50           # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN6_OVERHEAD = 70          # over IPv6: its header is 40 bytes
PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 1.0
MISSES_TO_FALL = 2
RISE_AFTER = 3
HELLO_REFRESH = 10.0
ROUNDS_PER_SECOND = 1.0       # a router's probe rounds per second over all healthy fast links
HELLOS_PER_SECOND = 0.2       # a router's hello refreshes per second over all its links
HELLO_WAIT = 5.0              # no hello by then: the peer does not offer the fast path
MAX_MACS = 4096
MAX_REASON = 256


def steady_interval(links: int) -> float:
    """Seconds between the rounds of a fast, healthy link when a router has ``links``."""
    return max(PROBE_INTERVAL, links / ROUNDS_PER_SECOND)


def hello_refresh(links: int) -> float:
    """Seconds between the hello refreshes of one link when a router has ``links``."""
    return max(HELLO_REFRESH, links / HELLOS_PER_SECOND)


def mac_bytes(mac: str) -> bytes:
    return parse_mac(mac).to_bytes(6, "big")


def mac_text(raw: bytes) -> str:
    return raw.hex(":")


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    enabled: bool
    bridge_mac: bytes
    macs: frozenset[bytes]
    reason: str = ""

    def encode(self) -> bytes:
        return pack([1, self.enabled, self.bridge_mac, sorted(self.macs), self.reason[:MAX_REASON]])


@dataclass(frozen=True, slots=True)
class ProbeAck:
    probe_id: int

    def encode(self) -> bytes:
        return pack([2, self.probe_id])


Message = Hello | ProbeAck


def _mac(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != 6:
        raise RemoteProtocolError("malformed fastdp message: bad MAC")
    return value


def decode_message(payload: bytes) -> Message:
    obj = unpack(payload)
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("malformed fastdp message: not a typed array")
    if obj[0] == 1 and len(obj) == 5:
        _, enabled, bridge_mac, macs, reason = obj
        if type(enabled) is not bool or not isinstance(macs, list) or len(macs) > MAX_MACS:
            raise RemoteProtocolError("malformed fastdp hello")
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise RemoteProtocolError("malformed fastdp hello: bad reason")
        return Hello(enabled, _mac(bridge_mac), frozenset(_mac(m) for m in macs), reason)
    if obj[0] == 2 and len(obj) == 2 and type(obj[1]) is int and 0 <= obj[1] < 2**64:
        return ProbeAck(obj[1])
    raise RemoteProtocolError("malformed fastdp message: unknown type")


# --- probes -----------------------------------------------------------------------------


def encode_probe(dst_mac: bytes, src_mac: bytes, sender: PeerName, probe_id: int,
                 size: int) -> bytes:
    """A probe frame whose payload (after the Ethernet header) is ``size`` bytes."""
    head = _PROBE.pack(dst_mac, src_mac, ETHERTYPE, MAGIC, sender.to_bytes(6, "big"), probe_id)
    return head + bytes(max(0, 14 + size - len(head)))


def decode_probe(frame: bytes) -> tuple[PeerName, int]:
    """(sender, probe_id) of a probe frame; RemoteProtocolError for anything else."""
    if len(frame) < PROBE_HEADER:
        raise RemoteProtocolError("malformed probe: short")
    _dst, _src, ethertype, magic, sender, probe_id = _PROBE.unpack_from(frame)
    if ethertype != ETHERTYPE or magic != MAGIC:
        raise RemoteProtocolError("malformed probe: not ours")
    name = int.from_bytes(sender, "big")
    if not 1 <= name <= MAX_NAME:
        raise RemoteProtocolError("malformed probe: bad sender")
    return name, probe_id


# --- one connection ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    probe_id: int
    size: int          # inner frame bytes after the Ethernet header


@dataclass(slots=True)
class _Round:
    sent: float
    full: int
    small: int
    full_ok: bool = False
    small_ok: bool = False
    send_error: str = ""


@dataclass(slots=True)
class FastLink:
    """Whether one direct connection's traffic may take the VXLAN, and why (not).

    ``mtu`` is the size of a full probe (the bridge's MTU); ``new_id`` draws probe ids;
    ``overhead`` is what the underlay adds (VXLAN6_OVERHEAD over IPv6).
    """

    mtu: int
    created: float
    new_id: Callable[[], int]
    remote: Hello | None = None
    fast: bool = False
    reason: str = "waiting for the peer's fast path hello"
    ever_fast: bool = False
    streak: int = 0         # answered rounds in a row (while not fast)
    misses: int = 0         # unanswered rounds in a row (while fast)
    next_round: float = 0.0
    rounds: list[_Round] = field(default_factory=list)
    changed: bool = False   # fast or reason moved since the caller last looked
    hello_overdue: bool = False  # HELLO_WAIT passed without a hello (said so once)
    overhead: int = VXLAN_OVERHEAD
    steady: float = PROBE_INTERVAL  # interval while fast and healthy (steady_interval)
    concluded: int = 0      # rounds concluded so far

    @property
    def deciding(self) -> bool:
        """The first verdict is still to come and may well be "fast": the peer offers the
        fast path (or has not said yet, within HELLO_WAIT) and no round has concluded."""
        return (not self.ever_fast and not self.hello_overdue and self.concluded == 0
                and (self.remote is None or self.remote.enabled))

    def on_hello(self, hello: Hello, now: float) -> None:
        was = self.remote
        self.remote = hello
        if not hello.enabled:
            self._set(False, f"the peer does not use the fast path: {hello.reason or 'disabled'}")
            self.rounds.clear()
        elif was is None or not was.enabled:
            self.next_round = now
            if not self.fast:
                self._set(False, "probing the VXLAN path")

    def on_ack(self, probe_id: int) -> bool:
        for r in self.rounds:
            if probe_id == r.full:
                r.full_ok = True
                return True
            if probe_id == r.small:
                r.small_ok = True
                return True
        return False

    def send_failed(self, probe_id: int, error: str) -> None:
        for r in self.rounds:
            if probe_id in (r.full, r.small):
                r.send_error = r.send_error or error

    def probes_due(self, now: float) -> list[Probe]:
        """Start a round when one is due: the probes the caller must send now."""
        if self.remote is None or not self.remote.enabled or now < self.next_round:
            return []
        if self.fast and self.misses == 0 and not self.rounds:
            # healthy: the full-size probe alone says it still works
            self.next_round = now + self.steady
            r = _Round(now, self.new_id(), -1)
            self.rounds.append(r)
            return [Probe(r.full, self.mtu)]
        self.next_round = now + PROBE_INTERVAL
        r = _Round(now, self.new_id(), self.new_id())
        self.rounds.append(r)
        return [Probe(r.full, self.mtu), Probe(r.small, SMALL_PROBE)]

    def handle_timer(self, now: float) -> None:
        # the same sums as get_timer's, so a timer that fired finds its work due
        if self.remote is None and now >= self.created + HELLO_WAIT:
            self.hello_overdue = True
            self._set(False, "the peer does not offer the fast path (no hello from it)")
        while self.rounds and (self.rounds[0].full_ok or now >= self.rounds[0].sent + PROBE_TIMEOUT):
            self._conclude(self.rounds.pop(0))

    def get_timer(self) -> float | None:
        times = [r.sent + PROBE_TIMEOUT for r in self.rounds]
        if self.remote is None:
            if not self.hello_overdue:
                times.append(self.created + HELLO_WAIT)
        elif self.remote.enabled:
            times.append(self.next_round)
        return min(times) if times else None

    def _conclude(self, r: _Round) -> None:
        self.concluded += 1
        if r.full_ok:
            self.misses = 0
            self.streak += 1
            if not self.fast and (not self.ever_fast or self.streak >= RISE_AFTER):
                self.ever_fast = True
                self._set(True, "VXLAN probes answered")
            elif not self.fast:
                self._set(False, f"fast path recovering ({self.streak} of {RISE_AFTER} probes answered)")
            return
        self.streak = 0
        if r.send_error:
            why = f"cannot send VXLAN probes: {r.send_error}"
        elif r.small_ok:
            why = (f"MTU too small: full-size VXLAN probes ({self.mtu} bytes) are lost, small "
                   f"ones arrive (lower --mtu or raise the underlay MTU to {self.mtu + self.overhead})")
        else:
            why = "VXLAN probe timed out (is UDP port 6784 blocked?)"
        if self.fast:
            self.misses += 1
            # the next round (both probes) confirms or clears the miss soon, not steadily
            self.next_round = min(self.next_round, r.sent + PROBE_INTERVAL)
            if self.misses < MISSES_TO_FALL:
                return
        self._set(False, why)

    def _set(self, fast: bool, reason: str) -> None:
        if (fast, reason) != (self.fast, self.reason):
            self.fast, self.reason = fast, reason
            self.changed = True


def desired_fdb(links: Iterable[tuple[str, Hello | None, bool]]
                ) -> tuple[dict[str, str], set[str], set[str]]:
    """What the VXLAN device and the bridge must hold, from (underlay ip, hello, fast) per link.

    Returns (VXLAN entries mac -> ip, MACs the bridge sends to the VXLAN port, flood
    destinations): probes need the peer's bridge MAC in the VXLAN device as soon as it said
    hello; its MACs, and broadcasts to it, only while the link is fast.
    """
    vxlan: dict[str, str] = {}
    bridge: set[str] = set()
    flood: set[str] = set()
    for ip, hello, fast in links:
        if hello is None or not hello.enabled:
            continue
        vxlan[mac_text(hello.bridge_mac)] = ip
        if fast:
            flood.add(ip)
            for raw in (hello.bridge_mac, *hello.macs):
                vxlan[mac_text(raw)] = ip
                bridge.add(mac_text(raw))
    return vxlan, bridge, flood
