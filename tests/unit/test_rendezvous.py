"""The punch planner (proto/rendezvous.py): its message codec, candidates and mapping kind,
the tie break of crossed offers, rate limits, the session cap, backoff, both-hard failures,
and what forged or replayed input does (nothing but a counted drop). Peers face each other
through ``Pair``: mesh messages delivered in order when ``pump`` runs, datagrams delivered
between public addresses (no NAT: tests/sim/test_punch_sim.py has those); virtual time."""

from __future__ import annotations

import random

import pytest

from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.framing import pack
from weftnet.proto.punch import SPRAY_SOCKETS, Candidate, CandidateKind, encode_probe
from weftnet.proto.punchwire import PunchKind, derive_keys, peek_datagram, seal_datagram
from weftnet.proto.rendezvous import (
    ANSWER_TIMEOUT,
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BOTH_HARD,
    MAX_CANDIDATES,
    MAX_SESSIONS,
    OFFER_MIN_INTERVAL,
    PUNCHED_HOLD,
    Answer,
    Cancel,
    Message,
    Offer,
    PathPunched,
    PunchFailed,
    Rendezvous,
    Seen,
    decode_message,
    encode_message,
    roles,
)

Address = tuple[str, int]
A, B, C = 0x020000000001, 0x020000000002, 0x020000000003
OBS1, OBS2 = 0x0200000000F1, 0x0200000000F2
HOST = {A: ("192.0.2.1", 6783), B: ("192.0.2.2", 6783), C: ("192.0.2.3", 6783)}
H, R = CandidateKind.HOST, CandidateKind.REFLEXIVE


def rv(me: int, seed: int = 0) -> Rendezvous:
    r = Rendezvous(me=me, port=6783, rng=random.Random(seed), random_bytes=random.Random(
        seed + 100).randbytes, now=0.0)
    r.set_host_candidates([HOST[me]] if me in HOST else [])
    return r


# --- the codec -----------------------------------------------------------------------------

CANDS = (Candidate(H, ("10.0.0.2", 6783)), Candidate(R, ("203.0.113.9", 1024)),
         Candidate(H, ("2001:db8::1", 65535)))
