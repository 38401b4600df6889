"""Two link machines (proto/link.py) under random interleavings of time, loss, duplication
and reordering. Whatever happens on the wire:

* a link is up only after an answer (HEARTBEAT_ACK) reached it since it last went down;
* LINK_TIMEOUT without a datagram (or the longer timeout of a link the shell slowed down)
  always leaves it down, and so does SEND_TIMEOUT of
  silence since DATA was sent (``data_sent``) after the peer was last heard;
* after ``handle_timer(now)`` the next timer is later than ``now`` (no busy loop);
* ``get_timer``'s kept answer is always the one computed afresh (every input resets it);
* up and down events alternate and agree with ``up``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from tests.linkwire import A_ADDR, B_ADDR, PROBE_PORT, ip_size, machine
from weftnet.proto.link import (
    LINK_TIMEOUT,
    SEND_TIMEOUT,
    LinkMachine,
    LinkWentDown,
    LinkWentUp,
    Send,
)
from weftnet.proto.sleeve import Kind

TICKS = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, LINK_TIMEOUT]),
                  st.floats(0.0, 2 * LINK_TIMEOUT, allow_nan=False))
OPS = st.one_of(
    st.tuples(st.just("tick"), TICKS),
    st.tuples(st.sampled_from(["deliver", "drop", "dup", "send", "pace", "loss"]),
              st.integers(0, 1 << 16)),
)


@dataclass
class Watch:
    """What the test knows about one machine, from the outside."""

    m: LinkMachine
    addr: tuple[str, int]
    heard: float = 0.0  # last time anything was delivered to it
    answered: bool = False  # an ack reached it since it last went down
    up: bool = False  # as its events say
    sending: bool = False  # it sent DATA since it last heard the peer


@dataclass
class Net:
    a: Watch
    b: Watch
    route_mtu: int
    path_mtu: int
    now: float = 0.0
    flight: list[tuple[Watch, Send]] = field(default_factory=list)

    def watches(self) -> tuple[Watch, Watch]:
        return self.a, self.b

    def gather(self) -> None:
        for w in self.watches():
            while sends := w.m.datagrams_to_send():
                for send in sends:
                    if send.probe_id is not None and ip_size(send, w.m.encrypted) > self.route_mtu:
                        w.m.probe_send_failed(send.probe_id, self.now, self.route_mtu)
                    elif send.probe_id is None or ip_size(send, w.m.encrypted) <= self.path_mtu:
                        self.flight.append((w, send))
            self.check_events(w)

    def check_events(self, w: Watch) -> None:
        while (event := w.m.next_event()) is not None:
            if isinstance(event, LinkWentUp):
                assert not w.up, "up twice without a down"
                assert w.answered, "up without an answer"
                w.up = True
            elif isinstance(event, LinkWentDown):
                if w.up:
                    w.answered = False
                w.up = False
        assert w.up == w.m.up
        assert w.m.get_timer() == w.m._compute_timer(), "a stale kept timer"

    def deliver(self, i: int, keep: bool) -> None:
        if not self.flight:
            return
        src, send = self.flight[i % len(self.flight)] if keep else self.flight.pop(i % len(self.flight))
        dst = self.b if send.addr[0] == B_ADDR[0] else self.a
        if send.addr[1] not in (dst.addr[1], PROBE_PORT):
            return
        from_addr = (src.addr[0], PROBE_PORT) if send.probe_id is not None else src.addr
        dst.heard = self.now
        dst.sending = False
        if send.kind is Kind.HEARTBEAT_ACK:
            dst.answered = True
        dst.m.receive(send.kind, send.body, from_addr, self.now)
        self.check_events(dst)

    def tick(self, dt: float) -> None:
        self.now += dt
        for w in self.watches():
            due = w.m.get_timer()
            if due is not None and due <= self.now:
                w.m.handle_timer(self.now)
                later = w.m.get_timer()
                assert later is None or later > self.now, (later, self.now)
            self.check_events(w)
            # LINK_TIMEOUT at the default pace; longer once the shell slows a link ("pace")
            if self.now - w.heard >= max(LINK_TIMEOUT, w.m.timeout):
                assert not w.m.up, f"up after {self.now - w.heard}s of silence"
            if w.sending and self.now - w.heard >= SEND_TIMEOUT:
                assert not w.m.up, f"up after {self.now - w.heard}s of silence while sending"


@given(ops=st.lists(OPS, max_size=120), encrypted=st.booleans(),
       trust=st.tuples(st.booleans(), st.booleans()),
       route_mtu=st.sampled_from([1280, 1450, 1500, 9000, 65536]),
       path_mtu=st.sampled_from([500, 1280, 1400, 1500, 9000]), warm=st.booleans())
def test_link_invariants_under_loss_duplication_and_reordering(
        ops: list[tuple[str, float]], encrypted: bool, trust: tuple[bool, bool],
        route_mtu: int, path_mtu: int, warm: bool) -> None:
    net = Net(Watch(machine(True, encrypted=encrypted, trust=trust[0]), A_ADDR),
              Watch(machine(False, encrypted=encrypted, trust=trust[1], seed=2), B_ADDR),
              route_mtu, path_mtu)
    for _ in range(4 if warm else 0):  # start from a working link half the time
        net.gather()
        while net.flight:
            net.deliver(0, keep=False)
    for how, value in ops:
        net.gather()
        if how == "tick":
            net.tick(value)
        elif how == "send":  # DATA (its delivery is the sessions' business, not modelled)
            w = net.watches()[int(value) % 2]
            if w.m.data_sent():
                w.sending = True
            assert w.sending or not w.m.up
        elif how == "pace":  # the shell re-paces its links (proto/link.py heartbeat_interval)
            w = net.watches()[int(value) % 2]
            w.m.slow = (2.0, 7.0, 25.0)[int(value) % 3]
            net.check_events(w)
        elif how == "loss":  # the shell counted messages of the peer it never completed
            w = net.watches()[int(value) % 2]
            w.m.note_loss(1 + int(value) % 3, net.now)
            net.check_events(w)
        elif how == "drop":
            if net.flight:
                net.flight.pop(int(value) % len(net.flight))
        else:
            net.deliver(int(value), keep=how == "dup")
    net.gather()
    a, b = net.watches()
    for w, other in ((a, b), (b, a)):
        if w.m.up:
            assert w.m.mtu is not None and w.m.mtu <= w.m.config_mtu
            # an up link heard the peer's answer, which carries the peer's trust flag
            assert w.m.they_trust == other.m.we_trust
        assert not w.m.they_trust or other.m.we_trust  # never trust the peer did not send
        assert w.m.clear == (not encrypted or (w.m.we_trust and w.m.they_trust))


@given(ops=st.lists(OPS, max_size=80))
def test_a_link_that_hears_nothing_back_never_comes_up(ops: list[tuple[str, float]]) -> None:
    """Only B's side of the wire works: A's datagrams arrive, B's never do."""
    net = Net(Watch(machine(True), A_ADDR), Watch(machine(False, seed=2), B_ADDR), 1500, 1500)
    for how, value in ops:
        net.gather()
        net.flight = [(w, s) for w, s in net.flight if w is net.a]
        if how == "tick":
            net.tick(value)
        else:
            net.deliver(int(value), keep=how == "dup")
        assert not net.a.m.up and not net.b.m.up
