"""The control connection end to end, through an in-memory pair, in virtual time."""

from __future__ import annotations

import math
import random

import pytest

from tests.pairs import ALPHA, BETA, connection, connection_pair, established_pair
from weftnet.proto.connection import (
    ConnectionFailed,
    ConnectionPair,
    ConnectionState,
    Event,
    HandshakeCompleted,
    LocalIdentity,
    MessageReceived,
    drain_events,
)
from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.framing import HEADER, FrameDecoder, encode_frame
from weftnet.proto.handshake import WRONG_PASSWORD
from weftnet.proto.messages import (
    Goodbye,
    Gossip,
    GossipKind,
    Heartbeat,
    decode_message,
    encode_message,
)

SECRET = b"correct horse battery staple"
TAMPERED = "authentication failed: tampered or replayed control message"


def gossip(payload: bytes = b"payload", src: int = ALPHA.name) -> Gossip:
    return Gossip("topology", GossipKind.BROADCAST, src, 0, payload)


def failures(events: list[Event]) -> list[str]:
    return [e.reason for e in events if isinstance(e, ConnectionFailed)]


def completed(events: list[Event]) -> list[HandshakeCompleted]:
    return [e for e in events if isinstance(e, HandshakeCompleted)]


# ------------------------------------------------------------------ handshake outcomes

@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_right_password_completes_with_mirrored_keys(chunk: int | None) -> None:
    p = connection_pair(SECRET, SECRET)
    p.pump(0.0, chunk_size=chunk)
    (ea,), (eb,) = p.events()
    assert isinstance(ea, HandshakeCompleted) and isinstance(eb, HandshakeCompleted)
    assert ea.conn_uid == eb.conn_uid == p.a.conn_uid != 0
    assert ea.encrypted and eb.encrypted and p.a.encrypted and p.b.encrypted
    assert ea.version == eb.version == 1
    assert ea.sleeve_keys and eb.sleeve_keys
    assert ea.sleeve_keys.sleeve_send == eb.sleeve_keys.sleeve_recv
    assert ea.sleeve_keys.sleeve_recv == eb.sleeve_keys.sleeve_send
    assert ea.sleeve_keys.sleeve_send != ea.sleeve_keys.sleeve_recv
    assert ea.remote.name == BETA.name and ea.remote.nickname == "beta" and ea.remote.uid == 222
    assert eb.remote.name == ALPHA.name and p.b.remote == eb.remote
    assert p.a.state is p.b.state is ConnectionState.ESTABLISHED
    assert p.a.bytes_sent == p.b.bytes_received == len(p.sent_by_a)


@pytest.mark.parametrize("chunk", [None, 1])
def test_wrong_password_fails_on_both_sides(chunk: int | None) -> None:
    p = connection_pair(SECRET, b"guess")
    p.pump(0.0, chunk_size=chunk)
    ea, eb = p.events()
    assert failures(ea) == failures(eb) == [WRONG_PASSWORD]
    assert not completed(ea + eb)
    assert p.a.closed and p.b.closed and p.a.remote is None
    assert p.a.failure_reason == WRONG_PASSWORD and p.a.get_timer() is None


@pytest.mark.parametrize(("pw_a", "pw_b"), [(SECRET, None), (None, SECRET)])
def test_password_on_one_side_only(pw_a: bytes | None, pw_b: bytes | None) -> None:
    p = connection_pair(pw_a, pw_b)
    p.pump(0.0)
    ea, eb = p.events()
    has = "password on one side only: this router has a password, the peer has none"
    hasnt = "password on one side only: the peer has a password, this router has none"
    assert failures(ea) == [has if pw_a else hasnt]
    assert failures(eb) == [has if pw_b else hasnt]


def test_no_password_is_plaintext_on_the_wire() -> None:
    p = established_pair()
    assert not p.a.encrypted and p.a.conn_uid == p.b.conn_uid
    msg = gossip(b"visible-plaintext")
    p.a.send_message(msg, 1.0)
    p.pump(1.0)
    assert b"visible-plaintext" in p.sent_by_a
    assert p.events() == ([], [MessageReceived(msg)])


