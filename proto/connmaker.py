"""Connection maker: which addresses to dial, and when.

Theory of operation (after Weave mesh's ``connection_maker.go``). Targets come from two
sources: *direct* targets (the command line, ``weft connect``), kept until ``forget``;
and *discovered* targets: addresses of peers that our peers are connected to but we
are not, recomputed from the topology each time it changes (unless discovery is off).

Each target is a small state machine::

             due()                connected()
    IDLE ───────────▶ CONNECTING ─────────────▶ CONNECTED
     ▲                  │    ▲                      │
     │   attempt_failed │    │ due() when           │ attempt_failed()
     │                  ▼    │ next_try <= now      ▼
     └──(forget)───── RETRYING ◀────────────────────┘
                        │ permanent failure (e.g. "cannot connect to ourself")
                        ▼
                      FAILED (never retried until `connect` again)

Retries back off exponentially (1 s doubling to 60 s) with jitter drawn from the rng we
are given, so peers that lose each other at the same moment do not re-dial in lockstep.
A connection that lived longer than RESET_AFTER resets the backoff: the next failure
starts again at 1 s. Nothing is dialled beyond ``conn_limit`` connections, nor a target
a live connection already covers (``LiveConnections.covers``: an address we are connected
to, outbound by address or inbound by IP, or the address of a peer already connected
under another one); such a target is looked at again INITIAL_BACKOFF later (a poll while
covered, never a deadline left in the past), and is not listed as waiting either. A dial in
flight (``dialling``: since ``dialled_at``, with the last try's error) is listed too, so a
target whose every try times out is shown all the time, not only between tries.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .peername import PeerName

INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 60.0
RESET_AFTER = 60.0


class TargetState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"
    FAILED = "failed"


@dataclass(slots=True)
class Target:
    address: str
    direct: bool
    state: TargetState = TargetState.IDLE
    attempt: int = 0
    next_try: float = 0.0
    last_error: str = ""
    connected_since: float | None = None
    peer: PeerName | None = None  # learned from a handshake with whoever answered here
    dialled_at: float | None = None  # when the latest dial was handed out (CONNECTING)


def split_host(address: str) -> str:
    """The host part of ``ip:port`` / ``[v6]:port``."""
    if address.startswith("["):
        return address[1:address.index("]")]
    return address.rsplit(":", 1)[0]


def split_host_port(address: str) -> tuple[str, int]:
    """``ip:port`` / ``[v6]:port`` as (host, port); ValueError for a port that is no number."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """``ip:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class LiveConnections:
    """What the caller's connections are, as far as the maker judges targets by them."""

    targets: frozenset[str] = frozenset()  # the target addresses of connections we dialled
    inbound_ips: frozenset[str] = frozenset()  # hosts connected to us, handshaken or not
    peers: frozenset[PeerName] = frozenset()  # peers connected, under whatever address
    count: int = 0  # connections of every kind, against conn_limit

    def covers(self, target: Target) -> bool:
        """A connection already reaches ``target``: it needs no dial of its own."""
        return (target.address in self.targets or split_host(target.address) in self.inbound_ips
                or (target.peer is not None and target.peer in self.peers))


