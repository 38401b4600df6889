"""One punch session (proto/punch.py): probe bodies, verification, preference, refusals,
the hard/easy spray. Two sessions face each other through a tiny wire that delivers a
datagram to whichever session listens at its destination, from the source address the test
says; virtual time, seeded rngs."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.punch import (
    GRACE,
    PORT_RANGE,
    PROBE_INTERVAL,
    PUNCH_DURATION,
    SPRAY_DELAY,
    SPRAY_END,
    SPRAY_PORTS,
    SPRAY_REPROBE,
    SPRAY_SOCKETS,
    Candidate,
    CandidateKind,
    PunchSession,
    SessionState,
    decode_probe,
    decode_probe_ack,
    encode_probe,
    encode_probe_ack,
)
from weftnet.proto.punchwire import (
    PunchDrop,
    PunchKind,
    derive_keys,
    open_datagram,
    peek_datagram,
    seal_datagram,
)

Address = tuple[str, int]
A, B = 0x0200000000A1, 0x0200000000B2
SECRET = bytes(range(32))
SESSION = 0x1234
H = CandidateKind.HOST
R = CandidateKind.REFLEXIVE


# --- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seen", [("192.0.2.7", 6783), ("2001:db8::7", 1), ("10.0.0.1", 65535)])
def test_probe_bodies_round_trip(seen: Address) -> None:
    assert decode_probe(encode_probe(2**64 - 1, A)) == (2**64 - 1, A, None)
    assert decode_probe(encode_probe(3, A, 0.0125)) == (3, A, 0.0125)
    assert decode_probe_ack(encode_probe_ack(7, B, seen)) == (7, B, seen)


@pytest.mark.parametrize("body", [
    b"", b"\x00" * 13, b"\x00" * 15, b"\x00" * 17, b"\x00" * 19,  # probe: wrong size
    bytes(8) + bytes(6),  # sender 0
])
def test_malformed_probe_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(PunchDrop) as exc:
        decode_probe(body)
    assert exc.value.reason == "malformed"


@pytest.mark.parametrize("body", [
    encode_probe(1, A),  # no address
    encode_probe(1, A) + b"\x05" + bytes(6),  # unknown family
    encode_probe(1, A) + b"\x04" + bytes(5),  # short address
    encode_probe(1, A) + b"\x04" + bytes([192, 0, 2, 1]) + b"\x00\x00",  # port 0
    encode_probe_ack(1, A, ("192.0.2.1", 9)) + b"x",  # trailing byte
    encode_probe(1, A) + b"\x06" + bytes(16),  # v6 address missing its port
])
def test_malformed_ack_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_probe_ack(body)


# --- two sessions on a tiny wire ---------------------------------------------------------


def session(me: int, peer: int, theirs: list[Candidate], *, initiator: bool,
            we_hard: bool = False, they_hard: bool = False, seed: int = 1) -> PunchSession:
    return PunchSession(me=me, peer=peer, session=SESSION,
                        keys=derive_keys(SECRET, initiator=initiator), initiator=initiator,
                        theirs=theirs, we_hard=we_hard, they_hard=they_hard,
                        rng=random.Random(seed), now=0.0)


class Wire:
    """Datagrams to an address in ``at`` reach that session (on socket 0) from the sender's
    ``seen_as`` address (its ``private`` one when sent to a private address: no NAT on the
    way); everything else is lost. ``sent`` keeps (sender, dst, sock, datagram)."""

    def __init__(self, a: PunchSession, b: PunchSession,
                 at: dict[Address, PunchSession], seen_as: dict[int, Address],
                 private: dict[int, Address] | None = None) -> None:
        self.sessions = (a, b)
        self.at = at
        self.seen_as = seen_as
        self.private = private or {}
        self.sent: list[tuple[PunchSession, Address, int, bytes]] = []
        self.now = 0.0
        self.drops: list[str] = []

    def pump(self, seconds: float, step: float = 0.01,
             tamper: Callable[[bytes], bytes] | None = None) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            for s in self.sessions:
                due = s.get_timer()
                if due is not None and due <= self.now:
                    s.handle_timer(self.now)
            moved = True
            while moved:
                moved = False
                for s in self.sessions:
                    for datagram, dst, sock in s.datagrams_to_send():
                        moved = True
                        self.sent.append((s, dst, sock, datagram))
                        target = self.at.get(dst)
                        if target is None:
                            continue
                        src = (self.private[s.me] if dst[0].startswith("10.")
                               and s.me in self.private else self.seen_as[s.me])
                        try:
                            target.receive(tamper(datagram) if tamper else datagram,
                                           src, 0, self.now)
                        except RemoteProtocolError as exc:
                            self.drops.append(exc.reason)
            self.now = round(self.now + step, 6)


HOST_A, HOST_B = ("10.0.0.1", 6783), ("10.0.0.2", 6783)
PUB_A, PUB_B = ("203.0.113.1", 6783), ("203.0.113.2", 6783)


def test_a_host_path_is_chosen_at_once_over_a_reflexive_one() -> None:
    a = session(A, B, [Candidate(R, PUB_B), Candidate(H, HOST_B)], initiator=True)
    b = session(B, A, [Candidate(R, PUB_A), Candidate(H, HOST_A)], initiator=False, seed=2)
    wire = Wire(a, b, {HOST_B: b, PUB_B: b, HOST_A: a, PUB_A: a}, {A: HOST_A, B: HOST_B})
    wire.pump(0.05)
    for s, other in ((a, HOST_B), (b, HOST_A)):
        assert s.path is not None and s.path.addr == other and s.path.how == "host", s.path
        assert s.state is SessionState.ANSWERING, s.state
    assert a.probes_sent == 3 and b.probes_sent == 2, "one round to both, and a nomination"


def test_after_a_reflexive_path_the_grace_lets_a_host_path_win() -> None:
    a = session(A, B, [Candidate(R, PUB_B), Candidate(H, HOST_B)], initiator=True)
    b = session(B, A, [Candidate(R, PUB_A)], initiator=False, seed=2)
    at = {PUB_B: b, PUB_A: a}
    wire = Wire(a, b, at, {A: PUB_A, B: PUB_B}, {A: HOST_A, B: HOST_B})
    wire.pump(0.05)
    assert a.state is SessionState.GRACE and a.path is None, "reflexive verified, waiting"
    at[HOST_B], at[HOST_A] = b, a  # the private path starts working within the grace
    wire.pump(PROBE_INTERVAL + 0.01)
    assert a.path is not None and a.path.how == "host", a.path


def test_without_a_better_path_the_first_verified_one_is_taken_after_the_grace() -> None:
    a = session(A, B, [Candidate(R, PUB_B), Candidate(H, HOST_B)], initiator=True)
    b = session(B, A, [Candidate(R, PUB_A)], initiator=False, seed=2)
    wire = Wire(a, b, {PUB_B: b, PUB_A: a}, {A: PUB_A, B: PUB_B})
    wire.pump(GRACE + 0.05)
    assert a.path is not None and (a.path.addr, a.path.how) == (PUB_B, "reflexive"), a.path
    assert a.path.rtt == pytest.approx(0.0)
    sent_then = a.probes_sent
    wire.pump(2.0)
    assert a.probes_sent == sent_then, "a decided session sends no more probes"


def test_a_probe_from_an_unknown_address_becomes_a_peer_reflexive_path() -> None:
    """B's datagrams come from a NAT mapping nobody told A of: A learns it from B's probe."""
    mapped_b = ("203.0.113.2", 40123)
    a = session(A, B, [Candidate(R, PUB_B)], initiator=True)
    b = session(B, A, [Candidate(R, PUB_A)], initiator=False, seed=2)
    wire = Wire(a, b, {mapped_b: b, PUB_A: a}, {A: PUB_A, B: mapped_b})
    wire.pump(GRACE + 0.05)
    assert a.path is not None and (a.path.addr, a.path.how) == (mapped_b, "peer-reflexive")
    assert b.path is not None and b.path.addr == PUB_A
    assert b.mapped[0] == mapped_b, "A's ack told B where its probes come from"
    for s, dst, _, _ in wire.sent:
        allowed = {PUB_B, mapped_b} if s is a else {PUB_A}
        assert dst in allowed, f"{'a' if s is a else 'b'} sent to {dst}, not given"


def test_no_answer_fails_after_the_punch_duration_with_the_count() -> None:
    a = session(A, B, [Candidate(R, PUB_B), Candidate(H, HOST_B)], initiator=True)
    b = session(B, A, [], initiator=False, seed=2)
    wire = Wire(a, b, {}, {A: PUB_A, B: PUB_B})
    wire.pump(PUNCH_DURATION - 0.05)
    assert a.failure is None and a.probing
    wire.pump(0.1)
    rounds = int(PUNCH_DURATION / PROBE_INTERVAL)
    assert a.state is SessionState.ENDED and a.get_timer() is None
    assert a.probes_sent == 2 * rounds, f"expected {2 * rounds} probes, sent {a.probes_sent}"
    assert a.failure == f"no answer to {2 * rounds} probes to 2 addresses in 8s", a.failure


def test_forged_replayed_and_misdirected_datagrams_change_nothing() -> None:
    a = session(A, B, [Candidate(R, PUB_B)], initiator=False)
    b = session(B, A, [Candidate(R, PUB_A)], initiator=True, seed=2)
    a.datagrams_to_send()
    (probe, _, _), = b.datagrams_to_send()
    other_keys = derive_keys(bytes(32), initiator=True)
    forged = seal_datagram(PunchKind.PROBE, SESSION, encode_probe(5, B), other_keys.probe_send)
    own = seal_datagram(PunchKind.PROBE, SESSION, encode_probe(6, B), a.keys.probe_send)
    for datagram, reason in ((forged, "authentication"), (own, "authentication"),
                             (probe[:-1] + bytes([probe[-1] ^ 1]), "authentication"),
                             (b"\x02\x01" + bytes(3), "malformed")):
        with pytest.raises(PunchDrop) as exc:
            a.receive(datagram, PUB_B, 0, 0.01)
        assert exc.value.reason == reason
    assert a.datagrams_to_send() == [], "nothing answered a forged probe"
    a.receive(probe, PUB_B, 0, 0.01)
    (ack, dst, sock), = a.datagrams_to_send()
    assert (dst, sock) == (PUB_B, 0) and peek_datagram(ack)[0] is PunchKind.PROBE_ACK
    with pytest.raises(PunchDrop) as exc:
        a.receive(probe, ("198.51.100.66", 1234), 0, 0.02)
    assert exc.value.reason == "replayed probe"
    assert a.datagrams_to_send() == [], "a replayed probe gets no answer, no probe"
    # B: an ack from elsewhere is refused, the genuine one verifies, its replay does nothing
    with pytest.raises(PunchDrop) as exc:
        b.receive(ack, ("198.51.100.66", 1234), 0, 0.03)
    assert exc.value.reason == "probe ack from another address"
    assert b.state is SessionState.PROBING
    b.receive(ack, PUB_A, 0, 0.04)  # the misdirected copy did not spoil the genuine one
    assert b.state is SessionState.GRACE
    with pytest.raises(PunchDrop) as exc:
        b.receive(ack, PUB_A, 0, 0.05)
    assert exc.value.reason == "unknown or replayed probe ack"


def test_an_ack_verifies_once_and_its_replay_is_refused() -> None:
    a = session(A, B, [Candidate(R, PUB_B)], initiator=False)
    b = session(B, A, [Candidate(R, PUB_A)], initiator=True, seed=2)
    a.datagrams_to_send()
    (probe, _, _), = b.datagrams_to_send()
    a.receive(probe, PUB_B, 0, 0.01)
    (ack, _, _), = [d for d in a.datagrams_to_send() if peek_datagram(d[0])[0] is PunchKind.PROBE_ACK]
    b.receive(ack, PUB_A, 0, 0.02)
    assert b.state is SessionState.GRACE
    with pytest.raises(PunchDrop) as exc:
        b.receive(ack, PUB_A, 0, 0.03)
    assert exc.value.reason == "unknown or replayed probe ack"
    b.handle_timer(0.02 + GRACE)
    assert b.state is SessionState.NOMINATING and b.path is None
    *_, (nomination, dst, sock) = b.datagrams_to_send()  # after the round due at 0.2
    assert (dst, sock) == (PUB_A, 0)
    assert decode_probe(open_datagram(nomination, b.keys.probe_send))[2] == pytest.approx(0.02)
    a.receive(nomination, PUB_B, 0, 0.4)
    assert a.path is not None and (a.path.addr, a.path.how) == (PUB_B, "reflexive")
    assert a.path.rtt == pytest.approx(0.02), "the initiator's measure, carried along"
    (answer, _, _), = a.datagrams_to_send()
    b.receive(answer, PUB_A, 0, 0.41)
    assert b.path is not None and b.path.addr == PUB_A and b.path.rtt == pytest.approx(0.02)
    assert a.state is b.state is SessionState.ANSWERING


def test_stream_datagrams_and_wrong_senders_are_refused() -> None:
    a = session(A, B, [Candidate(R, PUB_B)], initiator=True)
    stream = seal_datagram(PunchKind.STREAM, SESSION, b"x", a.keys.probe_recv)
    with pytest.raises(PunchDrop) as exc:
        a.receive(stream, PUB_B, 0, 0.0)
    assert exc.value.reason == "not a probe"
    third = 0x020000000C03
    b_keys = derive_keys(SECRET, initiator=False)
    wrong = seal_datagram(PunchKind.PROBE, SESSION, encode_probe(9, third), b_keys.probe_send)
    with pytest.raises(PunchDrop) as exc:
        a.receive(wrong, PUB_B, 0, 0.0)
    assert exc.value.reason == "wrong sender"


# --- the hard/easy spray -----------------------------------------------------------------------


def test_the_hard_side_probes_the_easy_reflexive_address_from_every_spray_socket() -> None:
    hard = session(A, B, [Candidate(H, HOST_B), Candidate(R, PUB_B)], initiator=True,
                   we_hard=True)
    assert hard.spray_sockets == SPRAY_SOCKETS
    first = hard.datagrams_to_send()
    socks = {sock for _, dst, sock in first if dst == PUB_B}
    assert socks == set(range(SPRAY_SOCKETS + 1)), "every socket probes the reflexive address"
    assert {dst for _, dst, sock in first if sock > 0} == {PUB_B}, "spray sockets: only that"
    total = len(first)
    while (due := hard.get_timer()) is not None:  # the timer fired when it is due
        hard.handle_timer(due)
        total += len(hard.datagrams_to_send())
    rounds = int(PUNCH_DURATION / PROBE_INTERVAL)
    spray_rounds = int(PUNCH_DURATION / SPRAY_REPROBE)
    assert hard.failure is not None
    assert total == 2 * rounds + SPRAY_SOCKETS * spray_rounds, total


def test_the_easy_side_sprays_random_ports_of_the_hard_ip_paced_in_its_window() -> None:
    hard_pub = ("203.0.113.9", 31337)
    easy = session(B, A, [Candidate(H, HOST_A), Candidate(R, hard_pub)], initiator=True,
                   they_hard=True, seed=3)
    assert easy.spray_sockets == 0
    sprayed: list[tuple[float, Address]] = []
    t = 0.0
    normal = 0
    while easy.get_timer() is not None:
        for _, dst, sock in easy.datagrams_to_send():
            assert sock == 0
            if dst in (HOST_A, hard_pub):
                normal += 1
            else:
                sprayed.append((t, dst))
        t = round(t + 0.05, 6)
        if (due := easy.get_timer()) is not None and due <= t:
            easy.handle_timer(t)
    ports = [d[1] for _, d in sprayed]
    assert len(ports) == len(set(ports)) == SPRAY_PORTS, len(ports)
    assert {d[0] for _, d in sprayed} == {hard_pub[0]}, "only the hard side's IP"
    assert all(PORT_RANGE[0] <= p <= PORT_RANGE[1] for p in ports)
    times = [s for s, _ in sprayed]
    assert min(times) >= SPRAY_DELAY and max(times) <= SPRAY_END + PROBE_INTERVAL, (
        min(times), max(times))
    per_round: dict[float, int] = {}
    for s in times:
        per_round[s] = per_round.get(s, 0) + 1
    assert max(per_round.values()) <= SPRAY_PORTS * PROBE_INTERVAL / (SPRAY_END - SPRAY_DELAY) + 2
    assert all(easy.allowed(d) for _, d in sprayed)
    assert normal == 2 * int(PUNCH_DURATION / PROBE_INTERVAL)


def test_a_peer_reflexive_flood_is_capped() -> None:
    a = session(A, B, [Candidate(R, PUB_B)], initiator=True)
    b_keys = derive_keys(SECRET, initiator=False)
    a.datagrams_to_send()
    for i in range(20):
        probe = seal_datagram(PunchKind.PROBE, SESSION, encode_probe(100 + i, B),
                              b_keys.probe_send)
        a.receive(probe, ("198.51.100.1", 2000 + i), 0, 0.01)
    a.datagrams_to_send()
    a.handle_timer(PROBE_INTERVAL)
    dsts = {dst for _, dst, _ in a.datagrams_to_send()}
    assert len(dsts) == 1 + 8, f"the candidate and 8 learnt addresses, got {len(dsts)}"
