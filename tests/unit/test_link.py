"""The link machine (proto/link.py) in virtual time: heartbeats, up and down with reasons,
trust, address following, path MTU rounds. Two machines talk through tests/linkwire.py."""

from __future__ import annotations

import pytest

from tests.linkwire import A_ADDR, B_ADDR, MTU, PROBE_PORT, Wire, ip_size, machine
from weftnet.proto import sleeve
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.link import (
    HEARTBEAT_FAST,
    HEARTBEAT_MAX,
    HEARTBEAT_SLOW,
    HEARTBEATS_PER_SECOND,
    LINK_TIMEOUT,
    LOSS_HOLD,
    LOSS_TELL_INTERVAL,
    MAX_PROBE,
    OVERLAY_OVERHEAD,
    PMTU_REPROBE,
    PROBE_WAIT,
    SEND_TIMEOUT,
    STANDBY_HEARTBEAT,
    STANDBY_PER_SECOND,
    SUSPECT_AFTER,
    AddressMoved,
    LinkMachine,
    LinkState,
    LinkWentDown,
    LinkWentUp,
    PathMtuFound,
    Send,
    TrustChanged,
    heartbeat_interval,
    standby_interval,
)
from weftnet.proto.sleeve import Kind

BLOCKED = "(is UDP port 6783 blocked?)"


def kinds(wire: Wire, m: LinkMachine) -> list[Kind]:
    return [s.kind for src, s in wire.sent if src is m]


def test_new_links_say_what_they_wait_for() -> None:
    a, b = machine(True), machine(False)
    assert a.state is LinkState.ANSWER and b.state is LinkState.PEER_HEARTBEAT
    assert a.next_event() == LinkWentDown("no answer to UDP heartbeats yet")
    assert b.next_event() == LinkWentDown("waiting for the peer's UDP heartbeat")
    # the dialler says hello at once; the other side cannot (it has no address yet)
    assert [(s.kind, s.addr) for s in a.datagrams_to_send()] == [(Kind.HEARTBEAT, B_ADDR)]
    assert b.datagrams_to_send() == [] and b.get_timer() == 3.0


def test_up_only_after_an_answer_both_ways() -> None:
    wire = Wire(machine(True), machine(False))
    wire.collect(wire.a)
    wire.collect(wire.b)
    (hb,) = wire.a.datagrams_to_send()
    wire.b.receive(hb.kind, hb.body, A_ADDR, 0.0)  # b learns where a is, answers, says hello
    assert wire.collect(wire.b) == [AddressMoved(None, A_ADDR)]
    assert wire.b.state is LinkState.ANSWER and not wire.b.up
    out = wire.b.datagrams_to_send()
    assert [(s.kind, s.addr) for s in out] == [(Kind.HEARTBEAT_ACK, A_ADDR), (Kind.HEARTBEAT, A_ADDR)]
    wire.a.receive(out[1].kind, out[1].body, B_ADDR, 0.1)  # a heartbeat is no answer
    assert not wire.a.up and wire.collect(wire.a) == []
    wire.a.receive(out[0].kind, out[0].body, B_ADDR, 0.1)
    assert wire.a.up and wire.collect(wire.a) == [LinkWentUp(MTU)]
    ack = [s for s in wire.a.datagrams_to_send() if s.kind is Kind.HEARTBEAT_ACK]
    wire.b.receive(ack[0].kind, ack[0].body, A_ADDR, 0.2)
    assert wire.b.up and wire.collect(wire.b) == [LinkWentUp(MTU)]


def test_heartbeats_fast_until_answered_then_slow() -> None:
    wire = Wire(machine(True), machine(False), drop=lambda m, s: True)
    wire.run(2.0)
    assert kinds(wire, wire.a).count(Kind.HEARTBEAT) == 1 + int(2.0 / HEARTBEAT_FAST)
    wire.drop = lambda m, s: False
    wire.sent.clear()
    wire.run(2.5)  # the next fast heartbeat gets through: both sides come up
    assert wire.a.up and wire.b.up
    wire.sent.clear()
    wire.run(2.5 + 10 * HEARTBEAT_SLOW)
    assert kinds(wire, wire.a).count(Kind.HEARTBEAT) == 10
    assert kinds(wire, wire.b).count(Kind.HEARTBEAT) == 10


