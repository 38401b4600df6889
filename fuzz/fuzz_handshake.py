"""Fuzz the handshake: hello/confirm decoding, and a fresh Connection fed the bytes.

Invariants:
* ``decode_hello`` / ``decode_confirm`` / ``decode_confirms`` / ``decode_spakes`` accept or
  raise RemoteProtocolError, nothing else; a hello that decodes re-encodes to one that
  decodes to the same value;
* a fresh inbound Connection (with and without a password) fed the bytes, as a raw
  stream and as the body of one frame, never raises, and produces the same events and
  output whether fed whole or byte by byte (h11's invariant); it never completes a
  password handshake without the peer's valid confirmation; with two password
  candidates at each end (the Spake frame in play), never without the real peer's hello
  and Spake frame (a losing pair's tag carries nothing a verdict depends on); offering
  AES-256-GCM, never without the real peer's hello, whatever its cipher list says.
"""

from __future__ import annotations

import contextlib
import copy
import pathlib
import sys

# Under atheris, give coverage feedback for our code only: instrumenting everything
# (spake2's pure-Python curve arithmetic included) slows each run a hundredfold.
_instrumented: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
if __name__ == "__main__":
    import atheris

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for tests.pairs
    _instrumented = atheris.instrument_imports(include=["weftnet"])
with _instrumented:
    from tests.pairs import connection
    from weftnet.proto.connection import (
        Connection,
        ConnectionFailed,
        ConnectionPair,
        Event,
        HandshakeCompleted,
        drain_events,
    )
    from weftnet.proto.errors import RemoteProtocolError
    from weftnet.proto.framing import HANDSHAKE_MAX_FRAME, FrameDecoder, encode_frame
    from weftnet.proto.handshake import (
        decode_confirm,
        decode_confirms,
        decode_hello,
        decode_spakes,
        encode_hello,
        preferred_aeads,
    )

PASSWORD = b"fuzz"
CANDIDATES = (b"fuzz", b"other")  # ours; the peer holds them the other way round

# Templates are deep-copied per input: spake2's start() is slow pure Python.
_ARGS: dict[str, dict[str, object]] = {
    "plain": {}, "encrypted": {"password": PASSWORD}, "candidates": {"passwords": CANDIDATES},
    "aes": {"password": PASSWORD, "aeads": preferred_aeads(True)},
}
TEMPLATES: dict[str, Connection] = {
    name: connection(False, seed=2, **args) for name, args in _ARGS.items()  # type: ignore[arg-type]
}
for _template in TEMPLATES.values():
    _template.data_to_send()  # the hello, identical every time


def _peer_stream(template: str, **kw: object) -> bytes:
    """What a real peer sends to a copy of the template: hello (+ spake) (+ confirm)."""
    us = connection(False, seed=2, **_ARGS[template])  # type: ignore[arg-type]  # = a fresh copy
    pair = ConnectionPair(connection(True, seed=1, **kw), us)  # type: ignore[arg-type]
    pair.pump(0.0)
    return bytes(pair.sent_by_a)


def _bodies(stream: bytes) -> list[bytes]:
    decoder = FrameDecoder()
    decoder.feed(stream)
    out = []
    while (body := decoder.next_frame()) is not None:
        out.append(body)
    return out


_PLAIN_STREAM = _peer_stream("plain")
_ENCRYPTED_STREAM = _peer_stream("encrypted", password=PASSWORD)
_CANDIDATES_STREAM = _peer_stream("candidates", passwords=CANDIDATES[::-1])
_CANDIDATES_BEFORE_CONFIRM = b"".join(
    len(b).to_bytes(4, "big") + b for b in _bodies(_CANDIDATES_STREAM)[:2])
_AES_STREAM = _peer_stream("aes", password=PASSWORD, aeads=preferred_aeads(True))
SEEDS = [_PLAIN_STREAM, _ENCRYPTED_STREAM, _CANDIDATES_STREAM, _AES_STREAM,
         *_bodies(_PLAIN_STREAM), *_bodies(_ENCRYPTED_STREAM), *_bodies(_CANDIDATES_STREAM),
         *_bodies(_AES_STREAM)]


def _feed(template: Connection, chunks: list[bytes]) -> tuple[list[Event], bytes, bool]:
    conn = copy.deepcopy(template)
    out = bytearray()
    for chunk in chunks:
        conn.receive_data(chunk, 1.0)
        out += conn.data_to_send()
    events = drain_events(conn)
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    assert len(failed) <= 1 and (not failed or events[-1] is failed[0])
    assert conn.closed == bool(failed)
    return events, bytes(out), conn.closed


def _check_decoders(data: bytes) -> None:
    try:
        hello = decode_hello(data)
    except RemoteProtocolError:
        pass
    else:
        assert decode_hello(encode_hello(hello)) == hello
    try:
        tag = decode_confirm(data)
    except RemoteProtocolError:
        pass
    else:
        assert len(tag) == 32
    for count in (1, 3):
        try:
            assert len(decode_confirms(data, count + 1)) == count + 1
        except RemoteProtocolError:
            pass
        try:
            assert all(len(m) == 33 for m in decode_spakes(data, count))
        except RemoteProtocolError:
            pass


def test_one_input(data: bytes) -> None:
    _check_decoders(data)
    streams = [data]
    if len(data) <= HANDSHAKE_MAX_FRAME:
        streams.append(encode_frame(data, HANDSHAKE_MAX_FRAME))
    for name, template in TEMPLATES.items():
        for stream in streams:
            whole = _feed(template, [stream])
            bytewise = _feed(template, [stream[i:i + 1] for i in range(len(stream))])
            assert whole == bytewise, (name, whole, bytewise)
            completed = [e for e in whole[0] if isinstance(e, HandshakeCompleted)]
            if name == "encrypted" and completed:
                # Only the real peer's own hello + confirmation can get here.
                assert stream.startswith(_ENCRYPTED_STREAM), stream
            if name == "aes" and completed:
                assert stream.startswith(_AES_STREAM), stream
            if name == "candidates" and completed:
                assert stream.startswith(_CANDIDATES_BEFORE_CONFIRM), stream


if __name__ == "__main__":
    from _harness import fuzz

    fuzz(test_one_input, SEEDS)