def test_encrypted_plaintext_never_on_the_wire() -> None:
    p = established_pair(SECRET)
    secrets = [f"secret-{i}-payload".encode() for i in range(5)]
    for i, s in enumerate(secrets):
        p.a.send_message(gossip(s), 1.0 + i)
        p.b.send_message(Gossip("dns", GossipKind.UNICAST, BETA.name, ALPHA.name, s), 1.0 + i)
        p.pump(1.0 + i)
    wire = bytes(p.sent_by_a + p.sent_by_b)
    assert not any(s in wire for s in secrets)
    assert b"topology" not in wire and SECRET not in wire
    ea, eb = p.events()
    assert [e.message.payload for e in eb if isinstance(e, MessageReceived)] == secrets
    assert len(ea) == 5


def test_messages_both_ways_many_frames_and_goodbye() -> None:
    p = established_pair(SECRET)
    for i in range(50):
        p.a.send_message(gossip(bytes([i]) * i), float(i))
        p.b.send_message(gossip(bytes([i]), src=BETA.name), float(i))
        p.pump(float(i), chunk_size=3)
    ea, eb = p.events()
    assert len(ea) == len(eb) == 50
    p.a.close("shutting down", 60.0)
    assert p.a.closed and p.a.failure_reason is None and p.a.next_event() is None
    p.pump(60.0)
    assert p.events() == ([], [ConnectionFailed("peer closed the connection: shutting down")])


# ------------------------------------------------------------------ refusals

def test_version_mismatch() -> None:
    p = ConnectionPair(connection(True, versions=(1, 1)), connection(False, versions=(2, 3)))
    p.pump(0.0)
    ea, eb = p.events()
    assert failures(ea) == ["version mismatch: we speak 1..1, the peer speaks 2..3"]
    assert failures(eb) == ["version mismatch: we speak 2..3, the peer speaks 1..1"]


def test_overlapping_versions_pick_the_highest_common() -> None:
    p = ConnectionPair(connection(True, versions=(1, 4)), connection(False, versions=(2, 3)))
    p.pump(0.0)
    ea, eb = p.events()
    assert [e.version for e in completed(ea + eb)] == [3, 3]


def test_connect_to_ourself() -> None:
    p = ConnectionPair(connection(True, local=ALPHA, seed=1), connection(False, local=ALPHA, seed=2))
    p.pump(0.0)
    assert p.events() == ([ConnectionFailed("cannot connect to ourself")],) * 2


def test_name_collision() -> None:
    twin = LocalIdentity(ALPHA.name, "impostor", ALPHA.uid + 1)
    p = ConnectionPair(connection(True, local=ALPHA), connection(False, local=twin))
    p.pump(0.0)
    reason = "peer name collision: 0a:00:00:00:00:01 is used by another router"
    assert p.events() == ([ConnectionFailed(reason)],) * 2


def test_not_a_weft_peer() -> None:
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", encode_frame(b"\x93\x01\x02\x03"),
                 encode_frame(b"\xc1")):
        c = connection(True)
        c.receive_data(junk, 0.0)
        (event,) = drain_events(c)
        assert isinstance(event, ConnectionFailed) and event.reason.startswith("not a weft peer")


def test_oversize_length_prefix_fails_without_buffering() -> None:
    c = connection(True)
    c.receive_data(HEADER.pack(4097), 0.0)
    assert failures(drain_events(c)) == [
        "not a weft peer: frame of 4097 bytes exceeds the cap of 4096"]
    c.receive_data(b"x" * 100_000, 0.0)  # ignored once closed, nothing kept
    assert c.bytes_received == 4 and c.closed

    p = established_pair(SECRET)
    p.b.receive_data(HEADER.pack(0xFFFFFFFF) + b"x" * 10, 1.0)
    (failed,) = drain_events(p.b)
    assert isinstance(failed, ConnectionFailed) and "exceeds the cap" in failed.reason


def test_handshake_frame_cap_applies_to_confirm_too() -> None:
    a, b = connection(True, password=SECRET), connection(False, password=SECRET, seed=7)
    a.receive_data(b.data_to_send(), 0.0)
    assert a.state is ConnectionState.AWAITING_CONFIRM
    a.receive_data(HEADER.pack(5000), 0.0)
    assert failures(drain_events(a)) == ["frame of 5000 bytes exceeds the cap of 4096"]


def test_message_before_confirmation_is_refused() -> None:
    a, b = connection(True, password=SECRET), connection(False, password=SECRET, seed=7)
    a.receive_data(b.data_to_send(), 0.0)
    a.receive_data(encode_frame(encode_message(gossip())), 0.0)
    assert failures(drain_events(a)) == [
        "malformed handshake: expected a key confirmation"]