def test_a_silent_peer_is_named_with_the_seconds_counting() -> None:
    wire = Wire(machine(True), machine(False), drop=lambda m, s: True)
    wire.run(2.9)
    assert wire.a.down_reason == "no answer to UDP heartbeats yet"
    seen = []
    for t in (3.0, 3.4, 3.5, 4.49, 4.5, 9.6):
        wire.run(t)
        seen.append(wire.a.down_reason)
    assert seen == [f"no UDP heartbeat from the peer for {n}s {BLOCKED}" for n in (3, 3, 4, 4, 5, 10)]
    downs = [e for e in wire.events[id(wire.a)] if isinstance(e, LinkWentDown)]
    assert [e.reason.split()[-6] for e in downs[1:]] == [f"{n}s" for n in range(3, 11)]
    # the inbound side never heard a word either: the same counting
    assert wire.b.down_reason == f"no UDP heartbeat from the peer for 10s {BLOCKED}"


def test_silence_takes_an_up_link_down_and_an_answer_brings_it_back() -> None:
    wire = Wire.pair()
    wire.run(1.0)
    assert wire.a.up and wire.b.up
    last = wire.now
    wire.drop = lambda m, s: True
    wire.run(last + 5.0)
    last_rx = wire.a.last_rx
    assert last_rx is not None and wire.a.up
    wire.run(last_rx + LINK_TIMEOUT - 0.01)
    assert wire.a.up
    wire.run(last_rx + LINK_TIMEOUT)
    assert not wire.a.up and wire.a.state is LinkState.ANSWER
    reason = f"no UDP heartbeat from the peer for 10s {BLOCKED}"
    assert wire.events[id(wire.a)][-1] == LinkWentDown(reason, LINK_TIMEOUT)
    # down again means fast heartbeats again, and the reason stays (the peer was heard)
    wire.sent.clear()
    wire.run(wire.now + 2.0)
    assert kinds(wire, wire.a).count(Kind.HEARTBEAT) == 4 and wire.a.down_reason == reason
    wire.drop = lambda m, s: False
    wire.run(wire.now + HEARTBEAT_FAST)
    assert wire.a.up and wire.b.up
    assert isinstance(wire.events[id(wire.a)][-1], LinkWentUp)


def test_silence_while_we_send_data_takes_the_link_down_in_seconds() -> None:
    """The path ends under traffic (the peer's NAT rebound its mapping): the sender finds
    out after SEND_TIMEOUT, not LINK_TIMEOUT, heartbeating fast from SUSPECT_AFTER on; the
    peer, which sends nothing, keeps the idle timeout."""
    wire = Wire.pair()
    wire.run(1.0)
    assert wire.a.up and wire.b.up
    wire.drop = lambda m, s: True
    last_rx = wire.a.last_rx
    assert last_rx is not None
    assert wire.a.data_sent() and not wire.a.data_sent()  # one wait per silence
    due = wire.a.get_timer()
    assert due is not None and due <= last_rx + SUSPECT_AFTER
    wire.sent.clear()
    wire.run(last_rx + SEND_TIMEOUT - 0.01)
    assert wire.a.up
    fast = int((SEND_TIMEOUT - SUSPECT_AFTER) / HEARTBEAT_FAST)
    assert kinds(wire, wire.a).count(Kind.HEARTBEAT) >= fast
    wire.run(last_rx + SEND_TIMEOUT)
    assert not wire.a.up and wire.b.up
    assert wire.events[id(wire.a)][-1] == LinkWentDown(
        "no answer from the peer for 5s while sending to it", SEND_TIMEOUT)
    b_rx = wire.b.last_rx
    assert b_rx is not None
    wire.run(b_rx + LINK_TIMEOUT)
    assert not wire.b.up
    wire.drop = lambda m, s: False  # the path is back: an answer brings both up
    wire.run(wire.now + 2 * HEARTBEAT_FAST)
    assert wire.a.up and wire.b.up
    assert wire.a.timeout == LINK_TIMEOUT  # heard: the wait for an answer is over


