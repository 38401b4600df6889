"""Fuzz one punch session (proto/punch.py) with authenticated-but-hostile datagrams.

The first byte picks the session's role (bit 0: initiator, bit 1: we are the hard side,
bit 2: the peer is; never both), then come records ``op u8 | len u8 | bytes``: op % 4 == 0
advances time (len hundredths of a second) and fires the timer when due; == 1 hands the
bytes to ``receive`` as a raw datagram; == 2 seals them as a PROBE body, == 3 as a
PROBE_ACK body, under the peer's key (an ACK whose first 8 bytes are zero answers the
session's latest probe instead, with the rest of the body kept), from address ``(op >> 2)
% 4`` on socket ``op >> 4``. Invariants: ``receive`` takes a datagram or raises
RemoteProtocolError; every datagram the session sends goes to a candidate, to the source of
a probe it accepted, or (the easy side of a hard pair) to the hard side's reflexive IP; the
initiator's path is one it sent a probe to, from the socket it sent it from, the
responder's the source of a probe it accepted (a nomination); a decided session sends no
probe; after ``handle_timer(now)`` the next timer is later.
"""

from __future__ import annotations

import contextlib
import random

_instrumented: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["weftnet"])
with _instrumented:
    from weftnet.proto.errors import RemoteProtocolError
    from weftnet.proto.punch import (
        Candidate,
        CandidateKind,
        PunchSession,
        decode_probe,
        encode_probe,
        encode_probe_ack,
    )
    from weftnet.proto.punchwire import (
        PunchKind,
        derive_keys,
        open_datagram,
        peek_datagram,
        seal_datagram,
    )

ME, PEER = 0x020000000001, 0x020000000002
SECRET = bytes(range(32))
SESSION = 77
ADDRS = [("10.0.0.2", 6783), ("203.0.113.2", 6783), ("203.0.113.2", 40001),
         ("198.51.100.66", 9)]
CANDS = [Candidate(CandidateKind.HOST, ADDRS[0]), Candidate(CandidateKind.REFLEXIVE, ADDRS[1])]


def _record(op: int, body: bytes) -> bytes:
    return bytes([op, len(body)]) + body


SEEDS = [
    b"\x01" + _record(2 | 2 << 2, encode_probe(5, PEER)) + _record(0, b"\x00" * 5)
    + _record(3 | 2 << 2, bytes(8) + encode_probe_ack(0, PEER, ("203.0.113.1", 6783))[8:])
    + _record(0, bytes(40))  # the grace is over: the nomination goes out; answer it
    + _record(3 | 2 << 2, bytes(8) + encode_probe_ack(0, PEER, ("203.0.113.1", 6783))[8:])
    + _record(0, bytes(200)),
    b"\x02" + _record(0, bytes(100)) + _record(2 | 3 << 2 | 7 << 4, encode_probe(6, PEER))
    + _record(1, b"\x02\x02" + bytes(40)),
    b"\x04" + _record(0, bytes(250)) + _record(0, bytes(250)) + _record(0, bytes(250)),
    b"\x00" + _record(2 | 1 << 2, encode_probe(8, PEER)) + _record(0, b"\x00")
    + _record(2 | 1 << 2, encode_probe(9, PEER, 0.015)) + _record(0, bytes(200)),
]


def test_one_input(data: bytes) -> None:
    flags = data[0] if data else 0
    initiator = bool(flags & 1)
    we_hard, they_hard = bool(flags & 2), bool(flags & 4) and not flags & 2
    s = PunchSession(me=ME, peer=PEER, session=SESSION,
                     keys=derive_keys(SECRET, initiator=initiator), initiator=initiator,
                     theirs=CANDS, we_hard=we_hard, they_hard=they_hard,
                     rng=random.Random(0), now=0.0)
    peer_key = derive_keys(SECRET, initiator=not initiator).probe_send
    allowed = {c.addr for c in CANDS}
    probed: set[tuple[tuple[str, int], int]] = set()
    last_probe = 0
    now = 0.0
    i = 1
    decided = False  # before the latest input: it may send its last probes, then decide
    while True:
        for datagram, dst, sock in s.datagrams_to_send():
            assert dst in allowed or (they_hard and dst[0] == ADDRS[1][0]), dst
            kind, session = peek_datagram(datagram)
            assert session == SESSION and kind is not PunchKind.STREAM
            if kind is PunchKind.PROBE:
                assert not decided, "a decided session probes no more"
                probed.add((dst, sock))
                last_probe, _, _ = decode_probe(open_datagram(datagram, s.keys.probe_send))
        if s.path is not None and initiator:
            assert (s.path.addr, s.path.sock) in probed
        elif s.path is not None:
            assert s.path.addr in allowed  # nominated: where an accepted probe came from
        if i + 2 > len(data):
            break
        decided = s.path is not None
        op, n = data[i], data[i + 1]
        body = data[i + 2:i + 2 + n]
        i += 2 + n
        if op % 4 == 0:
            now += n / 100
            due = s.get_timer()
            if due is not None and due <= now:
                s.handle_timer(now)
                later = s.get_timer()
                assert later is None or later > now
            continue
        src, sock = ADDRS[(op >> 2) % 4], op >> 4
        if op % 4 == 1:
            datagram = body
        else:
            kind = PunchKind.PROBE if op % 4 == 2 else PunchKind.PROBE_ACK
            if kind is PunchKind.PROBE_ACK and body[:8] == bytes(8):
                body = last_probe.to_bytes(8, "big") + body[8:]
            datagram = seal_datagram(kind, SESSION, body, peer_key)
        try:
            s.receive(datagram, src, sock, now)
        except RemoteProtocolError:
            continue
        if peek_datagram(datagram)[0] is PunchKind.PROBE:
            allowed.add(src)


if __name__ == "__main__":
    from _harness import fuzz

    fuzz(test_one_input, SEEDS)