def test_plaintext_message_on_encrypted_connection_is_refused() -> None:
    p = established_pair(SECRET)
    p.b.receive_data(encode_frame(encode_message(gossip())), 1.0)
    assert failures(drain_events(p.b)) == [TAMPERED]


def test_local_misuse() -> None:
    c = connection(True)
    with pytest.raises(LocalProtocolError, match="awaiting hello"):
        c.send_message(gossip(), 0.0)
    with pytest.raises(LocalProtocolError):
        connection(True, heartbeat_interval=0)
    with pytest.raises(LocalProtocolError):
        connection(True, local=LocalIdentity(0, "zero", 1))
    c.close("bye", 0.0)
    assert c.closed
    with pytest.raises(LocalProtocolError, match="closed"):
        c.send_message(gossip(), 0.0)
    c.close("again", 0.0)  # idempotent


def test_close_during_handshake_sends_nothing_more() -> None:
    c = connection(True)
    hello = c.data_to_send()
    c.close("bye", 0.0)
    assert c.data_to_send() == b"" and hello and drain_events(c) == []


def test_goodbye_queued_on_local_close_is_sealed() -> None:
    p = established_pair(SECRET)
    p.a.close("maintenance window", 1.0)
    wire = p.a.data_to_send()
    assert b"maintenance" not in wire
    p.b.receive_data(wire, 1.0)
    assert failures(drain_events(p.b)) == ["peer closed the connection: maintenance window"]


# ------------------------------------------------------------------ tampering and replay

class Tamper(ConnectionPair):
    """Flips one bit at a stream offset of one direction."""

    target: tuple[bool, int] = (True, -1)

    def carry(self, data: bytes, offset: int, from_a: bool) -> bytes:
        side, at = self.target
        if side == from_a and offset <= at < offset + len(data):
            buf = bytearray(data)
            buf[at - offset] ^= 0x10
            return bytes(buf)
        return data


def _settle(p: ConnectionPair, until: float = 60.0) -> tuple[list[Event], list[Event]]:
    """Pump and run timers in virtual time until both sides are closed or `until`."""
    ea: list[Event] = []
    eb: list[Event] = []
    now = 0.0
    while True:
        p.pump(now)
        xa, xb = p.events()
        ea += xa
        eb += xb
        timer = p.next_timer()
        if timer is None or timer > until:
            return ea, eb
        now = max(now, timer)
        p.handle_timers(now)


def _handshake_length(password: bytes) -> tuple[int, int, tuple[list[Event], list[Event]]]:
    ref = connection_pair(password, password)
    ref.pump(0.0)
    return len(ref.sent_by_a), len(ref.sent_by_b), ref.events()


@pytest.mark.parametrize("from_a", [True, False])
def test_tampered_handshake_byte_never_completes_with_mismatched_keys(from_a: bool) -> None:
    len_a, len_b, (ref_a, ref_b) = _handshake_length(SECRET)
    length = len_a if from_a else len_b
    rnd = random.Random(1234 + from_a)
    # every byte of the confirm frame and of both length prefixes, a sample of the hello
    positions = sorted({*range(0, 4), *range(length - 40, length),
                        *rnd.sample(range(4, length - 40), 25)})
    for at in positions:
        p = connection_pair(SECRET, SECRET, cls=Tamper)
        assert isinstance(p, Tamper)
        p.target = (from_a, at)
        ea, eb = _settle(p, until=30.0)
        # Whatever completed, completed with exactly the untampered keys...
        assert all(e == ref_a[0] for e in completed(ea)), at
        assert all(e == ref_b[0] for e in completed(eb)), at
        # ...and the tampered direction's receiver never completed.
        receiver = eb if from_a else ea
        assert not completed(receiver) and failures(receiver), (at, receiver)
        assert failures(ea) and failures(eb), at  # both end up failed (timeout at worst)


def test_tampered_encrypted_frame_fails() -> None:
    for at in range(0, 40):
        p = established_pair(SECRET)
        p.a.send_message(gossip(b"0123456789abcdef"), 1.0)
        frame = bytearray(p.a.data_to_send())
        assert len(frame) > at
        frame[at] ^= 0x01
        p.b.receive_data(bytes(frame), 1.0)
        p.b.receive_data(b"\0" * 64, 1.0)  # let a grown length prefix complete
        events = drain_events(p.b)
        assert not any(isinstance(e, MessageReceived) for e in events), at
        if at < 3 and not events:
            # a length prefix grown by 64 KiB or more: still waiting for the body, which
            # never comes; the idle timeout ends it
            assert p.b.established
            p.b.handle_timer(16.0)  # 15 s after the last byte
            events = drain_events(p.b)
            assert failures(events) == ["peer timed out: nothing received for 15 s"]
            continue
        reason = failures(events)
        assert len(reason) == 1 and (reason[0] == TAMPERED or "exceeds" in reason[0]), at
        assert not drain_events(p.a), at