class ConnectionMaker:
    def __init__(self, *, conn_limit: int, discovery: bool, rng: random.Random) -> None:
        self.conn_limit = conn_limit
        self.discovery = discovery
        self._rng = rng
        self._targets: dict[str, Target] = {}

    # --- what the user asks for -------------------------------------------------------

    def add(self, addresses: Iterable[str], *, replace: bool = False) -> None:
        wanted = list(dict.fromkeys(addresses))
        if replace:
            for addr, existing in list(self._targets.items()):
                if existing.direct and addr not in wanted:
                    self._drop_direct(addr)
        for addr in wanted:
            target = self._targets.get(addr)
            if target is None:
                self._targets[addr] = Target(addr, direct=True)
            else:
                target.direct = True
                if target.state is TargetState.FAILED:  # an explicit connect retries
                    target.state, target.attempt, target.next_try = TargetState.IDLE, 0, 0.0

    def forget(self, addresses: Iterable[str]) -> None:
        for addr in addresses:
            if addr in self._targets and self._targets[addr].direct:
                self._drop_direct(addr)

    def _drop_direct(self, addr: str) -> None:
        target = self._targets[addr]
        if target.state in (TargetState.CONNECTED, TargetState.CONNECTING):
            target.direct = False  # keep tracking the live attempt; not a target any more
        else:
            del self._targets[addr]

    def set_discovered(self, addresses: Iterable[str] | Mapping[str, PeerName]) -> None:
        """Replace the discovered set; direct targets and live attempts are kept. Given as
        a mapping, each address names the peer it leads to: a connection to that peer
        (by any path, e.g. a punched one) covers it, so it is not dialled meanwhile."""
        peers = addresses if isinstance(addresses, Mapping) else {}
        found = set(addresses) if self.discovery else set()
        for addr in sorted(found):
            if addr not in self._targets:
                self._targets[addr] = Target(addr, direct=False)
            target = self._targets[addr]
            if target.peer is None and addr in peers:
                target.peer = peers[addr]
        for addr, target in list(self._targets.items()):
            if (not target.direct and addr not in found
                    and target.state not in (TargetState.CONNECTED, TargetState.CONNECTING)):
                del self._targets[addr]

    # --- what happened to our attempts -------------------------------------------------

    def due(self, now: float, live: LiveConnections) -> list[str]:
        """Targets to dial now; they move to CONNECTING."""
        dial: list[str] = []
        # dials already handed out but not yet connections count against the limit too
        in_flight = sum(1 for a, t in self._targets.items()
                        if t.state is TargetState.CONNECTING and a not in live.targets)
        for addr in sorted(self._targets):
            target = self._targets[addr]
            if target.state not in (TargetState.IDLE, TargetState.RETRYING):
                continue
            if target.next_try > now:
                continue
            covered = live.covers(target)
            full = live.count + in_flight + len(dial) >= self.conn_limit
            if covered or full:
                # Not now, but look again later: a deadline left in the past would make
                # get_timer() due forever and the caller's timer loop spin.
                target.next_try = now + INITIAL_BACKOFF
                if full and not covered:
                    target.last_error = f"connection limit of {self.conn_limit} reached"
                continue
            target.state, target.dialled_at = TargetState.CONNECTING, now
            dial.append(addr)
        return dial

    def connected(self, addr: str, peer: PeerName, now: float) -> None:
        target = self._targets.get(addr)
        if target is not None:
            target.state, target.connected_since, target.peer = TargetState.CONNECTED, now, peer
            target.last_error = ""

    def attempt_failed(self, addr: str, now: float, reason: str, *, permanent: bool = False,
                       peer: PeerName | None = None) -> None:
        target = self._targets.get(addr)
        if target is None:
            return
        if peer is not None:
            target.peer = peer
        lived = now - target.connected_since if target.connected_since is not None else 0.0
        if lived >= RESET_AFTER:
            target.attempt = 0
        target.connected_since = None
        target.last_error = reason
        if permanent:
            target.state = TargetState.FAILED
            return
        target.attempt += 1
        delay = min(MAX_BACKOFF, INITIAL_BACKOFF * 2 ** (target.attempt - 1))
        target.next_try = now + delay * self._rng.uniform(0.5, 1.0)
        target.state = TargetState.RETRYING
        if not target.direct and not self.discovery:
            del self._targets[addr]

    # --- what others need to know --------------------------------------------------------

    def get_timer(self) -> float | None:
        times = [t.next_try for t in self._targets.values()
                 if t.state in (TargetState.IDLE, TargetState.RETRYING)]
        return min(times) if times else None

    def direct_targets(self) -> list[str]:
        return sorted(a for a, t in self._targets.items() if t.direct)

    def target(self, addr: str) -> Target | None:
        return self._targets.get(addr)

    def dialling(self, live: LiveConnections) -> list[Target]:
        """Targets whose dial is in flight (handed out by ``due``, no connection yet), direct
        and discovered alike: status shows them as connecting, with the last try's error."""
        return [t for a in sorted(self._targets)
                if (t := self._targets[a]).state is TargetState.CONNECTING
                and a not in live.targets]

    def waiting(self, live: LiveConnections) -> list[Target]:
        """Targets shown in status on their own: neither being dialled nor connected, nor
        covered by another connection (which status shows instead, as ``due`` sees it)."""
        return [t for a in sorted(self._targets)
                if (t := self._targets[a]).state in (TargetState.RETRYING, TargetState.FAILED)
                and not live.covers(t)]