MESSAGES: list[Message] = [
    Seen(("203.0.113.9", 6783)), Seen(("2001:db8::5", 1)),
    Offer(1, bytes(32), CANDS, "hard", 3), Offer(2**64 - 1, bytes(range(32)), (), "easy", 255),
    Answer(7, CANDS, "unknown"), Cancel(9, "busy"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


BAD = {
    "not msgpack": b"\xc1",
    "not an array": pack({"a": 1}),
    "unknown type": pack([9, 1]),
    "wrong arity": pack([1]),
    "address not a pair": pack([1, ["203.0.113.9"]]),
    "ip not canonical": pack([1, ["203.000.113.9", 6783]]),
    "ip garbage": pack([1, ["example.com", 6783]]),
    "port 0": pack([1, ["203.0.113.9", 0]]),
    "port too big": pack([1, ["203.0.113.9", 65536]]),
    "port a bool": pack([1, ["203.0.113.9", True]]),
    "loopback": pack([1, ["127.0.0.1", 6783]]),
    "unspecified": pack([1, ["0.0.0.0", 6783]]),
    "multicast": pack([1, ["224.0.0.1", 6783]]),
    "link-local v6": pack([1, ["fe80::1", 6783]]),
    "broadcast": pack([1, ["255.255.255.255", 6783]]),
    "session 0": pack([3, 0, [], 0]),
    "session negative": pack([3, -1, [], 0]),
    "kind a bool": pack([3, 1, [], True]),
    "kind unknown": pack([3, 1, [], 3]),
    "attempt negative": pack([2, 1, bytes(32), [], 0, -1]),
    "attempt too big": pack([2, 1, bytes(32), [], 0, 256]),
    "offer without attempt": pack([2, 1, bytes(32), [], 0]),
    "short secret": pack([2, 1, bytes(31), [], 0, 0]),
    "secret a string": pack([2, 1, "x" * 32, [], 0, 0]),
    "too many candidates": pack([3, 1, [[0, "10.0.0.1", 1 + i] for i in
                                        range(MAX_CANDIDATES + 1)], 0]),
    "bad candidate kind": pack([3, 1, [[2, "10.0.0.1", 1]], 0]),
    "candidate too short": pack([3, 1, [[0, "10.0.0.1"]], 0]),
    "reason not a string": pack([4, 1, 5]),
    "too long": pack([4, 1, "x" * 3000]),
}


@pytest.mark.parametrize("payload", BAD.values(), ids=BAD.keys())
def test_malformed_messages_are_refused_with_the_remote_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)
    r = rv(A)
    r.on_message(B, payload, 0.0)
    assert r.counters.drops == {"malformed message": 1}, r.counters.drops
    assert not r.messages_to_send() and not r.datagrams_to_send()


# --- candidates and the mapping kind ----------------------------------------------------------


def observe(r: Rendezvous, observer: int, observer_addr: Address, seen: Address) -> None:
    r.link_address(observer, observer_addr, 0.0)
    r.on_message(observer, encode_message(Seen(seen)), 0.0)


def test_link_address_changes_are_told_to_the_peer_once_each() -> None:
    r = rv(A)
    r.link_address(B, ("203.0.113.2", 6783), 0.0)
    r.link_address(B, ("203.0.113.2", 6783), 1.0)
    r.link_address(B, ("203.0.113.2", 7000), 2.0)
    r.link_address(B, None, 3.0)
    r.link_address(B, ("203.0.113.2", 7000), 4.0)
    got = [(dst, decode_message(p)) for dst, p in r.messages_to_send()]
    assert got == [(B, Seen(("203.0.113.2", 6783))), (B, Seen(("203.0.113.2", 7000))),
                   (B, Seen(("203.0.113.2", 7000)))], got


@pytest.mark.parametrize(("seen1", "seen2", "kind"), [
    (("203.0.113.1", 6783), ("203.0.113.1", 6783), "easy"),
    (("203.0.113.1", 40001), ("203.0.113.1", 51234), "hard"),
    (("203.0.113.1", 6783), ("192.0.2.1", 6783), "unknown"),  # one sees our host address
    (("192.0.2.1", 6783), ("192.0.2.1", 6783), "easy"),  # both do: no NAT
])
def test_the_mapping_kind_follows_what_two_observers_see(seen1: Address, seen2: Address,
                                                        kind: str) -> None:
    r = rv(A)
    observe(r, OBS1, ("198.51.100.1", 6783), seen1)
    assert r.mapping() == ("easy" if seen1 == HOST[A] else "unknown"), "one NAT observer tells nothing"
    observe(r, OBS2, ("198.51.100.2", 6783), seen2)
    assert r.mapping() == kind
    cands = r.candidates()
    assert cands[0] == Candidate(H, HOST[A])
    assert {c.addr for c in cands[1:]} == {s for s in (seen1, seen2) if s != HOST[A]}
    rep = r.report()
    assert rep["mapping"] == kind and rep["candidates"]["host"] == ["192.0.2.1:6783"]


def test_an_observer_that_is_no_longer_direct_is_forgotten() -> None:
    r = rv(A)
    r.direct({OBS1, OBS2}, 0.0)
    observe(r, OBS1, ("198.51.100.1", 6783), ("203.0.113.1", 1))
    observe(r, OBS2, ("198.51.100.2", 6783), ("203.0.113.1", 2))
    assert r.mapping() == "hard"
    r.direct({OBS1}, 1.0)
    assert r.mapping() == "unknown" and len(r.candidates()) == 2


# --- two planners ----------------------------------------------------------------------------


class Pair:
    """Planners by name; ``pump`` delivers mesh messages and datagrams until quiet (between
    public addresses: a datagram to HOST[x] reaches x from the sender's HOST address)."""

    def __init__(self, *rvs: Rendezvous) -> None:
        self.rvs = {r.me: r for r in rvs}
        self.now = 0.0
        self.events: list[tuple[int, PathPunched | PunchFailed]] = []
        self.sent: list[tuple[int, Address, int]] = []
        self.messages: list[tuple[int, int, Message]] = []

    def pump(self, lose_datagrams: bool = False) -> None:
        moved = True
        while moved:
            moved = False
            for me, r in self.rvs.items():
                for dst, payload in r.messages_to_send():
                    moved = True
                    self.messages.append((me, dst, decode_message(payload)))
                    if dst in self.rvs:
                        self.rvs[dst].on_message(me, payload, self.now)
                for datagram, addr, sock in r.datagrams_to_send():
                    moved = True
                    self.sent.append((me, addr, sock))
                    target = next((t for t, h in HOST.items() if h == addr), None)
                    if target in self.rvs and not lose_datagrams:
                        self.rvs[target].receive(datagram, HOST[me], 0, self.now)
                while (event := r.next_event()) is not None:
                    self.events.append((me, event))

    def run(self, seconds: float, step: float = 0.05, lose_datagrams: bool = False) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 6)
            for r in self.rvs.values():
                due = r.get_timer()
                if due is not None and due <= self.now:
                    r.handle_timer(self.now)
            self.pump(lose_datagrams)