def test_a_one_way_sender_stays_up_while_its_heartbeats_are_answered() -> None:
    """A one-way flow (no DATA back) over a mesh's slow heartbeats: the silence of the
    peer, which answers each heartbeat, never reaches SEND_TIMEOUT; the watching costs about
    a heartbeat per SUSPECT_AFTER while sending, and nothing once it stops."""
    wire = Wire.pair()
    wire.run(1.0)
    wire.a.slow = wire.b.slow = heartbeat_interval(20)  # 10 s apart
    wire.sent.clear()
    t = wire.now
    while t < 61.0:
        wire.a.data_sent()
        t += 0.1
        wire.run(t)
    assert wire.a.up and wire.b.up
    assert not [e for e in wire.events[id(wire.a)] if isinstance(e, LinkWentDown)][1:]
    beats = kinds(wire, wire.a).count(Kind.HEARTBEAT)
    assert 60 / (SUSPECT_AFTER + 1) <= beats <= 60 / SUSPECT_AFTER + 1
    wire.sent.clear()
    wire.run(t + 60.0)  # not sending: the slow beat again
    assert kinds(wire, wire.a).count(Kind.HEARTBEAT) <= 7


def test_any_authenticated_datagram_but_a_probe_moves_the_link() -> None:
    wire = Wire.pair()
    wire.run(1.0)
    new = ("192.0.2.7", 51000)
    probe = sleeve.encode_probe(5, 64)
    assert wire.b.receive(Kind.PROBE, probe, new, wire.now)
    assert wire.b.udp_addr == A_ADDR and wire.collect(wire.b) == []
    assert [s.addr for s in wire.b.datagrams_to_send()] == [new]  # answered where it came from
    assert wire.b.receive(Kind.DATA, b"", new, wire.now) is True
    assert wire.collect(wire.b) == [AddressMoved(A_ADDR, new)]
    assert wire.b.receive(Kind.DATA, b"", new, wire.now) is False  # nothing new: no output
    wire.b.handle_timer(wire.now + HEARTBEAT_SLOW)
    assert {s.addr for s in wire.b.datagrams_to_send()} == {new}


def test_a_malformed_heartbeat_is_refused_after_the_address_was_followed() -> None:
    b = machine(False)
    with pytest.raises(RemoteProtocolError):
        b.receive(Kind.HEARTBEAT, b"short", A_ADDR, 0.0)
    assert b.udp_addr == A_ADDR and not b.up


@pytest.mark.parametrize(("trust", "clear"), [((True, True), True), ((True, False), False),
                                              ((False, False), False)])
def test_data_is_clear_only_when_both_ends_trust(trust: tuple[bool, bool], clear: bool) -> None:
    wire = Wire.pair(trust=trust)
    wire.run(1.0)
    assert wire.a.up and wire.b.up
    assert wire.a.clear is clear and wire.b.clear is clear
    assert (TrustChanged(True) in wire.events[id(wire.a)]) is trust[1]


def test_without_a_password_data_is_always_clear() -> None:
    wire = Wire.pair(encrypted=False)
    wire.run(1.0)
    assert wire.a.clear and wire.b.clear


def test_path_mtu_round_walks_down_from_what_the_route_carries() -> None:
    wire = Wire.pair(route_mtu=1500, path_mtu=1410)
    wire.run(0.0)
    assert wire.a.up and wire.a.pmtu is None
    probes = [s for m, s in wire.sent if m is wire.a and s.kind is Kind.PROBE]
    # the largest probe first; the kernel refuses it (EMSGSIZE) and names the route's MTU
    assert [ip_size(s, True) for s in probes] == [MAX_PROBE, 1500]
    assert all(s.addr == B_ADDR for s in probes)
    wire.run(4 * PROBE_WAIT)
    assert wire.a.pmtu is None and wire.a.probing
    wire.run(5 * PROBE_WAIT)  # 1500 1480 1460 1440 1420: unanswered; 1400 goes through
    found = [e for e in wire.events[id(wire.a)] if isinstance(e, PathMtuFound)]
    assert found == [PathMtuFound(1400, 1400 - OVERLAY_OVERHEAD)]
    assert wire.a.pmtu == 1400 and wire.a.mtu == 1400 - OVERLAY_OVERHEAD and not wire.a.probing
    # answers go to the probe port and never move the link
    assert wire.b.udp_addr == A_ADDR
    assert any(s.kind is Kind.PROBE_ACK and s.addr == (A_ADDR[0], PROBE_PORT)
               for m, s in wire.sent if m is wire.b)
    # the next round comes PMTU_REPROBE later; the same answer says nothing new
    wire.sent.clear()
    wire.run(wire.now + PMTU_REPROBE - 5)
    assert not [s for m, s in wire.sent if m is wire.a and s.kind is Kind.PROBE]
    wire.run(wire.now + 10)
    assert [s for m, s in wire.sent if m is wire.a and s.kind is Kind.PROBE]
    assert len([e for e in wire.events[id(wire.a)] if isinstance(e, PathMtuFound)]) == 1


