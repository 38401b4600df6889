"""The datagram stream (proto/ustream.py) between two ends, in virtual time."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from weftnet.proto.errors import LocalProtocolError
from weftnet.proto.punchwire import (
    HEADER_LEN,
    TAG_LEN,
    PunchKind,
    derive_keys,
    open_datagram,
    seal_datagram,
)
from weftnet.proto.ustream import (
    BODY,
    DUPACK_THRESHOLD,
    FLAG_HOLE,
    INITIAL_RTO,
    MAX_BUFFERED,
    MAX_RTO,
    MIN_RTO,
    OOO_MAX_SEGMENTS,
    RECV_BUFFER,
    SEND_WINDOW_SEGMENTS,
    DatagramStream,
)

SECRET = bytes(range(32))
SESSION = 0x0123456789ABCDEF
KA = derive_keys(SECRET, initiator=True)
KB = derive_keys(SECRET, initiator=False)
RTT = 0.02  # one way: 10 ms


def pair(now: float = 0.0, **kw: Any) -> tuple[DatagramStream, DatagramStream]:
    return (DatagramStream(session=SESSION, keys=KA, now=now, **kw),
            DatagramStream(session=SESSION, keys=KB, now=now, **kw))


def fields(datagram: bytes) -> tuple[int, int, int, int, bytes]:
    """seq, ack, window, flags, payload of a datagram sealed by ``a`` (for b: swap keys)."""
    body = open_datagram(datagram, KA.stream_send)
    seq, ack, window, flags = BODY.unpack_from(body)
    return seq, ack, window, flags, body[BODY.size:]


def exchange(a: DatagramStream, b: DatagramStream, now: float,
             drop: Any = None) -> tuple[float, int]:
    """Carry datagrams both ways (one way taking RTT/2) and fire timers until both ends
    are quiet and flushed; ``drop(from_a, datagram)`` loses a datagram. Returns the time
    and the number of datagrams carried."""
    carried = 0
    for _ in range(100_000):
        moved = False
        for src, dst, from_a in ((a, b, True), (b, a, False)):
            for d in src.datagrams_to_send(now):
                carried += 1
                moved = True
                if drop is None or not drop(from_a, d):
                    dst.receive_datagram(d, now + RTT / 2)
        now += RTT / 2
        if not moved:
            if a.flushed and b.flushed:
                return now, carried
            timers = [t for t in (a.get_timer(), b.get_timer()) if t is not None]
            now = max(now, min(timers))
            for s in (a, b):
                timer = s.get_timer()
                if timer is not None and timer <= now:
                    s.handle_timer(now)
    raise AssertionError("the exchange never settled")


def state(s: DatagramStream) -> dict[str, Any]:
    snap = copy.deepcopy(vars(s))
    del snap["drops"]
    return snap


# ------------------------------------------------------------------ delivery

def test_round_trip_both_ways() -> None:
    a, b = pair()
    a.send(b"hello ", 0.0)
    a.send(b"world", 0.0)
    b.send(b"and back", 0.0)
    assert not a.flushed
    now, _ = exchange(a, b, 0.0)
    assert b.read() == b"hello world" and a.read() == b"and back"
    assert a.read() == b"" and b.read() == b""
    assert a.flushed and b.flushed and a.failed is None and b.failed is None
    st = a.stats
    assert st.bytes_sent == 11 and st.bytes_received == 8 and st.segments_retransmitted == 0
    assert st.srtt is not None and 0 < st.srtt <= 2 * RTT and MIN_RTO <= st.rto < INITIAL_RTO
    assert sum(a.drops.values()) == sum(b.drops.values()) == 0


def test_wire_format_of_a_segment() -> None:
    a, b = pair()
    a.send(b"abc", 0.0)
    (d,) = a.datagrams_to_send(0.0)
    assert d[0] == 2 and d[1] == PunchKind.STREAM
    assert int.from_bytes(d[2:10], "big") == SESSION
    assert len(d) == HEADER_LEN + BODY.size + 3 + TAG_LEN
    assert fields(d) == (0, 0, RECV_BUFFER, 0, b"abc")
    assert b.receive_datagram(d, 0.0)
    (ack,) = b.datagrams_to_send(0.0)
    body = open_datagram(ack, KB.stream_send)
    assert BODY.unpack_from(body) == (0, 3, RECV_BUFFER - 3, 0) and len(body) == BODY.size


def test_one_megabyte_in_order_in_mss_segments() -> None:
    a, b = pair()
    data = bytes((i * 7 + i // 251) % 256 for i in range(1 << 20))
    a.send(data, 0.0)
    got = bytearray()
    now = 0.0
    while not a.flushed:
        for d in a.datagrams_to_send(now):
            assert len(fields(d)[4]) <= 1200
            b.receive_datagram(d, now)
        got += b.read()
        for d in b.datagrams_to_send(now):
            a.receive_datagram(d, now + RTT)
        now += RTT
    assert bytes(got) == data
    st = a.stats
    assert st.segments_retransmitted == 0 and st.bytes_sent == len(data)
    assert st.segments_sent == -(-len(data) // 1200)
    assert b.stats.bytes_received == len(data)


def test_send_window_is_bounded_in_segments() -> None:
    a, _ = pair()
    a.send(bytes(1 << 20), 0.0)
    assert len(a.datagrams_to_send(0.0)) == SEND_WINDOW_SEGMENTS
    assert a.datagrams_to_send(0.0) == []


def test_one_ack_per_batch_and_out_of_order_segments_wait_for_the_hole() -> None:
    a, b = pair()
    a.send(bytes(range(256)) * 20, 0.0)
    segs = a.datagrams_to_send(0.0)
    assert len(segs) == 5
    for d in segs[1:]:
        assert b.receive_datagram(d, 0.0)
    assert b.read() == b""
    (ack,) = b.datagrams_to_send(0.0)
    _, acked, _, flags = BODY.unpack_from(open_datagram(ack, KB.stream_send))
    assert acked == 0 and flags & FLAG_HOLE
    assert b.receive_datagram(segs[0], 0.0)
    assert b.read() == bytes(range(256)) * 20
    (ack,) = b.datagrams_to_send(0.0)
    assert BODY.unpack_from(open_datagram(ack, KB.stream_send))[1:] == (5120, RECV_BUFFER, 0)


def test_duplicates_are_ignored_but_acked() -> None:
    a, b = pair()
    a.send(b"once", 0.0)
    (d,) = a.datagrams_to_send(0.0)
    assert b.receive_datagram(d, 0.0)
    assert len(b.datagrams_to_send(0.0)) == 1
    assert not b.receive_datagram(d, 0.1)
    assert b.drops["duplicate"] == 1
    assert b.read() == b"once"
    (ack,) = b.datagrams_to_send(0.1)  # the first ack may have been lost
    assert a.receive_datagram(ack, 0.1) and a.flushed
    assert not a.receive_datagram(ack, 0.2)  # a replayed ack moves nothing
    assert a.drops["duplicate"] == 1


# ------------------------------------------------------------------ hostile input

def _bad_datagrams(good: bytes) -> dict[str, tuple[bytes, str]]:
    body = open_datagram(good, KA.stream_send)
    flipped = bytearray(good)
    flipped[HEADER_LEN + 3] ^= 0x40
    return {
        "tampered": (bytes(flipped), "authentication"),
        "bad tag": (good[:-1] + bytes([good[-1] ^ 1]), "authentication"),
        "wrong session": (seal_datagram(PunchKind.STREAM, SESSION + 1, body, KA.stream_send),
                          "unknown session"),
        "wrong kind": (seal_datagram(PunchKind.PROBE, SESSION, body, KA.stream_send), "malformed"),
        "probe key": (seal_datagram(PunchKind.STREAM, SESSION, body, KA.probe_send),
                      "authentication"),
        "truncated": (good[:20], "malformed"),
        "empty": (b"", "malformed"),
        "short body": (seal_datagram(PunchKind.STREAM, SESSION, body[:BODY.size - 1],
                                     KA.stream_send), "malformed"),
        "acks unsent bytes": (seal_datagram(PunchKind.STREAM, SESSION,
                                            BODY.pack(0, 8, 100, 0) + b"x", KA.stream_send),
                              "malformed"),
        "beyond the offset space": (seal_datagram(
            PunchKind.STREAM, SESSION, BODY.pack((1 << 64) - 2, 0, 100, 0) + b"xy",
            KA.stream_send), "malformed"),
    }


@pytest.mark.parametrize("case", [
    "tampered", "bad tag", "wrong session", "wrong kind", "probe key", "truncated", "empty",
    "short body", "acks unsent bytes", "beyond the offset space"])
def test_bad_datagrams_are_dropped_and_counted_with_nothing_changed(case: str) -> None:
    a, b = pair()
    b.send(b"pending", 0.0)
    b.datagrams_to_send(0.0)
    a.send(b"payload", 0.0)
    (good,) = a.datagrams_to_send(0.0)
    bad, reason = _bad_datagrams(good)[case]
    before = state(b)
    assert not b.receive_datagram(bad, 1.0)
    assert state(b) == before
    assert b.drops[reason] == 1 and sum(b.drops.values()) == 1
    assert b.datagrams_to_send(1.0) == []
    assert b.receive_datagram(good, 1.0) and b.read() == b"payload"


def test_reflected_datagrams_fail_authentication() -> None:
    a, b = pair()
    a.send(b"to b", 0.0)
    (d,) = a.datagrams_to_send(0.0)
    before = state(a)
    assert not a.receive_datagram(d, 0.0)  # our own datagram, sent back at us
    assert a.drops["authentication"] == 1 and state(a) == before
    assert b.receive_datagram(d, 0.0)


def test_unauthenticated_datagrams_do_not_keep_a_stream_alive() -> None:
    a, b = pair()
    a.send(b"x", 0.0)
    (d,) = a.datagrams_to_send(0.0)
    forged = d[:-1] + bytes([d[-1] ^ 0xFF])
    for t in range(1, 15):
        b.receive_datagram(forged, float(t))
    b.handle_timer(15.0)
    assert b.failed == "no answer over the punched path for 15 s"


# ------------------------------------------------------------------ loss and timers

def test_lost_segment_is_resent_after_the_rto_with_backoff() -> None:
    a, b = pair()
    a.send(b"lost once", 0.0)
    (d,) = a.datagrams_to_send(0.0)  # lost
    assert a.get_timer() == INITIAL_RTO
    a.handle_timer(INITIAL_RTO - 0.01)
    assert a.datagrams_to_send(INITIAL_RTO - 0.01) == []
    a.handle_timer(INITIAL_RTO)
    (again,) = a.datagrams_to_send(INITIAL_RTO)
    assert fields(again)[4] == fields(d)[4] == b"lost once"
    assert a.get_timer() == INITIAL_RTO + 2 * INITIAL_RTO  # backed off
    assert b.receive_datagram(again, 1.01)
    assert b.read() == b"lost once"
    assert a.receive_datagram(b.datagrams_to_send(1.01)[0], 1.02)
    assert a.flushed and a.stats.segments_retransmitted == 1
    assert a.stats.srtt is None  # Karn: an ack after a resend is no sample


def test_backoff_is_capped() -> None:
    a, b = pair(dead_after=1000.0)
    a.send(b"x", 0.0)
    a.datagrams_to_send(0.0)
    now, gaps = 0.0, []
    for _ in range(8):
        timer = a.get_timer()
        assert timer is not None
        gaps.append(round(timer - now, 6))
        now = timer
        a.handle_timer(now)
        assert len(a.datagrams_to_send(now)) == 1
    assert gaps == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0] and MAX_RTO == 4.0


def test_fast_retransmit_on_duplicate_acks_before_the_timer() -> None:
    a, b = pair()
    a.send(bytes(1200 * 8), 0.0)
    segs = a.datagrams_to_send(0.0)
    assert len(segs) == 8
    resent: list[bytes] = []
    for i, d in enumerate(segs[1:]):  # the first is lost; each arrival is acked alone
        b.receive_datagram(d, 0.01)
        (ack,) = b.datagrams_to_send(0.01)
        a.receive_datagram(ack, 0.02)
        out = a.datagrams_to_send(0.02)
        if i + 1 < DUPACK_THRESHOLD:
            assert out == []
        else:
            resent += out
    assert [fields(d)[0] for d in resent] == [0]  # once per recovery, the hole
    assert b.receive_datagram(resent[0], 0.03)
    assert len(b.read()) == 1200 * 8
    assert a.receive_datagram(b.datagrams_to_send(0.03)[0], 0.04) and a.flushed
    assert a.stats.segments_retransmitted == 1


def test_duplicate_acks_without_a_hole_do_not_retransmit() -> None:
    a, b = pair()
    a.send(bytes(1200), 0.0)
    (first,) = a.datagrams_to_send(0.0)
    b.receive_datagram(first, 0.01)
    assert len(b.read()) == 1200
    a.receive_datagram(b.datagrams_to_send(0.01)[0], 0.02)
    a.send(bytes(1200), 0.02)
    a.datagrams_to_send(0.02)  # in flight
    for t in (0.03, 0.04, 0.05, 0.06):  # the first segment, duplicated on the way
        assert not b.receive_datagram(first, t)
        (ack,) = b.datagrams_to_send(t)
        assert BODY.unpack_from(open_datagram(ack, KB.stream_send))[1:] == (1200, RECV_BUFFER, 0)
        a.receive_datagram(ack, t)
        assert a.datagrams_to_send(t) == []  # no hole at the peer: nothing was lost
    assert a.stats.segments_retransmitted == 0


def test_hostile_overlapping_segments_cannot_grow_the_buffer() -> None:
    _, b = pair()
    for i in range(8):  # out of order (a hole at 0), overlapping, each inside the window
        body = BODY.pack(1 + i, 0, RECV_BUFFER, 0) + bytes(60_000)
        b.receive_datagram(seal_datagram(PunchKind.STREAM, SESSION, body, KA.stream_send), 0.0)
    assert b.drops["out of window"] == 4 and b._ooo_bytes == 4 * 60_000 <= RECV_BUFFER
    assert b.read() == b""


def test_hostile_tiny_segments_cannot_bloat_the_out_of_order_map() -> None:
    _, b = pair()
    for i in range(OOO_MAX_SEGMENTS + 5):  # a byte each, every other offset: all holes
        body = BODY.pack(2 + 2 * i, 0, RECV_BUFFER, 0) + b"x"
        b.receive_datagram(seal_datagram(PunchKind.STREAM, SESSION, body, KA.stream_send), 0.0)
    assert b.drops["out of window"] == 5 and len(b._ooo) == OOO_MAX_SEGMENTS


def test_partial_ack_in_recovery_resends_the_next_hole() -> None:
    a, b = pair()
    a.send(bytes(1200 * 6), 0.0)
    segs = a.datagrams_to_send(0.0)
    for d in segs[2:]:  # the first two are lost
        b.receive_datagram(d, 0.01)
        a.receive_datagram(b.datagrams_to_send(0.01)[0], 0.02)
    (first,) = a.datagrams_to_send(0.02)
    assert fields(first)[0] == 0
    b.receive_datagram(first, 0.03)
    a.receive_datagram(b.datagrams_to_send(0.03)[0], 0.04)  # acks 1200 of 7200
    (second,) = a.datagrams_to_send(0.04)
    assert fields(second)[0] == 1200
    b.receive_datagram(second, 0.05)
    assert len(b.read()) == 7200


def test_timeout_resends_everything_in_flight_once() -> None:
    a, b = pair()
    a.send(bytes(1200 * 4), 0.0)
    assert len(a.datagrams_to_send(0.0)) == 4  # all lost
    a.handle_timer(INITIAL_RTO)
    again = a.datagrams_to_send(INITIAL_RTO)
    assert [fields(d)[0] for d in again] == [0, 1200, 2400, 3600]
    b.receive_datagram(again[0], 1.01)
    a.receive_datagram(b.datagrams_to_send(1.01)[0], 1.02)  # a partial ack
    assert a.datagrams_to_send(1.02) == []  # the rest is on its way already
    for d in again[1:]:
        b.receive_datagram(d, 1.03)
    a.receive_datagram(b.datagrams_to_send(1.03)[0], 1.04)
    assert a.flushed and len(b.read()) == 4800 and a.stats.segments_retransmitted == 4


def test_lossy_exchange_still_delivers_everything() -> None:
    a, b = pair()
    data = bytes(range(256)) * 400
    a.send(data, 0.0)
    count = [0]

    def drop(from_a: bool, d: bytes) -> bool:
        count[0] += 1
        return count[0] % 4 == 0

    exchange(a, b, 0.0, drop)
    assert b.read() == data and a.stats.segments_retransmitted > 0 and a.failed is None


def test_receiver_that_does_not_read_closes_its_window() -> None:
    a, b = pair()
    data = bytes(range(256)) * 4096  # 1 MiB
    a.send(data, 0.0)
    now = 0.0
    for _ in range(400):  # 20 s: longer than dead_after, yet a full peer is no dead peer
        for d in a.datagrams_to_send(now):
            b.receive_datagram(d, now)
        for d in b.datagrams_to_send(now):
            a.receive_datagram(d, now)
        now += 0.05
        a.handle_timer(now)
    assert a.buffered == len(data) - RECV_BUFFER and a.failed is None  # the peer is full
    got = bytearray(b.read())
    assert len(got) == RECV_BUFFER
    (update,) = b.datagrams_to_send(now)  # the window opened: b says so unasked
    assert a.receive_datagram(update, now)
    # a goes on at once where b stopped taking bytes, not at its next timeout
    assert fields(a.datagrams_to_send(now)[0])[0] == RECV_BUFFER
    for _ in range(100):
        for d in a.datagrams_to_send(now):
            b.receive_datagram(d, now)
        got += b.read()
        for d in b.datagrams_to_send(now):
            a.receive_datagram(d, now)
        now += 0.05
        a.handle_timer(now)
    assert bytes(got) == data and a.flushed and a.failed is None


# ------------------------------------------------------------------ liveness and close

def test_fails_after_dead_after_without_an_ack_for_outstanding_data() -> None:
    a = DatagramStream(session=SESSION, keys=KA, now=0.0, dead_after=15.0)
    b = DatagramStream(session=SESSION, keys=KB, now=0.0, dead_after=100.0)
    a.send(b"hello?", 3.0)
    a.datagrams_to_send(3.0)
    b.send(b"unrelated", 3.0)
    now, heard, sent_by_b = 3.0, [], []
    while a.failed is None:
        timer = a.get_timer()
        assert timer is not None and timer <= 18.0
        now = timer
        b.handle_timer(now)
        for d in b.datagrams_to_send(now):  # b talks, but never acks (its input is lost)
            sent_by_b.append(d)
            heard.append(a.receive_datagram(d, now))
        a.handle_timer(now)
        a.datagrams_to_send(now)
    assert now == 18.0 and heard[0] and len(heard) > 2
    assert a.failed == "no acknowledgement over the punched path for 15 s"
    assert a.get_timer() is None and a.datagrams_to_send(now) == []
    assert not a.receive_datagram(sent_by_b[-1], now)
    assert a.drops["stream failed"] == 1
    a.send(b"discarded", now)
    assert a.buffered == 0


def test_fails_after_dead_after_of_silence() -> None:
    a, _ = pair(now=10.0, dead_after=5.0)
    assert a.get_timer() == 15.0
    a.handle_timer(14.99)
    assert a.failed is None
    a.handle_timer(15.0)
    assert a.failed == "no answer over the punched path for 5 s"


def test_close_keeps_delivering_then_flushed() -> None:
    a, b = pair()
    a.send(b"last words", 0.0)
    a.close(0.0)
    assert a.closing and not a.flushed
    with pytest.raises(LocalProtocolError):
        a.send(b"more", 0.0)
    exchange(a, b, 0.0, drop=lambda from_a, d: from_a and fields(d)[0] == 0
             and a.stats.segments_retransmitted == 0)
    assert a.flushed and b.read() == b"last words"


def test_send_beyond_max_buffered_is_refused() -> None:
    a, _ = pair()
    a.send(bytes(MAX_BUFFERED - 10), 0.0)
    with pytest.raises(LocalProtocolError, match="buffer full"):
        a.send(bytes(11), 0.0)
    assert a.buffered == MAX_BUFFERED - 10
    a.send(bytes(10), 0.0)
    assert a.buffered == MAX_BUFFERED


@pytest.mark.parametrize("kw", [{"mss": 0}, {"mss": 70000}, {"dead_after": 0.0},
                                {"session": -1}, {"session": 1 << 64}])
def test_bad_arguments_are_refused(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"session": SESSION, "keys": KA, "now": 0.0} | kw
    with pytest.raises(LocalProtocolError):
        DatagramStream(**args)