def make_hard(r: Rendezvous) -> None:
    observe(r, OBS1, ("198.51.100.1", 6783), ("203.0.113.77", 40000 + (r.me & 0xFF)))
    observe(r, OBS2, ("198.51.100.2", 6783), ("203.0.113.77", 50000 + (r.me & 0xFF)))
    r.messages_to_send()
    assert r.mapping() == "hard"


def test_both_offer_and_the_higher_names_offer_wins() -> None:
    a, b = rv(A, 1), rv(B, 2)
    pair = Pair(a, b)
    a.want({B}, 0.0)
    b.want({A}, 0.0)
    offers = {me: decode_message(p) for me, r in ((A, a), (B, b)) for _, p in r.messages_to_send()}
    a.on_message(B, encode_message(offers[B]), 0.0)  # crossed in flight
    b.on_message(A, encode_message(offers[A]), 0.0)
    pair.pump()
    assert b.counters.drops["crossed offers: ours wins"] == 1
    punched = {me: e for me, e in pair.events if isinstance(e, PathPunched)}
    assert set(punched) == {A, B}, pair.events
    assert punched[A].session == punched[B].session == offers[B].session  # type: ignore[union-attr]
    assert punched[B].initiator and not punched[A].initiator
    assert punched[A].keys.probe_send == punched[B].keys.probe_recv
    assert punched[A].addr == HOST[B] and punched[A].how == "host"
    assert [m for m in pair.messages if isinstance(m[2], Answer)] == [
        (A, B, Answer(offers[B].session, a.candidates(), "unknown"))]  # type: ignore[union-attr]
    for r, peer in ((a, B), (b, A)):
        s = r.status(pair.now)[peer]
        assert s["state"] == "direct" and s["reason"].startswith("punched (host path"), s
    r = a.report()["counters"]
    assert r["attempts"] == 1 and r["outcomes"] == {"direct": 1, "failed": 0}, r


def test_an_unanswered_offer_fails_and_backs_off_doubling_to_the_cap() -> None:
    a = rv(A, 3)
    pair = Pair(a)  # B never answers
    a.want({B}, 0.0)
    retries: list[float] = []
    offers_at: list[float] = []
    while pair.now < 3000:
        pair.run(1.0, step=0.5)
        offers_at += [pair.now for m in pair.messages if isinstance(m[2], Offer)]
        pair.messages.clear()
        for _, e in pair.events:
            assert isinstance(e, PunchFailed) and e.peer == B
            assert e.reason == f"no answer to our offer within {ANSWER_TIMEOUT:g}s"
            retries.append(e.retry_at - pair.now)
        pair.events.clear()
    assert len(retries) >= 8
    for i, delay in enumerate(retries):
        base = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** i)
        assert base - 0.5 <= delay <= base * 1.25 + 0.5, (i, delay, retries)
    assert len(set(round(d, 3) for d in retries)) == len(retries), "jittered"
    s = a.status(pair.now)[B]
    assert s["state"] in ("relayed", "probing")
    a.direct({B}, pair.now)
    assert a.status(pair.now)[B]["state"] == "direct"
    a.direct(set(), pair.now + 1)
    assert a.messages_to_send(), "the backoff was reset: an offer goes out at once"


