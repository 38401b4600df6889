"""Fuzz the sleeve: datagram header, session open (plain and encrypted) and body decoders.

Invariants: any bytes either open or raise SleeveDrop (a RemoteProtocolError) with one of
the documented reasons, and nothing else escapes; a datagram that opened once is refused
as a replay the second time; a forged datagram never opens an encrypted session; every
body decoder accepts exactly its canonical encodings (decode then encode gives the same
bytes) and frames it hands out are long enough for the Ethernet header it will read.
"""

from __future__ import annotations

import pathlib
import sys

if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for tests.pairs

from tests.pairs import sleeve_pair
from weftnet.proto.errors import RemoteProtocolError
from weftnet.proto.ethernet import ETH_HLEN, VNET_HDR_LEN, VnetHeader, macs
from weftnet.proto.sleeve import (
    DROP_REASONS,
    FLAG_VNET,
    Kind,
    SleeveDrop,
    SleeveSession,
    decode_entries,
    decode_heartbeat,
    decode_probe,
    encode_entries,
    encode_heartbeat,
    encode_probe,
    peek,
)

UID = 0x0102030405060708  # the connection the corpus in corpus/sleeve was sealed on
FRAME = bytes.fromhex("ffffffffffff0a0000000001") + b"\x08\x06" + bytes(28)
VNET_FRAME = bytes([1, 1]) + bytes(8) + FRAME


def _receivers() -> list[SleeveSession]:
    """Fresh receiving ends, plain and encrypted, of the connections the seeds were sealed on."""
    return [sleeve_pair(encrypted, conn_uid=UID, window=64)[1] for encrypted in (False, True)]


def _seeds() -> list[bytes]:
    bodies = [
        (Kind.DATA, encode_entries([(1, 0, 0, FRAME)])),
        (Kind.DATA, encode_entries([(1, 2, FLAG_VNET, VNET_FRAME), (3, 0, 0, FRAME)])),
        (Kind.HEARTBEAT, encode_heartbeat(1, 99, 7, 1410)),
        (Kind.HEARTBEAT_ACK, encode_heartbeat(2, 98, 7, 1400, flags=1)),
        (Kind.PROBE, encode_probe(5, 64)),
        (Kind.PROBE_ACK, encode_probe(5, 8)),
    ]
    senders = [sleeve_pair(encrypted, conn_uid=UID, window=64)[0] for encrypted in (False, True)]
    return [s.seal(kind, body, 0.0) for s in senders for kind, body in bodies]


SEEDS = _seeds()


def _check_body(kind: Kind, body: bytes) -> None:
    try:
        if kind == Kind.DATA:
            entries = decode_entries(body)
            assert encode_entries(entries) == body
            for _src, _dst, flags, frame in entries:
                if flags & FLAG_VNET:
                    assert len(frame) >= VNET_HDR_LEN + ETH_HLEN
                    macs(frame, VNET_HDR_LEN)
                    try:
                        VnetHeader.decode(frame)
                    except RemoteProtocolError:
                        pass
                else:
                    macs(frame)
        elif kind in (Kind.HEARTBEAT, Kind.HEARTBEAT_ACK):
            assert encode_heartbeat(*decode_heartbeat(body)) == body
        else:
            probe_id, size = decode_probe(body)
            assert encode_probe(probe_id, size) == body
    except RemoteProtocolError:
        pass


def test_one_input(data: bytes) -> None:
    try:
        header = peek(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc, SleeveDrop) and exc.reason == "malformed"
        header = None
    for session in _receivers():
        try:
            kind, body = session.open(data, 1.0)
        except SleeveDrop as drop:
            assert drop.reason in DROP_REASONS, drop.reason
            continue
        assert header is not None and kind == header[0]
        if session.encrypted:
            assert data in SEEDS, "a forged datagram authenticated"
        try:
            session.open(data, 1.0)
            raise AssertionError("the same datagram opened twice")
        except SleeveDrop as drop:
            assert drop.reason == "replay"
        _check_body(kind, body)
    # the body decoders straight on the bytes, past any header
    for kind in (Kind.DATA, Kind.HEARTBEAT, Kind.PROBE):
        _check_body(kind, data)


if __name__ == "__main__":
    import atheris
    from _harness import fuzz

    # the modules under test are imported above already, where instrument_imports() would
    # no longer see them: instrument every loaded function instead
    atheris.instrument_all()
    fuzz(test_one_input, SEEDS)
