"""Two link machines (proto/link.py) back to back, in virtual time: the unit tests and the
hypothesis properties drive them through this.

``Wire`` plays both engines and the network between them: it carries each ``Send`` to the
machine at its address (sealing and opening are the session's business, not the machine's),
refuses probes bigger than ``route_mtu`` the way the kernel does (``probe_send_failed`` with
the route's MTU), loses probes bigger than ``path_mtu`` and anything a test chooses to drop.
A probe leaves from the sender's probe address (same IP, port ``PROBE_PORT``), so its answer
comes back there, as with the engine's probe port.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from weftnet.proto import sleeve
from weftnet.proto.link import IP_UDP_OVERHEAD, LinkEvent, LinkMachine, Send

A_NAME, B_NAME = 0x0A0000000001, 0x0B0000000002
A_ADDR = ("10.0.0.1", 6783)
B_ADDR = ("10.0.0.2", 6783)
PROBE_PORT = 40000
MTU = 1376


def machine(outbound: bool, *, now: float = 0.0, encrypted: bool = True, trust: bool = False,
            seed: int = 1, mtu: int = MTU) -> LinkMachine:
    """A dials B: A (outbound) knows B's address, B learns A's."""
    return LinkMachine(me=A_NAME if outbound else B_NAME, uid=11 if outbound else 22, mtu=mtu,
                       port=6783, we_trust=trust, encrypted=encrypted,
                       addr=B_ADDR if outbound else None, now=now, rng=random.Random(seed))


def ip_size(send: Send, encrypted: bool) -> int:
    """The size of the IP packet the sealed datagram makes."""
    return (IP_UDP_OVERHEAD + sleeve.HEADER_LEN + len(send.body)
            + (sleeve.TAG_LEN if encrypted else 0))


@dataclass
class Wire:
    a: LinkMachine
    b: LinkMachine
    now: float = 0.0
    route_mtu: int = 1500
    path_mtu: int = 1500
    drop: Callable[[LinkMachine, Send], bool] = lambda m, s: False
    addr: dict[int, tuple[str, int]] = field(default_factory=dict)  # by id(machine)
    events: dict[int, list[LinkEvent]] = field(default_factory=dict)
    sent: list[tuple[LinkMachine, Send]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.addr.setdefault(id(self.a), A_ADDR)
        self.addr.setdefault(id(self.b), B_ADDR)
        self.events = {id(self.a): [], id(self.b): []}

    @classmethod
    def pair(cls, *, encrypted: bool = True, trust: tuple[bool, bool] = (False, False),
             **kw: object) -> Wire:
        return cls(machine(True, encrypted=encrypted, trust=trust[0]),
                   machine(False, encrypted=encrypted, trust=trust[1], seed=2), **kw)  # type: ignore[arg-type]

    def other(self, m: LinkMachine) -> LinkMachine:
        return self.b if m is self.a else self.a

    def at(self, address: tuple[str, int]) -> LinkMachine | None:
        for m in (self.a, self.b):
            own = self.addr[id(m)]
            if address in (own, (own[0], PROBE_PORT)):
                return m
        return None

    def collect(self, m: LinkMachine) -> list[LinkEvent]:
        out = []
        while (event := m.next_event()) is not None:
            out.append(event)
        self.events[id(m)] += out
        return out

    def flush(self) -> None:
        """Deliver everything either side has to send, until both are quiet."""
        busy = True
        while busy:
            busy = False
            for m in (self.a, self.b):
                for send in m.datagrams_to_send():
                    busy = True
                    self._carry(m, send)
                self.collect(m)

    def _carry(self, src: LinkMachine, send: Send) -> None:
        self.sent.append((src, send))
        size = ip_size(send, src.encrypted)
        if send.probe_id is not None:
            if size > self.route_mtu:
                src.probe_send_failed(send.probe_id, self.now, self.route_mtu)
                return
            if size > self.path_mtu:
                return
        if self.drop(src, send):
            return
        dst = self.at(send.addr)
        if dst is None:
            return
        own = self.addr[id(src)]
        from_addr = (own[0], PROBE_PORT) if send.probe_id is not None else own
        dst.receive(send.kind, send.body, from_addr, self.now)

    def run(self, until: float) -> None:
        """Advance virtual time to ``until``, firing timers as they fall due."""
        self.flush()
        while True:
            due = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            if not due or min(due) > until:
                break
            t = min(due)
            self.now = max(self.now, t)
            for m in (self.a, self.b):
                timer = m.get_timer()
                if timer is not None and timer <= self.now:
                    m.handle_timer(self.now)
                    later = m.get_timer()
                    assert later is None or later > self.now, (later, self.now)
            self.flush()
        self.now = until