def test_both_hard_fails_at_once_on_both_sides_with_the_reason() -> None:
    a, b = rv(A, 1), rv(B, 2)
    make_hard(a)
    make_hard(b)
    pair = Pair(a, b)
    a.want({B}, 0.0)
    pair.pump()
    fails = {me: e for me, e in pair.events}
    assert set(fails) == {A, B}
    for e in fails.values():
        assert isinstance(e, PunchFailed) and e.reason == BOTH_HARD, e
        assert BACKOFF_INITIAL <= e.retry_at <= BACKOFF_INITIAL * 1.25
    assert not pair.sent, "no probe at all"
    s = a.status(0.0)[B]
    assert s["state"] == "relayed" and s["reason"] == BOTH_HARD and s["next_retry"] >= 10, s
    assert a.sockets_wanted() == b.sockets_wanted() == 0


def test_the_hard_side_wants_spray_sockets_while_it_probes_an_easy_peer() -> None:
    a, b = rv(A, 1), rv(B, 2)
    make_hard(a)
    observe(b, OBS1, ("198.51.100.1", 6783), ("203.0.113.88", 6783))
    b.messages_to_send()
    pair = Pair(a, b)
    a.want({B}, 0.0)
    pair.pump(lose_datagrams=True)
    assert a.sockets_wanted() == SPRAY_SOCKETS and b.sockets_wanted() == 0
    pair.run(10, lose_datagrams=True)
    assert a.sockets_wanted() == 0, "the session is over"
    hard_socks = {sock for me, _, sock in pair.sent if me == A}
    assert hard_socks == set(range(SPRAY_SOCKETS + 1)), "every spray socket probed"
    assert {addr for me, addr, sock in pair.sent if me == A and sock} == {
        ("203.0.113.88", 6783)}, "spray sockets probe the easy side's reflexive address only"
    sprayed = {addr for me, addr, _ in pair.sent if me == B and addr[0] == "203.0.113.77"}
    assert len(sprayed) > 1000, "the easy side sprayed the hard side's IP"


def test_offers_from_one_peer_are_rate_limited() -> None:
    a = rv(A)
    for i, t in enumerate((0.0, 1.0, OFFER_MIN_INTERVAL + 0.5)):
        a.on_message(B, encode_message(Offer(100 + i, bytes(32), (), "unknown")), t)
    answers = [decode_message(p) for _, p in a.messages_to_send()]
    assert [m.session for m in answers if isinstance(m, Answer)] == [100, 102], answers
    assert a.counters.drops["offer rate limited"] == 1


def test_the_session_cap_answers_busy() -> None:
    a = rv(A)
    peers = [0x020000001000 + i for i in range(MAX_SESSIONS + 2)]
    cand = (Candidate(H, ("192.0.2.200", 6783)),)
    for i, p in enumerate(peers):
        a.on_message(p, encode_message(Offer(500 + i, bytes(32), cand, "unknown")), 0.0)
    msgs = [(dst, decode_message(p)) for dst, p in a.messages_to_send()]
    answered = [dst for dst, m in msgs if isinstance(m, Answer)]
    busy = [dst for dst, m in msgs if isinstance(m, Cancel) and m.reason == "busy"]
    assert answered == peers[:MAX_SESSIONS] and busy == peers[MAX_SESSIONS:], msgs
    assert a.counters.drops["too many sessions"] == 2
    a.want({B}, 0.0)
    assert not a.messages_to_send(), "no offer of our own beyond the cap either"


def test_a_cancel_fails_the_offer_it_names_only() -> None:
    a = rv(A)
    a.want({B}, 0.0)
    (_, payload), = a.messages_to_send()
    offer = decode_message(payload)
    assert isinstance(offer, Offer)
    a.on_message(B, encode_message(Cancel(offer.session + 1, "busy")), 0.1)
    assert a.next_event() is None and a.counters.drops["cancel of no session"] == 1
    a.on_message(B, encode_message(Cancel(offer.session, "busy")), 0.2)
    e = a.next_event()
    assert isinstance(e, PunchFailed) and e.reason == "the peer cancelled: busy"


