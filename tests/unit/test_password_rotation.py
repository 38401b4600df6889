"""Several passwords: candidates in the handshake, rekeying an established connection, the
sleeve session switch, and the mesh moving its connections (issue 18, pure tier)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from tests.pairs import ALPHA, BETA, PEER_SEED
from weftnet.proto.connection import (
    Connection,
    ConnectionFailed,
    ConnectionPair,
    HandshakeCompleted,
    MessageReceived,
    PeerSwitchedKeys,
    RekeyCompleted,
    RekeyFailed,
    drain_events,
)
from weftnet.proto.errors import LocalProtocolError, RemoteProtocolError
from weftnet.proto.framing import pack, unpack
from weftnet.proto.handshake import (
    BAD_SPAKE,
    MAX_CANDIDATES,
    WRONG_PASSWORD,
    Handshake,
    HandshakeStep,
    SessionKeys,
    decode_confirms,
    decode_hello,
    decode_spakes,
    validate_passwords,
)
from weftnet.proto.messages import (
    Gossip,
    GossipKind,
    KeySwitch,
    Rekey,
    decode_message,
    encode_message,
)
from weftnet.proto.sleeve import Kind, SleeveDrop, SleeveSession
from weftnet.proto.sleeve_rotation import OVERLAP, SessionRotation

A, B, C = b"alpha-pw", b"bravo-pw", b"charlie-pw"
LISTS: list[tuple[bytes, ...]] = [(A,), (B,), (A, B), (B, A), (C, B)]


def rng(seed: int) -> Any:
    return random.Random(seed).randbytes


def expected_winner(initiator: tuple[bytes, ...], responder: tuple[bytes, ...]) -> bytes | None:
    return next((p for p in initiator if p in responder), None)


def run_handshakes(a: Handshake, b: Handshake) -> tuple[str | None, str | None]:
    """Exchange every frame until both are done; each side's failure (None: completed)."""
    errors: list[str | None] = [None, None]
    queues = [[a.hello_body], [b.hello_body]]
    sides = [a, b]
    while queues[0] or queues[1]:
        for me in (0, 1):
            other = 1 - me
            while queues[me]:
                body = queues[me].pop(0)
                if errors[other] is not None or sides[other].step is HandshakeStep.NOTHING:
                    continue
                try:
                    queues[other].extend(sides[other].receive_frame(body))
                except RemoteProtocolError as exc:
                    errors[other] = exc.reason
    return errors[0], errors[1]


# ------------------------------------------------------------------ handshake candidates

@pytest.mark.parametrize(("ours", "theirs"), list(itertools.product(LISTS, LISTS)))
def test_first_common_password_in_the_initiators_order_wins_at_both_ends(
        ours: tuple[bytes, ...], theirs: tuple[bytes, ...]) -> None:
    a = Handshake(outbound=True, local=ALPHA, passwords=ours, random_bytes=rng(1))
    b = Handshake(outbound=False, local=BETA, passwords=theirs, random_bytes=rng(1 + PEER_SEED))
    winner = expected_winner(ours, theirs)
    errors = run_handshakes(a, b)
    if winner is None:
        assert errors == (WRONG_PASSWORD, WRONG_PASSWORD)
        assert a.result is None and b.result is None
        return
    assert errors == (None, None)
    assert a.result is not None and b.result is not None
    assert a.result.keys is not None and b.result.keys is not None
    assert a.result.password_index == ours.index(winner)
    assert b.result.password_index == theirs.index(winner)
    assert a.result.keys.control_send == b.result.keys.control_recv
    assert a.result.keys.sleeve.sleeve_send == b.result.keys.sleeve.sleeve_recv
    assert a.result.conn_uid == b.result.conn_uid


def test_the_winner_does_not_depend_on_the_randomness() -> None:
    for seed in range(4):
        a = Handshake(outbound=True, local=ALPHA, passwords=(A, B), random_bytes=rng(seed))
        b = Handshake(outbound=False, local=BETA, passwords=(B, A),
                      random_bytes=rng(seed + PEER_SEED))
        assert run_handshakes(a, b) == (None, None)
        assert a.result and b.result and (a.result.password_index, b.result.password_index) == (0, 1)