def test_replayed_reordered_or_dropped_encrypted_frame_fails() -> None:
    for scenario in ("replay", "reorder", "drop"):
        p = established_pair(SECRET)
        p.a.send_message(gossip(b"one"), 1.0)
        f1 = p.a.data_to_send()
        p.a.send_message(gossip(b"two"), 1.0)
        f2 = p.a.data_to_send()
        order = {"replay": [f1, f1], "reorder": [f2, f1], "drop": [f2]}[scenario]
        for frame in order:
            p.b.receive_data(frame, 1.0)
        events = drain_events(p.b)
        assert failures(events) == [TAMPERED], scenario
        # b told a why, sealed under its own (intact) send key
        p.a.receive_data(p.b.data_to_send(), 1.0)
        assert failures(drain_events(p.a)) == [f"peer closed the connection: {TAMPERED}"]


def test_replayed_frame_from_another_connection_fails() -> None:
    p1 = established_pair(SECRET, seed=1)
    p1.a.send_message(gossip(b"old"), 1.0)
    old = p1.a.data_to_send()
    p2 = established_pair(SECRET, seed=50)
    p2.b.receive_data(old, 1.0)
    assert failures(drain_events(p2.b)) == [TAMPERED]


def test_replayed_handshake_from_an_earlier_session_fails() -> None:
    old = established_pair(SECRET, seed=1)
    old.b.send_message(gossip(b"old session", src=BETA.name), 1.0)
    old.pump(1.0)
    recorded_b = bytes(old.sent_by_b)
    fresh = connection(True, password=SECRET, seed=99)  # new randomness: new nonce, spake, x25519
    fresh.receive_data(recorded_b, 2.0)
    assert failures(drain_events(fresh)) == [WRONG_PASSWORD]
    # And the same recording replayed into the side that was the responder
    recorded_a = bytes(old.sent_by_a)
    fresh_b = connection(False, password=SECRET, seed=98)
    fresh_b.receive_data(recorded_a, 2.0)
    assert failures(drain_events(fresh_b)) == [WRONG_PASSWORD]


def test_reflected_handshake_is_refused() -> None:
    c = connection(True, password=SECRET)
    c.receive_data(c.data_to_send(), 0.0)
    assert failures(drain_events(c)) == ["cannot connect to ourself"]


# ------------------------------------------------------------------ timers

def test_handshake_timeout() -> None:
    c = connection(True, now=100.0)
    assert c.get_timer() == 110.0
    c.handle_timer(109.999)
    assert not c.closed
    c.handle_timer(110.0)
    assert failures(drain_events(c)) == ["handshake timed out"]
    assert c.get_timer() is None and c.state is ConnectionState.CLOSED


def test_handshake_timeout_while_awaiting_confirm() -> None:
    a, b = connection(True, password=SECRET), connection(False, password=SECRET, seed=3)
    a.receive_data(b.data_to_send(), 1.0)  # b's confirm never comes
    assert a.state is ConnectionState.AWAITING_CONFIRM and a.get_timer() == 10.0
    a.handle_timer(10.0)
    assert failures(drain_events(a)) == ["handshake timed out"]


def test_late_data_after_the_deadline_does_not_complete() -> None:
    a, b = connection(True), connection(False, seed=3)
    a.receive_data(b.data_to_send(), 10.5)
    assert failures(drain_events(a)) == ["handshake timed out"]


def _frames(data: bytes) -> list[object]:
    d = FrameDecoder()
    d.feed(data)
    out: list[object] = []
    while (body := d.next_frame()) is not None:
        out.append(decode_message(body))
    return out


