"""Fuzz the datagram stream (proto/ustream.py): arbitrary datagrams, and arbitrary bodies
sealed under the right keys (a hostile peer that knows the session secret).

The whole input is first given to ``receive_datagram`` as one datagram. Then it is read as
records ``op u8 | len u8 | bytes``: op % 5 == 0 advances time (len tenths of a second) and
fires the timer when due, == 1 writes the bytes, == 2 seals a body built from them with
small offsets (seq u16 | ack u16 | window u32 | flags u8 | payload, so it lands near the
stream), == 3 seals the bytes as the whole body, == 4 gives the bytes as a datagram.
Invariants: nothing raises; a datagram refused by punchwire's checks changes nothing;
``read`` returns exactly what ``bytes_received`` counts; the receiver holds at most what
its window bounds; every datagram sent opens under the peer's key with a well-formed body
of at most ``mss`` payload bytes; after ``handle_timer(now)`` the next timer is later.
"""

from __future__ import annotations

import struct

from weftnet.proto.punchwire import (
    PUNCH_DROP_REASONS,
    PunchKind,
    derive_keys,
    open_datagram,
    seal_datagram,
)
from weftnet.proto.ustream import BODY, RECV_BUFFER, DatagramStream

SESSION = 0x5EED
SECRET = bytes(range(32))
ME = derive_keys(SECRET, initiator=False)
PEER = derive_keys(SECRET, initiator=True)  # the hostile peer seals with this
MSS = 100
SMALL = struct.Struct(">HHIB")


def _record(op: int, body: bytes) -> bytes:
    return bytes([op, len(body)]) + body


def _small(seq: int, ack: int, window: int, flags: int, payload: bytes) -> bytes:
    return _record(2, SMALL.pack(seq, ack, window, flags) + payload)


SEEDS = [
    _record(1, b"hello") + _record(0, b"\x00" * 3) + _small(0, 5, 65536, 0, b"world")
    + _small(5, 5, 65536, 0, b"!") + _record(0, b"\x00" * 20) + _small(2, 5, 0, 1, b"rld"),
    _record(1, bytes(250)) + _record(1, bytes(250)) + _small(0, 0, 0, 1, b"")
    + _small(0, 0, 0, 1, b"") + _small(0, 0, 0, 1, b"") + _small(0, 100, 10, 0, b"")
    + _record(0, bytes(50)) + _small(9, 300, 9, 0, b"x" * 40) + _small(0, 500, 9, 0, b"y" * 9),
    _record(3, BODY.pack(0, 0, 1 << 20, 0) + b"abc") + _record(4, b"\x02\x03" + bytes(30)),
    seal_datagram(PunchKind.STREAM, SESSION, BODY.pack(0, 0, 100, 0) + b"hi", PEER.stream_send),
]


def _fingerprint(s: DatagramStream) -> tuple[object, ...]:
    return (s.stats, s.buffered, s.failed, s.get_timer(), s._rcv_nxt, len(s._unread),
            s._ooo_bytes, s._ack_pending, s._peer_right, s._snd_una)


def _receive(s: DatagramStream, datagram: bytes, now: float) -> None:
    before, refused = _fingerprint(s), sum(s.drops[r] for r in PUNCH_DROP_REASONS)
    s.receive_datagram(datagram, now)
    if sum(s.drops[r] for r in PUNCH_DROP_REASONS) > refused:
        assert _fingerprint(s) == before, "an unauthenticated datagram changed the stream"
    assert len(s._unread) <= RECV_BUFFER and s._ooo_bytes <= RECV_BUFFER


def _check_sends(s: DatagramStream, now: float) -> None:
    for d in s.datagrams_to_send(now):
        body = open_datagram(d, PEER.stream_recv)
        assert len(body) >= BODY.size and len(body) - BODY.size <= MSS
        seq, ack, window, _ = BODY.unpack_from(body)
        assert ack == s._rcv_nxt and window <= RECV_BUFFER


def test_one_input(data: bytes) -> None:
    s = DatagramStream(session=SESSION, keys=ME, now=0.0, mss=MSS)
    _receive(s, data, 0.0)
    now, delivered, written = 0.0, 0, 0
    i = 0
    while i + 2 <= len(data):
        op, n = data[i], data[i + 1]
        chunk = data[i + 2:i + 2 + n]
        i += 2 + n
        kind = op % 5
        if kind == 0:
            now += n / 10
            due = s.get_timer()
            if due is not None and due <= now:
                s.handle_timer(now)
                later = s.get_timer()
                assert later is None or later > now
        elif kind == 1:
            s.send(chunk, now)  # a few KB at most: never beyond MAX_BUFFERED
            written += len(chunk)
        elif kind == 2:
            head = chunk[:SMALL.size].ljust(SMALL.size, b"\x00")
            seq, ack, window, flags = SMALL.unpack(head)
            body = BODY.pack(seq, ack, window, flags) + chunk[SMALL.size:]
            _receive(s, seal_datagram(PunchKind.STREAM, SESSION, body, PEER.stream_send), now)
        elif kind == 3:
            _receive(s, seal_datagram(PunchKind.STREAM, SESSION, chunk, PEER.stream_send), now)
        else:
            _receive(s, chunk, now)
        delivered += len(s.read())
        assert delivered == s.stats.bytes_received
        _check_sends(s, now)
        assert s.buffered <= written
    assert s.flushed == (s.buffered == 0)


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