def test_answers_to_no_offer_and_stray_datagrams_are_dropped_and_counted() -> None:
    a = rv(A)
    a.on_message(B, encode_message(Answer(5, (), "unknown")), 0.0)
    keys = derive_keys(bytes(32), initiator=False)
    probe = seal_datagram(PunchKind.PROBE, 5, encode_probe(1, B), keys.probe_send)
    assert not a.receive(probe, ("198.51.100.9", 1), 0, 0.0)
    assert not a.receive(b"\x02\x01", ("198.51.100.9", 1), 0, 0.0)
    stream = seal_datagram(PunchKind.STREAM, 5, b"", keys.stream_send)
    assert not a.receive(stream, ("198.51.100.9", 1), 0, 0.0)
    assert a.counters.drops == {"answer to no offer of ours": 1, "unknown session": 1,
                                "malformed": 1}, a.counters.drops
    assert not a.datagrams_to_send()
    assert [(dst, decode_message(p)) for dst, p in a.messages_to_send()] == [
        (B, Cancel(5, "no such offer"))], "the answerer may stop probing at once"


def test_an_answer_after_the_offer_timed_out_is_cancelled_and_both_stop() -> None:
    a, b = rv(A, 1), rv(B, 2)
    a.want({B}, 0.0)
    (_, offer), = a.messages_to_send()
    a.handle_timer(ANSWER_TIMEOUT)  # gave up
    assert isinstance(a.next_event(), PunchFailed)
    b.on_message(A, offer, ANSWER_TIMEOUT + 1)
    pair = Pair(a, b)
    pair.now = ANSWER_TIMEOUT + 1
    pair.pump(lose_datagrams=True)
    reasons = [e.reason for me, e in pair.events if me == B and isinstance(e, PunchFailed)]
    assert reasons == ["the peer cancelled: no such offer"], pair.events
    assert b.status(pair.now)[A]["state"] == "relayed"


def test_forged_and_replayed_probes_for_a_live_session_are_counted_and_unanswered() -> None:
    a = rv(A, 1)
    cand = (Candidate(H, HOST[B]),)
    secret = bytes(range(32))
    a.on_message(B, encode_message(Offer(77, secret, cand, "unknown")), 0.0)
    a.messages_to_send()
    a.datagrams_to_send()
    b_keys = derive_keys(secret, initiator=True)
    genuine = seal_datagram(PunchKind.PROBE, 77, encode_probe(1, B), b_keys.probe_send)
    forged = seal_datagram(PunchKind.PROBE, 77, encode_probe(2, B), bytes(32))
    assert not a.receive(forged, ("198.51.100.66", 9), 0, 0.1)
    assert not a.datagrams_to_send(), "a forged probe is not answered"
    assert a.receive(genuine, HOST[B], 0, 0.1)
    out = a.datagrams_to_send()
    assert {peek_datagram(d)[0] for d, _, _ in out} == {PunchKind.PROBE_ACK, PunchKind.PROBE}
    assert not a.receive(genuine, ("198.51.100.66", 9), 0, 0.2)
    assert not a.datagrams_to_send(), "a replayed probe from elsewhere is not answered"
    assert not a.receive(genuine, HOST[B], SPRAY_SOCKETS + 1, 0.2)
    assert a.counters.drops == {"authentication": 1, "replayed probe": 1,
                                "unknown session": 1}, a.counters.drops