def test_heartbeat_after_send_silence_and_idle_timeout() -> None:
    p = established_pair(None)
    a = p.a
    assert a.get_timer() == 5.0
    a.handle_timer(4.9)
    assert a.data_to_send() == b""
    a.handle_timer(5.0)
    assert _frames(a.data_to_send()) == [Heartbeat()]
    assert a.get_timer() == 10.0
    a.send_message(gossip(), 7.0)  # sending resets the heartbeat clock
    a.data_to_send()
    assert a.get_timer() == 12.0
    a.handle_timer(12.0)
    assert _frames(a.data_to_send()) == [Heartbeat()]
    assert a.get_timer() == 15.0  # the idle deadline comes first now
    a.handle_timer(15.0)
    reason = "peer timed out: nothing received for 15 s"
    assert failures(drain_events(a)) == [reason]
    assert _frames(a.data_to_send()) == [Goodbye(reason)]
    p.b.receive_data(encode_frame(encode_message(Goodbye(reason))), 15.0)
    assert failures(drain_events(p.b)) == [f"peer closed the connection: {reason}"]


def test_heartbeats_keep_both_sides_alive_and_are_absorbed() -> None:
    p = established_pair(SECRET, heartbeat_interval=2.0, timeout=7.0)
    handshake_bytes = len(p.sent_by_a)
    ea, eb = _settle(p, until=300.0)
    assert ea == eb == []
    assert p.a.established and p.b.established
    sealed_heartbeat = 4 + 2 + 16  # length prefix, msgpack [0] (0x91 0x00), Poly1305 tag
    assert len(p.sent_by_a) - handshake_bytes == 150 * sealed_heartbeat


def test_silent_peer_times_out_with_custom_timeout() -> None:
    p = established_pair(None, heartbeat_interval=1.0, timeout=3.5)
    now = 0.0
    while not p.a.closed:
        timer = p.a.get_timer()
        assert timer is not None
        now = timer
        p.a.handle_timer(now)
    assert now == 3.5
    assert failures(drain_events(p.a)) == ["peer timed out: nothing received for 3.5 s"]


def test_received_bytes_postpone_the_idle_timeout() -> None:
    p = established_pair(None)
    p.b.send_message(Heartbeat(), 10.0)
    p.pump(10.0)
    assert p.a.get_timer() == 5.0  # heartbeat is due first
    p.a.handle_timer(5.0)
    assert p.a.get_timer() == 10.0
    p.a.handle_timer(20.0)  # heartbeat at 20: the idle deadline is 25 now
    assert p.a.established and p.a.get_timer() == 25.0


# ------------------------------------------------------------------ counters

def test_byte_counters_and_closed_input_ignored() -> None:
    p = established_pair(None)
    p.a.send_message(gossip(), 1.0)
    p.pump(1.0)
    assert p.events() == ([], [MessageReceived(gossip())])
    assert p.a.bytes_sent == len(p.sent_by_a) == p.b.bytes_received
    assert p.b.bytes_sent == len(p.sent_by_b) == p.a.bytes_received
    p.b.close("done", 2.0)
    before = p.b.bytes_received
    p.b.receive_data(b"more", 2.0)
    p.b.handle_timer(100.0)
    assert p.b.bytes_received == before and p.b.next_event() is None


def test_a_slow_side_answers_a_heartbeat_when_silent_so_a_fast_side_never_times_out() -> None:
    """B goes slow (60 s heartbeats, 180 s timeout) while A keeps 5 s / 15 s: B answers each
    of A's heartbeats (it was silent for answer_after), A never answers B's answer."""
    p = established_pair(SECRET)
    p.b.set_timers(heartbeat_interval=60.0, timeout=180.0)
    p.b.answer_after = p.a.answer_after = 2.5
    ea, eb = _settle(p, until=300.0)
    assert ea == eb == [] and p.a.established and p.b.established
    # without the answers, A (15 s timeout) would have heard B only every 60 s
    p.b.answer_after = math.inf
    ea, _ = _settle(p, until=400.0)
    assert failures(ea) == ["peer timed out: nothing received for 15 s"]


def test_grace_postpones_the_timeout_and_bad_timers_are_refused() -> None:
    p = established_pair(None)
    p.a.grace(14.0, 7.5)
    assert p.a.get_timer() == 5.0  # the heartbeat first; then the timeout at 21.5, not 15
    p.a.handle_timer(5.0)
    p.a.handle_timer(10.0)
    p.a.handle_timer(15.0)
    assert p.a.established and p.a.get_timer() == 20.0
    p.a.handle_timer(21.5)
    assert p.a.closed
    with pytest.raises(LocalProtocolError):
        p.b.set_timers(heartbeat_interval=0.0, timeout=1.0)
