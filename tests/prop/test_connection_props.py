"""Properties of the control connection under arbitrary chunking and arbitrary bytes.

h11's invariant, applied here: whatever the peer sends, in whatever chunks, the
connection produces the same events and the same output, and raises nothing.
"""

from __future__ import annotations

import copy
from functools import cache

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.pairs import ALPHA, PEER_SEED, connection, connection_pair, established_pair
from weftnet.proto.connection import (
    Connection,
    ConnectionFailed,
    ConnectionPair,
    ConnectionState,
    Event,
    HandshakeCompleted,
    LocalIdentity,
    MessageReceived,
    drain_events,
)
from weftnet.proto.messages import Gossip, GossipKind

SECRET = b"s3cret"
PASSWORDS = st.sampled_from([None, SECRET])
RECORDED_SEED = 1  # the pair whose initiator's stream is replayed to a copy of its responder


@cache
def _template(outbound: bool, password: bytes | None, seed: int) -> Connection:
    """A fresh connection to deepcopy: spake2's start() is pure Python and slow."""
    return connection(outbound, password=password, seed=seed)


def _fresh(outbound: bool, password: bytes | None, seed: int) -> Connection:
    conn = copy.deepcopy(_template(outbound, password, seed))
    conn.data_to_send()  # its hello is the same every time; the tests look past it
    return conn


@cache
def _recorded_stream(password: bytes | None, payloads: tuple[bytes, ...]) -> bytes:
    """Everything the initiator sends in a handshake followed by gossip and a close."""
    p = connection_pair(password, password, seed=RECORDED_SEED)
    p.pump(0.0)
    for i, payload in enumerate(payloads):
        p.a.send_message(Gossip("ch", GossipKind.DELTA, ALPHA.name, 0, payload), float(i))
    p.a.close("bye", 9.0)
    p.pump(9.0)
    return bytes(p.sent_by_a)


def _feed(conn: Connection, chunks: list[bytes]) -> tuple[list[Event], bytes]:
    out = bytearray()
    for chunk in chunks:
        conn.receive_data(chunk, 1.0)
        out += conn.data_to_send()
    return drain_events(conn), bytes(out)


def _chunk(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        chunks.append(data[pos:pos + size])
        pos += size
        i += 1
    return chunks


def _check_event_shape(conn: Connection, events: list[Event]) -> None:
    """At most one terminal failure, last; CLOSED exactly when it happened."""
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    assert len(failed) <= 1
    if failed:
        assert events[-1] is failed[0] and conn.closed
        assert conn.failure_reason == failed[0].reason
    else:
        assert not conn.closed


@settings(max_examples=60)
@given(password=PASSWORDS,
       payloads=st.lists(st.binary(max_size=40), max_size=4).map(tuple),
       sizes=st.lists(st.integers(min_value=1, max_value=80), max_size=8),
       tail=st.binary(max_size=40))
def test_random_chunking_gives_identical_events(password: bytes | None,
                                                payloads: tuple[bytes, ...],
                                                sizes: list[int], tail: bytes) -> None:
    stream = _recorded_stream(password, payloads)
    # cut the recorded stream short of its goodbye sometimes, then append garbage
    if tail:
        stream = stream[:-10] + tail
    responder = RECORDED_SEED + PEER_SEED  # the same randomness as the one recorded with
    whole = _feed(_fresh(False, password, responder), [stream])
    chunked_conn = _fresh(False, password, responder)
    chunked = _feed(chunked_conn, _chunk(stream, sizes))
    assert whole == chunked
    events = chunked[0]
    assert isinstance(events[0], HandshakeCompleted)
    assert events[0].encrypted == (password is not None)
    _check_event_shape(chunked_conn, events)
    if not tail:
        assert [e.message.payload for e in events if isinstance(e, MessageReceived)] == list(
            payloads)
        assert events[-1] == ConnectionFailed("peer closed the connection: bye")


@settings(max_examples=300)
@given(password=PASSWORDS, outbound=st.booleans(), data=st.binary(max_size=600),
       sizes=st.lists(st.integers(min_value=1, max_value=50), max_size=6))
def test_garbage_to_a_fresh_connection_fails_or_waits(password: bytes | None, outbound: bool,
                                                       data: bytes, sizes: list[int]) -> None:
    whole_conn = _fresh(outbound, password, 5)
    whole = _feed(whole_conn, [data])
    chunked_conn = _fresh(outbound, password, 5)
    chunked = _feed(chunked_conn, _chunk(data, sizes))
    assert whole == chunked
    events, out = whole
    assert out == b""  # nothing is ever answered to bytes that are not a hello
    assert all(isinstance(e, ConnectionFailed) for e in events)
    _check_event_shape(whole_conn, events)
    if not events:
        assert whole_conn.state is ConnectionState.AWAITING_HELLO
        whole_conn.handle_timer(10.0)
        assert drain_events(whole_conn) == [ConnectionFailed("handshake timed out")]


@cache
def _established(password: bytes | None) -> ConnectionPair:
    return established_pair(password, seed=11)


@settings(max_examples=300)
@given(password=PASSWORDS, data=st.binary(max_size=600),
       sizes=st.lists(st.integers(min_value=1, max_value=50), max_size=6))
def test_garbage_after_the_handshake_fails_or_delivers(password: bytes | None, data: bytes,
                                                       sizes: list[int]) -> None:
    template = _established(password).b
    whole_conn = copy.deepcopy(template)
    whole = _feed(whole_conn, [data])
    chunked_conn = copy.deepcopy(template)
    assert _feed(chunked_conn, _chunk(data, sizes)) == whole
    events = whole[0]
    _check_event_shape(whole_conn, events)
    assert all(isinstance(e, MessageReceived | ConnectionFailed) for e in events)
    if password is not None:
        # garbage cannot forge a sealed frame: no message gets through
        assert not any(isinstance(e, MessageReceived) for e in events)


@settings(max_examples=15)
@given(seed_a=st.integers(0, 2**32), seed_b=st.integers(0, 2**32), password=PASSWORDS,
       nick=st.text(max_size=255), name=st.integers(1, 2**48 - 1),
       uid=st.integers(1, 2**64 - 1))
def test_any_identities_agree_on_conn_uid_and_keys(seed_a: int, seed_b: int,
                                                   password: bytes | None, nick: str,
                                                   name: int, uid: int) -> None:
    # the same randomness on both ends is a reflection, refused as such
    assume(seed_a != seed_b)
    local = LocalIdentity(name, nick, uid)
    other = LocalIdentity(name ^ 1 or 2, "other", 5)
    p = ConnectionPair(connection(True, local=local, password=password, seed=seed_a),
                       connection(False, local=other, password=password, seed=seed_b))
    p.pump(0.0)
    (ea,), (eb,) = p.events()
    assert isinstance(ea, HandshakeCompleted) and isinstance(eb, HandshakeCompleted)
    assert ea.conn_uid == eb.conn_uid != 0
    assert eb.remote == type(eb.remote)(local.name, local.nickname, local.uid)
    if password is not None:
        assert ea.sleeve_keys and eb.sleeve_keys
        assert ea.sleeve_keys.sleeve_send == eb.sleeve_keys.sleeve_recv