def test_a_route_mtu_off_the_list_is_tried_itself() -> None:
    wire = Wire.pair(route_mtu=1450, path_mtu=1450, encrypted=False)
    wire.run(1.0)
    assert wire.a.pmtu == 1450 and wire.a.mtu == min(MTU, 1450 - OVERLAY_OVERHEAD)
    probes = [ip_size(s, False) for m, s in wire.sent if m is wire.a and s.kind is Kind.PROBE]
    assert probes == [MAX_PROBE, 1450]


def test_the_link_mtu_never_exceeds_the_configured_one() -> None:
    wire = Wire.pair(route_mtu=9000, path_mtu=9000)
    wire.run(1.0)
    assert wire.a.pmtu == 9000 and wire.a.mtu == MTU


def test_a_probe_that_cannot_leave_ends_the_round() -> None:
    wire = Wire.pair()
    wire.drop = lambda m, s: s.probe_id is not None
    wire.run(0.2)
    assert wire.a.up and wire.a.probing
    (probe,) = [s for m, s in wire.sent if m is wire.a and s.probe_id is not None][-1:]
    assert probe.probe_id is not None
    wire.a.probe_send_failed(probe.probe_id + 1, wire.now, None)  # not the one in flight
    assert wire.a.probing
    wire.a.probe_send_failed(probe.probe_id, wire.now, None)
    assert not wire.a.probing and wire.a.pmtu is None
    assert wire.a.get_timer() is not None


def test_every_size_lost_keeps_the_link_mtu() -> None:
    wire = Wire.pair(path_mtu=500)
    wire.run(20.0)
    assert wire.a.up and wire.a.pmtu is None and wire.a.mtu == MTU and not wire.a.probing


def test_timers_are_always_ahead_after_handling() -> None:
    m = machine(True)
    for now in (0.0, 0.5, 2.9, 3.0, 3.5, 3.5, 12.0):
        m.handle_timer(now)
        due = m.get_timer()
        assert due is not None and due > now


def test_every_timeout_says_the_same_seconds() -> None:
    wire = Wire.pair()
    wire.run(1.0)
    for _ in range(3):
        wire.drop = lambda m, s: True
        wire.run(wire.now + 2 * LINK_TIMEOUT)
        assert wire.a.down_reason == f"no UDP heartbeat from the peer for 10s {BLOCKED}"
        wire.drop = lambda m, s: False
        wire.run(wire.now + 1.0)
        assert wire.a.up


def test_heartbeats_slow_down_with_many_links_and_the_timeout_follows() -> None:
    for links in (1, 4, 15, 100):
        # a router's heartbeats per second over its links stay within the budget
        assert links / heartbeat_interval(links) <= max(HEARTBEATS_PER_SECOND,
                                                        links / HEARTBEAT_SLOW)
    assert heartbeat_interval(2) == HEARTBEAT_SLOW and heartbeat_interval(7) == 7.0
    assert heartbeat_interval(15) == heartbeat_interval(100) == HEARTBEAT_MAX
    # links on stand-by (the fast path carries them): NAT-keepalive pace, then a fixed
    # budget per router with no cap (the fast path's probes watch those paths)
    for links in (1, 12, 13, 100, 1000):
        assert links / standby_interval(links) <= max(STANDBY_PER_SECOND,
                                                      links / STANDBY_HEARTBEAT)
    assert standby_interval(1) == STANDBY_HEARTBEAT and standby_interval(100) == 200.0
    wire = Wire(machine(True), machine(False))
    wire.run(2.0)
    assert wire.a.up and wire.b.up and wire.a.timeout == LINK_TIMEOUT
    wire.a.slow = wire.b.slow = heartbeat_interval(7)
    assert wire.a.timeout == 28.0
    wire.sent.clear()
    wire.run(2.0 + 70.0)
    assert wire.a.up and wire.b.up              # 7 s apart (> LINK_TIMEOUT / 2): still up
    assert kinds(wire, wire.a).count(Kind.HEARTBEAT) == 10
    wire.drop = lambda m, s: True               # silence: down after the longer timeout
    wire.run(2.0 + 70.0 + 27.0)
    assert wire.a.up
    wire.run(2.0 + 70.0 + 40.0)
    assert not wire.a.up