def test_one_password_each_is_the_single_pair_handshake() -> None:
    # same frames as before: the hello carries no count, no Spake frame is sent
    a = Handshake(outbound=True, local=ALPHA, passwords=(A,), random_bytes=rng(1))
    b = Handshake(outbound=False, local=BETA, password=A, random_bytes=rng(1 + PEER_SEED))
    assert a.hello_body == Handshake(outbound=True, local=ALPHA, password=A,
                                     random_bytes=rng(1)).hello_body
    assert "cands" not in unpack(a.hello_body)
    replies = a.receive_frame(b.hello_body)
    assert len(replies) == 1 and set(unpack(replies[0])) == {"confirm"}


def test_spake_frame_carries_one_run_per_further_pair() -> None:
    a = Handshake(outbound=True, local=ALPHA, passwords=(A, B, C), random_bytes=rng(1))
    b = Handshake(outbound=False, local=BETA, passwords=(C, B), random_bytes=rng(1 + PEER_SEED))
    assert decode_hello(a.hello_body).candidates == 3
    (spakes,) = a.receive_frame(b.hello_body)
    assert a.step is HandshakeStep.SPAKE
    assert len(decode_spakes(spakes, 5)) == 5  # 3 x 2 pairs, the first in the hellos
    (theirs,) = b.receive_frame(a.hello_body)
    (confirm,) = a.receive_frame(theirs)
    assert len(decode_confirms(confirm, 6)) == 6


def test_hello_reveals_only_a_count_before_the_pake() -> None:
    h1 = Handshake(outbound=True, local=ALPHA, passwords=(A, B), random_bytes=rng(1))
    h2 = Handshake(outbound=True, local=ALPHA, passwords=(C, B), random_bytes=rng(1))
    d1, d2 = unpack(h1.hello_body), unpack(h2.hello_body)
    assert set(d1) == set(d2) and d1["cands"] == d2["cands"] == 2
    # the only password-dependent field is pair 0's SPAKE2 message (a blinded point)
    assert {k for k in d1 if d1[k] != d2[k]} == {"spake"}
    for pw in (A, B):
        assert pw not in h1.hello_body


@pytest.mark.parametrize("cands", [0, MAX_CANDIDATES + 1, True, "2", -1])
def test_hello_with_a_bad_candidate_count_is_malformed(cands: Any) -> None:
    h = Handshake(outbound=True, local=ALPHA, passwords=(A, B), random_bytes=rng(1))
    doc = unpack(h.hello_body)
    doc["cands"] = cands
    with pytest.raises(RemoteProtocolError, match="^malformed handshake: "):
        decode_hello(pack(doc))


def test_candidate_count_without_a_password_is_malformed() -> None:
    h = Handshake(outbound=True, local=ALPHA, random_bytes=rng(1))
    doc = unpack(h.hello_body)
    doc["cands"] = 2
    with pytest.raises(RemoteProtocolError, match="^malformed handshake: "):
        decode_hello(pack(doc))


