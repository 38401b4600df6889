"""Fuzz an established control connection: garbage after the handshake.

Two established connections (unencrypted, encrypted) are snapshotted once and
deep-copied per input. Each is fed the bytes as a raw stream and as the body of one
frame; the encrypted one is also fed the bytes sealed by the real peer (white-box: the
peer's own sealer), which is how an authenticated but buggy or hostile peer reaches the
message decoder. Invariants: nothing raises; whole and byte-by-byte feeding give the same
events and output; at most one ConnectionFailed, last; unsealed garbage never yields a
message on the encrypted connection.
"""

from __future__ import annotations

import contextlib
import copy
import pathlib
import random
import sys

# Under atheris, give coverage feedback for our code only: instrumenting everything
# (spake2's pure-Python curve arithmetic included) slows each run a hundredfold.
_instrumented: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
if __name__ == "__main__":
    import atheris

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for tests.pairs
    _instrumented = atheris.instrument_imports(include=["weftnet"])
with _instrumented:
    from tests.pairs import ALPHA as PEER
    from tests.pairs import BETA as US
    from tests.pairs import established_pair
    from weftnet.proto.aead import Sealer
    from weftnet.proto.connection import Connection, ConnectionFailed, Event, MessageReceived, drain_events
    from weftnet.proto.framing import encode_frame
    from weftnet.proto.handshake import Handshake
    from weftnet.proto.messages import (
        Goodbye,
        Gossip,
        GossipKind,
        Heartbeat,
        KeySwitch,
        Rekey,
        encode_message,
    )

_PLAIN = established_pair(None)  # the peer dials (a), we answer (b)
_ENCRYPTED = established_pair(b"fuzz")
# White-box: the peer's control sealer, so inputs can be sealed as the real peer would.
_PEER_SEALER: Sealer = _ENCRYPTED.a._sealer  # type: ignore[assignment]
assert _PEER_SEALER is not None

_MESSAGES = [Heartbeat(), Gossip("topology", GossipKind.BROADCAST, PEER.name, 0, b"abc"),
             Gossip("ipam", GossipKind.UNICAST, PEER.name, US.name, b"\x00" * 20),
             Goodbye("bye")]


def _sealed_frames(sealer: Sealer, bodies: list[bytes]) -> bytes:
    sealer = copy.deepcopy(sealer)
    return b"".join(encode_frame(sealer.seal(body)) for body in bodies)


_SEALED_STREAM = _sealed_frames(_PEER_SEALER, [encode_message(m) for m in _MESSAGES])
# A message can only come out of frames the peer sealed, in order from counter 0; the
# first of those is a heartbeat (no event), so any message needs this exact prefix.
_FIRST_SEALED_FRAME = _sealed_frames(_PEER_SEALER, [encode_message(_MESSAGES[0])])
assert _SEALED_STREAM.startswith(_FIRST_SEALED_FRAME)

# An authenticated peer starting a rekey (a real hello of the same peer) and switching keys.
_REKEY_HELLO = Handshake(outbound=True, local=PEER, password=b"fuzz",
                         random_bytes=random.Random(7).randbytes).hello_body

SEEDS = [
    *(encode_message(m) for m in _MESSAGES),
    encode_message(Rekey(_REKEY_HELLO)), encode_message(KeySwitch()),
    b"".join(encode_frame(encode_message(m)) for m in _MESSAGES),
    _SEALED_STREAM,
]


def _feed(template: Connection, chunks: list[bytes]) -> tuple[list[Event], bytes]:
    conn = copy.deepcopy(template)
    out = bytearray()
    for chunk in chunks:
        conn.receive_data(chunk, 1.0)
        out += conn.data_to_send()
    conn.handle_timer(1.0)
    events = drain_events(conn)
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    assert len(failed) <= 1 and (not failed or events[-1] is failed[0])
    assert conn.closed == bool(failed)
    return events, bytes(out)


def _check(template: Connection, stream: bytes) -> list[Event]:
    whole = _feed(template, [stream])
    bytewise = _feed(template, [stream[i:i + 1] for i in range(len(stream))])
    assert whole == bytewise, (whole, bytewise)
    return whole[0]


def test_one_input(data: bytes) -> None:
    framed = encode_frame(data)
    for stream in (data, framed):
        _check(_PLAIN.b, stream)
        events = _check(_ENCRYPTED.b, stream)
        if not stream.startswith(_FIRST_SEALED_FRAME):
            assert not any(isinstance(e, MessageReceived) for e in events)
    # As the authenticated peer: the input sealed whole, and split in two sealed frames.
    cut = len(data) // 2
    _check(_ENCRYPTED.b, _sealed_frames(_PEER_SEALER, [data]))
    _check(_ENCRYPTED.b, _sealed_frames(_PEER_SEALER, [data[:cut], data[cut:]]))


if __name__ == "__main__":
    from _harness import fuzz

    fuzz(test_one_input, SEEDS)
