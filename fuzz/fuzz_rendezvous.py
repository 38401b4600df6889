"""Fuzz the punch planner (proto/rendezvous.py): its message decoder and the planner itself.

The input is records ``op u8 | len u8 | bytes``: op % 4 == 0 advances time (len tenths of
a second) and fires the timer when due; == 1 hands the bytes to ``on_message`` as a mesh
message from peer ``1 + (op >> 2) % 3``; == 2 hands them to ``receive`` as a datagram from
address ``(op >> 2) % 4`` on socket ``op >> 4``; == 3 seals them as the body of a PROBE
(op bit 2 clear) or PROBE_ACK under the keys of the latest offer or answer the planner
took (so fuzzing reaches past authentication) and hands that to ``receive``. Invariants:
every input is handled without raising; every payload either decodes or raises
RemoteProtocolError, and what decodes re-encodes to the same message; every datagram the
planner sends goes to a candidate it was given in an offer or answer, or to the source of a
probe it accepted, or (facing a side that may act hard: not known easy) to the IP of one of
that side's reflexive candidates; after ``handle_timer(now)`` the next timer is later than ``now``.
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
    from weftnet.proto.punch import Candidate, CandidateKind, encode_probe
    from weftnet.proto.punchwire import PunchKind, derive_keys, seal_datagram
    from weftnet.proto.rendezvous import (
        Answer,
        Offer,
        Rendezvous,
        Seen,
        decode_message,
        encode_message,
    )

ME = 0x020000000002
PEERS = [0x020000000001, 0x020000000003, 0x020000000004]
ADDRS = [("198.51.100.1", 6783), ("203.0.113.5", 6783), ("10.0.0.9", 6783),
         ("203.0.113.5", 41234)]
CANDS = (Candidate(CandidateKind.HOST, ADDRS[2]), Candidate(CandidateKind.REFLEXIVE, ADDRS[1]))


def _record(op: int, body: bytes) -> bytes:
    return bytes([op, len(body)]) + body


def _message(peer: int, payload: bytes) -> bytes:
    return _record(1 | peer << 2, payload)


SEEDS = [
    _message(0, encode_message(Offer(5, bytes(32), CANDS, "unknown")))
    + _record(3, encode_probe(1, PEERS[0])) + _record(0, b"\x00\x00")
    + _record(3 | 4, bytes(30)) + _record(0, bytes(90)),
    _message(1, encode_message(Seen(ADDRS[1]))) + _message(2, encode_message(Seen(ADDRS[3])))
    + _message(0, encode_message(Offer(9, bytes(range(32)), CANDS, "hard", 2)))
    + _record(2 | 1 << 2, b"\x02\x01" + bytes(30)) + _record(0, bytes(20)),
    _message(0, encode_message(Answer(7, CANDS, "easy"))) + _record(0, bytes(200)),
]


def test_one_input(data: bytes) -> None:
    rv = Rendezvous(me=ME, port=6783, rng=random.Random(0),
                    random_bytes=random.Random(1).randbytes, now=0.0)
    rv.set_host_candidates([("192.0.2.2", 6783)])
    rv.link_address(PEERS[1], ADDRS[0], 0.0)
    rv.link_address(PEERS[2], ("198.51.100.2", 6783), 0.0)
    rv.want({PEERS[1]}, 0.0)
    now = 0.0
    allowed: set[tuple[str, int]] = set()
    hard_ips: set[str] = set()
    keys = None
    session = 0
    offers: dict[int, bytes] = {}  # our own offers' secrets, by session
    i = 0
    while i + 2 <= len(data):
        op, n = data[i], data[i + 1]
        body = data[i + 2:i + 2 + n]
        i += 2 + n
        if op % 4 == 0:
            now += n / 10
            due = rv.get_timer()
            if due is not None and due <= now:
                rv.handle_timer(now)
                later = rv.get_timer()
                assert later is None or later > now
        elif op % 4 == 1:
            try:
                msg = decode_message(body)
            except RemoteProtocolError:
                msg = None
            else:
                assert decode_message(encode_message(msg)) == msg
            if isinstance(msg, Offer | Answer):
                allowed |= {c.addr for c in msg.candidates}
                if msg.kind != "easy":  # it may be given the hard role
                    hard_ips |= {c.addr[0] for c in msg.candidates
                                 if c.kind is CandidateKind.REFLEXIVE}
            if isinstance(msg, Offer):
                keys, session = derive_keys(msg.secret, initiator=False), msg.session
            elif isinstance(msg, Answer) and msg.session in offers:
                keys, session = derive_keys(offers[msg.session], initiator=True), msg.session
            rv.on_message(PEERS[(op >> 2) % 3], body, now)
        elif op % 4 == 2:
            rv.receive(body, ADDRS[(op >> 2) % 4], op >> 4, now)
        elif keys is not None:
            kind = PunchKind.PROBE if op & 4 == 0 else PunchKind.PROBE_ACK
            src = ADDRS[(op >> 3) % 4]
            if rv.receive(seal_datagram(kind, session, body, keys.probe_recv), src, 0, now) \
                    and kind is PunchKind.PROBE:
                allowed.add(src)
        for _, payload in rv.messages_to_send():
            msg = decode_message(payload)
            if isinstance(msg, Offer):
                offers[msg.session] = msg.secret
        for _, dst, sock in rv.datagrams_to_send():
            assert dst in allowed or dst[0] in hard_ips, dst
            assert 0 <= sock <= 256
        while rv.next_event() is not None:
            pass
        rv.status(now)
        rv.report()


if __name__ == "__main__":
    from _harness import fuzz

    fuzz(test_one_input, SEEDS)