@pytest.mark.parametrize("passwords", [(A,) * 2, (A, B, C, b"d", b"e"), (A, b"")])
def test_bad_candidate_lists_are_local_errors(passwords: tuple[bytes, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        Connection(outbound=True, local=ALPHA, passwords=passwords, now=0.0, random_bytes=rng(1))
    with pytest.raises(LocalProtocolError):
        validate_passwords(passwords)
    with pytest.raises(LocalProtocolError, match="no password"):
        validate_passwords(())


def test_spake_and_confirm_frames_of_the_wrong_size_are_malformed() -> None:
    for body in (pack({"spake": b"S" * 32}), pack({"spake": b"S" * 66}), pack([b"S" * 33]),
                 pack({"spake": "S" * 33})):
        with pytest.raises(RemoteProtocolError, match="^malformed handshake: "):
            decode_spakes(body, 1)
    with pytest.raises(RemoteProtocolError, match=BAD_SPAKE):
        decode_spakes(pack({"spake": b"A" * 33}), 1)
    with pytest.raises(RemoteProtocolError, match="^malformed handshake: "):
        decode_confirms(pack({"confirm": bytes(32 * 3)}), 4)


class Tamper(ConnectionPair):
    """Flips one byte of the n-th handshake frame a sends (after the length prefix)."""

    frame = 0
    offset = 0
    seen = 0  # frames of a's carried so far (pump hands over whole frames)

    def carry(self, data: bytes, offset: int, from_a: bool) -> bytes:
        if not from_a or not data:
            return data
        out = bytearray(data)
        pos = 0
        while pos + 4 <= len(out):
            size = int.from_bytes(out[pos:pos + 4], "big")
            if self.seen == self.frame:
                out[pos + 4 + self.offset % size] ^= 0x01
            pos += 4 + size
            self.seen += 1
        return bytes(out)


def _tamper_pair(cls: type[ConnectionPair], seed: int) -> ConnectionPair:
    pair = cls(Connection(outbound=True, local=ALPHA, passwords=(A, B), now=0.0,
                          random_bytes=rng(seed)),
               Connection(outbound=False, local=BETA, passwords=(B, A), now=0.0,
                          random_bytes=rng(seed + PEER_SEED)))
    pair.pump(0.0)
    return pair


@pytest.mark.parametrize("frame", [0, 1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_tampering_with_any_frame_never_yields_other_keys(frame: int, seed: int) -> None:
    honest = _tamper_pair(ConnectionPair, seed)
    _, honest_b = honest.events()
    cls = type("T", (Tamper,), {"frame": frame, "offset": random.Random(seed).randrange(4096)})
    pair = _tamper_pair(cls, seed)
    _, eb = pair.events()
    # A flipped bit can only break a tag, never forge one: b fails, or completes on a
    # pair whose two passwords are equal (a later one than the honest run's when the
    # winner's tag was broken; then the ends disagree and a's first message fails at b,
    # as any tampering on an established stream does), never on other keys.
    done = [e for e in eb if isinstance(e, HandshakeCompleted)]
    if not done:
        assert [type(e) for e in eb] == [ConnectionFailed], (frame, seed)
        return
    (event,) = done
    assert event.password_index is not None
    assert (B, A)[event.password_index] in (A, B)
    if done != honest_b:
        assert frame == 2 and pair.a.established  # only a broken tag can do this
        pair.a.handle_timer(5.0)  # a heartbeat under a's keys
        pair.pump(5.0)
        assert [type(e) for e in pair.events()[1]] == [ConnectionFailed]


# ------------------------------------------------------------------ rekeying a connection

def pair_with(pa: tuple[bytes, ...], pb: tuple[bytes, ...], seed: int = 1) -> ConnectionPair:
    pair = ConnectionPair(
        Connection(outbound=True, local=ALPHA, passwords=pa, now=0.0, random_bytes=rng(seed)),
        Connection(outbound=False, local=BETA, passwords=pb, now=0.0,
                   random_bytes=rng(seed + PEER_SEED)))
    pair.pump(0.0)
    ea, eb = pair.events()
    assert [type(e) for e in ea + eb] == [HandshakeCompleted] * 2
    return pair


def test_rekey_moves_both_ends_to_the_new_preferred_password() -> None:
    pair = pair_with((A, B), (A, B))
    assert pair.a.password == pair.b.password == A
    pair.b.rekey((B, A), 1.0)       # b moves B first: the dialler's order still rules
    pair.pump(1.0)
    ea, eb = pair.events()
    assert pair.a.password == pair.b.password == A
    pair.a.rekey((B, A), 2.0)
    pair.pump(2.0)
    ea, eb = pair.events()
    assert [type(e) for e in ea] == [RekeyCompleted, PeerSwitchedKeys]
    assert [type(e) for e in eb] == [RekeyCompleted, PeerSwitchedKeys]
    assert pair.a.password == pair.b.password == B
    assert isinstance(ea[0], RekeyCompleted) and isinstance(eb[0], RekeyCompleted)
    assert ea[0].sleeve_uid == eb[0].sleeve_uid != pair.a.conn_uid
    assert ea[0].sleeve_keys.sleeve_send == eb[0].sleeve_keys.sleeve_recv
    assert pair.a.conn_uid == pair.b.conn_uid  # the connection's identity stays
    # the control channel runs on the new keys: messages still flow both ways
    pair.a.handle_timer(10.0)
    pair.b.handle_timer(10.0)
    pair.pump(10.0)
    assert pair.a.established and pair.b.established and not pair.a.rekeying


def test_both_ends_rekeying_at_once_run_one_handshake() -> None:
    pair = pair_with((A,), (A,))
    pair.a.rekey((B, A), 1.0)
    pair.b.rekey((B, A), 1.0)
    pair.pump(1.0)
    ea, eb = pair.events()
    assert [type(e) for e in ea] == [RekeyCompleted, PeerSwitchedKeys]
    assert [type(e) for e in eb] == [RekeyCompleted, PeerSwitchedKeys]
    assert pair.a.password == pair.b.password == B


def test_rekey_during_a_run_runs_again_after_it() -> None:
    pair = pair_with((A,), (A, B))
    pair.a.rekey((A, B), 1.0)
    pair.a.rekey((B,), 1.0)          # before the first run got anywhere
    pair.pump(1.0)
    ea, _ = pair.events()
    assert [type(e) for e in ea] == [RekeyCompleted, PeerSwitchedKeys] * 2
    assert pair.a.password == pair.b.password == B


def test_rekey_without_a_common_password_keeps_the_old_keys() -> None:
    pair = pair_with((A,), (A,))
    pair.a.rekey((B,), 1.0)
    pair.pump(1.0)
    ea, eb = pair.events()
    assert ea == [RekeyFailed(WRONG_PASSWORD)] and eb == [RekeyFailed(WRONG_PASSWORD)]
    assert pair.a.established and pair.b.established and pair.a.password == A
    pair.a.handle_timer(6.0)
    pair.pump(6.0)
    assert pair.events() == ([], [])


def test_unexpected_key_switch_or_rekey_from_the_peer_ends_the_connection() -> None:
    for msg in (KeySwitch(), Rekey(b"\x00garbage")):
        pair = pair_with((A,), (A,))
        pair.a._send_message(msg, 1.0)  # white-box: an authenticated but buggy peer
        pair.pump(1.0)
        _, eb = pair.events()
        assert [type(e) for e in eb] == [ConnectionFailed]


def test_rekey_messages_round_trip() -> None:
    for msg in (Rekey(b"x" * 100), KeySwitch()):
        assert decode_message(encode_message(msg)) == msg
    with pytest.raises(RemoteProtocolError):
        decode_message(pack([3, b"x" * 5000]))
    with pytest.raises(RemoteProtocolError):
        decode_message(pack([4, 1]))


def test_plaintext_connection_cannot_rekey() -> None:
    pair = ConnectionPair(Connection(outbound=True, local=ALPHA, now=0.0, random_bytes=rng(1)),
                          Connection(outbound=False, local=BETA, now=0.0, random_bytes=rng(5)))
    pair.pump(0.0)
    with pytest.raises(LocalProtocolError):
        pair.a.rekey((A,), 1.0)


# ------------------------------------------------------------------ switch under loss

class Lossy:
    """A seeded datagram channel: loses, duplicates and reorders."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.queue: list[bytes] = []

    def send(self, datagram: bytes) -> None:
        r = self.rnd.random()
        if r < 0.1:
            return
        self.queue.append(datagram)
        if r > 0.9:
            self.queue.append(datagram)

    def take(self) -> list[bytes]:
        out = self.queue
        self.queue = []
        self.rnd.shuffle(out)
        return out


class End:
    def __init__(self, conn: Connection, keys: Any, uid: int, outbound: bool) -> None:
        self.conn = conn
        send, recv = keys
        self.rot = SessionRotation(SleeveSession(conn_uid=uid, send_key=send, recv_key=recv,
                                                 now=0.0))
        self.delivered: list[int] = []
        self.refused: list[str] = []
        self.gossip: list[bytes] = []  # control messages received, in order

    def events(self, now: float) -> None:
        for event in drain_events(self.conn):
            if isinstance(event, MessageReceived):
                assert isinstance(event.message, Gossip)
                self.gossip.append(event.message.payload)
            elif isinstance(event, RekeyCompleted):
                self.rot.agreed(event.sleeve_uid, event.sleeve_keys, now)
            elif isinstance(event, PeerSwitchedKeys):
                self.rot.switched(now)

    def receive(self, datagram: bytes, now: float) -> None:
        uid = int.from_bytes(datagram[4:12], "big")
        session = self.rot.session_for(uid)
        if session is None:
            self.refused.append("no session")
            return
        try:
            _, body = session.open(datagram, now)
        except SleeveDrop as exc:
            self.refused.append(exc.reason)
            return
        self.delivered.append(int.from_bytes(bytes(body), "big"))


@pytest.mark.parametrize("seed", range(8))
def test_switch_under_a_lossy_channel_delivers_nothing_twice_and_refuses_nothing(
        seed: int) -> None:
    rnd = random.Random(seed)
    pair = pair_with((A,), (A,), seed=seed)
    ka = pair.a._result.keys.sleeve  # type: ignore[union-attr]  # white-box: first keys
    kb = pair.b._result.keys.sleeve  # type: ignore[union-attr]
    uid = pair.a.conn_uid
    assert uid is not None
    a = End(pair.a, (ka.sleeve_send, ka.sleeve_recv), uid, True)
    b = End(pair.b, (kb.sleeve_send, kb.sleeve_recv), uid, False)
    to_b, to_a = Lossy(rnd), Lossy(rnd)
    counter = itertools.count()
    sent = {"a": set(), "b": set()}  # type: dict[str, set[int]]
    gossip: dict[str, list[bytes]] = {"a": [], "b": []}
    now = 1.0
    rotations = [((A, B), (A, B)), ((B, A), (B, A)), ((B,), (B,))]
    step = 0
    for tick in range(400):
        now += 0.01
        # the ends change their lists at seeded moments, one end first
        if tick % 100 == 50 and step < len(rotations):
            first, second = (a, b) if rnd.random() < 0.5 else (b, a)
            first.conn.rekey(rotations[step][0], now)
            if rnd.random() < 0.5:
                second.conn.rekey(rotations[step][1], now)
            else:
                pair.pump(now)
                second.events(now)
                first.events(now)
                second.conn.rekey(rotations[step][1], now)
            step += 1
        for name, end, chan in (("a", a, to_b), ("b", b, to_a)):
            n = next(counter)
            sent[name].add(n)
            chan.send(end.rot.current.seal(Kind.DATA, n.to_bytes(8, "big"), now))
            if rnd.random() < 0.2:  # gossip on the control stream, whatever its keys now
                end.conn.send_message(Gossip("t", GossipKind.DELTA, 1, 0, b"%d" % n), now)
                gossip[name].append(b"%d" % n)
        if rnd.random() < 0.3:  # the control stream moves at its own pace
            pair.pump(now, chunk_size=rnd.choice([None, 7, 100]))
            a.events(now)
            b.events(now)
        for datagram in to_b.take():
            b.receive(datagram, now)
        for datagram in to_a.take():
            a.receive(datagram, now)
        a.rot.handle_timer(now)
        b.rot.handle_timer(now)
    pair.pump(now)
    a.events(now)
    b.events(now)
    assert pair.a.password == pair.b.password == B
    assert a.rot.current.conn_uid == b.rot.current.conn_uid != uid
    # nothing twice, nothing invented; refused only as a replay (the channel's duplicates)
    for end, other in ((a, "b"), (b, "a")):
        assert len(end.delivered) == len(set(end.delivered)), seed
        assert set(end.delivered) <= sent[other]
        assert set(end.refused) <= {"replay"}, (seed, end.refused)
    assert b.gossip == gossip["a"] and a.gossip == gossip["b"]  # all, once, in order
    # old keys are erased after the overlap
    later = now + OVERLAP
    a.rot.handle_timer(later)
    b.rot.handle_timer(later)
    assert a.rot.old is None and b.rot.old is None and a.rot.next is None


def test_rotation_keeps_every_uid_and_finds_sessions() -> None:
    first = SleeveSession(conn_uid=5, send_key=bytes(32), recv_key=bytes(range(32)), now=0.0)
    rot = SessionRotation(first)
    assert rot.switched(0.0) is first  # nothing agreed: nothing changes
    new = rot.agreed(9, SessionKeys(bytes([1]) * 32, bytes([2]) * 32), 1.0)
    assert rot.session_for(9) is new and rot.session_for(5) is first and rot.current is first
    assert rot.switched(2.0) is new and rot.old is first
    assert rot.get_timer() == 2.0 + OVERLAP
    rot.handle_timer(2.0 + OVERLAP)
    assert rot.session_for(5) is None and rot.uids == [5, 9]


# ------------------------------------------------------------------ the mesh

def _mesh_conns(host: Any) -> list[dict[str, Any]]:
    return [c for c in host.mesh.report(0.0)["connections"] if c["state"] != "retrying"]


@pytest.mark.parametrize("seed", range(3))
def test_mesh_rotation_host_by_host_never_drops_a_connection(seed: int) -> None:
    from tests.unit.test_mesh import MiniNet
    from weftnet.proto.mesh import KeysAgreed, KeysSwitched, PeerDisconnected

    net = MiniNet(seed)
    h1 = net.add(1, passwords=(A,))
    h2 = net.add(2, passwords=(A,), targets=[h1.address])
    h3 = net.add(3, passwords=(A,), targets=[h1.address, h2.address])
    hosts = [h1, h2, h3]
    net.advance(1.0)
    assert all(len(h.connected()) == 2 for h in hosts)
    order = hosts[:]
    random.Random(seed).shuffle(order)
    for step in ((A, B), (B, A), (B,)):
        for host in order:
            host.mesh.set_passwords(step, net.now)
            net.advance(0.5)
            for h in hosts:  # every connection uses a password this host still holds
                assert all(c["password"] is not None for c in _mesh_conns(h)), (seed, step)
    for h in hosts:
        assert not [e for e in h.events if isinstance(e, PeerDisconnected)], seed
        assert [c["password"] for c in _mesh_conns(h)] == [1, 1]
        assert any(isinstance(e, KeysAgreed) for e in h.events)
        assert any(isinstance(e, KeysSwitched) for e in h.events)
        assert h.mesh.stats.rekeys_failed == 0
    # afterwards: a router with only the old password is refused, one with the new joins
    old = net.add(4, passwords=(A,), targets=[h1.address])
    net.advance(1.0)
    assert not old.connected()
    assert h1.mesh.stats.handshake_failures.get("wrong password (authentication failed)")
    new = net.add(5, passwords=(B,), targets=[h1.address])
    net.advance(1.0)
    assert len(new.connected()) >= 1


def test_mesh_connection_whose_password_was_removed_ends_as_retired() -> None:
    from tests.unit.test_mesh import MiniNet
    from weftnet.proto.mesh import PASSWORD_RETIRED, PeerDisconnected

    net = MiniNet(7)
    h1 = net.add(1, passwords=(A, B))
    h2 = net.add(2, passwords=(A,), targets=[h1.address])
    net.advance(1.0)
    assert [c["password"] for c in _mesh_conns(h1)] == [1]
    h1.mesh.set_passwords((B,), net.now)  # the peer knows only A: nothing to move to
    net.pump()
    (gone1,) = [e for e in h1.events if isinstance(e, PeerDisconnected)]
    (gone2,) = [e for e in h2.events if isinstance(e, PeerDisconnected)]
    assert gone1.reason == PASSWORD_RETIRED
    assert gone2.reason == f"peer closed the connection: {PASSWORD_RETIRED}"


def test_mesh_password_numbers_follow_the_list() -> None:
    from tests.unit.test_mesh import MiniNet

    net = MiniNet(3)
    h1 = net.add(1, passwords=(A, B))
    net.add(2, passwords=(B,), targets=[h1.address])
    net.advance(1.0)
    assert [c["password"] for c in _mesh_conns(h1)] == [2]
    h1.mesh.set_passwords((C, B), net.now)  # B moves nowhere: the same pair, renewed keys
    net.pump()
    assert [c["password"] for c in _mesh_conns(h1)] == [2]
    report = h1.mesh.report(net.now)
    assert report["passwords"] == 2 and report["encryption"] is True
    h1.mesh.set_passwords((C, B), net.now, labels=(3, 7))  # lines of a file: labels only
    assert [c["password"] for c in _mesh_conns(h1)] == [7]
    with pytest.raises(LocalProtocolError):
        h1.mesh.set_passwords((C, B), net.now, labels=(3,))
    with pytest.raises(LocalProtocolError):
        h1.mesh.set_passwords((), net.now)
    plain = net.add(9)
    with pytest.raises(LocalProtocolError, match="without encryption"):
        plain.mesh.set_passwords((A,), net.now)


# ------------------------------------------------------------------ the data plane

@pytest.mark.parametrize("seed", range(2))
def test_dataplane_switches_keys_while_frames_flow(seed: int) -> None:
    import trio

    from tests.unit.test_engine import MAC_A, MAC_B, Host, established, eventually, frame, run_pair
    from weftnet.router.dataplane.doubles import MemoryNetwork

    async def scenario(a: Host, b: Host, net: MemoryNetwork) -> None:
        await eventually("established", lambda: established(a, b))
        (link_a,), (link_b,) = a.engine.links.values(), b.engine.links.values()
        first_uid = link_a.session.conn_uid
        got: list[bytes] = []
        sent: list[bytes] = []

        async def receive() -> None:
            while True:
                got.append(await b.tap.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for n in range(300):
                if n in (50, 100, 150, 200, 250):  # A -> [A,B] -> [B,A] -> [B], one end first
                    lists = {50: (A, B), 100: (A, B), 150: (B, A), 200: (B, A), 250: (B,)}
                    host = (a, b)[(n // 50 + seed) % 2]
                    host.mesh.set_passwords(lists[n], trio.current_time())
                    host.poke()
                    if n == 250:
                        other = b if host is a else a
                        other.mesh.set_passwords((B,), trio.current_time())
                        other.poke()
                data = frame(MAC_B, MAC_A, n.to_bytes(4, "big") + bytes(60))
                sent.append(data)
                a.tap.inject(data)
                await trio.sleep(0.1)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        old_a = link_a.rotation.old if link_a.rotation is not None else None
        await trio.sleep(OVERLAP)
        assert got == sent  # every frame once, in order: no loss, nothing twice
        assert a.connection()["password"] == b.connection()["password"] == 1
        assert a.mesh.passwords == b.mesh.passwords == (B,)
        assert link_a.session.conn_uid == link_b.session.conn_uid != first_uid
        assert a.engine.drops.get("authentication", 0) == b.engine.drops.get("authentication", 0) == 0
        assert old_a is not None and link_a.rotation is not None
        assert link_a.rotation.old is None  # erased after the overlap
        assert a.engine.links[1] is link_a  # the same link all along

    run_pair(scenario, password=A, seed=seed)


def test_mesh_handshake_in_flight_during_a_change_moves_over_when_done() -> None:
    from weftnet.proto.mesh import MeshConfig, MeshNode, PeerConnected

    def node(n: int, passwords: tuple[bytes, ...]) -> MeshNode:
        return MeshNode(MeshConfig(name=0x020000000000 | n, nickname=f"n{n}", uid=n,
                                   passwords=passwords), now=0.0,
                        random_bytes=random.Random(n).randbytes, rng=random.Random(n))

    a, b = node(1, (A,)), node(2, (A,))
    a.connection_made(1, outbound=True, remote_address="10.0.0.2:6783", target=None, now=0.0)
    b.connection_made(1, outbound=False, remote_address="10.0.0.1:40000", target=None, now=0.0)
    a.set_passwords((B, A), 0.0)  # during the handshake: it completes on A, then moves
    b.set_passwords((B, A), 0.0)
    for _ in range(20):
        b.data_received(1, a.data_to_send(1, 0.0), 0.0)
        a.data_received(1, b.data_to_send(1, 0.0), 0.0)
    events = []
    while (event := a.next_event()) is not None:
        events.append(type(event).__name__)
    assert events[0] == PeerConnected.__name__ and "KeysSwitched" in events
    report = a.report(0.0)["connections"]
    assert [c["password"] for c in report] == [1]  # B, the new preferred