def test_hostile_input_never_makes_us_probe_an_address_we_were_not_given() -> None:
    rng = random.Random(7)
    a = rv(A, 7)
    given = {HOST[B], ("203.0.113.2", 6783)}
    cands = tuple(Candidate(H if i == 0 else R, addr) for i, addr in enumerate(sorted(given)))
    secret = bytes(range(32))
    a.on_message(B, encode_message(Offer(77, secret, cands, "unknown")), 0.0)
    b_keys = derive_keys(secret, initiator=True)
    sources: set[Address] = set()
    sent: set[Address] = set()
    now = 0.0
    for i in range(3000):
        now = round(now + 0.005, 6)
        src = (f"198.51.100.{rng.randint(1, 254)}", rng.randint(1, 65535))
        kind = rng.choice([PunchKind.PROBE, PunchKind.PROBE_ACK])
        key = b_keys.probe_send if rng.random() < 0.02 else rng.randbytes(32)
        body = encode_probe(rng.getrandbits(64), B) if kind is PunchKind.PROBE else rng.randbytes(
            rng.randint(0, 40))
        datagram = seal_datagram(kind, rng.choice([77, 78]), body, key)
        if a.receive(datagram, src, 0, now) and kind is PunchKind.PROBE:
            sources.add(src)  # an authentic probe: its source may be probed and answered
        rubbish = rng.randbytes(rng.randint(0, 60))
        a.receive(rubbish, src, rng.randint(0, 300), now)
        a.on_message(B if i % 2 else C, rubbish, now)
        if (due := a.get_timer()) is not None and due <= now:
            a.handle_timer(now)
        sent |= {addr for _, addr, _ in a.datagrams_to_send()}
    assert sent <= given | sources, sorted(sent - given - sources)[:5]
    assert sent >= given
    assert a.counters.drops["authentication"] > 500


def test_a_punched_path_that_carries_no_connection_fails_after_the_hold() -> None:
    a, b = rv(A, 1), rv(B, 2)
    pair = Pair(a, b)
    a.want({B}, 0.0)
    pair.pump()
    assert {type(e) for _, e in pair.events} == {PathPunched}
    pair.events.clear()
    pair.run(PUNCHED_HOLD + 1)
    fails = [e for me, e in pair.events if me == A]
    assert len(fails) == 1 and isinstance(fails[0], PunchFailed), fails
    assert fails[0].reason == "the punched path carried no connection within 30s"
    assert a.status(pair.now)[B]["state"] == "relayed"


def test_direct_peers_are_neither_offered_nor_answered() -> None:
    a = rv(A)
    a.direct({B}, 0.0)
    a.want({B, A}, 0.0)
    assert not a.messages_to_send()
    a.on_message(B, encode_message(Offer(3, bytes(32), (), "unknown")), 0.0)
    assert not a.messages_to_send() and a.counters.drops["offer from a direct peer"] == 1
    assert a.get_timer() is None


def test_refused_messages_leave_no_peer_in_the_status() -> None:
    a = rv(A)
    a.direct({C}, 0.0)
    a.on_message(B, encode_message(Answer(5, (), "unknown")), 0.0)
    a.on_message(B, encode_message(Cancel(5, "x")), 0.0)
    a.on_message(C, encode_message(Offer(6, bytes(32), (), "unknown")), 0.0)
    assert set(a.status(0.0)) == set(), a.status(0.0)


@pytest.mark.parametrize(("low", "high", "attempt", "want"), [
    ("hard", "hard", 0, None), ("hard", "hard", 5, None),
    ("hard", "easy", 0, (True, False)), ("unknown", "hard", 0, (False, True)),
    ("easy", "easy", 3, (False, False)),
    ("unknown", "easy", 0, (False, False)), ("unknown", "easy", 1, (True, False)),
    ("easy", "unknown", 2, (False, True)),
    ("unknown", "unknown", 0, (False, False)), ("unknown", "unknown", 1, (True, False)),
    ("unknown", "unknown", 2, (False, True)), ("unknown", "unknown", 3, (True, False)),
])
def test_roles(low: str, high: str, attempt: int, want: tuple[bool, bool] | None) -> None:
    assert roles(low, high, attempt) == want


def test_both_ends_agree_on_the_roles_whoever_offers() -> None:
    """Unknown kinds, second attempt: the lower name acts hard, offering or answering."""
    for offerer in (A, B):
        a, b = rv(A, 1), rv(B, 2)
        for r in (a, b):
            r.set_host_candidates([])
            observe(r, OBS1, ("198.51.100.1", 6783), ("203.0.113.7" if r is a else
                                                       "203.0.113.8", 6783))
            r.messages_to_send()
        first, second = (a, b) if offerer == A else (b, a)
        first._state(second.me).attempt = 1
        pair = Pair(a, b)
        first.want({second.me}, 0.0)
        pair.pump(lose_datagrams=True)
        assert a.sockets_wanted() == SPRAY_SOCKETS and b.sockets_wanted() == 0, offerer
