"""Fuzz the link machine (proto/link.py) with authenticated-but-hostile datagram bodies.

The first byte says which end the machine is (bit 0: the dialling one), then come records
``op u8 | len u8 | bytes``: op % 4 == 0 advances time
(len tenths of a second) and fires the timer when due, == 1 reports a stale probe as refused
(route MTU from the bytes), otherwise a datagram of kind ``1 + (op >> 2 & 7) % 5`` with the
bytes as body from address ``(op >> 5) % 3``. Invariants: ``receive`` either takes a body or raises
RemoteProtocolError; every datagram the machine asks to send decodes (the peer can read
it); the machine is up only after a well-formed HEARTBEAT_ACK since it last went down; after
``handle_timer(now)`` the next timer is later than ``now``.
"""

from __future__ import annotations

import random

from weftnet.proto import sleeve
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.link import LinkMachine, LinkWentDown, LinkWentUp
from weftnet.proto.sleeve import Kind

ADDRS = [("10.0.0.2", 6783), ("10.0.0.9", 40000), ("192.0.2.1", 6783)]


def _record(op: int, body: bytes) -> bytes:
    return bytes([op, len(body)]) + body


def _datagram(kind: Kind, body: bytes, addr: int = 0) -> bytes:
    return _record(2 | (kind - 1) << 2 | addr << 5, body)


def _tick(seconds: float) -> bytes:
    return _record(0, bytes(int(seconds * 10)))


SEEDS = [
    b"\x00" + _datagram(Kind.HEARTBEAT, sleeve.encode_heartbeat(2, 22, 0, 1376, flags=1))
    + _datagram(Kind.HEARTBEAT_ACK, sleeve.encode_heartbeat(2, 22, 0, 1376))
    + _tick(0.5) + _datagram(Kind.PROBE, sleeve.encode_probe(7, 64), addr=1)
    + _tick(0.6) + _tick(12.0) + _datagram(Kind.HEARTBEAT_ACK, sleeve.encode_heartbeat(2, 22, 0, 1376)),
    b"\x01" + _datagram(Kind.DATA, b"", addr=2) + _tick(3.0) + _record(1, b"\x05\xdc")
    + _tick(10.0) + _datagram(Kind.HEARTBEAT_ACK, b"short"),
]


def _check_sends(m: LinkMachine, now: float) -> None:
    for send in m.datagrams_to_send():
        if send.kind in (Kind.HEARTBEAT, Kind.HEARTBEAT_ACK):
            sleeve.decode_heartbeat(send.body)
        else:
            assert send.kind in (Kind.PROBE, Kind.PROBE_ACK), send.kind
            sleeve.decode_probe(send.body)
            if send.probe_id is not None and send.kind is Kind.PROBE and len(send.body) > 9000:
                m.probe_send_failed(send.probe_id, now, 1500)  # as the kernel would


def test_one_input(data: bytes) -> None:
    outbound = bool(data[:1]) and data[0] & 1 == 1
    m = LinkMachine(me=1, uid=11, mtu=1376, port=6783, we_trust=True, encrypted=True,
                    addr=ADDRS[0] if outbound else None, now=0.0, rng=random.Random(0))
    now, answered, up = 0.0, False, False
    i = 1
    while i + 2 <= len(data):
        op, n = data[i], data[i + 1]
        body = data[i + 2:i + 2 + n]
        i += 2 + n
        if op % 4 == 0:
            now += n / 10
            due = m.get_timer()
            if due is not None and due <= now:
                m.handle_timer(now)
                later = m.get_timer()
                assert later is None or later > now
        elif op % 4 == 1:
            probe = int.from_bytes(body[:2], "big") if body else None
            m.probe_send_failed(0, now, probe)  # a stale id: ignored
        else:
            kind = Kind(1 + (op >> 2 & 7) % 5)
            try:
                m.receive(kind, body, ADDRS[(op >> 5) % 3], now)
            except RemoteProtocolError:
                pass
            else:
                if kind is Kind.HEARTBEAT_ACK:
                    answered = True
        _check_sends(m, now)
        while (event := m.next_event()) is not None:
            if isinstance(event, LinkWentUp):
                assert answered and not up
                up = True
            elif isinstance(event, LinkWentDown):
                if up:
                    answered = False
                up = False
        assert up == m.up


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
