"""Fuzz the control message decoder: any bytes decode or raise RemoteProtocolError,
and whatever decodes re-encodes to something that decodes to the same message."""

from __future__ import annotations

import contextlib

# Under atheris, give coverage feedback for our code only (msgpack is a C extension and
# the standard library is noise); imported normally, e.g. by the hypothesis runner.
_instrumented: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["weftnet"])
with _instrumented:
    from weftnet.proto.errors import RemoteProtocolError
    from weftnet.proto.messages import (
        Goodbye,
        Gossip,
        GossipKind,
        Heartbeat,
        decode_message,
        encode_message,
    )

SEEDS = [
    encode_message(Heartbeat()),
    encode_message(Gossip("topology", GossipKind.BROADCAST, 5, 0, b"abc")),
    encode_message(Goodbye("bye")),
]


def test_one_input(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except RemoteProtocolError:
        return
    assert decode_message(encode_message(msg)) == msg


if __name__ == "__main__":
    from _harness import fuzz

    fuzz(test_one_input, SEEDS)