def test_a_peer_that_loses_our_messages_makes_us_send_small_units_for_a_while() -> None:
    wire = Wire.pair()
    wire.run(1.0)
    assert wire.a.up and wire.b.up and not wire.a.lossy(wire.now)
    wire.sent.clear()
    wire.b.note_loss(3, wire.now)          # b's reassembler lost 3 of a's messages
    wire.b.note_loss(1, wire.now + 0.1)    # told once per LOSS_TELL_INTERVAL, counted always
    wire.flush()
    assert wire.b.lost == 4 and kinds(wire, wire.b).count(Kind.HEARTBEAT) == 1
    told = wire.now
    assert wire.a.lossy(told) and not wire.b.lossy(told)
    assert wire.a.lossy(told + LOSS_HOLD - 0.01) and not wire.a.lossy(told + LOSS_HOLD)
    wire.now = told + LOSS_TELL_INTERVAL
    wire.b.note_loss(1, wire.now)          # still losing: said again, held longer
    wire.flush()
    assert wire.a.lossy(told + LOSS_TELL_INTERVAL + LOSS_HOLD - 0.01)
    # ordinary heartbeats never carry it: once the losses stop, the hold runs out
    wire.run(told + LOSS_HOLD + 3 * HEARTBEAT_SLOW)
    assert wire.a.up and not wire.a.lossy(wire.now)


def test_loss_is_not_said_before_the_link_is_up() -> None:
    wire = Wire.pair()
    wire.b.note_loss(2, 0.0)
    assert wire.b.lost == 2 and wire.b.datagrams_to_send() == []


def test_the_kept_timer_follows_every_input_of_an_up_link() -> None:
    """``get_timer`` keeps its answer between inputs: a settled link (up, its path MTU
    found, so the heartbeat is what comes next) must see the new pace, a DATA send's
    closer watch and a loss report at once, as the timer computed afresh does."""
    wire = Wire(machine(True), machine(False))
    wire.run(60.0)
    m = wire.a
    assert m.up and not m.probing
    steps = [lambda: setattr(m, "slow", 7.0), lambda: m.note_loss(1, wire.now),
             lambda: m.data_sent(), lambda: setattr(m, "slow", 2.0)]
    for step in steps:
        kept = m.get_timer()
        step()
        assert m.get_timer() == m._compute_timer() != kept  # each one moves the timer
        wire.run(wire.now + 0.5)


def test_a_late_answer_to_a_larger_probe_still_names_the_path_mtu() -> None:
    """On a busy path the answer to the 1280 probe comes after its wait, when the round has
    moved on to 576: it still ends the round with 1280 (not 576 for PMTU_REPROBE)."""
    wire = Wire.pair(route_mtu=1280, path_mtu=1280)
    held: list[Send] = []

    def hold_answers(m: LinkMachine, s: Send) -> bool:
        if s.kind is Kind.PROBE_ACK:
            held.append(s)
            return True
        return False

    wire.drop = hold_answers
    wire.run(0.2)
    assert wire.a.up and wire.a.probing
    wire.run(wire.now + 1.5 * PROBE_WAIT)  # 1280 unanswered in time: 576 is in flight
    sizes = [ip_size(s, True) for m, s in wire.sent if m is wire.a and s.kind is Kind.PROBE]
    assert sizes[-2:] == [1280, 576]
    (late,) = [s for s in held if s.addr[0] == A_ADDR[0]][:1]  # the answer to 1280 first
    wire.a.receive(late.kind, late.body, B_ADDR, wire.now)
    assert wire.a.pmtu == 1280 and not wire.a.probing


def test_a_shell_without_its_probe_port_leaves_the_probes_queued() -> None:
    """The data thread sends what it can (engine ``_service``); a path MTU probe needs the
    probe port, so it stays queued and ``has_news`` says so until the shell takes it."""
    wire = Wire.pair()
    wire.drop = lambda m, s: s.probe_id is not None
    wire.run(0.2)
    a = wire.a
    assert a.up and a.probing and not a.has_news
    sent: list[Send] = []
    while not a.has_news:  # the round's next probe comes with a timer
        due = a.get_timer()
        assert due is not None
        a.handle_timer(due)
        sent += a.datagrams_to_send(probes=False)
    assert all(s.probe_id is None for s in sent)
    assert a.datagrams_to_send(probes=False) == [] and a.has_news
    probes = a.datagrams_to_send()
    assert probes and all(s.probe_id is not None for s in probes) and not a.has_news
